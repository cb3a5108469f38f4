"""Fan-out: which connection listens to which stream, and what it is owed.

The hub encodes each message once and, per flush window, builds one frame
per distinct subscription (a ``batch`` when there are several messages);
every connection with that subscription gets the same bytes. Handing a
frame over never waits: it goes into the connection's :class:`Outbox`, and
the connection's own writer sends it.

The outbox treats messages by class. A *state* message (a ticker, a book, a
forming candle, a dashboard fragment) is complete in itself: a newer one on
the same stream replaces it (conflation), so a slow reader gets the newest
value, never a backlog. Everything else (trades, closed candles, ``ack``,
``error``, ``status``, snapshots) is kept in order and bounded in messages
and bytes; past the bound the connection is closed, never silently thinned.

What a connection owes because it asked (a snapshot, the replay of a resume)
waits in its :class:`Backlog` instead, ahead of the outbox and outside its
bound: it is sent at the pace the peer reads, and live messages queue behind.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from bixweb import protocol
from bixweb.market import Message, Outgoing

Part = tuple[str, bytes, bool]
"""``(stream, encoded message, conflate)``: one message of a frame."""
Join = Callable[[Sequence[bytes]], bytes]


class Outbox:
    """What one connection is owed: a shared frame while it keeps up, merged parts when it does not.

    While the writer keeps up, each flush window's frame is handed over as
    is (the same bytes as every other subscriber of that subscription).
    When a second arrives before the first was taken, both are spilled into
    parts: state parts conflate per stream, the others queue in order. The
    queue is bounded by ``max_messages`` and, with the state parts,
    ``max_bytes``; :meth:`put_frame` and :meth:`put` return False past it.
    """

    __slots__ = ("_frame", "_parts", "_queue", "_state", "join", "max_messages", "max_bytes", "size", "conflated")

    def __init__(self, *, max_messages: int, max_bytes: int, join: Join = protocol.batch_frame) -> None:
        self._frame: bytes | None = None
        self._parts: Sequence[Part] = ()
        self._queue: deque[bytes] = deque()
        self._state: dict[str, bytes] = {}
        self.join = join
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.size = 0
        """Bytes waiting."""
        self.conflated = 0
        """State messages replaced by a newer one before they were sent."""

    def __len__(self) -> int:
        """Messages waiting."""
        if self._frame is not None:
            return len(self._parts)
        return len(self._queue) + len(self._state)

    def __bool__(self) -> bool:
        return self._frame is not None or bool(self._queue) or bool(self._state)

    def _within_bounds(self) -> bool:
        return len(self._queue) <= self.max_messages and self.size <= self.max_bytes

    def _spill(self) -> None:
        parts, self._parts, self._frame = self._parts, (), None
        self.size = 0
        for part in parts:
            self._add(part)

    def _add(self, part: Part) -> None:
        stream, data, conflate = part
        if conflate:
            old = self._state.pop(stream, None)
            if old is not None:
                self.conflated += 1
                self.size -= len(old)
            self._state[stream] = data
        else:
            old = self._state.pop(stream, None)  # a newer message on the stream supersedes it
            if old is not None:
                self.conflated += 1
                self.size -= len(old)
            self._queue.append(data)
        self.size += len(data)

    def put_frame(self, frame: bytes, parts: Sequence[Part]) -> bool:
        """Queue one flush window: ``frame`` is ``parts`` joined. False past a bound."""
        if not self:
            self._frame, self._parts = frame, parts
            self.size = len(frame)
            return self.size <= self.max_bytes
        if self._frame is not None:
            self._spill()
        for part in parts:
            self._add(part)
        return self._within_bounds()

    def put(self, data: bytes) -> bool:
        """Queue one message that must arrive (a reply, a snapshot). False past a bound."""
        if self._frame is not None:
            self._spill()
        self._queue.append(data)
        self.size += len(data)
        return self._within_bounds()

    def take(self) -> bytes | None:
        """Everything waiting as one frame, or None."""
        if self._frame is not None:
            frame, self._frame, self._parts = self._frame, None, ()
            self.size = 0
            return frame
        if not self._queue and not self._state:
            return None
        parts = [*self._queue, *self._state.values()]
        self._queue.clear()
        self._state.clear()
        self.size = 0
        return self.join(parts)

    def clear(self) -> None:
        self._frame, self._parts = None, ()
        self._queue.clear()
        self._state.clear()
        self.size = 0


class Backlog:
    """What a connection owes ahead of its outbox: snapshots and replays, sent as fast as the peer reads.

    A resume can owe tens of thousands of messages; the outbox, whose bound
    protects live traffic from a reader that stopped, must not see them. A
    replay is kept as references to the messages (shared with
    ``Market.recent``, so it costs pointers, not bytes) and encoded only when
    the writer is ready for it, at most ``chunk`` messages per frame.
    Ready-made frames (a snapshot, what the outbox held when a backlog was
    added) wait here as bytes. Everything comes out in the order it went in.

    The backlog has no bound of its own: the connection decides what it may
    add (see :meth:`admits`), so that a peer that reads is never refused its
    own replay, and one that does not is.
    """

    __slots__ = ("_items", "_position", "encode", "join", "chunk", "messages", "size", "taken")

    def __init__(
        self,
        *,
        encode: Callable[[Message], bytes] = protocol.encode,
        join: Join = protocol.batch_frame,
        chunk: int = 256,
    ) -> None:
        self._items: deque[tuple[bytes, int] | list[Message]] = deque()
        """Ready-made frames with their message counts, and replays."""
        self._position = 0
        """Messages of the first replay already taken."""
        self.encode = encode
        self.join = join
        self.chunk = chunk
        self.messages = 0
        """Messages waiting."""
        self.size = 0
        """Bytes waiting in ready-made frames (replays are not encoded yet)."""
        self.taken = 0
        """Messages taken so far: the writer's progress."""

    def __len__(self) -> int:
        return self.messages

    def __bool__(self) -> bool:
        return bool(self._items)

    def admits(self, *, max_messages: int, max_bytes: int) -> bool:
        """Whether more may be added: not while more than the bounds of earlier backlog are still unsent."""
        return self.messages <= max_messages and self.size <= max_bytes

    def add_frame(self, frame: bytes, messages: int = 1) -> None:
        """Owe a ready-made frame of ``messages`` messages."""
        self._items.append((frame, messages))
        self.messages += messages
        self.size += len(frame)

    def add(self, messages: Sequence[Message]) -> None:
        """Owe ``messages``, to be encoded when their turn comes."""
        if messages:
            self._items.append(messages if isinstance(messages, list) else list(messages))
            self.messages += len(messages)

    def take(self) -> bytes | None:
        """The next frame: a ready-made one, or the next chunk of a replay; None when nothing waits."""
        if not self._items:
            return None
        head = self._items[0]
        if isinstance(head, tuple):
            self._items.popleft()
            frame, count = head
            self.size -= len(frame)
            self._count_taken(count)
            return frame
        start = self._position
        chunk = head[start : start + self.chunk]
        self._position += len(chunk)
        if self._position >= len(head):
            self._items.popleft()
            self._position = 0
        self._count_taken(len(chunk))
        return self.join([self.encode(message) for message in chunk])

    def _count_taken(self, messages: int) -> None:
        self.messages -= messages
        self.taken += messages

    def clear(self) -> None:
        self._items.clear()
        self._position = self.messages = self.size = 0


