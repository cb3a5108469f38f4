"""``GET /`` and ``/ws/ui`` on the real in-process app: fragments out, htmx forms in."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from bixweb.web.app import create_app
from bixweb.web.service import SERVICE
from tests.support import PausingFeed, fast_settings

Factory = Callable[..., Any]
FRAGMENT_IDS = re.compile(r'<\w+ id="([\w-]+)"[^>]*hx-swap-oob="true"')


async def make_client(aiohttp_client: Factory, **overrides: Any) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(fast_settings(**overrides)))
    return client


async def page_socket(client: TestClient[Any, Any]) -> tuple[str, str]:
    """Load the page; return its socket URL and the HTML."""
    html = await (await client.get("/")).text()
    match = re.search(r'hx-ws:connect="([^"]+)"', html)
    assert match
    return match.group(1), html


async def fragments(ws: aiohttp.ClientWebSocketResponse, timeout: float = 3.0) -> tuple[str, list[str]]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type is WSMsgType.TEXT, msg
    return msg.data, FRAGMENT_IDS.findall(msg.data)


def send_form(**values: str) -> bytes:
    return orjson.dumps({**values, "headers": {"HX-Request": "true", "HX-Trigger": "controls"}})


async def test_the_page_is_complete_before_the_socket_connects(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client)
    response = await client.get("/")
    assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
    html = await response.text()
    for fragment_id in ("status", "tickers", "controls", "chart", "trades", "book", "ticker-BTCUSDT"):
        assert f'id="{fragment_id}"' in html
    assert "hx-swap-oob" not in html
    assert re.findall(r'<script src="([^"]+)"', html) == ["/vendor/htmx.min.js", "/vendor/ext/hx-ws.min.js"]
    assert '<meta name="htmx-config"' in html


async def test_the_socket_sends_the_whole_page_then_live_fragments(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client, ui_rate=10.0)
    url, _ = await page_socket(client)
    async with client.ws_connect(url) as ws:
        _, first = await fragments(ws)
        assert set(first) >= {"status", "tickers", "controls", "chart", "trades", "book"}
        seen: set[str] = set()
        deadline = time.monotonic() + 3
        while not {"chart", "trades", "book", "ticker-BTCUSDT", "status"} <= seen:
            assert time.monotonic() < deadline, seen
            seen.update((await fragments(ws))[1])
        assert "ticker-DOGEUSDT" not in seen  # not on the default watchlist


async def test_forms_over_the_socket_change_what_the_page_gets(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client, ui_rate=10.0)
    url, _ = await page_socket(client)
    async with client.ws_connect(url) as ws:
        await fragments(ws)
        await ws.send_bytes(send_form(action="view", symbol="ETHUSDT", interval="5m", average="ema", period="10"))
        while True:
            html, ids = await fragments(ws)
            if "controls" in ids:
                break
        assert 'data-symbol="ETHUSDT" data-interval="5m"' in html and "EMA 10" in html
        await ws.send_bytes(send_form(action="watch", symbol="DOGEUSDT"))
        while True:
            html, ids = await fragments(ws)
            if "tickers" in ids:
                break
        assert 'id="ticker-DOGEUSDT"' in html
        await ws.send_bytes(send_form(action="unwatch", symbol="BTCUSDT"))
        while True:
            html, ids = await fragments(ws)
            if "tickers" in ids:
                break
        assert 'id="ticker-BTCUSDT"' not in html


async def test_the_choice_survives_a_reconnect_of_that_page(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client)
    url, _ = await page_socket(client)
    async with client.ws_connect(url) as ws:
        await fragments(ws)
        await ws.send_bytes(send_form(action="watch", symbol="LINKUSDT"))
        await ws.send_bytes(send_form(action="view", symbol="LINKUSDT", interval="1s", average="sma", period="5"))
        while "SMA 5" not in (await fragments(ws))[0]:
            pass
    async with client.ws_connect(url) as ws:
        html, _ = await fragments(ws)
        assert 'id="ticker-LINKUSDT"' in html and 'data-symbol="LINKUSDT" data-interval="1s"' in html
    other, _ = await page_socket(client)
    async with client.ws_connect(other) as ws:
        html, _ = await fragments(ws)
        assert 'id="ticker-LINKUSDT"' not in html  # another page has its own choices


async def test_bad_forms_get_a_notice_and_the_socket_stays(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client)
    url, _ = await page_socket(client)
    async with client.ws_connect(url) as ws:
        await fragments(ws)
        for bad in (b"{", send_form(action="view", symbol="NOPEUSDT"), send_form(action="fly")):
            await ws.send_bytes(bad)
            while True:
                html, ids = await fragments(ws)
                if "notice" in ids:
                    break
        await ws.send_bytes(send_form(action="view", symbol="SOLUSDT"))
        while 'data-symbol="SOLUSDT"' not in (await fragments(ws))[0]:
            pass


async def test_a_foreign_origin_is_refused_before_the_upgrade(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client)
    url, _ = await page_socket(client)
    try:
        await client.ws_connect(url, origin="https://evil.example")
        raise AssertionError("a foreign origin got a socket")
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 403
    async with client.ws_connect(url, origin=f"http://{client.host}:{client.port}") as ws:
        await fragments(ws)


async def test_a_socket_without_a_page_id_is_refused(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client)
    try:
        await client.ws_connect("/ws/ui")
        raise AssertionError("no page id, yet a socket")
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 400


async def test_shutdown_closes_dashboards_with_a_code_htmx_reconnects_on(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client)
    url, _ = await page_socket(client)
    ws = await client.ws_connect(url)
    await fragments(ws)
    shutdown = asyncio.create_task(client.app.shutdown())
    while (await ws.receive(timeout=3)).type is WSMsgType.TEXT:
        pass
    await shutdown
    assert ws.close_code == 1012
    assert not client.app[SERVICE].connections


async def test_htmx_is_served_from_npm_and_nothing_else_is(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client)
    for name in ("htmx.min.js", "ext/hx-ws.min.js"):
        response = await client.get(f"/vendor/{name}")
        assert response.status == 200, f"{name}: run npm ci"
        assert "javascript" in response.content_type
    assert (await client.get("/vendor/htmx.js")).status == 404
    assert (await client.get("/vendor/../package.json")).status == 404


async def test_the_dashboard_shows_a_stale_feed_and_its_return(aiohttp_client: Factory) -> None:
    feed = PausingFeed()
    client = await aiohttp_client(create_app(fast_settings(symbols=("BTCUSDT",), stale_after=0.5), feed=feed))
    url, _ = await page_socket(client)

    async def feed_shown(ws: aiohttp.ClientWebSocketResponse, state: str) -> None:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            html, ids = await fragments(ws)
            if "status" in ids and f"feed-{state}" in html:
                return
        raise AssertionError(f"the status never said {state}")

    async with client.ws_connect(url) as ws:
        await feed_shown(ws, "live")
        feed.pause()
        await feed_shown(ws, "stale")
        feed.resume()
        await feed_shown(ws, "live")


async def until_fragment(
    ws: aiohttp.ClientWebSocketResponse, fragment_id: str, text: str = "", within: float = 3.0
) -> str:
    """The first frame carrying ``fragment_id`` (with ``text`` in it); fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        html, ids = await fragments(ws, timeout=deadline - time.monotonic())
        if fragment_id in ids and text in html:
            return html
    raise AssertionError(f"no #{fragment_id} with {text!r} within {within} s")


