"""Inbound message rates and connection counts, as values."""

from __future__ import annotations

from bixweb.limits import (
    REFUSAL_COST,
    REFUSAL_LOG_INTERVAL,
    ConnectionLimits,
    InboundLimiter,
    LogThrottle,
)


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


def test_failing_messages_cost_more_and_a_client_that_keeps_failing_is_closed() -> None:
    limiter = InboundLimiter(rate=20, now=0.0)
    verdicts = []
    for n in range(200):  # 18 a second, every one refused
        now = n / 18
        verdict = limiter.check(now)
        verdicts.append(verdict)
        if verdict == "close":
            break
        if verdict == "ok":
            limiter.charge(now, 0.0001, failed=True)
    first_refusal = verdicts.index("refuse")
    assert 5 <= first_refusal <= 12  # the burst of 40 tokens buys about 8 refused messages
    assert verdicts[-1] == "close" and len(verdicts) < 18 * 6  # closed within a few seconds
    allowed_late = verdicts[first_refusal:].count("ok") / ((len(verdicts) - first_refusal) / 18)
    assert allowed_late <= 20 / (1 + REFUSAL_COST) + 1  # throttled to a fifth of the rate


def test_handled_messages_reset_the_refusal_count_so_a_busy_good_client_is_not_closed() -> None:
    limiter = InboundLimiter(rate=20, now=0.0)
    for n in range(2_000):  # 30 a second, above the rate, each one handled fine
        now = n / 30
        if limiter.check(now) == "ok":
            limiter.charge(now, 0.0001, failed=False)
        assert limiter.strikes.tokens(now) >= limiter.bucket.burst / 2
    assert limiter.check(2_000 / 30 + 5) == "ok"


def test_cpu_time_is_charged_so_costly_messages_hold_back_the_next_ones() -> None:
    limiter = InboundLimiter(rate=20, now=0.0)
    assert limiter.check(0.0) == "ok"
    limiter.charge(0.0, 0.050, failed=False)  # 50 ms of work: charged half the burst (20 tokens), not 50
    assert limiter.check(0.0) == "ok"  # a pause or a big snapshot does not lock a polite bot out
    limiter.charge(0.0, 0.050, failed=False)  # again: 40 - 1 - 20 - 1 - 20 = -2 tokens
    assert limiter.check(0.0) == "refuse"
    assert limiter.check(0.1) == "refuse"  # 2 tokens back, none to spare
    assert limiter.check(0.1 + 1.5 / 20) == "ok"


def test_a_flood_is_closed_after_a_burst_of_refusals_but_an_occasional_excess_never() -> None:
    limiter = InboundLimiter(rate=20, now=0.0)
    verdicts = [limiter.check(0.0) for _ in range(100)]  # 100 at once
    assert verdicts.count("ok") == 40 and verdicts[40:80] == ["refuse"] * 40 and verdicts[80] == "close"
    limiter = InboundLimiter(rate=20, now=0.0)
    for n in range(3_000):  # 25 a second for two minutes: a fifth refused, forever
        assert limiter.check(n / 25) != "close"


def test_refusals_are_logged_first_then_counted_per_interval() -> None:
    limiter = InboundLimiter(rate=20, now=0.0)
    logged = [(t, limiter.refused(t)) for t in (0.0, 0.1, 0.2, 5.0, REFUSAL_LOG_INTERVAL + 0.05, 15.0)]
    assert [(t, count) for t, count in logged if count is not None] == [(0.0, 1), (REFUSAL_LOG_INTERVAL + 0.05, 4)]
