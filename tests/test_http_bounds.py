"""Plain HTTP under hostile clients, on the real in-process app: deadlines, counted connections, clean answers.

Raw sockets stand in for the clients a library would not be: silent ones,
slowloris, oversized request lines, bytes that are not UTF-8.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bixweb.web.app import create_app
from bixweb.web.service import SERVICE
from tests.support import fast_settings

Factory = Callable[..., Any]
TOKEN = "t0ken-for-the-tests-0123456789"
HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def start(aiohttp_server: Factory, **overrides: Any) -> TestServer:
    server: TestServer = await aiohttp_server(create_app(fast_settings(**overrides)))
    return server


async def connect(server: TestServer, local: str | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port, local_addr=(local, 0) if local else None)


async def seconds_until_closed(reader: asyncio.StreamReader, limit: float) -> float | None:
    """Read (and drop) what the server sends until it closes; how long that took, or None if it did not."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(limit):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return time.monotonic() - started


async def exchange(server: TestServer, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """One raw request on a new connection: status, headers, body (the server closes or keeps it)."""
    reader, writer = await connect(server)
    writer.write(raw)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 5)
    writer.close()
    return int(status_line.split()[1]), headers, body


@contextlib.asynccontextmanager
async def canary(server: TestServer) -> AsyncIterator[list[float]]:
    """A bot reading BTCUSDT's ticker throughout; yields the arrival times of its frames."""
    arrivals: list[float] = []
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(
            server.make_url("/ws?symbols=BTCUSDT&channels=ticker"), headers={"Authorization": f"Bearer {TOKEN}"}
        )

        async def read() -> None:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    arrivals.append(time.monotonic())

        task = asyncio.create_task(read())
        try:
            yield arrivals
        finally:
            assert not task.done(), "the canary's socket closed"
            await ws.close()
            await task


def largest_gap(arrivals: list[float], until: float) -> float:
    times = [*arrivals, until]
    return max(b - a for a, b in zip(times, times[1:], strict=False))


async def test_silent_and_slowloris_connections_are_closed_at_the_header_timeout(aiohttp_server: Factory) -> None:
    server = await start(aiohttp_server, header_timeout=1.0, keepalive_timeout=30.0)
    async with canary(server) as arrivals:
        silent = [await connect(server) for _ in range(5)]
        slow = [await connect(server) for _ in range(5)]

        async def trickle(writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                for byte in HEAD[:-2]:  # never the blank line that ends the head
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.1)

        trickles = [asyncio.create_task(trickle(writer)) for _, writer in slow]
        closed = await asyncio.gather(*(seconds_until_closed(reader, 5.0) for reader, _ in [*silent, *slow]))
        for task in trickles:
            task.cancel()
        assert all(t is not None and 0.8 <= t <= 3.0 for t in closed), closed
        status, _, body = await exchange(server, HEAD)  # a client that sends its head is served
        assert status == 200 and json.loads(body)["status"] in ("ok", "degraded")
        assert largest_gap(arrivals, time.monotonic()) < 2.0  # the canary reads on (a busy machine may pause it ~1 s)
    assert server.app[SERVICE].limits.open == 0  # every count given back


async def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(aiohttp_server: Factory) -> None:
    # Wide margins: a busy machine may stretch a sleep, and a request that comes after the
    # timeout has fired meets a closed socket (the bound is what is tested, not the machine).
    server = await start(aiohttp_server, header_timeout=10.0, keepalive_timeout=2.0)
    reader, writer = await connect(server)
    for _ in range(3):  # requests within the timeout keep it open
        writer.write(HEAD)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        await asyncio.sleep(0.2)
    closed = await seconds_until_closed(reader, 10.0)
    assert closed is not None and 1.0 <= closed <= 8.0, closed
    writer.close()


async def test_upgraded_sockets_outlive_both_timeouts(aiohttp_server: Factory) -> None:
    server = await start(aiohttp_server, header_timeout=0.3, keepalive_timeout=0.3)
    async with canary(server) as arrivals:
        await asyncio.sleep(2.0)
        assert len(arrivals) > 10 and largest_gap(arrivals, time.monotonic()) < 1.0


