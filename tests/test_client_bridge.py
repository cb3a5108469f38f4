"""The thread bridge (issue 14): a background client's requests from the main thread, other loops, callbacks.

The server is a real process: a test that blocks its thread on ``.result()``
must not block the server as well (an in-process server would share the
test's loop). Every request form is timed: a right form answers within the
issue's 1 s, a wrong one fails at once instead of waiting ``request_timeout``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bixweb.client import WebSocketClient, book_verified
from bixweb.errors import ProtocolError
from tests.support import ServerProcess

Message = dict[str, Any]
AT_ONCE = 0.5
"""What "at once" is allowed on a busy machine: well under the 1 s an answer may take, far under 10 s."""


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """One real server for the module (``--tick-rate 20``, the seeded simulated market)."""
    process = ServerProcess("--tick-rate", "20").start()
    yield process
    process.stop()


def wait_for(check: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what or check}"
        time.sleep(0.02)


def started(client: WebSocketClient) -> WebSocketClient:
    client.start_background()
    wait_for(client.is_connected, what="connected")
    wait_for(lambda: client.get_latest_price("BTCUSDT") is not None, what="a BTCUSDT price")
    return client


@pytest.fixture
def make_background(server: ServerProcess) -> Iterator[Callable[..., WebSocketClient]]:
    """Background clients of ``server``, connected and with a BTCUSDT price; stopped after the test."""
    clients: list[WebSocketClient] = []

    def make(**options: Any) -> WebSocketClient:
        client = WebSocketClient(server.url, symbols="BTCUSDT,ETHUSDT", **options)
        clients.append(client)
        return started(client)

    yield make
    for client in clients:
        client.stop()


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    began = time.monotonic()
    result = call()
    return result, time.monotonic() - began


def raised(call: Callable[[], Any]) -> tuple[BaseException, float]:
    began = time.monotonic()
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - what it raised is the result
        return exc, time.monotonic() - began
    pytest.fail(f"{call} raised nothing")


@pytest.mark.timeout(30)
def test_subscribe_from_the_main_thread_answers_within_a_second(
    make_background: Callable[..., WebSocketClient],
) -> None:
    client = make_background()
    ack, took = timed(lambda: client.subscribe(["ETHUSDT"], ["trades"]).result())
    assert took < 1.0, f"subscribe took {took:.3f} s"
    assert (ack["type"], ack["op"], ack["symbols"], ack["channels"]) == ("ack", "subscribe", ["ETHUSDT"], ["trades"])
    assert client.subscriptions["trades"] == ["ETHUSDT"]
    wait_for(lambda: client.get_trades("ETHUSDT"), what="ETHUSDT trades")
    trade = client.get_trades("ETHUSDT")[-1]
    assert {"id", "price", "qty", "side", "time"} <= set(trade) and trade["price"] > 0
    samples = [took]
    for symbol in ("SOLUSDT", "XRPUSDT", "ADAUSDT"):  # more samples: each one within the bound
        _, took = timed(lambda: client.subscribe([symbol], ["trades"]).result())  # noqa: B023 - called at once
        assert took < 1.0, f"subscribe {symbol} took {took:.3f} s"
        samples.append(took)
    print(f"subscribe(...).result() from the main thread: {', '.join(f'{t * 1000:.1f}' for t in samples)} ms")
    unsub, took = timed(lambda: client.unsubscribe(["ETHUSDT"], ["trades"]).result(timeout=5))
    assert took < 1.0 and unsub["op"] == "unsubscribe"
    assert client.subscriptions["trades"] == ["ADAUSDT", "SOLUSDT", "XRPUSDT"]
    refused, took = raised(lambda: client.subscribe(["FOOUSDT"], ["trades"]).result())
    assert isinstance(refused, ProtocolError) and refused.code == "unknown_symbol" and took < 1.0


@pytest.mark.timeout(30)
def test_await_from_another_event_loop_works_and_does_not_block_it(
    make_background: Callable[..., WebSocketClient],
) -> None:
    client = make_background()
    ticks = 0

    async def elsewhere() -> tuple[Message, float]:
        nonlocal ticks

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0)
        before = ticks
        ack = await client.subscribe(["SOLUSDT"], ["book"])
        rtt = await client.ping()
        ticker.cancel()
        assert ticks > before  # this loop ran its own task while it waited
        return ack, rtt

    (ack, rtt), took = timed(lambda: asyncio.run(elsewhere()))
    assert took < 2.0
    assert (ack["type"], ack["channels"], ack["symbols"]) == ("ack", ["book"], ["SOLUSDT"])
    assert 0 < rtt < 1.0
    wait_for(lambda: client.get_book("SOLUSDT"), what="a SOLUSDT book")
    book = client.get_book("SOLUSDT")
    assert book is not None and book_verified(book)


@pytest.mark.timeout(30)
def test_ping_answers_with_a_round_trip_time_in_both_forms(make_background: Callable[..., WebSocketClient]) -> None:
    client = make_background()
    rtts = [client.ping().result() for _ in range(5)]
    assert all(isinstance(rtt, float) and 0 < rtt < 1.0 for rtt in rtts), rtts

    async def ping() -> float:
        return await client.ping()

    rtt = asyncio.run(ping())
    assert isinstance(rtt, float) and 0 < rtt < 1.0


@pytest.mark.timeout(30)
def test_alerts_and_annotations_from_the_main_thread(make_background: Callable[..., WebSocketClient]) -> None:
    client = make_background()
    note = f"bridge {uuid.uuid4().hex[:8]}"
    created = client.alert_create("BTCUSDT", "above", level=10_000_000.0, note=note).result()
    assert (created["type"], created["op"]) == ("alert_rules", "created")
    [rule] = created["rules"]
    assert (rule["symbol"], rule["condition"], rule["level"], rule["note"]) == ("BTCUSDT", "above", 10_000_000.0, note)
    move = client.alert_create("ETHUSDT", "move", pct=50.0, window_s=60, direction="down", repeat=True).result()
    assert (move["rules"][0]["pct"], move["rules"][0]["direction"], move["rules"][0]["repeat"]) == (50.0, "down", True)
    listed = client.alert_list().result()
    assert listed["op"] == "list" and {rule["id"], move["rules"][0]["id"]} <= {r["id"] for r in listed["rules"]}
    deleted = client.alert_delete(rule["id"]).result()
    assert deleted["op"] == "deleted" and deleted["rules"][0]["id"] == rule["id"]
    assert rule["id"] not in {r["id"] for r in client.alert_list().result()["rules"]}
    gone, _ = raised(lambda: client.alert_delete(rule["id"]).result())
    assert isinstance(gone, ProtocolError) and gone.code == "unknown_rule"

    added = client.annotation_add("BTCUSDT", 12_345.0, label=note).result()
    assert (added["type"], added["op"]) == ("annotations", "added")
    [line] = added["annotations"]
    assert (line["symbol"], line["price"], line["label"]) == ("BTCUSDT", 12_345.0, note)
    assert line["id"] in {a["id"] for a in client.annotation_list("BTCUSDT").result()["annotations"]}
    assert line["id"] in {a["id"] for a in client.annotation_list().result()["annotations"]}
    removed = client.annotation_remove(line["id"]).result()
    assert removed["op"] == "removed" and removed["annotations"][0]["id"] == line["id"]
    assert line["id"] not in {a["id"] for a in client.annotation_list("BTCUSDT").result()["annotations"]}
    client.alert_delete(move["rules"][0]["id"]).result()


@pytest.mark.timeout(30)
def test_result_inside_a_callback_is_refused_at_once(make_background: Callable[..., WebSocketClient]) -> None:
    client = make_background()
    outcomes: list[tuple[BaseException, float]] = []
    done = threading.Event()

    def on_ticker(data: Message) -> None:
        if not done.is_set():
            outcomes.append(raised(lambda: client.ping().result()))
            done.set()

    client.on_ticker.append(on_ticker)
    assert done.wait(10), "no ticker reached the callback"
    [(error, took)] = outcomes
    assert isinstance(error, RuntimeError) and took < AT_ONCE, outcomes
    assert "await" in str(error)  # says what to do instead
    assert client.is_connected()  # the client is unharmed
    assert client.ping().result() > 0
    assert client.callback_errors == 0


@pytest.mark.timeout(30)
def test_stop_inside_a_callback_returns_at_once_and_the_client_then_stops(server: ServerProcess) -> None:
    """On the client's own thread ``stop()`` cannot join itself: it asks the client to stop and
    returns; the thread ends once the callback has returned."""
    client = WebSocketClient(server.url)
    thread = client.start_background()
    took: list[float] = []

    def on_ticker(data: Message) -> None:
        if not took:
            _, seconds = timed(client.stop)
            took.append(seconds)

    client.on_ticker.append(on_ticker)
    try:
        wait_for(lambda: took, what="the callback's stop()")
        thread.join(5.0)
        ended = not thread.is_alive()  # by itself, before the stop() below joins it
    finally:
        client.stop()
    assert took[0] < AT_ONCE, f"stop() in a callback took {took[0]:.2f} s"
    assert ended, "the client thread kept running after stop() in a callback"
    assert not client.is_connected() and client.close_code == 1000
    assert client.callback_errors == 0
    error, _ = raised(lambda: client.ping().result())
    assert isinstance(error, ConnectionError)


@pytest.mark.timeout(30)
def test_await_inside_an_async_callback_on_the_clients_own_loop(
    make_background: Callable[..., WebSocketClient],
) -> None:
    """A bot reacting to a ticker with a request. Awaiting it inside the callback would wait for the
    receive loop that is waiting for the callback: refused at once (the request is sent anyway); a
    task of its own on the client's loop gets the answer."""
    client = make_background(request_timeout=3.0)
    answers: list[tuple[object, float]] = []
    done = threading.Event()

    async def handle(began: float) -> None:
        answers.append((await client.ping(), time.monotonic() - began))

    async def on_ticker(data: Message) -> None:
        if done.is_set() or data["symbol"] != "BTCUSDT":
            return
        done.set()
        began = time.monotonic()
        try:
            await client.ping()
        except RuntimeError as exc:
            answers.append((exc, time.monotonic() - began))
        asyncio.create_task(handle(time.monotonic()))  # noqa: RUF006 - the test reads its outcome

    client.on_ticker.append(on_ticker)
    wait_for(lambda: len(answers) == 2, timeout=10, what="the callback's pings")
    [(refused, took), (rtt, rtt_took)] = answers
    assert isinstance(refused, RuntimeError) and took < AT_ONCE, (refused, took)
    assert "create_task" in str(refused)  # says what to do instead
    assert isinstance(rtt, float) and rtt > 0 and rtt_took < 1.0, (rtt, rtt_took)


