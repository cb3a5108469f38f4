"""Before the handler: who the client is, whether it may ask, and whether there is room.

Every refusal is an HTTP answer (before the WebSocket exists, for the
sockets: no 101), with a JSON body ``{"code", "message"}``, a counter and
one log line without anything the client sent:

======  ===============================  =========================================
status  code                             when
======  ===============================  =========================================
400     ``unknown_symbol``,              the bot socket's ``?symbols=&channels=`` names a symbol or
        ``unknown_channel``,             channel the server does not carry, or more streams than
        ``too_many_subscriptions``       ``--max-subscriptions`` (:mod:`bixweb.web.bot`; the body
                                         adds the ``path``)
401     ``unauthorized``                 bot socket with tokens on, none presented
401     ``invalid_token``                a token that is not one of ours (bot socket, ``/metrics``)
403     ``loopback_only``                no tokens configured, client not on loopback; ``/metrics``
                                         from anywhere but loopback without a token
403     ``forbidden_origin``             a socket opened by a page of another origin
403     ``forbidden_host``               a loopback client asking by a DNS name (rebinding), on any
                                         path but the probes (``/livez``, ``/readyz``, ``/healthz``)
429     ``too_many_connections``         the client address holds its share of connections
503     ``server_full``                  every connection the server allows is taken
426     ``unsupported_version``          a socket handshake of a WebSocket version but 13
                                         (:mod:`bixweb.web.upgrade`)
======  ===============================  =========================================

Connections are counted when accepted (:mod:`bixweb.web.tcp`); the last two
answer the first request of a connection that found no room, and close it.
The probes (``/livez``, ``/readyz``, ``/healthz``) are answered even then, so a probe learns
the server is up and full.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Middleware
from aiohttp.web_request import BaseRequest

from bixweb.access import forwarded, is_loopback, local_host, origin_allowed, presented_token, within
from bixweb.logs import event
from bixweb.web.service import Guarded, Service
from bixweb.web.tcp import CountedHandler

log = logging.getLogger("bixweb.gate")

RETRY_AFTER_S = 5
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def guard(service: Guarded) -> Middleware:
    """Middleware before every handler: the client a trusted proxy names, room for the connection, the host.

    A trusted proxy's connection is counted, for the length of each request,
    for the client that request is from (the per-client limit applies to
    that client), and given back to the proxy afterwards.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if service.trusted_proxies:
            found = forwarded(request.remote, request.headers, service.trusted_proxies)
            if found.client != request.remote or found.scheme is not None:
                request = request.clone(remote=found.client, scheme=found.scheme or request.scheme)
        route = request.match_info.route.name
        conn = request.protocol if isinstance(request.protocol, CountedHandler) else None
        refusal, proxy = claim_room(conn, request.remote or "-", service)
        if refusal is not None and route not in PROBES:
            answer = no_room(request, service, refusal, kind=KINDS.get(route or "", "http"))
            answer.force_close()
            return answer
        refused = host_access(request, service, route)
        if refused is not None:
            return refused
        try:
            response = await handler(request)
            if refusal is not None:  # a probe on a connection that found no room: answered, then closed
                response.force_close()
            return response
        finally:
            if proxy is not None and conn is not None and conn.holder is not None:
                service.limits.move(conn.holder, proxy, shared=True)
                conn.holder = proxy

    return middleware


def claim_room(conn: CountedHandler | None, client: str, service: Guarded) -> tuple[str | None, str | None]:
    """A request's head is in: the refusal its connection gets (None: there is room), and, for a
    trusted proxy's connection now counted for ``client``, the proxy to give the count back to."""
    if conn is None:
        return None, None
    conn.head_arrived()
    if conn.refusal is not None:
        conn.answered()
        return conn.refusal, None
    if not conn.shared or conn.holder is None or client == conn.holder:
        return None, None
    refusal = service.limits.move(conn.holder, client)
    if refusal is not None:
        return refusal, None
    proxy, conn.holder = conn.holder, client
    return None, proxy


