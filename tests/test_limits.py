"""Inbound message rates and connection counts, as values."""

from __future__ import annotations

from bixweb.limits import ConnectionLimits, InboundLimiter


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
