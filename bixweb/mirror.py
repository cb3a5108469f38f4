"""The market as a web process sees it when another process owns it (``--broker redis://``).

The feed process numbers and encodes every message once; a web process
takes those messages, fans them out unchanged, and keeps a :class:`Mirror`
of the state they describe, so it can answer snapshots, resumes and
dashboards exactly as the owning process would. Nothing here does I/O: a
:class:`Seed` (the state the feed process keeps in the broker) comes in,
messages come in, and the mirror says what clients missed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from bixweb import protocol
from bixweb.market import Market, Message
from bixweb.model import Book, Candle, Interval, TickerStats, Trade, stream_key

Part = tuple[str, bytes, bool]


@dataclass(frozen=True, slots=True)
class Seed:
    """The state the owning process keeps where every web process can read it.

    ``latest``: the last message of each state stream (ticker, book, forming
    candle); ``recent``: the last messages of each trades stream; ``closed``:
    per candle stream, its closed candles (data objects), oldest first.
    Messages are kept as the bytes that were sent.
    """

    epoch: int
    published: int
    """How many publications the owner had made when this state was taken."""
    latest: Mapping[str, bytes] = field(default_factory=dict)
    recent: Mapping[str, Sequence[bytes]] = field(default_factory=dict)
    closed: Mapping[str, Sequence[bytes]] = field(default_factory=dict)


def seed_of(market: Market, published: int) -> Seed:
    """The whole state of ``market``, as the owner writes it to the broker."""
    closed: dict[str, list[bytes]] = {}
    for symbol, state in market.states.items():
        for interval in Interval:
            candles = list(state.closed[interval])[-market.history_points :]
            if candles:
                closed[stream_key(interval.channel, symbol)] = [orjson.dumps(protocol.candle_data(c)) for c in candles]
    return Seed(
        epoch=market.epoch,
        published=published,
        latest={stream: orjson.dumps(message) for stream, message in market.latest.items()},
        recent={stream: [orjson.dumps(m) for m in messages] for stream, messages in market.recent.items()},
        closed=closed,
    )


def _candle(stored: Mapping[str, Any]) -> Candle:
    """A candle from its data object, or from a whole candle message."""
    data = stored.get("data", stored)
    return Candle(
        int(data["start"]),
        float(data["open"]),
        float(data["high"]),
        float(data["low"]),
        float(data["close"]),
        float(data["volume"]),
        bool(data["closed"]),
    )


class Mirror(Market):
    """A :class:`Market` fed with published messages instead of feed events.

    ``seq``, ``latest`` and ``recent`` hold exactly what the owner sent, so
    :meth:`snapshot` and :meth:`replay` answer as the owner would.
    """

    def __init__(self, symbols: Iterable[str], **options: Any) -> None:
        super().__init__(symbols, **options)
        self._options = {k: v for k, v in options.items() if k != "epoch"}
        self.published = 0
        """Publications absorbed so far (the owner's count): a jump means some were lost."""
        self.seeded = False

    def absorb(self, messages: Iterable[tuple[str, Message]], now_ms: int) -> None:
        """Take published ``(stream, message)`` pairs, in order."""
        for stream, message in messages:
            self._take(stream, message)
        self.last_event_ms = now_ms

    def _take(self, stream: str, message: Message) -> None:
        symbol = message.get("symbol")
        state = self.states.get(symbol) if isinstance(symbol, str) else None
        if state is None:
            return
        self.seq[stream] = int(message["seq"])
        data = message["data"]
        kind = message["type"]
        if kind == "alert":  # every one counts, like trades; the desk keeps the history
            self._recent(stream, message)
            return
        if kind == "trade":
            trade = Trade(
                symbol=state.symbol,
                id=int(data["id"]),
                price=float(data["price"]),
                qty=float(data["qty"]),
                side=data["side"],
                time=int(data["time"]),
            )
            state.trades.append(trade)
            state.set_price(trade.price)
            state.time = max(state.time, trade.time)
            self._recent(stream, message)
            return
        self.latest[stream] = message
        if kind == "market_update":
            state.add_stats(
                TickerStats(
                    symbol=state.symbol,
                    price=float(data["price"]),
                    bid=float(data["bid"]),
                    ask=float(data["ask"]),
                    open=float(data["open"]),
                    high=float(data["high"]),
                    low=float(data["low"]),
                    volume=float(data["volume"]),
                    quote_volume=float(data["quote_volume"]),
                    time=int(data["time"]),
                )
            )
        elif kind == "book":
            state.book = Book(
                state.symbol,
                tuple((float(p), float(q)) for p, q in data["bids"]),
                tuple((float(p), float(q)) for p, q in data["asks"]),
                int(data["time"]),
            )
        elif kind == "candle":
            self._set_candle(
                state.closed[Interval.from_label(message["interval"])],
                state.forming,
                Interval.from_label(message["interval"]),
                _candle(data),
            )

    def _recent(self, stream: str, message: Message) -> None:
        recent = self.recent.get(stream)
        if recent is None:
            recent = self.recent[stream] = deque(maxlen=self.replay_depth)
        recent.append(message)

    @staticmethod
    def _set_candle(
        closed: deque[Candle], forming: dict[Interval, Candle | None], interval: Interval, candle: Candle
    ) -> None:
        if not candle.closed:
            forming[interval] = candle
            return
        if closed and closed[-1].start == candle.start:
            closed[-1] = candle
        elif not closed or closed[-1].start < candle.start:
            closed.append(candle)
        current = forming[interval]
        if current is not None and current.start <= candle.start:
            forming[interval] = None

    def load(self, seed: Seed, now_ms: int) -> list[Part]:
        """Start over from ``seed``; return what subscribers missed since this mirror's last state.

        Within the same epoch that is every trade (and alert) after the seq a
        stream was at, and the latest message of every state stream that moved
        on: state first, then trades by seq. On a new epoch it is all the seed
        holds of it (the owner restarted: its first trades must not be lost
        to clients already connected). A first load returns nothing.
        """
        same_epoch = self.seeded and seed.epoch == self.epoch
        catch_up = self.seeded  # a first load has no subscribers to catch up
        before = dict(self.seq) if same_epoch else {}
        fresh = Mirror(self.symbols, **self._options, epoch=seed.epoch)
        for stream, candles in seed.closed.items():
            channel, _, symbol = stream.partition(":")
            state = fresh.states.get(symbol)
            if state is None:
                continue
            interval = next(i for i in Interval if i.channel == channel)
            state.closed[interval].extend(_candle(orjson.loads(c)) for c in candles)
        missed: list[Part] = []
        for stream, raw in seed.latest.items():
            message = orjson.loads(raw)
            fresh._take(stream, message)
            if catch_up and int(message["seq"]) > before.get(stream, 0):
                missed.append((stream, raw, not _closed_candle(message)))
        for stream, raws in seed.recent.items():
            for raw in raws:
                message = orjson.loads(raw)
                fresh._take(stream, message)
                if catch_up and int(message["seq"]) > before.get(stream, 0):
                    missed.append((stream, raw, False))
        for state in fresh.states.values():
            if state.closed[Interval.M1]:
                state.recompute_window(now_ms)
        self.epoch, self.seq, self.latest, self.recent = fresh.epoch, fresh.seq, fresh.latest, fresh.recent
        self.states = fresh.states
        self.published = seed.published
        self.seeded = True
        self.last_event_ms = now_ms
        return missed


def _closed_candle(message: Message) -> bool:
    return message.get("type") == "candle" and bool(message["data"].get("closed"))
