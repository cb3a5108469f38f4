"""``/livez``, ``/readyz`` (and ``/healthz``) for probes, on the web service and the feed process."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis as SyncRedis

from bixweb.brokers.link import LinkLog, redacted
from bixweb.brokers.redis import RedisBroker
from bixweb.web.app import create_app
from bixweb.web.service import SERVICE
from tests.redis_server import RedisServer
from tests.support import ServerProcess, fast_settings, free_port
from tests.test_brokers import FeedProcess
from tests.test_http_bounds import connect, exchange

Factory = Callable[..., Any]
Start = Callable[..., ServerProcess]
PASSWORD = "s3cret-pass"
PUBLICATIONS = RedisBroker("redis://127.0.0.1").channel


async def until(check: Callable[[], Any], within: float, step: float = 0.1) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(step)


async def test_livez_stays_200_while_readyz_is_503_with_a_dead_exchange(aiohttp_client: Factory) -> None:
    closed = free_port()  # nothing listens: every connection to the "exchange" is refused
    settings = fast_settings(symbols=("BTCUSDT",), feed=f"binance://?url=ws://127.0.0.1:{closed}", stale_after=0.3)
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    await asyncio.sleep(0.8)
    ready = await client.get("/readyz")
    body = await ready.json()
    assert ready.status == 503 and body["status"] == "down" and body["feed"] == "down"
    assert [r["code"] for r in body["reasons"]] == ["feed_down"]
    assert "link to its source is down" in body["reasons"][0]["message"]
    alias = await client.get("/healthz")
    assert alias.status == 503 and (await alias.json())["reasons"] == body["reasons"]
    for _ in range(3):
        alive = await client.get("/livez")
        assert alive.status == 200 and (await alive.json())["status"] == "ok"
        assert alive.headers["Cache-Control"] == "no-store"


async def test_livez_is_503_only_while_shutting_down(aiohttp_client: Factory) -> None:
    app = create_app(fast_settings())
    client: TestClient[Any, Any] = await aiohttp_client(app)
    await asyncio.sleep(0.3)
    assert (await client.get("/livez")).status == 200 and (await client.get("/readyz")).status == 200
    app[SERVICE].shutting_down = True
    for path in ("/livez", "/readyz", "/healthz"):
        response = await client.get(path)
        assert response.status == 503 and (await response.json())["status"] == "shutting_down", path


async def test_probes_answer_whatever_host_and_without_room(aiohttp_server: Factory) -> None:
    server: TestServer = await aiohttp_server(create_app(fast_settings(max_connections=2, header_timeout=30.0)))
    for path in ("/livez", "/readyz", "/healthz"):
        status, _, _ = await exchange(server, f"GET {path} HTTP/1.1\r\nHost: evil.example\r\n\r\n".encode())
        assert status == 200, path  # probes name the server as they like
    held = [await connect(server, f"127.0.0.{n}") for n in (2, 3)]
    limits = server.app[SERVICE].limits

    async def counted() -> bool:
        return limits.open == 2

    await until(counted, within=5, step=0.01)
    status, _, body = await exchange(server, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (status, json.loads(body)["code"]) == (503, "server_full")
    for path in ("/livez", "/readyz", "/healthz"):
        status, headers, _ = await exchange(server, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        assert (status, headers["connection"]) == (200, "close"), path  # answered, then closed
    for _, writer in held:
        writer.close()


async def test_schemas_without_the_slash_redirects_to_the_index(aiohttp_client: Factory) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(fast_settings()))
    response = await client.get("/schemas", allow_redirects=False)
    assert response.status in (301, 308) and response.headers["Location"] == "/schemas/"
    followed = await client.get("/schemas")
    assert followed.status == 200 and "server" in await followed.json()


async def test_an_unreachable_redis_is_a_warning_with_its_address_and_readyz_says_so(
    aiohttp_client: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "bixweb")
    port = free_port()
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    client: TestClient[Any, Any] = await aiohttp_client(create_app(fast_settings(broker=url)))
    ready = await client.get("/readyz")
    body = await ready.json()
    assert ready.status == 503 and body["status"] == "down"
    reasons = {r["code"]: r["message"] for r in body["reasons"]}
    assert "broker_unreachable" in reasons and f":{port}" not in json.dumps(body)  # a public probe: no address
    assert (await client.get("/livez")).status == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "bixweb.broker"]
    assert warnings and f"cannot reach redis://***@127.0.0.1:{port}/0" in warnings[0], warnings
    assert len(warnings) == 1  # over the 5 s start-up wait: once, not once per attempt
    assert PASSWORD not in caplog.text and PASSWORD not in json.dumps(body)


def test_link_warnings_come_at_once_then_at_most_every_30_s_with_a_count() -> None:
    link = LinkLog(interval=30.0)
    told = [(t, outage) for t in range(0, 95) if (outage := link.failed(float(t), "ConnectionError")) is not None]
    assert [t for t, _ in told] == [0, 30, 60, 90]
    assert [(o.failures, o.seconds) for _, o in told] == [(1, 0.0), (31, 30.0), (61, 60.0), (91, 90.0)]
    ended = link.linked(100.0)
    assert ended is not None and (ended.failures, ended.seconds) == (95, 100.0)
    assert link.linked(101.0) is None and link.failed(200.0, "x") is not None  # a new outage: told at once


def test_urls_lose_their_user_and_password() -> None:
    assert redacted("redis://:pw@host:6379/0") == "redis://***@host:6379/0"
    assert redacted("rediss://user:pw@10.0.0.1/2") == "rediss://***@10.0.0.1/2"
    assert redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redacted("redis://127.0.0.1/0?password=pw&db=1") == "redis://127.0.0.1/0?password=***&db=***"
    assert redacted("unix:///run/redis.sock?password=pw") == "unix:///run/redis.sock?password=***"
    assert redacted("unix:///run/redis.sock") == "unix:///run/redis.sock"


async def get_json(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, json.loads(await response.text())


async def probe_rules_hold(port: int) -> bool:
    """The feed process's probe server behind the web service's door: a silent connection is closed
    at the header timeout (1 s here), probes answer under any ``Host``, ``/metrics`` does not (rebinding)."""
    silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    assert await asyncio.wait_for(silent_reader.read(), 5) == b""  # closed, unanswered
    assert time.monotonic() - started < 3.0
    silent_writer.close()
    for path, expected in (("/livez", 200), ("/readyz", 200), ("/metrics", 403)):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".encode())
        status = int((await asyncio.wait_for(reader.readline(), 5)).split()[1])
        writer.close()
        assert status == expected, (path, status)
    return True


async def test_the_feed_process_serves_its_own_probes_and_metrics(redis_server: RedisServer, tmp_path: Path) -> None:
    feed = FeedProcess(
        "--broker", redis_server.url, "--symbols", "BTCUSDT,ETHUSDT", "--tick-rate", "20", "--header-timeout", "1"
    )
    try:
        base = f"http://127.0.0.1:{feed.port}"
        assert feed.port > 0
        assert await probe_rules_hold(feed.port)
        status, body = await get_json(base + "/livez")
        assert (status, body["status"]) == (200, "ok")
        status, body = await get_json(base + "/readyz")
        assert (status, body["status"], body["feed"], body["reasons"]) == (200, "ok", "live", [])
        async with aiohttp.ClientSession() as session, session.get(base + "/metrics") as response:
            assert response.status == 200
            text = await response.text()
        assert 'bixweb_feed_state{state="live"} 1.0' in text and "bixweb_broker_up 1.0" in text
        assert "bixweb_publications_total" in text
        published = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}[
            "bixweb_publications_total"
        ]
        assert published > 0
        redis_server.stop()

        async def unready() -> bool:
            return (await get_json(base + "/readyz"))[0] == 503

        await until(unready, within=10)
        status, body = await get_json(base + "/readyz")
        assert [r["code"] for r in body["reasons"]] == ["broker_unreachable"]
        assert f"127.0.0.1:{redis_server.port}" not in body["reasons"][0]["message"]  # public: the log says where
        assert body["feed"] == "live"  # the market goes on; its publications wait in the queue
        assert (await get_json(base + "/livez"))[0] == 200
        redis_server.start()

        async def ready() -> bool:
            return (await get_json(base + "/readyz"))[0] == 200

        await until(ready, within=10)
    finally:
        assert feed.stop() == 0
    log = feed.output.decode()
    lost = [line for line in log.splitlines() if " WARNING bixweb.broker " in line]
    assert lost and f"lost redis://127.0.0.1:{redis_server.port}/0" in lost[0], log
    assert len(lost) == 1, lost  # one outage of a few seconds: one line
    assert f"INFO bixweb.broker linked to redis://127.0.0.1:{redis_server.port}/0 after" in log


def subscribed_within(redis_server: RedisServer, seconds: float) -> None:
    """Wait until a web process has subscribed to the publications (``PUBSUB NUMSUB``)."""
    client = SyncRedis.from_url(redis_server.url)
    try:
        deadline = time.monotonic() + seconds
        while dict(client.pubsub_numsub(PUBLICATIONS)).get(PUBLICATIONS.encode(), 0) < 1:
            assert time.monotonic() < deadline, "no web process subscribed"
            time.sleep(0.05)
    finally:
        client.close()


def test_a_normal_redis_start_warns_of_nothing_even_with_a_web_process_started_first(
    redis_server: RedisServer, server_process: Start
) -> None:
    """A web process that subscribes before the feed process begins must not see its first publications
    as lost; nor may one that starts in the middle of the publications (its subscription is confirmed
    before it reads the state)."""
    common = ("--broker", redis_server.url, "--symbols", "BTCUSDT,ETHUSDT")
    early: list[ServerProcess] = []
    starting = threading.Thread(target=lambda: early.append(server_process(*common)))
    starting.start()
    subscribed_within(redis_server, 15)  # the web process is subscribed and waits for the state
    feed = FeedProcess(*common, "--tick-rate", "50")
    try:
        starting.join(15)
        late = [server_process(*common) for _ in range(3)]
        time.sleep(1.0)
        for web in [*early, *late]:
            web.stop()
    finally:
        assert feed.stop() == 0
    for output in [feed.output, *(web.output for web in [*early, *late])]:
        text = output.decode()
        assert " WARNING " not in text and " ERROR " not in text, text
    assert b"the feed process began publishing" in early[0].output
