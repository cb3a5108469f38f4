"""The WebSocket both sockets use: RFC 6455 where aiohttp 3.14 is lax, and closes that do not reset.

Three things aiohttp does not do for a server, done here:

- it answers ``Sec-WebSocket-Version: 8`` (and 7) with 101; :func:`version_refusal`
  answers anything but 13 with 426 and ``Sec-WebSocket-Version: 13`` (section 4.4);
- it accepts unmasked client frames and the close codes 1006 and >= 5000;
  :class:`FrameGuard` checks every inbound read first (:mod:`bixweb.web.frames`)
  and closes with 1002 through the connection's own close path;
- it closes the TCP connection as soon as the close handshake ends on its
  side, even while the peer is still sending, which makes the kernel send a
  reset that can destroy the close frame in flight; a :class:`GuardedWebSocket`
  instead keeps reading (and discarding) until the peer's close frame, its
  EOF, or ``linger_s``; and a close it starts on its own (1007 and 1009
  from its reader) first sends what the connection owes (``before_close``).

This leans on aiohttp internals (``WebSocketResponse._post_start`` and
``_close_transport``, ``RequestHandler._payload_parser`` and ``_message_tail``),
which is why ``pyproject.toml`` pins aiohttp; ``_post_start`` raises if the
hook cannot be installed, and ``tests/test_conformance.py`` fails with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.http_websocket import WSMessage
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from bixweb.limits import TokenBucket
from bixweb.logs import event
from bixweb.web import gate
from bixweb.web.connection import Connection
from bixweb.web.frames import FrameChecker, Violation, close_code_allowed
from bixweb.web.service import Service

log = logging.getLogger("bixweb.upgrade")

WEBSOCKET_VERSION = "13"
CONTROL_FRAMES_PER_S = 40.0
"""Pings and pongs a client may send per second on average (a heartbeat needs one in 20 s):
aiohttp parses and answers each inside its reader, where no message budget sees it."""
CONTROL_FRAMES_BURST = 100.0
LINGER_S = 2.0
"""How long a closed socket keeps reading for the peer's close frame before it is closed anyway."""


def version_refusal(request: web.Request, service: Service, kind: str) -> web.Response | None:
    """A 426 for a WebSocket handshake of any version but 13 (RFC 6455 section 4.4); None otherwise."""
    if request.headers.get("Upgrade", "").strip().lower() != "websocket":
        return None
    if request.headers.get("Sec-WebSocket-Version", "").strip() == WEBSOCKET_VERSION:
        return None
    return gate.refuse(
        request,
        service,
        kind=kind,
        status=426,
        code="unsupported_version",
        message="this server speaks WebSocket version 13 (RFC 6455)",
        headers={"Sec-WebSocket-Version": WEBSOCKET_VERSION, "Upgrade": "websocket"},
    )


class FrameGuard:
    """Stands in for aiohttp's WebSocket reader on the connection and feeds it only sound bytes.

    After a violation (or once the socket lingers) nothing more reaches
    aiohttp; the bytes are still read and checked, so the peer's close frame
    is seen.
    """

    def __init__(self, reader: Any, queue: Any, protocol: RequestHandler) -> None:
        self.reader = reader
        self.queue = queue
        """aiohttp's queue of parsed messages, which ``receive()`` reads."""
        self.protocol = protocol
        self.checker = FrameChecker()
        self.peer_gone = False
        """The peer's close frame or EOF has arrived."""
        self._feeding = True
        self.on_violation: Callable[[Violation], None] | None = None
        """Called for the first bad frame, in order: after the messages that came before it."""
        self._on_peer_gone: Callable[[], None] | None = None
        self._loop = asyncio.get_running_loop()
        self._controls = TokenBucket(CONTROL_FRAMES_PER_S, CONTROL_FRAMES_BURST, self._loop.time())

    def linger(self, on_peer_gone: Callable[[], None]) -> None:
        """Read and discard until the peer is gone, then call ``on_peer_gone``."""
        self._feeding = False
        self._on_peer_gone = on_peer_gone
        if self.protocol._reading_paused:  # a queue nobody reads any more must not hold the socket
            self.protocol.resume_reading()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        checker, controls, now = self.checker, self._controls, self._loop.time()
        checker.control_allowance = max(0, int(controls.tokens(now))) if self._feeding else -1
        violation = checker.feed(data)
        if checker.control_frames:
            controls.spend(now, checker.control_frames)
        if self._feeding:
            sound = data if violation is None else data[: violation.offset]
            if sound and self.reader.feed_data(sound)[0]:
                self._feeding = False  # aiohttp refused the stream and closes it; we still watch for the close
            if violation is not None:
                self._feeding = False
                # queued behind what came before it, so those messages are still answered
                self.queue.feed_data(WSMessage(WSMsgType.ERROR, violation, None), 0)
        if self.checker.peer_closed:
            self._peer_left()
        # never "eof": aiohttp would stop reading, and unread input makes the close a reset
        return False, b""

    def feed_eof(self) -> None:
        self.reader.feed_eof()
        self._peer_left()

    def _peer_left(self) -> None:
        self.peer_gone = True
        if self._on_peer_gone is not None:
            callback, self._on_peer_gone = self._on_peer_gone, None
            callback()


