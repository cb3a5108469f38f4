"""Fan-out: which connection listens to which stream, and what it is owed.

The hub encodes each message once and, per flush window, builds one frame
per distinct subscription (a ``batch`` when there are several messages);
every connection with that subscription gets the same bytes. Handing a
frame over never waits: it goes into the connection's bounded
:class:`Outbox`, and the connection's own writer sends it. A connection
whose outbox overflows is told so (:meth:`Subscriber.overflow`) and is
closed by its owner; nobody else waits for it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from bixweb import protocol
from bixweb.market import Outgoing


class Outbox:
    """A bounded FIFO of frames, bounded in count and in bytes."""

    __slots__ = ("_frames", "max_frames", "max_bytes", "size")

    def __init__(self, *, max_frames: int, max_bytes: int) -> None:
        self._frames: deque[bytes] = deque()
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.size = 0
        """Bytes queued."""

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: bytes) -> bool:
        """Queue ``frame``; False (and nothing queued) if that would pass a bound."""
        if len(self._frames) >= self.max_frames or self.size + len(frame) > self.max_bytes:
            return False
        self._frames.append(frame)
        self.size += len(frame)
        return True

    def get(self) -> bytes | None:
        """The oldest frame, or None when empty."""
        if not self._frames:
            return None
        frame = self._frames.popleft()
        self.size -= len(frame)
        return frame

    def clear(self) -> None:
        self._frames.clear()
        self.size = 0


class Subscriber(Protocol):
    """What the hub needs of a connection."""

    def deliver(self, frame: bytes) -> None:
        """Queue ``frame`` without waiting."""


class Hub:
    """Streams to subscribers; encode once, fan out bytes.

    ``join`` makes one frame of the parts a subscriber is owed in one flush
    window: a JSON ``batch`` for bots (the default), concatenated HTML
    fragments for dashboards. ``strict`` validates every message against its
    schema before it is encoded (slow; for debugging and tests).
    """

    def __init__(
        self, *, join: Callable[[Sequence[bytes]], bytes] = protocol.batch_frame, strict: bool = False
    ) -> None:
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
            [(item.stream, self.encode(item.message)) for item in outgoing if item.stream in self._stream_groups]
        )

    def publish_encoded(self, parts: Sequence[tuple[str, bytes]]) -> None:
        """Fan out ready-made parts: one frame per subscription, shared by its members."""
        pending: dict[frozenset[str], list[bytes]] = {}
        for stream, data in parts:
            for key in self._stream_groups.get(stream, ()):
                pending.setdefault(key, []).append(data)
        for key, parts_of_key in pending.items():
            frame = self.join(parts_of_key)
            members = self._groups[key]
            self.frames_out += len(members)
            self.messages_out += len(parts_of_key) * len(members)
            for subscriber in list(members):
                subscriber.deliver(frame)

    def broadcast(self, message: dict[str, Any]) -> None:
        """Send one message to every subscriber, encoded once."""
        self.broadcast_encoded(self.encode(message))

    def broadcast_encoded(self, frame: bytes) -> None:
        """Send one ready-made frame to every subscriber."""
        subscribers = list(self._streams)
        self.frames_out += len(subscribers)
        self.messages_out += len(subscribers)
        for subscriber in subscribers:
            subscriber.deliver(frame)
