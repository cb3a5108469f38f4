"""The app factory: ``create_app(settings)`` builds the whole service.

Background work (the feed pump and the status broadcaster) lives in
``cleanup_ctx``; open sockets are closed with 1012 on shutdown so clients
know to reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp_jinja2
from aiohttp import web

from bixweb import assets, protocol
from bixweb.access import Tokens, networks
from bixweb.brokers import Broker, open_broker
from bixweb.brokers.link import redacted
from bixweb.config import Settings
from bixweb.dashboard import Dashboard, join_fragments
from bixweb.desk import Desk, DeskReplica
from bixweb.errors import ConfigError
from bixweb.feeds import Feed, open_feed, upstream_connected
from bixweb.hub import Hub
from bixweb.limits import ConnectionLimits
from bixweb.market import Market, Message, Outgoing
from bixweb.mirror import Mirror, Part, Seed
from bixweb.owner import run_market
from bixweb.render import Renderer, environment
from bixweb.store import STORE_FILE, SQLiteStore
from bixweb.web import gate, metrics, pages
from bixweb.web.bot import bot_socket
from bixweb.web.connection import CLOSE_RESTART
from bixweb.web.service import SERVICE, Service, now_ms
from bixweb.web.tcp import count_connections
from bixweb.web.ui import current_status, dashboard_page, ui_socket

UI_STATUS_INTERVAL = 1.0
"""Seconds between status fragments; the page shows "disconnected" after 3.5 s without one."""

log = logging.getLogger("bixweb.app")

FEED = web.AppKey("feed", Feed)
BROKER = web.AppKey("broker", Broker)


async def pump(service: Service, feed: Feed, broker: Broker) -> None:
    """Feed events → market state (and alert rules) → broker, one flush window per event list.

    Runs when this process owns the market.
    """
    try:
        desk = service.desk
        await run_market(feed, service.market, broker, desk if isinstance(desk, Desk) else None)
    except asyncio.CancelledError:
        raise
    except Exception:
        service.feed_down = True
        log.exception("the feed stopped")


class Fanout:
    """What the broker brings goes to the hub (bots) and the dashboard (pages); a broker Subscriber."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.seeded = asyncio.Event()
        """Set once a follower's mirror holds the owner's state."""
        self.linked = False
        """Whether the broker's link is up (a follower's wait for the state says which wait it was)."""

    def on_local(self, outgoing: Sequence[Outgoing]) -> None:
        self.service.hub.publish(outgoing)
        self.service.dashboard.mark(outgoing)

    def on_publication(self, parts: Sequence[Part], messages: Sequence[tuple[str, Message]]) -> None:
        service = self.service
        mirror = service.market
        assert isinstance(mirror, Mirror)
        mirror.absorb(messages, now_ms())
        service.hub.publish_encoded(parts)
        service.dashboard.mark_streams(stream for stream, _, _ in parts)

    def on_seed(self, seed: Seed) -> None:
        service = self.service
        mirror = service.market
        assert isinstance(mirror, Mirror)
        missed = mirror.load(seed, now_ms())
        log.info(
            "market state loaded: epoch %d, publication %d; %d messages to catch clients up",
            seed.epoch,
            seed.published,
            len(missed),
        )
        service.hub.publish_encoded(missed)  # what clients missed while the link was down, in order
        service.dashboard.mark_streams(mirror.latest)
        service.dashboard.mark_streams(mirror.recent)
        self.seeded.set()

    def on_link(self, up: bool) -> None:
        self.linked = up
        self.service.broker_down = not up

    def on_desk(self, state: bytes, change: str | None) -> None:
        desk = self.service.desk
        if isinstance(desk, DeskReplica):
            desk.load(state, change)


FANOUT = web.AppKey("fanout", Fanout)
FOLLOWER_START_WAIT = 5.0
"""Seconds a web process waits at start for the feed process's state before it serves anyway."""


WATCHDOG_PERIOD = 0.25
"""Seconds between looks at the feed: a change of state is told at once, not at the next status."""


