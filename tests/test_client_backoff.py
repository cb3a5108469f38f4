"""The reconnect policy (bixweb.client.reconnect.Backoff): growing delays, reset only when healthy."""

from __future__ import annotations

import random
from itertools import islice

import aiohttp
import pytest

from bixweb.client import Backoff, HandshakeRefused
from bixweb.client.reconnect import retryable
from bixweb.client.requests import Pacer


class Ceiling(random.Random):
    """Full jitter at its top: every delay is the ceiling, so the sequence is exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


def delays(backoff: Backoff, n: int) -> list[float]:
    return [backoff.next_delay() for _ in range(n)]


def test_delays_keep_growing_across_connections_that_were_not_healthy() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0, healthy_after=10.0, rng=Ceiling())
    seen = []
    for now in range(6):
        backoff.opened(float(now))
        backoff.data_seen = True  # data, but closed at once
        assert backoff.closed(now + 0.1) is False
        seen.append(backoff.next_delay())
    assert seen == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_healthy_connection_starts_the_delays_over() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0, healthy_after=10.0, rng=Ceiling())
    assert delays(backoff, 3) == [0.5, 1.0, 2.0]
    backoff.opened(100.0)
    assert backoff.closed(115.0) is False  # long enough, but no data: not healthy
    assert backoff.next_delay() == 4.0
    backoff.opened(200.0)
    backoff.data_seen = True
    assert backoff.closed(210.0) is True
    assert delays(backoff, 2) == [0.5, 1.0]


def test_a_fixed_delay_is_the_old_clients_five_seconds() -> None:
    backoff = Backoff(fixed=5.0, rng=Ceiling())
    assert delays(backoff, 4) == [5.0] * 4
    refusal = HandshakeRefused(503, "server_full", "full", retry_after=20.0)
    assert backoff.next_delay(refusal) == 20.0  # the server's Retry-After wins, up to the longest wait (30 s)
    assert Backoff(fixed=5.0, maximum=8.0).next_delay(HandshakeRefused(503, "x", "y", retry_after=60.0)) == 8.0


def test_jittered_delays_stay_under_their_ceilings() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0, rng=random.Random(7))
    got = list(islice(iter(backoff.next_delay, None), 50))
    ceilings = [min(8.0, 2.0**n) for n in range(50)]
    assert all(0 <= d <= c for d, c in zip(got, ceilings, strict=True))
    assert len(set(got)) > 40  # jitter: clients that lost one server do not come back together


@pytest.mark.parametrize("kwargs", [{"initial": 0}, {"initial": 5, "maximum": 1}, {"fixed": -1}, {"healthy_after": -1}])
def test_bad_values_are_refused_at_once(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_requests_are_paced_under_the_servers_rate_in_the_order_they_come() -> None:
    pacer = Pacer(20.0)  # the server's max_messages_per_s: bursts of 20, then 15 a second
    assert [pacer.delay(0.0) for _ in range(20)] == [0.0] * 20
    waits = [pacer.delay(0.0) for _ in range(15)]
    assert waits == pytest.approx([n / 15 for n in range(1, 16)])  # each takes the next free slot
    assert pacer.delay(10.0) == 0.0  # refilled (up to the burst) while idle
    pacer.give_back()
    pacer.configure(4.0)
    assert [pacer.delay(20.0) for _ in range(5)] == pytest.approx([0, 0, 0, 0, 1 / 3])


def test_what_is_retried_and_what_ends_the_loop() -> None:
    assert retryable(OSError("connection refused")) and retryable(TimeoutError())
    assert retryable(aiohttp.ClientConnectionError()) and retryable(HandshakeRefused(503, "server_full", "full"))
    assert not retryable(HandshakeRefused(401, "invalid_token", "no")) and not retryable(ValueError("bug"))
    page = aiohttp.WSServerHandshakeError(None, (), status=200, message="Invalid response status")  # type: ignore[arg-type]
    assert not retryable(page)  # ws://host:8080/ (the dashboard), not /ws: retrying cannot help
