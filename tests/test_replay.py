"""Replay: a recording of the simulated market played back through the real service, and bad recordings."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from bixweb.errors import ConfigError, FeedError
from bixweb.feeds import open_feed
from bixweb.feeds.progress import terminal_progress
from bixweb.feeds.recording import RecordingReader, header_line, window_line
from bixweb.feeds.replay import ReplayFeed, delay_before, replay_path
from bixweb.market import Market
from bixweb.model import Book, MarketEvent, Trade
from bixweb.web.app import create_app
from tests.support import ROOT, assert_valid, fast_settings, unwrap

Factory = Callable[..., Any]
SYMBOLS = ("BTCUSDT", "ETHUSDT")
T0 = 1_764_158_400_000


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 s of the simulated market, recorded by the real command.

    The market runs on its own clock as fast as it can (``speed=max``): the
    same ticks, 100 ms of market apart, as a live run would make, in about a
    second instead of thirty.
    """
    out = tmp_path_factory.mktemp("recording") / "market.jsonl.gz"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bixweb",
            "record",
            "--out",
            str(out),
            "--feed",
            "simulated://?speed=max",
            "--duration",
            "30",
            "--symbols",
            ",".join(SYMBOLS),
            "--seed",
            "11",
            "--tick-rate",
            "10",
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return out


def recorded_trades(path: Path) -> list[tuple[str, int, float, float, str]]:
    """The trades in the file, read as plain gzip + JSON (not with bixweb's reader)."""
    lines = gzip.decompress(path.read_bytes()).splitlines()
    return [
        (e["symbol"], e["id"], e["price"], e["qty"], e["side"])
        for line in lines[1:]
        for e in json.loads(line)["events"]
        if e["type"] == "trade"
    ]


def test_the_recording_spans_30_s_of_market_time(recording: Path) -> None:
    lines = gzip.decompress(recording.read_bytes()).splitlines()
    header = json.loads(lines[0])
    assert header["format"] == "bixweb-recording" and header["version"] == 1 and header["symbols"] == list(SYMBOLS)
    times = [e["time"] for line in lines[1:] for e in json.loads(line)["events"] if "time" in e]
    assert max(times) - min(times) >= 30_000
    assert len(recorded_trades(recording)) > 300


