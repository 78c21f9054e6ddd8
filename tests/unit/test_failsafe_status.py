"""failsafe_mode_is_active in /patroni, /readiness and /metrics; the lsn header of POST /failsafe."""

from __future__ import annotations

from hasup.api import health
from hasup.api import status as st
from hasup.election.failsafe import Failsafe
from tests.unit.test_api_admin import FakeAdmin, client, post
from tests.unit.test_api_app import NOW, pg_primary, pg_replica, snap, view
from tests.unit.test_api_worker import make_config


def test_patroni_says_failsafe_mode_is_active_only_while_it_holds() -> None:
    assert "failsafe_mode_is_active" not in st.build_status(snap(pg_primary(), view()), NOW)
    active = st.build_status(snap(pg_primary(), view(failsafe_until=NOW + 5)), NOW)
    assert active["failsafe_mode_is_active"] is True
    assert "failsafe_mode_is_active" not in st.build_status(snap(pg_primary(), view(failsafe_until=NOW - 0.1)), NOW)


def test_a_replica_without_an_etcd_view_is_ready_only_while_failsafe_holds() -> None:
    cut_off = view(leader="n2", holds_lock=False, read_at=NOW - 600)
    replica = pg_replica(received_location=None, replayed_location=None)
    assert health.readiness_code({}, snap(replica, cut_off), NOW) == health.UNAVAILABLE
    pinged = view(leader="n2", holds_lock=False, read_at=NOW - 600, failsafe_until=NOW + 10)
    assert health.readiness_code({}, snap(replica, pinged), NOW) == health.OK


def test_post_failsafe_answers_with_the_wal_position_in_the_lsn_header() -> None:
    admin = FakeAdmin()
    admin.operation_answer = (200, "Accepted")
    replica = snap(pg_replica(wal_position=0x3000060), view(leader="n2", holds_lock=False))
    result = post(client(replica, admin), "/failsafe", {"name": "n2", "api_url": "http://10.0.0.2:8008/patroni"})
    assert result.status_code == 200 and result.text == "Accepted"
    assert result.headers["lsn"] == str(0x3000060)
    admin.operation_answer = (500, "Running as a leader")
    refused = post(client(snap(pg_primary(), view()), admin), "/failsafe", {"name": "n2"})
    assert refused.status_code == 500 and "lsn" not in refused.headers


def test_failsafe_holds_until_the_later_of_a_confirmation_and_a_ping() -> None:
    failsafe = Failsafe(make_config(1))
    assert failsafe.active_until() == 0.0
    failsafe.confirmed_until = 50.0
    failsafe.pinged_by = ("n2", 80.0)
    assert failsafe.active_until() == 80.0
