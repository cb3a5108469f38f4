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

import aiohttp_jinja2
from aiohttp import WSMsgType, web

from bixweb import __version__
from bixweb.dashboard import DESK_ACTIONS, apply_action, join_fragments, parse_action
from bixweb.errors import ProtocolError
from bixweb.hub import Outbox
from bixweb.limits import InboundLimiter
from bixweb.logs import event
from bixweb.render import PageView, Status
from bixweb.web import gate
from bixweb.web.connection import CLOSE_POLICY, CLOSE_TRY_AGAIN, Connection
from bixweb.web.service import SERVICE, Service, now_ms
from bixweb.web.upgrade import GuardedWebSocket, guard_connection, version_refusal

log = logging.getLogger("bixweb.ui")

PAGE_ID_BYTES = 12
RECONNECT_MS = 500
RECONNECT_MAX_MS = 2_000


def current_status(service: Service) -> Status:
    now = now_ms()
    return Status(feed=service.feed_state(now), clients=len(service.connections), now_ms=now)


async def dashboard_page(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    page = secrets.token_urlsafe(PAGE_ID_BYTES)
    view = service.dashboard.default_view()
    context = service.dashboard.page_context(view, current_status(service))
    context.update(
        version=__version__,
        socket_url=socket_url(request, page),
        reconnect_ms=RECONNECT_MS,
        reconnect_max_ms=RECONNECT_MAX_MS,
    )
    response = aiohttp_jinja2.render_template("dashboard.html", request, context)
    response.headers["Cache-Control"] = "no-store"
    return response


def socket_url(request: web.Request, page: str) -> str:
    """Where the page's socket connects.

    A request known to be https (directly, or by a trusted proxy's
    ``X-Forwarded-Proto``) gets an explicit ``wss://`` URL on its host; other
    pages get a relative one, which htmx resolves against the page's own
    scheme (so an https page still uses ``wss://``).
    """
    path = f"/ws/ui?page={page}"
    return f"wss://{request.host}{path}" if request.scheme == "https" else path


async def ui_socket(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    refused = gate.origin_access(request, service)
    if refused is not None:
        return refused
    page = request.query.get("page", "")
    if not 8 <= len(page) <= 64 or not page.replace("-", "").replace("_", "").isalnum():
        raise web.HTTPBadRequest(text="a dashboard socket needs ?page=<id> from the page")
    return await _serve(request, service, page)  # room: counted with its connection (bixweb.web.tcp)


async def _serve(request: web.Request, service: Service, page: str) -> web.StreamResponse:
    settings = service.settings
    refused = version_refusal(request, service, "ui")
    if refused is not None:
        return refused
    ws = GuardedWebSocket(
        heartbeat=settings.heartbeat, max_msg_size=settings.max_message_bytes, compress=settings.ui_compression
    )
    if not ws.can_prepare(request).ok:
        raise web.HTTPUpgradeRequired(headers={"Upgrade": "websocket"}, text="this is a WebSocket endpoint")
    await ws.prepare(request)
    dashboard = service.dashboard
    view = dashboard.pages.get(page) or dashboard.default_view()
    conn = Connection(
        ws,
        request,
        kind="ui",
        overflow_code=CLOSE_TRY_AGAIN,
        outbox=Outbox(max_messages=settings.outbox_messages, max_bytes=settings.outbox_bytes, join=join_fragments),
    )
    service.opened(conn)
    conn.start()
    guard_connection(ws, conn)
    service.ui_hub.add(conn, view.fragments())
    conn.send(dashboard.page_frame(view, current_status(service)))
    limiter = InboundLimiter(settings.max_messages_per_s, time.monotonic())
    event(log, logging.INFO, "connected", kind="ui", session=conn.session, peer=conn.peer, compressed=bool(ws.compress))
    try:
        async for msg in ws.messages():
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY) or conn.closing:
                continue
            verdict = limiter.check(time.monotonic())
            if verdict == "close":
                event(log, logging.WARNING, "flood", kind="ui", session=conn.session, peer=conn.peer)
                conn.close_soon(CLOSE_POLICY, "too many messages")
                continue
            if verdict == "refuse":  # dropped unparsed: a person's clicks stay far below the limit
                continue
            view = await _act(service, conn, limiter, page, view, msg.data)
    finally:
        service.ui_hub.remove(conn)
        code = conn.close_code or ws.close_code
        service.closed(conn, code)
        await conn.stop()
        event(
            log,
            logging.INFO,
            "disconnected",
            kind="ui",
            session=conn.session,
            peer=conn.peer,
            code=code,
            reason=conn.close_reason or ws.lost_reason,
            frames=conn.frames_sent,
            bytes=conn.bytes_sent,
        )
    return ws


async def _act(
    service: Service, conn: Connection, limiter: InboundLimiter, page: str, view: PageView, frame: str | bytes
) -> PageView:
    """Apply one form message; the page's view after it.

    The limiter is charged the CPU time this took (not the wait for the
    desk, which is not this page's work), and extra for a refused message.
    """
    dashboard = service.dashboard
    started = time.thread_time()
    failed = True
    try:
        values = parse_action(frame)
        if values["action"] in DESK_ACTIONS:  # the desk's listener updates every page
            spent = time.thread_time() - started
            reply = await dashboard.desk_action(values, page=page, now_ms=now_ms())
            started = time.thread_time() - spent
            if reply is not None:
                conn.send(reply)
        else:
            view = apply_action(view, values, dashboard.market.symbols)
            dashboard.pages.put(page, view)
            service.ui_hub.set_streams(conn, view.fragments())
            conn.send(dashboard.page_frame(view, current_status(service)))
        failed = False
    except ProtocolError as exc:
        count = limiter.refused(time.monotonic())
        if count is not None:  # the first refusal, then a count at most every few seconds
            event(
                log,
                logging.INFO,
                "refused_message",
                kind="ui",
                session=conn.session,
                peer=conn.peer,
                code=exc.code,
                path=exc.path,
                count=count,
            )
        conn.send(dashboard.renderer.notice(exc.message).encode())
    finally:
        limiter.charge(time.monotonic(), time.thread_time() - started, failed=failed)
    return view