async def bot_trades(
    ws: aiohttp.ClientWebSocketResponse, count: int, timeout: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The snapshot, then live trade messages until snapshot + live trades make ``count``."""
    snapshot: dict[str, Any] | None = None
    live: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while snapshot is None or sum(map(len, snapshot.get("trades", {}).values())) + len(live) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out with {len(live)} live trades"
        msg = await ws.receive(timeout=left)
        assert msg.type is WSMsgType.TEXT, msg
        frame = json.loads(msg.data)
        assert_valid(frame)
        for m in unwrap(frame):
            if m["type"] == "initial_data":
                snapshot = m
            elif m["type"] == "trade":
                live.append(m)
    assert snapshot is not None
    return snapshot, live


async def test_a_replay_at_10x_gives_a_bot_the_recorded_trades_in_order(
    aiohttp_client: Factory, recording: Path
) -> None:
    expected = recorded_trades(recording)
    settings = fast_settings(symbols=SYMBOLS, feed=f"replay://{recording}?speed=10", trade_history=1000)
    started = time.monotonic()
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    async with client.ws_connect(f"/ws?symbols={','.join(SYMBOLS)}&channels=trades") as ws:
        snapshot, live = await bot_trades(ws, len(expected), timeout=15.0)
    elapsed = time.monotonic() - started

    def shown(symbol: str, t: dict[str, Any]) -> tuple[str, int, float, float, str]:
        return (symbol, t["id"], t["price"], t["qty"], t["side"])

    for symbol in SYMBOLS:
        before = [shown(symbol, t) for t in snapshot["trades"][symbol]]
        assert snapshot["seq"][f"trades:{symbol}"] == len(before)  # nothing went by unseen before the snapshot
        during = [shown(m["symbol"], m["data"]) for m in live if m["symbol"] == symbol]
        assert before + during == [t for t in expected if t[0] == symbol], symbol
    assert [shown(m["symbol"], m["data"]) for m in live] == expected[len(expected) - len(live) :]
    assert len(live) > len(expected) / 2
    assert 2.5 < elapsed < 8.0, elapsed  # 30 s of market at 10x


def apply_all(path: Path, now_ms: int) -> list[dict[str, Any]]:
    market = Market(SYMBOLS, epoch=7)
    out = []
    with RecordingReader(path) as reader:
        for n, window in enumerate(reader.windows()):
            out.extend(o.message for o in market.apply(window.events, now_ms + n))
    return [{k: v for k, v in m.items() if k != "ts"} for m in out]


def test_the_same_recording_gives_the_same_messages_whenever_it_is_played(recording: Path) -> None:
    first, later = apply_all(recording, T0), apply_all(recording, T0 + 9 * 86_400_000)
    assert first == later
    assert sum(m["type"] == "trade" for m in first) == len(recorded_trades(recording))


async def test_at_max_speed_a_replay_does_not_wait(recording: Path) -> None:
    feed = open_feed(f"replay://{recording}?speed=max", symbols=SYMBOLS, seed=1, tick_rate=1.0, book_depth=10)
    started = time.monotonic()
    windows = [window async for window in feed.events()]
    assert time.monotonic() - started < 2.0
    assert sum(isinstance(e, Trade) for w in windows for e in w) == len(recorded_trades(recording))


def test_pacing_keeps_the_recorded_gaps_divided_by_the_speed() -> None:
    assert delay_before(T0 + 10_000, T0, 10.0, elapsed_s=0.4) == pytest.approx(0.6)
    assert delay_before(T0 + 10_000, T0, 1.0, elapsed_s=0.0) == 10.0
    assert delay_before(T0 + 10_000, T0, 10.0, elapsed_s=5.0) == 0.0  # behind: no waiting, no skipping
    assert delay_before(T0 + 10_000, T0, None, elapsed_s=0.0) == 0.0


def test_replay_urls_name_a_file_and_a_speed(recording: Path) -> None:
    assert replay_path("replay://rec.jsonl.gz?speed=10") == Path("rec.jsonl.gz")
    assert replay_path("replay:///tmp/my%20rec.jsonl") == Path("/tmp/my rec.jsonl")
    for url, fault in [
        ("replay://", "needs a file"),
        (f"replay://{recording}?speed=0", "not above 0"),
        (f"replay://{recording}?speed=fast", "neither a factor"),
        (f"replay://{recording}?loop=1", "no option 'loop'"),
    ]:
        with pytest.raises(ConfigError, match=fault):
            open_feed(url, symbols=SYMBOLS, seed=1, tick_rate=1.0, book_depth=10)
    with pytest.raises(ConfigError, match="--symbols names none of them"):
        open_feed(f"replay://{recording}", symbols=("SOLUSDT",), seed=1, tick_rate=1.0, book_depth=10)


def good_lines() -> list[bytes]:
    book: MarketEvent = Book("BTCUSDT", ((1.0, 1.0),), ((2.0, 1.0),), T0)
    return [
        header_line("simulated://", SYMBOLS, T0),
        window_line(T0, [book]),
        window_line(T0 + 100, [Trade("BTCUSDT", 1, 1.5, 1.0, "buy", T0 + 100)]),
    ]


@pytest.mark.parametrize(
    ("content", "fault"),
    [
        (None, "cannot read the recording"),
        (b"", "empty or cut short before its header"),
        (b"\x1f\x8b\x08\x00garbage that is no gzip stream", "unreadable"),
        (b"time,price\n1,2\n", "line 1: not a bixweb recording"),
        (
            orjson.dumps({"format": "bixweb-recording", "version": 9, "created_ms": 0, "feed": "x://", "symbols": []})
            + b"\n",
            "version 9",
        ),
        (b"".join(good_lines()[:1]), "holds no window of events"),
        (good_lines()[0] + b'{"t": 5, "eve', "cut short before its first"),
        (good_lines()[0] + b'{"t": 1, "events": [{"type": "trade"}]}\n', "line 2: "),
        (good_lines()[0] + b"\x00\x01\x02\n", "line 2: not JSON"),
        pytest.param(gzip.compress(b"".join(good_lines()), mtime=0)[:30], "cut short", id="gzip-cut-short"),
    ],
)
def test_a_bad_recording_stops_the_start_up_with_a_clear_error(
    tmp_path: Path, content: bytes | None, fault: str
) -> None:
    path = tmp_path / "rec.jsonl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(FeedError, match=".*") as caught:
        open_feed(f"replay://{path}", symbols=SYMBOLS, seed=1, tick_rate=1.0, book_depth=10)
    assert fault in str(caught.value) and str(path) in str(caught.value)


async def test_a_bad_line_later_on_stops_the_feed_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    path.write_bytes(b"".join(good_lines()) + b'{"t": 5, "events": "nope"}\n')
    feed = ReplayFeed(path, speed=None)
    windows = []
    with pytest.raises(FeedError, match="line 4: 'events' is not a list"):
        async for window in feed.events():
            windows.append(window)
    assert len(windows) == 2


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_at_a_terminal_a_replay_draws_its_progress(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    path.write_bytes(b"".join(good_lines()))
    screen = Terminal()
    feed = ReplayFeed(path, speed=None, progress=terminal_progress("replay", screen))
    assert len([window async for window in feed.events()]) == 2
    drawn = screen.getvalue().split("\r")
    assert drawn[0] == "" and drawn[1].startswith("replay [")
    assert drawn[-1].endswith("\n") and drawn[-1].rstrip() == "replay [" + "#" * 30 + "] 100%  2 windows"


async def test_a_recording_cut_short_plays_what_came_before(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "rec.jsonl"
    path.write_bytes(b"".join(good_lines()) + b'{"t": 5, "eve')
    windows = [window async for window in ReplayFeed(path, speed=None).events()]
    assert len(windows) == 2
    assert "replay_cut_short" in caplog.text and "line=4" in caplog.text


async def test_the_app_reports_a_finished_replay_live_then_stale(aiohttp_client: Factory, tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    path.write_bytes(b"".join(good_lines()))
    settings = fast_settings(symbols=SYMBOLS, feed=f"replay://{path}?speed=max", stale_after=1.0)
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    states: list[str] = []
    async with client.ws_connect("/ws?symbols=BTCUSDT&channels=ticker") as ws:
        async with asyncio.timeout(5.0):
            while states[-1:] != ["stale"]:
                msg = await ws.receive()
                states += [m["feed"] for m in unwrap(json.loads(msg.data)) if m["type"] == "status"]
    assert states[0] == "live" and states[-1] == "stale"
