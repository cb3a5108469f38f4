"""Fan-out without sockets: encode once, one frame per subscription, bounded outboxes."""

from __future__ import annotations

import json

import pytest

from bixweb.hub import Hub, Outbox
from bixweb.market import Outgoing


class Recorder:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def deliver(self, frame: bytes) -> None:
        self.frames.append(frame)


def update(stream: str, seq: int) -> Outgoing:
    channel, symbol = stream.split(":")
    return Outgoing(stream, {"type": "trade", "ts": 1, "symbol": symbol, "seq": seq,
                             "data": {"id": seq, "price": 1.0, "qty": 1.0, "side": "buy", "time": 1}})


def test_outbox_is_bounded_in_frames_and_bytes() -> None:
    box = Outbox(max_frames=3, max_bytes=10)
    assert box.put(b"aaaa") and box.put(b"bbbb")
    assert not box.put(b"ccc")  # would pass 10 bytes
    assert box.put(b"cc")
    assert not box.put(b"")  # would pass 3 frames
    assert (len(box), box.size) == (3, 10)
    assert box.get() == b"aaaa" and box.size == 6
    box.clear()
    assert box.get() is None and box.size == 0


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
    bad = Outgoing("trades:BTCUSDT", {"type": "trade", "ts": 1, "symbol": "BTCUSDT", "seq": 0, "data": {}})
    with pytest.raises(ValueError, match="breaks its schema"):
        hub.publish([bad])
