"""A bot that was away resumes at the default tick rate: the replay is paced, never refused for its size.

Issue 12, point 0: a resume with more missed trades than ``--outbox-messages``
used to be closed with 4008 before its ack. These tests run a real
``python -m bixweb`` with its default tick rate and limits, a bot subscribed to
every symbol's trades, and a reference connection that never leaves: what the
bot missed must arrive once and in order (by ``seq``, per stream, and with the
reference's trade ids), after ``recovered: true``, without a close.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import websockets
from aiohttp.test_utils import TestServer

from bixweb.client import WebSocketClient
from bixweb.web.app import create_app
from bixweb.web.connection import CLOSE_SLOW_CONSUMER, Connection
from bixweb.web.service import SERVICE
from tests.faultproxy import FaultProxy
from tests.redis_server import RedisServer
from tests.support import ServerProcess, fast_settings, unwrap
from tests.test_brokers import FeedProcess

Message = dict[str, Any]
ALL_TRADES = "symbols=*&channels=trades"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """One real server for the module, at the default tick rate, outbox and replay depth."""
    process = ServerProcess().start()
    yield process
    process.stop()


@dataclass
class Reference:
    """A connection that never leaves: every trade it saw, by stream and seq."""

    url: str
    trades: dict[str, dict[int, int]] = field(default_factory=dict)
    """stream -> seq -> trade id"""
    task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        async with websockets.connect(f"{self.url}?{ALL_TRADES}", max_size=None) as ws:
            async for frame in ws:
                for m in unwrap(json.loads(frame)):
                    if m["type"] == "trade":
                        self.trades.setdefault(f"trades:{m['symbol']}", {})[m["seq"]] = m["data"]["id"]

    def start(self) -> Reference:
        self.task = asyncio.create_task(self._read())
        return self

    def latest(self) -> dict[str, int]:
        return {stream: max(seqs) for stream, seqs in self.trades.items()}

    async def stop(self) -> None:
        assert self.task is not None
        assert not self.task.done(), self.task  # the reference itself was never closed
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def received_in_order(seen: dict[str, list[tuple[int, int]]], start: dict[str, int], reference: Reference) -> int:
    """Every stream continues from ``start`` without a hole or a repeat, with the reference's trades; the count."""
    for stream, trades in seen.items():
        seqs = [seq for seq, _ in trades]
        assert seqs == list(range(start[stream] + 1, start[stream] + 1 + len(seqs))), f"{stream}: hole or repeat"
        expected = reference.trades[stream]
        assert all(expected.get(seq, trade_id) == trade_id for seq, trade_id in trades), f"{stream}: other trades"
    return sum(len(trades) for trades in seen.values())


async def caught_up(
    seen: Callable[[], dict[str, int]], target: dict[str, int], timeout: float, closed: Callable[[], object]
) -> float:
    """Seconds until every stream of ``target`` reached its seq there; fails at once if ``closed()`` says why."""
    started = time.monotonic()
    while any(seen().get(stream, 0) < seq for stream, seq in target.items()):
        assert not closed(), f"the resumed bot was closed: {closed()}"
        assert time.monotonic() - started < timeout, "the resumed bot did not catch up"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def away_and_back(url: str, reference: Reference, away_s: float) -> dict[str, Any]:
    """Subscribe to every trade, leave for ``away_s``, resume with ``since``; check what comes back."""
    async with websockets.connect(f"{url}?{ALL_TRADES}", max_size=None) as ws:
        welcome = json.loads(await ws.recv())
        last: dict[str, int] = {}
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            for m in unwrap(json.loads(await ws.recv())):
                if m["type"] == "initial_data":
                    last.update(m["seq"])
                elif m["type"] == "trade":
                    stream = f"trades:{m['symbol']}"
                    assert m["seq"] == last[stream] + 1
                    last[stream] = m["seq"]
    await asyncio.sleep(away_s)
    seen: dict[str, list[tuple[int, int]]] = {}
    async with websockets.connect(f"{url}?channels=none", max_size=None) as ws:
        again = json.loads(await ws.recv())
        assert again["type"] == "welcome" and again["epoch"] == welcome["epoch"] and again["subscriptions"] == {}
        started = time.monotonic()
        await ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "id": "resume",
                    "symbols": ["*"],
                    "channels": ["trades"],
                    "since": {"epoch": welcome["epoch"], "seq": last},
                }
            )
        )
        missed = {stream: seq - last[stream] for stream, seq in reference.latest().items()}
        target = reference.latest()
        messages: list[Message] = []

        async def read() -> None:
            async for frame in ws:
                for m in unwrap(json.loads(frame)):
                    messages.append(m)
                    if m["type"] == "trade":
                        seen.setdefault(f"trades:{m['symbol']}", []).append((m["seq"], m["data"]["id"]))

        def latest() -> dict[str, int]:
            return {stream: trades[-1][0] for stream, trades in seen.items()}

        reader = asyncio.create_task(read())
        catch_up_s = await caught_up(latest, target, timeout=20, closed=lambda: ws.close_code)
        await asyncio.sleep(1.0)  # and live trades after the replay
        assert not reader.done(), f"the resumed bot was closed: {ws.close_code} {ws.close_reason}"
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    ack = messages[0]
    assert (ack["type"], ack["id"], ack["recovered"]) == ("ack", "resume", True), ack
    assert not [m for m in messages if m["type"] in ("initial_data", "error")]
    count = received_in_order(seen, last, reference)
    assert set(seen) == set(last)
    return {
        "away_s": away_s,
        "outbox": welcome["limits"]["outbox_messages"],
        "missed": sum(missed.values()),
        "received": count,
        "caught_up_s": round(catch_up_s, 2),
        "since_resume_s": round(time.monotonic() - started, 1),
    }


