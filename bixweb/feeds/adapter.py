"""What an exchange adapter is, and the intake that turns frames into market events.

An :class:`ExchangeAdapter` knows one exchange's formats and nothing of
sockets. The :class:`Intake` takes the frames one flush window brought, from
one connection or two (while one replaces the other), asks the adapter what
they hold, and decides what the feed yields. Neither does I/O (the intake
logs), so both are tested with values.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from bixweb.logs import event
from bixweb.model import MarketEvent, Trade

log = logging.getLogger("bixweb.feeds.adapter")

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

    def _admit(self, item: MarketEvent, current: bool) -> bool:
        symbol = item.symbol
        if symbol not in self.symbols:
            if symbol not in self._foreign:
                self._foreign.add(symbol)
                event(
                    log,
                    logging.WARNING,
                    "feed_foreign_symbol",
                    source=self.adapter.name,
                    symbol=symbol,
                    action="ignored",
                )
            return False
        self._heard.add(symbol)
        if isinstance(item, Trade):
            return self._recent.first_time(symbol, item.id)
        return current

    def _malformed(self, frame: Frame, fault: str, now: int) -> None:
        self.malformed += 1
        told = self._malformed_told_ms
        if told is not None and now - told < MALFORMED_LOG_EVERY_MS:
            return
        since = self.malformed - self._malformed_told
        self._malformed_told_ms, self._malformed_told = now, self.malformed
        event(
            log,
            logging.WARNING,
            "feed_malformed_frame",
            source=self.adapter.name,
            bytes=len(frame.data),
            fault=fault,
            since_last_report=since,
            total=self.malformed,
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
            event(
                log,
                logging.WARNING,
                "feed_silent_symbols",
                source=self.adapter.name,
                symbols=",".join(silent),
                seconds=self.unlisted_after_ms / 1000,
                hint="not listed by the exchange? they stay empty",
            )