PROBES = frozenset({"livez", "readyz", "healthz"})
"""Routes of the health probes: answered whatever ``Host`` they are asked by, and even on a
connection the limits had no room for, so a probe learns the server is up and full."""
KINDS = {"bot_socket": "bot", "ui_socket": "ui"}
"""Route names → the ``kind`` refusals are logged with (``http`` for the rest)."""
OWN_HOST_RULES = frozenset({"bot_socket", "ui_socket"}) | PROBES
"""Routes :func:`host_access` leaves alone: the sockets check the host themselves (with their
tokens and origins); the probes answer however they name the server."""


def host_access(request: web.Request, service: Guarded, route: str | None) -> web.Response | None:
    """A local client must ask by address, as localhost or by an allowed origin's host: a DNS
    name that points at 127.0.0.1 is how a rebound page of another site reads this server."""
    if route in OWN_HOST_RULES or not local_client(request, service):
        return None
    if local_host(request.host, service.settings.allowed_origins):
        return None
    return refuse(
        request,
        service,
        kind="http",
        status=403,
        code="forbidden_host",
        message="a local client must ask for this server by address or as localhost",
    )


def no_room(request: web.Request, service: Guarded, verdict: str, *, kind: str) -> web.Response:
    """The answer to a request on a connection the limits had no room for."""
    retry = {"Retry-After": str(RETRY_AFTER_S)}
    if verdict == "client":
        return refuse(
            request,
            service,
            kind=kind,
            status=429,
            code="too_many_connections",
            message=f"at most {service.limits.per_client} connections per client address",
            headers=retry,
        )
    return refuse(
        request,
        service,
        kind=kind,
        status=503,
        code="server_full",
        message="the server has no room for another connection",
        headers=retry,
    )


def refuse(
    request: web.Request,
    service: Guarded,
    *,
    kind: str,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    path: str | None = None,
) -> web.Response:
    """The JSON refusal ``{"code", "message"}`` (and the ``path`` of a bad query value), counted and logged."""
    service.counters[f"refused:{code}"] += 1
    count = service.limits.refusal_line(code, time.monotonic())
    if count is not None:  # every refusal is counted in /metrics; the log has a line per code per interval
        event(log, logging.WARNING, "refused", kind=kind, peer=request.remote, status=status, code=code, count=count)
    body = {"code": code, "message": message} if path is None else {"code": code, "message": message, "path": path}
    return web.json_response(body, status=status, headers=headers)


def bot_access(request: web.Request, service: Service) -> web.Response | None:
    """Tokens when configured; otherwise loopback clients only, unless ``--open-bots``.

    A handshake with a foreign ``Origin`` is a browser page of another site
    (bots send none, or their own host): it is refused as on the dashboard
    socket, so no page can use a local bixweb's bot socket, which can write
    alert rules, through the visitor's browser.
    """
    refused = origin_access(request, service, kind="bot")
    if refused is not None:
        return refused
    tokens = service.tokens
    if tokens:
        presented = presented_token(request.headers, request.query)
        if presented is None:
            return refuse(
                request,
                service,
                kind="bot",
                status=401,
                code="unauthorized",
                message="this socket needs a token: Authorization: Bearer <token>",
                headers={"WWW-Authenticate": 'Bearer realm="bixweb"'},
            )
        if not tokens.accepts(presented):
            return refuse(
                request,
                service,
                kind="bot",
                status=401,
                code="invalid_token",
                message="the token is not valid",
                headers={"WWW-Authenticate": 'Bearer realm="bixweb", error="invalid_token"'},
            )
        return None
    if service.settings.open_bots:
        return None
    if local_client(request, service):
        if not local_host(request.host, service.settings.allowed_origins):
            return refuse(
                request,
                service,
                kind="bot",
                status=403,
                code="forbidden_host",
                message="a local client must ask for this server by address or as localhost",
            )
        return None
    return refuse(
        request,
        service,
        kind="bot",
        status=403,
        code="loopback_only",
        message="without configured tokens the bot socket serves loopback clients only",
    )


