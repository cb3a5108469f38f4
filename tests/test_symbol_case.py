"""Symbols in any case on the bot socket and the dashboard's forms: read in upper case, sent in upper case.

On the real in-process app (outbound messages validated strictly: the
schemas' server messages take upper case only).
"""

from __future__ import annotations

import itertools
import json
import string
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from bixweb.dashboard import parse_action
from bixweb.errors import ProtocolError
from bixweb.web.app import create_app
from bixweb.web.service import SERVICE
from tests.client_fixtures import (
    ClientFactory,
    ServerFactory,
    eventually,
    make_client_fixture,  # noqa: F401 - fixture "make_client"
    ws_url,
)
from tests.support import fast_settings
from tests.test_bot_socket import Factory, collect, next_messages
from tests.test_bot_socket import make_client as app_client

Message = dict[str, Any]
HANDSHAKE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def answer_to(request_id: int) -> Callable[[list[Message]], bool]:
    return lambda messages: any(m.get("id") == request_id for m in messages)


def the_answer(messages: list[Message], request_id: int) -> Message:
    return next(m for m in messages if m.get("id") == request_id)


async def test_the_handshake_query_takes_symbols_in_any_case(aiohttp_client: Factory) -> None:
    client = await app_client(aiohttp_client)
    ws = await client.ws_connect("/ws?symbols=btcusdt,EthUsdt&channels=ticker,trades")
    (welcome,) = await next_messages(ws)
    assert welcome["subscriptions"] == {"ticker": ["BTCUSDT", "ETHUSDT"], "trades": ["BTCUSDT", "ETHUSDT"]}
    (snapshot,) = await next_messages(ws)
    assert set(snapshot["tickers"]) == set(snapshot["trades"]) == {"BTCUSDT", "ETHUSDT"}
    seen = await collect(ws, lambda ms: sum(m["type"] == "trade" for m in ms) >= 3)
    assert {m["symbol"] for m in seen if m["type"] in ("trade", "market_update")} <= {"BTCUSDT", "ETHUSDT"}
    await ws.close()


@pytest.mark.parametrize("query", ["symbols=nopeusdt", "symbols=%C4%B1njusdt"])  # ı: no stand-in for I
async def test_a_symbol_the_server_does_not_carry_is_refused_in_any_case(aiohttp_client: Factory, query: str) -> None:
    client = await app_client(aiohttp_client)
    response = await client.get(f"/ws?{query}", headers=HANDSHAKE)
    assert response.status == 400
    body = await response.json()
    assert (body["code"], body["path"]) == ("unknown_symbol", "$.symbols[0]")
    assert client.app[SERVICE].counters["refused:unknown_symbol"] == 1


async def test_subscribe_and_unsubscribe_take_symbols_in_any_case(aiohttp_client: Factory) -> None:
    client = await app_client(aiohttp_client)
    ws = await client.ws_connect("/ws?channels=none")
    await next_messages(ws)  # welcome
    await ws.send_json({"type": "subscribe", "id": 1, "symbols": ["btcusdt"], "channels": ["trades", "book"]})
    seen = await collect(ws, lambda ms: answer_to(1)(ms) and any(m["type"] == "trade" for m in ms))
    ack = the_answer(seen, 1)
    assert (ack["type"], ack["symbols"], ack["subscriptions"]) == (
        "ack",
        ["BTCUSDT"],
        {"book": ["BTCUSDT"], "trades": ["BTCUSDT"]},
    )
    assert {m["symbol"] for m in seen if m["type"] in ("trade", "book")} == {"BTCUSDT"}
    await ws.send_json({"type": "unsubscribe", "id": 2, "symbols": ["BtcUsdt"], "channels": ["book"]})
    ack = the_answer(await collect(ws, answer_to(2)), 2)
    assert (ack["type"], ack["symbols"], ack["subscriptions"]) == ("ack", ["BTCUSDT"], {"trades": ["BTCUSDT"]})
    await ws.close()


async def test_a_resume_names_its_symbols_in_any_case_and_its_streams_as_they_were_sent(
    aiohttp_client: Factory,
) -> None:
    client = await app_client(aiohttp_client)
    first = await client.ws_connect("/ws?symbols=ETHUSDT&channels=trades")
    (welcome,) = await next_messages(first)
    trades = [
        m for m in await collect(first, lambda ms: sum(m["type"] == "trade" for m in ms) >= 4) if m["type"] == "trade"
    ]
    await first.close()
    last = trades[1]["seq"]  # two trades were missed (at least)
    second = await client.ws_connect("/ws?channels=none")
    await next_messages(second)
    since = {"epoch": welcome["epoch"], "seq": {"trades:ETHUSDT": last}}
    await second.send_json(
        {"type": "subscribe", "id": 1, "symbols": ["ethusdt"], "channels": ["trades"], "since": since}
    )
    seen = await collect(second, lambda ms: answer_to(1)(ms) and sum(m["type"] == "trade" for m in ms) >= 2)
    assert the_answer(seen, 1)["recovered"] is True
    replayed = [m for m in seen if m["type"] == "trade"]
    assert [m["seq"] for m in replayed[:2]] == [last + 1, last + 2]
    assert {m["symbol"] for m in replayed} == {"ETHUSDT"}
    await second.close()


