"""A bot client's helpers, as values: streams, subscription and resume requests, backoff, errors.

No sockets and no event loop here; :mod:`bixweb.client.websocket` drives them
(and :mod:`bixweb.client.view` keeps what the client has learnt).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, Final, Literal

from bixweb.errors import ERROR_CODES, ProtocolError
from bixweb.model import stream_key
from bixweb.protocol import Since

Message = dict[str, Any]
Callback = Callable[[Message], Awaitable[None] | None]
"""Called with each message; a coroutine function is awaited."""
Stream = tuple[str, str]
"""``(channel, symbol)``."""
Request = tuple[Literal["subscribe", "unsubscribe"], list[str], list[str]]
"""``(op, symbols, channels)``."""
Resume = tuple[list[str], list[str], Since | None]
"""``(symbols, channels, since)`` of a ``subscribe`` that resumes; no ``since``: start over."""

CLOSE_REASONS: Final = {
    1000: "normal closure",
    1006: "abnormal closure",
    1008: "policy violation: too many messages",
    1009: "message too big",
    1011: "server error",
    1012: "server restart",
    4008: "slow consumer",
}
DATA_CHANNELS: Final = {"market_update": "ticker", "trade": "trades", "book": "book", "alert": "alerts"}
MAX_REQUEST_SYMBOLS: Final = 200
MAX_REQUEST_CHANNELS: Final = 16
MAX_SINCE_STREAMS: Final = 1000


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
    """The messages in one frame: the inner messages of a ``batch``, in order, else the frame.

    A batch never holds a batch (``docs/protocol.md``); one that does is left
    out rather than followed down, however deep a broken server nests them.
    """
    if frame.get("type") != "batch":
        yield frame
        return
    messages = frame.get("messages")
    for inner in messages if isinstance(messages, list) else ():
        if isinstance(inner, dict) and inner.get("type") != "batch":
            yield inner


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


def _requests(
    op: Literal["subscribe", "unsubscribe"], streams: set[Stream], max_streams: int | None = None
) -> list[Request]:
    """Requests for ``streams``: channels that share their symbols share a request, cut to the limits."""
    by_symbols: dict[tuple[str, ...], list[str]] = {}
    for channel, names in subscriptions_map(streams).items():
        by_symbols.setdefault(tuple(names), []).append(channel)
    out: list[Request] = []
    for symbols, channels in by_symbols.items():
        for j in range(0, len(channels), MAX_REQUEST_CHANNELS):
            some_channels = channels[j : j + MAX_REQUEST_CHANNELS]
            step = MAX_REQUEST_SYMBOLS
            if max_streams is not None:
                step = max(1, min(step, max_streams // len(some_channels)))
            for i in range(0, len(symbols), step):
                out.append((op, list(symbols[i : i + step]), some_channels))
    return out


def subscription_requests(have: set[Stream], want: set[Stream]) -> list[Request]:
    """The ``unsubscribe`` then ``subscribe`` requests that turn ``have`` into ``want``.

    Channels with the same symbols share a request (a request is a cross
    product); lists are cut to the protocol's per-request limits.
    """
    return _requests("unsubscribe", have - want) + _requests("subscribe", want - have)


def resume_requests(wanted: set[Stream], positions: Mapping[str, tuple[int, int]]) -> list[Resume]:
    """The ``subscribe`` requests that resume ``wanted`` on a connection that has no subscription.

    ``positions`` maps a stream key to the ``(epoch, seq)`` the client has
    reached on it. Streams with a position are grouped by epoch, then as in
    :func:`subscription_requests`; each request carries ``since`` with the
    seq of every stream it names, because the server resumes a request only
    if it knows where the client stands on all of them (and at most
    :data:`MAX_SINCE_STREAMS` of them). Streams without a position come last,
    with no ``since``: they start over from a fresh ``initial_data``.
    """
    by_epoch: dict[int | None, set[Stream]] = {}
    for channel, symbol in wanted:
        position = positions.get(stream_key(channel, symbol))
        by_epoch.setdefault(position[0] if position is not None else None, set()).add((channel, symbol))
    out: list[Resume] = []
    for epoch in sorted(by_epoch, key=lambda e: (e is None, e or 0)):
        if epoch is None:
            out += [(symbols, channels, None) for _, symbols, channels in _requests("subscribe", by_epoch[epoch])]
            continue
        for _, symbols, channels in _requests("subscribe", by_epoch[epoch], MAX_SINCE_STREAMS):
            seq = {key: positions[key][1] for key in (stream_key(c, s) for c in channels for s in symbols)}
            out.append((symbols, channels, Since(epoch, seq)))
    return out


def since_data(since: Since) -> dict[str, Any]:
    """The ``since`` object of a ``subscribe`` message."""
    return {"epoch": since.epoch, "seq": dict(since.seq)}


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
