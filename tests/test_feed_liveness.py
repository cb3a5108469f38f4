"""Whether a feed process publishes to Redis, as web processes learn it (its liveness mark), the
feed's probe server under a burst of connections, and the link warnings of a flapping link."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from redis.asyncio import Redis

from bixweb.brokers.link import LinkLog
from bixweb.brokers.redis import MARK_TTL_MS, RedisBroker
from bixweb.mirror import Seed
from tests.redis_server import RedisServer
from tests.support import ServerProcess
from tests.test_brokers import FeedProcess

Start = Callable[..., ServerProcess]


async def readyz(port: int) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/readyz") as response:
        return response.status, json.loads(await response.text())


async def within(seconds: float, check: Callable[[], Any]) -> float:
    """Poll ``check`` until it holds; how long that took (fails after ``seconds``)."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_a_web_process_says_feed_down_while_no_feed_process_publishes_to_its_redis(
    redis_server: RedisServer, server_process: Start
) -> None:
    common = ("--broker", redis_server.url, "--symbols", "BTCUSDT")
    web = server_process(*common)  # nothing orders the starts: no feed process yet
    status, body = await readyz(web.port)
    assert (status, body["status"], body["feed"]) == (503, "down", "down"), body
    assert [r["code"] for r in body["reasons"]] == ["feed_down"]
    assert "no feed process publishes to the broker" in body["reasons"][0]["message"]
    assert "redis://" not in json.dumps(body) and f":{redis_server.port}" not in json.dumps(body)  # the log says where
    start_log = web.output.decode()
    assert " WARNING " not in start_log, start_log  # Redis is there: waiting for the feed is normal
    assert " INFO bixweb.app no market state from" in start_log, start_log

    async def ready() -> bool:
        return (await readyz(web.port))[0] == 200

    async def feed_down() -> bool:
        status, body = await readyz(web.port)
        return status == 503 and [r["code"] for r in body["reasons"]] == ["feed_down"]

    feed = FeedProcess(*common, "--tick-rate", "20")
    try:
        await within(10, ready)
        feed.proc.kill()  # kill -9: no word to anyone; its mark lapses
        feed.proc.wait()
        missed = await within(MARK_TTL_MS / 1000 + 3, feed_down)
        feed = FeedProcess(*common, "--tick-rate", "20")
        await within(10, ready)
        feed.stop()  # a clean stop withdraws the mark: no TTL to wait for
        withdrawn = await within(2.5, feed_down)
    finally:
        feed.stop()
    print(f"feed_down {missed:.1f} s after kill -9, {withdrawn:.1f} s after a clean stop")
    assert "the feed process stopped publishing to" in web.output.decode()


async def test_the_mark_of_a_quiet_feed_process_lasts_and_a_follower_sees_it_go(redis_server: RedisServer) -> None:
    owner = RedisBroker(redis_server.url, seed=lambda: Seed(epoch=1, published=0))
    follower = RedisBroker(redis_server.url)
    client = Redis.from_url(redis_server.url)
    tasks = [asyncio.create_task(owner.run()), asyncio.create_task(follower.run())]
    try:
        await asyncio.sleep(MARK_TTL_MS / 1000 + 1)  # longer than one renewal lasts; nothing published
        assert await client.pttl(owner.mark_key) > 0
        assert follower.up and follower.owner_alive and follower.problem == ""
        tasks[0].cancel()
        await asyncio.gather(tasks[0], return_exceptions=True)
        assert not await client.exists(owner.mark_key)  # withdrawn on a clean stop

        async def orphaned() -> bool:
            return follower.problem.startswith(f"no feed process has published to {redis_server.url}")

        await within(2.5, orphaned)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.aclose()


def slowest_connect(port: int, count: int) -> float:
    """Open ``count`` connections at once (non-blocking: all SYNs before any handshake completes);
    the seconds the slowest handshake took."""
    started = time.monotonic()
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        sockets.append(sock)
    pending, slowest = set(sockets), 0.0
    while pending and time.monotonic() - started < 5:
        _, writable, _ = select.select([], list(pending), [], 0.05)
        pending.difference_update(writable)
        slowest = time.monotonic() - started
    for sock in sockets:
        sock.close()
    assert not pending
    return slowest


def test_the_feed_probe_server_takes_a_burst_of_connections_without_syn_stalls(redis_server: RedisServer) -> None:
    feed = FeedProcess("--broker", redis_server.url, "--symbols", "BTCUSDT")
    try:
        for _ in range(3):
            slowest = slowest_connect(feed.port, 80)
            assert slowest < 0.9, slowest  # a SYN dropped from a full listen queue is sent again after 1 s
    finally:
        assert feed.stop() == 0


def test_a_flapping_link_warns_at_most_once_per_interval() -> None:
    link = LinkLog(interval=30.0)
    warned = []
    for cycle in range(20):  # lost, back 2 s later, lost again 1 s after that, ...
        t = cycle * 3.0
        if link.failed(t, "ConnectionError") is not None:
            warned.append(t)
        link.linked(t + 2.0)
    assert warned == [0.0, 30.0]
    link.linked(100.0)
    assert link.failed(160.0, "x") is not None  # up for longer than the interval: a new outage is news at once