async def test_rules_and_annotations_take_symbols_in_any_case(aiohttp_client: Factory) -> None:
    client = await app_client(aiohttp_client)
    ws = await client.ws_connect("/ws?channels=none")
    await next_messages(ws)
    await ws.send_json({"type": "alert_create", "id": 1, "symbol": "btcusdt", "condition": "above", "level": 10**9})
    created = the_answer(await collect(ws, answer_to(1)), 1)
    assert created["type"] == "alert_rules" and created["rules"][0]["symbol"] == "BTCUSDT"
    await ws.send_json({"type": "annotation_add", "id": 2, "symbol": "ethUSDT", "price": 1000, "label": "line"})
    added = the_answer(await collect(ws, answer_to(2)), 2)
    assert added["type"] == "annotations" and added["annotations"][0]["symbol"] == "ETHUSDT"
    await ws.send_json({"type": "annotation_list", "id": 3, "symbol": "ethusdt"})
    listed = the_answer(await collect(ws, answer_to(3)), 3)
    assert listed["annotations"] == added["annotations"]
    await ws.close()


def test_the_dashboards_forms_name_symbols_in_any_case() -> None:
    assert parse_action(json.dumps({"action": "watch", "symbol": "solusdt"}))["symbol"] == "SOLUSDT"
    assert "symbol" not in parse_action(json.dumps({"action": "view", "interval": "1m"}))
    with pytest.raises(ProtocolError) as refused:
        parse_action(json.dumps({"action": "watch", "symbol": "sol/usdt"}))
    assert (refused.value.code, refused.value.path) == ("invalid_message", "$.symbol")


async def test_a_canary_keeps_reading_while_others_send_the_largest_lower_case_requests(
    aiohttp_client: Factory,
) -> None:
    """Upper-casing is bounded by the schema's limits (200 symbols, 1000 since keys): hostile
    requests of that size from several bots are answered while a canary's trades keep coming."""
    client = await app_client(aiohttp_client)
    canary = await client.ws_connect("/ws?symbols=btcusdt&channels=trades")
    await next_messages(canary)
    names = ["".join(pair) for pair in itertools.product(string.ascii_lowercase + string.digits, repeat=2)]
    since = {"epoch": 0, "seq": {f"book:{name.upper()}": 0 for name in names[:1000]}}
    hostile = {"type": "subscribe", "symbols": ["nopeusdt"] * 200, "channels": ["trades"], "since": since}
    frames = [json.dumps({**hostile, "id": n}, separators=(",", ":")) for n in range(5)]
    assert len(frames[-1]) < fast_settings().max_message_bytes  # the largest a bot may send
    bots: list[aiohttp.ClientWebSocketResponse] = []
    for _ in range(4):
        bot = await client.ws_connect("/ws?channels=none")
        await next_messages(bot)
        bots.append(bot)
    for frame in frames:
        for bot in bots:
            await bot.send_str(frame)
    for bot in bots:
        answers = await collect(bot, lambda ms: sum(m["type"] == "error" for m in ms) >= 5)
        assert {(m["code"], m.get("path")) for m in answers if m["type"] == "error"} <= {
            ("unknown_symbol", "$.symbols[0]"),
            ("rate_limited", None),
        }
    seen = await collect(canary, lambda ms: sum(m["type"] == "trade" for m in ms) >= 3)
    assert {m["symbol"] for m in seen if m["type"] == "trade"} == {"BTCUSDT"}
    for ws in (canary, *bots):
        await ws.close()


# -- the client library ----------------------------------------------------------


@pytest.mark.timeout(20)
async def test_the_client_takes_symbols_in_any_case(aiohttp_server: ServerFactory, make_client: ClientFactory) -> None:
    server = await aiohttp_server(create_app(fast_settings()))
    client = make_client(ws_url(server), symbols="btcusdt", channels=["ticker"])
    assert "symbols=BTCUSDT" in client.url
    await client.connect()
    await eventually(lambda: client.get_latest_price("btcusdt") is not None)
    assert set(client.get_latest_data()) == {"BTCUSDT"}
    ack = await client.subscribe("ethUSDT", ["book", "trades"])
    assert ack["symbols"] == ["ETHUSDT"]
    await eventually(lambda: client.get_book("ethusdt") is not None)
    trades: list[dict[str, Any]] = []
    while len(trades) < 3:
        message = await client.get_message(timeout=5)
        assert message is not None
        if message["type"] == "trade":
            trades.append(message)
    assert {m["symbol"] for m in trades} == {"ETHUSDT"}
    assert client.subscriptions == {"book": ["ETHUSDT"], "ticker": ["BTCUSDT"], "trades": ["ETHUSDT"]}
    ack = await client.unsubscribe(["ethusdt"], "book,trades")
    assert ack["symbols"] == ["ETHUSDT"]
    assert client.subscriptions == {"ticker": ["BTCUSDT"]}
