"""A connection's writer without a network: backlog before outbox, and who gets closed for what."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from bixweb import protocol
from bixweb.hub import Backlog, Outbox
from bixweb.web.connection import CLOSE_SLOW_CONSUMER, Connection
from tests.support import unwrap


class Peer:
    """The WebSocket as the writer sees it: each frame waits for a credit, as a peer that reads gives them."""

    compress = 0

    def __init__(self, credits: int = 1_000_000) -> None:
        self.credits = asyncio.Semaphore(credits)
        self.frames: list[bytes] = []
        self.close_code: int | None = None

    def read(self, frames: int = 1) -> None:
        for _ in range(frames):
            self.credits.release()

    async def send_frame(self, frame: bytes, opcode: object) -> None:
        await self.credits.acquire()
        self.frames.append(frame)

    async def close(self, *, code: int, message: bytes, drain: bool) -> None:
        self.close_code = code

    def received(self) -> list[tuple[str, int]]:
        return [(m["type"], m.get("seq", 0)) for f in self.frames for m in unwrap(json.loads(f))]


def trade(seq: int) -> dict[str, Any]:
    return {"type": "trade", "symbol": "BTCUSDT", "seq": seq}


def live(seq: int) -> tuple[bytes, tuple[tuple[str, bytes, bool], ...]]:
    data = protocol.encode(trade(seq))
    return data, (("trades:BTCUSDT", data, False),)


def connection(peer: Peer, *, outbox_messages: int = 10) -> Connection:
    request: Any = SimpleNamespace(remote="127.0.0.1", transport=None)  # no transport: every frame via the writer
    conn = Connection(
        peer,
        request,
        kind="bot",  # type: ignore[arg-type]
        outbox=Outbox(max_messages=outbox_messages, max_bytes=1_000_000),
        backlog=Backlog(chunk=10),
        close_timeout=0.1,
    )
    conn.start()
    return conn


async def settle() -> None:
    """Let the writer run until it waits for the peer (or has nothing left)."""
    for _ in range(100):
        await asyncio.sleep(0)


async def test_the_ack_then_the_replay_then_live_messages_each_once_in_order() -> None:
    peer = Peer()
    conn = connection(peer)
    conn.send(b'{"type":"ack"}')
    conn.replay([trade(n) for n in range(1, 96)], limit=1_000)
    for seq in range(96, 101):
        conn.deliver(*live(seq))
    await settle()
    assert peer.received() == [("ack", 0)] + [("trade", n) for n in range(1, 101)]
    assert [len(unwrap(json.loads(f))) for f in peer.frames][:3] == [1, 10, 10]  # paced: a chunk per frame
    assert conn.close_code is None and conn.messages_sent == 101
    await conn.stop()


async def test_a_reader_behind_its_replay_is_not_closed_while_it_reads_faster_than_live_traffic() -> None:
    peer = Peer(credits=0)
    conn = connection(peer)
    conn.replay([trade(n) for n in range(1, 201)], limit=1_000)
    seq = 200
    for _ in range(5):  # five outboxes' worth of live trades arrive while the replay is being read
        peer.read(2)  # meanwhile the peer reads two frames, 20 messages: behind, but catching up
        await settle()
        for _ in range(11):
            seq += 1
            conn.deliver(*live(seq))
    assert conn.close_code is None
    peer.read(1_000)
    await settle()
    assert peer.received() == [("trade", n) for n in range(1, seq + 1)]
    await conn.stop()


async def test_a_reader_slower_than_live_traffic_is_closed_even_behind_a_replay() -> None:
    peer = Peer(credits=0)
    conn = connection(peer)
    conn.replay([trade(n) for n in range(1, 201)], limit=1_000)
    seq = 200
    for _ in range(5):
        peer.read(1)  # 10 messages read while 11 arrive: it would never catch up
        await settle()
        for _ in range(11):
            seq += 1
            conn.deliver(*live(seq))
        if conn.close_code is not None:
            break
    assert conn.close_code == CLOSE_SLOW_CONSUMER
    await conn.wait_closed()
    await conn.stop()


async def test_a_reader_that_stops_during_a_huge_replay_is_closed_after_two_outboxes() -> None:
    peer = Peer(credits=3)  # reads three frames, then stops
    conn = connection(peer)
    conn.replay([trade(n) for n in range(1, 20_001)], limit=30_000)
    await settle()
    sent = 0
    while conn.close_code is None and sent < 1_000:
        sent += 1
        conn.deliver(*live(20_000 + sent))
        await settle()
    assert conn.close_code == CLOSE_SLOW_CONSUMER and conn.slow_consumer
    # the first outbox spilled behind the replay (the writer had taken 40 meanwhile), the next closed it
    assert sent == 22
    await conn.wait_closed()
    await conn.stop()
    assert len(conn.backlog) == 0 and len(conn.outbox) == 0


async def test_resumes_asked_again_and_again_without_reading_are_closed_at_the_bound() -> None:
    peer = Peer(credits=0)
    conn = connection(peer)
    asked = 0
    while conn.close_code is None and asked < 100:
        asked += 1
        conn.replay([trade(n) for n in range(1, 1_001)], limit=2_500)
    # the first three fit (0, 1,000 and 2,000 unsent are within 2,500); the fourth finds 3,000 unsent
    assert asked == 4 and conn.close_code == CLOSE_SLOW_CONSUMER
    assert len(conn.backlog) <= 2_500 + 1_000
    await conn.wait_closed()
    await conn.stop()


async def test_snapshots_that_are_not_read_are_bounded_in_bytes() -> None:
    peer = Peer(credits=0)
    conn = connection(peer)
    snapshot = b'{"type":"initial_data","pad":"' + b"x" * 300_000 + b'"}'
    asked = 0
    while conn.close_code is None and asked < 100:
        asked += 1
        conn.send_paced(snapshot, limit=1_000)
    assert conn.close_code == CLOSE_SLOW_CONSUMER and asked == 5  # 4 x 300 kB exceed the outbox's 1 MB
    await conn.wait_closed()
    await conn.stop()
