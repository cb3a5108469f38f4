"""Brokers: the publication format, and a feed process with two web processes over a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
import websockets

from bixweb.brokers import Publication, decode_publication, encode_publication, open_broker
from bixweb.errors import BrokerError, ConfigError
from tests.redis_server import RedisServer
from tests.support import LISTENING, ROOT, ServerProcess, assert_valid, unwrap

Start = Callable[..., ServerProcess]
SYMBOLS = "BTCUSDT,ETHUSDT,SOLUSDT"


def test_a_publication_survives_the_trip_byte_for_byte() -> None:
    publication = Publication(
        epoch=17,
        number=42,
        parts=(
            ("trades:BTCUSDT", b'{"type":"trade","seq":1}', False),
            ("ticker:ÉTHUSDT", b"{}", True),
            ("book:X", b"", True),
        ),
    )
    assert decode_publication(encode_publication(publication)) == publication
    payload = encode_publication(publication)
    for broken in (payload[:-1], payload + b"x", b"XXXX" + payload[4:], b"", payload[:10]):
        with pytest.raises(BrokerError):
            decode_publication(broken)


def test_brokers_are_chosen_by_url() -> None:
    assert open_broker("memory://").url == "memory://"
    assert open_broker("redis://127.0.0.1:6379/0").url == "redis://127.0.0.1:6379/0"
    with pytest.raises(ConfigError, match="kafka"):
        open_broker("kafka://x")


class FeedProcess:
    """``python -m bixweb feed --broker …`` until stopped; its log is kept."""

    def __init__(self, *args: str) -> None:
        if "--port" not in args:  # its probes on a free port, not the default 8079
            args = ("--port", "0", *args)
        if "--data-dir" not in args:  # a store of its own, not the user's
            args = (*args, "--data-dir", tempfile.mkdtemp(prefix="bixweb-feed-"))
        self.port = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bixweb", "feed", *args],
            cwd=ROOT,
            env=os.environ.copy(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.output = b""
        self._seen = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._seen.wait(15):
            self.stop()
            raise RuntimeError(f"the feed process did not publish: {self.output.decode(errors='replace')}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output += line
            probes = LISTENING.search(line)
            if probes:
                self.port = int(probes.group(1))
            if b"wrote the market state" in line:
                self._seen.set()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                tail = b"\n".join(self.output.splitlines()[-40:]).decode(errors="replace")
                print(f"the feed process did not stop within 10 s of SIGTERM; its last lines:\n{tail}", file=sys.stderr)
        return self.proc.wait()


@pytest.fixture
def feed_process() -> Iterator[Callable[..., FeedProcess]]:
    started: list[FeedProcess] = []

    def start(*args: str) -> FeedProcess:
        process = FeedProcess(*args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


async def read_for(url: str, seconds: float) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    async with websockets.connect(url) as ws:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = json.loads(await asyncio.wait_for(ws.recv(), left))
            except TimeoutError:
                break
            assert_valid(frame)
            messages += unwrap(frame)
    return messages


def by_stream(messages: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(f"{m['type']}:{m['symbol']}", m["seq"]): m for m in messages if "seq" in m and "symbol" in m}


async def test_two_web_processes_send_identical_streams_and_serve_dashboards(
    redis_server: RedisServer, feed_process: Callable[..., FeedProcess], server_process: Start
) -> None:
    common = ("--broker", redis_server.url, "--symbols", SYMBOLS)
    feed_process(*common, "--tick-rate", "20")
    webs = [server_process(*common), server_process(*common)]
    query = "/ws?symbols=BTCUSDT,ETHUSDT&channels=ticker,trades,book,candles_1s"
    one, two = await asyncio.gather(*(read_for(f"ws://127.0.0.1:{w.port}{query}", 3.0) for w in webs))
    first, second = by_stream(one), by_stream(two)
    common_keys = set(first) & set(second)
    assert len(common_keys) > 50, (len(first), len(second))
    assert {m["type"] for m in (first[k] for k in common_keys)} >= {"market_update", "trade", "book", "candle"}
    for key in common_keys:
        assert first[key] == second[key], key  # same seq, same payload, same ts: numbered and encoded once
    snapshots = [m for m in one + two if m["type"] == "initial_data"]
    assert len(snapshots) == 2 and snapshots[0]["epoch"] == snapshots[1]["epoch"]
    assert all(len(s["candles"]["1s"]["BTCUSDT"]) > 0 for s in snapshots)
    for web in webs:
        async with aiohttp.ClientSession() as session:
            page = await (await session.get(f"http://127.0.0.1:{web.port}/")).text()
            socket_path = re.search(r'hx-ws:connect="([^"]+)"', page)
            assert socket_path and 'id="ticker-BTCUSDT"' in page
            async with session.ws_connect(f"http://127.0.0.1:{web.port}{socket_path.group(1)}") as ws:
                seen = ""
                deadline = time.monotonic() + 5
                while 'id="trades"' not in seen or 'id="status"' not in seen:
                    assert time.monotonic() < deadline, seen[-500:]
                    seen += (await ws.receive(timeout=5)).data
                assert "conn-up" in seen or "live" in seen


async def test_redis_away_for_5s_clients_stay_see_down_then_catch_up_without_losing_a_trade(
    redis_server: RedisServer, feed_process: Callable[..., FeedProcess], server_process: Start
) -> None:
    common = ("--broker", redis_server.url, "--symbols", SYMBOLS)
    feed_process(*common, "--tick-rate", "20")
    web = server_process(*common, "--status-interval", "0.5")  # a web process's option: the feed has none
    trades: dict[str, list[int]] = {}
    feeds: list[str] = []
    async with websockets.connect(f"ws://127.0.0.1:{web.port}/ws?symbols=BTCUSDT,ETHUSDT&channels=trades") as ws:

        async def read(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    frame = json.loads(await asyncio.wait_for(ws.recv(), left))
                    for m in unwrap(frame):
                        if m["type"] == "trade":
                            trades.setdefault(m["symbol"], []).append(m["seq"])
                        elif m["type"] == "status":
                            feeds.append(m["feed"])
                        elif m["type"] == "initial_data":
                            for stream, seq in m["seq"].items():
                                trades.setdefault(stream.split(":")[1], []).append(seq)

        await read(1.5)
        before = {symbol: len(seqs) for symbol, seqs in trades.items()}
        redis_server.stop()
        await read(5.0)
        assert feeds[-1] in ("down", "stale"), feeds  # told while Redis is away, still connected
        redis_server.start()
        await read(4.0)
        assert feeds[-1] == "live", feeds
    for symbol, seqs in trades.items():
        assert len(seqs) > before[symbol] + 20, (symbol, before[symbol], len(seqs))  # trades flow again
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{symbol}: a gap or a repeat in {seqs}"
    assert web.proc is not None and web.proc.poll() is None


async def test_the_dashboard_works_on_a_web_process_in_chromium(
    redis_server: RedisServer, feed_process: Callable[..., FeedProcess], server_process: Start, browser: Any
) -> None:
    from tests.test_browser import changes, open_page

    common = ("--broker", redis_server.url, "--symbols", SYMBOLS)
    feed_process(*common, "--tick-rate", "20")
    server_process(*common)
    web = server_process(*common)
    page, log = await open_page(browser, f"http://127.0.0.1:{web.port}/")
    await changes(lambda: page.locator("#ticker-BTCUSDT .price").get_attribute("data-price"), within=3.0)
    await changes(lambda: page.locator("#chart svg").inner_html(), within=3.0)
    await changes(lambda: page.locator("#trades tbody tr").first.get_attribute("data-id"), within=3.0)
    assert await page.locator("#chart svg .candles g").count() > 10  # the history came through Redis
    assert log.errors == []


async def desk_request(url: str, request: dict[str, Any]) -> dict[str, Any]:
    async with websockets.connect(url + "?channels=none") as ws:
        await ws.send(json.dumps({**request, "id": 1}))
        while True:
            for message in unwrap(json.loads(await asyncio.wait_for(ws.recv(), 10))):
                if message.get("id") == 1:
                    assert_valid(message)
                    return message


async def test_alerts_live_with_the_feed_process_and_every_web_process_sees_them(
    redis_server: RedisServer, feed_process: Callable[..., FeedProcess], server_process: Start, tmp_path: Any
) -> None:
    common = ("--broker", redis_server.url, "--symbols", SYMBOLS)
    feed = feed_process(*common, "--tick-rate", "20", "--data-dir", str(tmp_path / "feed"))
    one, two = server_process(*common), server_process(*common)
    async with websockets.connect(f"ws://127.0.0.1:{two.port}/ws?symbols=BTCUSDT&channels=alerts") as watcher:
        await watcher.recv()  # welcome
        created = await desk_request(
            one.url,
            {
                "type": "alert_create",
                "symbol": "BTCUSDT",
                "condition": "move",
                "pct": 0.0001,
                "window_s": 60,
                "note": "seen everywhere",
            },
        )
        assert created["type"] == "alert_rules" and created["op"] == "created", created
        rule = created["rules"][0]
        deadline = time.monotonic() + 10
        alert: dict[str, Any] | None = None
        while alert is None:
            assert time.monotonic() < deadline, "no alert on the other web process"
            for message in unwrap(json.loads(await asyncio.wait_for(watcher.recv(), 10))):
                if message["type"] == "alert":
                    assert_valid(message)
                    alert = message
    assert alert["data"]["rule_id"] == rule["id"] and alert["data"]["note"] == "seen everywhere"
    added = await desk_request(two.url, {"type": "annotation_add", "symbol": "ETHUSDT", "price": 3000, "label": "x"})
    assert added["op"] == "added", added
    bad = await desk_request(two.url, {"type": "alert_create", "symbol": "NOPEUSDT", "condition": "above", "level": 1})
    assert (bad["type"], bad["code"]) == ("error", "unknown_symbol")  # checked by the feed process's desk
    await asyncio.sleep(0.5)  # the desk's state travels through Redis
    for web in (one, two):
        listed = await desk_request(web.url, {"type": "alert_list"})
        assert listed["rules"] == [] and [a["id"] for a in listed["history"]] == [alert["data"]["id"]]
        lines = await desk_request(web.url, {"type": "annotation_list"})
        assert [a["id"] for a in lines["annotations"]] == [added["annotations"][0]["id"]]
    async with aiohttp.ClientSession() as session:  # a dashboard on the other process shows the alert
        page = await (await session.get(f"http://127.0.0.1:{one.port}/")).text()
        assert "seen everywhere" in page and "not available" not in page
    assert feed.stop() == 0  # a new feed process on the same data directory: the desk is back, for everyone
    feed_process(*common, "--tick-rate", "20", "--data-dir", str(tmp_path / "feed"))
    await asyncio.sleep(1.0)
    listed = await desk_request(two.url, {"type": "alert_list"})
    assert [a["id"] for a in listed["history"]] == [alert["data"]["id"]]
    lines = await desk_request(one.url, {"type": "annotation_list"})
    assert [a["id"] for a in lines["annotations"]] == [added["annotations"][0]["id"]]