async def test_plain_connections_count_against_the_per_client_limit(aiohttp_server: Factory) -> None:
    server = await start(aiohttp_server, max_connections_per_client=3, header_timeout=30.0)
    service = server.app[SERVICE]
    held = [await connect(server) for _ in range(3)]  # silent: nothing but the connection
    await asyncio.sleep(0.1)
    assert service.limits.held_by("127.0.0.1") == 3
    status, headers, body = await exchange(server, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (status, json.loads(body)["code"], headers["retry-after"]) == (429, "too_many_connections", "5")
    upgrade = (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    status, _, body = await exchange(server, upgrade)
    assert (status, json.loads(body)["code"]) == (429, "too_many_connections")
    status, _, _ = await exchange(server, HEAD)  # a probe is answered even so
    assert status == 200
    held.pop()[1].close()
    await asyncio.sleep(0.1)
    async with aiohttp.ClientSession() as session:  # room again: a WebSocket is one count, not two
        ws = await session.ws_connect(server.make_url("/ws?channels=none"))
        await ws.receive(timeout=3)
        assert service.limits.held_by("127.0.0.1") == 3
        status, _, _ = await exchange(server, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert status == 429  # and no room for a fourth
        await ws.close()
    for _, writer in held:
        writer.close()
    assert service.counters["refused:too_many_connections"] == 3  # the probe was answered, not refused


async def test_a_full_server_refuses_plain_http_with_503(aiohttp_server: Factory) -> None:
    server = await start(aiohttp_server, max_connections=2, header_timeout=30.0)
    held = [await connect(server, f"127.0.0.{n}") for n in (2, 3)]
    await asyncio.sleep(0.1)
    status, headers, body = await exchange(server, b"GET /schemas/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (status, json.loads(body)["code"], headers["retry-after"]) == (503, "server_full", "5")
    assert headers["connection"] == "close"
    for _, writer in held:
        writer.close()


async def test_a_request_refused_before_routing_gets_one_access_line_and_no_traceback(
    aiohttp_server: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start(aiohttp_server)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        status, _, body = await exchange(server, b"GET /?q=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await asyncio.sleep(0.1)
    assert status == 400 and json.loads(body)["code"] == "bad_request"
    assert b"aaaa" not in body  # not echoed
    lines = [r for r in caplog.records if r.name.startswith(("aiohttp", "bixweb"))]
    access = [r for r in lines if r.name == "aiohttp.access"]
    assert len(access) == 1 and "status=400" in access[0].getMessage(), [r.getMessage() for r in lines]
    assert not [r for r in lines if r.levelno >= logging.ERROR or r.exc_info], [r.getMessage() for r in lines]


async def test_bad_header_bytes_get_401_or_400_never_500(aiohttp_server: Factory) -> None:
    server = await start(aiohttp_server, tokens=(TOKEN,))
    upgrade = (
        b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )
    status, headers, body = await exchange(
        server,
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xff\xfe\xc3(-not-utf-8\r\n" + upgrade + b"\r\n",
    )
    assert (status, json.loads(body)["code"]) == (401, "invalid_token")
    assert "invalid_token" in headers["www-authenticate"]
    for host in (b"[::1", b"\xff\xfe", b"[", b"evil.example:\xff"):
        status, _, _ = await exchange(server, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        assert status in (400, 403), (host, status)
    status, _, _ = await exchange(
        server, b"GET /ws/ui?page=abcdefghijkl HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://[\r\n" + upgrade + b"\r\n"
    )
    assert status == 403


async def test_a_rebound_host_gets_403_on_pages_and_metrics_but_healthz_answers(aiohttp_server: Factory) -> None:
    server = await start(aiohttp_server)
    for path in ("/", "/metrics", "/schemas/", "/static/style.css"):
        status, _, body = await exchange(
            server, f"GET {path} HTTP/1.1\r\nHost: evil.example:{server.port}\r\n\r\n".encode()
        )
        assert (status, json.loads(body)["code"]) == (403, "forbidden_host"), path
    status, _, _ = await exchange(server, f"GET /healthz HTTP/1.1\r\nHost: evil.example:{server.port}\r\n\r\n".encode())
    assert status == 200  # probes name the server as they like; it tells only liveness
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}"):
        status, _, _ = await exchange(server, f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert status == 200, host
    allowed = await start(aiohttp_server, allowed_origins=("https://app.example",))
    status, _, _ = await exchange(allowed, b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n")
    assert status == 200


async def test_metrics_only_for_loopback_clients_or_a_token(aiohttp_server: Factory) -> None:
    plain = await start(aiohttp_server)
    metrics = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n{}\r\n"
    status, _, _ = await exchange(plain, metrics.format("").encode())
    assert status == 200
    status, _, body = await exchange(plain, metrics.format("X-Forwarded-For: 203.0.113.7\r\n").encode())
    assert (status, json.loads(body)["code"]) == (403, "loopback_only")  # a proxy nobody said to trust
    proxied = await start(aiohttp_server, trusted_proxies=("127.0.0.1",), tokens=(TOKEN,))
    status, _, body = await exchange(proxied, metrics.format("X-Forwarded-For: 203.0.113.7\r\n").encode())
    assert (status, json.loads(body)["code"]) == (403, "loopback_only")
    status, _, _ = await exchange(proxied, metrics.format("X-Forwarded-For: 127.0.0.1\r\n").encode())
    assert status == 200
    with_token = f"X-Forwarded-For: 203.0.113.7\r\nAuthorization: Bearer {TOKEN}\r\n"
    status, _, _ = await exchange(proxied, metrics.format(with_token).encode())
    assert status == 200
    status, _, body = await exchange(proxied, metrics.format("Authorization: Bearer not-the-token-at-all\r\n").encode())
    assert (status, json.loads(body)["code"]) == (401, "invalid_token")


async def test_hostile_clients_at_once_each_get_a_clean_answer_while_the_canary_reads(
    aiohttp_server: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start(aiohttp_server, tokens=(TOKEN,), header_timeout=1.0)
    hostile = [
        b"GET /?q=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xff\xfe\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 198.51.100.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n",
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        async with canary(server) as arrivals:
            started = time.monotonic()
            silent = [await connect(server) for _ in range(10)]
            answers = await asyncio.gather(*(exchange(server, raw) for raw in hostile * 5))
            closed = await asyncio.gather(*(seconds_until_closed(reader, 5.0) for reader, _ in silent))
            assert largest_gap(arrivals, time.monotonic()) < 1.0
            assert len(arrivals) >= (time.monotonic() - started) * 5  # the ticker kept coming (20 ticks/s)
    statuses = sorted({status for status, _, _ in answers})
    assert set(statuses) <= {400, 401, 403}, statuses
    assert all(t is not None for t in closed)
    records = [r for r in caplog.records if r.name.startswith(("aiohttp", "bixweb"))]
    assert not [r for r in records if r.levelno >= logging.ERROR or r.exc_info], [r.getMessage() for r in records]
    # at most an access line and a refusal per hostile request; the silent ones, none; the canary's own two
    assert len(records) <= 2 * len(answers) + 2, [r.getMessage() for r in records]
