"""A raw WebSocket client for conformance tests: frames built byte by byte, and a canary bot."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import WSMsgType
from aiohttp.test_utils import TestServer

TEXT, BINARY, CLOSE, PING = 0x1, 0x2, 0x8, 0x9
RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, mask: bool = True) -> bytes:
    """One client frame as the RFC lays it out, masked unless told not to."""
    head = bytearray([(0x80 if fin else 0) | rsv | opcode])
    mask_bit = 0x80 if mask else 0
    length = len(payload)
    if length < 126:
        head.append(mask_bit | length)
    elif length < 65_536:
        head += bytes([mask_bit | 126]) + length.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + length.to_bytes(8, "big")
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    return bytes(head) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return frame(CLOSE, struct.pack("!H", code) + reason)


class RawSocket:
    """A WebSocket client made of an asyncio stream and the frame builder above."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def handshake(
        cls, server: TestServer, path: str, *, version: str | None = "13", behind: bytes = b""
    ) -> tuple[int, dict[str, str], bytes, RawSocket]:
        """Send the upgrade request (and ``behind`` it, in the same write); the answer and the socket."""
        reader, writer = await asyncio.open_connection(server.host, server.port)
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {server.host}:{server.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
        ]
        if version is not None:
            lines.append(f"Sec-WebSocket-Version: {version}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + behind)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)}
        status = int(status_line.split()[1])
        body = b""
        if status != 101 and "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        return status, headers, body, cls(reader, writer)

    @classmethod
    async def open(cls, server: TestServer, path: str, *, behind: bytes = b"") -> RawSocket:
        status, _, _, raw = await cls.handshake(server, path, behind=behind)
        assert status == 101
        return raw

    async def read_frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """The server's next frame (servers do not mask)."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(await self.reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self.reader.readexactly(8), "big")
        return first & 0x0F, await self.reader.readexactly(length)

    async def close_code(self, timeout: float = 5.0) -> int | str:
        """Read up to the server's close frame: its code, or what ended the stream instead."""
        try:
            while True:
                opcode, payload = await self.read_frame(timeout)
                if opcode == CLOSE:
                    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else "empty close"
        except asyncio.IncompleteReadError:
            return "eof"
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            return "timeout"

    async def finish(self) -> None:
        """Answer the close and let go, as a polite client does."""
        with contextlib.suppress(ConnectionError):
            self.writer.write(close_frame(1000))
            await self.writer.drain()
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


class Canary:
    """A bot on the ticker of every symbol; it must keep receiving while others misbehave."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.arrivals: list[float] = []
        self.closed: int | None = None
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is WSMsgType.TEXT:
                self.arrivals.append(time.monotonic())
        self.closed = self.ws.close_code

    def longest_gap(self, since: float) -> float:
        times = [since, *(t for t in self.arrivals if t >= since), time.monotonic()]
        return max(b - a for a, b in zip(times, times[1:], strict=False))

    async def stop(self) -> None:
        await self.ws.close()
        await self.task


@contextlib.asynccontextmanager
async def canary_on(server: TestServer) -> AsyncIterator[Canary]:
    """A :class:`Canary` reading while the body runs; it must not have been closed."""
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(server.make_url("/ws?symbols=*&channels=ticker"))
        canary = Canary(ws)
        yield canary
        assert canary.closed is None, f"the canary was closed with {canary.closed}"
        await canary.stop()
