"""Rate limits as values: no clock is read here, the caller passes the time."""

from __future__ import annotations

from typing import Literal


class TokenBucket:
    """Allows ``rate`` events per second on average and ``burst`` at once."""

    __slots__ = ("burst", "rate", "_tokens", "_updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._updated = now

    def allow(self, now: float) -> bool:
        """Take one token if there is one."""
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class InboundLimiter:
    """Client messages: ``ok``, ``refuse`` (answer ``rate_limited``) or ``close`` (a flood).

    ``rate`` messages per second on average, twice that at once; more than a
    burst's worth of refusals in a row is a flood.
    """

    __slots__ = ("bucket", "denied")

    def __init__(self, rate: float, now: float) -> None:
        self.bucket = TokenBucket(rate, rate * 2, now)
        self.denied = 0

    def check(self, now: float) -> Literal["ok", "refuse", "close"]:
        if self.bucket.allow(now):
            self.denied = 0
            return "ok"
        self.denied += 1
        return "close" if self.denied > self.bucket.burst else "refuse"
