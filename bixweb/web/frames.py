"""What aiohttp's WebSocket reader lets through: a sans-I/O check of client frames.

aiohttp already refuses unknown opcodes, reserved bits that no extension
allows, fragmented or oversized control frames, invalid UTF-8 (1007) and
most unassigned close codes. It accepts unmasked client frames (RFC 6455
section 5.1) and the close codes 1006 and >= 5000, which must never be sent
(section 7.4). :class:`FrameChecker` sees the same bytes first and reports
those, and notes when the peer has sent its close frame, so the server can
keep reading until then instead of resetting a peer that is still sending.

It reads frame headers only: a payload is skipped by its length, never
copied or looped over (a close frame's first two bytes excepted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

PROTOCOL_ERROR: Final = 1002
POLICY_VIOLATION: Final = 1008
OP_CLOSE: Final = 0x8

_WIRE_CLOSE_CODES: Final = frozenset((1000, 1001, 1002, 1003, *range(1007, 1015)))
"""Close codes of the IANA registry a peer may send (1004-1006 and 1015 are reserved or local-only)."""


def close_code_allowed(code: int) -> bool:
    """Whether a peer may put ``code`` in a close frame (RFC 6455 section 7.4)."""
    return code in _WIRE_CLOSE_CODES or 3000 <= code <= 4999


@dataclass(frozen=True, slots=True)
class Violation:
    """The first frame that breaks the protocol; ``offset`` is where it starts in the chunk just fed
    (0 when its header began in an earlier chunk): the bytes before it are sound."""

    code: int
    reason: str
    offset: int


class FrameChecker:
    """Feed it the client's bytes as they arrive; it reports the first :class:`Violation` once.

    After a violation it goes on tracking frame boundaries, so that
    :attr:`peer_closed` still tells when the peer's close frame arrives.
    """

    __slots__ = ("control_allowance", "control_frames", "peer_closed", "violation", "_head", "_skip")

    def __init__(self) -> None:
        self.control_frames = 0
        """Pings and pongs seen by the last :meth:`feed`."""
        self.control_allowance = -1
        """Pings and pongs the next :meth:`feed` may pass (aiohttp answers pings itself, so the
        caller budgets them); past it the frame is a :data:`POLICY_VIOLATION`. -1: no limit."""
        self.peer_closed = False
        """The peer has sent a close frame: it sends nothing more."""
        self.violation: Violation | None = None
        self._head = b""
        """The start of a header that a read split."""
        self._skip = 0
        """Payload bytes of the current frame still to come."""

    def feed(self, data: bytes) -> Violation | None:
        """Check one read; the first violation is returned once, later calls return None."""
        end = len(data)
        pos = min(self._skip, end)
        self._skip -= pos
        carried = len(self._head)
        if carried:
            data, end, self._head = self._head + data[pos:], carried + end - pos, b""
            pos = 0
        found: Violation | None = None
        self.control_frames = 0
        allowance = self.control_allowance
        # one pass over the headers, inlined: this runs for every client frame
        while pos < end:
            if end - pos < 2:
                self._head = data[pos:]
                break
            second = data[pos + 1]
            length = second & 0x7F
            size = 2 if length < 126 else 4 if length == 126 else 10
            if second & 0x80:
                size += 4
            opcode = data[pos] & 0x0F
            if end - pos < (size + 2 if opcode == OP_CLOSE and length >= 2 else size):
                self._head = data[pos:]
                break
            if length == 126:
                length = data[pos + 2] << 8 | data[pos + 3]
            elif length == 127:
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            if opcode & 0x8 and opcode != OP_CLOSE:
                self.control_frames += 1
                if self.control_frames > allowance >= 0 and self.violation is None:
                    found = self.violation = Violation(POLICY_VIOLATION, "too many pings", max(0, pos - carried))
            if not second & 0x80 or opcode == OP_CLOSE:
                reason = self._refusal(data, pos, size, length, opcode)
                if reason is not None and self.violation is None:
                    found = self.violation = Violation(PROTOCOL_ERROR, reason, max(0, pos - carried))
            pos += size + length
        if pos > end:
            self._skip = pos - end
        return found

    def _refusal(self, data: bytes, pos: int, size: int, length: int, opcode: int) -> str | None:
        """Why the unmasked or close frame at ``pos`` is refused, if it is."""
        if opcode == OP_CLOSE:
            self.peer_closed = True
        if not data[pos + 1] & 0x80:
            return "unmasked frame"
        if opcode == OP_CLOSE and length >= 2:
            mask = data[pos + size - 4 : pos + size]
            code = (data[pos + size] ^ mask[0]) << 8 | (data[pos + size + 1] ^ mask[1])
            if not close_code_allowed(code):
                return f"close code {code} is not allowed on the wire"
        return None
