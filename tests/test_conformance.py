"""RFC 6455 on the wire, with raw sockets: close codes for bad frames, the version handshake,
resets during close, and a flood's promised errors before its 1008.

The frames are built here, byte by byte (:func:`frame`), so a client can
send what no WebSocket library would; the server is the real in-process app
on the seeded simulated market, and a canary bot reads throughout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestServer

from bixweb.web.app import create_app
from bixweb.web.frames import FrameChecker, close_code_allowed
from bixweb.web.service import SERVICE
from tests.support import fast_settings, unwrap

ServerFactory = Callable[..., Any]
BOT = "/ws?channels=none"
UI = "/ws/ui?page=conformance-page"
TEXT, BINARY, CLOSE, PING = 0x1, 0x2, 0x8, 0x9
RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10
CANARY_GAP_S = 2.0
"""The canary's ticker comes 20 times a second; a gap this long means the hostile clients stalled it
(generous: the machine is shared, and this is not the latency test)."""


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
        lines = [f"GET {path} HTTP/1.1", f"Host: {server.host}:{server.port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}"]
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


async def serve(aiohttp_server: ServerFactory, **overrides: Any) -> TestServer:
    server: TestServer = await aiohttp_server(create_app(fast_settings(**overrides)))
    return server


@contextlib.asynccontextmanager
async def canary_on(server: TestServer) -> Any:
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(server.make_url("/ws?symbols=*&channels=ticker"))
        canary = Canary(ws)
        yield canary
        assert canary.closed is None, f"the canary was closed with {canary.closed}"
        await canary.stop()


BAD_FRAMES: dict[str, tuple[bytes, int]] = {
    "opcode 0x3": (frame(0x3, b"x"), 1002),
    "opcode 0xB": (frame(0xB), 1002),
    "fragmented ping": (frame(PING, b"p", fin=False), 1002),
    "ping of 126 bytes": (frame(PING, b"p" * 126), 1002),
    "continuation first": (frame(0x0, b"x"), 1002),
    "invalid UTF-8 text": (frame(TEXT, b'{"type":"\xff\xfe"}'), 1007),
    "RSV1 unnegotiated": (frame(TEXT, b"{}", rsv=RSV1), 1002),
    "RSV2": (frame(TEXT, b"{}", rsv=RSV2), 1002),
    "RSV3": (frame(PING, rsv=RSV3), 1002),
    "unmasked text": (frame(TEXT, b'{"type":"ping"}', mask=False), 1002),
    "unmasked ping": (frame(PING, b"p", mask=False), 1002),
    "unmasked close": (frame(CLOSE, struct.pack("!H", 1000), mask=False), 1002),
    "unmasked after a good frame sent byte by byte": (
        frame(TEXT, b'{"type":"ping"}') + frame(BINARY, mask=False), 1002),
    "close with a 1-byte payload": (frame(CLOSE, b"\x03"), 1002),
    "close reason not UTF-8": (close_frame(1000, b"\xff"), 1007),
    **{f"close {code}": (close_frame(code), 1002)
       for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)},
    **{f"close {code} (echoed)": (close_frame(code, b"bye"), code) for code in (1000, 1001, 1011, 3000, 4000, 4999)},
}


async def close_code_for(server: TestServer, path: str, name: str, data: bytes) -> int | str:
    raw = await RawSocket.open(server, path)
    try:
        if "byte by byte" in name:
            for byte in data:
                raw.writer.write(bytes([byte]))
                await raw.writer.drain()
                await asyncio.sleep(0.001)
        else:
            raw.writer.write(data)
        return await raw.close_code()
    finally:
        await raw.finish()


async def test_bad_frames_get_the_rfc_close_code_on_both_sockets_while_a_canary_reads(
    aiohttp_server: ServerFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    server = await serve(aiohttp_server)
    cases = [(path, name, data) for path in (BOT, UI) for name, (data, _) in BAD_FRAMES.items()]
    at_once = asyncio.Semaphore(8)  # several hostile clients at a time

    async def one(path: str, name: str, data: bytes) -> int | str:
        async with at_once:
            return await close_code_for(server, path, name, data)

    async with canary_on(server) as canary:
        started = time.monotonic()
        codes = await asyncio.gather(*(one(*case) for case in cases))
        gap = canary.longest_gap(started)
    got = {f"{path} {name}": code for (path, name, _), code in zip(cases, codes, strict=True)}
    expected = {f"{path} {name}": code for path in (BOT, UI) for name, (_, code) in BAD_FRAMES.items()}
    assert got == expected
    assert gap < CANARY_GAP_S, f"the canary waited {gap:.2f} s for a message"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], "an error was logged"


async def test_a_bad_frame_right_behind_the_handshake_is_checked_too(aiohttp_server: ServerFactory) -> None:
    server = await serve(aiohttp_server)
    for path in (BOT, UI):
        raw = await RawSocket.open(server, path, behind=frame(TEXT, b'{"type":"ping"}', mask=False))
        assert await raw.close_code() == 1002, path
        await raw.finish()


@pytest.mark.parametrize(("bad", "code"), [
    (frame(TEXT, b"{}", mask=False), 1002),  # refused by bixweb's check
    (frame(TEXT, b"\xff"), 1007),  # by aiohttp's reader
    (frame(TEXT, b" " * 20_000), 1009),  # by aiohttp's reader, above max_message_bytes
], ids=["unmasked", "not-utf8", "too-big"])
async def test_what_came_before_a_refused_frame_is_still_answered(
    aiohttp_server: ServerFactory, bad: bytes, code: int
) -> None:
    server = await serve(aiohttp_server)
    raw = await RawSocket.open(server, BOT)
    assert (await raw.read_frame())[0] == TEXT  # welcome
    raw.writer.write(frame(TEXT, b'{"type":"ping","id":"before"}') + bad)
    replies = []
    while (got := await raw.read_frame())[0] != CLOSE:
        replies += unwrap(json.loads(got[1]))
    await raw.finish()
    assert [m.get("id") for m in replies if m["type"] == "pong"] == ["before"]
    assert int.from_bytes(got[1][:2], "big") == code


@pytest.mark.parametrize("version", ["8", "7", "14", None, "13, 8"])
async def test_a_handshake_of_another_version_gets_426_naming_13(
    aiohttp_server: ServerFactory, version: str | None
) -> None:
    server = await serve(aiohttp_server)
    for path in (BOT, UI):
        status, headers, body, raw = await RawSocket.handshake(server, path, version=version)
        raw.writer.close()
        assert status == 426, (path, status, body)
        assert headers.get("sec-websocket-version") == "13"
        assert json.loads(body)["code"] == "unsupported_version"
    assert server.app[SERVICE].counters["refused:unsupported_version"] == 2


async def test_the_frame_guard_is_installed_on_both_sockets(aiohttp_server: ServerFactory) -> None:
    """aiohttp internals moved: this fails before any frame goes unchecked."""
    from bixweb.web.upgrade import FrameGuard, GuardedWebSocket

    server = await serve(aiohttp_server)
    raws = [await RawSocket.open(server, BOT), await RawSocket.open(server, UI)]
    await raws[0].read_frame()
    await raws[1].read_frame()
    conns = server.app[SERVICE].connections
    assert {c.kind for c in conns} == {"bot", "ui"}
    for conn in conns:
        assert isinstance(conn.ws, GuardedWebSocket)
        assert isinstance(conn.request.protocol._payload_parser, FrameGuard)
        assert conn.request.protocol._payload_parser is conn.ws.guard
    for raw in raws:
        await raw.finish()


@pytest.mark.parametrize("how", ["reset", "close"])
async def test_pings_then_a_dropped_tcp_connection_log_one_info_line_and_no_traceback(
    aiohttp_server: ServerFactory, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    caplog.set_level(logging.INFO)
    server = await serve(aiohttp_server)
    service = server.app[SERVICE]
    async with canary_on(server) as canary:
        started = time.monotonic()
        for path in (BOT, UI) * 5:
            raw = await RawSocket.open(server, path)
            await raw.read_frame()
            raw.writer.write(b"".join(frame(PING, b"%d" % n) for n in range(60)))
            await raw.writer.drain()
            sock = raw.writer.get_extra_info("socket")
            if how == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                raw.writer.transport.abort()
            else:
                raw.writer.close()
            deadline = time.monotonic() + 5.0
            while len(service.connections) > 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert len(service.connections) == 1, "the dropped socket's handler did not end"
        gap = canary.longest_gap(started)
    bad = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, bad
    gone = [r for r in caplog.records if getattr(r, "event", None) == "disconnected" and r.levelno == logging.INFO]
    dropped = [r for r in gone if r.fields["code"] != 1000 or r.fields["reason"]]  # the canary's own is clean
    assert len(dropped) == 10, [r.getMessage() for r in gone]
    assert all(r.fields["reason"] for r in dropped), [r.getMessage() for r in dropped]
    assert gap < CANARY_GAP_S, f"the canary waited {gap:.2f} s for a message"


async def flood_once(server: TestServer, pings: int) -> tuple[int | str, list[dict[str, Any]]]:
    """``pings`` pings in one write, then one every 2 ms until the close: the peer is still sending."""
    raw = await RawSocket.open(server, BOT)
    assert (await raw.read_frame())[0] == TEXT  # welcome
    closed = asyncio.Event()

    async def send() -> None:
        with contextlib.suppress(ConnectionError):
            raw.writer.write(b"".join(frame(TEXT, b'{"type":"ping","id":%d}' % n) for n in range(pings)))
            while not closed.is_set():
                raw.writer.write(frame(TEXT, b'{"type":"ping"}'))
                await raw.writer.drain()
                await asyncio.sleep(0.002)

    sender = asyncio.create_task(send())
    replies: list[dict[str, Any]] = []
    code: int | str
    try:
        while True:
            opcode, payload = await raw.read_frame()
            if opcode == CLOSE:
                code = int.from_bytes(payload[:2], "big")
                break
            replies += unwrap(json.loads(payload))
    except asyncio.IncompleteReadError:
        code = "eof"
    except ConnectionResetError:
        code = "reset"
    closed.set()
    await sender
    await raw.finish()
    return code, replies


async def test_floods_get_their_rate_limited_errors_then_a_clean_1008_every_time(
    aiohttp_server: ServerFactory,
) -> None:
    server = await serve(aiohttp_server)
    burst = 2 * server.app[SERVICE].settings.max_messages_per_s
    async with canary_on(server) as canary:
        started = time.monotonic()
        outcomes = []
        for _ in range(10):  # three flooders at a time, ten times
            outcomes += await asyncio.gather(*(flood_once(server, 300) for _ in range(3)))
        gap = canary.longest_gap(started)
    figures = [(code, sum(m["type"] == "error" for m in replies), sum(m["type"] == "pong" for m in replies))
               for code, replies in outcomes]
    print(f"\nfloods (close code, rate_limited, pongs): {figures}; the canary's longest gap {gap:.3f} s")
    for code, replies in outcomes:
        assert code == 1008, figures
        errors = [m for m in replies if m["type"] == "error"]
        assert {e["code"] for e in errors} == {"rate_limited"}
        assert len(errors) >= burst, figures  # more than a burst's worth in a row is what makes a flood
    assert gap < CANARY_GAP_S, f"the canary waited {gap:.2f} s for a message"


def test_the_checker_reads_headers_only_and_reports_once() -> None:
    stream = b"".join(frame(TEXT, b'{"type":"ping"}') for _ in range(100)) + frame(TEXT, b"x" * 70_000)
    bad = frame(PING, mask=False)
    checker = FrameChecker()
    for i in range(0, len(stream), 7):  # splits every header somewhere
        assert checker.feed(stream[i : i + 7]) is None
    checker = FrameChecker()
    found = checker.feed(stream + bad + close_frame(1000))
    assert found is not None and found.offset == len(stream) and found.code == 1002
    assert checker.peer_closed
    assert checker.feed(bad) is None  # once


def test_close_codes_allowed_on_the_wire() -> None:
    allowed = [c for c in range(0, 70_000) if close_code_allowed(c)]
    assert allowed == [1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)]
