"""``bixweb feed``: the process that owns the market and publishes it over Redis, with probes of its own.

It serves ``/livez``, ``/readyz`` (and its old name ``/healthz``) and
``/metrics`` on ``--host``/``--port``: a small aiohttp app behind the same
door and gate as the web service (every connection counted, header and
keep-alive timeouts, the probes answered whatever ``Host`` and even without
room, ``/metrics`` to loopback clients or with a bearer token).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from bixweb.access import Network, Tokens, networks
from bixweb.brokers.link import redacted
from bixweb.brokers.redis import RedisBroker
from bixweb.config import Settings
from bixweb.desk import Desk
from bixweb.feeds import Feed, open_feed, upstream_connected
from bixweb.limits import ConnectionLimits
from bixweb.market import Market
from bixweb.mirror import seed_of
from bixweb.owner import now_ms, run_market
from bixweb.store import STORE_FILE, SQLiteStore
from bixweb.web import gate, metrics
from bixweb.web.listen import check_listenable, deepen_backlog, start_site
from bixweb.web.service import feed_state
from bixweb.web.tcp import count_connections

log = logging.getLogger("bixweb.feed")

PROBE_CONNECTIONS = 64
"""Connections the probe server holds at once (per client: a quarter): probes and a scraper need few."""


@dataclass(eq=False)
class FeedVitals:
    """What the feed process's probes read (a :class:`~bixweb.web.metrics.Vitals`)."""

    settings: Settings
    market: Market
    broker: RedisBroker
    tokens: Tokens
    trusted_proxies: tuple[Network, ...]
    limits: ConnectionLimits = field(
        default_factory=lambda: ConnectionLimits(total=PROBE_CONNECTIONS, per_client=PROBE_CONNECTIONS // 4)
    )
    upstream: Callable[[], bool | None] = lambda: None
    counters: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    feed_down: bool = False
    shutting_down: bool = False

    @property
    def broker_down(self) -> bool:
        return not self.broker.up

    def broker_problem(self) -> str:
        return self.broker.problem

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started

    def feed_state(self, now: int) -> str:
        """The feed's own state: publishing goes on (queued) while Redis is away."""
        return feed_state(
            failed=self.feed_down,
            last_event_ms=self.market.last_event_ms,
            now=now,
            stale_after=self.settings.stale_after,
            upstream=self.upstream(),
        )


def create_probe_app(vitals: FeedVitals) -> web.Application:
    """``/livez``, ``/readyz``, ``/healthz`` and ``/metrics`` of the feed process."""
    settings = vitals.settings
    app = web.Application(
        middlewares=[gate.guard(vitals)],
        handler_args={"keepalive_timeout": settings.keepalive_timeout, "access_log_class": gate.AccessLog},
    )
    count_connections(app, vitals)
    app[metrics.VITALS] = vitals
    broker = vitals.broker
    app[metrics.REGISTRY] = metrics.registry_for(
        metrics.VitalsCollector(vitals, lambda: broker.published, lambda: broker.queued)
    )
    app.router.add_get("/livez", metrics.livez, name="livez")
    app.router.add_get("/readyz", metrics.readyz, name="readyz")
    app.router.add_get("/healthz", metrics.readyz, name="healthz")
    app.router.add_get("/metrics", metrics.metrics, name="metrics")
    return app


def owned_market(settings: Settings) -> tuple[Feed, Market, RedisBroker, Desk]:
    """The feed, the market it moves, the broker that publishes it (and keeps the desk's state),
    and the alert desk on its store in the data directory."""
    feed = open_feed(
        settings.feed,
        symbols=settings.symbols,
        seed=settings.seed,
        tick_rate=settings.tick_rate,
        book_depth=settings.book_depth,
    )
    market = Market(
        settings.symbols,
        history_points=settings.history_points,
        trade_history=settings.trade_history,
        replay_depth=settings.replay_depth,
        epoch=now_ms(),
    )
    broker = RedisBroker(
        settings.broker,
        symbols=settings.symbols,
        history_points=settings.history_points,
        replay_depth=settings.replay_depth,
    )
    broker.seed_source = lambda: seed_of(market, broker.published)
    desk = Desk(SQLiteStore(Path(settings.data_dir) / STORE_FILE), settings.symbols)
    broker.desk = desk  # its state is kept in Redis; web processes forward their requests to it
    desk.listeners.append(broker.desk_changed)
    return feed, market, broker, desk


async def run_feed_process(settings: Settings) -> None:
    """``bixweb feed --broker redis://…``: until SIGINT or SIGTERM."""
    check_listenable(settings.host, settings.port)
    stop = asyncio.Event()  # a signal during start-up ends the process once it is up, cleanly
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    feed, market, broker, desk = owned_market(settings)
    vitals = FeedVitals(
        settings,
        market,
        broker,
        Tokens.load(settings.tokens, settings.token_file),
        networks(settings.trusted_proxies),
        upstream=lambda: upstream_connected(feed),
    )
    runner = web.AppRunner(create_probe_app(vitals), handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    listening: list[Any] = []
    try:
        sockets = await start_site(runner, settings.host, settings.port)
        # a short accept batch, a deep kernel queue (as the web service: bixweb.web.listen explains)
        listening = deepen_backlog(sockets)
        log.info(
            "feed process: %s -> %s, epoch %d, %d symbols; data directory %s",
            settings.feed,
            redacted(settings.broker),
            market.epoch,
            len(market.symbols),
            settings.data_dir,
        )
        for sock in sockets:
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            log.info("probes listening on http://%s:%d/ (/livez, /readyz, /metrics)", shown, port)
        await publish_until(stop, run_market(feed, market, broker, desk), broker, settings.shutdown_timeout)
    finally:
        vitals.shutting_down = True
        await runner.cleanup()
        for sock in listening:
            sock.close()
        desk.close()
    log.info("feed process stopped")


async def publish_until(
    stop: asyncio.Event, market: Coroutine[Any, Any, None], broker: RedisBroker, shutdown_timeout: float = 5.0
) -> None:
    """Run the market and the broker until ``stop`` is set; a failure of either ends the process.

    Stopping takes at most ``shutdown_timeout`` seconds: what has not ended by
    then is named in the log and left (the process exits all the same).
    """
    tasks = [
        asyncio.create_task(broker.run(), name="broker"),
        asyncio.create_task(market, name="feed"),
    ]
    waiting = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
    log.info("feed process: stopping the market and the broker (at most %g s)", shutdown_timeout)
    started = time.monotonic()
    for task in [waiting, *tasks]:
        task.cancel()
    _, pending = await asyncio.wait([waiting, *tasks], timeout=shutdown_timeout)
    if pending:
        log.warning(
            "feed process: %s did not stop within %g s; leaving it",
            ", ".join(task.get_name() for task in pending),
            shutdown_timeout,
        )
    else:
        log.info("feed process: market and broker stopped in %.2f s", time.monotonic() - started)
    for task in done:
        if task is not waiting and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
