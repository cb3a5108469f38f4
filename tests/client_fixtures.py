"""Fixtures for the client tests: the real app in-process, clients that always disconnect.

Import the ``*_fixture`` functions into a test module to use the fixtures
``bixweb_server``, ``make_bixweb_server`` and ``make_client``. Real server
processes come from ``server_process`` in ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer

from bixweb.client import WebSocketClient, unwrap
from bixweb.config import Settings
from bixweb.web.app import create_app
from bixweb.web.connection import Connection
from bixweb.web.service import SERVICE

ServerFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture(name="bixweb_server")
async def bixweb_server_fixture(aiohttp_server: ServerFactory) -> AsyncIterator[TestServer]:
    """The real app in-process, with the seeded simulated market at 20 ticks/s."""
    server = await aiohttp_server(
        create_app(Settings(tick_rate=20.0, data_dir=tempfile.mkdtemp(prefix="bixweb-test-")))
    )
    yield server


@pytest.fixture(name="make_bixweb_server")
async def make_bixweb_server_fixture(aiohttp_server: ServerFactory) -> AsyncIterator[ServerFactory]:
    """Start the real app in-process with these settings (``tick_rate=40.0``, ...)."""

    async def make(**settings: Any) -> TestServer:
        settings.setdefault("data_dir", tempfile.mkdtemp(prefix="bixweb-test-"))  # not the user's data directory
        server: TestServer = await aiohttp_server(create_app(Settings(**settings)))
        return server

    yield make


def bot_connections(server: TestServer) -> list[Connection]:
    """The server side of every open bot socket."""
    return [conn for conn in server.app[SERVICE].connections if conn.kind == "bot"]


Message = dict[str, Any]


def tap_frames(
    monkeypatch: pytest.MonkeyPatch, client: WebSocketClient, edit: Callable[[Message], Message | None]
) -> None:
    """Pass every server message through ``edit`` before ``client`` sees it; ``None`` drops it.

    Stands for a faulty network or server: the client's own frame handling
    then gets the edited frame (a batch, a single message, or nothing).
    """
    original = client._on_frame

    async def on_frame(data: bytes) -> None:
        messages = [edited for m in unwrap(orjson.loads(data)) if (edited := edit(m)) is not None]
        if len(messages) == 1:
            await original(orjson.dumps(messages[0]))
        elif messages:
            await original(orjson.dumps({"type": "batch", "messages": messages}))

    monkeypatch.setattr(client, "_on_frame", on_frame)


def ws_url(server: TestServer) -> str:
    return f"ws://{server.host}:{server.port}/ws"


async def eventually(check: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> None:
    """Wait until ``check()`` is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s: {check}")
        await asyncio.sleep(interval)


ClientFactory = Callable[..., WebSocketClient]


@pytest.fixture(name="make_client")
async def make_client_fixture() -> AsyncIterator[ClientFactory]:
    """Build clients that are disconnected when the test ends, whatever happens."""
    clients: list[WebSocketClient] = []

    def make(*args: Any, **kwargs: Any) -> WebSocketClient:
        client = WebSocketClient(*args, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.disconnect()
