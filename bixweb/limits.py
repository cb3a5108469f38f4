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


class ConnectionLimits:
    """Open sockets per client address and in total.

    :meth:`admit` answers ``None`` (counted in: call :meth:`release` when the
    socket ends), ``"client"`` (that address has its share) or ``"total"``
    (the server is full). A limit of 0 is no limit.
    """

    __slots__ = ("per_client", "total", "open", "_by_client")

    def __init__(self, *, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.open = 0
        self._by_client: dict[str, int] = {}

    def admit(self, client: str) -> Literal["client", "total"] | None:
        if self.total and self.open >= self.total:
            return "total"
        held = self._by_client.get(client, 0)
        if self.per_client and held >= self.per_client:
            return "client"
        self.open += 1
        self._by_client[client] = held + 1
        return None

    def release(self, client: str) -> None:
        held = self._by_client.get(client, 0)
        if held <= 0:
            return
        self.open -= 1
        if held == 1:
            del self._by_client[client]
        else:
            self._by_client[client] = held - 1

    def held_by(self, client: str) -> int:
        return self._by_client.get(client, 0)
