"""A client's requests: what a bot may ask, and the requests in flight, answered by ``id``.

:class:`Requests` (a mixin of :class:`~bixweb.client.WebSocketClient`) is the
public API: every method returns a :class:`~bixweb.client.bridge.Reply`, to
``await`` or to ``.result()`` from another thread. :class:`Pending` keeps the
futures of requests sent and not answered yet; the client calls
:meth:`Pending.answer` with every message the server sends.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Final, Literal, TypeVar

from bixweb.client.address import names
from bixweb.client.address import symbols as symbol_names
from bixweb.client.bridge import Bridge, Reply
from bixweb.client.session import subscription
from bixweb.client.streams import Message, error_from_message

T = TypeVar("T")

ANSWERS: Final = frozenset({"ack", "pong", "alert_rules", "annotations"})
"""Message types that answer a request (besides ``error``)."""
IN_ORDER: Final = frozenset({"subscribe", "unsubscribe", "ping"})
"""Requests the server answers at once, in the order they came (alerts and annotations may wait
for the process that keeps them)."""


def request(kind: str, **fields: Any) -> Message:
    """A client message: ``type`` and the fields given, ``None`` ones left out (the server's defaults)."""
    return {"type": kind, **{name: value for name, value in fields.items() if value is not None}}


class Pacer:
    """Paces a client's requests under the server's rate limit: a token bucket, as values.

    The server answers a message over its limit with a ``rate_limited`` error
    that carries no ``id`` (it drops the message unread), so the request it
    dropped could only time out. The client keeps under the limit instead:
    three quarters of ``max_messages_per_s`` (the server charges costly
    messages more), with bursts up to the limit. Each request reserves its
    slot; :meth:`delay` says how long it waits for it.
    """

    def __init__(self, per_second: float = 20.0) -> None:
        self.rate = self.burst = 0.0
        self._tokens = 0.0
        self._at: float | None = None
        self.configure(per_second)

    def configure(self, per_second: float) -> None:
        """The limit the server announced (``welcome.limits.max_messages_per_s``)."""
        self.rate = max(0.1, 0.75 * per_second)
        self.burst = self._tokens = max(1.0, per_second)
        self._at = None

    def delay(self, now: float) -> float:
        """Take one slot; the seconds to wait before sending in it."""
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= 1.0
        return max(0.0, -self._tokens / self.rate)

    def give_back(self) -> None:
        """A slot taken by :meth:`delay` and not used."""
        self._tokens += 1.0

    def drain(self) -> None:
        """The server refused a message for its rate (it charges costly ones more): wait for slots."""
        self._tokens = min(self._tokens, 0.0)


class Pending:
    """Futures of the requests sent and not answered yet, by ``id``."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._futures: dict[int, asyncio.Future[Message]] = {}
        self._kinds: dict[int, str] = {}
        self.rate_limited = 0
        """``rate_limited`` errors the server sent (with no ``id``: each fails the request it dropped)."""

    def open(self, kind: str = "") -> tuple[int, asyncio.Future[Message]]:
        """A new request id, and the future its answer will set (on the running loop)."""
        request_id = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._futures[request_id] = future
        self._kinds[request_id] = kind
        return request_id, future

    def close(self, request_id: int) -> None:
        self._futures.pop(request_id, None)
        self._kinds.pop(request_id, None)

    def answer(self, message: Mapping[str, Any]) -> bool:
        """Settle the request that ``message`` answers; whether it was a ``rate_limited`` refusal.

        The server drops a message over its rate unread, so its ``rate_limited``
        error has no ``id``: it fails the oldest request still waiting among
        those answered in order (the server reads a connection's messages in
        order, and answered every earlier one before it).
        """
        request_id = message.get("id")
        if request_id is None and message.get("type") == "error" and message.get("code") == "rate_limited":
            self.rate_limited += 1
            waiting = [n for n, kind in self._kinds.items() if kind in IN_ORDER and not self._futures[n].done()]
            if waiting:
                self._futures[min(waiting)].set_exception(error_from_message(message))
            return True
        future = self._futures.get(request_id) if isinstance(request_id, int) else None
        if future is None or future.done():
            return False
        kind = message.get("type")
        if kind == "error":
            future.set_exception(error_from_message(message))
        elif kind in ANSWERS:
            future.set_result(dict(message))
        return False

    def fail_all(self, error: BaseException) -> None:
        """The connection is gone: every request waiting raises ``error``."""
        for future in self._futures.values():
            if not future.done():
                future.set_exception(error)

    def __len__(self) -> int:
        return len(self._futures)


class Requests:
    """What a bot may ask the server; each answer comes as a :class:`~bixweb.client.bridge.Reply`."""

    request_timeout: float
    _loop: asyncio.AbstractEventLoop | None
    _bridge: Bridge
    _run_task: asyncio.Task[None] | None

    async def _ask(self, message: Message) -> Message:
        raise NotImplementedError

    def _in_receive_loop(self) -> bool:
        """Whether this code runs inside the receive loop (a callback): it cannot wait for an answer there."""
        return self._run_task is not None and asyncio.current_task() is self._run_task

    def _submit(self, what: str, make: Callable[[], Coroutine[Any, Any, T]]) -> Reply[T]:
        # request_timeout bounds the whole request (a connection, a slot, the answer); a little more here.
        timeout = self.request_timeout + 1.0
        return self._bridge.submit(self._loop, make, what, timeout, blocked=self._in_receive_loop)

    def _asking(self, what: str, message: Message) -> Reply[Message]:
        return self._submit(what, lambda: self._ask(message))

    def subscribe(self, symbols: str | Iterable[str], channels: str | Iterable[str]) -> Reply[Message]:
        """Add ``symbols`` x ``channels`` (``"*"`` = every symbol); the answer is the ``ack``.

        An ``initial_data`` for the new streams follows the ack in the message
        flow. Raises :class:`~bixweb.errors.ProtocolError` if the server
        refuses (nothing changes then), :class:`TimeoutError` after
        ``request_timeout`` and :class:`ConnectionError` if the client is not
        connected or the connection drops first. Like every request: ``await``
        it, or call ``.result()`` from another thread (:mod:`bixweb.client.bridge`).
        """
        return self._asking("subscribe", subscription("subscribe", symbol_names(symbols), names(channels)))

    def unsubscribe(self, symbols: str | Iterable[str], channels: str | Iterable[str]) -> Reply[Message]:
        """Remove ``symbols`` x ``channels``; the answer is the ``ack``. Raises as :meth:`subscribe`."""
        return self._asking("unsubscribe", subscription("unsubscribe", symbol_names(symbols), names(channels)))

    def ping(self) -> Reply[float]:
        """The round trip to the server and back, in seconds (a ``ping`` answered by a ``pong``)."""

        async def round_trip() -> float:
            start = time.perf_counter()
            await self._ask(request("ping"))
            return time.perf_counter() - start

        return self._submit("ping", round_trip)

    def alert_create(
        self,
        symbol: str,
        condition: Literal["above", "below", "move"],
        *,
        level: float | None = None,
        pct: float | None = None,
        window_s: float | None = None,
        direction: Literal["up", "down", "any"] | None = None,
        note: str | None = None,
        repeat: bool | None = None,
    ) -> Reply[Message]:
        """Make an alert rule (``docs/protocol.md``, alerts); the answer is an ``alert_rules`` message
        whose ``rules`` holds it. Subscribe to ``alerts`` to get the alerts it fires."""
        fields = {"level": level, "pct": pct, "window_s": window_s, "direction": direction, "note": note}
        return self._asking(
            "alert_create", request("alert_create", symbol=symbol, condition=condition, repeat=repeat, **fields)
        )

    def alert_delete(self, rule_id: str) -> Reply[Message]:
        """Delete one of this connection's rules; the answer is ``alert_rules`` with it."""
        return self._asking("alert_delete", request("alert_delete", rule_id=rule_id))

    def alert_list(self) -> Reply[Message]:
        """Every rule and the recent alerts (``alert_rules`` with ``op: "list"``)."""
        return self._asking("alert_list", request("alert_list"))

    def annotation_add(self, symbol: str, price: float, label: str | None = None) -> Reply[Message]:
        """Draw a price line on every dashboard's chart of ``symbol``; the answer is ``annotations``."""
        return self._asking("annotation_add", request("annotation_add", symbol=symbol, price=price, label=label))

    def annotation_remove(self, annotation_id: str) -> Reply[Message]:
        """Remove a price line this connection drew; the answer is ``annotations``."""
        return self._asking("annotation_remove", request("annotation_remove", annotation_id=annotation_id))

    def annotation_list(self, symbol: str | None = None) -> Reply[Message]:
        """The price lines of ``symbol``, or of every symbol (``annotations`` with ``op: "list"``)."""
        return self._asking("annotation_list", request("annotation_list", symbol=symbol))
