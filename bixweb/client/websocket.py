"""The bot client library: a client for ``GET /ws`` (protocol v1, ``docs/protocol.md``).

In an asyncio program::

    async with WebSocketClient("ws://127.0.0.1:8080/ws", symbols=["BTCUSDT"]) as client:
        await client.subscribe(["BTCUSDT"], ["trades"])
        async for message in client:  # welcome, initial_data, market_update, trade, ...
            ...

In a plain synchronous program (the old client's API, unchanged)::

    client = WebSocketClient("127.0.0.1", 8080)
    client.callbacks.append(lambda data: print(data["symbol"], data["price"]))
    client.start_background()
    client.subscribe(["BTCUSDT"], ["trades"]).result()  # from any thread
    price = client.get_latest_price("BTCUSDT")  # None until the first ticker
    client.stop()

One receive loop per client (:mod:`bixweb.client.receive`) reads, checks
(:mod:`~bixweb.client.view`), queues and calls back (:mod:`~bixweb.client.events`),
reconnects (:mod:`~bixweb.client.reconnect`) and resumes (:mod:`~bixweb.client.session`);
requests come from any thread (:mod:`~bixweb.client.bridge`). The whole story,
and the old client's API call by call: ``docs/client.md``.

This module uses aiohttp's client only: it never imports ``aiohttp.web``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import ssl as ssl_module
import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import aiohttp
import orjson

from bixweb.client.address import address, scrub
from bixweb.client.bridge import Background, Bridge, running_loop
from bixweb.client.events import Listeners
from bixweb.client.readers import Readers
from bixweb.client.receive import ReceiveLoop, Socket
from bixweb.client.reconnect import Backoff
from bixweb.client.requests import Pacer, Pending, Requests
from bixweb.client.session import Subscriptions, describe
from bixweb.client.streams import Callback, Message
from bixweb.client.view import CANDLE_HISTORY, TRADE_HISTORY, MarketView
from bixweb.errors import ProtocolError

log = logging.getLogger("bixweb.client")
T = TypeVar("T")
OTHER_LOOP = (
    "the client runs on another event loop (its background thread?); from here use its thread-safe "
    "readers, message_queue, requests' .result(), and stop()"
)


class WebSocketClient(Readers, Requests, ReceiveLoop):
    """A bixweb bot client: connects, keeps its subscriptions across reconnects, collects data.

    Where: ``WebSocketClient(host, port)`` as the old client (``ws://host:port/ws``),
    or a URL (``WebSocketClient("wss://h/ws")`` or ``url=``); with neither,
    ``$BIXWEB_URL``, else ``ws://127.0.0.1:8080/ws``. A bad host, port or URL
    raises :class:`ValueError` here. ``symbols`` and ``channels`` (lists or
    comma-separated, any case) choose the initial subscription; the server's
    default is the ticker of every symbol.

    What it calls: :attr:`callbacks` with each price update's ticker
    (``{"symbol", "price", …}``, as the old client did), :attr:`on_message`
    with every message, and :attr:`on_ticker`, :attr:`on_trade`,
    :attr:`on_book`, :attr:`on_candle`, :attr:`on_alert`, :attr:`on_status`
    with their kind (see :func:`bixweb.client.events.payloads`). Callbacks
    may be coroutine functions; they run on the client's loop (its thread in
    background mode): keep them short. Every message also goes into
    :attr:`message_queue` (``queue_size``, oldest dropped, counted in :attr:`dropped`).

    Reconnects (``auto_reconnect``): full-jitter backoff from
    ``reconnect_initial`` to ``reconnect_max`` seconds, or a fixed
    ``reconnect_delay`` (``5``: the old client); the delays start over only
    after a connection open ``healthy_after`` seconds that carried data.

    Other options: ``request_timeout`` for each request, ``connect_timeout``
    per attempt, ``heartbeat`` (seconds between client pings; ``None``: only
    answer the server's), ``max_message_size`` of a server frame,
    ``trade_history``/``candle_history`` kept per symbol, ``rng`` for
    reproducible jitter, ``token`` (sent as ``Authorization: Bearer``),
    ``ssl`` for ``wss://`` (``True``: the system's CAs, or an ``SSLContext``)
    and ``compress`` (offer permessage-deflate).
    """

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        auto_reconnect: bool = True,
        *,
        url: str | None = None,
        symbols: str | Iterable[str] | None = None,
        channels: str | Iterable[str] | None = None,
        queue_size: int = 100,
        reconnect_delay: float | None = None,
        reconnect_initial: float = 1.0,
        reconnect_max: float = 30.0,
        healthy_after: float = 10.0,
        request_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        heartbeat: float | None = 30.0,
        max_message_size: int = 64 * 1024 * 1024,
        callbacks: Iterable[Callback] = (),
        on_message: Iterable[Callback] = (),
        on_status: Iterable[Callback] = (),
        trade_history: int = TRADE_HISTORY,
        candle_history: int = CANDLE_HISTORY,
        rng: random.Random | None = None,
        token: str | None = None,
        ssl: ssl_module.SSLContext | bool = True,
        compress: bool = False,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        where = address(host, port, url, symbols_query=symbols, channels_query=channels)
        self.url, self.resume_url = where.url, where.resume_url
        self._secrets = tuple(sorted({*where.secrets, token}, key=len, reverse=True)) if token else where.secrets
        self.auto_reconnect = auto_reconnect
        self.request_timeout, self.connect_timeout = request_timeout, connect_timeout
        self.heartbeat, self.max_message_size = heartbeat, max_message_size
        self.token, self.ssl, self.compress = token, ssl, compress
        self._backoff = Backoff(
            initial=reconnect_initial,
            maximum=reconnect_max,
            fixed=reconnect_delay,
            healthy_after=healthy_after,
            rng=rng,
        )
        self.callbacks: list[Callback] = list(callbacks)
        self.on_message: list[Callback] = list(on_message)
        self.on_ticker: list[Callback] = []
        self.on_trade: list[Callback] = []
        self.on_book: list[Callback] = []
        self.on_candle: list[Callback] = []
        self.on_alert: list[Callback] = []
        self.on_status: list[Callback] = list(on_status)
        self.message_queue: queue.Queue[Message] = queue.Queue(maxsize=queue_size)
        """Every delivered message, for any thread (``message_queue.get(timeout=1)``); oldest dropped."""
        self.view = MarketView(trade_history, candle_history)
        """Positions per stream and the market state the client follows."""
        self.welcome: Message | None = None
        """The last ``welcome`` message (server version, symbols, limits)."""
        self.close_code: int | None = None
        """How the last connection ended (1012 server restart, 4008 slow consumer, ...)."""
        self.connections = 0
        """Sockets opened so far; above 1 after a reconnect."""
        self.dropped = 0
        """Messages dropped from the full queue."""
        self._listeners = Listeners(self)
        self._pending = Pending()
        self._subs = Subscriptions(
            self.view, lambda m: self._ask(m, restoring=True), self._close_socket, self._on_resumed, self._restored
        )
        self._background = Background()
        self._bridge = Bridge()
        self._pacer = Pacer()
        self._online = threading.Event()
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None
        self._connected: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: Socket | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

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
        task = self._run_task
        assert task is not None
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.cancelled() and self._closing:
            return  # disconnect() had to cut a loop that hung (a peer that never answers the close)
        task.result()

    async def disconnect(self) -> None:
        """Close the socket (1000) and stop the receive loop; no reconnect follows.

        Subscriptions are kept: a later :meth:`connect` restores them, starting
        over from fresh snapshots (it does not resume).
        """
        if self._loop is not running_loop() and (self._ended() or self._loop is None or self._loop.is_closed()):
            self._closing = True  # nothing runs: nothing to close on a loop that may be gone
            return
        self._bind_loop()
        self._closing = True
        self._subs.resuming = False
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

    async def _ask(self, message: Message, *, restoring: bool = False) -> Message:
        """Send ``message`` with a new ``id``; the answer that echoes it (raises an ``error`` answer).

        ``request_timeout`` bounds it all: between connections (just started,
        reconnecting) it waits for the next one, and it keeps under the
        server's rate limit (:class:`~bixweb.client.requests.Pacer`). The
        requests that restore the subscriptions (``restoring``) go first, on
        the new socket; the user's wait until they are answered.
        """
        try:
            return await self._ask_within(message, restoring)
        except TimeoutError:
            what = message.get("type")
            raise TimeoutError(f"{what}: no connection, or no answer, within {self.request_timeout:g} s") from None

    async def _ask_within(self, message: Message, restoring: bool) -> Message:
        async with asyncio.timeout(self.request_timeout) as deadline:
            ws = await self._socket(restoring)
            delay = self._pacer.delay(time.monotonic())
            if delay > 0:
                when = deadline.when()
                if when is not None and asyncio.get_running_loop().time() + delay > when:
                    self._pacer.give_back()
                    limit = f"{self._pacer.burst:g} a second"
                    raise ProtocolError("rate_limited", f"more requests than the server takes ({limit}): slow down")
                try:
                    await asyncio.sleep(delay)
                except asyncio.CancelledError:
                    self._pacer.give_back()  # never sent: the slot is free again
                    raise
                ws = await self._socket(restoring)
            request_id, future = self._pending.open(str(message.get("type")))
            try:
                await ws.send_frame(orjson.dumps({**message, "id": request_id}), aiohttp.WSMsgType.TEXT)
                return await future
            finally:
                self._pending.close(request_id)

    async def _socket(self, restoring: bool = False) -> Socket:
        """The open socket, waiting (within the request's deadline) while the receive loop reconnects
        and restores the subscriptions."""
        while True:
            ws, task, connected = self._ws, self._run_task, self._connected
            if ws is not None and not ws.closed and connected is not None and (restoring or connected.is_set()):
                return ws
            if task is None or task.done() or connected is None or self._closing:
                raise ConnectionError("not connected (the client is not running)")
            if connected.is_set():  # the socket just closed; the loop has not seen it yet
                await asyncio.sleep(0.01)
                continue
            waiter = asyncio.ensure_future(connected.wait())
            try:
                await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    # -- background thread -----------------------------------------------

    def start_background(self) -> threading.Thread:
        """Run the client in a daemon thread with its own event loop; returns the thread.

        For synchronous programs: returns once the loop is running (not
        necessarily connected; the loop retries). Read the client with the
        thread-safe readers, make requests with ``.result()``; :meth:`stop` ends it.
        """

        async def main(started: Callable[[], None], stop: asyncio.Event) -> None:
            try:
                self._bind_loop()
                self._closing = False
                self._start()
                started()
                assert self._run_task is not None
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({self._run_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                await self.disconnect()
            finally:
                await self._bridge.close()  # no request from another thread waits out its timeout

        if self._run_task is not None and not self._run_task.done():
            raise RuntimeError("the client is already running (in the background, or on an event loop)")
        return self._background.start(main)

    def stop(self, timeout: float = 10.0) -> None:
        """Disconnect the background client and join its thread, waiting up to ``timeout`` seconds.

        Called on the client's own thread (in a callback), it asks the client
        to stop and returns at once: the thread ends after the callback returns.
        A client running on the program's loop (no background thread) is
        disconnected the same way: at once from another thread, or soon from its loop.
        """
        if self._background.thread is not None:
            self._background.stop(timeout)
            return
        loop = self._loop
        if loop is None or loop.is_closed() or self._ended():
            return
        if running_loop() is loop:
            loop.create_task(self.disconnect(), name="bixweb-stop")
        else:
            asyncio.run_coroutine_threadsafe(self.disconnect(), loop).result(timeout)

    # -- the receive loop ------------------------------------------------

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if not self._ended() or (self._background.running() and not self._background.on_own_thread()):
            raise RuntimeError(OTHER_LOOP)
        self._loop, self._run_task, self._session = loop, None, None
        self._ready, self._connected, self._stop = asyncio.Event(), asyncio.Event(), asyncio.Event()

    def _start(self) -> None:
        if self._stop is not None:
            self._stop.clear()
        self._failure = None
        self._backoff.reset()
        self._bridge.open = True
        self._run_task = asyncio.create_task(self._run(), name="bixweb-client")
        self._run_task.add_done_callback(self._ended_with)

    def _ended_with(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._failure = task.exception()
            log.error("the receive loop stopped: %s", scrub(describe(self._failure), self._secrets))
