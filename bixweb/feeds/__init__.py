"""Market-data feeds, chosen by URL (:func:`open_feed`).

A feed is anything with ``events()``, an async iterator of event lists: one
list per flush window, so that what arrives together goes out together.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol
from urllib.parse import urlsplit

from bixweb.errors import ConfigError
from bixweb.feeds.simulated import SimulatedFeed, SimulatedMarket
from bixweb.model import MarketEvent


class Feed(Protocol):
    def events(self) -> AsyncIterator[list[MarketEvent]]: ...


def open_feed(url: str, *, symbols: Sequence[str], seed: int, tick_rate: float, book_depth: int) -> Feed:
    """The feed for ``url``. Only ``simulated://`` exists so far."""
    scheme = urlsplit(url).scheme
    if scheme == "simulated":
        market = SimulatedMarket(symbols, seed=seed, tick_rate=tick_rate, book_depth=book_depth)
        return SimulatedFeed(market, tick_rate)
    raise ConfigError(f"unknown feed {url!r}: use simulated://")
