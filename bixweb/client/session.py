"""What a client is subscribed to, and how it gets it back: restore, resume and resync.

:class:`Subscriptions` keeps the set of streams the client wants (the
server's ``welcome`` and every ``ack`` update it) and, on a new connection,
sends the requests that restore it (after a :meth:`connect`, from fresh
snapshots) or resume it (after a close nobody asked for, with ``since``). It
sends through the ``ask`` coroutine it is given; it owns no socket.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from bixweb.client.streams import (
    Message,
    Request,
    Resume,
    Stream,
    resume_requests,
    since_data,
    streams_of,
    subscription_requests,
    subscriptions_map,
)
from bixweb.client.view import MarketView, Resync
from bixweb.errors import ProtocolError
from bixweb.model import stream_key
from bixweb.protocol import Since

log = logging.getLogger("bixweb.client")

Ask = Callable[[Message], Awaitable[Message]]
"""Send a request and wait for its answer (raises ProtocolError, ConnectionError, TimeoutError)."""


def describe(exc: BaseException | None) -> str:
    return f"{type(exc).__name__}: {exc}" if exc is not None else "-"


def subscription(op: str, symbols: list[str], channels: list[str], since: Since | None = None) -> Message:
    """A ``subscribe`` or ``unsubscribe`` message (without its ``id``)."""
    message: Message = {"type": op, "symbols": symbols, "channels": channels}
    if since is not None:
        message["since"] = since_data(since)
    return message


class Subscriptions:
    """The streams wanted, and the tasks that restore, resume or resync them on the live connection."""

    def __init__(
        self,
        view: MarketView,
        ask: Ask,
        reconnect: Callable[[bytes], Awaitable[None]],
        resumed: Callable[[bool], Awaitable[None]],
        restored: Callable[[], None],
    ) -> None:
        self._view = view
        self._ask = ask
        self._restored = restored  # called once the subscriptions are back (or need nothing)
        self._reconnect = reconnect  # close the socket: the receive loop then resumes
        self._resumed = resumed
        self._lock = threading.Lock()
        self._wanted: set[Stream] | None = None  # None until the first welcome says what the query meant
        self._tasks: set[asyncio.Task[Any]] = set()
        self.resuming = False
        """Set by a close nobody asked for: the next connection resumes."""
        self.recovered: bool | None = None
        self.resumes = 0
        self.resyncs = 0

    @property
    def known(self) -> bool:
        """Whether a welcome has said what the client is subscribed to."""
        return self._wanted is not None

    def as_map(self) -> dict[str, list[str]]:
        with self._lock:
            return subscriptions_map(self._wanted or ())

    def _spawn(self, work: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        """The connection is gone: stop what was restoring or resyncing on it."""
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()

    def on_welcome(self, message: Message) -> None:
        have = streams_of(message.get("subscriptions", {}))
        with self._lock:
            if self._wanted is None:
                self._wanted = have
            wanted = set(self._wanted)
        # The user's requests wait until these are sent and answered: an unsubscribe made during the
        # reconnect must come after the resume's subscribe, or the resume would undo it.
        if self.resuming:
            resumes = resume_requests(wanted - have, self._view.positions())
            log.info("resuming: %d requests", len(resumes))
            self._spawn(self._then_restored(lambda: self._resume(resumes)), "bixweb-resume")
            return
        requests = subscription_requests(have, wanted)
        if requests:
            log.info("restoring subscriptions: %d requests", len(requests))
            self._spawn(self._then_restored(lambda: self._restore(requests)), "bixweb-resubscribe")
        else:
            self._restored()

    async def _then_restored(self, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        finally:
            self._restored()

    def on_ack(self, message: Message) -> None:
        streams = {(c, s) for c in message.get("channels", ()) for s in message.get("symbols", ())}
        with self._lock:
            wanted = self._wanted if self._wanted is not None else set()
            self._wanted = wanted | streams if message.get("op") == "subscribe" else wanted - streams
        if message.get("op") == "unsubscribe":
            self._view.forget(stream_key(c, s) for c, s in streams)

    def resync(self, resyncs: Iterable[Resync]) -> None:
        for resync in resyncs:
            self._spawn(self._resync(resync), f"bixweb-resync-{resync.stream}")

    async def _restore(self, requests: list[Request]) -> None:
        for op, symbols, channels in requests:
            try:
                await self._ask(subscription(op, symbols, channels))
            except ProtocolError as exc:
                log.warning("could not restore %s %s x %s: %s %s", op, symbols, channels, exc.code, exc.message)
            except (ConnectionError, TimeoutError) as exc:
                log.info("restoring subscriptions interrupted: %s", describe(exc))
                return

    async def _resume(self, resumes: list[Resume]) -> None:
        """Subscribe again with ``since``, one request at a time; then set :attr:`recovered`."""
        recovered = True
        for symbols, channels, since in resumes:
            try:
                ack = await self._ask(subscription("subscribe", symbols, channels, since))
            except ProtocolError as exc:
                log.warning("could not resume %s x %s: %s %s", symbols, channels, exc.code, exc.message)
                recovered = False
                continue
            except (ConnectionError, TimeoutError) as exc:
                log.info("resuming interrupted: %s", describe(exc))
                return
            if since is None or ack.get("recovered") is not True:
                recovered = False  # an initial_data follows (or followed) instead of the missed messages
        self.recovered = recovered
        self.resumes += 1
        log.info("resumed: %s", "recovered" if recovered else "started over from snapshots")
        await self._resumed(recovered)

    async def _resync(self, resync: Resync) -> None:
        """Ask again for one stream on the live connection; if that fails, reconnect and resume."""
        self.resyncs += 1
        try:
            await self._ask(subscription("subscribe", [resync.symbol], [resync.channel], resync.since))
        except ConnectionError:
            return  # the reconnect resumes the stream
        except (ProtocolError, TimeoutError) as exc:
            log.warning("resync of %s failed (%s); reconnecting to resume", resync.stream, describe(exc))
            await self._reconnect(b"resync failed")
        finally:
            self._view.resync_finished(resync.stream)
