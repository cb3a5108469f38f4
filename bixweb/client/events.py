"""What a client's callbacks get: server messages turned into per-kind payloads, and who is called.

The old client's ``callbacks`` were called with a price update's ticker
(``{'symbol', 'price', …}``) and bots were written that way; whole envelopes
go to ``on_message``, each kind of data to its own list. :func:`payloads` is
the mapping (pure); :class:`Listeners` holds the lists and calls them.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, Literal

from bixweb.client.bridge import Reply
from bixweb.client.streams import Callback, Message

log = logging.getLogger("bixweb.client")

Kind = Literal["message", "ticker", "trade", "book", "candle", "alert", "status"]
LISTS: Final[dict[Kind, tuple[str, ...]]] = {
    "message": ("on_message",),
    "ticker": ("callbacks", "on_ticker"),
    "trade": ("on_trade",),
    "book": ("on_book",),
    "candle": ("on_candle",),
    "alert": ("on_alert",),
    "status": ("on_status",),
}
"""Which of the client's lists each kind of payload goes to, in this order."""
ERROR_LOG_INTERVAL: Final = 60.0


def _with_symbol(symbol: object, data: object) -> Message:
    return {"symbol": symbol, **data} if isinstance(data, Mapping) else {"symbol": symbol}


def payloads(message: Message) -> Iterator[tuple[Kind, Message]]:
    """The per-kind payloads of one delivered message (the envelope itself goes to ``on_message``).

    A ticker is ``{"symbol", "price", "bid", …}`` (an ``initial_data`` gives
    one per symbol it carries, a ``market_update`` one); trades, books and
    candles likewise carry their ``symbol`` (candles their ``interval``);
    a server ``status`` becomes a status event ``{"event": "feed", …}``.
    Past trades in an ``initial_data`` are history, not new trades: they are
    left out (read them with ``get_trades``).
    """
    kind = message.get("type")
    if kind == "market_update":
        yield "ticker", _with_symbol(message.get("symbol"), message.get("data"))
    elif kind == "trade":
        yield "trade", _with_symbol(message.get("symbol"), message.get("data"))
    elif kind == "book":
        yield "book", _with_symbol(message.get("symbol"), message.get("data"))
    elif kind == "candle":
        yield (
            "candle",
            {"interval": message.get("interval"), **_with_symbol(message.get("symbol"), message.get("data"))},
        )
    elif kind == "alert":
        data = message.get("data")
        yield "alert", dict(data) if isinstance(data, Mapping) else {}
    elif kind == "status":
        yield "status", {"event": "feed", **{k: v for k, v in message.items() if k != "type"}}
    elif kind == "initial_data":
        for name in ("tickers", "books"):
            entries = message.get(name)
            if isinstance(entries, Mapping):
                for symbol, data in entries.items():
                    yield ("ticker" if name == "tickers" else "book"), _with_symbol(symbol, data)


class Listeners:
    """Calls a client's callback lists, read at call time (so ``client.callbacks = [f]`` works too).

    A callback that raises is logged with its traceback the first time, then
    at most once a minute with a count: a broken callback on a busy stream
    must not fill the log. Every failure is counted in :attr:`errors`.
    """

    def __init__(self, owner: object, clock: Callable[[], float] = time.monotonic) -> None:
        self._owner = owner
        self._clock = clock
        self._failing: dict[int, tuple[float, int]] = {}  # id(callback): (last logged, unlogged failures)
        self.errors = 0
        """Callback calls that raised."""

    def wanted(self, kind: Kind) -> bool:
        """Whether any callback listens to ``kind`` (skip building its payloads otherwise)."""
        return any(getattr(self._owner, name) for name in LISTS[kind])

    async def call(self, kind: Kind, payload: Any) -> None:
        """Call every callback of ``kind`` with ``payload``, in order; await what they return."""
        for name in LISTS[kind]:
            for callback in list(getattr(self._owner, name)):
                try:
                    result = callback(payload)
                    if inspect.isawaitable(result) and not isinstance(result, Reply):  # a request sent, not waited for
                        await result
                except Exception:
                    self._failed(callback, name)

    def _failed(self, callback: Callback, name: str) -> None:
        self.errors += 1
        now = self._clock()
        last, unlogged = self._failing.get(id(callback), (None, 0))
        if last is None:
            log.exception("a callback in %s failed: %r (logged again at most once a minute)", name, callback)
            self._failing[id(callback)] = (now, 0)
        elif now - last >= ERROR_LOG_INTERVAL:
            log.error("a callback in %s failed %d more times: %r", name, unlogged + 1, callback)
            self._failing[id(callback)] = (now, 0)
        else:
            self._failing[id(callback)] = (last, unlogged + 1)
