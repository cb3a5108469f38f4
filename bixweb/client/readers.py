"""What any thread may read from a client: market state, counters, and the message queue.

A mixin of :class:`~bixweb.client.WebSocketClient`: everything here only
reads state that the receive loop writes under locks (the
:class:`~bixweb.client.view.MarketView`'s, the queue's), so a Streamlit
script or any other thread can call it while the client runs in the
background. ``get_message`` and ``async for`` are the exception: they wait
on the client's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from typing import Self

from bixweb.client.events import Listeners
from bixweb.client.session import Subscriptions
from bixweb.client.streams import Message
from bixweb.client.view import MarketView


class Readers:
    """The thread-safe readers of a client, and its queue."""

    view: MarketView
    message_queue: queue.Queue[Message]
    dropped: int
    _subs: Subscriptions
    _listeners: Listeners
    _online: threading.Event
    _failure: BaseException | None
    _closing: bool
    _ready: asyncio.Event | None
    _run_task: asyncio.Task[None] | None

    def _bind_loop(self) -> None:
        raise NotImplementedError

    def _start(self) -> None:
        raise NotImplementedError

    # -- counters --------------------------------------------------------

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
    def resumes(self) -> int:
        """Resumes completed (every subscription requested again after an unasked-for close)."""
        return self._subs.resumes

    @property
    def recovered(self) -> bool | None:
        """How the last resume went: True if the server replayed everything missed, False if any
        request got a fresh ``initial_data`` instead; None before the first resume."""
        return self._subs.recovered

    @property
    def resyncs(self) -> int:
        """Single-stream resyncs sent on a live connection (a trades gap, a bad book checksum)."""
        return self._subs.resyncs

    @property
    def callback_errors(self) -> int:
        """Callback calls that raised (logged once, then at most once a minute per callback)."""
        return self._listeners.errors

    @property
    def failure(self) -> BaseException | None:
        """What stopped the receive loop, if an error did (a :class:`HandshakeRefused` that is not
        ``transient``, say); ``None`` while it runs, or if it ended by :meth:`disconnect`."""
        return self._failure

    @property
    def subscriptions(self) -> dict[str, list[str]]:
        """What the client is subscribed to, as ``{channel: [symbols]}``; restored after a reconnect."""
        return self._subs.as_map()

    def is_connected(self) -> bool:
        """Whether a socket is open now."""
        return self._online.is_set()

    # -- the market ------------------------------------------------------

    def get_latest_price(self, symbol: str) -> float | None:
        """The last price of ``symbol`` from its ticker, or ``None`` before the first one."""
        ticker = self.view.ticker(symbol)
        return float(ticker["price"]) if ticker is not None else None

    def get_latest_data(self) -> dict[str, Message]:
        """The latest ticker of every symbol seen: ``{symbol: {"symbol", "price", "bid", …}}``."""
        return self.view.tickers()

    @property
    def latest_data(self) -> dict[str, Message]:
        """The old client's attribute: :meth:`get_latest_data`."""
        return self.view.tickers()

    def get_ticker(self, symbol: str) -> Message | None:
        """The latest ticker of ``symbol`` (``{"symbol", "price", "change_pct", …}``), or ``None``."""
        return self.view.ticker(symbol)

    def get_book(self, symbol: str) -> Message | None:
        """The latest book of ``symbol`` whose checksum matched, or ``None`` before the first one.

        A copy of the ``data`` of a ``book`` message (or of an ``initial_data``
        book): ``bids`` and ``asks`` as ``[price, qty]`` lists, best first, ``time``, ``checksum``.
        """
        return self.view.book(symbol)

    def get_trades(self, symbol: str, n: int = 100) -> list[Message]:
        """The last ``n`` trades of ``symbol`` (oldest first), while subscribed to its ``trades``."""
        return self.view.trades(symbol, n)

    def get_candles(self, symbol: str, interval: str = "1m") -> list[Message]:
        """The candles of ``symbol`` and ``interval`` (oldest first; the last may still be forming),
        while subscribed to ``candles_<interval>``."""
        return self.view.candles(symbol, interval)

    # -- the queue -------------------------------------------------------

    @property
    def queue(self) -> list[Message]:
        """A copy of the queued messages, oldest first."""
        with self.message_queue.mutex:
            return list(self.message_queue.queue)

    def _enqueue(self, message: Message) -> None:
        while True:
            try:
                self.message_queue.put_nowait(message)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self.message_queue.get_nowait()
                    self.dropped += 1
        self._wake()

    def _wake(self) -> None:
        if self._ready is not None:
            self._ready.set()

    async def get_message(self, timeout: float | None = None) -> Message | None:  # noqa: ASYNC109 - like queue.get
        """The oldest queued message, waiting up to ``timeout`` seconds (``None``: no limit).

        Returns ``None`` on timeout, or when the receive loop has ended and
        the queue is empty (re-raising what ended the loop, if it failed).
        Starts the receive loop if nothing has started it. For other threads:
        :attr:`message_queue`.
        """
        self._bind_loop()
        if self._run_task is None and not self._closing:
            self._start()
        assert self._ready is not None
        try:
            async with asyncio.timeout(timeout):
                while self.message_queue.empty() and not self._ended():
                    self._ready.clear()
                    await self._ready.wait()
        except TimeoutError:
            return None
        with contextlib.suppress(queue.Empty):
            return self.message_queue.get_nowait()
        task = self._run_task
        if task is not None and not task.cancelled():
            failure = task.exception()
            if failure is not None:
                raise failure
        return None

    def _ended(self) -> bool:
        return self._run_task is None or self._run_task.done()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        """The next message; stops once the loop has ended and the queue is empty."""
        message = await self.get_message()
        if message is None:
            raise StopAsyncIteration
        return message
