"""Before the upgrade: who the client is, whether it may connect, and whether there is room.

Every refusal is an HTTP answer before the WebSocket exists (no 101), with
a JSON body ``{"code", "message"}``, a counter and one log line without
anything the client sent:

======  ===============================  =========================================
status  code                             when
======  ===============================  =========================================
401     ``unauthorized``                 bot socket with tokens on, none presented
401     ``invalid_token``                a token that is not one of ours
403     ``loopback_only``                no tokens configured, client not on loopback
403     ``forbidden_origin``             a socket opened by a page of another origin
403     ``forbidden_host``               a loopback client asking by a DNS name (rebinding)
429     ``too_many_connections``         the client address holds its share of sockets
503     ``server_full``                  every socket the server allows is taken
======  ===============================  =========================================
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Middleware
from aiohttp.web_request import BaseRequest

from bixweb.access import forwarded, is_loopback, local_host, origin_allowed, presented_token, within
from bixweb.logs import event
from bixweb.web.service import SERVICE, Service

log = logging.getLogger("bixweb.gate")

RETRY_AFTER_S = 5
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def trust_forwarded(service: Service) -> Middleware:
    """Middleware: requests from a trusted proxy take their client address and scheme from its headers."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        found = forwarded(request.remote, request.headers, service.trusted_proxies)
        if found.client != request.remote or found.scheme is not None:
            request = request.clone(remote=found.client, scheme=found.scheme or request.scheme)
        return await handler(request)

    return middleware


def refuse(
    request: web.Request, service: Service, *, kind: str, status: int, code: str, message: str,
    headers: dict[str, str] | None = None,
) -> web.Response:
    service.counters[f"refused:{code}"] += 1
    event(log, logging.WARNING, "refused", kind=kind, peer=request.remote, status=status, code=code)
    return web.json_response({"code": code, "message": message}, status=status, headers=headers)


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
            return refuse(request, service, kind="bot", status=401, code="unauthorized",
                          message="this socket needs a token: Authorization: Bearer <token>",
                          headers={"WWW-Authenticate": 'Bearer realm="bixweb"'})
        if not tokens.accepts(presented):
            return refuse(request, service, kind="bot", status=401, code="invalid_token",
                          message="the token is not valid",
                          headers={"WWW-Authenticate": 'Bearer realm="bixweb", error="invalid_token"'})
        return None
    if service.settings.open_bots:
        return None
    if (
        is_loopback(request.remote or "")
        and is_loopback(peer_address(request))  # a forwarded address alone never makes a client local
        and not proxied_by_stranger(request, service)
    ):
        if not local_host(request.host, service.settings.allowed_origins):
            return refuse(request, service, kind="bot", status=403, code="forbidden_host",
                          message="a local client must ask for this server by address or as localhost")
        return None
    return refuse(request, service, kind="bot", status=403, code="loopback_only",
                  message="without configured tokens the bot socket serves loopback clients only")


def proxied_by_stranger(request: web.Request, service: Service) -> bool:
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
        return refuse(request, service, kind=kind, status=403, code="forbidden_origin",
                      message="this origin may not open this socket")
    if origin is not None and not allowed and is_loopback(request.remote or "") \
            and not local_host(request.host):
        return refuse(request, service, kind=kind, status=403, code="forbidden_host",
                      message="a local browser must ask for this server by address or as localhost")
    return None


def admit(request: web.Request, service: Service, kind: str) -> web.Response | None:
    """Count the socket in, or refuse it for lack of room; :func:`release` when it ends."""
    verdict = service.limits.admit(request.remote or "-")
    if verdict is None:
        return None
    retry = {"Retry-After": str(RETRY_AFTER_S)}
    if verdict == "client":
        return refuse(request, service, kind=kind, status=429, code="too_many_connections",
                      message=f"at most {service.limits.per_client} sockets per client address", headers=retry)
    return refuse(request, service, kind=kind, status=503, code="server_full",
                  message="the server has no room for another socket", headers=retry)


def release(request: web.Request, service: Service) -> None:
    service.limits.release(request.remote or "-")


REDACTED_QUERY = frozenset({"token", "page"})
"""Query values that grant something (a bot token; a dashboard page, whose view it names)."""


class AccessLog(AbstractAccessLogger):
    """aiohttp's access log as structured events: the client address as a trusted proxy
    reports it, and the path with any ``token`` in its query replaced by ``***``."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        service = request.app.get(SERVICE) if isinstance(request, web.Request) else None
        trusted = service.trusted_proxies if service is not None else ()
        query = "&".join(
            f"{key}={'***' if key in REDACTED_QUERY else value}" for key, value in request.query.items()
        )
        event(self.logger, logging.INFO, "request", peer=forwarded(request.remote, request.headers, trusted).client,
              method=request.method, path=request.path + (f"?{query}" if query else ""), status=response.status,
              bytes=response.body_length, ms=round(time * 1000, 1))
