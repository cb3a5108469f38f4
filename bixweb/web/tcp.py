"""TCP connections under HTTP: one count each from accept to close, a deadline for the request head.

aiohttp counts no connection and gives a new one its keep-alive timer
(3,630 s by default) to send a request. Here every accepted connection is
counted at once in the service's :class:`~bixweb.limits.ConnectionLimits`,
under its peer address, and released when it closes: a socket that later
upgrades to a WebSocket is still that one count. A new connection has
``--header-timeout`` seconds to send its first complete request head, an
idle one ``--keepalive-timeout`` seconds between requests (a later head
must be complete within that too: aiohttp cannot tell idle from a slow
head, and watching every read would cost the sockets); both ride on
aiohttp's own per-connection idle timer, which aiohttp cancels when a
WebSocket is prepared, so upgraded sockets (kept alive by heartbeats) are
never cut by either.

A connection that finds no room is still accepted: its first request is
answered with the documented refusal (429 ``too_many_connections``, 503
``server_full``; see :mod:`bixweb.web.gate`) and the connection closed. At
most :data:`REFUSED_WAITING` such connections wait for their head at once;
a new one closes the one that has waited longest, unanswered (counted, and
logged once per interval with a count). A real client sends its head right
after connecting, so even under a flood of silent connections a health
probe finds a slot and gets its answer.

A trusted proxy's connection counts in the total only; the gate hands its
count to the client of each request it carries (:meth:`ConnectionLimits.move`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Literal

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from bixweb.access import within
from bixweb.limits import LogThrottle
from bixweb.logs import event
from bixweb.web.service import Guarded

log = logging.getLogger("bixweb.tcp")

REFUSED_WAITING = 32
"""Refused connections kept at once until their request head comes, so it can be answered 429/503."""
TURNED_AWAY_LOG_INTERVAL = 10.0
"""Seconds between the log lines that count connections closed unanswered."""

Refusal = Literal["client", "total"]
REFUSAL_CODES: dict[str, str] = {"client": "too_many_connections", "total": "server_full"}


class Door:
    """Admission of one service's TCP connections: the limits, the refused waiting, the turned away."""

    def __init__(self, service: Guarded) -> None:
        self.service = service
        self.header_timeout = service.settings.header_timeout
        self.waiting: dict[CountedHandler, None] = {}
        """Refused connections waiting for their head, to be answered; the oldest first."""
        self.turned_away = LogThrottle(TURNED_AWAY_LOG_INTERVAL)

    def wait_refused(self, conn: CountedHandler) -> None:
        """Keep a refused connection until its head comes; make room by closing the oldest."""
        if len(self.waiting) >= REFUSED_WAITING:
            oldest = next(iter(self.waiting))
            del self.waiting[oldest]
            if oldest.refusal is not None:
                self.turn_away(oldest.refusal, oldest.peer)
            oldest.force_close()
        self.waiting[conn] = None

    def turn_away(self, verdict: Refusal, peer: str) -> None:
        """Count a connection closed unanswered; say so at most once per interval."""
        code = REFUSAL_CODES[verdict]
        self.service.counters[f"refused:{code}"] += 1
        loop = asyncio.get_running_loop()
        count = self.turned_away.note(loop.time())
        if count is not None:
            self._report(count, code, peer)
        elif self.turned_away.held == 1:  # the first one held back: report the rest when the interval ends
            loop.call_at(self.turned_away.quiet_until, self._flush, code, peer)

    def _flush(self, code: str, peer: str) -> None:
        count = self.turned_away.flush(asyncio.get_running_loop().time())
        if count is not None:
            self._report(count, code, peer)

    def _report(self, count: int, code: str, peer: str) -> None:
        event(
            log,
            logging.WARNING,
            "turned_away",
            count=count,
            code=code,
            last_peer=peer,
            waiting=len(self.waiting),
            open=self.service.limits.open,
        )


class CountedHandler(RequestHandler):
    """aiohttp's per-connection protocol, counted in the limits and with a deadline for the first head."""

    __slots__ = ("door", "holder", "peer", "shared", "refusal")

    def __init__(self, manager: web.Server, door: Door, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.door = door
        self.holder: str | None = None
        """Whom the count is held for: the peer, or the client of a proxy's current request."""
        self.peer = "-"
        self.shared = False
        """The peer is a trusted proxy: counted in the total only."""
        self.refusal: Refusal | None = None
        """No room for this connection: its request is answered with the refusal."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        door = self.door
        self.peer = peer = peer_of(transport)
        self.shared = within(peer, door.service.trusted_proxies)
        verdict = door.service.limits.admit(peer, shared=self.shared)
        if verdict is None:
            self.holder = peer
        else:
            self.refusal = verdict
            door.wait_refused(self)
        self._restart_idle_timer(door.header_timeout)

    def _restart_idle_timer(self, timeout: float) -> None:
        """aiohttp's idle timer closes a connection whose next request head has not come in time
        (it checks that no request is in progress); it starts at connect with the keep-alive
        timeout, and the first head gets the header timeout instead."""
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
        close_time = self._loop.time() + timeout
        self._next_keepalive_close_time = close_time
        self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)

    def head_arrived(self) -> None:
        """A request head is in: stop the header deadline; after the response aiohttp starts the
        idle timer again with the keep-alive timeout (it does so only when none is pending)."""
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request aiohttp could not parse (a 4xx before routing): a JSON answer naming the kind
        of fault, without echoing what the client sent, and no traceback: the access line is its one
        log line. A 5xx is a bug here, and keeps aiohttp's traceback."""
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:  # as aiohttp: a response has begun, the connection is broken
            raise ConnectionError("a response was sent already; cannot answer the bad request")
        reason = type(exc).__name__ if exc is not None else "BadRequest"
        response = web.json_response(
            {"code": "bad_request", "message": f"the request could not be read ({reason})"}, status=status
        )
        response.force_close()
        return response

    def connection_lost(self, exc: BaseException | None) -> None:
        self.leave()
        super().connection_lost(exc)

    def leave(self) -> None:
        """Give the count back (once)."""
        if self.holder is not None:
            self.door.service.limits.release(self.holder)
            self.holder = None
        else:
            self.answered()

    def answered(self) -> None:
        """A refused connection's request has come: it no longer waits (nor can it be closed unanswered)."""
        self.door.waiting.pop(self, None)


def peer_of(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "-"


class CountedServer(web.Server):
    """aiohttp's low-level server, making a :class:`CountedHandler` per connection."""

    def __init__(self, handler: Any, *, door: Door, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.door = door

    def __call__(self) -> RequestHandler:
        return CountedHandler(self, self.door, loop=self._loop, **self._kwargs)


def count_connections(app: web.Application, service: Guarded) -> None:
    """Serve ``app`` with :class:`CountedServer` under every runner: bixweb's own and aiohttp's test servers.

    aiohttp builds the server in ``Application._make_handler`` and offers no
    public way to choose its protocol class; this wraps that (private) method
    on this one app instance (aiohttp is pinned in pyproject.toml, and the
    tests of header timeouts and counted connections fail if the hook is lost).
    """
    plain: Callable[..., web.Server] = app._make_handler

    def make_handler(**kwargs: Any) -> web.Server:
        base = plain(**kwargs)  # aiohttp's own checks, freezing and handler_args
        return CountedServer(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            door=Door(service),
            **base._kwargs,
        )

    app.__dict__["_make_handler"] = make_handler
