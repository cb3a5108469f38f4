"""Alert rules and annotations over the bot socket, on the real in-process app and a real process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from aiohttp.test_utils import TestClient

from bixweb.web.app import create_app
from tests.support import ROOT, ServerProcess, assert_valid, fast_settings, unwrap

Factory = Callable[..., Any]
Start = Callable[..., ServerProcess]
Message = dict[str, Any]


async def make_client(aiohttp_client: Factory, **overrides: Any) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(fast_settings(**overrides)))
    return client


async def until(ws: Any, wanted: Callable[[Message], bool], timeout: float = 5.0) -> Message:
    """The first message (batches unwrapped, each schema-checked) for which ``wanted`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "timed out"
        raw = await (
            ws.receive_str(timeout=left)
            if isinstance(ws, aiohttp.ClientWebSocketResponse)
            else asyncio.wait_for(ws.recv(), left)
        )
        frame = json.loads(raw)
        assert_valid(frame)
        for message in unwrap(frame):
            if wanted(message):
                return message


def reply(request_id: int) -> Callable[[Message], bool]:
    return lambda m: m.get("id") == request_id


async def test_a_rule_near_the_price_fires_once_for_subscribers_and_lands_in_the_history(
    aiohttp_client: Factory,
) -> None:
    client = await make_client(aiohttp_client, symbols=("BTCUSDT", "ETHUSDT"))
    ws = await client.ws_connect("/ws?symbols=BTCUSDT&channels=ticker,alerts")
    await ws.send_json(
        {
            "type": "alert_create",
            "id": 1,
            "symbol": "BTCUSDT",
            "condition": "move",
            "pct": 0.0001,
            "window_s": 60,
            "note": "any wiggle",
        }
    )
    created = await until(ws, reply(1))
    assert created["type"] == "alert_rules" and created["op"] == "created"
    rule = created["rules"][0]
    assert (rule["symbol"], rule["condition"], rule["repeat"]) == ("BTCUSDT", "move", False)
    alert = await until(ws, lambda m: m["type"] == "alert", timeout=5.0)
    assert alert["data"]["rule_id"] == rule["id"] and alert["data"]["note"] == "any wiggle"
    assert alert["symbol"] == "BTCUSDT" and alert["seq"] == 1 and alert["data"]["price"] > 0
    await ws.send_json({"type": "alert_list", "id": 2})
    listed = await until(ws, reply(2))
    assert listed["rules"] == []  # one-shot: gone once fired
    assert [a["rule_id"] for a in listed["history"]] == [rule["id"]]
    await ws.close()


async def test_rules_and_annotations_are_created_listed_and_deleted(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client, symbols=("BTCUSDT",))
    ws = await client.ws_connect("/ws?channels=none")
    await ws.send_json(
        {
            "type": "alert_create",
            "id": 1,
            "symbol": "BTCUSDT",
            "condition": "above",
            "level": 10_000_000,
            "repeat": True,
        }
    )
    rule = (await until(ws, reply(1)))["rules"][0]
    await ws.send_json({"type": "annotation_add", "id": 2, "symbol": "BTCUSDT", "price": 50_000, "label": "support"})
    annotation = (await until(ws, reply(2)))["annotations"][0]
    await ws.send_json({"type": "alert_list", "id": 3})
    assert [r["id"] for r in (await until(ws, reply(3)))["rules"]] == [rule["id"]]
    await ws.send_json({"type": "annotation_list", "id": 4, "symbol": "BTCUSDT"})
    assert (await until(ws, reply(4)))["annotations"] == [annotation]
    await ws.send_json({"type": "alert_delete", "id": 5, "rule_id": rule["id"]})
    assert (await until(ws, reply(5)))["op"] == "deleted"
    await ws.send_json({"type": "annotation_remove", "id": 6, "annotation_id": annotation["id"]})
    assert (await until(ws, reply(6)))["op"] == "removed"
    await ws.send_json({"type": "alert_delete", "id": 7, "rule_id": rule["id"]})
    assert (await until(ws, reply(7)))["code"] == "unknown_rule"
    await ws.close()


@pytest.mark.parametrize(
    ("request_fields", "code", "path"),
    [
        ({"symbol": "NOPEUSDT", "condition": "above", "level": 1}, "unknown_symbol", "$.symbol"),
        ({"symbol": "BTCUSDT", "condition": "above", "level": -5}, "invalid_message", "$.level"),
        ({"symbol": "BTCUSDT", "condition": "above", "level": "lots"}, "invalid_message", "$.level"),
        ({"symbol": "BTCUSDT", "condition": "move", "pct": 5, "window_s": 1e9}, "invalid_message", "$.window_s"),
        ({"symbol": "BTCUSDT", "condition": "move", "pct": 500, "window_s": 60}, "invalid_message", "$.pct"),
        ({"symbol": "BTCUSDT", "condition": "sideways", "level": 1}, "invalid_message", "$.condition"),
    ],
)
async def test_bad_rules_get_an_error_and_nothing_is_stored(
    aiohttp_client: Factory, request_fields: Message, code: str, path: str
) -> None:
    client = await make_client(aiohttp_client, symbols=("BTCUSDT",))
    ws = await client.ws_connect("/ws?channels=none")
    await ws.send_json({"type": "alert_create", "id": 1, **request_fields})
    error = await until(ws, reply(1))
    assert (error["type"], error["code"], error.get("path")) == ("error", code, path)
    await ws.send_json({"type": "alert_list", "id": 2})
    assert (await until(ws, reply(2)))["rules"] == []
    await ws.close()


async def test_too_many_rules_per_client_are_refused(aiohttp_client: Factory) -> None:
    from bixweb.alerts import MAX_RULES_PER_OWNER

    client = await make_client(aiohttp_client, symbols=("BTCUSDT",), max_messages_per_s=1000.0)
    ws = await client.ws_connect("/ws?channels=none")
    for n in range(MAX_RULES_PER_OWNER + 1):
        await ws.send_json(
            {"type": "alert_create", "id": n, "symbol": "BTCUSDT", "condition": "above", "level": 10_000_000 + n}
        )
        answer = await until(ws, reply(n))
    assert answer["code"] == "too_many_rules"
    await ws.send_json({"type": "alert_list", "id": "list"})
    assert len((await until(ws, reply("list")))["rules"]) == MAX_RULES_PER_OWNER  # type: ignore[arg-type]
    await ws.close()


async def test_rules_history_and_annotations_survive_a_restart(server_process: Start, tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "data"), "--symbols", "BTCUSDT,ETHUSDT"]
    first = server_process(*data)
    async with websockets.connect(first.url + "?symbols=BTCUSDT&channels=alerts") as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "alert_create",
                    "id": 1,
                    "symbol": "ETHUSDT",
                    "condition": "below",
                    "level": 0.01,
                    "note": "keep me",
                    "repeat": True,
                }
            )
        )
        kept = (await until(ws, reply(1)))["rules"][0]
        await ws.send(
            json.dumps(
                {
                    "type": "alert_create",
                    "id": 2,
                    "symbol": "BTCUSDT",
                    "condition": "move",
                    "pct": 0.0001,
                    "window_s": 30,
                }
            )
        )
        await until(ws, reply(2))
        fired = await until(ws, lambda m: m["type"] == "alert")
        await ws.send(
            json.dumps(
                {"type": "annotation_add", "id": 3, "symbol": "BTCUSDT", "price": 42_000, "label": "round number"}
            )
        )
        annotation = (await until(ws, reply(3)))["annotations"][0]
    assert first.stop() == 0
    second = server_process(*data)
    async with websockets.connect(second.url + "?channels=none") as ws:
        await ws.send(json.dumps({"type": "alert_list", "id": 1}))
        listed = await until(ws, reply(1))
        await ws.send(json.dumps({"type": "annotation_list", "id": 2}))
        annotations = (await until(ws, reply(2)))["annotations"]
    assert listed["rules"] == [kept]
    assert fired["data"] in listed["history"]
    assert annotations == [annotation]


def test_a_corrupt_store_stops_the_start_with_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "bixweb.sqlite3").write_bytes(b"this is not a database, it is a shopping list" * 100)
    result = subprocess.run(
        [sys.executable, "-m", "bixweb", "--port", "0", "--data-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert str(tmp_path / "bixweb.sqlite3") in result.stderr and "Traceback" not in result.stderr


def ticker(price: float, seq: int) -> Any:
    from bixweb.market import Outgoing

    return Outgoing(
        "ticker:BTCUSDT",
        {"type": "market_update", "symbol": "BTCUSDT", "seq": seq, "data": {"price": price, "time": 1_000 * seq}},
        True,
    )


def test_the_desk_writes_fired_alerts_off_the_market_path_and_retries_what_failed(tmp_path: Path) -> None:
    from bixweb.desk import Desk
    from bixweb.errors import StoreError
    from bixweb.store import SQLiteStore

    store = SQLiteStore(tmp_path / "bixweb.sqlite3")
    desk = Desk(store, ["BTCUSDT"])
    rule = desk.create_rule({"symbol": "BTCUSDT", "condition": "above", "level": 100}, owner="t", now_ms=1)
    desk.observe([ticker(99.0, 1)])
    original = store.record
    calls: list[int] = []

    def failing(fired: Any, finished: Any) -> None:
        calls.append(len(finished))
        raise StoreError("disk full")

    store.record = failing  # type: ignore[method-assign]
    (alert,) = desk.observe([ticker(101.0, 2)])
    desk.flush()
    assert calls == [1] and desk.rules() == [] and [a.id for a in desk.alerts()] == [alert.id]
    store.record = original  # type: ignore[method-assign]
    desk.observe([ticker(102.0, 3)])  # nothing fires; the next write that happens retries the deletion
    desk.create_rule({"symbol": "BTCUSDT", "condition": "below", "level": 50}, owner="t", now_ms=2)
    desk.observe([ticker(49.0, 4)])
    desk.close()
    reopened = SQLiteStore(tmp_path / "bixweb.sqlite3").load()
    assert rule.id not in {r.id for r in reopened.rules}  # the deletion that failed was done later
    assert len(reopened.history) == 1 and alert.id not in {a.id for a in reopened.history}
