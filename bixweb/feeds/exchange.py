"""Exchange feeds: one reconnecting WebSocket loop, and one adapter per exchange.

An :class:`ExchangeAdapter` knows one exchange's formats and nothing of
sockets: the URL that carries some symbols' streams, what to send once
connected, and which market events a text frame holds. :class:`ExchangeFeed`
knows sockets and nothing of formats. It connects; reads; answers the
exchange's pings (aiohttp's ``autoping``) and sends its own, so a dead link
is noticed; reconnects with jittered exponential backoff; gives up on a
connection that sends no data for ``silence`` seconds; and replaces each
connection before the exchange's age limit, make before break, so that the
24 h disconnect loses nothing. The frames of each flush window go to an
:class:`Intake`, which turns them into events without any I/O.

The feed yields only what the exchange sent: while it is disconnected or
silent it yields nothing, so the app's watchdog reports the feed ``stale``.
:attr:`ExchangeFeed.status` says whether a connection is up.

A second exchange is one module with an adapter and an ``open_…`` function
(see ``bixweb/feeds/binance.py`` and ``docs/feeds.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import aiohttp

from bixweb.errors import FeedError
from bixweb.model import MarketEvent, Trade

log = logging.getLogger("bixweb.feeds.exchange")

QUEUE_FRAMES: Final = 10_000
"""Frames read but not yet taken; a reader waits (and the exchange's pings wait with it) past this."""
MAX_FRAME_BYTES: Final = 1 << 20
MALFORMED_LOG_EVERY_MS: Final = 60_000


class MalformedFrame(ValueError):
    """A frame an adapter cannot read. Its message names the fault, never the frame's content."""


@dataclass(frozen=True, slots=True)
class Parsed:
    """What one frame holds."""

    events: tuple[MarketEvent, ...] = ()
    reconnect: bool = False
    """The exchange announced that it will close this connection: replace it now."""


class ExchangeAdapter(Protocol):
    """One exchange's formats. No I/O: values in, values out."""

    name: str
    """For logs and errors: ``"binance"``."""

    def connect_url(self, symbols: Sequence[str]) -> str:
        """The WebSocket URL to open for ``symbols``."""
        ...

    def subscribe_frames(self, symbols: Sequence[str]) -> list[str]:
        """Text frames to send once connected (none when the URL subscribes)."""
        ...

    def parse(self, frame: str | bytes, received_ms: int) -> Parsed:
        """The events of one frame; :class:`MalformedFrame` if it cannot be read."""
        ...


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def backoff(
    initial: float = 0.5, maximum: float = 30.0, *, factor: float = 2.0, rng: random.Random | None = None
) -> Iterator[float]:
    """Delays before successive reconnection attempts, in seconds.

    Exponential and capped, with "equal jitter": each delay is drawn between
    half the current ceiling and the ceiling, so that many servers cut off at
    once do not come back in step, and no delay is zero (an exchange limits
    connection attempts per IP).
    """
    rng = rng or random.Random()
    ceiling = initial
    while True:
        yield rng.uniform(ceiling / 2, ceiling)
        ceiling = min(ceiling * factor, maximum)


class RecentIds:
    """The last ``depth`` trade ids of each symbol: a trade seen twice is dropped.

    Two connections overlap while one replaces the other; both carry the
    trades of that moment.
    """

    def __init__(self, depth: int = 4_096) -> None:
        self.depth = depth
        self._order: dict[str, deque[int]] = {}
        self._ids: dict[str, set[int]] = {}

    def first_time(self, symbol: str, trade_id: int) -> bool:
        """True the first time ``(symbol, trade_id)`` is seen (within the last ``depth``)."""
        ids = self._ids.setdefault(symbol, set())
        if trade_id in ids:
            return False
        order = self._order.setdefault(symbol, deque())
        order.append(trade_id)
        ids.add(trade_id)
        if len(order) > self.depth:
            ids.discard(order.popleft())
        return True


@dataclass(frozen=True, slots=True)
class Frame:
    """One text frame as read: which connection, when, what."""

    connection: int
    received_ms: int
    data: str | bytes


class Intake:
    """Frames → market events, for one feed. No I/O (it logs).

    * a frame the adapter cannot read is counted and logged without its
      content (the first at once, then a count at most once a minute);
    * events for symbols the feed does not carry are dropped, each symbol
      logged once;
    * a configured symbol the exchange has sent nothing for, ``unlisted_after``
      ms after data began, is logged once: the exchange may not list it;
    * trades seen before are dropped, and while an old connection is being
      replaced only its trades count (the new one's states are newer).
    """

    def __init__(self, adapter: ExchangeAdapter, symbols: Iterable[str], *, unlisted_after_ms: int = 60_000) -> None:
        self.adapter = adapter
        self.symbols = frozenset(symbols)
        self.unlisted_after_ms = unlisted_after_ms
        self.newest = 0
        """The connection whose states count: the latest opened."""
        self.malformed = 0
        self.reconnect_asked = False
        """Set when the exchange announced it will close the newest connection; the feed clears it."""
        self._recent = RecentIds()
        self._foreign: set[str] = set()
        self._heard: set[str] = set()
        self._data_since: int | None = None
        self._unlisted_told = False
        self._malformed_told_ms: int | None = None
        self._malformed_told = 0

    def take(self, frames: Iterable[Frame], now: int) -> list[MarketEvent]:
        """The events of ``frames``, in order, as the feed should yield them."""
        events: list[MarketEvent] = []
        for frame in frames:
            try:
                parsed = self.adapter.parse(frame.data, frame.received_ms)
            except MalformedFrame as exc:
                self._malformed(frame, str(exc), now)
                continue
            if parsed.reconnect and frame.connection == self.newest:
                self.reconnect_asked = True
            current = frame.connection >= self.newest
            events.extend(e for e in parsed.events if self._admit(e, current))
        self._look_for_unlisted(now)
        return events

    def _admit(self, event: MarketEvent, current: bool) -> bool:
        symbol = event.symbol
        if symbol not in self.symbols:
            if symbol not in self._foreign:
                self._foreign.add(symbol)
                log.warning("%s sends %s, which bixweb does not carry: ignored", self.adapter.name, symbol)
            return False
        self._heard.add(symbol)
        if isinstance(event, Trade):
            return self._recent.first_time(symbol, event.id)
        return current

    def _malformed(self, frame: Frame, fault: str, now: int) -> None:
        self.malformed += 1
        told = self._malformed_told_ms
        if told is not None and now - told < MALFORMED_LOG_EVERY_MS:
            return
        since = self.malformed - self._malformed_told
        self._malformed_told_ms, self._malformed_told = now, self.malformed
        log.warning(
            "%s sent a frame bixweb cannot read (%d bytes: %s); %d such frame(s) since the last report, %d in all",
            self.adapter.name, len(frame.data), fault, since, self.malformed,
        )

    def _look_for_unlisted(self, now: int) -> None:
        if self._unlisted_told or not self._heard:
            return
        if self._data_since is None:
            self._data_since = now
        if now - self._data_since < self.unlisted_after_ms:
            return
        self._unlisted_told = True
        silent = sorted(self.symbols - self._heard)
        if silent:
            log.warning(
                "%s has sent nothing for %s in %.0f s while other symbols flow: not listed there? They stay empty",
                self.adapter.name, ", ".join(silent), self.unlisted_after_ms / 1000,
            )


@dataclass(slots=True)
class UpstreamStatus:
    """How the feed's link to the exchange stands, for health reports."""

    connections: int = 0
    """Connections opened so far."""
    open: set[int] = field(default_factory=set)
    """Numbers of the connections open now (two while one replaces the other)."""
    failures: int = 0
    """Connection attempts that failed."""
    last_failure: str | None = None
    """The kind of the last failure (an exception class or a close code), not upstream content."""

    @property
    def connected(self) -> bool:
        return bool(self.open)


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """How an :class:`ExchangeFeed` treats its connections (seconds)."""

    rotate_after: float = 23.5 * 3600
    """Replace a connection this old (Binance closes them at 24 h)."""
    overlap: float = 2.0
    """How long the old connection goes on after its replacement opened."""
    silence: float = 60.0
    """Reconnect after this long without a data frame (pings do not count)."""
    flush: float = 0.05
    """Frames arriving within this window after the first go out together."""
    heartbeat: float = 20.0
    """Our own pings; a pong missing for half of this closes the connection."""
    connect_timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    unlisted_after: float = 60.0
    """Warn about configured symbols the exchange has sent nothing for after this long."""


_CONNECT_ERRORS: Final = (aiohttp.ClientError, OSError, TimeoutError)


@dataclass(eq=False, slots=True)
class _Connection:
    number: int
    ws: aiohttp.ClientWebSocketResponse
    opened: float
    reader: asyncio.Task[None] | None = None
    delivered: bool = False


class ExchangeFeed:
    """A market-data feed from one exchange's WebSocket streams; see the module docstring."""

    def __init__(
        self,
        adapter: ExchangeAdapter,
        symbols: Sequence[str],
        options: ConnectionOptions | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.adapter = adapter
        self.symbols = list(symbols)
        self.options = options or ConnectionOptions()
        self.status = UpstreamStatus()
        self.intake = Intake(adapter, self.symbols, unlisted_after_ms=round(self.options.unlisted_after * 1000))
        self._rng = rng or random.Random()
        self._replace_now = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def events(self) -> AsyncIterator[list[MarketEvent]]:
        """One list of events per flush window, for as long as it is iterated."""
        frames: asyncio.Queue[Frame] = asyncio.Queue(QUEUE_FRAMES)
        async with aiohttp.ClientSession() as session:
            connections = asyncio.create_task(self._connections(session, frames), name=f"{self.adapter.name}-feed")
            try:
                while True:
                    first = await self._next_frame(frames, connections)
                    if self.options.flush > 0:
                        await asyncio.sleep(self.options.flush)
                    window = [first, *_drain(frames)]
                    events = self.intake.take(window, now_ms())
                    if self.intake.reconnect_asked:
                        self.intake.reconnect_asked = False
                        self._replace_now.set()
                    if events:
                        yield events
            finally:
                connections.cancel()
                for task in list(self._tasks):
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await connections
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _next_frame(self, frames: asyncio.Queue[Frame], connections: asyncio.Task[None]) -> Frame:
        if not frames.empty():
            return frames.get_nowait()
        getter = asyncio.ensure_future(frames.get())
        try:
            await asyncio.wait((getter, connections), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        connections.result()  # raises what stopped it
        raise FeedError(f"the {self.adapter.name} connection loop stopped")

    async def _connections(self, session: aiohttp.ClientSession, frames: asyncio.Queue[Frame]) -> None:
        """Keep one connection open (two while replacing one), forever."""
        options = self.options
        delays = backoff(options.backoff_initial, options.backoff_max, rng=self._rng)
        replacing: _Connection | None = None
        while True:
            try:
                conn = await self._open(session)
            except _CONNECT_ERRORS as exc:
                delay = next(delays)
                self.status.failures += 1
                self.status.last_failure = _failure_kind(exc)
                log.warning("cannot connect to %s (%s); next attempt in %.1f s",
                            self.adapter.name, self.status.last_failure, delay)
                await asyncio.sleep(delay)
                continue
            reader = asyncio.create_task(self._read(conn, frames), name=f"{self.adapter.name}-{conn.number}")
            conn.reader = reader
            self._keep(reader)
            if replacing is not None:
                self._keep(asyncio.create_task(self._retire(replacing)))
                replacing = None
            if await self._serve(conn):
                replacing = conn
                continue
            if conn.delivered:
                delays = backoff(options.backoff_initial, options.backoff_max, rng=self._rng)
            delay = next(delays)
            log.warning("the %s connection %d ended (%s); reconnecting in %.1f s",
                        self.adapter.name, conn.number, self.status.last_failure, delay)
            await asyncio.sleep(delay)

    async def _open(self, session: aiohttp.ClientSession) -> _Connection:
        url = self.adapter.connect_url(self.symbols)
        async with asyncio.timeout(self.options.connect_timeout):
            ws = await session.ws_connect(
                url, autoping=True, heartbeat=self.options.heartbeat, max_msg_size=MAX_FRAME_BYTES
            )
            try:
                for text in self.adapter.subscribe_frames(self.symbols):
                    await ws.send_str(text)
            except BaseException:
                await ws.close()
                raise
        self.status.connections += 1
        number = self.status.connections
        self.status.open.add(number)
        self.intake.newest = number
        log.info("connected to %s (connection %d, %d symbols)", self.adapter.name, number, len(self.symbols))
        return _Connection(number, ws, asyncio.get_running_loop().time())

    async def _serve(self, conn: _Connection) -> bool:
        """Wait until ``conn`` ends (False) or is due to be replaced (True)."""
        assert conn.reader is not None
        loop = asyncio.get_running_loop()
        self._replace_now.clear()
        announced = asyncio.ensure_future(self._replace_now.wait())
        try:
            timeout = max(0.0, conn.opened + self.options.rotate_after - loop.time())
            await asyncio.wait((conn.reader, announced), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            announced.cancel()
        if conn.reader.done():
            return False
        why = "it announced a shutdown" if self._replace_now.is_set() else "its age limit is near"
        log.info("replacing the %s connection %d: %s", self.adapter.name, conn.number, why)
        return True

    async def _read(self, conn: _Connection, frames: asyncio.Queue[Frame]) -> None:
        """Frames of one connection into the queue, until it closes or falls silent."""
        loop = asyncio.get_running_loop()
        silence = self.options.silence
        last_data = loop.time()
        try:
            while True:
                left = last_data + silence - loop.time()
                if left <= 0:
                    self.status.last_failure = f"no data for {silence:g} s"
                    return
                try:
                    msg = await conn.ws.receive(timeout=left)
                except TimeoutError:
                    continue
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    last_data = loop.time()
                    conn.delivered = True
                    await frames.put(Frame(conn.number, now_ms(), msg.data))
                    continue
                self.status.last_failure = _close_kind(conn.ws, msg)
                return
        finally:
            self.status.open.discard(conn.number)
            await conn.ws.close()

    async def _retire(self, conn: _Connection) -> None:
        """Close a replaced connection once its successor has had time to catch up."""
        await asyncio.sleep(self.options.overlap)
        await conn.ws.close()
        log.info("closed the replaced %s connection %d", self.adapter.name, conn.number)

    def _keep(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _drain(frames: asyncio.Queue[Frame]) -> list[Frame]:
    out: list[Frame] = []
    while not frames.empty():
        out.append(frames.get_nowait())
    return out


def _failure_kind(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    kind = type(exc).__name__
    return f"{kind} {status}" if isinstance(status, int) else kind


def _close_kind(ws: aiohttp.ClientWebSocketResponse, msg: aiohttp.WSMessage) -> str:
    if msg.type is aiohttp.WSMsgType.ERROR:
        return f"error {type(msg.data).__name__}"
    return f"closed {ws.close_code}" if ws.close_code is not None else "closed"
