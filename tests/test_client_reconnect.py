"""Honest reconnects (issue 14): the client's waits between attempts, read from its ``on_status`` events.

A scripted server stands for the ones that hurt bots: it accepts the
handshake, sends a welcome, and closes at once (a 4008 loop), or refuses the
handshake outright. Its script names what each connection does, in order; the
client's own ``"disconnected"`` events say how long it means to wait
(``reconnect_in``), and the server's handshake times show it really waited.
The backoff must grow across handshakes that succeed and reset only after a
healthy connection (open ``healthy_after`` seconds with data). A random
source whose ``uniform(a, b)`` is always ``b`` makes the full jitter
deterministic: every wait is its ceiling.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bixweb.client import HandshakeRefused, WebSocketClient
from tests.client_fixtures import (
    ClientFactory,
    ServerFactory,
    bixweb_server_fixture,  # noqa: F401 - fixture "bixweb_server"
    bot_connections,
    eventually,
    make_bixweb_server_fixture,  # noqa: F401 - fixture "make_bixweb_server"
    make_client_fixture,  # noqa: F401 - fixture "make_client"
    ws_url,
)

Message = dict[str, Any]

EPOCH = 1_764_150_000_000


class Ceiling(random.Random):
    """Full jitter without the jitter: every wait is the most it may be."""

    def uniform(self, a: float, b: float) -> float:
        return b


def ladder(initial: float, maximum: float, count: int) -> list[float]:
    return [min(maximum, initial * 2**n) for n in range(count)]


def welcome() -> Message:
    return {
        "type": "welcome",
        "ts": time.time_ns() // 1_000_000,
        "protocol": 1,
        "epoch": EPOCH,
        "server": "0.1.0",
        "session": "scripted",
        "symbols": ["BTCUSDT"],
        "channels": ["ticker", "trades", "book", "candles_1s", "candles_1m", "candles_5m", "candles_1h", "alerts"],
        "intervals": ["1s", "1m", "5m", "1h"],
        "heartbeat_s": 20,
        "status_interval_s": 5,
        "limits": {
            "max_message_bytes": 16384,
            "max_messages_per_s": 20,
            "max_subscriptions": 1000,
            "outbox_messages": 1024,
            "outbox_bytes": 8388608,
            "history_points": 100,
        },
        "subscriptions": {"ticker": ["BTCUSDT"]},
    }


def ticker_update(seq: int) -> Message:
    now = time.time_ns() // 1_000_000
    price = 95_000.0 + seq
    data = {
        "price": price,
        "bid": price - 0.1,
        "ask": price + 0.1,
        "open": 94_000.0,
        "high": 96_000.0,
        "low": 93_000.0,
        "volume": 10.0,
        "quote_volume": 950_000.0,
        "change": price - 94_000.0,
        "change_pct": 1.0,
        "time": now,
    }
    return {"type": "market_update", "ts": now, "epoch": EPOCH, "symbol": "BTCUSDT", "seq": seq, "data": data}


class Scripted:
    """A ``/ws`` that does, for connection ``n``, what ``script[n]`` says (the last entry thereafter).

    ``close``: welcome, then close at once (4008 unless told ``close_code``).
    ``quiet``: welcome, stay open ``hold`` seconds without data, close.
    ``brief``: welcome and data, close after a tenth of ``hold``. ``healthy``:
    welcome and a ticker every 20 ms for ``hold`` seconds, close 1011.
    ``deaf``: as ``healthy``, but never reads (a close from the client goes
    unanswered). ``401``/``503``: refuse the handshake (the 503 with
    ``Retry-After: 1``).
    """

    def __init__(self, script: list[str], hold: float = 0.0, close_code: int = 4008) -> None:
        self.script = script
        self.hold = hold
        self.close_code = close_code
        self.handshakes: list[float] = []
        self.seq = itertools.count(1)
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        n = len(self.handshakes)
        self.handshakes.append(time.monotonic())
        step = self.script[min(n, len(self.script) - 1)]
        if step == "401":
            return web.json_response({"code": "invalid_token", "message": "the token is not valid"}, status=401)
        if step == "503":
            body = {"code": "server_full", "message": "the server is full"}
            return web.json_response(body, status=503, headers={"Retry-After": "1"})
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json(welcome())
        # reading answers a close from the client
        reader = asyncio.create_task(self.read(ws) if step != "deaf" else asyncio.sleep(self.hold))
        try:
            if step == "quiet":
                await asyncio.wait({reader}, timeout=self.hold)
            elif step in ("healthy", "brief", "deaf"):
                deadline = time.monotonic() + (self.hold / 10 if step == "brief" else self.hold)
                while time.monotonic() < deadline and not ws.closed:
                    await ws.send_json(ticker_update(next(self.seq)))
                    await asyncio.sleep(0.02)
            await ws.close(code=1011 if step == "healthy" else self.close_code, message=b"scripted")
        finally:
            reader.cancel()
        return ws

    async def read(self, ws: web.WebSocketResponse) -> None:
        async for _ in ws:  # the client's requests go unanswered
            pass


async def scripted_server(
    aiohttp_server: ServerFactory, script: list[str], hold: float = 0.0, close_code: int = 4008
) -> Scripted:
    scripted = Scripted(script, hold, close_code)
    app = web.Application()
    app.router.add_get("/ws", scripted.handle)
    server: TestServer = await aiohttp_server(app)
    scripted.url = ws_url(server)
    return scripted


def recorder(client: WebSocketClient) -> list[Message]:
    """Every ``on_status`` event of ``client``, in order, with the time it came."""
    events: list[Message] = []
    client.on_status.append(lambda event: events.append({**event, "at": time.monotonic()}))
    return events


def waits(events: list[Message]) -> list[Any]:
    return [e["reconnect_in"] for e in events if e["event"] == "disconnected"]


def assert_waited(handshakes: list[float], delays: list[float]) -> None:
    """Each attempt came no sooner than the wait the client announced before it (a 10 % margin for clocks)."""
    pairs = list(zip((b - a for a, b in itertools.pairwise(handshakes)), delays, strict=False))
    assert all(gap >= 0.9 * delay for gap, delay in pairs), pairs


@pytest.mark.timeout(30)
async def test_a_server_that_closes_at_once_20_times_is_retried_with_growing_waits(
    aiohttp_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await scripted_server(aiohttp_server, ["close"])
    client = make_client(server.url, rng=Ceiling(), reconnect_initial=0.01, reconnect_max=0.16)
    events = recorder(client)
    await client.connect()
    await eventually(lambda: len(server.handshakes) > 20, timeout=15)
    await client.disconnect()
    delays = waits(events)[:20]
    # every handshake succeeded (a welcome came each time), and still the waits grow
    assert delays == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.16] + [0.16] * 15)
    assert delays == pytest.approx(ladder(0.01, 0.16, 20))
    assert_waited(server.handshakes, delays)
    assert client.connections >= 21
    connected = [e for e in events if e["event"] == "connected"]
    assert len(connected) >= 21 and [e["resumed"] for e in connected[:2]] == [False, True]
    closes = [e["close_code"] for e in events if e["event"] == "disconnected"][:20]
    assert closes == [4008] * 20


@pytest.mark.timeout(30)
async def test_the_backoff_starts_over_only_after_a_healthy_connection(
    aiohttp_server: ServerFactory, make_client: ClientFactory
) -> None:
    hold = 1.0  # quiet and healthy stay open this long; brief a tenth of it
    script = ["close", "close", "quiet", "brief", "healthy", "close", "close", "close"]
    server = await scripted_server(aiohttp_server, script, hold=hold)
    client = make_client(server.url, rng=Ceiling(), reconnect_initial=0.01, reconnect_max=1.0, healthy_after=hold / 2)
    events = recorder(client)
    await client.connect()
    await eventually(lambda: len(server.handshakes) > len(script), timeout=15)
    await client.disconnect()
    delays = waits(events)[: len(script)]
    # open long enough but no data (quiet), data but too short (brief): no reset; both: reset
    assert delays == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.01, 0.02, 0.04, 0.08])
    assert client.get_latest_price("BTCUSDT") is not None  # the healthy connection's data arrived


@pytest.mark.timeout(30)
@pytest.mark.parametrize("code", [1011, 1012, 1013, 4008])
async def test_closes_that_can_pass_are_retried_with_the_backoff(
    aiohttp_server: ServerFactory, make_client: ClientFactory, code: int
) -> None:
    server = await scripted_server(aiohttp_server, ["close"], close_code=code)
    client = make_client(server.url, rng=Ceiling(), reconnect_initial=0.01, reconnect_max=0.16)
    events = recorder(client)
    await client.connect()
    await eventually(lambda: len(server.handshakes) > 4, timeout=10)
    await client.disconnect()
    assert waits(events)[:4] == pytest.approx(ladder(0.01, 0.16, 4))
    assert [e["close_code"] for e in events if e["event"] == "disconnected"][:4] == [code] * 4
    assert client.failure is None


@pytest.mark.timeout(30)
async def test_a_fixed_reconnect_delay_waits_the_same_every_time(
    aiohttp_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await scripted_server(aiohttp_server, ["close"])
    client = make_client(server.url, reconnect_delay=0.05, reconnect_initial=0.01, reconnect_max=0.16)
    events = recorder(client)
    await client.connect()
    await eventually(lambda: len(server.handshakes) > 8, timeout=15)
    await client.disconnect()
    delays = waits(events)[:8]
    assert delays == [0.05] * 8  # exactly: no jitter, no growth
    assert_waited(server.handshakes, delays)


@pytest.mark.timeout(30)
async def test_without_auto_reconnect_the_first_close_ends_the_loop(
    aiohttp_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await scripted_server(aiohttp_server, ["close"])
    client = make_client(server.url, auto_reconnect=False, reconnect_initial=0.01)
    events = recorder(client)
    async with asyncio.timeout(5):
        await client.receive_messages()  # returns when the server closes
    await asyncio.sleep(0.3)
    assert len(server.handshakes) == 1 and not client.is_connected()
    assert waits(events) == [None] and client.close_code == 4008


@pytest.mark.timeout(30)
async def test_a_401_after_closes_ends_the_loop_with_the_refusal(
    aiohttp_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await scripted_server(aiohttp_server, ["close"] * 5 + ["401"])
    client = make_client(server.url, rng=Ceiling(), reconnect_initial=0.01, reconnect_max=0.16)
    events = recorder(client)
    started = time.monotonic()
    async with asyncio.timeout(10):
        with pytest.raises(HandshakeRefused) as refused:
            await client.receive_messages()
    assert time.monotonic() - started < 5  # not a retry loop
    assert (refused.value.status, refused.value.code, refused.value.transient) == (401, "invalid_token", False)
    assert client.failure is refused.value
    await asyncio.sleep(0.5)
    assert len(server.handshakes) == 6 and not client.is_connected()  # never retried
    assert waits(events)[:5] == pytest.approx(ladder(0.01, 0.16, 5))
    [failed] = [e for e in events if e["event"] == "failed"]
    assert "invalid_token" in failed["error"]
    assert events[-1]["event"] == "failed"
    drained = 0
    with pytest.raises(HandshakeRefused):  # what was queued comes first, then the refusal
        async with asyncio.timeout(5):
            while await client.get_message(timeout=1.0) is not None:
                drained += 1
    assert drained == 5  # the five welcomes


@pytest.mark.timeout(30)
async def test_a_503_with_retry_after_is_retried_no_sooner_than_asked(
    aiohttp_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await scripted_server(aiohttp_server, ["503", "healthy"], hold=30.0)
    client = make_client(server.url, rng=Ceiling(), reconnect_initial=0.01, reconnect_max=5.0)
    events = recorder(client)
    loop = asyncio.create_task(client.receive_messages())
    try:
        await eventually(client.is_connected, timeout=10)
        assert len(server.handshakes) == 2
        assert server.handshakes[1] - server.handshakes[0] >= 0.95  # Retry-After: 1, not the 10 ms backoff
        assert client.failure is None and client.connections == 1
        assert [e["event"] for e in events].count("connected") == 1
    finally:
        await client.disconnect()
        async with asyncio.timeout(5):
            await loop


@pytest.mark.timeout(30)
async def test_status_events_tell_of_a_drop_and_how_the_resume_went(
    make_bixweb_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_bixweb_server(tick_rate=40.0, status_interval=0.5)
    client = make_client(
        ws_url(server), symbols="BTCUSDT", channels="ticker,trades", reconnect_initial=0.05, reconnect_max=0.1
    )
    events = recorder(client)
    trades: list[Message] = []
    client.on_trade.append(trades.append)
    await client.connect()
    await eventually(lambda: len(trades) >= 5 and any(e["event"] == "feed" for e in events), timeout=10)
    [conn] = [c for c in bot_connections(server) if not c.closing]
    conn.close_soon(1011, "test")
    await eventually(lambda: any(e["event"] == "resumed" for e in events), timeout=10)
    mark = len(trades)
    await eventually(lambda: len(trades) > mark + 5, timeout=10)

    kinds = [e["event"] for e in events if e["event"] != "feed"]
    assert kinds[:4] == ["connected", "disconnected", "connected", "resumed"]
    first, lost, again, resumed = [e for e in events if e["event"] != "feed"][:4]
    assert first["resumed"] is False and first["connections"] == 1
    assert lost["close_code"] == 1011 and 0 <= lost["reconnect_in"] <= 0.1
    assert again["resumed"] is True and again["connections"] == 2
    assert resumed["recovered"] is True and resumed["resumes"] == 1
    assert client.resumes == 1 and client.recovered is True and client.connections == 2
    feed = next(e for e in events if e["event"] == "feed")
    assert feed["feed"] == "live" and feed["clients"] >= 1 and {"uptime_s", "last_event_ms"} <= set(feed)
    ids = [t["id"] for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # on_trade: every trade once across the drop


@pytest.mark.timeout(30)
async def test_disconnect_ends_receive_messages_even_when_the_server_does_not_answer_the_close(
    aiohttp_server: ServerFactory, make_client: ClientFactory
) -> None:
    """The old client's async flow: ``receive_messages()`` in a task, ``disconnect()``, then the task ends.

    Against a server that never answers the close frame, the task must still
    end as ``receive_messages()`` documents (it returns after ``disconnect()``),
    not raise ``CancelledError`` into the bot's code.
    """
    server = await scripted_server(aiohttp_server, ["deaf"], hold=20.0)
    client = make_client(server.url)
    receiver = asyncio.create_task(client.receive_messages())
    await eventually(lambda: client.get_latest_price("BTCUSDT") is not None, timeout=10)
    began = time.monotonic()
    await client.disconnect()
    assert time.monotonic() - began < 5.0
    async with asyncio.timeout(5):
        done, _ = await asyncio.wait({receiver})
    assert receiver in done and not receiver.cancelled(), "receive_messages() was cancelled by disconnect()"
    assert receiver.result() is None
    assert not client.is_connected() and len(server.handshakes) == 1


@pytest.mark.timeout(30)
async def test_stop_during_a_reconnect_wait_returns_at_once(aiohttp_server: ServerFactory) -> None:
    server = await scripted_server(aiohttp_server, ["close"])
    client = WebSocketClient(server.url, reconnect_delay=20.0)
    events = recorder(client)
    await asyncio.to_thread(client.start_background)
    try:
        await eventually(lambda: "disconnected" in [e["event"] for e in events], timeout=10)
    finally:
        began = time.monotonic()
        await asyncio.to_thread(client.stop)
        took = time.monotonic() - began
    assert took < 2.0, f"stop() took {took:.2f} s (the client was waiting 20 s to reconnect)"
    assert len(server.handshakes) == 1 and not client.is_connected()


@pytest.mark.timeout(30)
async def test_a_request_waiting_for_an_answer_fails_when_the_connection_goes(aiohttp_server: ServerFactory) -> None:
    """The scripted server never answers requests: a pending ``.result()`` ends with the connection
    (dropped by the server, or the client stopped), not ``request_timeout`` later."""
    server = await scripted_server(aiohttp_server, ["healthy", "deaf"], hold=1.5)
    client = WebSocketClient(server.url, request_timeout=20.0, reconnect_initial=0.05, reconnect_max=0.1)
    await asyncio.to_thread(client.start_background)
    try:
        await eventually(client.is_connected, timeout=10)
        dropped, took = await asyncio.to_thread(outcome, lambda: client.ping().result())
        assert isinstance(dropped, ConnectionError) and took < 5.0, (dropped, took)  # the 1011 after 1.5 s
        await eventually(client.is_connected, timeout=10)  # the deaf connection
        pending = asyncio.create_task(asyncio.to_thread(outcome, lambda: client.ping().result()))
        await asyncio.sleep(0.3)
    finally:
        await asyncio.to_thread(client.stop)
    stopped, took = await pending
    assert isinstance(stopped, ConnectionError) and took < 3.0, (stopped, took)


def outcome(call: Callable[[], object]) -> tuple[object, float]:
    began = time.monotonic()
    try:
        result = call()
    except Exception as exc:  # noqa: BLE001 - the outcome is the result
        result = exc
    return result, time.monotonic() - began


@pytest.mark.timeout(20)
async def test_a_url_that_is_no_socket_ends_the_loop_instead_of_retrying_forever(
    bixweb_server: TestServer, make_client: ClientFactory
) -> None:
    page = f"ws://{bixweb_server.host}:{bixweb_server.port}/"  # the dashboard: 200 and HTML, no upgrade
    client = make_client(page, reconnect_initial=0.01, reconnect_max=0.02)
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await client.connect()
    started = time.monotonic()
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await client.receive_messages()  # one attempt, not a retry loop
    assert time.monotonic() - started < 5.0
    assert isinstance(client.failure, aiohttp.WSServerHandshakeError) and not client.is_connected()
