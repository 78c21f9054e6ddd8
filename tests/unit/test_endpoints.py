"""Choosing etcd members: failed ones last, every operation inside its budget."""

from __future__ import annotations

import logging

import pytest

from hasup.dcs.endpoints import MAX_ENDPOINTS, MIN_ATTEMPT, PENALTY, Endpoints, Exhausted, per_attempt, within_budget


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


A, B, C = "https://a:2379", "https://b:2379", "https://c:2379"


def test_a_failed_member_goes_last_until_its_penalty_ends():
    clock = FakeClock()
    e = Endpoints([A, B, C], clock)
    assert e.order() == [A, B, C]
    e.failed(A, "timed out")
    assert e.order() == [B, C, A]
    e.succeeded(C)
    assert e.order() == [C, B, A]
    clock.now += PENALTY
    assert e.order()[0] == C and set(e.order()) == {A, B, C}
    assert e.order().index(A) < 3


def test_failed_members_come_back_oldest_failure_first():
    clock = FakeClock()
    e = Endpoints([A, B, C], clock)
    e.failed(B, "x")
    clock.now += 1
    e.failed(A, "x")
    clock.now += 1
    e.failed(C, "x")
    assert e.order() == [B, A, C]


def test_a_reason_is_logged_once_per_member(caplog):
    caplog.set_level(logging.INFO)
    e = Endpoints([A, B], FakeClock())
    for _ in range(5):
        e.failed(A, "TLS: the member refused our client certificate")
    e.failed(B, "TLS: the member refused our client certificate")
    lines = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert lines == [f"etcd member {A} failed: TLS: the member refused our client certificate",
                     f"etcd member {B} failed: TLS: the member refused our client certificate"]
    e.succeeded(A)
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_discovered_members_are_bounded_and_only_http():
    e = Endpoints([A], FakeClock())
    e.add(["file:///etc/passwd", "data:,x", "https://d:2379/", "http://e:2379", "https://d:2379/"])
    assert e.urls == [A, "https://d:2379", "http://e:2379"]
    e.add(f"http://m{i}:2379" for i in range(100))
    assert len(e.urls) == MAX_ENDPOINTS


def test_one_dead_member_costs_one_attempt():
    clock = FakeClock()
    e = Endpoints([A, B, C], clock)
    calls: list[tuple[str, float]] = []

    def attempt(url: str, timeout: float) -> str:
        calls.append((url, timeout))
        if url == A:
            clock.now += timeout  # frozen: the attempt runs out its time
            raise TimeoutError("read timed out")
        return url

    assert within_budget(e, 10, attempt, lambda exc: str(exc), clock, clock.sleep) == B
    assert [u for u, _ in calls] == [A, B]
    assert calls[0][1] == per_attempt(10, 3)
    calls.clear()
    assert within_budget(e, 10, attempt, lambda exc: str(exc), clock, clock.sleep) == B
    assert [u for u, _ in calls] == [B]  # the frozen member is not asked again at once


def test_the_budget_is_never_overrun():
    clock = FakeClock()
    e = Endpoints([A, B, C], clock)
    started = clock.now

    def attempt(url: str, timeout: float) -> str:
        assert timeout >= MIN_ATTEMPT
        clock.now += timeout
        raise ConnectionError("down")

    with pytest.raises(Exhausted, match="down"):
        within_budget(e, 4, attempt, lambda exc: str(exc), clock, clock.sleep)
    assert clock.now - started <= 4


def test_an_error_every_member_would_repeat_is_raised_at_once():
    e = Endpoints([A, B], FakeClock())
    calls = []

    def attempt(url: str, timeout: float) -> str:
        calls.append(url)
        raise KeyError("compare failed")

    with pytest.raises(KeyError):
        within_budget(e, 4, attempt, lambda exc: None)
    assert calls == [A]
