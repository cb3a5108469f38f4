"""One WebSocket peer: its bounded outbox and the writer task that empties it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import struct
from collections.abc import Sequence

from aiohttp import WSMsgType, web

from bixweb.hub import Backlog, Outbox, Part
from bixweb.logs import event
from bixweb.market import Message

log = logging.getLogger("bixweb.connection")

CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013
CLOSE_SLOW_CONSUMER = 4008

DIRECT_WRITE_LIMIT = 64 * 1024
"""Bytes in a socket's send buffer below which frames skip the outbox."""


class _Wire:
    """The last shared frame with its WebSocket header: the hub hands one frame to a whole
    subscription in a row, so the header is built and the bytes joined once for all of them."""

    frame: bytes = b""
    wire: bytes = b""

    @classmethod
    def of(cls, frame: bytes) -> bytes:
        if frame is not cls.frame:
            cls.frame, cls.wire = frame, text_frame_header(len(frame)) + frame
        return cls.wire


def text_frame_header(length: int) -> bytes:
    """The header of an unmasked, final text frame (RFC 6455 section 5.2), as a server sends it."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65_536:
        return bytes((0x81, 126)) + length.to_bytes(2, "big")
    return bytes((0x81, 127)) + length.to_bytes(8, "big")


class Connection:
    """A socket with its own outbox; :meth:`deliver` never waits.

    The writer task is the only code that awaits this peer. When the outbox
    overflows the connection closes itself with :data:`CLOSE_SLOW_CONSUMER`
    in a task of its own, giving the close handshake ``close_timeout``
    seconds before the transport is aborted.

    What the peer asked for (a snapshot, a resume's replay) goes into the
    :class:`~bixweb.hub.Backlog` instead (:meth:`send_paced`, :meth:`replay`),
    which the writer empties first, as fast as the peer reads; what the outbox
    held when it was added goes in ahead of it, and live messages queue in the
    outbox behind it. An outbox that overflows while the peer is still taking
    its backlog moves into the backlog too (the peer is behind only because of
    what it asked for), provided the writer took at least as many messages
    from the backlog since it last did (or since the backlog began) as the
    outbox holds: the peer reads faster than live traffic comes, so it will
    catch up. Either way the backlog may grow only while it holds no more than
    ``limit`` messages and ``outbox.max_bytes`` ready-made bytes. A peer that
    stops reading, or reads more slowly than live traffic comes, is still
    closed with 4008, after at most two outboxes' worth of live traffic.
    """

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        *,
        kind: str,
        outbox: Outbox,
        backlog: Backlog | None = None,
        overflow_code: int = CLOSE_SLOW_CONSUMER,
        close_timeout: float = 2.0,
    ) -> None:
        self.ws = ws
        self.request = request
        self.kind = kind
        self.session = secrets.token_hex(6)
        self.outbox = outbox
        self.backlog = backlog if backlog is not None else Backlog(join=outbox.join)
        self.backlog_limit = outbox.max_messages
        """Messages the backlog may hold and still grow; the last :meth:`replay` or :meth:`send_paced` sets it."""
        self._spill_mark = 0
        """``backlog.taken`` when the backlog began or the outbox last spilled into it."""
        self.overflow_code = overflow_code
        """Close code for an overflowing outbox: 4008 for bots; 1013 for browsers, which htmx reconnects on."""
        self.close_timeout = close_timeout
        self.close_reason: str | None = None
        self.close_code: int | None = None
        """The code this side closed with, if it did."""
        self.frames_sent = 0
        self.bytes_sent = 0
        """Payload bytes written (before compression, if the peer negotiated it)."""
        self.messages_sent = 0
        """Messages handed to this peer, alone or in batches (conflated ones included)."""
        self.slow_consumer = False
        self._transport: asyncio.Transport | None = None
        """Set while frames may skip the outbox (started, and not compressed)."""
        self._started = False
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._flush: asyncio.Task[None] | None = None
        """Sends what is owed before a close frame; there is one, however many ask for it."""

    @property
    def peer(self) -> str:
        return self.request.remote or "-"

    @property
    def closing(self) -> bool:
        return self.close_reason is not None

    def start(self) -> None:
        """From now on frames flow: directly while the peer keeps up, through the writer when not.

        A peer that negotiated permessage-deflate always goes through the writer,
        where aiohttp compresses each frame for it.
        """
        self._started = True
        self._transport = None if self.ws.compress else self.request.transport
        if self.outbox or self.backlog:
            self._wake_writer()

    def deliver(self, frame: bytes, parts: Sequence[Part]) -> None:
        """Hand over one flush window for this peer (``frame`` is ``parts`` joined).

        While the peer keeps up (nothing waiting, the writer idle, little in the
        socket's buffer) the shared frame is written to the transport at once:
        no task switch, no copy. Otherwise it goes to the outbox, which the
        writer empties as fast as the peer reads, conflating on the way.
        """
        if self.close_reason is not None:
            return
        self.messages_sent += len(parts)
        transport = self._transport
        # no writer task means the outbox is empty (it runs until it is)
        if (
            self._writer is None
            and transport is not None
            and transport.get_write_buffer_size() < DIRECT_WRITE_LIMIT
            and not transport.is_closing()
        ):
            transport.write(_Wire.of(frame))
            self.frames_sent += 1
            self.bytes_sent += len(frame)
            return
        self._queued(self.outbox.put_frame(frame, parts))

    def send(self, data: bytes) -> None:
        """Queue one message that must arrive: a reply, a snapshot, a page."""
        if self.close_reason is None:
            self.messages_sent += 1
            self._queued(self.outbox.put(data))

    def send_paced(self, data: bytes, *, limit: int) -> None:
        """Queue one message that must arrive and may be large (a snapshot) ahead of live traffic.

        It is not held to the outbox's bound: see the class docstring for the
        one it is held to (``limit`` messages of earlier backlog).
        """
        if self._make_room(limit):
            self.messages_sent += 1
            self.backlog.add_frame(data)
            self._ensure_writer()

    def replay(self, messages: Sequence[Message], *, limit: int) -> None:
        """Queue a resume's replay ahead of live traffic, encoded as the peer reads it."""
        if messages and self._make_room(limit):
            self.messages_sent += len(messages)
            self.backlog.add(messages)
            self._ensure_writer()

    def _make_room(self, limit: int) -> bool:
        """Admit more backlog, moving the outbox ahead of it; close the peer (False) if it is not reading."""
        if self.close_reason is not None:
            return False
        self.backlog_limit = limit
        if not self.backlog.admits(max_messages=limit, max_bytes=self.outbox.max_bytes):
            self._overflow()
            return False
        if not self.backlog:
            self._spill_mark = self.backlog.taken
        self._move_outbox()
        return True

    def _move_outbox(self) -> None:
        waiting = len(self.outbox)
        frame = self.outbox.take()
        if frame is not None:
            self.backlog.add_frame(frame, waiting)

    def _spilled(self) -> bool:
        """Move an overflowing outbox behind the backlog, if the peer reads that backlog faster than live traffic."""
        backlog = self.backlog
        if (
            not backlog
            or backlog.taken - self._spill_mark < len(self.outbox)
            or not backlog.admits(max_messages=self.backlog_limit, max_bytes=self.outbox.max_bytes)
        ):
            return False
        self._spill_mark = backlog.taken
        self._move_outbox()
        return True

    def _queued(self, within_bounds: bool) -> None:
        if within_bounds or self._spilled():
            if self._writer is None and self._started:
                self._wake_writer()
            return
        self._overflow()

    def _overflow(self) -> None:
        event(
            log,
            logging.WARNING,
            "slow_consumer",
            kind=self.kind,
            session=self.session,
            peer=self.peer,
            queued=len(self.outbox),
            queued_bytes=self.outbox.size,
            backlog=len(self.backlog),
            backlog_bytes=self.backlog.size,
        )
        self.slow_consumer = True
        self.close_soon(self.overflow_code, "slow consumer")

    def _ensure_writer(self) -> None:
        if self._writer is None and self._started:
            self._wake_writer()

    def _wake_writer(self) -> None:
        self._writer = asyncio.create_task(self._write(), name=f"writer-{self.session}")

    async def _write(self) -> None:
        """Send the backlog, then what the outbox holds, as fast as the peer takes it; then end.

        A writer exists only while something waits, so a connection that keeps
        up (or is idle) costs no task.
        """
        ws, outbox, backlog = self.ws, self.outbox, self.backlog
        try:
            while True:
                paced = bool(backlog)  # closing too: what was replayed is owed before what came after it
                frame = backlog.take() if paced else outbox.take()
                if frame is None:
                    break
                await ws.send_frame(frame, WSMsgType.TEXT)  # waits while the peer's buffer is full
                self.frames_sent += 1
                self.bytes_sent += len(frame)
                if paced:
                    await asyncio.sleep(0)  # a replay is encoded a chunk at a time: let the loop run between
        except (ConnectionError, RuntimeError):
            pass  # the peer went away; the handler's receive loop sees the close
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None

    def close_soon(self, code: int, reason: str) -> None:
        """Start closing with ``code``; returns at once.

        A policy close (a flood, a protocol error, a restart) first sends
        what the peer is owed, such as the ``rate_limited`` errors before a
        1008; a slow consumer (``overflow_code``) is owed nothing, since it
        does not read.
        """
        if self.close_reason is not None:
            return
        self.close_reason = reason
        self.close_code = code
        if code == self.overflow_code:
            self.outbox.clear()
            self.backlog.clear()
            if self._writer is not None:
                self._writer.cancel()
        self._closer = asyncio.create_task(self._close(code, reason), name=f"close-{self.session}")

    async def flush_owed(self, deadline: float | None = None) -> None:
        """Before a close frame: let the writer send what is owed (backlog, then outbox), once,
        until ``deadline`` (loop time; half of ``close_timeout`` from now by default, so the close
        frame and the wait for the peer's keep the other half). Nothing for a slow consumer.

        A second caller (aiohttp closing on its own while a policy close flushes) waits for the
        same flush, so no close frame goes out in the middle of it."""
        if self.close_code == self.overflow_code:
            return
        if self._flush is None:
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self.close_timeout / 2
            self._flush = asyncio.create_task(self._flush_until(deadline), name=f"flush-{self.session}")
        # asyncio.wait: a caller cancelled meanwhile must not cancel the flush under the other
        await asyncio.wait({self._flush})

    async def _flush_until(self, deadline: float) -> None:
        if (self.outbox or self.backlog) and self._writer is None and self._started:
            self._wake_writer()
        if (writer := self._writer) is not None:
            # asyncio.wait: the writer may be cancelled by stop(), which must not cancel the close
            done, _ = await asyncio.wait({writer}, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
            if not done:  # a peer that did not take what it is owed by the deadline
                writer.cancel()
                self.outbox.clear()
                self.backlog.clear()
                await asyncio.wait({writer})  # ended, so nothing more follows the close frame

    async def closing_by_protocol(self, code: int) -> None:
        """aiohttp is about to close with ``code`` on its own (a frame too big, text not UTF-8):
        take nothing more for this peer, then send what it is owed."""
        if self.close_reason is None:
            self.close_reason = "refused frame"
            self.close_code = code
        await self.flush_owed()

    async def _close(self, code: int, reason: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.close_timeout
        await self.flush_owed(loop.time() + self.close_timeout / 2)
        try:
            async with asyncio.timeout_at(deadline):
                await self.ws.close(code=code, message=reason.encode(), drain=False)
        except (TimeoutError, ConnectionError, RuntimeError):
            pass
        transport = self.request.transport
        if transport is None:
            return
        # Give the close frame until the deadline to get through what is buffered, then drop
        # the socket: closing a transport whose peer does not read would wait forever to flush.
        while not transport.is_closing() or transport.get_write_buffer_size():
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        else:
            if code != self.overflow_code:
                return  # flushed: the socket closes gracefully, after the peer's close frame
        if code == self.overflow_code:
            sock = transport.get_extra_info("socket")
            if sock is not None:  # reset, so the kernel drops its send queue too
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    async def stop(self) -> None:
        """Stop the writer (after the socket has closed) and wait for a pending close."""
        if self._writer is not None:
            self._writer.cancel()
        self.backlog.clear()
        if self._closer is not None and self._closer is not asyncio.current_task():
            await asyncio.gather(self._closer, return_exceptions=True)

    async def wait_closed(self) -> None:
        if self._closer is not None:
            await asyncio.gather(self._closer, return_exceptions=True)
