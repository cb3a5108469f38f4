"""Refusals before the upgrade on the real in-process app: origins, tokens, loopback, connection limits."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from bixweb.web.app import create_app
from bixweb.web.service import SERVICE
from tests.support import assert_valid, fast_settings, unwrap

Factory = Callable[..., Any]
TOKEN = "t0ken-for-the-tests-0123456789"


async def make_client(aiohttp_client: Factory, **overrides: Any) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(fast_settings(**overrides)))
    return client


async def refused(client: TestClient[Any, Any], path: str, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
    """Try a handshake that must fail; its status, JSON body and headers (no 101)."""
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        **kwargs.pop("headers", {}),
    }
    response = await client.get(path, headers=headers, **kwargs)
    assert response.status != 101
    return response.status, await response.json(), response.headers


async def welcomed(client: TestClient[Any, Any], path: str = "/ws?channels=none", **kwargs: Any) -> Any:
    ws = await client.ws_connect(path, **kwargs)
    msg = await ws.receive(timeout=3)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    assert json.loads(msg.data)["type"] == "welcome"
    return ws


async def test_a_foreign_origin_gets_403_and_the_allowlist_replaces_the_default(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client, allowed_origins=("https://app.example",))
    path = "/ws/ui?page=abcdefghijkl"
    own = f"http://{client.host}:{client.port}"
    for origin in ("https://evil.example", own):
        status, body, _ = await refused(client, path, headers={"Origin": origin})
        assert (status, body["code"]) == (403, "forbidden_origin")
    async with client.ws_connect(path, origin="https://app.example") as ws:
        assert (await ws.receive(timeout=3)).type is aiohttp.WSMsgType.TEXT
    assert client.app[SERVICE].counters["refused:forbidden_origin"] == 2


async def test_with_tokens_on_the_bot_socket_needs_the_right_one(
    aiohttp_client: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client = await make_client(aiohttp_client, tokens=(TOKEN,))
    status, body, headers = await refused(client, "/ws")
    assert (status, body["code"]) == (401, "unauthorized") and headers["WWW-Authenticate"].startswith("Bearer")
    wrong = "W" + TOKEN[1:]
    status, body, _ = await refused(client, "/ws", headers={"Authorization": f"Bearer {wrong}"})
    assert (status, body["code"]) == (401, "invalid_token")
    status, body, _ = await refused(client, f"/ws?token={wrong}")
    assert (status, body["code"]) == (401, "invalid_token")
    ws = await welcomed(client, headers={"Authorization": f"Bearer {TOKEN}"})
    await ws.close()
    ws = await welcomed(client, f"/ws?channels=none&token={TOKEN}")  # the weaker way, for clients without headers
    await ws.close()
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("bixweb"))
    assert "refused" in ours and wrong not in ours and TOKEN not in ours  # refusals are logged, tokens never


async def test_a_token_file_is_read_at_start(aiohttp_client: Factory, tmp_path: Any) -> None:
    file = tmp_path / "tokens"
    file.write_text(f"# one per line\n{TOKEN}\n")
    client = await make_client(aiohttp_client, token_file=str(file))
    assert (await refused(client, "/ws"))[0] == 401
    await (await welcomed(client, headers={"Authorization": f"Bearer {TOKEN}"})).close()


async def test_without_tokens_bots_are_served_on_loopback_only(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client, trusted_proxies=("127.0.0.1",))
    outside = {"X-Forwarded-For": "203.0.113.9"}
    status, body, _ = await refused(client, "/ws", headers=outside)
    assert (status, body["code"]) == (403, "loopback_only")
    await (await welcomed(client, headers={"X-Forwarded-For": "127.0.0.5"})).close()
    opened = await make_client(aiohttp_client, trusted_proxies=("127.0.0.1",), open_bots=True)
    await (await welcomed(opened, headers=outside)).close()


async def test_forwarded_headers_count_only_from_a_trusted_proxy(aiohttp_client: Factory) -> None:
    """Untrusted, X-Forwarded-For names no client: a proxied request is not let in as loopback,
    and the page stays ws:// whatever X-Forwarded-Proto says."""
    client = await make_client(aiohttp_client)
    status, body, _ = await refused(client, "/ws", headers={"X-Forwarded-For": "127.0.0.1"})
    assert (status, body["code"]) == (403, "loopback_only")  # a proxy on this host, not a local client
    await (await welcomed(client)).close()
    html = await (await client.get("/", headers={"X-Forwarded-Proto": "https"})).text()
    assert 'hx-ws:connect="/ws/ui?page=' in html
    trusting = await make_client(aiohttp_client, trusted_proxies=("127.0.0.0/8",))
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9", "Host": "example.com"}
    html = await (await trusting.get("/", headers=proxied)).text()
    assert re.search(r'hx-ws:connect="wss://example\.com/ws/ui\?page=[\w-]+"', html)