async def broadcast_status(service: Service) -> None:
    """A ``status`` every ``status_interval``, and at once when the feed turns stale, live or down."""
    loop = asyncio.get_running_loop()
    last_state = service.feed_state(now_ms())
    due = loop.time() + service.settings.status_interval
    while True:
        await asyncio.sleep(min(WATCHDOG_PERIOD, service.settings.status_interval))
        now = now_ms()
        state = service.feed_state(now)
        if state == last_state and loop.time() < due:
            continue
        if state != last_state:
            log.log(logging.INFO if state == "live" else logging.WARNING, "feed %s -> %s", last_state, state)
        last_state = state
        due = loop.time() + service.settings.status_interval
        service.hub.broadcast(
            protocol.status_message(
                now,
                feed=state,
                clients=len(service.connections),
                uptime_s=service.uptime_s,
                last_event_ms=service.market.last_event_ms,
            )
        )


async def refresh_dashboards(service: Service) -> None:
    """Changed fragments at the browser rate; the status fragment every second."""
    period = 1.0 / service.settings.ui_rate
    next_status = 0.0
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(period)
        try:
            service.dashboard.flush()
            if loop.time() >= next_status:
                next_status = loop.time() + UI_STATUS_INTERVAL
                service.dashboard.broadcast_status(current_status(service))
        except Exception:
            log.exception("rendering the dashboard failed")


async def background(app: web.Application) -> AsyncIterator[None]:
    service = app[SERVICE]
    broker = app[BROKER]
    feed = app.get(FEED)
    tasks = []
    if feed is not None:  # this process owns the market; its first events come before the first status
        tasks.append(asyncio.create_task(pump(service, feed, broker), name="feed"))
    tasks += [
        asyncio.create_task(broker.run(), name="broker"),
        asyncio.create_task(broadcast_status(service), name="status"),
        asyncio.create_task(refresh_dashboards(service), name="dashboards"),
        asyncio.create_task(metrics.watch_loop_lag(service), name="loop-lag"),
    ]
    if feed is None:  # a follower: serve once the owner's state is here, or without it after a while
        try:
            async with asyncio.timeout(FOLLOWER_START_WAIT):
                await app[FANOUT].seeded.wait()
        except TimeoutError:
            # with Redis linked, only the feed process is not there yet: normal where nothing orders
            # the starts (Kubernetes); /readyz says feed_down until it is
            log.log(
                logging.INFO if app[FANOUT].linked else logging.WARNING,
                "no market state from %s after %g s; serving without it",
                redacted(broker.url),
                FOLLOWER_START_WAIT,
            )
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def close_sockets(app: web.Application) -> None:
    """On shutdown: every socket gets 1012 (service restart), so bots and dashboards reconnect.

    Waits at most half of ``shutdown_timeout`` for the closing handshakes;
    aiohttp then gives the handlers the other half and drops whatever is left.
    """
    service = app[SERVICE]
    service.shutting_down = True
    connections = list(service.connections)
    log.info("closing %d sockets with %d", len(connections), CLOSE_RESTART)
    for conn in connections:
        conn.close_soon(CLOSE_RESTART, "server restart")
    closing = asyncio.gather(*(conn.wait_closed() for conn in connections), return_exceptions=True)
    try:
        async with asyncio.timeout(service.settings.shutdown_timeout / 2):
            await closing
    except TimeoutError:
        log.warning("shutdown: %d sockets did not finish closing in time", len(service.connections))


def announce_access(settings: Settings, tokens: Tokens) -> None:
    """Say at start-up who may use the bot socket."""
    if tokens:
        log.info("bot socket /ws: bearer token required (%d configured)", len(tokens))
    elif settings.open_bots:
        log.warning("bot socket /ws: open to every address without a token (--open-bots)")
    else:  # the intended default: said, not warned of
        log.info(
            "bot socket /ws: no tokens configured, so it serves loopback clients only "
            "(set BIXWEB_TOKENS or --token-file to serve others)"
        )
    if settings.trusted_proxies:
        log.info("trusting X-Forwarded-For/-Proto from %s", ", ".join(settings.trusted_proxies))


def replica_desk(broker: Broker) -> DeskReplica | None:
    """A follower's desk: the feed process keeps the rules, requests go to it over Redis."""
    from bixweb.brokers.redis import RedisBroker  # only here: redis is an extra, and open_broker imported it

    return DeskReplica(broker.forward) if isinstance(broker, RedisBroker) else None


