"""Rate limits as values: no clock is read here, the caller passes the time."""

from __future__ import annotations

from typing import Literal


class TokenBucket:
    """Allows ``rate`` events per second on average and ``burst`` at once.

    :meth:`spend` may take the bucket below zero: work already done is paid
    for by waiting, so a costly event holds back the ones after it.
    """

    __slots__ = ("burst", "rate", "_tokens", "_updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._updated = now

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._updated) * self.rate)
        self._updated = max(self._updated, now)

    def allow(self, now: float) -> bool:
        """Take one token if there is one."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def spend(self, now: float, tokens: float) -> None:
        """Take ``tokens`` whether or not there are that many."""
        self._refill(now)
        self._tokens -= tokens

    def tokens(self, now: float) -> float:
        self._refill(now)
        return self._tokens


REFUSAL_COST = 4.0
"""Tokens a refused message costs on top of its own: a client whose messages keep failing gets
a quarter of the rate, and is closed if it keeps sending."""

TOKENS_PER_CPU_SECOND = 1_000.0
"""One token per millisecond of server CPU a message took (at most :data:`MAX_CHARGE` of the burst
for one message): a client of messages that cost up to that much uses at most ``rate`` ms of CPU per
second (2 % of a core at the default 20/s); costlier ones still get one through every second."""

REFUSAL_LOG_INTERVAL = 10.0
"""Seconds between two log lines about one connection's refused messages."""


MAX_CHARGE = 0.5
"""The most one message's CPU time may cost, as a share of the burst: a garbage-collection pause
or a large snapshot throttles a polite bot for a moment, never locks it out."""


class InboundLimiter:
    """Client messages: ``ok``, ``refuse`` (answer ``rate_limited`` unparsed) or ``close`` (1008).

    A budget of ``rate`` tokens per second, twice that at once. Each message
    takes one token when it arrives (:meth:`check`); after it was handled the
    caller reports its cost (:meth:`charge`): the CPU time it took (at most
    :data:`MAX_CHARGE` of the burst), and whether it was refused. So the
    limit is on work, not only on count: big or failing messages hold back
    the ones after them.

    Refusals draw on a second bucket of the same size and rate (``strikes``):
    one for each message refused for want of tokens, :data:`REFUSAL_COST` for
    each that was handled and refused. A client whose refusals come faster
    than the rate, for longer than a burst's worth, is a flood and is closed;
    one that only goes over the rate now and then, or sends a bad message
    now and then, never is.
    """

    __slots__ = ("bucket", "strikes", "refusals")

    def __init__(self, rate: float, now: float) -> None:
        self.bucket = TokenBucket(rate, rate * 2, now)
        self.strikes = TokenBucket(rate, rate * 2, now)
        self.refusals = LogThrottle(REFUSAL_LOG_INTERVAL)

    def check(self, now: float) -> Literal["ok", "refuse", "close"]:
        if self.bucket.allow(now):
            return "ok"
        return "refuse" if self.strikes.allow(now) else "close"

    def charge(self, now: float, cpu_seconds: float, *, failed: bool) -> None:
        """What a message let through by :meth:`check` cost: ``cpu_seconds``, and ``failed`` if refused."""
        work = min(cpu_seconds * TOKENS_PER_CPU_SECOND, self.bucket.burst * MAX_CHARGE)
        self.bucket.spend(now, work + (REFUSAL_COST if failed else 0.0))
        if failed:
            self.strikes.spend(now, REFUSAL_COST)

    def refused(self, now: float) -> int | None:
        """Count one refused message; how many to log now (the first, then one line per interval), else None."""
        return self.refusals.note(now)


class ConnectionLimits:
    """Open TCP connections per client address and in total, one count per connection.

    :meth:`admit` answers ``None`` (counted in: call :meth:`release` when the
    connection ends), ``"client"`` (that address has its share) or ``"total"``
    (the server is full). A limit of 0 is no limit. A trusted proxy's
    connection is ``shared``: it counts in the total only, and :meth:`move`
    hands it to the client of each request it carries, and back.
    """

    __slots__ = ("per_client", "total", "open", "_by_client", "_refusal_lines")

    def __init__(self, *, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.open = 0
        self._by_client: dict[str, int] = {}
        self._refusal_lines: dict[str, LogThrottle] = {}

    def refusal_line(self, code: str, now: float) -> int | None:
        """How many refusals of ``code`` to report in a log line now (this one and those held back),
        or ``None``: a client retrying a refused request in a loop makes one line per interval."""
        throttle = self._refusal_lines.get(code)
        if throttle is None:  # codes are the server's own, a few dozen at most
            throttle = self._refusal_lines[code] = LogThrottle(REFUSAL_LOG_INTERVAL)
        return throttle.note(now)

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
