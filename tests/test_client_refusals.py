"""The client against a server that refuses its handshake, and symbols named in lower case.

Every handshake the server sees is counted by a middleware put in front of
the real app's own, so "not retried" is a count, not a guess.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bixweb.client import HandshakeRefused, WebSocketClient
from bixweb.client.refusal import MAX_BODY_BYTES, backoff_with_hint, refusal, retry_after
from bixweb.web import gate
from bixweb.web.app import create_app
from tests.client_fixtures import (
    ClientFactory,
    ServerFactory,
    eventually,
    make_client_fixture,  # noqa: F401 - fixture "make_client"
    ws_url,
)
from tests.support import fast_settings

TOKEN = "a-token-of-the-servers-own"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def count_handshakes(app: web.Application) -> list[float]:
    """When each request for ``/ws`` reached ``app`` (before any of its own middlewares refused it)."""
    seen: list[float] = []

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/ws":
            seen.append(time.monotonic())
        return await handler(request)

    app.middlewares.insert(0, count)
    return seen


async def counted_server(aiohttp_server: ServerFactory, **settings: Any) -> tuple[TestServer, list[float]]:
    app = create_app(fast_settings(**settings))
    seen = count_handshakes(app)
    server: TestServer = await aiohttp_server(app)
    return server, seen


# -- reading a refusal, as values ----------------------------------------------


def test_a_refusal_carries_the_servers_code_and_message() -> None:
    error = refusal(400, "Bad Request", {}, b'{"code": "unknown_symbol", "message": "unknown symbol \'FOO\'"}')
    assert (error.status, error.code, error.message, error.retry_after) == (
        400,
        "unknown_symbol",
        "unknown symbol 'FOO'",
        None,
    )
    assert not error.transient


@pytest.mark.parametrize(
    "body",
    [
        b"<html><h1>502 Bad Gateway</h1></html>",
        b"",
        b'["code"]',
        b'{"code": 7}',
        b'{"code": "x' + b"y" * MAX_BODY_BYTES,
    ],
)
def test_a_refusal_that_is_not_bixwebs_json_keeps_the_status_and_its_reason(body: bytes) -> None:
    error = refusal(502, "Bad Gateway", {}, body)
    assert (error.status, error.code, error.message) == (502, None, "Bad Gateway")
    assert error.transient


@pytest.mark.parametrize(
    ("status", "transient"),
    [(400, False), (401, False), (403, False), (426, False), (408, True), (429, True), (503, True), (500, True)],
)
def test_only_refusals_that_can_pass_by_themselves_are_transient(status: int, transient: bool) -> None:
    assert HandshakeRefused(status, None, "-").transient is transient


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("5", 5.0),
        (" 0 ", 0.0),
        (None, None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("-1", None),
        ("1.5", None),
        ("9" * 5000, None),
        ("٣", None),
    ],
)
def test_retry_after_is_read_in_seconds_only(header: str | None, seconds: float | None) -> None:
    assert retry_after(header) == seconds


def test_the_backoff_waits_at_least_what_the_server_asks_but_never_past_its_maximum() -> None:
    asked = HandshakeRefused(503, "server_full", "full", retry_after=5.0)
    assert backoff_with_hint(0.01, asked, 30.0) == 5.0
    assert backoff_with_hint(7.0, asked, 30.0) == 7.0
    assert backoff_with_hint(0.01, asked, 2.0) == 2.0
    assert backoff_with_hint(0.01, OSError("refused"), 30.0) == 0.01


# -- permanent refusals: raised, never retried ----------------------------------


@pytest.mark.timeout(20)
async def test_an_unknown_symbol_is_refused_with_its_code_and_not_retried(
    aiohttp_server: ServerFactory, make_client: ClientFactory
) -> None:
    server, seen = await counted_server(aiohttp_server)
    client = make_client(ws_url(server), symbols=["FOOUSDT"], reconnect_initial=0.01, reconnect_max=0.02)
    async with asyncio.timeout(5):
        with pytest.raises(HandshakeRefused) as refused:
            await client.connect()
    assert (refused.value.status, refused.value.code) == (400, "unknown_symbol")
    assert "FOOUSDT" in refused.value.message and not refused.value.transient
    assert len(seen) == 1
    async with asyncio.timeout(5):  # the loop stops at its first refusal instead of retrying every 20 ms
        with pytest.raises(HandshakeRefused) as again:
            await client.receive_messages()
    assert again.value.code == "unknown_symbol" and client.failure is again.value
    assert len(seen) == 2 and client.connections == 0 and not client.is_connected()


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("token", "code"), [("not-ours", "invalid_token"), (None, "unauthorized")])
async def test_a_bad_token_is_refused_with_its_code_and_not_retried(
    aiohttp_server: ServerFactory, make_client: ClientFactory, token: str | None, code: str
) -> None:
    server, seen = await counted_server(aiohttp_server, tokens=(TOKEN,))
    client = make_client(ws_url(server), token=token, reconnect_initial=0.01, reconnect_max=0.02)
    async with asyncio.timeout(5):
        with pytest.raises(HandshakeRefused) as refused:
            await client.connect()
    assert (refused.value.status, refused.value.code) == (401, code)
    assert not refused.value.transient and len(seen) == 1


@pytest.mark.timeout(20)
async def test_a_background_client_that_is_refused_stops_and_says_why(aiohttp_server: ServerFactory) -> None:
    server, seen = await counted_server(aiohttp_server, tokens=(TOKEN,))
    client = WebSocketClient(ws_url(server), token="not-ours", reconnect_initial=0.01, reconnect_max=0.02)
    thread = client.start_background()
    try:
        await asyncio.to_thread(thread.join, 5.0)  # the server runs in this loop: wait off it
        assert not thread.is_alive(), "the background client kept retrying a bad token"
    finally:
        await asyncio.to_thread(client.stop)
    assert isinstance(client.failure, HandshakeRefused)
    assert (client.failure.status, client.failure.code) == (401, "invalid_token")
    assert len(seen) == 1 and not client.is_connected()


@pytest.mark.timeout(20)
async def test_connect_while_the_loop_retries_raises_the_refusal_that_stops_it(
    aiohttp_server: ServerFactory, make_client: ClientFactory
) -> None:
    server, seen = await counted_server(aiohttp_server)
    client = make_client(ws_url(server), symbols="FOOUSDT", connect_timeout=5.0)
    loop = asyncio.create_task(client.receive_messages())
    await asyncio.sleep(0)  # the loop is running (and connecting) before connect() is called
    async with asyncio.timeout(5):
        with pytest.raises(HandshakeRefused) as refused:
            await client.connect()
        with pytest.raises(HandshakeRefused):
            await loop
    assert refused.value.code == "unknown_symbol" and len(seen) == 1


@pytest.mark.timeout(20)
async def test_a_proxys_error_page_is_a_refusal_without_a_code(
    aiohttp_server: ServerFactory, make_client: ClientFactory
) -> None:
    async def bad_gateway(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>" + "x" * 100_000 + "</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/ws", bad_gateway)
    server: TestServer = await aiohttp_server(app)
    client = make_client(ws_url(server))
    async with asyncio.timeout(5):
        with pytest.raises(HandshakeRefused) as refused:
            await client.connect()
    assert (refused.value.status, refused.value.code, refused.value.message) == (502, None, "Bad Gateway")
    assert refused.value.transient


# -- transient refusals: retried, after the server's Retry-After ----------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("limit", "status", "code"),
    [("max_connections_per_client", 429, "too_many_connections"), ("max_connections", 503, "server_full")],
)
async def test_a_full_server_is_retried_no_sooner_than_it_asks_until_there_is_room(
    aiohttp_server: ServerFactory,
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    limit: str,
    status: int,
    code: str,
) -> None:
    monkeypatch.setattr(gate, "RETRY_AFTER_S", 1)
    server, seen = await counted_server(aiohttp_server, **{limit: 1})
    async with aiohttp.ClientSession() as session:
        holder = await session.ws_connect(ws_url(server) + "?channels=none")  # takes the only place
        client = make_client(ws_url(server), symbols="BTCUSDT", reconnect_initial=0.01, reconnect_max=5.0)
        with pytest.raises(HandshakeRefused) as refused:
            await client.connect()  # one attempt: the caller learns why
        assert (refused.value.status, refused.value.code, refused.value.retry_after) == (status, code, 1.0)
        assert refused.value.transient
        loop = asyncio.create_task(client.receive_messages())
        await eventually(lambda: len(seen) >= 4, timeout=10)  # the holder, connect(), two tries of the loop
        assert not loop.done() and not client.is_connected()
        gaps = [b - a for a, b in zip(seen[2:], seen[3:], strict=False)]
        assert min(gaps) >= 0.95, gaps  # the backoff alone would wait at most 10-20 ms
        await holder.close()
        await eventually(client.is_connected, timeout=10)
    welcome = await client.get_message(timeout=5)
    assert welcome is not None and welcome["type"] == "welcome"
    assert welcome["subscriptions"] == {"ticker": ["BTCUSDT"]}
    await client.disconnect()
    await loop
