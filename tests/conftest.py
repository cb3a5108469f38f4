"""Shared fixtures: the real app on the seeded simulated market, and real server processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from bixweb import protocol
from tests.support import ServerProcess


@pytest.fixture
def schemas() -> protocol.SchemaSet:
    return protocol.schemas()


@pytest.fixture
def server_process() -> Iterator[Callable[..., ServerProcess]]:
    """Start real server processes; every one is stopped after the test."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(*args, env=env).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
