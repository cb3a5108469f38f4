"""Protocol v1 of the bot socket: message builders, encoding, validation.

No asyncio here: builders take values and return ``dict`` messages, the
encoder returns bytes, the decoder turns a client frame into a
:data:`ClientMessage` or raises :class:`~bixweb.errors.ProtocolError`.
The JSON Schemas (``bixweb/schemas``) are the contract; validators are built
once per process (:func:`schemas`).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from bixweb.alerts import Alert, Rule
from bixweb.annotations import Annotation
from bixweb.errors import ProtocolError
from bixweb.model import Book, Candle, Interval, Ticker, Trade, canonical_symbol
from bixweb.validation import (
    MAX_NESTING,
    MAX_VALUES,
    Direction,
    SchemaSet,
    count_values,
    nesting,
    schemas,
)

__all__ = ["Direction", "SchemaSet", "schemas"]

Message = dict[str, Any]

encode = orjson.dumps
"""Encode a message to the bytes of one text frame."""


def batch_frame(parts: Sequence[bytes]) -> bytes:
    """One frame for several already-encoded messages: bare if only one."""
    if len(parts) == 1:
        return parts[0]
    return b'{"type":"batch","messages":[' + b",".join(parts) + b"]}"


# -- data objects -----------------------------------------------------------


def ticker_data(t: Ticker) -> Message:
    return {
        "price": t.price,
        "bid": t.bid,
        "ask": t.ask,
        "open": t.open,
        "high": t.high,
        "low": t.low,
        "volume": t.volume,
        "quote_volume": t.quote_volume,
        "change": round(t.change, 8),
        "change_pct": round(t.change_pct, 4),
        "time": t.time,
    }


def trade_data(t: Trade) -> Message:
    return {"id": t.id, "price": t.price, "qty": t.qty, "side": t.side, "time": t.time}


BOOK_CHECKSUM_LEVELS: Final = 10


def _checksum_number(value: float) -> str:
    text = f"{value:.8f}".rstrip("0")
    return text.removesuffix(".")


def book_checksum_text(bids: Sequence[Sequence[float]], asks: Sequence[Sequence[float]]) -> str:
    """The string a book's checksum is computed over (see ``docs/protocol.md``).

    The top 10 bids, best first, then the top 10 asks, best first; each level
    as ``price:qty`` with both numbers written with 8 decimals and trailing
    zeros (then a trailing point) removed; levels joined by ``,``, the two
    sides by ``|``. ``[[95012.4, 0.84]], [[95012.6, 1.5]]`` → ``95012.4:0.84|95012.6:1.5``.
    """

    def side(levels: Sequence[Sequence[float]]) -> str:
        return ",".join(
            f"{_checksum_number(price)}:{_checksum_number(qty)}" for price, qty in levels[:BOOK_CHECKSUM_LEVELS]
        )

    return f"{side(bids)}|{side(asks)}"


def book_checksum(bids: Sequence[Sequence[float]], asks: Sequence[Sequence[float]]) -> int:
    """CRC-32 (IEEE, as zlib computes it) of :func:`book_checksum_text`, unsigned."""
    return zlib.crc32(book_checksum_text(bids, asks).encode("ascii"))


def book_data(b: Book) -> Message:
    return {
        "bids": [list(level) for level in b.bids],
        "asks": [list(level) for level in b.asks],
        "time": b.time,
        "checksum": book_checksum(b.bids, b.asks),
    }


def candle_data(c: Candle) -> Message:
    return {
        "start": c.start,
        "open": c.open,
        "high": c.high,
        "low": c.low,
        "close": c.close,
        "volume": c.volume,
        "closed": c.closed,
    }


def alert_data(a: Alert) -> Message:
    return {
        "id": a.id,
        "rule_id": a.rule_id,
        "symbol": a.symbol,
        "condition": a.condition,
        "level": a.level,
        "pct": a.pct,
        "window_s": a.window_s,
        "direction": a.direction,
        "change_pct": None if a.change_pct is None else round(a.change_pct, 4),
        "reference": a.reference,
        "note": a.note,
        "owner": a.owner,
        "price": a.price,
        "time": a.time_ms,
        "ticker_seq": a.seq,
    }


def rule_data(r: Rule) -> Message:
    return {
        "id": r.id,
        "symbol": r.symbol,
        "condition": r.condition,
        "level": r.level,
        "pct": r.pct,
        "window_s": r.window_s,
        "direction": r.direction,
        "note": r.note,
        "repeat": r.repeat,
        "owner": r.owner,
        "created": r.created_ms,
    }


def annotation_data(a: Annotation) -> Message:
    return {
        "id": a.id,
        "symbol": a.symbol,
        "price": a.price,
        "label": a.label,
        "owner": a.owner,
        "created": a.created_ms,
    }


# -- server messages --------------------------------------------------------


def alert_message(a: Alert, seq: int, now_ms: int, epoch: int) -> Message:
    return {"type": "alert", "ts": now_ms, "epoch": epoch, "symbol": a.symbol, "seq": seq, "data": alert_data(a)}


def alert_rules_message(
    now_ms: int,
    op: str,
    rules: Iterable[Rule],
    *,
    history: Iterable[Alert] | None = None,
    request_id: str | int | None = None,
) -> Message:
    message: Message = {"type": "alert_rules", "ts": now_ms, "op": op, "rules": [rule_data(r) for r in rules]}
    if history is not None:
        message["history"] = [alert_data(a) for a in history]
    return _with_id(message, request_id)


def annotations_message(
    now_ms: int, op: str, annotations: Iterable[Annotation], *, request_id: str | int | None = None
) -> Message:
    message: Message = {
        "type": "annotations",
        "ts": now_ms,
        "op": op,
        "annotations": [annotation_data(a) for a in annotations],
    }
    return _with_id(message, request_id)


def ticker_message(t: Ticker, seq: int, now_ms: int, epoch: int) -> Message:
    return {
        "type": "market_update",
        "ts": now_ms,
        "epoch": epoch,
        "symbol": t.symbol,
        "seq": seq,
        "data": ticker_data(t),
    }


def trade_message(t: Trade, seq: int, now_ms: int, epoch: int) -> Message:
    return {"type": "trade", "ts": now_ms, "epoch": epoch, "symbol": t.symbol, "seq": seq, "data": trade_data(t)}


def book_message(b: Book, seq: int, now_ms: int, epoch: int) -> Message:
    return {"type": "book", "ts": now_ms, "epoch": epoch, "symbol": b.symbol, "seq": seq, "data": book_data(b)}


def candle_message(symbol: str, interval: Interval, c: Candle, seq: int, now_ms: int, epoch: int) -> Message:
    return {
        "type": "candle",
        "ts": now_ms,
        "epoch": epoch,
        "symbol": symbol,
        "seq": seq,
        "interval": interval.label,
        "data": candle_data(c),
    }


def initial_data_message(
    now_ms: int,
    epoch: int,
    seq: Mapping[str, int],
    *,
    tickers: Mapping[str, Message],
    trades: Mapping[str, list[Message]],
    books: Mapping[str, Message],
    candles: Mapping[str, Mapping[str, list[Message]]],
    recovered: bool | None = None,
) -> Message:
    message: Message = {"type": "initial_data", "ts": now_ms, "epoch": epoch, "seq": dict(seq)}
    if recovered is not None:
        message["recovered"] = recovered
    for name, part in (("tickers", tickers), ("trades", trades), ("books", books), ("candles", candles)):
        if part:
            message[name] = dict(part)
    return message


def subscriptions_data(streams: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """``{channel: [symbols]}`` for a set of ``(channel, symbol)`` pairs."""
    out: dict[str, list[str]] = {}
    for channel, symbol in sorted(streams):
        out.setdefault(channel, []).append(symbol)
    return out


def welcome_message(
    now_ms: int,
    *,
    epoch: int,
    server: str,
    session: str,
    symbols: Sequence[str],
    channels: Sequence[str],
    heartbeat_s: float,
    status_interval_s: float,
    limits: Mapping[str, int | float],
    subscriptions: Iterable[tuple[str, str]],
) -> Message:
    return {
        "type": "welcome",
        "ts": now_ms,
        "protocol": 1,
        "epoch": epoch,
        "server": server,
        "session": session,
        "symbols": list(symbols),
        "channels": list(channels),
        "intervals": [i.label for i in Interval],
        "heartbeat_s": heartbeat_s,
        "status_interval_s": status_interval_s,
        "limits": dict(limits),
        "subscriptions": subscriptions_data(subscriptions),
    }


def status_message(now_ms: int, *, feed: str, clients: int, uptime_s: float, last_event_ms: int | None) -> Message:
    return {
        "type": "status",
        "ts": now_ms,
        "feed": feed,
        "clients": clients,
        "uptime_s": round(uptime_s, 3),
        "last_event_ms": last_event_ms,
    }


def _with_id(message: Message, request_id: str | int | None) -> Message:
    if request_id is not None:
        message["id"] = request_id
    return message


def pong_message(now_ms: int, request_id: str | int | None = None) -> Message:
    return _with_id({"type": "pong", "ts": now_ms}, request_id)


def ack_message(
    now_ms: int,
    *,
    op: str,
    symbols: Sequence[str],
    channels: Sequence[str],
    subscriptions: Iterable[tuple[str, str]],
    request_id: str | int | None = None,
    recovered: bool | None = None,
) -> Message:
    message: Message = {
        "type": "ack",
        "ts": now_ms,
        "op": op,
        "symbols": list(symbols),
        "channels": list(channels),
        "subscriptions": subscriptions_data(subscriptions),
    }
    if recovered is not None:
        message["recovered"] = recovered
    return _with_id(message, request_id)


def error_message(now_ms: int, error: ProtocolError) -> Message:
    message: Message = {"type": "error", "ts": now_ms, "code": error.code, "message": error.message}
    if error.path is not None:
        message["path"] = error.path
    return _with_id(message, error.request_id)


# -- client messages --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Since:
    """Where a resuming client stands: the epoch it saw and its last seq per stream."""

    epoch: int
    seq: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Subscribe:
    symbols: tuple[str, ...]
    channels: tuple[str, ...]
    id: str | int | None = None
    since: Since | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    symbols: tuple[str, ...]
    channels: tuple[str, ...]
    id: str | int | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    id: str | int | None = None


@dataclass(frozen=True, slots=True)
class DeskRequest:
    """An alert or annotation request (``alert_create``, ``annotation_add``, …), schema-valid; its
    values are checked by :func:`bixweb.alerts.rule_from_request` and friends."""

    kind: str
    fields: Mapping[str, Any]
    id: str | int | None = None


DESK_TYPES: Final = frozenset(
    {"alert_create", "alert_delete", "alert_list", "annotation_add", "annotation_remove", "annotation_list"}
)

ClientMessage = Subscribe | Unsubscribe | Ping | DeskRequest


def _request_id(obj: Mapping[str, Any]) -> str | int | None:
    value = obj.get("id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, str) and len(value) <= 64):
        return value
    return None


def parse_json_object(frame: str | bytes) -> dict[str, Any]:
    """One JSON object, or :class:`ProtocolError` ``invalid_json`` / ``invalid_message``.

    Its size in values is bounded before it is parsed
    (:func:`~bixweb.validation.count_values`), its nesting before it is
    validated, so a hostile frame costs about what its bytes cost to scan.
    """
    if isinstance(frame, bytes):
        try:
            frame = frame.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("invalid_json", "the frame is not valid JSON") from None
    if count_values(frame) > MAX_VALUES:
        raise ProtocolError("invalid_message", f"a message holds at most {MAX_VALUES:,} values", path="$")
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise ProtocolError("invalid_json", "the frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("invalid_message", "a message is a JSON object", path="$")
    # a value nests no deeper than it has lists and objects: most frames hold a handful
    if frame.count("[") + frame.count("{") > MAX_NESTING and nesting(obj) > MAX_NESTING:
        raise ProtocolError(
            "invalid_message",
            f"a message nests at most {MAX_NESTING} levels deep",
            request_id=_request_id(obj),
            path="$",
        )
    return obj


def parse_client_message(frame: str | bytes) -> ClientMessage:
    """Decode and validate one client frame.

    Raises :class:`ProtocolError` with code ``invalid_json``,
    ``invalid_message`` (with the failing JSON ``path``) or ``unknown_type``.
    Whether symbols and channels exist is for the caller to check. Symbols,
    which the schemas take in either case, come out in upper case (``symbols``,
    a desk request's ``symbol``). The keys of ``since.seq`` are stream keys as
    the server sent them, upper case only: folding 1,000 of them would cost
    about a millisecond, the whole CPU budget of the largest valid message.
    """
    obj = parse_json_object(frame)
    request_id = _request_id(obj)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("invalid_message", "a message needs a string 'type'", request_id=request_id, path="$.type")
    if kind not in schemas().validators["client"]:
        raise ProtocolError("unknown_type", f"unknown message type {kind[:32]!r}", request_id=request_id, path="$.type")
    error = schemas().first_error("client", kind, obj)
    if error is not None:
        raise ProtocolError("invalid_message", error[1], request_id=request_id, path=error[0])
    if kind == "ping":
        return Ping(request_id)
    if kind in DESK_TYPES:
        symbol = obj.get("symbol")
        return DeskRequest(kind, obj if symbol is None else {**obj, "symbol": canonical_symbol(symbol)}, request_id)
    symbols, channels = tuple(map(canonical_symbol, obj["symbols"])), tuple(obj["channels"])
    if kind == "subscribe":
        since = obj.get("since")
        return Subscribe(
            symbols,
            channels,
            request_id,
            Since(since["epoch"], dict(since["seq"])) if since is not None else None,
        )
    return Unsubscribe(symbols, channels, request_id)


def resolve_streams(
    symbols: Sequence[str],
    channels: Sequence[str],
    known_symbols: Sequence[str],
    known_channels: Sequence[str],
    *,
    request_id: str | int | None = None,
) -> list[tuple[str, str]]:
    """``(channel, symbol)`` pairs for a request; ``"*"`` means every known symbol.

    Raises ``unknown_symbol`` or ``unknown_channel`` naming the first bad
    entry's path, so a request is taken whole or not at all.
    """
    known = set(known_symbols)
    for n, channel in enumerate(channels):
        if channel not in known_channels:
            raise ProtocolError(
                "unknown_channel",
                f"unknown channel {channel[:32]!r}; channels are {', '.join(known_channels)}",
                request_id=request_id,
                path=f"$.channels[{n}]",
            )
    chosen: dict[str, None] = {}
    every = False
    for n, symbol in enumerate(symbols):
        if symbol == "*":
            every = True  # taken once below: 200 stars must not cost 200 copies of the symbol list
        elif symbol in known:
            chosen[symbol] = None
        else:
            raise ProtocolError(
                "unknown_symbol",
                f"unknown symbol {symbol[:32]!r}",
                request_id=request_id,
                path=f"$.symbols[{n}]",
            )
    if every:
        chosen = dict.fromkeys(known_symbols)
    return [(channel, symbol) for channel in dict.fromkeys(channels) for symbol in chosen]