@pytest.mark.timeout(30)
def test_requests_fail_at_once_before_start_and_after_stop(server: ServerProcess) -> None:
    client = WebSocketClient(server.url)

    async def awaited() -> Message:
        return await client.subscribe(["BTCUSDT"], ["trades"])

    def assert_not_connected() -> None:
        for call in (
            lambda: client.ping().result(),
            lambda: client.subscribe(["BTCUSDT"], ["trades"]).result(),
            lambda: client.alert_list().result(),
            lambda: asyncio.run(awaited()),
        ):
            error, took = raised(call)
            assert isinstance(error, ConnectionError) and took < AT_ONCE, (error, took)

    assert_not_connected()
    started(client)
    assert client.ping().result() > 0
    client.stop()
    assert not client.is_connected()
    assert_not_connected()
    started(client)  # and it starts again (a Streamlit rerun)
    try:
        assert client.ping().result() > 0 and client.connections == 2
    finally:
        client.stop()


@pytest.mark.timeout(30)
def test_the_wrong_form_in_the_wrong_place_fails_at_once(make_background: Callable[..., WebSocketClient]) -> None:
    client = make_background()
    reply = client.subscribe(["SOLUSDT"], ["trades"])
    assert "await" in repr(reply) and "result()" in repr(reply)  # the repr says how to use it
    assert asyncio.run(reply)["op"] == "subscribe"  # a Reply is a coroutine: another thread's loop runs it
    assert reply.result()["op"] == "subscribe"  # and the answer stays readable
    for coroutine in (
        lambda: client.connect(),
        lambda: client.receive_messages(),
        lambda: client.disconnect(),
        lambda: client.get_message(timeout=5.0),
    ):
        error, took = raised(lambda: asyncio.run(coroutine()))  # noqa: B023 - called at once
        assert isinstance(error, RuntimeError) and took < AT_ONCE, (coroutine, error, took)
    assert client.is_connected() and client.ping().result() > 0  # the background client is unharmed


