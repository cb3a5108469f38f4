"""Where the market state lives in Redis, and how it is written and read, one MULTI each.

Keys (``prefix`` defaults to ``bixweb``): ``{prefix}:seed`` (hash: epoch,
published), ``{prefix}:latest`` (hash: stream → message),
``{prefix}:recent:{stream}`` and ``{prefix}:closed:{stream}`` (lists), the
desk's state ``{prefix}:desk``, the feed process's liveness mark ``{prefix}:alive``
(a key that expires unless renewed), and the channel ``{prefix}:publications``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from bixweb.brokers import Publication, encode_publication
from bixweb.mirror import Seed
from bixweb.model import CHANNELS, REPLAYED, stream_key

RedisKey = bytes | bytearray | memoryview | str | int | float
RedisValue = bytes | bytearray | memoryview | str | int | float


@dataclass(frozen=True, slots=True)
class Layout:
    """The keys of one market's state under ``prefix``, and the bounds of its lists."""

    prefix: str
    symbols: tuple[str, ...]
    history_points: int
    replay_depth: int

    async def write_seed(self, client: Redis, seed: Seed, *, desk_state: bytes | None, desk_channel: str) -> None:
        """The whole state, in place of whatever was there (a restarted Redis is empty; a new epoch
        leaves nothing of the old), with the desk's state announced as changed."""
        # requests and replies in flight are not state, nor is the owner's liveness mark: keep them
        kept = (f"{self.prefix}:desk:", f"{self.prefix}:alive")
        stale = [key async for key in client.scan_iter(match=f"{self.prefix}:*") if not key.decode().startswith(kept)]
        async with client.pipeline(transaction=True) as pipe:
            if stale:
                pipe.delete(*stale)
            if seed.latest:
                mapping: dict[RedisKey, RedisValue] = {stream: data for stream, data in seed.latest.items()}
                pipe.hset(f"{self.prefix}:latest", mapping=mapping)
            for stream, messages in seed.recent.items():
                if messages:
                    pipe.rpush(f"{self.prefix}:recent:{stream}", *messages)
            for stream, candles in seed.closed.items():
                if candles:
                    pipe.rpush(f"{self.prefix}:closed:{stream}", *candles)
            pipe.hset(f"{self.prefix}:seed", mapping={"epoch": seed.epoch, "published": seed.published})
            if desk_state is not None:
                pipe.set(f"{self.prefix}:desk", desk_state)
                pipe.publish(desk_channel, "all")
            await pipe.execute()

    async def write_publication(self, client: Redis, publication: Publication, *, channel: str) -> None:
        """One flush window: what it changes of the state, and the publication on ``channel``, in one MULTI."""
        prefix = self.prefix
        async with client.pipeline(transaction=True) as pipe:
            latest: dict[RedisKey, RedisValue] = {}
            for stream, data, conflate in publication.parts:
                if stream.partition(":")[0] in REPLAYED:
                    key = f"{prefix}:recent:{stream}"
                    pipe.rpush(key, data)
                    pipe.ltrim(key, -self.replay_depth, -1)
                    continue
                latest[stream] = data
                if not conflate and stream.startswith("candles_"):  # a closed candle
                    key = f"{prefix}:closed:{stream}"
                    pipe.rpush(key, data)
                    pipe.ltrim(key, -self.history_points, -1)
            if latest:
                pipe.hset(f"{prefix}:latest", mapping=latest)
            pipe.hset(f"{prefix}:seed", mapping={"epoch": publication.epoch, "published": publication.number})
            pipe.publish(channel, encode_publication(publication))
            await pipe.execute()

    async def read_seed(self, client: Redis) -> Seed | None:
        """The owner's state, read in one MULTI so it is one moment's; None before any owner wrote one."""
        prefix = self.prefix
        lists = [
            stream_key(channel, symbol)
            for symbol in self.symbols
            for channel in CHANNELS
            if channel in REPLAYED or channel.startswith("candles_")
        ]
        async with client.pipeline(transaction=True) as pipe:
            pipe.hgetall(f"{prefix}:seed")
            pipe.hgetall(f"{prefix}:latest")
            for stream in lists:
                kind = "recent" if stream.partition(":")[0] in REPLAYED else "closed"
                pipe.lrange(f"{prefix}:{kind}:{stream}", 0, -1)
            replies: list[Any] = await pipe.execute()
        head, latest, *ranges = replies
        if not head:
            return None
        recent: dict[str, list[bytes]] = {}
        closed: dict[str, list[bytes]] = {}
        for stream, items in zip(lists, ranges, strict=True):
            if items:
                (recent if stream.partition(":")[0] in REPLAYED else closed)[stream] = list(items)
        return Seed(
            epoch=int(head[b"epoch"]),
            published=int(head[b"published"]),
            latest={key.decode(): value for key, value in latest.items()},
            recent=recent,
            closed=closed,
        )