def local_client(request: web.Request, service: Guarded) -> bool:
    """The client is on this machine: a loopback peer, and no proxy in between names another client."""
    return (
        is_loopback(request.remote or "")
        and is_loopback(peer_address(request))  # a forwarded address alone never makes a client local
        and not proxied_by_stranger(request, service)
    )


def metrics_access(request: web.Request, service: Guarded) -> web.Response | None:
    """``/metrics``: a local client (no proxy naming another one), or a configured bearer token.

    Without ``--trusted-proxies`` a proxy on this host is a stranger: its
    requests, which carry ``X-Forwarded-For``, are refused, whoever sent them.
    """
    tokens = service.tokens
    presented = presented_token(request.headers, {}) if tokens else None
    if presented is not None:
        if tokens.accepts(presented):
            return None
        return refuse(
            request,
            service,
            kind="http",
            status=401,
            code="invalid_token",
            message="the token is not valid",
            headers={"WWW-Authenticate": 'Bearer realm="bixweb", error="invalid_token"'},
        )
    if local_client(request, service):
        return None
    return refuse(
        request,
        service,
        kind="http",
        status=403,
        code="loopback_only",
        message="metrics are served to loopback clients, or with a bearer token",
    )


def proxied_by_stranger(request: web.Request, service: Guarded) -> bool:
    """A request with ``X-Forwarded-For`` whose peer is not a trusted proxy: its client is unknown.

    Behind a proxy on the same host every request comes from loopback; without
    ``--trusted-proxies`` the loopback-only rule must not let them all in.
    """
    if "X-Forwarded-For" not in request.headers:
        return False
    return not within(peer_address(request), service.trusted_proxies)


def peer_address(request: web.Request) -> str:
    """The address of the TCP peer itself (a proxy, if there is one)."""
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


def origin_access(request: web.Request, service: Service, *, kind: str = "ui") -> web.Response | None:
    """The page that opens a socket must be ours (or on the allowlist).

    Without an allowlist, "ours" means the ``Host`` the page was served from;
    for a browser on this machine (a loopback peer) that ``Host`` must be
    local too, or a rebound DNS name would make any site "ours".
    """
    allowed = service.settings.allowed_origins
    origin = request.headers.get("Origin")
    if not origin_allowed(origin, request.host, allowed):
        return refuse(
            request,
            service,
            kind=kind,
            status=403,
            code="forbidden_origin",
            message="this origin may not open this socket",
        )
    if origin is not None and not allowed and is_loopback(request.remote or "") and not local_host(request.host):
        return refuse(
            request,
            service,
            kind=kind,
            status=403,
            code="forbidden_host",
            message="a local browser must ask for this server by address or as localhost",
        )
    return None


LOGGED_CHARS = 64
"""Characters of each query key and value the access log keeps: enough to read, not a client's payload."""
LOGGED_PATH_CHARS = 512

REDACTED_QUERY = frozenset({"token", "page"})
"""Query values that grant something (a bot token; a dashboard page, whose view it names)."""


class AccessLog(AbstractAccessLogger):
    """aiohttp's access log as structured events: the client address as a trusted proxy
    reports it, and the path with any ``token`` in its query replaced by ``***``."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        # not request.app: a request aiohttp refused before routing (a 400 for a 9,000-byte
        # query) has no app, and asking for it raises
        conn = request.protocol
        trusted = conn.door.service.trusted_proxies if isinstance(conn, CountedHandler) else ()
        query = "&".join(
            f"{key[:LOGGED_CHARS]}={'***' if key in REDACTED_QUERY else value[:LOGGED_CHARS]}"
            for key, value in request.query.items()
        )
        path = request.path + (f"?{query}" if query else "")
        event(
            self.logger,
            logging.INFO,
            "request",
            peer=forwarded(request.remote, request.headers, trusted).client,
            method=request.method,
            path=path[:LOGGED_PATH_CHARS],
            status=response.status,
            bytes=response.body_length,
            ms=round(time * 1000, 1),
        )