class Subscriber(Protocol):
    """What the hub needs of a connection."""

    def deliver(self, frame: bytes, parts: Sequence[Part]) -> None:
        """Queue one flush window (``frame`` is ``parts`` joined) without waiting."""


class Hub:
    """Streams to subscribers; encode once, fan out bytes.

    ``join`` makes one frame of the parts a subscriber is owed in one flush
    window: a JSON ``batch`` for bots (the default), concatenated HTML
    fragments for dashboards. ``strict`` validates every message against its
    schema before it is encoded (slow; for debugging and tests).
    """

    def __init__(self, *, join: Join = protocol.batch_frame, strict: bool = False) -> None:
        self.join = join
        self.strict = strict
        self._streams: dict[Subscriber, frozenset[str]] = {}
        self._groups: dict[frozenset[str], set[Subscriber]] = {}
        self._stream_groups: dict[str, set[frozenset[str]]] = {}
        self.frames_out = 0
        self.messages_out = 0

    def __len__(self) -> int:
        return len(self._streams)

    @property
    def subscribers(self) -> list[Subscriber]:
        return list(self._streams)

    def streams_of(self, subscriber: Subscriber) -> frozenset[str]:
        return self._streams.get(subscriber, frozenset())

    def add(self, subscriber: Subscriber, streams: Iterable[str] = ()) -> None:
        self.set_streams(subscriber, frozenset(streams))

    def remove(self, subscriber: Subscriber) -> None:
        streams = self._streams.pop(subscriber, None)
        if streams is not None:
            self._leave(subscriber, streams)

    def set_streams(self, subscriber: Subscriber, streams: frozenset[str]) -> None:
        """Make ``subscriber`` listen to exactly ``streams``."""
        old = self._streams.get(subscriber)
        if old == streams and old is not None:
            return  # leaving and rejoining a large group would churn its set for nothing
        if old is not None:
            self._leave(subscriber, old)
        self._streams[subscriber] = streams
        group = self._groups.get(streams)
        if group is None:
            group = self._groups[streams] = set()
            for stream in streams:
                self._stream_groups.setdefault(stream, set()).add(streams)
        group.add(subscriber)

    def _leave(self, subscriber: Subscriber, streams: frozenset[str]) -> None:
        group = self._groups[streams]
        group.discard(subscriber)
        if group:
            return
        del self._groups[streams]
        for stream in streams:
            keys = self._stream_groups[stream]
            keys.discard(streams)
            if not keys:
                del self._stream_groups[stream]

    def encode(self, message: dict[str, Any]) -> bytes:
        """Encode one message (validated first when strict)."""
        if self.strict:
            errors = protocol.schemas().errors("server", message)
            if errors:
                raise ValueError(f"outbound {message.get('type')} breaks its schema: {errors[:3]}")
        return protocol.encode(message)

    def has_subscribers(self, stream: str) -> bool:
        return stream in self._stream_groups

    def streams(self) -> list[str]:
        """Every stream somebody listens to."""
        return list(self._stream_groups)

    def publish(self, outgoing: Sequence[Outgoing]) -> None:
        """Fan out one flush window of messages, each encoded once."""
        self.publish_encoded(
            [
                (item.stream, self.encode(item.message), item.conflate)
                for item in outgoing
                if item.stream in self._stream_groups
            ]
        )

    def publish_encoded(self, parts: Sequence[Part]) -> None:
        """Fan out ready-made parts: one frame per subscription, shared by its members."""
        pending: dict[frozenset[str], list[Part]] = {}
        for part in parts:
            for key in self._stream_groups.get(part[0], ()):
                pending.setdefault(key, []).append(part)
        for key, parts_of_key in pending.items():
            frame = self.join([data for _, data, _ in parts_of_key])
            members = self._groups[key]
            self.frames_out += len(members)
            self.messages_out += len(parts_of_key) * len(members)
            shared = tuple(parts_of_key)
            for subscriber in list(members):
                subscriber.deliver(frame, shared)

    def broadcast(self, message: dict[str, Any], *, conflate: bool = False) -> None:
        """Send one message to every subscriber, encoded once."""
        self.broadcast_encoded(str(message["type"]), self.encode(message), conflate=conflate)

    def broadcast_encoded(self, stream: str, data: bytes, *, conflate: bool = False) -> None:
        """Send one ready-made message to every subscriber."""
        subscribers = list(self._streams)
        self.frames_out += len(subscribers)
        self.messages_out += len(subscribers)
        parts = ((stream, data, conflate),)
        for subscriber in subscribers:
            subscriber.deliver(data, parts)
