"""``GET /`` (the dashboard page) and ``GET /ws/ui`` (its htmx WebSocket).

The page is complete when served, so it is useful before the socket
connects. Over the socket the server pushes HTML fragments (each with an
``id`` and ``hx-swap-oob``) and receives the page's forms as htmx sends
them (``schemas/ui/action.json``).
"""

from __future__ import annotations

import logging
import secrets
import time
from urllib.parse import urlsplit

import aiohttp_jinja2
from aiohttp import WSMsgType, web

from bixweb import __version__
from bixweb.dashboard import apply_action, join_fragments, parse_action
from bixweb.errors import ProtocolError
from bixweb.hub import Outbox
from bixweb.limits import InboundLimiter
from bixweb.render import Status
from bixweb.web.connection import CLOSE_POLICY, CLOSE_TRY_AGAIN, Connection
from bixweb.web.service import SERVICE, Service, now_ms

log = logging.getLogger("bixweb.ui")

PAGE_ID_BYTES = 12
RECONNECT_MS = 500
RECONNECT_MAX_MS = 2_000


def current_status(service: Service) -> Status:
    now = now_ms()
    return Status(feed=service.feed_state(now), clients=len(service.connections), now_ms=now)


def same_origin(request: web.Request) -> bool:
    """A browser's socket must come from a page of this host; non-browsers send no Origin."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == request.host.lower()


async def dashboard_page(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    page = secrets.token_urlsafe(PAGE_ID_BYTES)
    view = service.dashboard.default_view()
    context = service.dashboard.page_context(view, current_status(service))
    context.update(
        version=__version__,
        socket_url=f"/ws/ui?page={page}",
        reconnect_ms=RECONNECT_MS,
        reconnect_max_ms=RECONNECT_MAX_MS,
    )
    response = aiohttp_jinja2.render_template("dashboard.html", request, context)
    response.headers["Cache-Control"] = "no-store"
    return response


async def ui_socket(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    settings = service.settings
    if not same_origin(request):
        log.warning("refused kind=ui peer=%s: foreign origin", request.remote)
        raise web.HTTPForbidden(text="foreign origin")
    page = request.query.get("page", "")
    if not 8 <= len(page) <= 64 or not page.replace("-", "").replace("_", "").isalnum():
        raise web.HTTPBadRequest(text="a dashboard socket needs ?page=<id> from the page")
    ws = web.WebSocketResponse(heartbeat=settings.heartbeat, max_msg_size=settings.max_message_bytes, compress=False)
    if not ws.can_prepare(request).ok:
        raise web.HTTPUpgradeRequired(headers={"Upgrade": "websocket"}, text="this is a WebSocket endpoint")
    await ws.prepare(request)
    dashboard = service.dashboard
    view = dashboard.pages.get(page) or dashboard.default_view()
    conn = Connection(
        ws, request, kind="ui", overflow_code=CLOSE_TRY_AGAIN,
        outbox=Outbox(max_messages=settings.outbox_messages, max_bytes=settings.outbox_bytes, join=join_fragments),
    )
    service.connections.add(conn)
    conn.start()
    service.ui_hub.add(conn, view.fragments())
    conn.send(dashboard.page_frame(view, current_status(service)))
    limiter = InboundLimiter(settings.max_messages_per_s, time.monotonic())
    log.info("connected kind=ui session=%s peer=%s", conn.session, conn.peer)
    try:
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            verdict = limiter.check(time.monotonic())
            if verdict == "close":
                log.warning("flood kind=ui session=%s peer=%s: closing", conn.session, conn.peer)
                conn.close_soon(CLOSE_POLICY, "too many messages")
                continue
            if verdict == "refuse":
                continue
            try:
                view = apply_action(view, parse_action(msg.data), dashboard.market.symbols)
            except ProtocolError as exc:
                log.info("refused kind=ui session=%s peer=%s code=%s path=%s",
                         conn.session, conn.peer, exc.code, exc.path or "-")
                conn.send(dashboard.renderer.notice(exc.message).encode())
                continue
            dashboard.pages.put(page, view)
            service.ui_hub.set_streams(conn, view.fragments())
            conn.send(dashboard.page_frame(view, current_status(service)))
    finally:
        service.ui_hub.remove(conn)
        service.closed(conn)
        await conn.stop()
        log.info("disconnected kind=ui session=%s peer=%s code=%s reason=%s frames=%d",
                 conn.session, conn.peer, conn.close_code or ws.close_code, conn.close_reason or "-",
                 conn.frames_sent)
    return ws
