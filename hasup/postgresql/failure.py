"""The one error a lifecycle action raises: ActionFailed, with a one-line reason."""

from __future__ import annotations


class ActionFailed(Exception):
    pass
