"""The app factory: ``create_app(settings)`` builds the whole service.

Background work (the feed pump and the status broadcaster) lives in
``cleanup_ctx``; open sockets are closed with 1012 on shutdown so clients
know to reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp_jinja2
import jinja2
from aiohttp import web

from bixweb import protocol
from bixweb.config import Settings
from bixweb.feeds import Feed, open_feed
from bixweb.hub import Hub
from bixweb.market import Market
from bixweb.web import pages
from bixweb.web.bot import bot_socket
from bixweb.web.connection import CLOSE_RESTART
from bixweb.web.service import SERVICE, Service, now_ms

log = logging.getLogger("bixweb.app")

FEED = web.AppKey("feed", Feed)


async def pump(service: Service, feed: Feed) -> None:
    """Feed events → market state → hub, one flush window per event list."""
    market, hub = service.market, service.hub
    try:
        async for events in feed.events():
            hub.publish(market.apply(events, now_ms()))
    except asyncio.CancelledError:
        raise
    except Exception:
        service.feed_down = True
        log.exception("the feed stopped")


async def broadcast_status(service: Service) -> None:
    while True:
        await asyncio.sleep(service.settings.status_interval)
        now = now_ms()
        service.hub.broadcast(
            protocol.status_message(
                now,
                feed=service.feed_state(now),
                clients=len(service.connections),
                uptime_s=service.uptime_s,
                last_event_ms=service.market.last_event_ms,
            )
        )


async def background(app: web.Application) -> AsyncIterator[None]:
    service = app[SERVICE]
    tasks = [
        asyncio.create_task(pump(service, app[FEED]), name="feed"),
        asyncio.create_task(broadcast_status(service), name="status"),
    ]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def close_sockets(app: web.Application) -> None:
    """On shutdown: every socket gets 1012 (service restart), so clients reconnect."""
    connections = list(app[SERVICE].connections)
    for conn in connections:
        conn.close_soon(CLOSE_RESTART, "server restart")
    await asyncio.gather(*(conn.wait_closed() for conn in connections), return_exceptions=True)


def create_app(settings: Settings | None = None, *, feed: Feed | None = None) -> web.Application:
    """The bixweb application; ``feed`` overrides the one ``settings.feed`` names."""
    settings = settings or Settings()
    if feed is None:
        feed = open_feed(
            settings.feed,
            symbols=settings.symbols,
            seed=settings.seed,
            tick_rate=settings.tick_rate,
            book_depth=settings.book_depth,
        )
    protocol.schemas()  # load and check them now, not on the first message
    app = web.Application()
    app[SERVICE] = Service(
        settings=settings,
        market=Market(settings.symbols, history_points=settings.history_points, trade_history=settings.trade_history),
        hub=Hub(strict=settings.strict),
    )
    app[FEED] = feed
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(protocol.ROOT / "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    app.router.add_get("/", pages.index, name="index")
    app.router.add_get("/ws", bot_socket, name="bot_socket")
    app.router.add_get("/schemas/", pages.schema_index, name="schemas")
    app.router.add_get("/schemas/{name:.+\\.json}", pages.schema_file, name="schema")
    app.router.add_static("/static/", protocol.ROOT / "static", name="static")
    app.cleanup_ctx.append(background)
    app.on_shutdown.append(close_sockets)
    return app