def create_app(settings: Settings | None = None, *, feed: Feed | None = None) -> web.Application:
    """The bixweb application; ``feed`` overrides the one ``settings.feed`` names.

    Raises :class:`~bixweb.errors.InstallError` first if the install lacks a file it serves.
    """
    assets.check()  # before anything starts or logs: a broken install gets one line, not a frozen page
    settings = settings or Settings()
    follower = urlsplit(settings.broker).scheme != "memory"
    if feed is None and not follower:
        feed = open_feed(
            settings.feed,
            symbols=settings.symbols,
            seed=settings.seed,
            tick_rate=settings.tick_rate,
            book_depth=settings.book_depth,
        )
    unknown = [s for s in settings.watchlist if s not in settings.symbols]
    if unknown:
        raise ConfigError(f"--watchlist: {', '.join(unknown)} not among --symbols")
    protocol.schemas()  # load and check them now, not on the first message
    env = environment(assets.templates_dir())
    market = (Mirror if follower else Market)(
        settings.symbols,
        history_points=settings.history_points,
        trade_history=settings.trade_history,
        replay_depth=settings.replay_depth,
        epoch=now_ms(),
    )
    tokens = Tokens.load(settings.tokens, settings.token_file)
    broker = open_broker(
        settings.broker,
        symbols=settings.symbols,
        history_points=settings.history_points,
        replay_depth=settings.replay_depth,
    )
    desk: Desk | DeskReplica | None
    if not follower:
        desk = Desk(SQLiteStore(Path(settings.data_dir) / STORE_FILE), settings.symbols)
    else:
        desk = replica_desk(broker)
    ui_hub = Hub(join=join_fragments)
    watchlist = settings.watchlist or settings.symbols[:6]
    service = Service(
        settings=settings,
        market=market,
        hub=Hub(strict=settings.strict),
        ui_hub=ui_hub,
        dashboard=Dashboard(
            market, Renderer(env, chart_points=settings.history_points), ui_hub, watchlist=watchlist, desk=desk
        ),
        limits=ConnectionLimits(total=settings.max_connections, per_client=settings.max_connections_per_client),
        tokens=tokens,
        trusted_proxies=networks(settings.trusted_proxies),
        desk=desk,
    )
    service.broker_problem = lambda: broker.problem
    announce_access(settings, tokens)
    # handler_args reach every runner's connections, the tests' too
    app = web.Application(
        middlewares=[gate.guard(service)],
        handler_args={"keepalive_timeout": settings.keepalive_timeout, "access_log_class": gate.AccessLog},
    )
    count_connections(app, service)
    app[SERVICE] = service
    app[metrics.VITALS] = service
    if feed is not None:
        owned = feed
        service.upstream = lambda: upstream_connected(owned)
    app[metrics.REGISTRY] = metrics.registry_for(service)
    fanout = app[FANOUT] = Fanout(service)
    broker.subscribe(fanout)
    app[BROKER] = broker
    if feed is not None:
        app[FEED] = feed
    app[aiohttp_jinja2.APP_KEY] = env
    app.router.add_get("/", dashboard_page, name="dashboard")
    app.router.add_get("/ws/ui", ui_socket, name="ui_socket")
    app.router.add_get("/vendor/{name:.+}", pages.vendor_file, name="vendor")
    app.router.add_get("/ws", bot_socket, name="bot_socket")
    app.router.add_get("/livez", metrics.livez, name="livez")
    app.router.add_get("/readyz", metrics.readyz, name="readyz")
    app.router.add_get("/healthz", metrics.readyz, name="healthz")  # the old name of /readyz
    app.router.add_get("/metrics", metrics.metrics, name="metrics")
    app.router.add_get("/schemas/", pages.schema_index, name="schemas")
    app.router.add_get("/schemas", pages.to_schema_index, name="schemas_redirect")
    app.router.add_get("/schemas/{name:.+\\.json}", pages.schema_file, name="schema")
    app.router.add_static("/static/", assets.static_dir(), name="static")
    app.cleanup_ctx.append(background)
    app.on_shutdown.append(close_sockets)
    if isinstance(desk, Desk):
        owned_desk = desk

        async def close_desk(app: web.Application) -> None:
            owned_desk.close()  # the alerts still being written first

        app.on_cleanup.append(close_desk)
    return app
