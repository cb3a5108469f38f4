"""Fixtures for the client tests: the real app in-process, clients that always disconnect.

Import the ``*_fixture`` functions into a test module to use the fixtures
``bixweb_server`` and ``make_client``. Real server processes come from
``server_process`` in ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from bixweb.client import WebSocketClient
from bixweb.config import Settings
from bixweb.web.app import create_app

ServerFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture(name="bixweb_server")
async def bixweb_server_fixture(aiohttp_server: ServerFactory) -> AsyncIterator[TestServer]:
    """The real app in-process, with the seeded simulated market at 20 ticks/s."""
    server = await aiohttp_server(create_app(Settings(tick_rate=20.0)))
    yield server


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