@pytest.mark.timeout(30)
def test_many_threads_at_once_all_get_their_answers(make_background: Callable[..., WebSocketClient]) -> None:
    client = make_background()
    symbols = ["SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "AVAXUSDT"]
    go = threading.Barrier(len(symbols))

    def work(symbol: str) -> list[Any]:
        go.wait()
        return [client.ping().result(), client.subscribe([symbol], ["trades"]).result(), client.ping().result()]

    # 18 requests at once: within the server's burst (40), so none is refused
    with concurrent.futures.ThreadPoolExecutor(len(symbols)) as pool:
        results = dict(zip(symbols, pool.map(work, symbols), strict=True))
    acks = [answers[1] for answers in results.values()]
    rtts = [rtt for answers in results.values() for rtt in (answers[0], answers[2])]
    assert len({a["id"] for a in acks}) == len(symbols)  # each request got its own answer
    assert all(ack["symbols"] == [symbol] for symbol, ack in zip(symbols, acks, strict=True))
    assert all(isinstance(rtt, float) and rtt > 0 for rtt in rtts)
    assert set(client.subscriptions["trades"]) == set(symbols)


@pytest.mark.timeout(60)
def test_a_burst_of_requests_from_many_threads_never_waits_out_the_timeout(
    make_background: Callable[..., WebSocketClient],
) -> None:
    """More requests at once than the server's burst allows (40 messages; ``max_messages_per_s`` 20).

    The server drops what is over its rate with a ``rate_limited`` error that
    carries no ``id``. Every caller must still hear back promptly: an answer
    (a client that paces its requests to ``welcome.limits``) or the refusal,
    never a silent ``request_timeout``.
    """
    client = make_background(request_timeout=5.0)
    threads, each = 6, 10
    go = threading.Barrier(threads)

    def work(_: int) -> list[tuple[object, float]]:
        go.wait()
        outcomes: list[tuple[object, float]] = []
        for _ in range(each):
            began = time.monotonic()
            try:
                outcome: object = client.ping().result()
            except Exception as exc:  # noqa: BLE001 - the outcome is checked below
                outcome = exc
            outcomes.append((outcome, time.monotonic() - began))
        return outcomes

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        outcomes = [o for per_thread in pool.map(work, range(threads)) for o in per_thread]
    assert len(outcomes) == threads * each
    late = [(repr(o), round(t, 2)) for o, t in outcomes if not isinstance(o, float | ProtocolError)]
    assert not late, f"{len(late)} of {len(outcomes)} requests got no answer: {late[:3]}"
    refused = [o for o, _ in outcomes if isinstance(o, ProtocolError)]
    assert all(o.code == "rate_limited" for o in refused)
    assert client.is_connected()


@pytest.mark.timeout(30)
def test_the_state_a_bot_needs_and_the_per_kind_callbacks(make_background: Callable[..., WebSocketClient]) -> None:
    client = make_background()
    trades: list[Message] = []
    books: list[Message] = []
    candles: list[Message] = []
    client.on_trade.append(trades.append)
    client.on_book.append(books.append)
    client.on_candle.append(candles.append)
    client.subscribe(["BTCUSDT"], ["trades", "book", "candles_1s"]).result()
    wait_for(lambda: len(client.get_trades("BTCUSDT")) >= 5, what="5 trades")
    wait_for(lambda: client.get_book("BTCUSDT"), what="a book")
    wait_for(lambda: len(client.get_candles("BTCUSDT", "1s")) >= 2, what="2 candles")
    wait_for(lambda: trades and books and candles, what="a trade, a book and a candle callback")

    ticker = client.get_ticker("BTCUSDT")
    assert ticker is not None and ticker["symbol"] == "BTCUSDT" and ticker["price"] > 0
    assert client.get_ticker("NOPEUSDT") is None
    last = client.get_trades("BTCUSDT", n=3)
    assert [t["id"] for t in last] == list(range(last[0]["id"], last[0]["id"] + 3))  # the newest, oldest first
    book = client.get_book("BTCUSDT")
    assert book is not None and book_verified(book) and book["bids"] and book["asks"]
    kept = client.get_candles("BTCUSDT", "1s")
    assert [c["start"] for c in kept] == sorted({c["start"] for c in kept})
    assert client.get_candles("BTCUSDT", "1h") == [] and client.get_trades("SOLUSDT") == []

    assert all(t["symbol"] == "BTCUSDT" and {"id", "price", "qty", "side", "time"} <= set(t) for t in trades)
    assert [t["id"] for t in trades] == list(range(trades[0]["id"], trades[0]["id"] + len(trades)))  # live, in order
    assert all(b["symbol"] == "BTCUSDT" and book_verified(b) for b in books)
    assert all(
        {"symbol", "interval", "start", "open", "high", "low", "close", "volume", "closed"} <= set(c) for c in candles
    )
    assert {c["interval"] for c in candles} == {"1s"}


@pytest.mark.timeout(30)
def test_trade_and_candle_history_are_bounded(make_background: Callable[..., WebSocketClient]) -> None:
    client = make_background(trade_history=5, candle_history=3)
    client.subscribe(["BTCUSDT"], ["trades", "candles_1s"]).result()
    seen: list[Message] = []
    client.on_trade.append(seen.append)
    wait_for(lambda: len(seen) >= 12, what="12 trades")
    wait_for(lambda: len(client.get_candles("BTCUSDT", "1s")) >= 3, what="3 candles")
    assert len(client.get_trades("BTCUSDT", n=100)) == 5
    assert len(client.get_candles("BTCUSDT", "1s")) == 3