async def test_a_rule_form_creates_a_rule_and_every_page_gets_the_new_rule_list(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client, ui_rate=10.0)
    pages = [(await page_socket(client))[0] for _ in range(2)]
    async with client.ws_connect(pages[0]) as sender, client.ws_connect(pages[1]) as other:
        await fragments(sender)
        await fragments(other)
        await sender.send_bytes(
            send_form(
                action="alert_create",
                symbol="BTCUSDT",
                condition="below",
                level="1.5",
                pct="",
                window_s="60",
                note="far below",
                repeat="on",
            )
        )
        await until_fragment(sender, "alert-form")  # a fresh form for the sender
        for ws in (sender, other):
            html = await until_fragment(ws, "alert-rules", "far below")
            assert "below 1.50" in html and 'name="action" value="alert_delete"' in html
        desk = client.app[SERVICE].desk
        assert desk is not None
        (rule,) = desk.rules()
        assert rule.owner.startswith("page:") and rule.repeat
        await other.send_bytes(send_form(action="alert_delete", rule_id=rule.id))
        for ws in (sender, other):
            html = await until_fragment(ws, "alert-rules", "no rules")
        await sender.send_bytes(send_form(action="alert_create", symbol="BTCUSDT", condition="above", level="x"))
        assert "level is required" in await until_fragment(sender, "notice")
        assert desk.rules() == []


async def test_an_annotation_form_draws_a_line_on_every_chart_of_the_symbol(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client, ui_rate=10.0)
    service = client.app[SERVICE]
    url, _ = await page_socket(client)
    async with client.ws_connect(url) as ws:
        await fragments(ws)
        price = service.market.states["BTCUSDT"].price
        await ws.send_bytes(send_form(action="annotation_add", symbol="BTCUSDT", price=str(price), label="here"))
        html = await until_fragment(ws, "chart", "here · ")  # the line list comes in the same frame
        assert '<g class="annotation"' in html and 'name="action" value="annotation_remove"' in html