@pytest.mark.timeout(90)
async def test_a_bot_away_8_s_or_30_s_resumes_every_trade_at_the_default_tick_rate(server: ServerProcess) -> None:
    reference = Reference(server.url).start()
    await asyncio.sleep(1.0)
    short, long = await asyncio.gather(
        away_and_back(server.url, reference, 8.0), away_and_back(server.url, reference, 30.0)
    )
    await reference.stop()
    print(f"\nresumed: {short}\nresumed: {long}")
    assert short["outbox"] == 1_024  # the default
    assert short["missed"] > short["outbox"] and long["missed"] > 3 * long["outbox"]  # more than an outbox holds
    assert b"slow_consumer" not in server.output


@pytest.mark.timeout(60)
async def test_the_client_library_resumes_an_8_s_outage_without_a_hole(server: ServerProcess) -> None:
    reference = Reference(server.url).start()
    seen: list[Message] = []
    async with FaultProxy(server.port) as proxy:
        client = WebSocketClient(
            f"ws://127.0.0.1:{proxy.port}/ws",
            symbols="*",
            channels="trades",
            reconnect_initial=0.2,
            reconnect_max=0.5,
            rng=random.Random(3),
            on_message=[seen.append],
        )
        try:
            await client.connect()
            await asyncio.sleep(1.5)
            proxy.cut()
            await asyncio.sleep(8.0)
            proxy.resume()
            started = time.monotonic()
            while client.resumes < 1:
                assert time.monotonic() - started < 15, "no resume"
                await asyncio.sleep(0.05)
            target = reference.latest()

            def latest() -> dict[str, int]:
                return {s: seq for s in target if (seq := client.view.seq(s)) is not None}

            await caught_up(latest, target, timeout=20, closed=lambda: client.close_code == CLOSE_SLOW_CONSUMER)
            assert client.recovered is True and client.gaps == 0 and client.duplicates == 0
            assert client.close_code != CLOSE_SLOW_CONSUMER
        finally:
            await client.disconnect()
    await reference.stop()
    initial = next(m for m in seen if m["type"] == "initial_data")
    by_stream: dict[str, list[tuple[int, int]]] = {}
    for m in seen:
        if m["type"] == "trade":
            by_stream.setdefault(f"trades:{m['symbol']}", []).append((m["seq"], m["data"]["id"]))
    count = received_in_order(by_stream, initial["seq"], reference)
    print(f"\nclient library: {count} trades, connections {client.connections}, resumes {client.resumes}")
    assert count > 8 * 100 and client.resumes == 1 and client.connections == 2  # one reconnect: no 4008 loop
    assert b"slow_consumer" not in server.output


# -- a client that does not read -------------------------------------------------


def masked_text(payload: bytes) -> bytes:
    """One client text frame (RFC 6455: masked)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = bytes((0x81, 0x80 | size))
    elif size < 65_536:
        header = bytes((0x81, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 0x80 | 127)) + size.to_bytes(8, "big")
    return header + mask + bytes(b ^ mask[n % 4] for n, b in enumerate(payload))


def silent_resumer(port: int, resume: Message, times: int) -> socket.socket:
    """A raw client that sends ``resume`` ``times`` times and never reads a byte."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"GET /ws?channels=none HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    for _ in range(times):
        sock.sendall(masked_text(json.dumps(resume).encode()))
    return sock


