"""``/ws`` on the real in-process app with the seeded simulated market."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from bixweb import assets
from bixweb.web.app import create_app
from bixweb.web.service import SERVICE
from tests.support import PausingFeed, assert_valid, fast_settings, unwrap

Message = dict[str, Any]
Factory = Callable[..., Any]


async def make_client(aiohttp_client: Factory, **overrides: Any) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(fast_settings(**overrides)))
    return client


async def next_messages(ws: aiohttp.ClientWebSocketResponse, timeout: float = 3.0) -> list[Message]:
    """The messages of the next frame, validated, batches unwrapped."""
    msg = await ws.receive(timeout=timeout)
    assert msg.type is WSMsgType.TEXT, msg
    frame = json.loads(msg.data)
    assert_valid(frame)
    return unwrap(frame)


async def collect(
    ws: aiohttp.ClientWebSocketResponse, until: Callable[[list[Message]], bool], timeout: float = 5.0
) -> list[Message]:
    seen: list[Message] = []
    deadline = time.monotonic() + timeout
    while not until(seen):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; saw {[m['type'] for m in seen][-20:]}"
        seen.extend(await next_messages(ws, left))
    return seen


async def live(ws: aiohttp.ClientWebSocketResponse) -> list[Message]:
    """Read until the snapshot and a first live update have arrived (the market has ticked)."""
    return await collect(
        ws, lambda ms: any(m["type"] == "initial_data" for m in ms) and any(m["type"] == "market_update" for m in ms)
    )


async def test_default_connection_gets_welcome_snapshot_then_updates_for_all_symbols(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client)
    symbols = set(client.app[SERVICE].market.symbols)
    async with client.ws_connect("/ws") as ws:
        (welcome,) = await next_messages(ws)
        assert welcome["type"] == "welcome" and welcome["protocol"] == 1
        assert set(welcome["symbols"]) == symbols and welcome["subscriptions"] == {"ticker": sorted(symbols)}
        assert welcome["heartbeat_s"] <= 30
        (snapshot,) = await next_messages(ws)
        assert snapshot["type"] == "initial_data" and set(snapshot["tickers"]) == symbols
        seen = await collect(ws, lambda ms: {m["symbol"] for m in ms if m["type"] == "market_update"} == symbols, 2.0)
        assert {m["type"] for m in seen} <= {"market_update", "status"}
        for m in seen:
            if m["type"] == "market_update":
                assert m["seq"] > snapshot["seq"][f"ticker:{m['symbol']}"]


async def test_query_parameters_choose_the_initial_subscription(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client)
    async with client.ws_connect("/ws?symbols=BTCUSDT,ETHUSDT&channels=ticker,trades") as ws:
        (welcome,) = await next_messages(ws)
        assert welcome["subscriptions"] == {"ticker": ["BTCUSDT", "ETHUSDT"], "trades": ["BTCUSDT", "ETHUSDT"]}
        (snapshot,) = await next_messages(ws)
        assert set(snapshot["tickers"]) == set(snapshot["trades"]) == {"BTCUSDT", "ETHUSDT"}
        seen = await collect(ws, lambda ms: sum(m["type"] == "trade" for m in ms) >= 5)
        assert {m.get("symbol") for m in seen if m["type"] != "status"} <= {"BTCUSDT", "ETHUSDT"}


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("symbols=NOPEUSDT", "unknown_symbol"),
        ("channels=ticker,news", "unknown_channel"),
        ("channels=ticker,trades,book,candles_1s,candles_1m,candles_5m,candles_1h", "too_many_subscriptions"),
    ],
)
async def test_a_bad_query_is_refused_before_the_upgrade(aiohttp_client: Factory, query: str, code: str) -> None:
    client = await make_client(aiohttp_client, max_subscriptions=100)
    response = await client.get(
        f"/ws?{query}",
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert response.status == 400
    assert (await response.json())["code"] == code


async def test_subscribe_and_unsubscribe_are_acknowledged_with_their_ids(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client)
    async with client.ws_connect("/ws?channels=ticker&symbols=ETHUSDT") as ws:
        await live(ws)
        await ws.send_json(
            {"type": "subscribe", "id": "s-1", "symbols": ["SOLUSDT"], "channels": ["trades", "book", "candles_1m"]}
        )
        seen = await collect(ws, lambda ms: any(m["type"] == "initial_data" for m in ms))
        ack = next(m for m in seen if m["type"] == "ack")
        assert ack["id"] == "s-1" and ack["op"] == "subscribe" and "recovered" not in ack
        assert ack["subscriptions"] == {
            "book": ["SOLUSDT"],
            "candles_1m": ["SOLUSDT"],
            "ticker": ["ETHUSDT"],
            "trades": ["SOLUSDT"],
        }
        snap = next(m for m in seen if m["type"] == "initial_data")
        assert seen.index(ack) < seen.index(snap)
        assert set(snap["seq"]) == {"trades:SOLUSDT", "book:SOLUSDT", "candles_1m:SOLUSDT"}
        assert "tickers" not in snap and set(snap["books"]) == {"SOLUSDT"}
        assert len(snap["candles"]["1m"]["SOLUSDT"]) == 100

        await ws.send_json({"type": "unsubscribe", "id": 2, "symbols": ["ETHUSDT"], "channels": ["ticker"]})
        seen = await collect(ws, lambda ms: any(m["type"] == "ack" for m in ms))
        ack = next(m for m in seen if m["type"] == "ack")
        assert ack["id"] == 2 and ack["op"] == "unsubscribe" and "ticker" not in ack["subscriptions"]
        after = await collect(ws, lambda ms: sum(m["type"] == "book" for m in ms) >= 10)
        assert not [m for m in after if m["type"] == "market_update"]


async def test_trades_book_and_candles_arrive_for_that_symbol_only_with_contiguous_seq(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client, tick_rate=40.0)
    async with client.ws_connect("/ws?channels=ticker&symbols=BTCUSDT") as ws:
        await collect(ws, lambda ms: any(m["type"] == "initial_data" for m in ms))
        await ws.send_json(
            {
                "type": "subscribe",
                "id": 1,
                "symbols": ["LINKUSDT"],
                "channels": ["trades", "book", "candles_1s", "candles_1m"],
            }
        )
        seen = await collect(ws, lambda ms: sum(m["type"] == "trade" for m in ms) >= 40, timeout=8.0)
    snap = next(m for m in seen if m["type"] == "initial_data")
    position = dict(snap["seq"])
    position["ticker:BTCUSDT"] = None  # the first initial_data set it; only contiguity matters below
    streams: dict[str, list[int]] = {}
    before_snapshot = True
    for m in seen:
        if m is snap:
            before_snapshot = False
            continue
        if m["type"] in ("ack", "status") or before_snapshot:
            continue
        channel = {"market_update": "ticker", "trade": "trades", "book": "book"}.get(m["type"])
        channel = channel or f"candles_{m['interval']}"
        streams.setdefault(f"{channel}:{m['symbol']}", []).append(m["seq"])
    assert set(streams) == {
        "ticker:BTCUSDT",
        "trades:LINKUSDT",
        "book:LINKUSDT",
        "candles_1s:LINKUSDT",
        "candles_1m:LINKUSDT",
    }
    for stream, seqs in streams.items():
        start = position[stream]
        expected_first = seqs[0] if start is None else start + 1
        assert seqs == list(range(expected_first, expected_first + len(seqs))), stream


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{oops", "invalid_json"),
        ('{"type": "teleport", "id": 5}', "unknown_type"),
        ('{"type": "subscribe", "id": 5, "symbols": ["NOPEUSDT"], "channels": ["ticker"]}', "unknown_symbol"),
        ('{"type": "subscribe", "id": 5, "symbols": ["BTCUSDT"], "channels": ["gossip"]}', "unknown_channel"),
        ('{"type": "subscribe", "id": 5, "symbols": "BTCUSDT", "channels": ["ticker"]}', "invalid_message"),
    ],
)
async def test_bad_messages_get_an_error_and_the_connection_stays_up(
    aiohttp_client: Factory, frame: str, code: str
) -> None:
    client = await make_client(aiohttp_client)
    async with client.ws_connect("/ws?symbols=BTCUSDT") as ws:
        await collect(ws, lambda ms: any(m["type"] == "initial_data" for m in ms))
        await ws.send_str(frame)
        seen = await collect(ws, lambda ms: any(m["type"] == "error" for m in ms))
        error = next(m for m in seen if m["type"] == "error")
        assert error["code"] == code
        if code != "invalid_json":
            assert error["id"] == 5
        if code == "invalid_message":
            assert error["path"] == "$.symbols"
        await ws.send_json({"type": "ping", "id": "still-there"})
        seen = await collect(ws, lambda ms: any(m["type"] == "pong" for m in ms))
        assert next(m for m in seen if m["type"] == "pong")["id"] == "still-there"


async def test_a_refused_subscribe_changes_nothing(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client, max_subscriptions=3)
    async with client.ws_connect("/ws?symbols=BTCUSDT") as ws:
        await collect(ws, lambda ms: any(m["type"] == "initial_data" for m in ms))
        await ws.send_json(
            {"type": "subscribe", "id": 1, "symbols": ["ETHUSDT", "SOLUSDT", "BNBUSDT"], "channels": ["trades"]}
        )
        seen = await collect(ws, lambda ms: any(m["type"] == "error" for m in ms))
        assert next(m for m in seen if m["type"] == "error")["code"] == "too_many_subscriptions"
        await ws.send_json({"type": "subscribe", "id": 2, "symbols": ["ETHUSDT"], "channels": ["book"]})
        seen = await collect(ws, lambda ms: any(m["type"] == "ack" for m in ms))
        assert next(m for m in seen if m["type"] == "ack")["subscriptions"] == {
            "book": ["ETHUSDT"],
            "ticker": ["BTCUSDT"],
        }


async def test_binary_frames_are_refused_with_an_error(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client)
    async with client.ws_connect("/ws?symbols=BTCUSDT") as ws:
        await ws.send_bytes(b'{"type": "ping"}')
        seen = await collect(ws, lambda ms: any(m["type"] == "error" for m in ms))
        assert next(m for m in seen if m["type"] == "error")["code"] == "binary_not_supported"


async def test_an_oversized_frame_closes_that_socket_with_1009_and_no_other(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client, max_message_bytes=1024)
    async with client.ws_connect("/ws?symbols=BTCUSDT") as healthy, client.ws_connect("/ws?symbols=BTCUSDT") as big:
        await collect(big, lambda ms: any(m["type"] == "initial_data" for m in ms))
        await big.send_str(json.dumps({"type": "ping", "id": "x" * 2000}))
        while True:
            msg = await big.receive(timeout=3)
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
                break
        assert big.close_code == 1009
        seen = await collect(healthy, lambda ms: sum(m["type"] == "market_update" for m in ms) >= 5)
        assert seen


async def test_a_flood_gets_rate_limited_then_closed_with_1008(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client, max_messages_per_s=5.0)
    bystander = await client.ws_connect("/ws?symbols=ETHUSDT&channels=trades")
    async with client.ws_connect("/ws?symbols=BTCUSDT") as ws:
        for n in range(40):
            await ws.send_json({"type": "ping", "id": n})
        codes = []
        while True:
            msg = await ws.receive(timeout=3)
            if msg.type is not WSMsgType.TEXT:
                break
            codes += [m.get("code") for m in unwrap(json.loads(msg.data)) if m["type"] == "error"]
        assert ws.close_code == 1008
        assert codes and set(codes) == {"rate_limited"}
    seen = await collect(bystander, lambda ms: sum(m["type"] == "trade" for m in ms) >= 3)  # others keep their data
    assert not bystander.closed and seen
    await bystander.close()


def stalled_reader(port: int) -> socket.socket:
    """A raw WebSocket client that subscribes to everything and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"GET /ws?channels=ticker,trades,book,candles_1s,candles_1m,candles_5m,candles_1h HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    return sock


