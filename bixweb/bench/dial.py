"""Opening one load connection: the socket, its source address, the upgrade.

Beyond ~28,000 connections to one loopback address and port, the
ephemeral ports of a single source address run out; binding each socket
to one of several source addresses (127.0.0.1, 127.0.0.2, ...) with
``IP_BIND_ADDRESS_NO_PORT`` lets the kernel reuse ports per address.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from bixweb.bench.wsclient import WsClient
from bixweb.bench.wsframes import new_key, upgrade_request

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
STALLED_RCVBUF = 4096
"""Receive buffer of a stalled client: keep the kernel from soaking up much on our side."""
PAGE_SOCKET = re.compile(rb'hx-ws:connect="([^"]+)"')
PAGE_LIMIT = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Target:
    """Where the load goes: a server address and the paths (with query) of its sockets."""

    host: str
    port: int
    bot_path: str = "/ws"
    page_path: str = "/"
    """The dashboard page that names a ``/ws/ui?page=...`` socket."""

    @property
    def authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def loopback_sources(count: int) -> tuple[str, ...]:
    """``count`` loopback source addresses: 127.0.0.1, 127.0.0.2, ..."""
    return tuple(f"127.0.0.{i}" for i in range(1, count + 1))


def new_socket(host: str, source: str | None, *, stall: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if stall:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
        if source is not None:
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
    except OSError:
        sock.close()
        raise
    return sock


async def open_socket(
    target: Target,
    path: str,
    make: Callable[[bytes, str], WsClient],
    *,
    source: str | None = None,
    stall: bool = False,
) -> WsClient:
    """Connect, send the upgrade for ``path`` and wait until the server has accepted it."""
    loop = asyncio.get_running_loop()
    sock = new_socket(target.host, source, stall=stall)
    started = time.monotonic()  # the handshake time includes the TCP connect (and any SYN retry)
    try:
        await loop.sock_connect(sock, (target.host, target.port))
    except OSError:
        sock.close()
        raise
    key = new_key()
    request = upgrade_request(path, target.authority, key)

    def protocol() -> WsClient:
        client = make(request, key)
        client.started = started
        return client

    _, client = await loop.create_connection(protocol, sock=sock)
    await client.opened
    return client


async def dashboard_socket_path(target: Target) -> str:
    """GET the dashboard page and return the socket path it names (``/ws/ui?page=...``)."""
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        writer.write(
            f"GET {target.page_path} HTTP/1.1\r\nHost: {target.authority}\r\nConnection: close\r\n\r\n".encode()
        )
        page = await reader.read(PAGE_LIMIT)
        while not PAGE_SOCKET.search(page):
            more = await reader.read(PAGE_LIMIT)
            if not more:
                raise ConnectionError(f"GET {target.page_path}: no hx-ws:connect in the page")
            page += more
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    found = PAGE_SOCKET.search(page)
    assert found is not None
    return found[1].decode().replace("&amp;", "&")
