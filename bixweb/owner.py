"""The process that owns the market: feed events in, numbered messages out to the broker.

With ``memory://`` that is the web server itself; with ``redis://`` it is
``bixweb feed`` (:func:`bixweb.web.feed_process.run_feed_process`), and the
web processes follow what it publishes.
"""

from __future__ import annotations

import time

from bixweb.brokers import Broker
from bixweb.desk import Desk
from bixweb.feeds import Feed
from bixweb.market import Market
from bixweb.model import History


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