class GuardedWebSocket(web.WebSocketResponse):
    """``web.WebSocketResponse`` with a :class:`FrameGuard` on its input and a close that lingers."""

    def __init__(self, *, linger_s: float = LINGER_S, **options: Any) -> None:
        super().__init__(**options)
        self.linger_s = linger_s
        self.guard: FrameGuard | None = None
        self.lost_reason: str | None = None
        """Why the socket ended without a close handshake, if it did."""
        self.before_close: Callable[[int], Awaitable[None]] | None = None
        """Awaited before a close frame the server sends on its own (not in answer to the peer's)."""
        self._sent_code: int | None = None
        self._released: asyncio.Future[None] | None = None
        self._linger_timer: asyncio.TimerHandle | None = None

    def _post_start(self, request: BaseRequest, protocol: str | None, writer: Any) -> None:
        handler = request.protocol
        # bytes sent right behind the handshake: aiohttp would feed them to its reader unchecked
        early, handler._message_tail = handler._message_tail, b""
        super()._post_start(request, protocol, writer)
        reader = handler._payload_parser
        if reader is None or reader is not getattr(self, "_parser", None):
            raise RuntimeError(
                "aiohttp did not install its WebSocket reader where bixweb expects it; "
                "the frame guard cannot be installed (see bixweb/web/upgrade.py)"
            )
        self.guard = FrameGuard(reader, self._reader, handler)
        handler._payload_parser = self.guard
        if early:
            self.guard.feed_data(early)

    def _close_transport(self) -> None:
        guard = self.guard
        if guard is None or guard.peer_gone:
            super()._close_transport()
            return
        if self._released is not None:
            return
        loop = asyncio.get_running_loop()
        self._released = loop.create_future()
        self._linger_timer = loop.call_later(self.linger_s, self._end_linger, True)
        guard.linger(lambda: self._end_linger(False))

    def _end_linger(self, expired: bool) -> None:
        released = self._released
        if released is None or released.done():
            return
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        transport = self.guard.protocol.transport if self.guard is not None else None
        if expired and transport is not None and transport.get_write_buffer_size():
            transport.abort()  # a peer that neither reads nor closes: close() would wait forever to flush
        else:
            super()._close_transport()
        released.set_result(None)

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        """Close as aiohttp does, then wait (up to ``linger_s``) until the socket is let go.

        An answer to the peer's close echoes its code (RFC 6455 section 5.5.1)
        where aiohttp would send 1000.
        """
        if self.before_close is not None and not self.closed and not self._closing:
            # aiohttp's own refusals (1007, 1009, …) close from receive(): send what is owed first
            if self.guard is None or not self.guard.peer_gone:
                await self.before_close(code)
        peer_code = self._close_code
        if self._closing and not self.closed and code == 1000 and peer_code and close_code_allowed(peer_code):
            code = peer_code
        if not self._closing and not self.closed:
            self._sent_code = code
        closed = await super().close(code=code, message=message, drain=drain)
        if self._released is not None:
            await asyncio.shield(self._released)
        return closed

    @property
    def close_code(self) -> int | None:
        """The code of the close this side started (aiohttp says 1006 after its own 1007 or 1009),
        else aiohttp's: the peer's code, or 1006 for no close handshake."""
        return self._sent_code or super().close_code

    async def messages(self) -> AsyncIterator[WSMessage]:
        """The peer's messages until the socket closes.

        aiohttp answers pings inside ``receive()``; a peer that resets the
        connection meanwhile ends the stream here, noted in :attr:`lost_reason`.
        A frame the guard refused reaches ``guard.on_violation`` here, in turn.
        """
        try:
            async for message in self:
                if message.type is WSMsgType.ERROR and isinstance(message.data, Violation):
                    if self.guard is not None and self.guard.on_violation is not None:
                        self.guard.on_violation(message.data)
                    continue
                yield message
        except ConnectionError as exc:
            self.lost_reason = f"reset by peer ({type(exc).__name__})"
            return
        if self.guard is not None and not self.guard.checker.peer_closed:
            self.lost_reason = "lost without a close frame"


def guard_connection(ws: GuardedWebSocket, conn: Connection) -> None:
    """Close ``conn`` with 1002 when its peer sends a frame that breaks RFC 6455, and let every
    close the server starts send what ``conn`` owes first."""

    def close(violation: Violation) -> None:
        event(
            log,
            logging.WARNING,
            "protocol_violation",
            kind=conn.kind,
            session=conn.session,
            peer=conn.peer,
            code=violation.code,
            reason=violation.reason,
        )
        conn.close_soon(violation.code, violation.reason)

    if ws.guard is None:
        raise RuntimeError("the socket is not prepared")
    ws.guard.on_violation = close
    ws.before_close = conn.closing_by_protocol
