"""Shared fixtures: the real app on the seeded simulated market, and real server processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bixweb import protocol
from tests.browser import ARTIFACTS, launch
from tests.nginx import NginxProxy
from tests.support import ServerProcess


@pytest.fixture
def schemas() -> protocol.SchemaSet:
    return protocol.schemas()


@pytest.fixture
def server_process() -> Iterator[Callable[..., ServerProcess]]:
    """Start real server processes; every one is stopped after the test."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, open_files: int | None = None) -> ServerProcess:
        server = ServerProcess(*args, env=env, open_files=open_files).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def nginx_proxy(tmp_path: Path) -> Iterator[Callable[..., NginxProxy]]:
    """Start real nginx (TLS, the shipped template) in front of a server port; every one is stopped after the test."""
    started: list[NginxProxy] = []

    def start(upstream_port: int, *, proxy_read_timeout: str = "60s") -> NginxProxy:
        proxy = NginxProxy(tmp_path / f"nginx-{len(started)}", upstream_port, proxy_read_timeout=proxy_read_timeout)
        started.append(proxy)
        return proxy.start()

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A real Chromium for this test."""
    async for launched in launch():
        yield launched


def pytest_terminal_summary(terminalreporter: Any) -> None:
    folder = ARTIFACTS / "screenshots"
    shots = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if shots:
        terminalreporter.write_line(f"dashboard screenshots ({len(shots)}) in {folder}:")
        for shot in shots:
            terminalreporter.write_line(f"  {shot}")


@pytest.fixture
def redis_server(tmp_path: Any) -> Iterator[Any]:
    """A real redis-server on a free loopback port, killed after the test."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path).start()
    yield server
    server.stop()
