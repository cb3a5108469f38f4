"""The client library through real faults: a link that resets, a server that is killed."""

from __future__ import annotations

import asyncio
import json
import random
import signal
from typing import Any

import pytest
import websockets
from aiohttp.test_utils import TestServer

from bixweb.web.service import SERVICE
from tests.client_fixtures import (
    ClientFactory,
    ServerFactory,
    eventually,
    make_bixweb_server_fixture,  # noqa: F401 - fixture "make_bixweb_server"
    make_client_fixture,  # noqa: F401 - fixture "make_client"
)
from tests.faultproxy import FaultProxy
from tests.support import ServerProcess, free_port

Message = dict[str, Any]
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")


def trades_of(seen: list[Message], symbol: str) -> list[Message]:
    return [m for m in seen if m["type"] == "trade" and m["symbol"] == symbol]


@pytest.mark.timeout(60)
async def test_resets_of_the_link_lose_and_repeat_no_trade(
    make_bixweb_server: ServerFactory, make_client: ClientFactory
) -> None:
    server: TestServer = await make_bixweb_server(tick_rate=50.0, strict=False)
    seen: list[Message] = []
    async with FaultProxy(server.port) as proxy:
        client = make_client(
            f"ws://127.0.0.1:{proxy.port}/ws",
            symbols=",".join(SYMBOLS),
            channels="trades,ticker",
            reconnect_initial=0.2,
            reconnect_max=0.5,
            rng=random.Random(1),
            on_message=[seen.append],
        )
        await client.connect()
        for reset in range(1, 4):
            await asyncio.sleep(1.5)
            proxy.reset()  # RST on both sides: the client and the server each see the link die
            await eventually(lambda: client.resumes == reset, timeout=10)  # noqa: B023 - awaited at once
            assert client.recovered is True
        await eventually(lambda: sum(len(trades_of(seen, s)) for s in SYMBOLS) >= 1_000, timeout=20)
    market = server.app[SERVICE].market
    total = 0
    for symbol in SYMBOLS:
        trades = trades_of(seen, symbol)
        seqs = [t["seq"] for t in trades]
        ids = [t["data"]["id"] for t in trades]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{symbol}: a trade lost or repeated (seq)"
        assert ids == list(range(ids[0], ids[0] + len(ids))), f"{symbol}: a trade lost or repeated (id)"
        published = {m["seq"]: m["data"]["id"] for m in market.recent[f"trades:{symbol}"]}
        assert all(published.get(t["seq"], t["data"]["id"]) == t["data"]["id"] for t in trades)
        total += len(trades)
    assert total >= 1_000
    assert client.gaps == 0 and client.resumes == 3


async def fresh_snapshot(url: str) -> Message:
    async with websockets.connect(url) as ws:
        await ws.recv()  # welcome
        snapshot: Message = json.loads(await ws.recv())
        assert snapshot["type"] == "initial_data"
        return snapshot


@pytest.mark.timeout(60)
async def test_after_a_sigkill_and_a_restart_the_client_starts_over_and_converges(
    server_process: Any, make_client: ClientFactory
) -> None:
    args = ("--port", str(free_port()), "--tick-rate", "2", "--symbols", ",".join(SYMBOLS))
    first: ServerProcess = server_process(*args)
    seen: list[Message] = []
    client = make_client(
        first.url,
        symbols=",".join(SYMBOLS),
        channels="ticker,trades",
        reconnect_initial=0.2,
        reconnect_max=1.0,
        on_message=[seen.append],
    )
    await client.connect()
    await eventually(lambda: len(client.get_latest_data()) == len(SYMBOLS))
    old_epoch = client.epoch
    assert await asyncio.to_thread(first.stop, signal.SIGKILL) == -signal.SIGKILL  # no goodbye
    await eventually(lambda: not client.is_connected())
    mark = len(seen)
    second: ServerProcess = await asyncio.to_thread(server_process, *args)
    await eventually(lambda: client.resumes == 1, timeout=15)
    assert client.recovered is False and client.epoch != old_epoch
    snapshots = [m for m in seen[mark:] if m["type"] == "initial_data"]
    assert snapshots and all(s["recovered"] is False and s["epoch"] == client.epoch for s in snapshots)
    # converges: what a newcomer sees now, the client has seen too (the market ticks twice a second)
    reference = await fresh_snapshot(second.url)
    for symbol in SYMBOLS:
        stream = f"ticker:{symbol}"

        def caught_up(stream: str = stream) -> bool:
            seq = client.view.seq(stream)
            return seq is not None and seq >= reference["seq"][stream]

        await eventually(caught_up, timeout=5)
        assert client.view.positions()[stream][0] == reference["epoch"]
    assert client.gaps == 0
