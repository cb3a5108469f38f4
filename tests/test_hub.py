"""Fan-out without sockets: encode once, one frame per subscription, bounded outboxes."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from bixweb import protocol
from bixweb.hub import Backlog, Hub, Outbox, Part
from bixweb.market import Outgoing


class Recorder:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def deliver(self, frame: bytes, parts: Sequence[Part]) -> None:
        assert protocol.batch_frame([data for _, data, _ in parts]) == frame
        self.frames.append(frame)


def update(stream: str, seq: int) -> Outgoing:
    channel, symbol = stream.split(":")
    return Outgoing(
        stream,
        {
            "type": "trade",
            "ts": 1,
            "epoch": 1,
            "symbol": symbol,
            "seq": seq,
            "data": {"id": seq, "price": 1.0, "qty": 1.0, "side": "buy", "time": 1},
        },
    )


def join(parts: Sequence[bytes]) -> bytes:
    return b"+".join(parts)


def test_a_reader_that_keeps_up_gets_the_shared_frame_as_is() -> None:
    box = Outbox(max_messages=10, max_bytes=1000, join=join)
    frame = b"shared"
    assert box.put_frame(frame, (("ticker:A", b"t1", True), ("trades:A", b"x1", False)))
    assert box.take() is frame
    assert box.take() is None and not box


def test_a_slow_reader_gets_the_newest_state_and_every_trade_in_order() -> None:
    box = Outbox(max_messages=10, max_bytes=1000, join=join)
    box.put_frame(b"f1", (("ticker:A", b"t1", True), ("trades:A", b"x1", False), ("book:A", b"b1", True)))
    box.put_frame(b"f2", (("ticker:A", b"t2", True), ("trades:A", b"x2", False)))
    box.put(b"ack")
    box.put_frame(b"f3", (("ticker:A", b"t3", True), ("ticker:B", b"u1", True)))
    assert len(box) == 6 and box.conflated == 2
    assert box.take() == b"x1+x2+ack+b1+t3+u1"
    assert box.take() is None and box.size == 0


def test_a_newer_message_that_must_arrive_supersedes_pending_state_on_its_stream() -> None:
    box = Outbox(max_messages=10, max_bytes=1000, join=join)
    box.put_frame(b"f1", (("candles_1m:A", b"forming-9", True),))
    box.put_frame(b"f2", (("candles_1m:A", b"closed-10", False), ("candles_1m:A", b"forming-11", True)))
    assert box.take() == b"closed-10+forming-11"


def test_messages_that_must_arrive_are_bounded_in_count_and_bytes() -> None:
    box = Outbox(max_messages=3, max_bytes=20, join=join)
    assert box.put(b"aaaa") and box.put(b"bbbb") and box.put(b"cccc")
    assert not box.put(b"d")  # a fourth message
    box = Outbox(max_messages=100, max_bytes=20, join=join)
    assert box.put(b"a" * 15)
    assert not box.put_frame(b"ff", (("trades:A", b"x" * 6, False),))  # past 20 bytes
    box = Outbox(max_messages=2, max_bytes=10_000, join=join)
    for n in range(100):  # state alone never overflows: it conflates
        assert box.put_frame(b"f", (("ticker:A", b"t%d" % n, True),))
    box.clear()
    assert box.take() is None and box.size == 0


def test_one_window_is_one_frame_per_subscriber_and_shared_bytes() -> None:
    hub = Hub(strict=True)
    a, b, c = Recorder(), Recorder(), Recorder()
    hub.add(a, ["trades:BTCUSDT", "trades:ETHUSDT"])
    hub.add(b, ["trades:ETHUSDT", "trades:BTCUSDT"])
    hub.add(c, ["trades:ETHUSDT"])
    hub.publish([update("trades:BTCUSDT", 1), update("trades:ETHUSDT", 1), update("trades:SOLUSDT", 1)])
    assert len(a.frames) == len(b.frames) == len(c.frames) == 1
    assert a.frames[0] is b.frames[0]  # the same bytes object: built once for the subscription
    batch = json.loads(a.frames[0])
    assert batch["type"] == "batch"
    assert [(m["symbol"], m["seq"]) for m in batch["messages"]] == [("BTCUSDT", 1), ("ETHUSDT", 1)]
    assert json.loads(c.frames[0])["symbol"] == "ETHUSDT"  # a single message goes bare
    assert (hub.frames_out, hub.messages_out) == (3, 5)


def test_resubscribing_and_removing_move_subscribers_between_groups() -> None:
    hub = Hub()
    a, b = Recorder(), Recorder()
    hub.add(a, ["trades:BTCUSDT"])
    hub.add(b, ["trades:BTCUSDT"])
    hub.set_streams(a, frozenset({"trades:ETHUSDT"}))
    hub.remove(b)
    hub.publish([update("trades:BTCUSDT", 1), update("trades:ETHUSDT", 1)])
    assert [json.loads(f)["symbol"] for f in a.frames] == ["ETHUSDT"]
    assert b.frames == []
    assert len(hub) == 1 and hub.streams_of(a) == {"trades:ETHUSDT"}
    hub.remove(a)
    hub.publish([update("trades:ETHUSDT", 2)])
    assert len(a.frames) == 1


def test_broadcast_reaches_everyone_with_one_encoding() -> None:
    hub = Hub()
    subs = [Recorder() for _ in range(3)]
    for n, sub in enumerate(subs):
        hub.add(sub, [f"ticker:S{n}USDT"])
    hub.broadcast({"type": "pong", "ts": 1})
    assert len({id(s.frames[0]) for s in subs}) == 1


def test_strict_hub_refuses_a_message_that_breaks_its_schema() -> None:
    hub = Hub(strict=True)
    hub.add(Recorder(), ["trades:BTCUSDT"])
    bad = Outgoing("trades:BTCUSDT", {"type": "trade", "ts": 1, "epoch": 1, "symbol": "BTCUSDT", "seq": 0, "data": {}})
    with pytest.raises(ValueError, match="breaks its schema"):
        hub.publish([bad])


def test_a_backlog_comes_out_in_order_a_chunk_of_references_at_a_time() -> None:
    encoded: list[int] = []

    def encode(message: dict[str, object]) -> bytes:
        encoded.append(int(str(message["seq"])))
        return b"m%d" % encoded[-1]

    backlog = Backlog(encode=encode, join=join, chunk=3)
    replay = [{"seq": n} for n in range(1, 8)]
    backlog.add_frame(b"ack")
    backlog.add(replay)
    backlog.add_frame(b"held+live", messages=2)
    assert (len(backlog), backlog.size, encoded) == (10, 3 + 9, [])  # nothing encoded up front
    frames = []
    while (frame := backlog.take()) is not None:
        frames.append(frame)
    assert frames == [b"ack", b"m1+m2+m3", b"m4+m5+m6", b"m7", b"held+live"]
    assert encoded == list(range(1, 8))  # each message encoded once, when its turn came
    assert (len(backlog), backlog.size, backlog.taken, bool(backlog)) == (0, 0, 10, False)


def test_a_backlog_keeps_pointers_not_copies_and_encodes_through_the_strict_hub() -> None:
    hub = Hub(strict=True)
    replay = [update("trades:BTCUSDT", n).message for n in range(1, 601)]
    backlog = Backlog(encode=hub.encode, chunk=256)
    backlog.add(tuple(replay))
    frames = [json.loads(f) for f in iter(backlog.take, None)]
    assert [len(f["messages"]) for f in frames] == [256, 256, 88]
    assert [m["seq"] for f in frames for m in f["messages"]] == list(range(1, 601))
    backlog.add([{"type": "trade", "seq": 0}])  # strict: a message that breaks its schema is caught when encoded
    with pytest.raises(ValueError, match="breaks its schema"):
        backlog.take()


def test_a_backlog_admits_more_only_within_its_bounds() -> None:
    backlog = Backlog(join=join)
    assert backlog.admits(max_messages=0, max_bytes=0)  # an empty one always: a first replay is never refused
    backlog.add([{"seq": n} for n in range(5)])
    assert backlog.admits(max_messages=5, max_bytes=0) and not backlog.admits(max_messages=4, max_bytes=0)
    backlog.add_frame(b"x" * 10)
    assert backlog.admits(max_messages=6, max_bytes=10) and not backlog.admits(max_messages=6, max_bytes=9)
    backlog.clear()
    assert (len(backlog), backlog.size, backlog.take()) == (0, 0, None)
