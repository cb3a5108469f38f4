"""Inbound message rates and connection counts, as values."""

from __future__ import annotations

from bixweb.limits import REFUSAL_COST, REFUSAL_LOG_INTERVAL, TOKENS_PER_CPU_SECOND, ConnectionLimits, InboundLimiter


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
        assert limiter.denied <= limiter.bucket.burst
    assert limiter.check(2_000 / 30 + 5) == "ok"


def test_cpu_time_is_charged_so_costly_messages_hold_back_the_next_ones() -> None:
    limiter = InboundLimiter(rate=20, now=0.0)
    assert limiter.check(0.0) == "ok"
    limiter.charge(0.0, 0.050, failed=False)  # 50 ms of work: 50 tokens, more than the burst
    assert limiter.check(0.0) == "refuse"
    assert limiter.check(0.5) == "refuse"  # 10 tokens back, still in debt
    assert limiter.check(0.6 + 1 / TOKENS_PER_CPU_SECOND) == "ok"


def test_refusals_are_logged_first_then_counted_per_interval() -> None:
    limiter = InboundLimiter(rate=20, now=0.0)
    logged = [(t, limiter.refused(t)) for t in (0.0, 0.1, 0.2, 5.0, REFUSAL_LOG_INTERVAL + 0.05, 15.0)]
    assert [(t, count) for t, count in logged if count is not None] == [(0.0, 1), (REFUSAL_LOG_INTERVAL + 0.05, 4)]
