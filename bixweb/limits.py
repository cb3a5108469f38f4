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
    """Open TCP connections per client address and in total, one count per connection.

    :meth:`admit` answers ``None`` (counted in: call :meth:`release` when the
    connection ends), ``"client"`` (that address has its share) or ``"total"``
    (the server is full). A limit of 0 is no limit. A trusted proxy's
    connection is ``shared``: it counts in the total only, and :meth:`move`
    hands it to the client of each request it carries, and back.
    """

    __slots__ = ("per_client", "total", "open", "_by_client")

    def __init__(self, *, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.open = 0
        self._by_client: dict[str, int] = {}

    def admit(self, client: str, *, shared: bool = False) -> Literal["client", "total"] | None:
        if self.total and self.open >= self.total:
            return "total"
        if not shared and self._full(client):
            return "client"
        self.open += 1
        self._by_client[client] = self._by_client.get(client, 0) + 1
        return None

    def move(self, held: str, client: str, *, shared: bool = False) -> Literal["client"] | None:
        """Count a connection held by ``held`` for ``client`` instead; refused, it stays with ``held``."""
        if held == client:
            return None
        if not shared and self._full(client):
            return "client"
        self.release(held)
        self.open += 1
        self._by_client[client] = self._by_client.get(client, 0) + 1
        return None

    def _full(self, client: str) -> bool:
        return bool(self.per_client) and self._by_client.get(client, 0) >= self.per_client

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


class LogThrottle:
    """At most one log line per ``interval`` for a kind of event that can come by the thousand.

    :meth:`note` counts one event and answers how many to report now (this one
    and those held back since the last line), or ``None`` within the interval;
    :meth:`flush` reports what was held back when the interval is over.
    """

    __slots__ = ("interval", "held", "_quiet_until")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.held = 0
        self._quiet_until = float("-inf")

    def note(self, now: float) -> int | None:
        self.held += 1
        if now < self._quiet_until:
            return None
        return self.flush(now)

    def flush(self, now: float) -> int | None:
        held, self.held = self.held, 0
        if not held:
            return None
        self._quiet_until = now + self.interval
        return held

    @property
    def quiet_until(self) -> float:
        return self._quiet_until
