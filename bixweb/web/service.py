"""What the app holds while it runs: market, hub, feed state, open sockets."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from bixweb.access import Network, Tokens
from bixweb.config import Settings
from bixweb.dashboard import Dashboard
from bixweb.desk import Desk, DeskReplica
from bixweb.hub import Hub
from bixweb.limits import ConnectionLimits
from bixweb.market import Market
from bixweb.web.connection import Connection


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def feed_state(*, failed: bool, last_event_ms: int | None, now: int, stale_after: float, upstream: bool | None) -> str:
    """``live``, ``stale`` (nothing for ``stale_after`` seconds) or ``down`` (``failed``, or
    silent with its link to its source down)."""
    if failed:
        return "down"
    if last_event_ms is None or now - last_event_ms > stale_after * 1000:
        return "down" if upstream is False else "stale"
    return "live"


class Guarded(Protocol):
    """What the door (:mod:`bixweb.web.tcp`) and the gate (:mod:`bixweb.web.gate`) read: the web
    service's :class:`Service`, or the feed process's probe server."""

    settings: Settings
    limits: ConnectionLimits
    counters: Counter[str]
    tokens: Tokens
    trusted_proxies: tuple[Network, ...]


@dataclass(eq=False)
class Service:
    """The running service; one per app, stored under :data:`SERVICE`."""

    settings: Settings
    market: Market
    hub: Hub
    """Bot streams → JSON frames."""
    ui_hub: Hub
    """Dashboard fragments → HTML frames."""
    dashboard: Dashboard
    started: float = field(default_factory=time.monotonic)
    feed_down: bool = False
    upstream: Callable[[], bool | None] = lambda: None
    """Whether the feed's link to its exchange is up (None: a feed without one)."""
    broker_down: bool = False
    """A web process that lost its link to the broker (Redis): its market stands still."""
    broker_problem: Callable[[], str] = lambda: ""
    """Why the link to the broker is down, or why no feed process publishes to it, for ``/readyz``
    (empty while all is well)."""
    limits: ConnectionLimits = field(default_factory=lambda: ConnectionLimits(total=0, per_client=0))
    tokens: Tokens = field(default_factory=lambda: Tokens(()))
    trusted_proxies: tuple[Network, ...] = ()
    counters: Counter[str] = field(default_factory=Counter)
    """Events worth counting, by name: ``slow_consumer_closes``, ``conflated`` (state messages
    replaced unsent), ``refused:<reason>``, ``opened:<kind>``, ``closed:<kind>:<code>``, and the
    totals of closed connections, ``frames_sent:<kind>``, ``messages_sent:<kind>``, ``bytes_sent:<kind>``."""
    connections: set[Connection] = field(default_factory=set)
    """Open sockets of every kind; each handler adds its own and removes it when done."""
    desk: Desk | DeskReplica | None = None
    """Alert rules and annotations; in the process that owns the market only."""
    shutting_down: bool = False
    loop_lag: float = 0.0
    """Seconds the event loop was late at its last check."""

    def feed_state(self, now: int) -> str:
        """``live``, ``stale`` (nothing for ``stale_after`` seconds) or ``down``."""
        return feed_state(
            failed=self.feed_down or self.broker_down or bool(self.broker_problem()),
            last_event_ms=self.market.last_event_ms,
            now=now,
            stale_after=self.settings.stale_after,
            upstream=self.upstream(),
        )

    def opened(self, conn: Connection) -> None:
        self.connections.add(conn)
        self.counters[f"opened:{conn.kind}"] += 1

    def closed(self, conn: Connection, code: int | None) -> None:
        """Forget a connection that has ended, counting what happened to it."""
        self.connections.discard(conn)
        counters = self.counters
        counters["conflated"] += conn.outbox.conflated
        counters[f"frames_sent:{conn.kind}"] += conn.frames_sent
        counters[f"messages_sent:{conn.kind}"] += conn.messages_sent
        counters[f"bytes_sent:{conn.kind}"] += conn.bytes_sent
        counters[f"closed:{conn.kind}:{code if code is not None else 'none'}"] += 1
        if conn.slow_consumer:
            counters["slow_consumer_closes"] += 1

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started


SERVICE = web.AppKey("service", Service)
