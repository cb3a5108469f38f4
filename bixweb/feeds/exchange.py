"""Exchange feeds: one reconnecting WebSocket loop, whatever the exchange.

An :class:`~bixweb.feeds.adapter.ExchangeAdapter` knows one exchange's
formats and nothing of sockets: the URL that carries some symbols' streams,
what to send once connected, and which market events a text frame holds.
:class:`ExchangeFeed` knows sockets and nothing of formats. It connects; reads; answers the
exchange's pings (aiohttp's ``autoping``) and sends its own, so a dead link
is noticed; reconnects with jittered exponential backoff; gives up on a
connection that sends no data for ``silence`` seconds; and replaces each
connection before the exchange's age limit, make before break, so that the
24 h disconnect loses nothing. The frames of each flush window go to an
:class:`~bixweb.feeds.adapter.Intake`, which turns them into events
without any I/O.

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
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Final

import aiohttp

from bixweb.errors import FeedError
from bixweb.feeds.adapter import ExchangeAdapter, Frame, Intake
from bixweb.logs import event
from bixweb.model import MarketEvent
from bixweb.retry import backoff

log = logging.getLogger("bixweb.feeds.exchange")

QUEUE_FRAMES: Final = 10_000
"""Frames read but not yet taken; a reader waits (and the exchange's pings wait with it) past this."""
MAX_FRAME_BYTES: Final = 1 << 20


def now_ms() -> int:
    return time.time_ns() // 1_000_000


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
                event(
                    log,
                    logging.WARNING,
                    "feed_connect_failed",
                    source=self.adapter.name,
                    failure=self.status.last_failure,
                    retry_in_s=round(delay, 2),
                )
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
            event(
                log,
                logging.WARNING,
                "feed_disconnected",
                source=self.adapter.name,
                connection=conn.number,
                reason=self.status.last_failure,
                retry_in_s=round(delay, 2),
            )
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
        event(
            log, logging.INFO, "feed_connected", source=self.adapter.name, connection=number, symbols=len(self.symbols)
        )
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
        why = "shutdown_announced" if self._replace_now.is_set() else "age_limit"
        event(
            log, logging.INFO, "feed_replacing_connection", source=self.adapter.name, connection=conn.number, reason=why
        )
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
        event(log, logging.INFO, "feed_replaced_connection", source=self.adapter.name, connection=conn.number)

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
