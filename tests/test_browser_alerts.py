"""Alerts and chart annotations on the dashboard, in real Chromium against the real server process."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websockets

from tests.browser import screenshot_path
from tests.support import ServerProcess, unwrap
from tests.test_browser import open_page

Start = Callable[..., ServerProcess]
Message = dict[str, Any]


async def request(ws: Any, message: Message, timeout: float = 5.0) -> Message:
    """Send a bot request; its reply (by id), skipping anything else."""
    await ws.send(json.dumps(message))
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no reply to {message}"
        frame = json.loads(await asyncio.wait_for(ws.recv(), left))
        for reply in unwrap(frame):
            if reply.get("id") == message["id"]:
                assert reply["type"] != "error", reply
                return dict(reply)


async def page_price(page: Any) -> float:
    return float(await page.locator("#ticker-BTCUSDT .price").get_attribute("data-price"))


async def test_a_bot_rule_that_fires_shows_a_notification_and_a_history_entry(
    browser: Any, server_process: Start
) -> None:
    server = server_process()
    page, log = await open_page(browser, f"http://127.0.0.1:{server.port}/")
    assert not await page.locator("#alerts").is_visible()  # nothing to notify yet
    async with websockets.connect(server.url + "?channels=none") as bot:
        await request(
            bot,
            {
                "type": "alert_create",
                "id": 1,
                "symbol": "BTCUSDT",
                "condition": "move",
                "pct": 0.0001,
                "window_s": 60,
                "note": "any wiggle",
            },
        )
        notification = page.locator("#alerts .alert", has_text="any wiggle").first
        await notification.wait_for(state="visible", timeout=5_000)
        assert "BTCUSDT" in await notification.inner_text()
        await page.locator("#alert-history li", has_text="any wiggle").first.wait_for(timeout=2_000)
    assert await page.locator("#alerts").get_attribute("role") == "status"
    assert log.errors == []


async def test_a_bot_annotation_appears_on_the_chart_of_an_open_page(browser: Any, server_process: Start) -> None:
    server = server_process()
    page, log = await open_page(browser, f"http://127.0.0.1:{server.port}/")
    await page.evaluate("window.bixwebMarker = 'same page'")
    price = await page_price(page)
    async with websockets.connect(server.url + "?channels=none") as bot:
        await request(bot, {"type": "annotation_add", "id": 1, "symbol": "BTCUSDT", "price": price, "label": "support"})
    line = page.locator("#chart svg g.annotation", has_text="support")
    await line.wait_for(timeout=3_000)
    y = float(await line.locator("line").get_attribute("y1") or "nan")
    assert 0 <= y <= float(await page.locator("#chart svg").evaluate("s => s.viewBox.baseVal.height"))
    await page.locator("#annotations li", has_text="support").wait_for(timeout=1_000)
    assert await page.evaluate("window.bixwebMarker") == "same page"
    # and removed from the page, for the page
    await page.locator("#annotations li", has_text="support").locator("button").click()
    await line.wait_for(state="detached", timeout=3_000)
    assert log.errors == []


async def test_rules_history_and_annotations_are_on_the_dashboard_after_a_restart(
    browser: Any, server_process: Start, tmp_path: Path
) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    first = server_process(*data)
    page, log = await open_page(browser, f"http://127.0.0.1:{first.port}/")
    price = await page_price(page)
    # a far-away repeating rule stays; the page makes it with its form
    await page.locator("#alert-form select[name=condition]").select_option("above")
    await page.locator("#alert-form input[name=level]").fill(f"{price * 10:.2f}")
    await page.locator("#alert-form input[name=note]").fill("moon")
    await page.locator("#alert-form input[name=repeat]").check()
    await page.locator("#alert-form button").click()
    await page.locator("#alert-rules li", has_text="moon").wait_for(timeout=3_000)
    async with websockets.connect(first.url + "?channels=none") as bot:
        await request(
            bot,
            {
                "type": "alert_create",
                "id": 1,
                "symbol": "BTCUSDT",
                "condition": "move",
                "pct": 0.0001,
                "window_s": 60,
                "note": "fired before",
            },
        )
        await request(
            bot, {"type": "annotation_add", "id": 2, "symbol": "BTCUSDT", "price": price, "label": "kept line"}
        )
    await page.locator("#alert-history li", has_text="fired before").first.wait_for(timeout=5_000)
    await page.context.close()
    assert first.stop() == 0

    second = server_process(*data)
    page, restarted_log = await open_page(browser, f"http://127.0.0.1:{second.port}/")
    rule = page.locator("#alert-rules li", has_text="moon")
    assert await rule.count() == 1 and "repeats" in await rule.inner_text()
    assert await page.locator("#alert-history li", has_text="fired before").count() >= 1
    assert await page.locator("#alerts .alert", has_text="fired before").count() >= 1
    assert await page.locator("#annotations li", has_text="kept line").count() == 1
    assert await page.locator("#chart svg g.annotation", has_text="kept line").count() == 1
    await page.screenshot(path=screenshot_path("alerts-desktop.png"), full_page=True)
    assert log.errors == [] and restarted_log.errors == []
