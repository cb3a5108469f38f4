"""Recording: the file format both ways, the record command, its progress bar."""

from __future__ import annotations

import gzip
import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from bixweb.feeds.progress import TerminalProgress, progress_line, terminal_progress
from bixweb.feeds.recording import (
    RecordingReader,
    decode_event,
    encode_event,
    header_line,
    parse_header,
    parse_window,
    window_line,
    window_time,
)
from bixweb.feeds.simulated import SimulatedFeed, SimulatedMarket
from bixweb.model import Book, Candle, CandleUpdate, History, Interval, MarketEvent, TickerStats, Trade
from bixweb.record import Summary, finished, main, record
from tests.support import ROOT

T0 = 1_764_158_400_000

EVENTS: list[MarketEvent] = [
    Trade("BTCUSDT", 17, 95_012.41, 0.00123, "sell", T0 + 5),
    Book("BTCUSDT", ((95_012.4, 0.5), (95_012.3, 1.25)), ((95_012.6, 0.75),), T0 + 6),
    History(
        "ETHUSDT",
        (Candle(T0 - 120_000, 1.5, 2.5, 1.0, 2.0, 10.0, True), Candle(T0 - 60_000, 2.0, 2.25, 1.75, 2.125, 0.0, True)),
    ),
    TickerStats(
        "BTCUSDT",
        price=95_012.41,
        bid=95_012.4,
        ask=95_012.6,
        open=93_000.0,
        high=96_000.0,
        low=92_000.0,
        volume=1234.56789,
        quote_volume=117_000_000.12,
        time=T0 + 7,
    ),
    CandleUpdate("BTCUSDT", Interval.M1, Candle(T0, 95_000.0, 95_100.0, 94_900.0, 95_012.41, 12.5, False), T0 + 8),
]


def test_every_event_kind_survives_the_file_unchanged() -> None:
    line = window_line(T0 + 8, EVENTS)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    window = parse_window(line)
    assert window.t == T0 + 8 and list(window.events) == EVENTS
    assert [decode_event(encode_event(e)) for e in EVENTS] == EVENTS


@pytest.mark.parametrize(
    ("obj", "fault"),
    [
        ({"type": "trade", "symbol": "BTCUSDT", "id": 0, "price": 1, "qty": 1, "side": "buy", "time": 1}, "'id'"),
        ({"type": "trade", "symbol": "BTCUSDT", "id": 1, "price": -1, "qty": 1, "side": "buy", "time": 1}, "'price'"),
        ({"type": "trade", "symbol": "BTCUSDT", "id": 1, "price": 1, "qty": 1, "side": "up", "time": 1}, "side"),
        ({"type": "book", "symbol": "BTCUSDT", "bids": [[1.0]], "asks": [], "time": 1}, "level"),
        ({"type": "history", "symbol": "BTCUSDT", "minutes": [[1, 2, 3]]}, "history minute"),
        (
            {
                "type": "candle",
                "symbol": "BTCUSDT",
                "interval": "3m",
                "start": 0,
                "open": 1,
                "high": 1,
                "low": 1,
                "close": 1,
                "volume": 1,
                "closed": False,
                "time": 1,
            },
            "interval",
        ),
        ({"type": "news", "symbol": "BTCUSDT"}, "no known 'type'"),
        ({"symbol": "BTCUSDT"}, "no known 'type'"),
        (["trade"], "not an object"),
    ],
)
def test_an_event_that_is_not_one_is_refused_by_name(obj: object, fault: str) -> None:
    with pytest.raises(ValueError, match=".*") as caught:
        decode_event(obj)
    assert fault in str(caught.value)


def test_the_header_names_the_format_and_its_version() -> None:
    header = parse_header(header_line("simulated://", ["BTCUSDT"], T0))
    assert (header.version, header.feed, header.symbols, header.created_ms) == (1, "simulated://", ("BTCUSDT",), T0)
    with pytest.raises(ValueError, match="not a bixweb recording"):
        parse_header(b'{"t": 1, "events": []}\n')
    with pytest.raises(ValueError, match="version 2; this bixweb reads version 1"):
        parse_header(
            orjson.dumps({"format": "bixweb-recording", "version": 2, "created_ms": 0, "feed": "x://", "symbols": []})
        )


def test_a_window_is_stamped_with_the_latest_market_time_it_holds() -> None:
    assert window_time(EVENTS) == T0 + 8
    assert window_time([EVENTS[2]]) is None  # a history reports no time of its own


def test_a_recording_is_finished_by_market_time_or_by_the_clock_when_the_feed_falls_silent() -> None:
    assert not finished(Summary(3, 3, T0, T0 + 29_999), 30.0, wall_elapsed=1.0)
    assert finished(Summary(3, 3, T0, T0 + 30_000), 30.0, wall_elapsed=1.0)
    assert not finished(Summary(1, 1, T0, T0), 30.0, wall_elapsed=30.0)  # a little slack for a live feed
    assert finished(Summary(1, 1, T0, T0), 30.0, wall_elapsed=32.0)
    assert not finished(Summary(1, 1, T0, T0 + 10**9), None, wall_elapsed=10**6)


