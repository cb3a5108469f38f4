"""Brokers carry market updates from the process that owns the market to those that fan them out.

Chosen by URL (:func:`open_broker`):

``memory://`` (default)
    one process: the feed, the market and the web server together; updates
    go straight from the market to the hub.
``redis://host:port/db``
    one feed process (``python -m bixweb feed``) owns the market, numbers
    and encodes every message once, publishes each flush window over Redis
    pub/sub and keeps the state a newcomer needs (a :class:`~bixweb.mirror.Seed`)
    in Redis; any number of web processes (``python -m bixweb serve``)
    follow it and fan the same bytes out to their clients.

The wire format of one publication is binary and versioned
(:func:`encode_publication`): the epoch, the publication's number (one
more than the last, so a follower can tell it lost some), then each part
as stream, conflate flag and the message bytes exactly as clients get them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from bixweb.brokers.link import redacted
from bixweb.errors import BrokerError, ConfigError, InstallError
from bixweb.market import Message, Outgoing
from bixweb.mirror import Part, Seed

if TYPE_CHECKING:
    from bixweb.brokers.redis import RedisBroker

MAGIC = b"BXP1"
_HEADER = struct.Struct(">4sQQI")
_PART = struct.Struct(">H?I")


@dataclass(frozen=True, slots=True)
class Publication:
    """One flush window of messages, numbered by the owner."""

    epoch: int
    number: int
    parts: tuple[Part, ...]


def encode_publication(publication: Publication) -> bytes:
    chunks = [_HEADER.pack(MAGIC, publication.epoch, publication.number, len(publication.parts))]
    for stream, data, conflate in publication.parts:
        name = stream.encode()
        chunks += (_PART.pack(len(name), conflate, len(data)), name, data)
    return b"".join(chunks)


def decode_publication(payload: bytes) -> Publication:
    """The publication in ``payload``; :class:`BrokerError` if it is not one."""
    try:
        magic, epoch, number, count = _HEADER.unpack_from(payload, 0)
        if magic != MAGIC:
            raise BrokerError("not a bixweb publication (or another version)")
        offset = _HEADER.size
        parts: list[Part] = []
        for _ in range(count):
            name_length, conflate, data_length = _PART.unpack_from(payload, offset)
            offset += _PART.size
            stream = payload[offset : offset + name_length].decode()
            offset += name_length
            data = payload[offset : offset + data_length]
            offset += data_length
            if len(data) != data_length:
                raise BrokerError("truncated publication")
            parts.append((stream, bytes(data), conflate))
        if offset != len(payload):
            raise BrokerError("trailing bytes after a publication")
    except (struct.error, UnicodeDecodeError) as exc:
        raise BrokerError(f"malformed publication: {exc}") from None
    return Publication(epoch, number, tuple(parts))


class Subscriber(Protocol):
    """What a web process does with what its broker brings."""

    def on_local(self, outgoing: Sequence[Outgoing]) -> None:
        """Messages of a market in this very process (``memory://``), not yet encoded."""

    def on_publication(self, parts: Sequence[Part], messages: Sequence[tuple[str, Message]]) -> None:
        """Messages the owner published, encoded (``parts``) and decoded."""

    def on_seed(self, seed: Seed) -> None:
        """The owner's whole state: at start, after a lost link, after lost publications, on a new epoch."""

    def on_link(self, up: bool) -> None:
        """The link to the broker is lost (``False``) or back (``True``)."""

    def on_desk(self, state: bytes, change: str | None) -> None:
        """The owner's alert desk (JSON), after ``change`` (``None``: maybe everything)."""


class Broker(Protocol):
    url: str

    @property
    def problem(self) -> str:
        """Why the link to the broker is not up, or why no owner publishes to it, for ``/readyz``
        (empty while all is well, and for ``memory://``)."""

    def publish(self, outgoing: Sequence[Outgoing]) -> None:
        """Owner side: one flush window of the market's messages. Never waits."""

    def state_changed(self) -> None:
        """Owner side: the state changed without messages (a history was loaded); keep it anew."""

    def subscribe(self, subscriber: Subscriber) -> None:
        """Follower side: deliver to ``subscriber`` from now on."""

    async def run(self) -> None:
        """The broker's own work (links, queues) until cancelled."""


def redis_broker_type(url: str) -> type[RedisBroker]:
    """:class:`~bixweb.brokers.redis.RedisBroker`, imported now: redis is an extra, which only a
    deployment that scales out installs. :class:`InstallError` naming it if it is missing."""
    try:
        from bixweb.brokers.redis import RedisBroker
    except ModuleNotFoundError as exc:
        if exc.name != "redis" and not (exc.name or "").startswith("redis."):
            raise
        raise InstallError(
            f"--broker {redacted(url)}: the Redis broker needs the redis package: pip install 'bixweb[redis]'"
        ) from None
    return RedisBroker


def open_broker(url: str, **options: object) -> Broker:
    """The broker for ``url``: ``memory://`` or ``redis://host:port/db``."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from bixweb.brokers.memory import MemoryBroker

        return MemoryBroker(url)
    if scheme in ("redis", "rediss", "unix"):
        return redis_broker_type(url)(url, **options)  # type: ignore[arg-type]
    raise ConfigError(f"unknown broker {url!r}: use memory:// or redis://host:port/db")
