"""The one error a lifecycle action raises: ActionFailed, with a one-line reason."""

from __future__ import annotations

from typing import Any


class ActionFailed(Exception):
    def __init__(self, message: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.result = result or {}  # travels in the failure's reply, for election to weigh
