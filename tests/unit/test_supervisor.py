from hasup.supervisor import RestartBudget


def test_first_restart_of_election_and_watchdog_is_immediate():
    assert RestartBudget(immediate_first=True).next_delay(0.0) == 0.0
    assert RestartBudget(immediate_first=False).next_delay(0.0) == 0.5


def test_backoff_grows_then_the_budget_runs_out():
    b = RestartBudget(immediate_first=True, limit=5, window=300)
    delays = [b.next_delay(float(t)) for t in range(6)]
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, None]


def test_old_deaths_leave_the_window():
    b = RestartBudget(immediate_first=False, limit=2, window=100)
    assert b.next_delay(0) == 0.5 and b.next_delay(50) == 1.0
    assert b.next_delay(99) is None
    assert b.next_delay(250) == 0.5  # everything before 150 has left the window
