"""The process that owns the market: feed events in, numbered messages out to the broker.

With ``memory://`` that is the web server itself; with ``redis://`` it is
``python -m bixweb feed`` (:func:`run_feed_process`), and the web processes
follow what it publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path

from bixweb.brokers import Broker
from bixweb.config import Settings
from bixweb.desk import Desk
from bixweb.feeds import Feed, open_feed
from bixweb.market import Market
from bixweb.mirror import seed_of
from bixweb.model import History
from bixweb.store import STORE_FILE, SQLiteStore

log = logging.getLogger("bixweb.owner")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def run_market(feed: Feed, market: Market, broker: Broker, desk: Desk | None = None) -> None:
    """Apply every event list of ``feed`` to ``market`` and publish what it causes, until the feed ends.

    With a ``desk``, its alert rules are evaluated on each flush window, here,
    once; the alerts that fire go out with that window on their ``alerts`` streams.
    """
    async for events in feed.events():
        now = now_ms()
        outgoing = market.apply(events, now)
        if desk is not None and outgoing:
            outgoing += [market.alert_outgoing(alert, now) for alert in desk.observe(outgoing)]
        if outgoing:
            broker.publish(outgoing)
        if any(isinstance(event, History) for event in events):
            broker.state_changed()  # candles no message announced: write the state anew


async def run_feed_process(settings: Settings) -> None:
    """``python -m bixweb feed --broker redis://…``: until SIGINT or SIGTERM."""
    from bixweb.brokers.redis import RedisBroker

    feed = open_feed(
        settings.feed,
        symbols=settings.symbols,
        seed=settings.seed,
        tick_rate=settings.tick_rate,
        book_depth=settings.book_depth,
    )
    market = Market(
        settings.symbols,
        history_points=settings.history_points,
        trade_history=settings.trade_history,
        replay_depth=settings.replay_depth,
        epoch=now_ms(),
    )
    broker = RedisBroker(
        settings.broker,
        symbols=settings.symbols,
        history_points=settings.history_points,
        replay_depth=settings.replay_depth,
    )
    broker.seed_source = lambda: seed_of(market, broker.published)
    desk = Desk(SQLiteStore(Path(settings.data_dir) / STORE_FILE), settings.symbols)
    broker.desk = desk  # its state is kept in Redis; web processes forward their requests to it
    desk.listeners.append(broker.desk_changed)
    log.info(
        "feed process: %s -> %s, epoch %d, %d symbols",
        settings.feed,
        settings.broker,
        market.epoch,
        len(market.symbols),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    tasks = [
        asyncio.create_task(broker.run(), name="broker"),
        asyncio.create_task(run_market(feed, market, broker, desk), name="feed"),
    ]
    waiting = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in [waiting, *tasks]:
        task.cancel()
    for task in [waiting, *tasks]:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for task in done:
        if task is not waiting and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    desk.close()
    log.info("feed process stopped")
