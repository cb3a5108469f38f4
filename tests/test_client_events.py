"""What callbacks get (bixweb.client.events), what the view keeps for readers, and Reply's two forms."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest

from bixweb.client.bridge import Bridge, Reply
from bixweb.client.events import Listeners, payloads
from bixweb.client.view import MarketView

TICKER = {"price": 2.5, "bid": 2.4, "ask": 2.6, "time": 1}


def test_a_price_update_becomes_the_old_clients_ticker_dict() -> None:
    update = {"type": "market_update", "epoch": 1, "symbol": "BTCUSDT", "seq": 3, "data": TICKER}
    assert list(payloads(update)) == [("ticker", {"symbol": "BTCUSDT", **TICKER})]
    snapshot = {
        "type": "initial_data",
        "seq": {},
        "tickers": {"BTCUSDT": TICKER, "ETHUSDT": {**TICKER, "price": 1.0}},
        "books": {"BTCUSDT": {"bids": [], "asks": [], "checksum": 0}},
        "trades": {"BTCUSDT": [{"id": 1}]},  # history: not new trades
    }
    assert list(payloads(snapshot)) == [
        ("ticker", {"symbol": "BTCUSDT", **TICKER}),
        ("ticker", {"symbol": "ETHUSDT", **TICKER, "price": 1.0}),
        ("book", {"symbol": "BTCUSDT", "bids": [], "asks": [], "checksum": 0}),
    ]
    candle = {"type": "candle", "symbol": "BTCUSDT", "interval": "1m", "seq": 1, "data": {"start": 60, "close": 2}}
    assert list(payloads(candle)) == [("candle", {"interval": "1m", "symbol": "BTCUSDT", "start": 60, "close": 2})]
    status = {"type": "status", "ts": 5, "feed": "live", "clients": 3}
    assert list(payloads(status)) == [("status", {"event": "feed", "ts": 5, "feed": "live", "clients": 3})]
    assert list(payloads({"type": "ack", "id": 1})) == [] and list(payloads({"type": "welcome"})) == []
    assert list(payloads({"type": "trade", "symbol": "X", "data": None})) == [("trade", {"symbol": "X"})]


class Owner:
    def __init__(self) -> None:
        self.callbacks: list[Any] = []
        self.on_ticker: list[Any] = []
        self.on_message: list[Any] = []


async def test_a_failing_callback_is_logged_once_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    owner = Owner()
    clock = [0.0]
    listeners = Listeners(owner, clock=lambda: clock[0])
    got: list[Any] = []

    async def later(payload: Any) -> None:
        got.append(("async", payload))

    owner.callbacks.append(lambda d: (d["symbol"], d["nope"]))  # raises KeyError every time
    owner.callbacks.append(got.append)
    owner.on_ticker.append(later)
    assert listeners.wanted("ticker") and not listeners.wanted("message")
    with caplog.at_level(logging.ERROR, logger="bixweb.client"):
        for _ in range(50):
            await listeners.call("ticker", {"symbol": "BTCUSDT"})
        assert caplog.text.count("Traceback") == 1 and caplog.text.count("failed") == 1
        clock[0] = 61.0
        await listeners.call("ticker", {"symbol": "BTCUSDT"})
    assert "failed 50 more times" in caplog.text
    assert listeners.errors == 51
    assert got[:2] == [{"symbol": "BTCUSDT"}, ("async", {"symbol": "BTCUSDT"})] and len(got) == 102
    owner.callbacks = [got.append]  # replacing the list works too: lists are read at call time
    await listeners.call("ticker", {"symbol": "ETHUSDT"})
    assert got[-2] == {"symbol": "ETHUSDT"}


def test_the_view_keeps_trades_and_candles_for_readers() -> None:
    view = MarketView(trade_history=3, candle_history=2)
    trades = [{"id": n, "price": 1.0, "qty": 1.0, "side": "buy", "time": n} for n in range(1, 3)]
    snapshot = {
        "type": "initial_data",
        "epoch": 1,
        "seq": {"trades:BTCUSDT": 2, "candles_1m:BTCUSDT": 1},
        "trades": {"BTCUSDT": trades},
        "candles": {"1m": {"BTCUSDT": [{"start": 0, "close": 1.0, "closed": True}]}},
    }
    view.receive(snapshot)
    assert [t["id"] for t in view.trades("btcusdt", 10)] == [1, 2]
    for n in (3, 4):
        trade = {**trades[0], "id": n}
        view.receive({"type": "trade", "epoch": 1, "symbol": "BTCUSDT", "seq": n, "data": trade})
    assert [t["id"] for t in view.trades("BTCUSDT", 10)] == [2, 3, 4]  # capped, newest kept
    assert [t["id"] for t in view.trades("BTCUSDT", 1)] == [4] and view.trades("BTCUSDT", 0) == []
    forming = {"type": "candle", "epoch": 1, "symbol": "BTCUSDT", "interval": "1m", "seq": 2}
    view.receive({**forming, "data": {"start": 60, "close": 2.0, "closed": False}})
    view.receive({**forming, "seq": 3, "data": {"start": 60, "close": 2.5, "closed": False}})
    assert [(c["start"], c["close"]) for c in view.candles("BTCUSDT", "1m")] == [(0, 1.0), (60, 2.5)]
    view.receive({**forming, "seq": 4, "data": {"start": 120, "close": 3.0, "closed": False}})
    assert [c["start"] for c in view.candles("BTCUSDT", "1m")] == [60, 120]
    assert view.candles("BTCUSDT", "5m") == [] and view.trades("ETHUSDT", 5) == []
    view.forget(["trades:BTCUSDT"])
    assert view.trades("BTCUSDT", 5) == []
    with pytest.raises(ValueError):
        view.trades("BTCUSDT", -1)


def submit(loop: asyncio.AbstractEventLoop | None, make: Any, what: str, timeout: float) -> Reply[Any]:
    bridge = Bridge()
    bridge.open = True
    return bridge.submit(loop, make, what, timeout)


async def test_a_reply_is_awaited_on_its_loop_and_refuses_result_there() -> None:
    loop = asyncio.get_running_loop()

    async def answer() -> int:
        await asyncio.sleep(0.01)
        return 42

    reply: Reply[int] = submit(loop, answer, "thing", timeout=5.0)
    with pytest.raises(RuntimeError, match="own event loop"):
        reply.result()
    assert await reply == 42 and reply.done()
    assert reply.result() == 42  # done: nothing to wait for
    assert "await" in repr(reply)
    with pytest.raises(ConnectionError, match="not running"):
        await submit(None, answer, "thing", timeout=5.0)
    assert await asyncio.create_task(submit(loop, answer, "thing", timeout=5.0)) == 42  # a coroutine, too
    assert await asyncio.gather(submit(loop, answer, "a", 5.0), submit(loop, answer, "b", 5.0)) == [42, 42]
    cancelled = submit(loop, answer, "thing", timeout=5.0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(cancelled, 0.001)  # the waiter gives up: the request is cancelled with it
    with pytest.raises(ConnectionError, match="cancelled"):
        await cancelled


async def test_closing_the_bridge_fails_what_is_in_flight_at_once() -> None:
    loop = asyncio.get_running_loop()
    bridge = Bridge()
    bridge.open = True

    async def never() -> int:
        await asyncio.sleep(60)
        return 0

    replies = [bridge.submit(loop, never, f"r{n}", timeout=30.0) for n in range(3)]
    await asyncio.sleep(0)
    started = time.monotonic()
    await bridge.close()
    for reply in replies:
        with pytest.raises(ConnectionError):
            await reply
    assert time.monotonic() - started < 1.0
    with pytest.raises(ConnectionError, match="not running"):
        await bridge.submit(loop, never, "late", timeout=30.0)


def test_a_reply_from_another_thread_blocks_that_thread_only() -> None:
    ready = threading.Event()
    holder: dict[str, asyncio.AbstractEventLoop] = {}

    def run() -> None:
        async def main() -> None:
            holder["loop"] = asyncio.get_running_loop()
            ready.set()
            await asyncio.sleep(1.0)

        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(5)
    loop = holder["loop"]

    async def slow() -> str:
        await asyncio.sleep(0.05)
        return "done"

    async def never() -> str:
        await asyncio.sleep(60)
        return "late"

    assert submit(loop, slow, "slow", timeout=5.0).result() == "done"
    assert asyncio.run(submit(loop, slow, "slow", timeout=5.0)) == "done"  # asyncio.run takes a Reply
    assert asyncio.run(asyncio.wait_for(_awaited(submit(loop, slow, "slow", timeout=5.0)), 5)) == "done"
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no answer within 0.1 s"):
        submit(loop, never, "never", timeout=5.0).result(timeout=0.1)
    assert time.monotonic() - started < 2
    thread.join(5)
    with pytest.raises(ConnectionError):
        submit(loop, slow, "slow", timeout=5.0).result()


async def _awaited(reply: Reply[str]) -> str:
    return await reply


def test_trades_that_fill_a_gap_reach_the_readers_too() -> None:
    view = MarketView()

    def trade(seq: int) -> dict[str, Any]:
        data = {"id": 1000 + seq, "price": 1.0, "qty": 1.0, "side": "buy", "time": seq}
        return {"type": "trade", "epoch": 1, "symbol": "BTCUSDT", "seq": seq, "data": data}

    for seq in (1, 2, 3, 5, 6):  # 5 and 6 wait for 4
        view.receive(trade(seq))
    assert [t["id"] for t in view.trades("BTCUSDT", 10)] == [1001, 1002, 1003]
    assert [m["seq"] for m in view.receive(trade(4)).deliver] == [4, 5, 6]
    assert [t["id"] for t in view.trades("BTCUSDT", 10)] == [1001, 1002, 1003, 1004, 1005, 1006]
    # a snapshot that does not follow on (the server no longer had the trades missed): no silent hole
    late = [{"id": 1899, "price": 1.0, "qty": 1.0, "side": "buy", "time": 9}]
    view.receive({"type": "initial_data", "epoch": 1, "seq": {"trades:BTCUSDT": 899}, "trades": {"BTCUSDT": late}})
    assert [t["id"] for t in view.trades("BTCUSDT", 10)] == [1899]
