"""Inbound message rates and connection counts, as values."""

from __future__ import annotations

from bixweb.limits import ConnectionLimits, InboundLimiter, LogThrottle


def test_a_client_address_gets_its_share_and_others_still_get_in() -> None:
    limits = ConnectionLimits(total=5, per_client=2)
    assert limits.admit("a") is None and limits.admit("a") is None
    assert limits.admit("a") == "client"
    assert limits.admit("b") is None
    assert (limits.open, limits.held_by("a")) == (3, 2)
    limits.release("a")
    assert limits.admit("a") is None


def test_the_total_is_refused_as_full_and_released_sockets_make_room() -> None:
    limits = ConnectionLimits(total=2, per_client=0)
    assert limits.admit("a") is None and limits.admit("b") is None
    assert limits.admit("c") == "total"
    limits.release("b")
    assert limits.admit("c") is None
    limits.release("nobody")  # releasing what was never admitted changes nothing
    assert limits.open == 2


def test_zero_is_no_limit() -> None:
    limits = ConnectionLimits(total=0, per_client=0)
    assert all(limits.admit("a") is None for _ in range(10_000))


def test_inbound_burst_then_refusals_then_a_flood() -> None:
    limiter = InboundLimiter(rate=10, now=0.0)
    verdicts = [limiter.check(0.0) for _ in range(60)]
    assert verdicts[:20] == ["ok"] * 20  # the burst is twice the rate
    assert verdicts[20:40] == ["refuse"] * 20
    assert verdicts[41] == "close"
    assert limiter.check(10.0) == "ok"  # the bucket refills with time


def test_a_proxys_connections_count_in_the_total_and_move_to_the_client_of_each_request() -> None:
    limits = ConnectionLimits(total=4, per_client=1)
    assert limits.admit("proxy", shared=True) is None and limits.admit("proxy", shared=True) is None
    assert limits.move("proxy", "203.0.113.1") is None
    assert limits.move("proxy", "203.0.113.1") == "client"  # that client holds its share; the count stays
    assert (limits.held_by("proxy"), limits.held_by("203.0.113.1"), limits.open) == (1, 1, 2)
    assert limits.move("203.0.113.1", "proxy", shared=True) is None  # the request is over
    assert (limits.held_by("proxy"), limits.held_by("203.0.113.1"), limits.open) == (2, 0, 2)
    assert limits.admit("proxy", shared=True) is None and limits.admit("proxy", shared=True) is None
    assert limits.admit("proxy", shared=True) == "total"


def test_a_log_throttle_lets_one_line_through_per_interval_with_the_count() -> None:
    throttle = LogThrottle(10.0)
    assert throttle.note(0.0) == 1
    assert [throttle.note(t) for t in (1.0, 2.0, 3.0)] == [None, None, None]
    assert throttle.note(10.5) == 4  # three held back and this one
    assert throttle.note(11.0) is None
    assert throttle.flush(20.5) == 1 and throttle.flush(21.0) is None


def test_connections_leave_the_server_descriptors_of_its_own() -> None:
    from bixweb.__main__ import FILES_KEPT, connections_allowed
    from bixweb.web.listen import ACCEPTED_IN_FLIGHT
    from bixweb.web.tcp import REFUSED_WAITING

    reserve = FILES_KEPT + REFUSED_WAITING + ACCEPTED_IN_FLIGHT
    assert connections_allowed(10_000, 65_536) == 10_000
    assert connections_allowed(10_000, 1_024) == 1_024 - reserve
    assert connections_allowed(0, 1_024) == 1_024 - reserve  # "no limit" is still the descriptors'
    assert connections_allowed(10, 100) == 1