async def test_record_writes_one_line_per_window_until_the_duration_is_covered() -> None:
    feed = SimulatedFeed(SimulatedMarket(["BTCUSDT"], seed=3, tick_rate=10.0), 10.0, speed=None)
    out = io.BytesIO()
    summary = await record(feed, out, duration=2.0)
    lines = out.getvalue().splitlines()
    windows = [parse_window(line) for line in lines]
    assert len(windows) == summary.windows == 22  # the history, then 21 ticks 100 ms apart: 2 s of market
    assert isinstance(windows[0].events[0], History)
    assert windows[-1].t - windows[1].t == 2_000 == summary.span_s * 1000
    assert summary.events == sum(len(w.events) for w in windows)


def read_plain_or_gzip(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def test_the_command_writes_gzip_for_gz_names_or_when_asked(tmp_path: Path) -> None:
    common = ["--feed", "simulated://?speed=max", "--duration", "1", "--symbols", "BTCUSDT", "--seed", "4"]
    assert main(["--out", str(tmp_path / "a.jsonl.gz"), *common]) == 0
    assert main(["--out", str(tmp_path / "b.jsonl"), "--gzip", *common]) == 0
    assert main(["--out", str(tmp_path / "c.jsonl"), *common]) == 0
    for name, compressed in (("a.jsonl.gz", True), ("b.jsonl", True), ("c.jsonl", False)):
        assert ((tmp_path / name).read_bytes()[:2] == b"\x1f\x8b") is compressed, name

    def trades(name: str) -> list[tuple[object, ...]]:
        lines = read_plain_or_gzip(tmp_path / name).splitlines()[1:]
        return [
            (e.symbol, e.id, e.price, e.qty, e.side)
            for line in lines
            for e in parse_window(line).events
            if isinstance(e, Trade)
        ]

    def market(name: str) -> list[tuple[object, ...]]:  # ids count from where each run started
        first = trades(name)[0][1]
        assert isinstance(first, int)
        return [(symbol, int(str(i)) - first, *rest) for symbol, i, *rest in trades(name)]

    assert market("a.jsonl.gz") == market("b.jsonl") == market("c.jsonl") != []  # same seed, same market
    runs = [[int(str(t[1])) for t in trades(name)] for name in ("a.jsonl.gz", "b.jsonl", "c.jsonl")]
    assert max(runs[0]) < min(runs[1]) and max(runs[1]) < min(runs[2])  # and no trade id twice
    header = parse_header(read_plain_or_gzip(tmp_path / "c.jsonl").split(b"\n")[0])
    assert header.feed == "simulated://" and header.symbols == ("BTCUSDT",)


@pytest.mark.parametrize(
    ("args", "fault"),
    [
        (["--feed", "nowhere://"], "unknown feed"),
        (["--duration", "0"], "--duration"),
        (["--symbols", "NOPEUSDT"], "NOPEUSDT"),
    ],
)
def test_the_command_refuses_what_will_not_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fault: str
) -> None:
    assert main(["--out", str(tmp_path / "x.jsonl"), *args]) == 2
    assert fault in capsys.readouterr().err


def test_the_command_says_when_it_cannot_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path / "no" / "such" / "dir.jsonl"), "--duration", "1"]) == 2
    assert "--out: cannot write" in capsys.readouterr().err


def test_ctrl_c_leaves_a_whole_gzip_recording(tmp_path: Path) -> None:
    out = tmp_path / "live.jsonl.gz"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bixweb", "record", "--out", str(out), "--symbols", "BTCUSDT", "--tick-rate", "20"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(2.0)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    with RecordingReader(out) as reader:
        windows = list(reader.windows())
        assert not reader.truncated
    assert len(windows) >= 10 and isinstance(windows[0].events[0], History)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_shows_on_a_terminal_only() -> None:
    assert progress_line("record", 0.5, "15.0 s", width=10) == "record [#####.....]  50%  15.0 s"
    assert progress_line("record", None, "15.0 s") == "record  15.0 s"
    assert progress_line("replay", 1.7, "", width=4) == "replay [####] 100%  "
    assert terminal_progress("record", io.StringIO()) is None
    screen = Terminal()
    bar = terminal_progress("record", screen)
    assert isinstance(bar, TerminalProgress)
    bar.update(0.25, "a", force=True)
    bar.update(0.3, "b")  # within the redraw interval: not drawn
    bar.update(1.0, "done", force=True)
    bar.close()
    assert screen.getvalue().split("\r")[1:] == [
        "record [#######.......................]  25%  a",
        "record [##############################] 100%  done\n",
    ]