async def test_one_address_gets_its_share_others_keep_being_served(aiohttp_client: Factory) -> None:
    client = await make_client(
        aiohttp_client, max_connections_per_client=2, trusted_proxies=("127.0.0.1",), open_bots=True
    )
    me, other = {"X-Forwarded-For": "203.0.113.1"}, {"X-Forwarded-For": "203.0.113.2"}
    first = await welcomed(client, "/ws?symbols=BTCUSDT", headers=me)
    second = await welcomed(client, headers=me)
    status, body, headers = await refused(client, "/ws", headers=me)
    assert (status, body["code"], headers["Retry-After"]) == (429, "too_many_connections", "5")
    status, _, _ = await refused(client, "/ws/ui?page=abcdefghijkl", headers=me)  # every socket counts
    assert status == 429
    third = await welcomed(client, headers=other)
    frame = json.loads((await first.receive(timeout=3)).data)  # the first still gets its data
    assert_valid(frame)
    assert unwrap(frame)[0]["type"] in ("initial_data", "market_update", "trade", "status")
    await second.close()
    await (await welcomed(client, headers=me)).close()  # room again once one closed
    for ws in (first, third):
        await ws.close()


async def test_a_full_server_answers_503(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client, max_connections=2)
    sockets = [await welcomed(client), await welcomed(client)]
    status, body, headers = await refused(client, "/ws")
    assert (status, body["code"], headers["Retry-After"]) == (503, "server_full", "5")
    await sockets.pop().close()
    sockets.append(await welcomed(client))
    for ws in sockets:
        await ws.close()
    assert client.app[SERVICE].counters["refused:server_full"] == 1


async def test_a_bad_token_file_stops_the_start(tmp_path: Any) -> None:
    from bixweb.errors import ConfigError

    with pytest.raises(ConfigError, match="token-file"):
        create_app(fast_settings(token_file=str(tmp_path / "nope")))


async def test_a_page_of_another_site_cannot_use_the_bot_socket_through_a_browser(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client)
    status, body, _ = await refused(client, "/ws", headers={"Origin": "https://evil.example"})
    assert (status, body["code"]) == (403, "forbidden_origin")
    await (await welcomed(client, origin=f"http://{client.host}:{client.port}")).close()  # its own host: fine


async def test_dns_rebinding_cannot_reach_a_local_server(aiohttp_client: Factory) -> None:
    """A page of evil.example whose name now points at 127.0.0.1: Origin and Host agree, the peer is local."""
    client = await make_client(aiohttp_client)
    rebound = f"evil.example:{client.port}"
    for path in ("/ws", "/ws/ui?page=abcdefghijkl"):
        status, body, _ = await refused(client, path, headers={"Host": rebound, "Origin": f"http://{rebound}"})
        assert (status, body["code"]) == (403, "forbidden_host"), path
    status, body, _ = await refused(client, "/ws", headers={"Host": rebound})
    assert (status, body["code"]) == (403, "forbidden_host")
    await (await welcomed(client, headers={"Host": f"localhost:{client.port}"})).close()
    allowed = await make_client(aiohttp_client, allowed_origins=("https://app.example",))
    await (await welcomed(allowed, headers={"Host": "app.example"})).close()  # a configured name is fine


def test_local_hosts_are_addresses_localhost_or_allowed_names() -> None:
    from bixweb.access import is_loopback, local_host

    assert local_host("127.0.0.1:8080") and local_host("[::1]:8080") and local_host("localhost")
    assert not local_host("evil.example:8080") and local_host("app.example", ("https://app.example",))
    assert is_loopback("127.0.0.9")


async def test_a_client_retrying_a_refused_handshake_makes_one_log_line_and_every_refusal_counts(
    aiohttp_client: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "bixweb")
    client: TestClient[Any, Any] = await aiohttp_client(create_app(fast_settings()))
    for _ in range(50):  # a bot with a typo in a loop
        status, body, _ = await refused(client, "/ws?symbols=NOPEUSDT")
        assert (status, body["code"]) == (400, "unknown_symbol")
    status, body, _ = await refused(client, "/ws?channels=nope")  # another code has a line of its own
    assert status == 400 and body["code"] != "unknown_symbol"
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "refused" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "unknown_symbol" in lines[0] and body["code"] in lines[1]
    assert client.app[SERVICE].counters["refused:unknown_symbol"] == 50
