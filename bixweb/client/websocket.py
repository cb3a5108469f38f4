"""The bot client library: a client for ``GET /ws`` (protocol v1, ``docs/protocol.md``).

In an asyncio program::

    async with WebSocketClient("ws://127.0.0.1:8080/ws", symbols=["BTCUSDT"]) as client:
        await client.subscribe(["BTCUSDT"], ["trades"])
        async for message in client:  # welcome, initial_data, market_update, trade, ...
            ...

In a plain synchronous program::

    client = WebSocketClient(symbols=["BTCUSDT", "ETHUSDT"])
    client.start_background()
    ...
    price = client.get_latest_price("BTCUSDT")  # None until the first ticker
    client.stop()

How it runs: each client has one *receive loop*, a task that reads the socket,
unwraps ``batch`` frames, passes each message through its
:class:`~bixweb.client.view.MarketView` (which decides what to deliver),
answers pending requests, puts every delivered message in a bounded queue
and calls the callbacks. :meth:`WebSocketClient.connect` starts it;
:meth:`~WebSocketClient.receive_messages` waits for it (starting it first if
needed); ``async for`` and :meth:`~WebSocketClient.get_message` start it if
nothing else has. Only the client's own event loop may call its coroutines;
in background mode, read it from other threads through the thread-safe
readers (``get_latest_*``, ``get_book``, ``is_connected``, ``queue``, counters).

Resume. The view keeps, per stream, the ``epoch`` and the last ``seq``
delivered. After any close that :meth:`~WebSocketClient.disconnect` did not
ask for, the client reconnects (with backoff) to
:attr:`~WebSocketClient.resume_url` (``?channels=none``: no initial
subscription, so no ``initial_data``) and sends one ``subscribe`` per group
of its subscriptions (see :func:`~bixweb.client.streams.resume_requests`)
carrying ``since: {epoch, seq: {stream: last seq}}``. The server either
replays what was missed, with the original ``seq`` (ack ``recovered: true``),
or sends an ``initial_data`` with ``recovered: false`` (a restart changed the
epoch, or it no longer has the trades) from which the view starts those
streams over. :attr:`~WebSocketClient.recovered` says how the last resume
went. The first connection, and one after :meth:`~WebSocketClient.disconnect`,
use the ``symbols``/``channels`` query and fresh snapshots instead.

Refusals. A server that refuses the handshake answers with an HTTP error and
a JSON body; the client raises it as :class:`~bixweb.errors.HandshakeRefused`
(``status``, ``code``, ``message``, ``retry_after``). A refusal that can pass
by itself (``transient``: 429 ``too_many_connections``, 503 ``server_full``,
any 5xx) is retried like a lost connection, waiting at least its
``Retry-After``; any other (401 ``invalid_token``, 400 ``unknown_symbol``,
403 ``forbidden_origin``, ...) is never retried: :meth:`~WebSocketClient.connect`
raises it, and a receive loop that meets it (a reconnect, a background
client) stops, so :meth:`~WebSocketClient.receive_messages` and
:meth:`~WebSocketClient.get_message` raise it, :attr:`~WebSocketClient.failure`
holds it and :meth:`~WebSocketClient.is_connected` stays False.

Dedupe. A data message whose ``seq`` is not above the last one delivered on
its stream in the same epoch is dropped before the queue and the callbacks,
and counted in :attr:`~WebSocketClient.duplicates`.

Gaps. Trades (``trades:SYMBOL``) must be contiguous. On a jump the client
counts a gap, holds back that trade and the ones after it, and sends a
``subscribe`` with ``since`` for that stream alone; the server replays the
missing trades (then the held ones follow, so callbacks get every trade once
and in ``seq`` order), or, if it no longer has them, an ``initial_data``
(``recovered: false``) whose recent trades stand in for them (those with an
``id`` above the last trade delivered are the new ones). Ticker, book
and candles carry state that the server conflates for slow readers: their
``seq`` may skip and that is no gap.

Checksums. Every book (``book`` messages and ``initial_data`` books) is
checked against :func:`bixweb.protocol.book_checksum`. A mismatch is counted
in :attr:`~WebSocketClient.checksum_failures`; the book is neither applied
nor delivered, and a ``subscribe`` with ``since`` just below its ``seq``
makes the server replay its latest book. :meth:`~WebSocketClient.get_book`
returns the latest verified book. If a resync is refused or times out, the
client closes the connection and resumes.

This module uses aiohttp's client only: it never imports ``aiohttp.web``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import random
import ssl as ssl_module
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Literal

import aiohttp
import orjson
from yarl import URL

from bixweb.client.refusal import backoff_with_hint, read_refusal
from bixweb.client.streams import (
    CLOSE_REASONS,
    Callback,
    Message,
    Request,
    Resume,
    Stream,
    backoff_delays,
    error_from_message,
    resume_requests,
    since_data,
    streams_of,
    subscription_requests,
    subscriptions_map,
    unwrap,
)
from bixweb.client.view import MarketView, Resync
from bixweb.errors import HandshakeRefused, ProtocolError
from bixweb.model import canonical_symbol, stream_key
from bixweb.protocol import Since

log = logging.getLogger("bixweb.client")


def _names(value: str | Iterable[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    return [item.strip() for item in items if item.strip()]


def _symbols(value: str | Iterable[str]) -> list[str]:
    return [canonical_symbol(name) for name in _names(value)]


def _describe(exc: BaseException | None) -> str:
    return f"{type(exc).__name__}: {exc}" if exc is not None else "-"


def _retryable(exc: BaseException) -> bool:
    """Connection failures worth retrying: network errors and transient refusals; a refusal
    that is not transient (a bad token, an unknown symbol) will not change by itself."""
    if isinstance(exc, HandshakeRefused):
        return exc.transient
    return isinstance(exc, aiohttp.ClientError | OSError | TimeoutError)  # with a 2xx or 3xx answer to the upgrade


# -- the client ---------------------------------------------------------------


class WebSocketClient:
    """A bixweb bot client: connects, keeps its subscriptions across reconnects, collects data.

    ``url`` is the socket's address (``ws://host:port/ws``); without it the
    client uses ``host`` and ``port``. ``symbols`` and ``channels`` (lists or
    comma-separated strings) become the ``?symbols=&channels=`` query that
    chooses the initial subscription; the server's default is the ticker of
    every symbol. Symbols may be given in any case, here and in every method
    (``"btcusdt"``); the client sends and keys them in upper case, as the
    server names them.

    Every message (``batch`` frames unwrapped; duplicates and books that fail
    their checksum left out; trades in ``seq`` order; including the acks of
    the requests the client sends itself to resume or resync) goes to every
    callable in :attr:`callbacks` and into a queue of at most ``queue_size``
    messages read by ``async for`` or :meth:`get_message`; when it is full
    the oldest message is dropped and counted in :attr:`dropped`. Callbacks
    run inside the receive loop: keep them short, and do not await
    :meth:`subscribe` in one (start a task instead).

    Other options: ``auto_reconnect`` (reconnect and resume after any close that
    :meth:`disconnect` did not ask for), ``reconnect_initial`` and
    ``reconnect_max`` (see :func:`backoff_delays`), ``request_timeout`` for
    ``subscribe``/``unsubscribe``, ``connect_timeout`` per attempt,
    ``heartbeat`` (seconds between client pings; ``None``: only answer the
    server's), ``max_message_size`` of a server frame, and ``rng`` to make the
    jitter reproducible.

    Servers that require a token get it as ``Authorization: Bearer <token>``
    (``token``). For ``wss://`` URLs ``ssl`` is passed to aiohttp: ``True``
    verifies against the system's CAs, an ``SSLContext`` against yours.
    ``compress`` offers permessage-deflate, which the server may accept.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        symbols: str | Iterable[str] | None = None,
        channels: str | Iterable[str] | None = None,
        auto_reconnect: bool = True,
        queue_size: int = 100,
        reconnect_initial: float = 1.0,
        reconnect_max: float = 30.0,
        request_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        heartbeat: float | None = 30.0,
        max_message_size: int = 64 * 1024 * 1024,
        callbacks: Iterable[Callback] = (),
        rng: random.Random | None = None,
        token: str | None = None,
        ssl: ssl_module.SSLContext | bool = True,
        compress: bool = False,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        backoff_delays(reconnect_initial, reconnect_max)  # check the values now
        address = URL(url) if url is not None else URL.build(scheme="ws", host=host, port=port, path="/ws")
        if symbols is not None:
            address = address.update_query(symbols=",".join(_symbols(symbols)))
        if channels is not None:
            address = address.update_query(channels=",".join(_names(channels)))
        self.url = str(address)
        resume_query = {k: v for k, v in address.query.items() if k not in ("symbols", "channels")}
        self.resume_url = str(address.with_query({**resume_query, "channels": "none"}))
        """Where a resume connects: no initial subscription, so no ``initial_data``."""
        self.auto_reconnect = auto_reconnect
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.heartbeat = heartbeat
        self.max_message_size = max_message_size
        self.token = token
        self.ssl = ssl
        self.compress = compress
        self.callbacks: list[Callback] = list(callbacks)
        """Called with every message, in order; exceptions are logged and ignored."""
        self.view = MarketView()
        """Positions per stream, latest tickers and books (``view.seq("trades:BTCUSDT")``)."""
        self.welcome: Message | None = None
        """The last ``welcome`` message (server version, symbols, limits)."""
        self.close_code: int | None = None
        """How the last connection ended (1012 server restart, 4008 slow consumer, ...)."""
        self.connections = 0
        """Sockets opened so far; above 1 after a reconnect."""
        self.dropped = 0
        """Messages dropped from the full queue."""
        self.recovered: bool | None = None
        """How the last resume went: True if the server replayed everything missed, False if any
        request got a fresh ``initial_data`` instead; None before the first resume."""
        self.resumes = 0
        """Resumes completed (every subscription requested again after an unasked-for close)."""
        self.resyncs = 0
        """Single-stream resyncs sent on a live connection (a trades gap, a bad book checksum)."""
        self._rng = rng or random.Random()
        self._queue: deque[Message] = deque(maxlen=queue_size)
        self._lock = threading.Lock()
        self._wanted: set[Stream] | None = None  # None until the first welcome says what the query meant
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._online = threading.Event()
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None
        self._connected: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._thread_stop: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse[Literal[False]] | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._resubscriber: asyncio.Task[None] | None = None
        self._resyncers: set[asyncio.Task[None]] = set()
        self._resume = False  # set by a close nobody asked for: reconnect and resume
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    # -- thread-safe readers ---------------------------------------------

    @property
    def gaps(self) -> int:
        """How many times a trades stream's ``seq`` jumped (each gap is then filled by a resync)."""
        return self.view.gaps

    @property
    def duplicates(self) -> int:
        """Data messages dropped because their stream had already reached their ``seq``."""
        return self.view.duplicates

    @property
    def checksum_failures(self) -> int:
        """Books dropped because their checksum did not match (each then refetched)."""
        return self.view.checksum_failures

    @property
    def epoch(self) -> int | None:
        """The server epoch last seen; a new one means the server restarted and lost its numbering."""
        return self.view.epoch

    @property
    def queue(self) -> list[Message]:
        """A copy of the queued messages, oldest first."""
        with self._lock:
            return list(self._queue)

    @property
    def subscriptions(self) -> dict[str, list[str]]:
        """What the client is subscribed to, as ``{channel: [symbols]}``; restored after a reconnect."""
        with self._lock:
            return subscriptions_map(self._wanted or ())

    def is_connected(self) -> bool:
        """Whether a socket is open now."""
        return self._online.is_set()

    @property
    def failure(self) -> BaseException | None:
        """What stopped the receive loop, if an error did (a :class:`HandshakeRefused` that is not
        ``transient``, say); ``None`` while it runs, or if it ended by :meth:`disconnect`."""
        return self._failure

    def get_latest_price(self, symbol: str) -> float | None:
        """The last price of ``symbol`` from its ticker, or ``None`` before the first one."""
        ticker = self.view.ticker(symbol)
        return float(ticker["price"]) if ticker is not None else None

    def get_latest_data(self) -> dict[str, Message]:
        """The latest ticker of every symbol seen (``initial_data`` and ``market_update``)."""
        return self.view.tickers()

    def get_book(self, symbol: str) -> Message | None:
        """The latest book of ``symbol`` whose checksum matched, or ``None`` before the first one.

        A copy of the ``data`` of a ``book`` message (or of an ``initial_data``
        book): ``bids`` and ``asks`` as ``[price, qty]`` lists, best first, ``time``, ``checksum``.
        """
        return self.view.book(symbol)

    # -- connecting ------------------------------------------------------

    async def connect(self) -> None:
        """Open the socket (one attempt; raises on failure) and start the receive loop.

        Raises :class:`~bixweb.errors.HandshakeRefused` when the server
        refuses the handshake (even a ``transient`` refusal: this is one
        attempt; the receive loop is what retries), :class:`aiohttp.ClientError`,
        :class:`OSError` or :class:`TimeoutError` when the server cannot be
        reached. When the loop is already running (perhaps between
        reconnects), wait until it is connected instead, raising what
        stops it meanwhile.
        """
        self._bind_loop()
        self._closing = False
        task = self._run_task
        if task is not None and not task.done():
            assert self._connected is not None
            connected = asyncio.create_task(self._connected.wait())
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await asyncio.wait({connected, task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                connected.cancel()
            if connected.done() and not connected.cancelled():
                return
            failure = None if task.cancelled() else task.exception()  # the loop ended first
            raise failure or ConnectionError("the receive loop ended before it connected")
        try:
            await self._open()
        except BaseException:
            await self._release()
            raise
        self._start()

    async def receive_messages(self) -> None:
        """Run the receive loop until :meth:`disconnect` (or, without ``auto_reconnect``, a close).

        Starts the loop if it is not running, connecting (with retries when
        ``auto_reconnect`` is on) as needed; cancelling this stops the loop.
        Raises what stopped the loop, e.g. a 4xx answer to the upgrade.
        """
        self._bind_loop()
        self._closing = False
        if self._run_task is None or self._run_task.done():
            self._start()
        assert self._run_task is not None
        await self._run_task

    async def disconnect(self) -> None:
        """Close the socket (1000) and stop the receive loop; no reconnect follows.

        Subscriptions are kept: a later :meth:`connect` restores them, starting
        over from fresh snapshots (it does not resume).
        """
        self._closing = True
        self._resume = False
        if self._stop is not None:
            self._stop.set()  # ends a backoff sleep at once
        ws, task = self._ws, self._run_task
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.connect_timeout):
                    await ws.close()
        if task is None:
            await self._release()
        elif task is not asyncio.current_task():
            # The loop ends by itself now; cancel it only if it hangs (a connection attempt, a callback).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.wait({task})
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._wake()

    async def __aenter__(self) -> WebSocketClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.disconnect()

    # -- requests --------------------------------------------------------

    async def subscribe(self, symbols: str | Iterable[str], channels: str | Iterable[str]) -> Message:
        """Add ``symbols`` x ``channels`` (``"*"`` = every symbol); returns the ``ack``.

        An ``initial_data`` for the new streams follows the ack in the message
        flow. Raises :class:`ProtocolError` if the server refuses (nothing
        changes then), :class:`TimeoutError` after ``request_timeout`` and
        :class:`ConnectionError` if the client is not connected or the
        connection drops first.
        """
        return await self._request("subscribe", _symbols(symbols), _names(channels))

    async def unsubscribe(self, symbols: str | Iterable[str], channels: str | Iterable[str]) -> Message:
        """Remove ``symbols`` x ``channels``; returns the ``ack``. Raises as :meth:`subscribe`."""
        return await self._request("unsubscribe", _symbols(symbols), _names(channels))

    async def _request(
        self,
        op: Literal["subscribe", "unsubscribe"],
        symbols: list[str],
        channels: list[str],
        since: Since | None = None,
    ) -> Message:
        ws = self._ws
        if ws is None or ws.closed or self._run_task is None or self._run_task.done():
            raise ConnectionError("not connected")
        request_id = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        request: Message = {"type": op, "id": request_id, "symbols": symbols, "channels": channels}
        if since is not None:
            request["since"] = since_data(since)
        try:
            await ws.send_frame(orjson.dumps(request), aiohttp.WSMsgType.TEXT)
            async with asyncio.timeout(self.request_timeout):
                return await future
        finally:
            self._pending.pop(request_id, None)

    # -- the queue -------------------------------------------------------

    async def get_message(self, timeout: float | None = None) -> Message | None:  # noqa: ASYNC109 - like queue.get
        """The oldest queued message, waiting up to ``timeout`` seconds (``None``: no limit).

        Returns ``None`` on timeout, or when the receive loop has ended and
        the queue is empty (re-raising what ended the loop, if it failed).
        Starts the receive loop if nothing has started it.
        """
        self._bind_loop()
        if self._run_task is None and not self._closing:
            self._start()
        assert self._ready is not None
        try:
            async with asyncio.timeout(timeout):
                while not self._queue and not self._ended():
                    self._ready.clear()
                    await self._ready.wait()
        except TimeoutError:
            return None
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        task = self._run_task
        if task is not None and not task.cancelled():
            failure = task.exception()
            if failure is not None:
                raise failure
        return None

    def _ended(self) -> bool:
        return self._run_task is None or self._run_task.done()

    def __aiter__(self) -> WebSocketClient:
        return self

    async def __anext__(self) -> Message:
        """The next message; stops once the loop has ended and the queue is empty."""
        message = await self.get_message()
        if message is None:
            raise StopAsyncIteration
        return message

    # -- background thread -----------------------------------------------

    def start_background(self) -> threading.Thread:
        """Run the client in a daemon thread with its own event loop; returns the thread.

        For synchronous programs: returns once the loop is running (not
        necessarily connected; the loop retries). Read the client with the
        thread-safe readers; :meth:`stop` ends it.
        """
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the client is already running in the background")
        started = threading.Event()
        thread = threading.Thread(target=self._thread_main, args=(started,), name="bixweb-client", daemon=True)
        self._thread = thread
        thread.start()
        started.wait(timeout=5.0)
        return thread

    def stop(self, timeout: float = 10.0) -> None:
        """Disconnect the background client and join its thread (call from another thread)."""
        thread, loop, stop = self._thread, self._loop, self._thread_stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"the client thread did not stop within {timeout} s")
        self._thread = None

    def _thread_main(self, started: threading.Event) -> None:
        async def main() -> None:
            self._bind_loop()
            self._thread_stop = stop = asyncio.Event()
            self._closing = False
            self._start()
            started.set()
            assert self._run_task is not None
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({self._run_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            await self.disconnect()

        try:
            asyncio.run(main())
        finally:
            self._thread_stop = None
            started.set()

    # -- the receive loop ------------------------------------------------

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._run_task is not None and not self._run_task.done():
            raise RuntimeError("the client is running in another event loop")
        self._loop, self._run_task, self._session = loop, None, None
        self._ready, self._connected, self._stop = asyncio.Event(), asyncio.Event(), asyncio.Event()

    def _start(self) -> None:
        if self._stop is not None:
            self._stop.clear()
        self._failure = None
        self._run_task = asyncio.create_task(self._run(), name="bixweb-client")
        self._run_task.add_done_callback(self._ended_with)

    def _ended_with(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._failure = task.exception()
            log.error("the receive loop stopped: %s", _describe(self._failure))

    def _backoff(self) -> Iterator[float]:
        return backoff_delays(self.reconnect_initial, self.reconnect_max, self._rng)

    async def _run(self) -> None:
        delays: Iterator[float] | None = None
        try:
            while not self._closing:
                ws = self._ws
                if ws is None or ws.closed:
                    try:
                        ws = await self._open()
                    except Exception as exc:
                        if not self.auto_reconnect or not _retryable(exc):
                            raise
                        delays = delays or self._backoff()
                        delay = backoff_with_hint(next(delays), exc, self.reconnect_max)
                        log.warning(
                            "cannot connect to %s (%s); retrying in %.2f s", self._target(), _describe(exc), delay
                        )
                        await self._sleep(delay)
                        continue
                delays = None
                try:
                    await self._read(ws)
                finally:
                    await self._lost(ws)
                if self._closing or not self.auto_reconnect:
                    break
                self._resume = self._wanted is not None
                delays = self._backoff()
                delay = next(delays)
                reason = CLOSE_REASONS.get(self.close_code or 0, "unexpected close")
                log.warning("connection closed with %s (%s); reconnecting in %.2f s", self.close_code, reason, delay)
                await self._sleep(delay)
        finally:
            await self._release()
            self._wake()

    async def _sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if :meth:`disconnect` is called."""
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stop.wait()

    def _target(self) -> str:
        return self.resume_url if self._resume else self.url

    async def _open(self) -> aiohttp.ClientWebSocketResponse[Literal[False]]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(middlewares=(read_refusal,))
        url = self._target()
        async with asyncio.timeout(self.connect_timeout):
            ws = await self._session.ws_connect(
                url,
                heartbeat=self.heartbeat,
                max_msg_size=self.max_message_size,
                decode_text=False,
                headers={"Authorization": f"Bearer {self.token}"} if self.token else None,
                ssl=self.ssl,
                compress=15 if self.compress else 0,
            )
        self._ws = ws
        self.connections += 1
        if not self._resume:
            self.view.reset()
        self._online.set()
        assert self._connected is not None
        self._connected.set()
        log.info("connected to %s", url)
        return ws

    async def _read(self, ws: aiohttp.ClientWebSocketResponse[Literal[False]]) -> None:
        async for frame in ws:
            if frame.type is aiohttp.WSMsgType.TEXT:
                await self._on_frame(frame.data)
            elif frame.type is aiohttp.WSMsgType.ERROR:
                log.warning("socket error: %s", _describe(ws.exception()))
                return
            else:
                log.debug("ignored a %s frame", frame.type.name)

    async def _lost(self, ws: aiohttp.ClientWebSocketResponse[Literal[False]]) -> None:
        if not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()
        self._ws = None
        self.close_code = ws.close_code
        self._online.clear()
        if self._connected is not None:
            self._connected.clear()
        error = ConnectionError(f"connection closed ({self.close_code})")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self.view.connection_lost()
        for task in (self._resubscriber, *self._resyncers):
            if task is not None and task is not asyncio.current_task():
                task.cancel()

    async def _release(self) -> None:
        """Close what is still open: after :meth:`disconnect` or when the loop ends."""
        ws, session = self._ws, self._session
        if ws is not None:
            await self._lost(ws)
        self._session = None
        if session is not None:
            await session.close()

    def _wake(self) -> None:
        if self._ready is not None:
            self._ready.set()

    # -- dispatch --------------------------------------------------------

    async def _on_frame(self, data: bytes) -> None:
        try:
            frame = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.warning("ignored a frame that is not JSON: %r", data[:80])
            return
        if not isinstance(frame, dict):
            log.warning("ignored a frame that is not an object: %r", data[:80])
            return
        for message in unwrap(frame):
            await self._dispatch(message)

    async def _dispatch(self, message: Message) -> None:
        received = self.view.receive(message)
        for resync in received.resyncs:
            task = asyncio.create_task(self._resync(resync), name=f"bixweb-resync-{resync.stream}")
            self._resyncers.add(task)
            task.add_done_callback(self._resyncers.discard)
        for item in received.deliver:
            await self._deliver(item)

    async def _deliver(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "welcome":
            self._on_welcome(message)
        elif kind == "ack":
            self._on_ack(message)
        elif kind == "error":
            self._answer(message.get("id"), error=error_from_message(message))
        self._enqueue(message)
        for callback in list(self.callbacks):
            try:
                result = callback(message)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("callback %r failed on a %s message", callback, kind)

    def _enqueue(self, message: Message) -> None:
        with self._lock:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
            self._queue.append(message)
        self._wake()

    def _answer(self, request_id: object, *, ack: Message | None = None, error: ProtocolError | None = None) -> None:
        future = self._pending.get(request_id) if isinstance(request_id, int) else None
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(ack or {})

    def _on_welcome(self, message: Message) -> None:
        self.welcome = message
        have = streams_of(message.get("subscriptions", {}))
        with self._lock:
            if self._wanted is None:
                self._wanted = have
            wanted = set(self._wanted)
        if self._resume:
            resumes = resume_requests(wanted - have, self.view.positions())
            log.info("resuming: %d requests", len(resumes))
            self._resubscriber = asyncio.create_task(self._resume_streams(resumes), name="bixweb-resume")
            return
        requests = subscription_requests(have, wanted)
        if requests:
            log.info("restoring subscriptions: %d requests", len(requests))
            self._resubscriber = asyncio.create_task(self._resubscribe(requests), name="bixweb-resubscribe")

    def _on_ack(self, message: Message) -> None:
        streams = {(c, s) for c in message.get("channels", ()) for s in message.get("symbols", ())}
        with self._lock:
            wanted = self._wanted if self._wanted is not None else set()
            if message.get("op") == "subscribe":
                self._wanted = wanted | streams
            else:
                self._wanted = wanted - streams
        if message.get("op") == "unsubscribe":
            self.view.forget(stream_key(c, s) for c, s in streams)
        self._answer(message.get("id"), ack=message)

    async def _resubscribe(self, requests: list[Request]) -> None:
        for op, symbols, channels in requests:
            try:
                await self._request(op, symbols, channels)
            except ProtocolError as exc:
                log.warning("could not restore %s %s x %s: %s %s", op, symbols, channels, exc.code, exc.message)
            except (ConnectionError, TimeoutError) as exc:
                log.info("restoring subscriptions interrupted: %s", _describe(exc))
                return

    async def _resume_streams(self, resumes: list[Resume]) -> None:
        """Subscribe again with ``since``, one request at a time; then set :attr:`recovered`."""
        recovered = True
        for symbols, channels, since in resumes:
            try:
                ack = await self._request("subscribe", symbols, channels, since)
            except ProtocolError as exc:
                log.warning("could not resume %s x %s: %s %s", symbols, channels, exc.code, exc.message)
                recovered = False
                continue
            except (ConnectionError, TimeoutError) as exc:
                log.info("resuming interrupted: %s", _describe(exc))
                return
            if since is None or ack.get("recovered") is not True:
                recovered = False  # an initial_data follows (or followed) instead of the missed messages
        self.recovered = recovered
        self.resumes += 1
        log.info("resumed: %s", "recovered" if recovered else "started over from snapshots")

    async def _resync(self, resync: Resync) -> None:
        """Ask again for one stream on the live connection; if that fails, reconnect and resume."""
        self.resyncs += 1
        try:
            await self._request("subscribe", [resync.symbol], [resync.channel], resync.since)
        except ConnectionError:
            return  # the reconnect resumes the stream
        except (ProtocolError, TimeoutError) as exc:
            log.warning("resync of %s failed (%s); reconnecting to resume", resync.stream, _describe(exc))
            ws = self._ws
            if ws is not None and not ws.closed:
                await ws.close(message=b"resync failed")
        finally:
            self.view.resync_finished(resync.stream)
