"""Quorum commit: the promise, the order of changes, and who may promote (hasup.election.quorum)."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hasup.dcs.model import Cluster
from hasup.election import quorum as q
from hasup.election.quorum import Commit, Key, Step, Witness

ME = "p"
NODES = ("a", "b", "c", "d")


def key(voters: str, quorum: int, leader: str = ME) -> Key:
    return Key(leader, frozenset(voters), quorum)


def commit(num: int, names: str) -> Commit:
    return Commit(num, frozenset(names))


def test_render_and_parse_round_trip() -> None:
    assert q.render(commit(2, "ba"), strict=False) == 'ANY 2 ("a", "b")'
    assert q.parse_commit('ANY 2 ("a", "b")') == commit(2, "ab")
    assert q.parse_commit("FIRST 2 (a, b, c)") == commit(2, "abc")
    assert q.parse_commit("2 (a,b)") == commit(2, "ab")
    assert q.parse_commit("a, b") == commit(1, "ab")
    assert q.parse_commit('ANY 1 ("x,y", "q""t")') == Commit(1, frozenset({"x,y", 'q"t'}))
    assert q.parse_commit("*") == q.NO_COMMIT
    assert q.parse_commit("") == q.NO_COMMIT
    assert q.render(q.NO_COMMIT, strict=True) == "*"
    assert q.render(q.NO_COMMIT, strict=False) == ""


def test_safe_examples() -> None:
    # Three standbys, two confirm: any two of them include one that has every commit.
    assert q.safe(ME, key("abc", 1), commit(2, "abc"))
    assert not q.safe(ME, key("abc", 0), commit(2, "abc"))
    assert not q.safe(ME, key("abc", 1), commit(1, "abc"))
    # A confirmer outside the key's members counts for nothing.
    assert not q.safe(ME, key("ab", 0), commit(2, "ad"))
    assert q.safe(ME, key("ab", 1), commit(2, "ad"))
    # Right after a failover: the old leader is a member; the new primary confirms nothing by itself.
    assert not q.safe("a", Key("p", frozenset("ab"), 0), q.NO_COMMIT)
    assert q.safe("a", Key("p", frozenset("ab"), 0), q.promotion_commit("a", Key("p", frozenset("ab"), 0)))


def test_promotion_commit_covers_the_other_members() -> None:
    k = Key("p", frozenset("abc"), 1)
    assert q.promotion_commit("a", k) == commit(2, "pbc")
    assert q.promotion_commit("x", k) == Commit(3, frozenset("pabc"))  # a candidate outside the key


def test_failover_takeover_keeps_the_same_members() -> None:
    step = q.next_step("a", Key("p", frozenset("ab"), 0), commit(2, "bp"), False, ["b"], 2)
    assert step == Step(Key("a", frozenset("bp"), 0), None)


def test_dead_old_leader_leaves_the_key_before_postgresql() -> None:
    k, c = Key("a", frozenset("bp"), 0), commit(2, "bp")
    step = q.next_step("a", k, c, False, ["b"], 2)
    assert step == Step(Key("a", frozenset("b"), 0), None)  # promises no less: no need to wait
    step = q.next_step("a", step.key, c, False, ["b"], 2)
    assert step == Step(None, commit(1, "b"))


def test_a_new_standby_enters_postgresql_first_and_the_key_once_settled() -> None:
    k, c = key("a", 0), commit(1, "a")
    step = q.next_step(ME, k, c, True, ["a", "b"], 2)
    assert step == Step(None, commit(2, "ab"))
    assert q.next_step(ME, k, commit(2, "ab"), False, ["a", "b"], 2) == Step(None, None)
    assert q.next_step(ME, k, commit(2, "ab"), True, ["a", "b"], 2) == Step(key("ab", 0), None)


def test_settled_needs_num_names_past_the_change() -> None:
    c = commit(2, "abc")
    assert not q.settled(c, None, {"a": 10, "b": 10})
    assert not q.settled(c, 10, {"a": 10, "b": 9, "c": 5})
    assert q.settled(c, 10, {"a": 10, "c": 11})
    assert q.settled(q.NO_COMMIT, None, {})


def test_may_promote_three_nodes_quorum_zero() -> None:
    k = Key("p", frozenset("ab"), 0)
    assert q.may_promote("a", 100, 1, k, [Witness("b", 100, True)])[0]
    assert q.may_promote("a", 100, 1, k, [])[0]  # quorum 0: every voter has every commit
    assert not q.may_promote("a", 100, 1, k, [Witness("b", 101, True)])[0]
    assert q.may_promote("a", 100, 1, k, [Witness("p", 120, True)])[0]  # the old leader may be ahead
    assert not q.may_promote("x", 100, 1, k, [])[0]  # outside the key: must see quorum + 1 members


def test_may_promote_needs_quorum_plus_one_members() -> None:
    k = Key("p", frozenset("abcd"), 2)
    assert not q.may_promote("a", 100, 1, k, [Witness("b", 90, True)])[0]
    assert q.may_promote("a", 100, 1, k, [Witness("b", 90, True), Witness("c", 100, True)])[0]
    # Votes come only from members that may promote, are running and answered a position.
    assert not q.may_promote("a", 100, 1, k, [Witness("b", 90, True), Witness("c", 90, True, may_promote=False)])[0]
    assert not q.may_promote("a", 100, 1, k, [Witness("b", 90, True), Witness("c", 0, True)])[0]
    assert not q.may_promote("a", 100, 1, k, [Witness("b", 90, True), Witness("x", 90, True)])[0]  # not a member
    assert q.may_promote("x", 100, 1, k, [Witness("b", 90, True), Witness("c", 90, True),
                                          Witness("d", 100, True)])[0]
    assert not q.may_promote("a", 100, 1, k, [Witness("b", 100, True, failover_priority=5),
                                              Witness("c", 90, True)])[0]


def test_read_key() -> None:
    def with_sync(sync: dict | None) -> Cluster:
        return Cluster("1", {}, 0, None, {}, [], None, sync, None)
    assert q.read_key(with_sync({"leader": "p", "sync_standby": "a,b", "quorum": 1})) == Key("p", frozenset("ab"), 1)
    assert q.read_key(with_sync({"leader": "p", "sync_standby": None})) == Key("p", frozenset(), 0)
    assert q.read_key(with_sync({"leader": None})) is None
    assert q.read_key(with_sync(None)) is None


# -- the order of changes, explored -----------------------------------------------------------------

names_st = st.frozensets(st.sampled_from(NODES))


@st.composite
def safe_states(draw: st.DrawFn) -> tuple[Key, Commit]:
    voters = draw(names_st)
    names = draw(names_st)
    num = draw(st.integers(0 if not names else 1, max(len(names), 0)))
    c = Commit(num, names)
    k = Key(ME, voters, 0)
    low = q.missing_at_most(ME, k, c)
    quorum = draw(st.integers(low, max(low, len(voters) - 1)))
    k = Key(ME, voters, quorum)
    assume(q.valid_key(k) and q.safe(ME, k, c))
    return k, c


def run_steps(k: Key, c: Commit, active: list[str], wanted: int, settle: list[bool],
              since_settled: list[Commit]) -> tuple[Key, Commit, list[Commit]]:
    """Apply next_step until it has nothing to do; a setting settles when `settle` says so and it can
    (enough of its names stream).  Asserts the promise at every step."""
    is_settled = len(since_settled) == 1
    for i in range(60):
        can_settle = c.num <= len(c.names & set(active))
        step = q.next_step(ME, k, c, is_settled, active, wanted)
        if step == Step(None, None):
            if not is_settled and can_settle:
                is_settled, since_settled = True, [c]
                continue
            break
        if step.key is not None:
            assert q.valid_key(step.key)
            for old in since_settled:  # every setting an acknowledged commit may still depend on
                assert q.safe(ME, step.key, old), (k, step.key, old)
            k = step.key
        if step.commit is not None:
            assert q.safe(ME, k, step.commit), (k, step.commit)
            c = step.commit
            since_settled.append(c)
            is_settled = False
        if settle[i % len(settle)] and not is_settled and c.num <= len(c.names & set(active)):
            is_settled, since_settled = True, [c]
    return k, c, since_settled


@settings(max_examples=300, deadline=None)
@given(safe_states(), st.lists(st.sampled_from(NODES), unique=True), st.integers(1, 4),
       st.lists(st.booleans(), min_size=1, max_size=10))
def test_from_any_safe_state_every_step_keeps_the_promise_and_reaches_the_target(
        state: tuple[Key, Commit], active: list[str], wanted: int, settle: list[bool]) -> None:
    k, c = state
    k, c, _ = run_steps(k, c, active, wanted, settle, [c])
    names, num, quorum = q.target(active, wanted)
    assert (k, c) == (Key(ME, names, quorum), Commit(num, names))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.lists(st.sampled_from(NODES), unique=True), st.integers(1, 4),
                          st.integers(0, 8)), min_size=1, max_size=6),
       st.lists(st.booleans(), min_size=1, max_size=10))
def test_standbys_coming_and_going(changes: list[tuple[list[str], int, int]], settle: list[bool]) -> None:
    """Standbys join and leave while the leader is part way through its steps: never a broken promise,
    and once they stop changing, the target."""
    k, c, since = Key(ME, frozenset(), 0), q.NO_COMMIT, [q.NO_COMMIT]
    for active, wanted, steps in changes:
        for _ in range(steps):
            step = q.next_step(ME, k, c, len(since) == 1, active, wanted)
            if step.key is not None:
                assert q.valid_key(step.key) and all(q.safe(ME, step.key, old) for old in since)
                k = step.key
            if step.commit is not None:
                assert q.safe(ME, k, step.commit)
                c = step.commit
                since.append(c)
    active, wanted, _ = changes[-1]
    k, c, _ = run_steps(k, c, active, wanted, settle, since)
    names, num, quorum = q.target(active, wanted)
    assert (k, c) == (Key(ME, names, quorum), Commit(num, names))
