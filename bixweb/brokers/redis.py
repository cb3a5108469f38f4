"""``redis://``: one feed process publishes, any number of web processes follow.

Owner (feed process) side: each flush window is encoded once, queued, and
written by one task in a single MULTI: the publication on the pub/sub
channel plus the state a newcomer needs (last message per state stream,
last trades per trades stream, closed candles). When the link comes back
after a loss, the whole state is written again first (Redis may have
restarted empty), then the queue resumes.

Follower (web process) side: subscribe, then read the state; publications
numbered at or below the state's are already in it. A publication that is
not the next number (lost in an outage, or a Redis restart) or of another
epoch makes the follower read the state again; the subscriber learns what
its clients missed from :meth:`bixweb.mirror.Mirror.load`.

The keys and how the state is written and read: :mod:`bixweb.brokers.redis_state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from bixweb import protocol
from bixweb.brokers import Publication, Subscriber, decode_publication
from bixweb.brokers.link import LinkLog, redacted
from bixweb.brokers.redis_state import Layout
from bixweb.desk import Desk
from bixweb.errors import BrokerError
from bixweb.market import Message, Outgoing
from bixweb.mirror import Seed
from bixweb.retry import backoff

log = logging.getLogger("bixweb.broker")

QUEUED_PUBLICATIONS = 10_000
"""Publications held while Redis is away; older ones are dropped (followers then reload the state)."""
RETRY_INITIAL = 0.2
RETRY_MAX = 2.0
HEALTH_CHECK_S = 1.0
REQUEST_TIMEOUT_S = 5
"""Seconds a web process waits for the feed process to answer a desk request."""
REPLY_TTL_S = 30
MARK_PERIOD_S = 1.0
"""Seconds between the owner's renewals of its liveness mark (and followers' looks at it)."""
MARK_TTL_MS = 3_000
"""How long one renewal of the mark lasts: a feed process killed without a word is missed this late."""


class RedisBroker:
    def __init__(
        self,
        url: str,
        *,
        symbols: Sequence[str] = (),
        seed: Callable[[], Seed] | None = None,
        history_points: int = 100,
        replay_depth: int = 1_000,
        prefix: str = "bixweb",
    ) -> None:
        self.url = url
        self.shown = redacted(url)
        """The URL without its password: what logs and probes show."""
        self.seed_source = seed
        """Owner side: the whole state now (the market's), to write after a lost link."""
        self.prefix = prefix
        self.layout = Layout(prefix, tuple(symbols), history_points=history_points, replay_depth=replay_depth)
        self.channel = f"{prefix}:publications"
        self.desk_channel = f"{prefix}:desk:changes"
        self.requests_key = f"{prefix}:desk:requests"
        self.mark_key = f"{prefix}:alive"
        """The owner's liveness mark: renewed every :data:`MARK_PERIOD_S` while it publishes, deleted
        when it stops cleanly, gone :data:`MARK_TTL_MS` after it was killed."""
        self.owner_alive: bool | None = None
        """Follower side: whether a feed process keeps its mark (None: not looked yet)."""
        self._owner_seen = time.monotonic()
        """Follower side: when the mark was last there (or, before it ever was, when following began)."""
        self.published = 0
        """Owner side: publications made so far in this epoch."""
        self.up = False
        self._link = LinkLog()
        self.desk: Desk | None = None
        """Owner side: the alert desk whose state is kept in Redis and whose requests come through it."""
        self._desk_changes: list[str] = []
        self._queue: deque[Publication] = deque(maxlen=QUEUED_PUBLICATIONS)
        self._wake = asyncio.Event()
        self._subscribers: list[Subscriber] = []

    def _client(self) -> Redis:
        return Redis.from_url(
            self.url,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            health_check_interval=HEALTH_CHECK_S,
        )

    # -- owner side ---------------------------------------------------------

    def publish(self, outgoing: Sequence[Outgoing]) -> None:
        if not outgoing:
            return
        self.published += 1
        epoch = int(outgoing[0].message.get("epoch", 0))
        parts = tuple((item.stream, protocol.encode(item.message), item.conflate) for item in outgoing)
        self._queue.append(Publication(epoch, self.published, parts))
        self._wake.set()

    @property
    def queued(self) -> int:
        """Owner side: publications waiting to be written (while Redis is away, up to :data:`QUEUED_PUBLICATIONS`)."""
        return len(self._queue)

    def state_changed(self) -> None:
        self._reseed = True
        self._wake.set()

    def desk_changed(self, change: str) -> None:
        """Owner side: the desk changed; its state is written and announced by the publishing task."""
        self._desk_changes.append(change)
        self._wake.set()

    _reseed = False

    async def _publish_forever(self) -> None:
        assert self.seed_source is not None
        delays = backoff(RETRY_INITIAL, RETRY_MAX)
        while True:
            client = self._client()
            try:
                self._reseed = False
                seed = self.seed_source()
                await self._write_seed(client, seed)
                self._set_up(True)
                delays = backoff(RETRY_INITIAL, RETRY_MAX)
                next_mark = 0.0
                while True:
                    self._wake.clear()  # before the work: a wake during an await below is not lost
                    if time.monotonic() >= next_mark:  # a quiet market's feed process is alive too
                        await client.set(self.mark_key, int(time.time() * 1000), px=MARK_TTL_MS)
                        next_mark = time.monotonic() + MARK_PERIOD_S
                    if self._reseed:
                        self._reseed = False
                        seed = self.seed_source()
                        await self._write_seed(client, seed)
                    while self._queue:
                        publication = self._queue[0]
                        if publication.number > seed.published:
                            await self._write_publication(client, publication)
                        self._queue.popleft()
                    if self._desk_changes and self.desk is not None:
                        changes, self._desk_changes = self._desk_changes, []
                        async with client.pipeline(transaction=True) as pipe:
                            pipe.set(f"{self.prefix}:desk", self.desk.state())
                            for change in dict.fromkeys(changes):
                                pipe.publish(self.desk_channel, change)
                            await pipe.execute()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(MARK_PERIOD_S):
                            await self._wake.wait()
            except asyncio.CancelledError:
                await self._withdraw_mark()
                raise
            except (RedisError, OSError) as exc:
                self._set_up(False, exc)
                await asyncio.sleep(next(delays))
            except Exception as exc:  # a bug must not end the publishing: write the state again
                log.exception("publishing to %s failed; writing the state again", self.shown)
                self._set_up(False, exc)
                await asyncio.sleep(next(delays))
            finally:
                await client.aclose()

    async def _withdraw_mark(self) -> None:
        """Owner side, stopping cleanly: web processes learn at once that no feed process publishes."""
        client = self._client()  # the publishing connection may be mid-command: a fresh one
        try:
            async with asyncio.timeout(1.0):
                await client.delete(self.mark_key)
        except (RedisError, OSError):
            pass  # Redis is away: the mark lapses on its own
        finally:
            await client.aclose()

    async def _write_seed(self, client: Redis, seed: Seed) -> None:
        desk_state = self.desk.state() if self.desk is not None else None
        await self.layout.write_seed(client, seed, desk_state=desk_state, desk_channel=self.desk_channel)
        log.info("wrote the market state to %s (epoch %d, publication %d)", self.shown, seed.epoch, seed.published)

    async def _write_publication(self, client: Redis, publication: Publication) -> None:
        await self.layout.write_publication(client, publication, channel=self.channel)

    async def _answer_forever(self) -> None:
        """Owner side: carry out the desk requests web processes forward (one at a time, in order)."""
        assert self.desk is not None
        delays = backoff(RETRY_INITIAL, RETRY_MAX)
        while True:
            client = self._client()
            try:
                while True:
                    item = await client.blpop([self.requests_key], timeout=1)
                    delays = backoff(RETRY_INITIAL, RETRY_MAX)
                    if item is None:
                        continue
                    try:
                        request = orjson.loads(item[1])
                        reply_to = str(request["reply_to"])
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        log.error("dropped an unreadable desk request")
                        continue
                    if int(request.get("deadline_ms", 0)) < time.time() * 1000:
                        continue  # the web process has given up on it: carrying it out would surprise
                    answer = self.desk.answer(request)
                    async with client.pipeline(transaction=True) as pipe:
                        pipe.rpush(reply_to, orjson.dumps(answer))
                        pipe.expire(reply_to, REPLY_TTL_S)
                        await pipe.execute()
            except (RedisError, OSError):
                await asyncio.sleep(next(delays))
            except Exception:  # a bad request or a bug must not end the feed process
                log.exception("answering a desk request failed")
                await asyncio.sleep(next(delays))
            finally:
                await client.aclose()

    # -- follower side ------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    _requests: Redis | None = None

    async def forward(self, request: Message) -> Message:
        """Follower side: hand a desk request to the feed process; its answer, or TimeoutError."""
        if self._requests is None:
            self._requests = self._client()
        reply_to = f"{self.prefix}:desk:reply:{secrets.token_hex(8)}"
        deadline_ms = int(time.time() * 1000 + REQUEST_TIMEOUT_S * 1000)
        await self._requests.rpush(
            self.requests_key, orjson.dumps({**request, "reply_to": reply_to, "deadline_ms": deadline_ms})
        )
        item = await self._requests.blpop([reply_to], timeout=REQUEST_TIMEOUT_S)
        if item is None:
            raise TimeoutError("no answer from the feed process")
        answer: Message = orjson.loads(item[1])
        return answer

    async def read_seed(self, client: Redis) -> Seed | None:
        """The owner's state, read in one MULTI so it is one moment's; None before any owner wrote one."""
        return await self.layout.read_seed(client)

    async def _follow_forever(self) -> None:
        delays = backoff(RETRY_INITIAL, RETRY_MAX)
        while True:
            client = self._client()
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(self.channel, self.desk_channel)
                await self._confirmed(pubsub)
                seed = await self.read_seed(client)
                if seed is not None:
                    self._seed(seed)
                await self._desk_state(client, None)
                self._set_up(True)
                delays = backoff(RETRY_INITIAL, RETRY_MAX)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=HEALTH_CHECK_S)
                    if message is None or message.get("type") != "message":
                        continue
                    if message.get("channel") == self.desk_channel.encode():
                        change = message["data"].decode()
                        await self._desk_state(client, None if change == "all" else change)
                        continue
                    try:
                        publication = decode_publication(message["data"])
                    except BrokerError as exc:
                        log.error("dropped a publication: %s", exc)
                        continue
                    if seed is not None and publication.epoch == seed.epoch:
                        if publication.number <= self._number:
                            continue  # already in the state read
                        if publication.number == self._number + 1:
                            self._number = publication.number
                            self._deliver(publication)
                            continue
                    self._log_reload(seed, publication)
                    seed = await self.read_seed(client)
                    if seed is not None:
                        self._seed(seed)
                        if publication.epoch == seed.epoch and publication.number == self._number + 1:
                            self._number = publication.number
                            self._deliver(publication)
            except (RedisError, OSError) as exc:
                self._set_up(False, exc)
                await asyncio.sleep(next(delays))
            except Exception as exc:  # a bug must not end the following: start over from the state
                log.exception("following %s failed; reading the state again", self.shown)
                self._set_up(False, exc)
                await asyncio.sleep(next(delays))
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                await client.aclose()

    _number = 0

    async def _watch_owner_forever(self) -> None:
        """Follower side: look at the owner's liveness mark once every :data:`MARK_PERIOD_S`, on a
        connection of its own (off the fan-out path); an unreachable Redis is the follower's to report."""
        self._owner_seen = time.monotonic()
        while True:
            client = self._client()
            try:
                while True:
                    alive = bool(await client.exists(self.mark_key))
                    self._owner_changed(alive, time.monotonic())
                    await asyncio.sleep(MARK_PERIOD_S)
            except (RedisError, OSError):
                await asyncio.sleep(MARK_PERIOD_S)
            finally:
                await client.aclose()

    def _owner_changed(self, alive: bool, now: float) -> None:
        if alive:
            self._owner_seen = now
        if alive == self.owner_alive:
            return
        if alive:
            log.info("a feed process publishes to %s", self.shown)
        elif self.owner_alive is None:  # no feed process yet: normal where nothing orders the starts
            log.info("no feed process publishes to %s yet; waiting for one", self.shown)
        else:
            log.warning("the feed process stopped publishing to %s (its liveness mark lapsed)", self.shown)
        self.owner_alive = alive

    async def _confirmed(self, pubsub: Any) -> None:
        """Wait until Redis confirms both subscriptions. ``subscribe`` only sends the command: a
        state read on the other connection could be answered first, and a publication made
        between the two would be in neither (the follower then saw a gap on every start)."""
        confirmed = 0
        async with asyncio.timeout(REQUEST_TIMEOUT_S):  # TimeoutError is an OSError: the link is retried
            while confirmed < 2:
                message = await pubsub.get_message(timeout=HEALTH_CHECK_S)
                if message is not None and message.get("type") == "subscribe":
                    confirmed += 1

    def _log_reload(self, seed: Seed | None, publication: Publication) -> None:
        """Why the state is read again: a feed process that began (or began anew) is news; lost
        publications within one epoch are trouble."""
        if seed is None:
            log.info("the feed process began publishing (epoch %d): reading its state", publication.epoch)
        elif publication.epoch != seed.epoch:
            log.info("a new epoch %d (the feed process restarted): reading its state", publication.epoch)
        else:
            log.warning(
                "publication %d of epoch %d does not follow %d: %d lost; reading the state again",
                publication.number,
                publication.epoch,
                self._number,
                publication.number - self._number - 1,
            )

    async def _desk_state(self, client: Redis, change: str | None) -> None:
        state = await client.get(f"{self.prefix}:desk")
        if state is None:
            return
        if isinstance(state, str):
            state = state.encode()
        for subscriber in self._subscribers:
            subscriber.on_desk(state, change)

    def _seed(self, seed: Seed) -> None:
        self._number = seed.published
        for subscriber in self._subscribers:
            subscriber.on_seed(seed)

    def _deliver(self, publication: Publication) -> None:
        messages = [(stream, orjson.loads(data)) for stream, data, _ in publication.parts]
        for subscriber in self._subscribers:
            subscriber.on_publication(publication.parts, messages)

    def _set_up(self, up: bool, error: BaseException | None = None) -> None:
        """Tell the subscribers of a change; log it: a WARNING at once for a lost or unmade link,
        then one every :data:`~bixweb.brokers.link.LINK_WARNING_INTERVAL` while it lasts."""
        now = time.monotonic()
        if up:
            ended = self._link.linked(now)
            if ended is not None:
                log.info("linked to %s after %.0f s (%d failed attempts)", self.shown, ended.seconds, ended.failures)
            elif not self.up:
                log.info("linked to %s", self.shown)
        else:
            outage = self._link.failed(now, f"{type(error).__name__}: {error}" if error else "-")
            if outage is not None and outage.failures == 1:
                lost = "lost" if self.up else "cannot reach"
                log.warning("%s %s (%s); retrying", lost, self.shown, outage.error)
            elif outage is not None:
                log.warning(
                    "still cannot reach %s after %.0f s (%d attempts; last: %s); retrying",
                    self.shown,
                    outage.seconds,
                    outage.failures,
                    outage.error,
                )
            else:
                log.debug("still no %s: %s", self.shown, error)
        if up != self._told:  # each change, and the first outcome: a link never made is news too
            self._told = up
            for subscriber in self._subscribers:
                subscriber.on_link(up)
        self.up = up

    _told: bool | None = None

    @property
    def problem(self) -> str:
        """Why the link is not up, or (a follower linked to Redis) why no feed process is there to
        follow, for ``/readyz``; empty while all is well."""
        if self.up:
            if self.seed_source is None and self.owner_alive is False:
                silent = time.monotonic() - self._owner_seen
                return f"no feed process has published to {self.shown} for {silent:.0f} s"
            return ""
        if not self._link.error:
            return f"not linked to {self.shown} yet"
        return f"cannot reach {self.shown}: {self._link.error}"

    async def run(self) -> None:
        """Publish if this process owns the market (it has a seed source), else follow."""
        # a task group, not gather: cancelled, it waits for every task to finish (the owner's
        # withdraws its mark), where gather ends as soon as one of them is cancelled
        async with asyncio.TaskGroup() as group:
            if self.seed_source is not None:
                group.create_task(self._publish_forever())
                if self.desk is not None:
                    group.create_task(self._answer_forever())
            else:
                group.create_task(self._follow_forever())
                group.create_task(self._watch_owner_forever())
