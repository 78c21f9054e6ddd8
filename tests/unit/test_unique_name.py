"""A node refuses a name only a live member answers to, never its own stale member key."""

from __future__ import annotations

from typing import Any

from hasup.dcs.model import Member
from hasup.supervision.unique_name import claims, name_in_use

URL = "http://10.0.0.1:8008/patroni"


def member(api_url: str | None = URL) -> Member:
    return Member("node1", {"conn_url": "postgres://10.0.0.1:5432/postgres", "state": "running",
                            **({"api_url": api_url} if api_url else {})})


def answering(body: Any) -> Any:
    asked: list[str] = []

    def ask(url: str) -> Any:
        asked.append(url)
        return body
    ask.asked = asked  # type: ignore[attr-defined]
    return ask


def test_a_live_member_answering_as_us_takes_the_name() -> None:
    ask = answering({"state": "running", "patroni": {"version": "4.1.5", "scope": "demo", "name": "node1"}})
    why = name_in_use(member(), "node1", "demo", ask)
    assert why is not None and "'node1'" in why and URL in why and "\n" not in why
    assert ask.asked == [URL]


def test_a_stale_key_a_stranger_or_no_key_leaves_the_name_free() -> None:
    assert name_in_use(None, "node1", "demo", answering(None)) is None  # no member key at all
    assert name_in_use(member(None), "node1", "demo", answering(None)) is None  # no address to ask
    # Our own key after a crash: nothing answers there (our REST API is not up yet).
    assert name_in_use(member(), "node1", "demo", answering(None)) is None
    # Someone else now listens at that address, or something that is not a member at all.
    assert name_in_use(member(), "node1", "demo", answering({"patroni": {"name": "node7", "scope": "demo"}})) is None
    assert name_in_use(member(), "node1", "demo", answering(["not", "a", "status"])) is None
    assert name_in_use(member(), "node1", "demo", answering({"patroni": "node1"})) is None


def test_a_node_of_the_same_name_in_another_cluster_is_not_ours() -> None:
    assert not claims({"patroni": {"name": "node1", "scope": "other"}}, "node1", "demo")
    assert claims({"patroni": {"name": "node1"}}, "node1", "demo")  # an answer without a scope still counts
