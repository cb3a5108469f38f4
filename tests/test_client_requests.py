"""A client's requests (bixweb.client.requests and the client's _ask): answered by id, paced, ordered
with the reconnect, never a silent wait; on the real app in-process."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from bixweb.client.requests import Pending
from bixweb.errors import ProtocolError
from tests.client_fixtures import (
    ClientFactory,
    bixweb_server_fixture,  # noqa: F401 - fixture "bixweb_server"
    bot_connections,
    eventually,
    make_client_fixture,  # noqa: F401 - fixture "make_client"
    ws_url,
)

ALL_CHANNELS = ["ticker", "trades", "book", "candles_1s", "candles_1m", "candles_5m", "candles_1h"]


async def test_a_rate_limited_error_without_id_fails_the_request_it_dropped() -> None:
    pending = Pending()
    alert_id, alert = pending.open("alert_create")  # answered later, by the process that keeps alerts
    first_id, first = pending.open("subscribe")
    second_id, second = pending.open("ping")
    limited = {"type": "error", "ts": 1, "code": "rate_limited", "message": "more than 20 messages per second"}
    assert pending.answer({"type": "ack", "id": first_id, "op": "subscribe"}) is False
    assert pending.answer(limited) is True  # the oldest waiting in-order request: the ping
    with pytest.raises(ProtocolError) as refused:
        second.result()
    assert refused.value.code == "rate_limited" and not alert.done() and first.result()["op"] == "subscribe"
    assert pending.answer(limited) is True and not alert.done()  # nothing in order waits: no one to fail
    assert pending.rate_limited == 2 and alert_id < second_id


@pytest.mark.timeout(60)
async def test_costly_requests_over_the_servers_budget_are_answered_or_refused_never_timed_out(
    bixweb_server: TestServer, make_client: ClientFactory
) -> None:
    """The server charges a message its CPU time, so costly requests overrun a pace counted per
    message: each request still hears back (an ack, or ``rate_limited``) well inside its timeout."""
    client = make_client(ws_url(bixweb_server), channels="none", request_timeout=5.0)
    await client.connect()
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *((client.subscribe if n % 2 == 0 else client.unsubscribe)(["*"], ALL_CHANNELS) for n in range(12)),
        return_exceptions=True,
    )
    took = time.monotonic() - started
    refused = [o for o in outcomes if isinstance(o, ProtocolError) and o.code == "rate_limited"]
    assert all(isinstance(o, dict) for o in outcomes if o not in refused), outcomes
    assert not any(isinstance(o, TimeoutError) for o in outcomes) and took < 5.0, (outcomes, took)
    started = time.monotonic()
    last = await asyncio.gather(client.ping(), return_exceptions=True)  # the server may still be in debt
    assert isinstance(last[0], float) or (isinstance(last[0], ProtocolError) and last[0].code == "rate_limited")
    assert time.monotonic() - started < 2.0 and client.is_connected()


@pytest.mark.timeout(30)
async def test_a_request_made_as_the_socket_closes_waits_for_the_reconnect(
    bixweb_server: TestServer, make_client: ClientFactory
) -> None:
    client = make_client(ws_url(bixweb_server), reconnect_initial=0.05, reconnect_max=0.1)
    await client.connect()
    await client.ping()
    await client._close_socket(b"test")  # the path a failed resync takes
    rtt = await client.ping()  # not "not connected": the next connection answers
    assert rtt > 0 and client.connections == 2


@pytest.mark.timeout(30)
async def test_an_unsubscribe_made_during_a_reconnect_is_not_undone_by_the_resume(
    bixweb_server: TestServer, make_client: ClientFactory
) -> None:
    events: list[str] = []

    async def slow_status(event: dict[str, Any]) -> None:
        events.append(event["event"])
        if event["event"] == "connected":
            await asyncio.sleep(0.05)  # latency between the upgrade and the welcome

    client = make_client(ws_url(bixweb_server), symbols="BTCUSDT", channels="trades", reconnect_delay=0.5)
    client.on_status.append(slow_status)
    trades: list[dict[str, Any]] = []
    client.on_trade.append(trades.append)
    await client.connect()
    await eventually(lambda: client.subscriptions.get("trades") == ["BTCUSDT"])
    [conn] = bot_connections(bixweb_server)
    conn.close_soon(1011, "test")
    await eventually(lambda: "disconnected" in events, timeout=5)  # now in its 0.5 s wait
    ack = await client.unsubscribe(["BTCUSDT"], ["trades"])  # waits for the reconnect and the resume
    assert ack["op"] == "unsubscribe"
    await eventually(lambda: client.resumes == 1)
    await asyncio.sleep(0.5)
    assert "trades" not in client.subscriptions
    mark = len(trades)
    await asyncio.sleep(1.5)  # the market trades BTCUSDT several times a second
    assert len(trades) == mark, "the server still sends the trades the client unsubscribed from"


@pytest.mark.timeout(30)
async def test_requests_given_up_on_give_their_slot_back(bixweb_server: TestServer, make_client: ClientFactory) -> None:
    client = make_client(ws_url(bixweb_server), channels="none")
    await client.connect()
    given_up = 0
    for _ in range(150):  # cancelled while each waits for a slot (or for its answer)
        try:
            await asyncio.wait_for(client.ping(), 0.0005)
        except TimeoutError:
            given_up += 1
    assert given_up > 100
    await asyncio.sleep(1.5)  # the slots that were used come back at the server's pace
    started = time.monotonic()
    assert await client.ping() > 0
    assert time.monotonic() - started < 1.0


@pytest.mark.timeout(30)
async def test_a_plain_callback_may_send_a_request_without_waiting(
    bixweb_server: TestServer, make_client: ClientFactory
) -> None:
    client = make_client(ws_url(bixweb_server), symbols="BTCUSDT")
    sent: list[Any] = []
    client.callbacks.append(lambda d: sent or sent.append(client.annotation_add(d["symbol"], 1.0, "from a callback")))
    await client.connect()
    await eventually(lambda: bool(sent))
    lines = await client.annotation_list("BTCUSDT")
    assert [a["label"] for a in lines["annotations"]] == ["from a callback"]
    assert client.callback_errors == 0


@pytest.mark.timeout(20)
async def test_a_token_in_the_url_is_in_no_log_line(
    bixweb_server: TestServer, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    page = f"ws://bot:pa55word@{bixweb_server.host}:{bixweb_server.port}/?token=tok-SECRET2"  # no socket here
    client = make_client(page, reconnect_initial=0.01, reconnect_max=0.02)
    with caplog.at_level(logging.DEBUG, logger="bixweb.client"), pytest.raises(Exception):  # noqa: B017, PT011
        await client.receive_messages()
    assert client.failure is not None and "the receive loop stopped" in caplog.text
    assert "tok-SECRET2" not in caplog.text and "pa55word" not in caplog.text
