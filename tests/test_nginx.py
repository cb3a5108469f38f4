"""bixweb behind real nginx with TLS, configured by the shipped template (``deploy/nginx/``).

Every test starts the real server process with ``--trusted-proxies 127.0.0.1``
and real nginx in front of it (``tests/nginx.py``): https for the page,
``wss://`` for both sockets, the certificate from a throwaway CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect

from bixweb.client import WebSocketClient
from tests.browser import CHROMIUM, CHROMIUM_ARGS, ConsoleLog, require
from tests.nginx import ENVSUBST_VARIABLES, RENDER_COMMAND, TEMPLATE, NginxProxy, variable_names
from tests.support import ROOT, ServerProcess
from tests.test_browser import changes

Start = Callable[..., ServerProcess]
Proxy = Callable[..., NginxProxy]
BEHIND_NGINX = ("--trusted-proxies", "127.0.0.1")


@contextlib.asynccontextmanager
async def chromium_trusting(spki_sha256: str) -> AsyncIterator[Any]:
    """Debian's Chromium that accepts exactly one more server key: the one nginx presents."""
    require(CHROMIUM.exists(), f"no Chromium at {CHROMIUM}: apt-get install chromium (make test does)")
    require((ROOT / "node_modules" / "htmx.org").is_dir(), "htmx is not installed: npm ci (make test does)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        require(False, "playwright is not installed: pip install -e '.[test]' (make test does)")
        raise
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={spki_sha256}"],
        )
        try:
            yield browser
        finally:
            await browser.close()


async def test_the_dashboard_over_https_uses_wss_and_its_prices_move(server_process: Start, nginx_proxy: Proxy) -> None:
    server = server_process("--tick-rate", "20", *BEHIND_NGINX)
    nginx = nginx_proxy(server.port)
    async with chromium_trusting(nginx.spki_sha256) as browser:
        log = ConsoleLog()
        sockets: list[str] = []
        page = await (await browser.new_context()).new_page()
        page.on("console", log.console)
        page.on("pageerror", log.page_error)
        page.on("websocket", lambda ws: sockets.append(ws.url))
        response = await page.goto(nginx.https_url)
        assert response is not None and response.ok and response.url.startswith("https://")
        try:
            await page.locator(".conn-up").wait_for(state="visible")
        except Exception as exc:
            raise AssertionError(f"the page did not connect; console: {log.entries}") from exc
        await changes(lambda: page.locator("#ticker-BTCUSDT .price").get_attribute("data-price"), within=3.0)
        await changes(lambda: page.locator("#trades tbody tr").first.get_attribute("data-id"), within=3.0)
        connect_url = await page.locator("#live").get_attribute("hx-ws:connect")
        assert connect_url is not None and connect_url.startswith(f"wss://127.0.0.1:{nginx.port}/ws/ui?page=")
        assert sockets and all(url.startswith(f"wss://127.0.0.1:{nginx.port}/ws/ui?page=") for url in sockets)
        assert log.errors == []


async def test_the_bot_client_connects_over_wss_with_the_ca(server_process: Start, nginx_proxy: Proxy) -> None:
    server = server_process("--tick-rate", "20", *BEHIND_NGINX)
    nginx = nginx_proxy(server.port)
    client = WebSocketClient(nginx.wss_url + "?symbols=BTCUSDT", ssl=nginx.ssl_context, auto_reconnect=False)
    updates: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(10):
            async for message in client:
                if message["type"] == "market_update":
                    updates.append(message)
                if len(updates) == 3:
                    break
    finally:
        await client.disconnect()
    assert client.welcome is not None and client.connections == 1
    assert {message["symbol"] for message in updates} == {"BTCUSDT"}
    assert client.get_latest_price("BTCUSDT") is not None


async def test_the_bot_client_refuses_a_certificate_it_does_not_trust(
    server_process: Start, nginx_proxy: Proxy
) -> None:
    server = server_process(*BEHIND_NGINX)
    nginx = nginx_proxy(server.port)
    client = WebSocketClient(nginx.wss_url, auto_reconnect=False)  # the system's CAs only
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await client.connect()
    await client.disconnect()


async def idle_then_ping(url: str, ssl_context: Any, idle_s: float) -> tuple[float | None, dict[str, Any] | None]:
    """Open a socket with no subscription, say nothing for ``idle_s``, then ping.

    Returns when the socket closed during the silence (seconds after the
    welcome; None if it stayed open) and the pong (None if it closed).
    """
    # ping_interval=None: the client's own pings would keep nginx's timer reset; only the server's may.
    async with connect(url + "?channels=none", ssl=ssl_context, ping_interval=None) as ws:
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert welcome["type"] == "welcome"
        quiet = time.monotonic()
        try:
            await asyncio.wait_for(ws.wait_closed(), idle_s)
        except TimeoutError:
            pass
        else:
            return time.monotonic() - quiet, None
        await ws.send(json.dumps({"type": "ping", "id": 1}))
        async with asyncio.timeout(5):
            while True:
                reply = json.loads(await ws.recv())
                if reply["type"] == "pong":
                    return None, dict(reply)


async def test_an_idle_socket_outlives_proxy_read_timeout_thanks_to_heartbeats(
    server_process: Start, nginx_proxy: Proxy
) -> None:
    server = server_process("--heartbeat", "0.5", "--status-interval", "60", *BEHIND_NGINX)
    nginx = nginx_proxy(server.port, proxy_read_timeout="2s")
    closed_after, pong = await idle_then_ping(nginx.wss_url, nginx.ssl_context, idle_s=5.0)
    assert closed_after is None, f"nginx closed the socket after {closed_after:.1f} s: {nginx.log()[-600:]}"
    assert pong is not None and pong["id"] == 1


