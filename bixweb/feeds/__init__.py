"""Market-data feeds, chosen by URL (:func:`open_feed`).

A feed is anything with ``events()``, an async iterator of event lists: one
list per flush window, so that what arrives together goes out together. A
feed yields only what its source reported: silence is how the app learns
that a feed is stale.

=================================  ==============================================
``simulated://``                   the built-in seeded market (``?speed=max``:
                                   on its own clock, as fast as it goes)
``binance://``                     Binance's public spot streams
                                   (``?url=ws://…`` for another upstream)
``replay://FILE?speed=10``         a recording made by ``python -m bixweb record``
=================================  ==============================================

``docs/feeds.md`` has every option.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

from bixweb.errors import ConfigError, FeedError
from bixweb.feeds.binance import open_binance
from bixweb.feeds.exchange import UpstreamStatus
from bixweb.feeds.replay import open_replay
from bixweb.feeds.simulated import SimulatedFeed, SimulatedMarket, now_ms, trade_id_base
from bixweb.feeds.urls import speed_option, url_options
from bixweb.model import MarketEvent

SCHEMES = ("simulated", "binance", "replay")


class Feed(Protocol):
    def events(self) -> AsyncIterator[list[MarketEvent]]: ...


@runtime_checkable
class Upstream(Protocol):
    """A feed with a link to an outside source, which can be up or down."""

    status: UpstreamStatus


def upstream_connected(feed: Feed) -> bool | None:
    """Whether a feed's link to its source is up; None for a feed that has none."""
    return feed.status.connected if isinstance(feed, Upstream) else None


def open_feed(url: str, *, symbols: Sequence[str], seed: int, tick_rate: float, book_depth: int) -> Feed:
    """The feed for ``url``; :class:`ConfigError` (or :class:`FeedError`) naming ``--feed`` when it
    cannot be had."""
    try:
        return _open(url, symbols=symbols, seed=seed, tick_rate=tick_rate, book_depth=book_depth)
    except (ConfigError, FeedError) as exc:
        raise type(exc)(f"--feed (BIXWEB_FEED): {exc}") from None


def _open(url: str, *, symbols: Sequence[str], seed: int, tick_rate: float, book_depth: int) -> Feed:
    scheme = urlsplit(url).scheme
    if scheme == "simulated":
        speed = speed_option(url_options(url, {"speed"}).get("speed", "1"))
        market = SimulatedMarket(
            symbols, seed=seed, tick_rate=tick_rate, book_depth=book_depth, id_base=trade_id_base(now_ms())
        )  # a restart repeats no trade id
        return SimulatedFeed(market, tick_rate, speed=speed)
    if scheme == "binance":
        return open_binance(url, symbols=symbols, book_depth=book_depth)
    if scheme == "replay":
        return open_replay(url, symbols=symbols)
    raise ConfigError(f"unknown feed {url!r}: use {', '.join(s + '://' for s in SCHEMES)}")
