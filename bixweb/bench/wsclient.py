"""One WebSocket connection of the load: an asyncio protocol, no client library.

The protocol writes the upgrade request itself, checks the answer, then
splits frames with :class:`~bixweb.bench.wsframes.FrameParser` and counts
them into the worker's :class:`Tally`. Per frame that is a header parse, a
``bytes.count`` and, for one sample per frame, a ``bytes.find``: no JSON.
Pings get a masked pong; a close gets a masked close back.

It is an ``asyncio.BufferedProtocol`` reading every socket of a worker into
one shared buffer: a plain ``Protocol`` gets a fresh ``bytes`` per read,
which ``recv`` allocates at 256 KiB and shrinks, and that costs as much as
everything else per frame together (measured: ~25 µs against ~12 µs a read).

Receipt time is when the event loop woke up with the socket readable
(:class:`WakeClock`, set by :class:`StampingSelector`), not when this
socket's turn came: otherwise the time the worker spends on the other
sockets of the same wake-up would count as server latency.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from typing import cast

from bixweb.bench import scan
from bixweb.bench.stats import Histogram
from bixweb.bench.wsframes import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    Buffer,
    FrameError,
    FrameParser,
    HandshakeError,
    client_frame,
    upgrade_reply,
)

READ_BUFFER = 256 * 1024


class WakeClock:
    """Epoch ms of the event loop's latest return from ``select``."""

    __slots__ = ("ms",)

    def __init__(self) -> None:
        self.ms = time.time() * 1000.0


class StampingSelector(selectors.DefaultSelector):
    """The platform's selector, noting on ``clock`` when each ``select`` returns."""

    def __init__(self, clock: WakeClock) -> None:
        super().__init__()
        self.clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(timeout)
        self.clock.ms = time.time() * 1000.0
        return ready


class Tally:
    """What one worker has received, all its connections together.

    The counters only grow; a measuring window is the difference of two
    readings. The histograms are swapped for fresh ones when a window
    opens, so they hold that window only.
    """

    __slots__ = (
        "msgs",
        "frames",
        "bytes",
        "ui_frames",
        "ui_bytes",
        "latency",
        "ui_latency",
        "ui_stamps",
        "handshake",
        "pings",
        "closed",
        "errors",
        "last_error",
        "clock",
        "buffer",
    )

    def __init__(self, clock: WakeClock | None = None) -> None:
        self.clock = clock or WakeClock()
        """Receipt time; the worker's selector keeps it current."""
        self.msgs = 0
        self.frames = 0
        self.bytes = 0
        self.ui_frames = 0
        self.ui_bytes = 0
        self.latency = Histogram()
        self.ui_latency = Histogram()
        self.ui_stamps: dict[bytes, list[float]] | None = None
        """Status-fragment stamp → arrival times (epoch ms); None outside a window."""
        self.handshake = Histogram()
        self.pings = 0
        self.closed = 0
        self.errors = 0
        self.last_error = ""
        self.buffer = bytearray(READ_BUFFER)
        """Every socket of the worker reads into this; each read is parsed before the next."""

    def fail(self, why: str) -> None:
        self.errors += 1
        self.last_error = why


class WsClient(asyncio.BufferedProtocol):
    """The handshake, framing and control frames common to bots and dashboards."""

    def __init__(self, request: bytes, key: str, tally: Tally, *, stall: bool = False) -> None:
        self.request = request
        self.key = key
        self.tally = tally
        self.stall = stall
        """Stop reading once open: a client that no longer keeps up."""
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.parser: FrameParser | None = None
        self.head = b""
        self.started = 0.0
        """``time.monotonic()`` when the TCP connect began (set by the dialer), else when it completed."""
        self.msgs = 0
        """Messages this connection received (bots only)."""

    @property
    def is_open(self) -> bool:
        return self.parser is not None and self.transport is not None and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.started = self.started or time.monotonic()
        self.transport.write(self.request)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.tally.buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.parser is not None:
            self.received(self.tally.buffer, nbytes)
            return
        rest = self._handshake(bytes(self.tally.buffer[:nbytes]))
        if rest and not self.stall:
            self.received(rest, len(rest))

    def received(self, data: Buffer, size: int) -> None:
        """The first ``size`` bytes of ``data`` came in after the handshake."""
        parser, transport = self.parser, self.transport
        assert parser is not None and transport is not None, "received() before the handshake"
        try:
            buf, spans = parser.feed(data, size)
        except FrameError as exc:
            self._abort(str(exc))
            return
        now_ms = self.tally.clock.ms
        for opcode, start, end in spans:
            if opcode < OP_CLOSE:
                self.on_data(buf, start, end, now_ms)
            elif opcode == OP_PING:
                self.tally.pings += 1
                self._send(OP_PONG, buf[start:end])
            elif opcode == OP_CLOSE:
                self._send(OP_CLOSE, buf[start : start + 2])
                transport.close()
                return

    def on_data(self, buf: Buffer, start: int, end: int, now_ms: float) -> None:
        """A text, binary or continuation frame's payload is ``buf[start:end]``."""

    def _handshake(self, data: bytes) -> bytes:
        """Consume the upgrade answer; return what follows it (frames), or b"" while it is incomplete."""
        self.head += data
        try:
            end = upgrade_reply(self.head, self.key)
        except HandshakeError as exc:
            self._abort(str(exc))
            return b""
        if end < 0:
            return b""
        rest, self.head = self.head[end:], b""
        self.parser = FrameParser()
        self.tally.handshake.add((time.monotonic() - self.started) * 1000.0)
        if self.stall and self.transport is not None:
            self.transport.pause_reading()
        if not self.opened.done():
            self.opened.set_result(None)
        return rest

    def _send(self, opcode: int, payload: Buffer) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(opcode, payload))

    def _abort(self, why: str) -> None:
        self.tally.fail(why)
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.parser is not None:
            self.tally.closed += 1
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(str(exc or "closed during the handshake")))


class BotClient(WsClient):
    """A ``/ws`` connection: counts messages (``"ts":`` keys) and samples the first ``ts`` per frame."""

    def on_data(self, buf: Buffer, start: int, end: int, now_ms: float) -> None:
        tally = self.tally
        count = buf.count(scan.TS_KEY, start, end) or 1
        self.msgs += count
        tally.msgs += count
        tally.frames += 1
        tally.bytes += end - start
        ts = scan.first_ts(buf, start, end)
        if ts is not None:
            tally.latency.add(now_ms - ts)


class DashboardClient(WsClient):
    """A ``/ws/ui`` connection: counts fragment frames and notes when each status broadcast arrives."""

    def on_data(self, buf: Buffer, start: int, end: int, now_ms: float) -> None:
        tally = self.tally
        tally.ui_frames += 1
        tally.ui_bytes += end - start
        if tally.ui_stamps is None:
            return
        stamp = scan.status_time(buf, start, end)
        if stamp is None:
            return
        tally.ui_stamps.setdefault(stamp, []).append(now_ms)
        rendered = scan.stamp_ms(stamp)
        if rendered is not None:
            tally.ui_latency.add(now_ms - rendered)
