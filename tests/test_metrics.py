"""``/metrics`` and ``/healthz`` on the real in-process app."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bixweb.web.app import create_app
from bixweb.web.service import SERVICE
from tests.support import PausingFeed, fast_settings

Factory = Callable[..., Any]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: TestClient[Any, Any]) -> Samples:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_parse_and_their_counters_move_with_traffic(aiohttp_client: Factory) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(fast_settings(max_connections=4)))
    before = await scrape(client)
    assert before[("bixweb_connections", (("kind", "bot"),))] == 0
    assert before[("bixweb_feed_state", (("state", "live"),))] in (0.0, 1.0)

    ws = await client.ws_connect("/ws?symbols=BTCUSDT,ETHUSDT&channels=ticker,trades")
    for _ in range(5):
        await ws.receive(timeout=3)
    ui = await client.ws_connect("/ws/ui?page=metrics-page-1")
    await ui.receive(timeout=3)
    during = await scrape(client)
    assert during[("bixweb_connections", (("kind", "bot"),))] == 1
    assert during[("bixweb_connections", (("kind", "ui"),))] == 1
    assert during[("bixweb_tcp_connections", ())] == 3  # the two sockets and the scrape's own connection
    for name in ("bixweb_messages_sent_total", "bixweb_sent_bytes_total", "bixweb_frames_sent_total"):
        assert during[(name, (("kind", "bot"),))] > before[(name, (("kind", "bot"),))], name
        assert during[(name, (("kind", "ui"),))] > 0, name
    assert during[("bixweb_feed_state", (("state", "live"),))] == 1.0
    assert 0 <= during[("bixweb_feed_lag_seconds", ())] < 5
    assert during[("bixweb_event_loop_lag_seconds", ())] >= 0

    await ws.close()
    await ui.close()
    await asyncio.sleep(0.1)
    extra = [await client.ws_connect("/ws?channels=none") for _ in range(3)]
    await scrape(client)  # the fourth connection, kept alive for the scrape below
    async with aiohttp.ClientSession() as stranger:  # a fifth: no room (every connection counts)
        refused = await stranger.get(client.make_url("/ws"), headers={"Connection": "Upgrade", "Upgrade": "websocket"})
        assert refused.status == 503
    after = await scrape(client)
    assert after[("bixweb_connections", (("kind", "bot"),))] == 3
    assert after[("bixweb_connections_opened_total", (("kind", "bot"),))] == 4
    assert after[("bixweb_connections_closed_total", (("code", "1000"), ("kind", "bot")))] == 1
    assert after[("bixweb_refused_total", (("reason", "server_full"),))] == 1
    # what closed connections sent is kept after they are gone
    assert (
        after[("bixweb_messages_sent_total", (("kind", "bot"),))]
        >= during[("bixweb_messages_sent_total", (("kind", "bot"),))]
    )
    for socket in extra:
        await socket.close()


async def test_readyz_tells_the_feed_state_and_healthz_is_its_old_name(aiohttp_client: Factory) -> None:
    feed = PausingFeed(("BTCUSDT",))
    app = create_app(fast_settings(symbols=("BTCUSDT",), stale_after=0.3), feed=feed)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    await asyncio.sleep(0.2)
    for path in ("/readyz", "/healthz"):
        response = await client.get(path)
        body = await response.json()
        assert response.status == 200
        assert (body["status"], body["feed"], body["reasons"]) == ("ok", "live", [])
        assert body["connections"] == {"bot": 0, "ui": 0} and body["epoch"] == app[SERVICE].market.epoch
    feed.pause()
    await asyncio.sleep(0.6)
    for path in ("/readyz", "/healthz"):
        response = await client.get(path)
        assert response.status == 200  # ready, with a stale feed (a quiet market is no reason to leave)
        body = await response.json()
        assert body["status"] == "degraded" and [r["code"] for r in body["reasons"]] == ["feed_stale"]
    app[SERVICE].feed_down = True
    for path in ("/readyz", "/healthz"):
        response = await client.get(path)
        body = json.loads(await response.text())
        assert response.status == 503 and body["feed"] == "down"
        assert [r["code"] for r in body["reasons"]] == ["feed_down"]
    assert (await client.get("/livez")).status == 200  # alive all the same