async def latencies(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> tuple[list[float], float, float]:
    """Ticker latencies (ms) over ``seconds``; the share of the market's ticker updates that arrived
    (by ``seq``: conflation for a reader that fell behind shows as gaps); and the market's pace, its
    updates per second (by ``seq`` too), to compare within one run, whatever the machine's speed."""
    out: list[float] = []
    seqs: dict[str, list[int]] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for m in await next_messages(ws):
            if m["type"] == "market_update":
                out.append(time.time() * 1000 - m["ts"])
                seqs.setdefault(m["symbol"], []).append(m["seq"])
    offered = sum(s[-1] - s[0] + 1 for s in seqs.values())
    return out, len(out) / offered if offered else 0.0, offered / seconds


async def test_a_client_that_never_reads_does_not_delay_a_healthy_one(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client, tick_rate=50.0, outbox_messages=64, strict=False)
    service = client.app[SERVICE]
    async with client.ws_connect("/ws") as healthy:
        await collect(healthy, lambda ms: any(m["type"] == "initial_data" for m in ms))
        baseline, share_base, pace_base = await latencies(healthy, 1.5)
        assert client.port is not None
        stalled = [stalled_reader(client.port) for _ in range(3)]
        try:
            with_stalled, share_stalled, pace_stalled = await latencies(healthy, 4.0)
            # the stalled readers' outboxes overflowed and the server dropped them
            deadline = time.monotonic() + 5.0
            while len(service.connections) > 1 and time.monotonic() < deadline:
                await next_messages(healthy)
            assert len(service.connections) == 1
        finally:
            for sock in stalled:
                sock.close()
    p99_base = statistics.quantiles(baseline, n=100)[98]
    p99_stalled = statistics.quantiles(with_stalled, n=100)[98]
    assert share_stalled >= 0.8 * share_base, (share_base, share_stalled)  # not conflated for their sake
    assert pace_stalled >= 0.5 * pace_base, (pace_base, pace_stalled)  # nor did the market stall for them
    assert p99_stalled <= max(2 * p99_base, p99_base + 50), (p99_base, p99_stalled)


async def test_status_is_sent_periodically_with_feed_state(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client, status_interval=0.2)
    async with client.ws_connect("/ws?symbols=BTCUSDT") as ws:
        seen = await collect(ws, lambda ms: sum(m["type"] == "status" for m in ms) >= 2)
    status = [m for m in seen if m["type"] == "status"][-1]
    assert status["feed"] == "live" and status["clients"] == 1
    assert abs(status["ts"] - time.time() * 1000) < 5_000


async def test_the_feed_turns_stale_when_it_stops_producing(aiohttp_client: Factory) -> None:
    class SilentFeed:
        async def events(self):  # type: ignore[no-untyped-def]
            await asyncio.Event().wait()
            yield []

    app = create_app(fast_settings(status_interval=0.2), feed=SilentFeed())
    client = await aiohttp_client(app)
    async with client.ws_connect("/ws?symbols=BTCUSDT") as ws:
        seen = await collect(ws, lambda ms: any(m["type"] == "status" for m in ms))
    assert next(m for m in seen if m["type"] == "status")["feed"] == "stale"


async def test_schemas_are_served_read_only_with_an_index(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client)
    index = await (await client.get("/schemas/")).json()
    assert set(index["server"]) >= {"welcome", "trade", "batch"}
    assert set(index["client"]) == set(assets.CLIENT_MESSAGES)
    response = await client.get(index["server"]["trade"])
    assert response.status == 200 and response.content_type == "application/schema+json"
    assert (await response.json())["$id"].endswith("/schemas/server/trade.json")
    assert (await client.get("/schemas/../pyproject.json")).status == 404
    assert (await client.post("/schemas/server/trade.json")).status == 405


async def test_the_server_pings_within_the_heartbeat_interval(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client, heartbeat=0.3)
    async with client.ws_connect("/ws?symbols=BTCUSDT", autoping=False) as ws:
        started = time.monotonic()
        while True:
            msg = await ws.receive(timeout=2.0)
            if msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
                break
        assert time.monotonic() - started < 1.0


async def test_a_peer_that_does_not_answer_pings_is_closed(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client, heartbeat=0.3)
    service = client.app[SERVICE]
    assert client.port is not None
    sock = socket.create_connection(("127.0.0.1", client.port))
    try:
        sock.sendall(
            b"GET /ws?symbols=BTCUSDT HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        deadline = time.monotonic() + 3.0
        while not service.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(service.connections) == 1
        while service.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not service.connections, "the silent peer is still connected"
    finally:
        sock.close()


async def test_resume_replays_missed_trades_with_their_seq(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client, tick_rate=40.0)
    async with client.ws_connect("/ws?symbols=BTCUSDT&channels=trades,ticker") as ws:
        seen = await collect(ws, lambda ms: sum(m["type"] == "trade" for m in ms) >= 20)
    trades = [m for m in seen if m["type"] == "trade"]
    epoch = trades[0]["epoch"]
    last_trade = trades[-1]["seq"] - 10  # pretend the last ten were lost
    last_ticker = max(m["seq"] for m in seen if m["type"] == "market_update")
    await asyncio.sleep(0.3)  # the market moves on meanwhile
    async with client.ws_connect("/ws?channels=none") as ws:
        (welcome,) = await next_messages(ws)
        assert welcome["type"] == "welcome" and welcome["subscriptions"] == {} and welcome["epoch"] == epoch
        await ws.send_json(
            {
                "type": "subscribe",
                "id": "r",
                "symbols": ["BTCUSDT"],
                "channels": ["trades", "ticker"],
                "since": {"epoch": epoch, "seq": {"trades:BTCUSDT": last_trade, "ticker:BTCUSDT": last_ticker}},
            }
        )
        resumed = await collect(ws, lambda ms: sum(m["type"] == "trade" for m in ms) >= 30)
    ack = resumed[0]
    assert ack["type"] == "ack" and ack["recovered"] is True
    assert not [m for m in resumed if m["type"] == "initial_data"]
    seqs = [m["seq"] for m in resumed if m["type"] == "trade"]
    assert seqs == list(range(last_trade + 1, last_trade + 1 + len(seqs)))
    ids = [m["data"]["id"] for m in resumed if m["type"] == "trade"]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert [m["data"]["id"] for m in trades[-10:]] == ids[:10]


async def test_a_resume_from_another_epoch_gets_a_fresh_snapshot(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client)
    async with client.ws_connect("/ws?channels=none") as ws:
        (welcome,) = await next_messages(ws)
        await ws.send_json(
            {
                "type": "subscribe",
                "id": 1,
                "symbols": ["ETHUSDT"],
                "channels": ["trades", "book"],
                "since": {"epoch": welcome["epoch"] - 1, "seq": {"trades:ETHUSDT": 5, "book:ETHUSDT": 5}},
            }
        )
        seen = await collect(ws, lambda ms: any(m["type"] == "initial_data" for m in ms))
    ack = next(m for m in seen if m["type"] == "ack")
    snapshot = next(m for m in seen if m["type"] == "initial_data")
    assert ack["recovered"] is False and snapshot["recovered"] is False
    assert snapshot["epoch"] == welcome["epoch"] and set(snapshot["seq"]) == {"trades:ETHUSDT", "book:ETHUSDT"}


async def test_book_messages_carry_a_checksum_of_their_levels(aiohttp_client: Factory) -> None:
    from bixweb.protocol import book_checksum

    client = await make_client(aiohttp_client)
    async with client.ws_connect("/ws?symbols=SOLUSDT&channels=book") as ws:
        seen = await collect(ws, lambda ms: sum(m["type"] == "book" for m in ms) >= 5)
    books = [m["data"] for m in seen if m["type"] == "book"]
    books += [b for m in seen if m["type"] == "initial_data" for b in m.get("books", {}).values()]
    assert all(b["checksum"] == book_checksum(b["bids"], b["asks"]) for b in books)


async def test_a_slow_reader_is_conflated_or_closed_and_counted(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client, tick_rate=50.0, outbox_messages=50, strict=False)
    service = client.app[SERVICE]
    assert client.port is not None
    sock = stalled_reader(client.port)
    try:
        deadline = time.monotonic() + 10
        while not service.counters["slow_consumer_closes"] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        sock.close()
    assert service.counters["slow_consumer_closes"] == 1
    assert service.counters["conflated"] > 0  # state was conflated while trades piled up


async def test_the_watchdog_tells_stale_then_live_at_once(aiohttp_client: Factory) -> None:
    feed = PausingFeed()
    app = create_app(fast_settings(symbols=("BTCUSDT",), status_interval=30.0, stale_after=0.5), feed=feed)
    client = await aiohttp_client(app)
    async with client.ws_connect("/ws") as ws:
        await live(ws)
        feed.pause()
        stale = await collect(ws, lambda ms: any(m["type"] == "status" for m in ms), timeout=3.0)
        assert [m["feed"] for m in stale if m["type"] == "status"] == ["stale"]
        feed.resume()
        again = await collect(ws, lambda ms: any(m["type"] == "status" for m in ms), timeout=3.0)
        assert [m["feed"] for m in again if m["type"] == "status"] == ["live"]
