"""What the app holds while it runs: market, hub, feed state, open sockets."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

from bixweb.config import Settings
from bixweb.dashboard import Dashboard
from bixweb.hub import Hub
from bixweb.market import Market
from bixweb.web.connection import Connection


def now_ms() -> int:
    return time.time_ns() // 1_000_000


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
    counters: Counter[str] = field(default_factory=Counter)
    """Events worth counting: ``slow_consumer_closes``, ``conflated`` (state messages replaced unsent)."""
    connections: set[Connection] = field(default_factory=set)
    """Open sockets of every kind; each handler adds its own and removes it when done."""

    def feed_state(self, now: int) -> str:
        """``live``, ``stale`` (nothing for ``stale_after`` seconds) or ``down``."""
        if self.feed_down:
            return "down"
        last = self.market.last_event_ms
        if last is None or now - last > self.settings.stale_after * 1000:
            return "stale"
        return "live"

    def closed(self, conn: Connection) -> None:
        """Forget a connection that has ended, counting what happened to it."""
        self.connections.discard(conn)
        self.counters["conflated"] += conn.outbox.conflated
        if conn.slow_consumer:
            self.counters["slow_consumer_closes"] += 1

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started


SERVICE = web.AppKey("service", Service)
