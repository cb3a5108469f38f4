"""``memory://``: the market and its subscribers in one process; nothing is encoded for the trip."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bixweb.brokers import Subscriber
from bixweb.market import Outgoing


class MemoryBroker:
    """Hands each flush window straight to the subscribers, synchronously."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._subscribers: list[Subscriber] = []

    problem = ""
    """Nothing to link to: never a problem."""

    def publish(self, outgoing: Sequence[Outgoing]) -> None:
        for subscriber in self._subscribers:
            subscriber.on_local(outgoing)

    def state_changed(self) -> None:
        pass  # the subscribers read the market itself

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    async def run(self) -> None:
        await asyncio.Event().wait()  # nothing to do; ends when cancelled
