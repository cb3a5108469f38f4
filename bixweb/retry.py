"""Delays between reconnection attempts of the server's own links (an exchange, Redis).

(The bot client library has its own, :func:`bixweb.client.streams.backoff_delays`,
with full jitter: many clients of one server should spread out as much as possible.)
"""

from __future__ import annotations

import random
from collections.abc import Iterator


def backoff(
    initial: float = 0.5, maximum: float = 30.0, *, factor: float = 2.0, rng: random.Random | None = None
) -> Iterator[float]:
    """Delays before successive reconnection attempts, in seconds.

    Exponential and capped, with "equal jitter": each delay is drawn between
    half the current ceiling and the ceiling, so that many servers cut off at
    once do not come back in step, and no delay is zero (an exchange limits
    connection attempts per IP).
    """
    rng = rng or random.Random()
    ceiling = initial
    while True:
        yield rng.uniform(ceiling / 2, ceiling)
        ceiling = min(ceiling * factor, maximum)
