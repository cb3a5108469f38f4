"""What a bot client knows, as values: streams, subscriptions, backoff, the market view.

No sockets and no event loop here; :mod:`bixweb.client.websocket` drives it.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, Final, Literal

from bixweb.errors import ERROR_CODES, ProtocolError
from bixweb.model import stream_key

log = logging.getLogger("bixweb.client")

Message = dict[str, Any]
Callback = Callable[[Message], Awaitable[None] | None]
"""Called with each message; a coroutine function is awaited."""
Stream = tuple[str, str]
"""``(channel, symbol)``."""
Request = tuple[Literal["subscribe", "unsubscribe"], list[str], list[str]]
"""``(op, symbols, channels)``."""

CLOSE_REASONS: Final = {
    1000: "normal closure",
    1006: "abnormal closure",
    1008: "policy violation: too many messages",
    1009: "message too big",
    1011: "server error",
    1012: "server restart",
    4008: "slow consumer",
}
DATA_CHANNELS: Final = {"market_update": "ticker", "trade": "trades", "book": "book"}
MAX_REQUEST_SYMBOLS: Final = 200
MAX_REQUEST_CHANNELS: Final = 16


def backoff_delays(initial: float, maximum: float, rng: random.Random | None = None) -> Iterator[float]:
    """Seconds to wait before each reconnection attempt: exponential, full jitter.

    Attempt ``n`` (from 0) waits a random time in ``[0, min(maximum, initial * 2**n)]``,
    so the first waits at most ``initial`` and none more than ``maximum``; the
    jitter spreads out clients that all lost the same server. Endless.
    """
    if initial <= 0 or maximum < initial:
        raise ValueError("need 0 < initial <= maximum")
    rng = rng or random.Random()
    ceiling = initial
    while True:
        yield rng.uniform(0.0, ceiling)
        ceiling = min(maximum, ceiling * 2)


def unwrap(frame: Message) -> Iterator[Message]:
    """The messages in one frame: the inner messages of a ``batch``, in order, else the frame."""
    if frame.get("type") == "batch":
        for inner in frame.get("messages", ()):
            if isinstance(inner, dict):
                yield from unwrap(inner)
    else:
        yield frame


def message_stream(message: Mapping[str, Any]) -> str | None:
    """The stream key (``"trades:BTCUSDT"``) of a data message; ``None`` for other messages."""
    kind, symbol = message.get("type"), message.get("symbol")
    if not isinstance(symbol, str):
        return None
    if kind == "candle":
        return stream_key(f"candles_{message.get('interval')}", symbol)
    channel = DATA_CHANNELS.get(str(kind))
    return stream_key(channel, symbol) if channel else None


def streams_of(subscriptions: Mapping[str, Iterable[str]]) -> set[Stream]:
    """``(channel, symbol)`` pairs of a ``{channel: [symbols]}`` map (``welcome``, ``ack``)."""
    return {(channel, symbol) for channel, symbols in subscriptions.items() for symbol in symbols}


def subscriptions_map(streams: Iterable[Stream]) -> dict[str, list[str]]:
    """The ``{channel: [symbols]}`` map of a set of streams, sorted."""
    out: dict[str, list[str]] = {}
    for channel, symbol in sorted(streams):
        out.setdefault(channel, []).append(symbol)
    return out


def _requests(op: Literal["subscribe", "unsubscribe"], streams: set[Stream]) -> list[Request]:
    by_symbols: dict[tuple[str, ...], list[str]] = {}
    for channel, names in subscriptions_map(streams).items():
        by_symbols.setdefault(tuple(names), []).append(channel)
    out: list[Request] = []
    for symbols, channels in by_symbols.items():
        for i in range(0, len(symbols), MAX_REQUEST_SYMBOLS):
            for j in range(0, len(channels), MAX_REQUEST_CHANNELS):
                out.append((op, list(symbols[i : i + MAX_REQUEST_SYMBOLS]), channels[j : j + MAX_REQUEST_CHANNELS]))
    return out


def subscription_requests(have: set[Stream], want: set[Stream]) -> list[Request]:
    """The ``unsubscribe`` then ``subscribe`` requests that turn ``have`` into ``want``.

    Channels with the same symbols share a request (a request is a cross
    product); lists are cut to the protocol's per-request limits.
    """
    return _requests("unsubscribe", have - want) + _requests("subscribe", want - have)


def error_from_message(message: Mapping[str, Any]) -> ProtocolError:
    """The :class:`ProtocolError` for an ``error`` message."""
    code, text = str(message.get("code")), str(message.get("message", ""))
    if code not in ERROR_CODES:  # a newer server; keep its code readable
        code, text = "internal_error", f"{code}: {text}"
    request_id = message.get("id")
    path = message.get("path")
    return ProtocolError(
        code,
        text,
        request_id=request_id if isinstance(request_id, str | int) else None,
        path=path if isinstance(path, str) else None,
    )


class MarketView:
    """What a client has learnt from the messages it has seen; no I/O.

    Keeps the latest ticker per symbol and the ``seq`` reached on each stream,
    and counts gaps (a ``seq`` more than one past the last). The receive loop
    writes; any thread may read.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tickers: dict[str, Message] = {}
        self._seq: dict[str, int] = {}
        self.gaps = 0

    def new_connection(self) -> None:
        """Forget stream positions: ``seq`` is not comparable across connections."""
        with self._lock:
            self._seq.clear()

    def forget(self, keys: Iterable[str]) -> None:
        """Stop tracking streams (after an ``unsubscribe``)."""
        with self._lock:
            for key in keys:
                self._seq.pop(key, None)

    def apply(self, message: Mapping[str, Any]) -> None:
        """Take one (unwrapped) server message into account."""
        kind = message.get("type")
        with self._lock:
            if kind == "initial_data":
                self._seq.update(message.get("seq", {}))
                self._tickers.update(message.get("tickers", {}))
                return
            key = message_stream(message)
            seq = message.get("seq")
            if key is None or not isinstance(seq, int):
                return
            last = self._seq.get(key)
            if last is not None and seq <= last:
                return  # already in the state
            if last is not None and seq > last + 1:
                self.gaps += 1
                log.warning("gap on %s: seq %d after %d", key, seq, last)
            self._seq[key] = seq
            if kind == "market_update":
                self._tickers[message["symbol"]] = message["data"]

    def seq(self, key: str) -> int | None:
        """The last ``seq`` seen on stream ``key`` in this connection."""
        with self._lock:
            return self._seq.get(key)

    def ticker(self, symbol: str) -> Message | None:
        with self._lock:
            ticker = self._tickers.get(symbol)
            return dict(ticker) if ticker is not None else None

    def tickers(self) -> dict[str, Message]:
        with self._lock:
            return {symbol: dict(ticker) for symbol, ticker in self._tickers.items()}
