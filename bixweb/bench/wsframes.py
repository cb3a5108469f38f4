"""WebSocket client framing (RFC 6455), sans-I/O: bytes in, frame spans out.

Only what a receiving client needs: the server's frames are unmasked and
may arrive split anywhere; the client's own frames (pong, close) must be
masked. :class:`FrameParser` hands back ``(opcode, start, end)`` spans into
a buffer rather than payload copies, so a caller can count inside a frame
without slicing it. The upgrade handshake is here too.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from typing import Final

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

MAX_FRAME: Final = 64 * 1024 * 1024
"""A server frame longer than this is taken as a broken stream."""

GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

Buffer = bytes | bytearray
Span = tuple[int, int, int]
"""``(opcode, start, end)``: a frame's payload is ``buffer[start:end]``."""

_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_NO_SPANS: Final[list[Span]] = []


class FrameError(Exception):
    """The server sent something that is not a valid frame for this client."""


class HandshakeError(Exception):
    """The server refused the upgrade or answered it wrongly."""


class FrameParser:
    """Splits a server-to-client byte stream into frames.

    ``feed(data, size)`` returns ``(buffer, spans)``: every frame completed
    by the first ``size`` bytes of ``data``, as spans into ``buffer``, which
    is ``data`` itself unless an earlier frame was incomplete. Use the
    spans before ``data`` is reused (a worker reads every socket into one
    shared buffer). Bytes of an incomplete frame are copied and kept, and
    not looked at again until enough bytes for the frame are there.
    """

    __slots__ = ("_pending", "_need")

    def __init__(self) -> None:
        self._pending = bytearray()
        self._need = 0

    @property
    def pending(self) -> int:
        """Bytes held back, waiting for the rest of a frame."""
        return len(self._pending)

    def feed(self, data: Buffer, size: int | None = None) -> tuple[Buffer, list[Span]]:
        size = len(data) if size is None else size
        if self._pending:
            self._pending += memoryview(data)[:size]
            if len(self._pending) < self._need:
                return b"", _NO_SPANS
            buf: Buffer = self._pending
            size = len(buf)
            self._pending = bytearray()
        else:
            buf = data
        spans: list[Span] = []
        pos = _split(buf, size, spans)
        if pos < size:
            self._pending = bytearray(memoryview(buf)[pos:size])
            self._need = _frame_size(self._pending)
        return buf, spans


def _split(buf: Buffer, size: int, spans: list[Span]) -> int:
    """Append the spans of the complete frames in ``buf[:size]``; return where the last one ends."""
    pos = 0
    while size - pos >= 2:
        first, second = buf[pos], buf[pos + 1]
        if second & 0x80:
            raise FrameError("the server masked a frame")
        if first & 0x70:
            raise FrameError("reserved bits set (no extension was negotiated)")
        length = second & 0x7F
        head = 2
        if length == 126:
            if size - pos < 4:
                break
            length = _U16.unpack_from(buf, pos + 2)[0]
            head = 4
        elif length == 127:
            if size - pos < 10:
                break
            length = _U64.unpack_from(buf, pos + 2)[0]
            head = 10
        if length > MAX_FRAME:
            raise FrameError(f"frame of {length} bytes")
        end = pos + head + length
        if end > size:
            break
        spans.append((first & 0x0F, pos + head, end))
        pos = end
    return pos


def _frame_size(head: bytearray) -> int:
    """Bytes the incomplete frame starting ``head`` needs in all (a lower bound while its header is short)."""
    if len(head) < 2:
        return 2
    length = head[1] & 0x7F
    if length == 126:
        return 4 if len(head) < 4 else 4 + _U16.unpack_from(head, 2)[0]
    if length == 127:
        return 10 if len(head) < 10 else 10 + _U64.unpack_from(head, 2)[0]
    return 2 + length


def mask(payload: Buffer, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` repeated (masking and unmasking are the same)."""
    if not payload:
        return b""
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
    return value.to_bytes(len(payload), "big")


def client_frame(opcode: int, payload: Buffer = b"", *, key: bytes | None = None) -> bytes:
    """One final, masked client frame (a client must mask every frame it sends)."""
    key = os.urandom(4) if key is None else key
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + _U16.pack(size)
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + _U64.pack(size)
    return head + key + mask(payload, key)


def close_payload(code: int, reason: str = "") -> bytes:
    return _U16.pack(code) + reason.encode()[:123]


def new_key() -> str:
    """A fresh ``Sec-WebSocket-Key``."""
    return base64.b64encode(os.urandom(16)).decode()


def accept_token(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server must answer ``key`` with."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def upgrade_request(path: str, host: str, key: str) -> bytes:
    """The HTTP/1.1 request that opens a WebSocket on ``path``."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def upgrade_reply(buf: bytes, key: str) -> int:
    """Where the server's upgrade answer in ``buf`` ends, or -1 while it is incomplete.

    Raises :class:`HandshakeError` unless it is a ``101`` with the right accept token.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > 16384:
            raise HandshakeError("no end to the answer's header")
        return -1
    lines = buf[:end].decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or status[1] != "101":
        raise HandshakeError(f"upgrade refused: {lines[0]}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("sec-websocket-accept") != accept_token(key):
        raise HandshakeError("wrong Sec-WebSocket-Accept")
    return end + 4
