"""The connection table the receiving processes share."""

from __future__ import annotations

from vsmtp.net.counts import ConnectionCounts, create


def test_rows_add_up_and_each_process_writes_only_its_own() -> None:
    fd = create(2)
    first, second = ConnectionCounts(fd, rows=2, row=0), ConnectionCounts(fd, rows=2, row=1)
    first.add("192.0.2.1")
    first.add("192.0.2.1")
    second.add("192.0.2.1")
    second.add("2001:db8::1")
    assert first.of("192.0.2.1") == second.of("192.0.2.1") == 3
    assert first.of("2001:db8::1") == 1 and first.of("192.0.2.99") == 0
    assert first.total() == second.total() == 4
    second.add("192.0.2.1", -1)
    assert first.of("192.0.2.1") == 2


def test_a_restarted_process_forgets_the_sessions_of_the_one_that_died() -> None:
    fd = create(2)
    survivor, dead = ConnectionCounts(fd, rows=2, row=0), ConnectionCounts(fd, rows=2, row=1)
    survivor.add("192.0.2.1")
    dead.add("192.0.2.1")
    dead.add("192.0.2.2")
    restarted = ConnectionCounts(fd, rows=2, row=1)  # clears row 1 as it starts
    assert restarted.total() == 1 and restarted.of("192.0.2.1") == 1 and survivor.of("192.0.2.2") == 0