@pytest.mark.timeout(60)
async def test_bots_that_stop_reading_during_a_huge_replay_are_closed_in_bounded_time_and_memory(
    aiohttp_server: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server: TestServer = await aiohttp_server(create_app(fast_settings(tick_rate=200.0, strict=False)))
    service = server.app[SERVICE]
    market = service.market
    settings = service.settings
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(server.make_url(f"/ws?{ALL_TRADES}"), max_msg_size=0) as canary,
    ):
        canary_seq: dict[str, int] = {}

        async def read_canary() -> None:
            async for frame in canary:
                for m in unwrap(json.loads(frame.data)):
                    if m["type"] == "initial_data":
                        canary_seq.update(m["seq"])
                    elif m["type"] == "trade":
                        stream = f"trades:{m['symbol']}"
                        assert m["seq"] == canary_seq[stream] + 1, stream
                        canary_seq[stream] = m["seq"]

        canary_task = asyncio.create_task(read_canary())
        while min((len(r) for r in market.recent.values()), default=0) < 900 or len(market.recent) < 20:
            await asyncio.sleep(0.1)  # a replay of 18,000 trades or more: more than the kernel's socket buffers take
        since = {
            "epoch": market.epoch,
            "seq": {stream: recent[0]["seq"] - 1 for stream, recent in market.recent.items()},
        }
        resume = {"type": "subscribe", "symbols": ["*"], "channels": ["trades"], "since": since}
        replay_size = sum(len(r) for r in market.recent.values())
        abusers: list[Connection] = []
        closed_at: dict[int, float] = {}
        owed_at_close: dict[int, int] = {}
        opened = service.opened

        def watch(conn: Connection) -> None:
            """Note when and with how much still owed each silent bot is closed."""
            close_soon = conn.close_soon

            def closing(code: int, reason: str) -> None:
                closed_at.setdefault(id(conn), round(time.monotonic() - started, 2))
                owed_at_close.setdefault(id(conn), len(conn.backlog))
                close_soon(code, reason)

            monkeypatch.setattr(conn, "close_soon", closing)
            abusers.append(conn)
            opened(conn)

        monkeypatch.setattr(service, "opened", watch)
        started = time.monotonic()
        silent = [silent_resumer(server.port or 0, resume, times) for times in (1, 1, 30)]  # 30: asks again and again
        try:
            while len(abusers) < 3:
                assert time.monotonic() - started < 5, "the silent bots did not connect"
                await asyncio.sleep(0.01)
            most = {id(conn): 0 for conn in abusers}
            while len(closed_at) < len(abusers):
                assert time.monotonic() - started < 15, "a bot that does not read was not closed"
                for conn in abusers:
                    most[id(conn)] = max(most[id(conn)], len(conn.backlog) + len(conn.outbox))
                await asyncio.sleep(0.01)
        finally:
            for sock in silent:
                sock.close()
        assert all(conn.close_code == CLOSE_SLOW_CONSUMER and conn.slow_consumer for conn in abusers)
        assert all(owed_at_close.values()), owed_at_close  # closed with their replay still unsent
        # what one of them held: the backlog's bound, one more replay (a little longer by then), two outboxes
        bound = (settings.outbox_messages + settings.replay_depth * 20) + 2 * replay_size + 2 * settings.outbox_messages
        assert max(most.values()) <= bound, (most, bound)
        await asyncio.sleep(0.5)
        assert not canary_task.done(), canary_task
        canary_task.cancel()
        await asyncio.gather(canary_task, return_exceptions=True)
    print(
        f"\nsilent resumers ({replay_size} messages each): closed 4008 after {sorted(closed_at.values())} s; "
        f"held at most {max(most.values())} messages (bound {bound}); "
        f"{sorted(owed_at_close.values())} replayed messages still owed at the close"
    )


# -- a web process that mirrors the market (--broker redis://) ----------------------


@pytest.mark.timeout(60)
async def test_a_web_process_mirroring_the_feed_replays_a_resume_larger_than_the_outbox(
    redis_server: RedisServer, server_process: Callable[..., ServerProcess]
) -> None:
    common = ("--broker", redis_server.url)
    feed = FeedProcess(*common, "--tick-rate", "50")  # ~1,300 trades a second over the 20 symbols
    try:
        web = server_process(*common)
        reference = Reference(web.url).start()
        await asyncio.sleep(1.0)
        figures = await away_and_back(web.url, reference, 3.0)
        await reference.stop()
    finally:
        feed.stop()
    print(f"\nresumed through the mirror: {figures}")
    assert figures["missed"] > 1_024
    assert b"slow_consumer" not in web.output