async def test_without_heartbeats_nginx_closes_the_idle_socket(server_process: Start, nginx_proxy: Proxy) -> None:
    """The control: the same socket, with the heartbeat longer than nginx's timeout, is cut by nginx."""
    server = server_process("--heartbeat", "30", "--status-interval", "60", *BEHIND_NGINX)
    nginx = nginx_proxy(server.port, proxy_read_timeout="2s")
    closed_after, pong = await idle_then_ping(nginx.wss_url, nginx.ssl_context, idle_s=5.0)
    assert closed_after is not None and pong is None, "the idle socket stayed open past proxy_read_timeout"
    assert 1.5 < closed_after < 4.0
    assert "upstream timed out" in nginx.log()


async def test_html_css_and_javascript_come_gzipped_and_static_files_from_nginx(
    server_process: Start, nginx_proxy: Proxy
) -> None:
    server = server_process(*BEHIND_NGINX)
    nginx = nginx_proxy(server.port)
    files = {
        "static/bixweb.css": (ROOT / "static" / "bixweb.css").read_bytes(),
        "vendor/htmx.min.js": (ROOT / "node_modules" / "htmx.org" / "dist" / "htmx.min.js").read_bytes(),
        "vendor/ext/hx-ws.min.js": (ROOT / "node_modules" / "htmx.org" / "dist" / "ext" / "hx-ws.min.js").read_bytes(),
    }
    headers = {"Accept-Encoding": "gzip"}
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.get(nginx.https_url, headers=headers, ssl=nginx.ssl_context) as response:
            assert response.status == 200
            assert response.headers.get("Content-Encoding") == "gzip"
            assert gzip.decompress(await response.read()).startswith(b"<!doctype html>")
        for path, content in files.items():
            async with session.get(nginx.https_url + path, headers=headers, ssl=nginx.ssl_context) as response:
                assert response.status == 200, path
                assert response.headers.get("Content-Encoding") == "gzip", path
                assert gzip.decompress(await response.read()) == content, path
        server.stop()  # from now on only nginx can answer
        for path in files:
            async with session.get(nginx.https_url + path, ssl=nginx.ssl_context) as response:
                assert response.status == 200, path
        async with session.get(nginx.https_url, ssl=nginx.ssl_context) as response:
            assert response.status == 502


async def test_metrics_from_loopback_only_and_healthz_for_all(server_process: Start, nginx_proxy: Proxy) -> None:
    server = server_process(*BEHIND_NGINX)
    nginx = nginx_proxy(server.port)
    async with aiohttp.ClientSession() as session:
        async with session.get(nginx.https_url + "metrics", ssl=nginx.ssl_context) as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            assert re.search(r"^# TYPE \w+ ", await response.text(), re.MULTILINE)
        async with session.get(nginx.https_url + "healthz", ssl=nginx.ssl_context) as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ok"
    # 127.0.0.2 is on the loopback interface too, but it is not the 127.0.0.1 the template allows.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as elsewhere:
        async with elsewhere.get(nginx.https_url + "metrics", ssl=nginx.ssl_context) as response:
            assert response.status == 403
        async with elsewhere.get(nginx.https_url + "healthz", ssl=nginx.ssl_context) as response:
            assert response.status == 200


NGINX_CONNECTIONS_PER_CLIENT = 64
"""``limit_conn bixweb_conn 64`` in the template."""


async def test_nginx_turns_away_a_client_holding_too_many_sockets_and_one_asking_too_fast(
    server_process: Start, nginx_proxy: Proxy
) -> None:
    """bixweb's own per-client limit is off here, so the 429s come from nginx (HTML, not bixweb's JSON)."""
    server = server_process(*BEHIND_NGINX, "--max-connections-per-client", "0")
    nginx = nginx_proxy(server.port)
    async with aiohttp.ClientSession() as session:
        sockets = []
        try:
            for _ in range(NGINX_CONNECTIONS_PER_CLIENT):
                ws = await session.ws_connect(nginx.wss_url + "?channels=none", ssl=nginx.ssl_context)
                assert json.loads((await ws.receive(timeout=5)).data)["type"] == "welcome"
                sockets.append(ws)
                await asyncio.sleep(1 / 15)  # below limit_req's 20 requests a second
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(nginx.wss_url + "?channels=none", ssl=nginx.ssl_context)
            assert refused.value.status == 429
            await sockets.pop().close()
            await asyncio.sleep(0.2)
            sockets.append(await session.ws_connect(nginx.wss_url + "?channels=none", ssl=nginx.ssl_context))
        finally:
            for ws in sockets:
                await ws.close()
        await asyncio.sleep(3)  # limit_req's bucket refills

        async def probe() -> int:
            async with session.get(nginx.https_url + "healthz", ssl=nginx.ssl_context) as response:
                return response.status

        statuses = await asyncio.gather(*(probe() for _ in range(80)))
        assert statuses.count(200) >= 20 and statuses.count(429) >= 10, statuses  # a burst of 40, then refused
        assert set(statuses) <= {200, 429}


def deploy_section() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^## Deploy behind nginx\n(.*?)(?=^## |\Z)", readme, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Deploy behind nginx' section"
    return match.group(1)


def test_the_readme_renders_the_template_as_the_tests_do() -> None:
    section = deploy_section()
    assert RENDER_COMMAND in section
    for name in variable_names():
        assert re.search(rf"\b{name}=\S", section), f"the README gives {name} no value"
    placeholders = set(re.findall(r"\$\{(\w+)\}", TEMPLATE.read_text()))
    assert placeholders == set(variable_names()), "the template and ENVSUBST_VARIABLES disagree"
    assert ENVSUBST_VARIABLES.count("${") == len(placeholders)
    assert "nginx -t && nginx -s reload" in section
    assert "--trusted-proxies 127.0.0.1" in section
