"""The dashboard in real Chromium against the real server process."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bixweb.client import WebSocketClient
from tests.browser import ConsoleLog, screenshot_path
from tests.support import ROOT, ServerProcess, free_port

Start = Callable[..., ServerProcess]


async def open_page(browser: Any, url: str, **context: Any) -> tuple[Any, ConsoleLog]:
    log = ConsoleLog()
    page = await (await browser.new_context(**context)).new_page()
    page.on("console", log.console)
    page.on("pageerror", log.page_error)
    await page.goto(url)
    try:
        await page.locator(".conn-up").wait_for(state="visible")
    except Exception as exc:
        raise AssertionError(f"the page did not connect; console: {log.entries}") from exc
    return page, log


async def changes(read: Callable[[], Awaitable[Any]], within: float) -> tuple[Any, Any]:
    """Poll ``read`` until its value differs from the first; fail after ``within`` seconds."""
    first = await read()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = await read()
        if now != first:
            return first, now
    raise AssertionError(f"still {first!r} after {within} s")


async def test_prices_chart_trades_and_book_move_with_no_console_errors(browser: Any, server_process: Start) -> None:
    server = server_process("--tick-rate", "20")
    page, log = await open_page(browser, f"http://127.0.0.1:{server.port}/")
    assert await page.locator("#ticker-BTCUSDT .price").inner_text()
    await changes(lambda: page.locator("#ticker-BTCUSDT .price").get_attribute("data-price"), within=3.0)
    await changes(lambda: page.locator("#chart svg").inner_html(), within=3.0)
    await changes(lambda: page.locator("#trades tbody tr").first.get_attribute("data-id"), within=3.0)
    await changes(lambda: page.locator("#book tbody.bids").inner_text(), within=3.0)
    scripts = await page.evaluate("[...document.scripts].map(s => new URL(s.src).pathname)")
    assert scripts == ["/vendor/htmx.min.js", "/vendor/ext/hx-ws.min.js"]
    assert await page.evaluate("[...document.querySelectorAll('script:not([src])')].length") == 0
    assert log.errors == []


async def test_switching_symbol_and_timeframe_changes_the_chart(browser: Any, server_process: Start) -> None:
    server = server_process()
    page, log = await open_page(browser, f"http://127.0.0.1:{server.port}/")
    await page.evaluate("window.bixwebMarker = 'same page'")  # gone if the page reloads
    await page.locator("#controls select[name=symbol]").select_option("ETHUSDT")
    await page.locator('#chart[data-symbol="ETHUSDT"][data-interval="1m"]').wait_for()
    await page.locator("#controls select[name=interval]").select_option("5m")
    await page.locator('#chart[data-symbol="ETHUSDT"][data-interval="5m"]').wait_for()
    await page.locator("#controls select[name=average]").select_option("ema")
    await page.locator("#chart h2", has_text="EMA 20").wait_for()
    assert "ETHUSDT" in await page.locator("#trades h2").inner_text()
    assert "ETHUSDT" in await page.locator("#book h2").inner_text()
    assert await page.evaluate("window.bixwebMarker") == "same page", "switching went over the socket, not a reload"
    assert log.errors == []


async def test_adding_and_removing_a_watchlist_symbol_changes_the_ticker(browser: Any, server_process: Start) -> None:
    server = server_process()
    page, log = await open_page(browser, f"http://127.0.0.1:{server.port}/")
    assert await page.locator("#ticker-DOGEUSDT").count() == 0
    await page.locator("#watch-symbol").select_option("DOGEUSDT")
    await page.locator("form.add button").click()
    await page.locator("#ticker-DOGEUSDT .price").wait_for()
    await page.locator("#ticker-BTCUSDT .remove button").click()
    await page.locator("#ticker-BTCUSDT").wait_for(state="detached")
    assert await page.locator("#ticker-DOGEUSDT").count() == 1
    assert log.errors == []


async def test_sigterm_closes_dashboard_and_bot_with_1012_and_both_come_back(
    browser: Any, server_process: Start
) -> None:
    port = free_port()
    first = server_process("--port", str(port), "--shutdown-timeout", "3")
    page, _ = await open_page(browser, f"http://127.0.0.1:{port}/")
    bot = WebSocketClient(f"ws://127.0.0.1:{port}/ws?symbols=BTCUSDT", reconnect_initial=0.2, reconnect_max=0.5)
    await bot.connect()
    assert await bot.get_message(timeout=3) is not None
    stopping = time.monotonic()
    assert first.stop() == 0  # SIGTERM; exit status 0
    assert time.monotonic() - stopping < 3 + 2, "the shutdown took longer than its bound"
    log = first.output.decode()
    assert re.search(r"disconnected kind=ui .*code=1012", log), log[-2000:]
    assert re.search(r"disconnected kind=bot .*code=1012", log), log[-2000:]
    await page.locator(".conn-down").wait_for(state="visible", timeout=6_000)
    assert not await page.locator(".conn-up").is_visible()
    assert bot.close_code == 1012  # what the bot saw
    server_process("--port", str(port), "--seed", "9")
    restarted = time.monotonic()
    await page.locator(".conn-up").wait_for(state="visible", timeout=5_000)
    assert time.monotonic() - restarted < 5.0
    await changes(lambda: page.locator("#ticker-BTCUSDT .price").get_attribute("data-price"), within=3.0)
    deadline = time.monotonic() + 5
    while bot.connections < 2 or not bot.is_connected:
        assert time.monotonic() < deadline, "the bot did not reconnect"
        await asyncio.sleep(0.1)
    assert await bot.get_message(timeout=3) is not None
    await bot.disconnect()


async def test_phone_and_desktop_layouts_in_light_and_dark(browser: Any, server_process: Start) -> None:
    server = server_process()
    url = f"http://127.0.0.1:{server.port}/"
    backgrounds = {}
    for name, width, scheme in (
        ("phone-390", 390, "light"),
        ("desktop-1280", 1280, "light"),
        ("phone-390-dark", 390, "dark"),
        ("desktop-1280-dark", 1280, "dark"),
    ):
        page, log = await open_page(browser, url, viewport={"width": width, "height": 844}, color_scheme=scheme)
        await page.locator("#chart svg .candles g").first.wait_for()
        scroll_width = await page.evaluate("document.documentElement.scrollWidth")
        assert scroll_width <= width, f"{name}: the page is {scroll_width} px wide"
        await page.screenshot(path=screenshot_path(f"{name}.png"), full_page=True)
        backgrounds[scheme] = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert log.errors == []
        await page.context.close()
    assert backgrounds["light"] != backgrounds["dark"]


def test_the_repo_tracks_no_javascript() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "*.js", "*.mjs", "*.cjs", "*.ts"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked == []
