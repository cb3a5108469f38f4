"""``python -m bixweb bench``: the pure parts by values, then one tiny real run and a tiny sweep.

Nothing here asserts anything about speed: only that the bench works and
reports a sane structure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from bixweb.bench import cli, compression, scan
from bixweb.bench.options import BenchError, BenchOptions, Sweep, bot_path, parse_sweep, parse_target
from bixweb.bench.plot import Series, nice_ticks, svg, sweep_svg
from bixweb.bench.procstat import CLOCK_TICKS, busy_pct, parse_core_times, parse_stat_cpu, parse_status_kb, plan_cores
from bixweb.bench.report import bar, format_sweep, si
from bixweb.bench.results import fanout_spread, warnings
from bixweb.bench.runner import source_addresses, split
from bixweb.bench.server import ServerChild, server_command
from bixweb.bench.stats import Histogram, percentile
from bixweb.bench.wsclient import BotClient, Tally, WsClient
from bixweb.bench.wsframes import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameParser,
    HandshakeError,
    accept_token,
    client_frame,
    mask,
    upgrade_reply,
)
from bixweb.feeds.simulated import DEFAULT_SYMBOLS
from tests.support import ROOT

# --- frames -------------------------------------------------------------------------------------------------


def server_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked server frame, header built independently of the parser."""
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    if size < 65536:
        return bytes((0x80 | opcode, 126)) + struct.pack(">H", size) + payload
    return bytes((0x80 | opcode, 127)) + struct.pack(">Q", size) + payload


def parse_in_chunks(stream: bytes, cuts: list[int]) -> list[tuple[int, bytes]]:
    """Feed ``stream`` cut at ``cuts`` the way a worker does: every read into one reused buffer."""
    parser = FrameParser()
    shared = bytearray(len(stream))
    frames: list[tuple[int, bytes]] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        shared[: end - start] = stream[start:end]
        buf, spans = parser.feed(shared, end - start)
        frames += [(op, bytes(buf[s:e])) for op, s, e in spans]
    assert parser.pending == 0
    assert parser.feed(stream) == (stream, [(op, s, e) for op, s, e in parser.feed(stream)[1]])  # bytes work too
    return frames


FRAMES = [
    (OP_TEXT, b'{"type":"welcome","ts":1}'),
    (OP_PING, b"hb"),
    (OP_TEXT, b""),
    (OP_TEXT, b'{"type":"batch","messages":[' + b",".join([b'{"ts":1764160000000}'] * 10) + b"]}"),
    (OP_TEXT, b"x" * 200),
    (OP_CLOSE, struct.pack(">H", 1012)),
]


def test_frames_split_at_every_single_point_come_out_whole() -> None:
    stream = b"".join(server_frame(op, p) for op, p in FRAMES)
    for cut in range(1, len(stream)):
        assert parse_in_chunks(stream, [cut]) == FRAMES, cut


def test_frames_fed_one_byte_at_a_time_and_in_random_chunks() -> None:
    frames = [*FRAMES, (OP_TEXT, bytes(range(256)) * 300)]  # 76,800 bytes: a 64-bit length
    stream = b"".join(server_frame(op, p) for op, p in frames)
    small = b"".join(server_frame(op, p) for op, p in FRAMES)
    assert parse_in_chunks(small, list(range(1, len(small)))) == FRAMES
    rng = random.Random(5)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(stream)), 40))
        assert parse_in_chunks(stream, cuts) == frames


def test_masked_or_extended_server_frames_are_refused() -> None:
    with pytest.raises(FrameError):
        FrameParser().feed(bytes((0x81, 0x82)) + b"abcdxx")
    with pytest.raises(FrameError):
        FrameParser().feed(bytes((0xC1, 0x01)) + b"x")


@pytest.mark.parametrize("size", [0, 5, 125, 126, 300, 65536])
def test_client_frames_are_masked_and_unmask_to_the_payload(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    frame = client_frame(OP_PONG, payload, key=b"\x01\x02\x03\x04")
    assert frame[0] == 0x80 | OP_PONG and frame[1] & 0x80
    head = {0: 2, 5: 2, 125: 2, 126: 4, 300: 4, 65536: 10}[size]
    assert frame[head : head + 4] == b"\x01\x02\x03\x04"
    assert mask(frame[head + 4 :], b"\x01\x02\x03\x04") == payload


def test_handshake_accepts_a_101_with_the_right_token_only() -> None:
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    assert accept_token(key) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455, section 1.3
    good = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )
    assert upgrade_reply(good[:40], key) == -1
    assert upgrade_reply(good + b"\x81\x00", key) == len(good)
    with pytest.raises(HandshakeError, match="400"):
        upgrade_reply(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", key)
    with pytest.raises(HandshakeError, match="Accept"):
        upgrade_reply(good.replace(b"s3pP", b"AAAA"), key)


class FakeTransport(asyncio.Transport):
    """Records what a client writes; no socket."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.closed = False
        self.paused = False

    def write(self, data: Any) -> None:
        self.sent.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True


HANDSHAKE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
UPGRADED = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


def deliver(client: WsClient, data: bytes) -> None:
    """What asyncio does for a read: into the worker's shared buffer, then ``buffer_updated``."""
    client.tally.buffer[: len(data)] = data
    client.buffer_updated(len(data))


async def test_a_bot_client_counts_batches_samples_ts_answers_pings_and_closes() -> None:
    tally = Tally()
    client = BotClient(b"GET /ws HTTP/1.1\r\n\r\n", HANDSHAKE_KEY, tally)
    transport = FakeTransport()
    client.connection_made(transport)
    batch = server_frame(OP_TEXT, b'{"type":"batch","messages":[{"ts":1000},{"ts":1001},{"ts":1002}]}')
    tally.clock.ms = 1012.5
    deliver(client, UPGRADED + batch[:9])
    assert client.opened.done() and tally.msgs == 0
    deliver(client, batch[9:] + server_frame(OP_PING, b"hb") + server_frame(OP_CLOSE, struct.pack(">H", 1012)))
    assert (tally.msgs, tally.frames, client.msgs) == (3, 1, 3)
    assert tally.latency.total == 1 and tally.latency.max_ms == 12.5
    assert tally.pings == 1 and tally.handshake.total == 1
    request, pong, close = transport.sent
    assert request.startswith(b"GET /ws")
    assert pong[0] == 0x80 | OP_PONG and pong[1] == 0x80 | 2 and mask(pong[6:], pong[2:6]) == b"hb"
    assert close[0] == 0x80 | OP_CLOSE and mask(close[6:], close[2:6]) == struct.pack(">H", 1012)
    assert transport.closed


async def test_a_refused_upgrade_fails_the_open_and_a_stalled_client_stops_reading() -> None:
    tally = Tally()
    refused = BotClient(b"GET /ws HTTP/1.1\r\n\r\n", HANDSHAKE_KEY, tally)
    refused.connection_made(FakeTransport())
    deliver(refused, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(ConnectionError, match="400"):
        await refused.opened
    assert tally.errors == 1
    stalled = BotClient(b"GET /ws HTTP/1.1\r\n\r\n", HANDSHAKE_KEY, tally, stall=True)
    transport = FakeTransport()
    stalled.connection_made(transport)
    deliver(stalled, UPGRADED + server_frame(OP_TEXT, b'{"ts":1}'))
    assert transport.paused and tally.msgs == 0


# --- scanning frames --------------------------------------------------------------------------------------------


def test_messages_are_counted_by_ts_and_the_first_ts_is_sampled() -> None:
    batch = b'{"type":"batch","messages":[{"type":"trade","ts":1764160000300},{"type":"book","ts": 1764160000301}]}'
    frame = b"\x81\x7e\x00\x00" + batch
    assert scan.count_messages(frame, 4, len(frame)) == 2
    assert scan.first_ts(frame, 4, len(frame)) == 1764160000300
    assert scan.first_ts(frame, 60, len(frame)) == 1764160000301
    assert scan.count_messages(b'{"type":"batch"}', 0, 16) == 1
    assert scan.first_ts(b'{"type":"batch"}', 0, 16) is None


def test_status_time_names_a_broadcast_and_times_it_only_with_sub_seconds() -> None:
    html = b'<div id="status"><time datetime="2026-11-26T13:41:04+00:00">13:41:04 UTC</time></div>'
    stamp = scan.status_time(html, 0, len(html))
    assert stamp == b"2026-11-26T13:41:04+00:00"
    assert scan.stamp_ms(stamp) is None
    assert scan.stamp_ms(b"1970-01-01T00:00:01.250+00:00") == 1250.0
    assert scan.status_time(b"<p>no time</p>", 0, 14) is None


# --- statistics ---------------------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 1) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 0)


def test_histogram_percentiles_are_within_a_bucket_of_the_exact_ones() -> None:
    rng = random.Random(3)
    values = [rng.expovariate(1 / 8.0) for _ in range(5000)] + [1500.0, 2500.0]
    hist = Histogram()
    hist.extend(values)
    for p in (50, 90, 99, 99.9):
        exact = percentile(values, p)
        width = 0.1 if exact < 1000 else 10.0
        assert exact <= hist.percentile(p) <= exact + width, p
    assert hist.percentile(100) == max(values) == hist.max_ms
    assert hist.summary()["samples"] == 5002


def test_histograms_merge_across_processes_and_count_oddities() -> None:
    whole, first, second = Histogram(), Histogram(), Histogram()
    values = [0.05, 1.0, 3.3, 999.9, 1000.0, 130_000.0, -2.0]
    for i, value in enumerate(values):
        whole.add(value)
        (first if i % 2 else second).add(value)
    merged = Histogram()
    merged.merge_wire(first.to_wire())
    merged.merge_wire(second.to_wire())
    assert merged.summary() == whole.summary()
    assert merged.negative == 1 and merged.over == 1 and merged.total == len(values)
    assert math.isnan(Histogram().percentile(50))


def test_fanout_spread_is_arrival_minus_the_first_arrival_of_the_same_broadcast() -> None:
    spread = fanout_spread([{b"t1": [100.0, 103.0]}, {b"t1": [101.0], b"t2": [2000.0, 2000.5]}])
    assert spread.total == 5
    assert spread.percentile(100) == 3.0
    assert spread.percentile(40) == pytest.approx(0.1)


def test_warnings_name_a_busy_load_a_saturated_server_and_a_shortfall() -> None:
    result: dict[str, Any] = {
        "load": {"cpu_pct": 95.0, "cpu_pct_of_cores": 95.0, "worker_cpu_pct": [95.0]},
        "connect": {"failed": 0, "errors": []},
        "fairness": {"closed_during_window": 0},
        "latency_ms": {"samples": 10, "negative": 0},
        "throughput": {"messages_per_s": 800_000.0, "offered_per_s": 1_000_000.0},
        "server": {"pid": 1, "cpu_pct": 99.0},
    }
    found = " | ".join(warnings(result))
    assert "bottleneck" in found and "saturated" in found and "of 1000000 offered" in found
    result["load"] = {"cpu_pct": 40.0, "cpu_pct_of_cores": 40.0, "worker_cpu_pct": [40.0]}
    result["throughput"]["messages_per_s"] = 990_000.0
    result["server"]["cpu_pct"] = 60.0
    assert warnings(result) == []


# --- /proc parsing and planning -------------------------------------------------------------------------------


def test_proc_parsers_read_cpu_memory_and_cores() -> None:
    fields = " ".join(["S"] + ["0"] * 10 + ["250", "150"] + ["0"] * 30)
    assert parse_stat_cpu(f"42 (a (weird) name) {fields}") == pytest.approx(400 / CLOCK_TICKS)
    status = "Name:\tpython\nVmHWM:\t  61000 kB\nVmRSS:\t  52944 kB\n"
    assert parse_status_kb(status, "VmRSS") == 52944 and parse_status_kb(status, "VmSwap") == -1
    before = parse_core_times("cpu  9 9 9 9 9 9 9 9\ncpu0 10 0 10 80 0 0 0 0 0 0\ncpu1 0 0 0 100 0 0 0 0\n")
    after = parse_core_times("cpu0 40 0 30 110 0 0 0 0\ncpu1 0 0 0 200 0 0 0 0\n")
    assert busy_pct(before, after) == {0: 62.5, 1: 0.0}


def test_cores_are_split_between_server_and_load_when_there_are_two() -> None:
    plan = plan_cores({0, 1, 2, 3})
    assert plan.server == {0} and plan.load == {1, 2, 3}
    single = plan_cores({0})
    assert not single.server and not single.load and "one core" in single.note
    assert plan_cores({0, 1}, server_cores={1}, pin_server=False).load == {0}


def test_connections_are_spread_evenly_and_over_source_addresses_when_many() -> None:
    assert split(10, 3) == [4, 3, 3] and split(2, 4) == [1, 1, 0, 0]
    assert source_addresses(BenchOptions(clients=1000), "127.0.0.1") == ()
    assert source_addresses(BenchOptions(clients=60_000), "127.0.0.1") == ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    assert source_addresses(BenchOptions(sources=("127.0.0.9",)), "127.0.0.1") == ("127.0.0.9",)


# --- plot -------------------------------------------------------------------------------------------------------


def test_nice_ticks_are_round_and_cover_the_range() -> None:
    assert nice_ticks(0, 1_000_000) == [0, 200_000, 400_000, 600_000, 800_000, 1_000_000]
    assert nice_ticks(100, 1000)[0] <= 100 and nice_ticks(100, 1000)[-1] >= 1000
    assert nice_ticks(5, 5) == [5.0, 6.0, 7.0, 8.0, 9.0, 10.0]


def fake_run(rate: float, p99: float | None) -> dict[str, Any]:
    return {
        "throughput": {"messages_per_s": rate, "frames_per_s": rate / 20},
        "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": p99, "max": 9.0},
        "server": {"cpu_pct": 50.0, "rss_per_connection_kb": 14.2},
        "load": {"cpu_pct": 30.0},
        "warnings": [],
    }


def test_the_sweep_plot_is_an_svg_with_a_line_per_series(tmp_path: Path) -> None:
    text = sweep_svg("clients", [100, 500, 1000], [fake_run(1e5, 5.0), fake_run(5e5, None), fake_run(9e5, 20.0)])
    root = ET.fromstring(text)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert len(root.findall("{http://www.w3.org/2000/svg}polyline")) == 4  # messages/s, p50, p90, p99
    assert "clients" in text and "p99" in text
    assert ET.fromstring(svg([("empty", [Series("none", [None])])], [1.0], "x<y")) is not None


def test_sweep_table_has_a_row_per_value() -> None:
    table = format_sweep("rate", [10, 50], [fake_run(2e5, 3.0), fake_run(1e6, 25.0)])
    lines = table.splitlines()
    assert len(lines) == 3 and "p99 ms" in lines[0] and lines[2].split()[:2] == ["50", "1.00M"]
    assert si(1_234_567) == "1.23M" and si(None) == "-" and bar(0.5, 4) == "[##..]"


# --- options ----------------------------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def test_quick_is_a_preset_that_explicit_flags_override() -> None:
    quick = cli.options_from(parse("--quick"))
    assert (quick.clients, quick.duration, quick.workers) == (20, 2.0, 1)
    assert cli.options_from(parse("--quick", "--clients", "7")).clients == 7
    full = cli.options_from(
        parse(
            "--clients",
            "5000",
            "--symbols",
            "3",
            "--channels",
            "ticker,trades",
            "--rate",
            "50",
            "--stalled",
            "5",
            "--source-addresses",
            "127.0.0.2,127.0.0.3",
            "--server-args",
            "--outbox-messages 64",
        )
    )
    assert full.channels == ("ticker", "trades") and full.sources == ("127.0.0.2", "127.0.0.3")
    assert full.server_args == ("--outbox-messages", "64") and full.connections == 5005
    assert bot_path(full) == "/ws?symbols=BTCUSDT,ETHUSDT,SOLUSDT&channels=ticker,trades"
    assert bot_path(cli.options_from(parse("--channels", "none"))) == "/ws?channels=none"


def test_sweeps_and_urls_parse_or_are_refused() -> None:
    assert parse_sweep("clients=100,500,1000") == Sweep("clients", (100.0, 500.0, 1000.0))
    assert parse_sweep("ui-clients=1,2").apply(BenchOptions(), 2).ui_clients == 2
    assert parse_sweep("rate=10,20.5").apply(BenchOptions(), 20.5).rate == 20.5
    for bad in ("clients", "speed=1,2", "clients=a,b", "rate="):
        with pytest.raises(ValueError):
            parse_sweep(bad)
    assert parse_target("ws://127.0.0.1:8080/ws") == ("127.0.0.1", 8080, "/ws")
    assert parse_target("ws://localhost:9000/ws?channels=none")[2] == "/ws?channels=none"
    with pytest.raises(ValueError):
        parse_target("http://localhost/")


def test_inconsistent_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--sweep", "speed=1")
    with pytest.raises(SystemExit):
        cli.main(["--plot", "x.svg"])
    assert "--plot needs --sweep" in capsys.readouterr().err
    with pytest.raises(BenchError):
        cli.options_from(parse("--server-pid", "1"))
    assert cli.main(["--clients", "0"]) == 2
    assert cli.main(["--url", "ws://127.0.0.1:9/ws", "--sweep", "rate=1,2"]) == 2


def test_help_lists_every_option() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bixweb", "bench", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    for flag in (
        "--clients",
        "--ui-clients",
        "--symbols",
        "--channels",
        "--rate",
        "--duration",
        "--warmup",
        "--workers",
        "--url",
        "--server-pid",
        "--json",
        "--sweep",
        "--plot",
        "--stalled",
        "--quick",
        "--connect-concurrency",
        "--source-addresses",
        "--compression",
    ):
        assert flag in out, flag
    overview = subprocess.run(
        [sys.executable, "-m", "bixweb", "--help"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
    ).stdout
    assert "bench" in overview and "--tick-rate" not in overview  # the commands; each has its own options
    assert out.startswith("usage: bixweb bench")


# --- end to end -------------------------------------------------------------------------------------------------


def test_quick_run_against_a_real_server_reports_sane_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "quick.json"
    assert cli.main(["--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["connect"]["opened"] == 20 and result["connect"]["failed"] == 0
    assert result["throughput"]["messages"] > 0 and result["throughput"]["frames_per_s"] > 0
    for key in ("p50", "p90", "p99", "max"):
        assert result["latency_ms"][key] is not None and result["latency_ms"][key] >= 0
    assert result["fairness"]["clients"] == 20 and result["fairness"]["min"] > 0
    assert result["server"]["rss_kb"]["start"] > 0 and result["server"]["cpu_pct"] is not None
    assert result["machine"]["cpu_model"] and result["machine"]["python"]
    printed = capsys.readouterr()
    assert "messages/s" in printed.out and "latency" in printed.out
    assert "bench: connecting 20 sockets" in printed.err


def test_quick_sweep_with_dashboards_and_a_stalled_client_writes_json_and_svg(tmp_path: Path) -> None:
    out, plot = tmp_path / "sweep.json", tmp_path / "sweep.svg"
    argv = [
        "--quick",
        "--duration",
        "1.5",
        "--ui-clients",
        "2",
        "--stalled",
        "1",
        "--sweep",
        "clients=5,10",
        "--json",
        str(out),
        "--plot",
        str(plot),
    ]
    assert cli.main(argv) == 0
    document = json.loads(out.read_text())
    assert document["sweep"] == {"name": "clients", "values": [5.0, 10.0]}
    assert [run["fairness"]["clients"] for run in document["runs"]] == [5, 10]
    for run in document["runs"]:
        assert run["throughput"]["messages"] > 0
        assert run["dashboard"]["frames_per_s"] > 0
        assert run["stalled"] == {"clients": 1, "opened": 1}
    assert ET.parse(plot).getroot().tag.endswith("svg")


# --- compression (--compression) ----------------------------------------------------------------------------------

WINDOW = compression.Window(open_at=10.0, close_at=20.0, open_ms=1000.0, close_ms=2000.0)


def test_a_tally_counts_the_frames_whose_first_ts_is_in_the_window_and_a_wire_the_bytes_that_arrive_in_it() -> None:
    tally = compression.Tally(window=WINDOW)
    batch = b'{"type":"batch","messages":[{"ts":1500},{"ts":1501},{"ts":2500}]}'
    for frame in (b'{"ts":999}', b'{"ts":1000}', batch, b'{"type":"x"}', b'{"ts":2000}'):
        tally.frame(frame)
    assert (tally.frames, tally.messages, tally.largest_messages) == (2, 4, 3)
    assert tally.payload_bytes == len(b'{"ts":1000}') + len(batch) and tally.largest_bytes == len(batch)
    wire = compression.Wire(window=WINDOW)
    for size, down, now in ((1, True, 9.9), (100, True, 10.0), (7, False, 15.0), (1000, True, 20.0)):
        wire.add(size, down=down, now=now)
    assert (wire.down, wire.up) == (100, 7)
    never = compression.Wire()
    never.add(5, down=True, now=1e9)
    assert never.down == 0


def sides(
    plain_msgs: int,
    deflate_msgs: int,
    *,
    plain_bytes: int = 60_000,
    deflate_bytes: int = 9_000,
    deflate_wbits: int = 15,
) -> tuple[dict[str, Any], dict[str, Any]]:
    def one(wbits: int, down: int, msgs: int) -> dict[str, Any]:
        return compression.side(
            wbits,
            compression.Wire(down=down, up=10),
            compression.Tally(
                frames=msgs // 20, messages=msgs, payload_bytes=msgs * 300, largest_messages=20, largest_bytes=6000
            ),
            2.0,
        )

    return one(0, plain_bytes, plain_msgs), one(deflate_wbits, deflate_bytes, deflate_msgs)


def test_compare_gives_ratio_and_saving_and_allows_one_tick_of_difference_only() -> None:
    plain, deflate = sides(400, 400)
    assert plain["down_bytes_per_s"] == 30_000.0 and deflate["up_bytes_per_s"] == 5.0
    assert compression.compare(plain, deflate) == {"ratio": 0.15, "saving_pct": 85.0, "same_data": True}
    assert compression.compare(*sides(400, 380))["same_data"]
    assert not compression.compare(*sides(400, 379))["same_data"]
    assert not compression.compare(*sides(0, 0))["same_data"]
    assert compression.compare(*sides(0, 0, plain_bytes=0))["ratio"] is None


def test_cost_is_the_cpu_of_deflating_bots_over_plain_ones_and_warnings_name_a_declined_offer() -> None:
    deflate = {
        "clients": 100,
        "negotiated": 100,
        "frames": 10_000,
        "server_cpu_s": 1.3,
        "server_cpu_pct": 13.0,
        "server_rss_kb": 80_000,
    }
    plain = {
        "clients": 100,
        "negotiated": 0,
        "frames": 10_000,
        "server_cpu_s": 0.5,
        "server_cpu_pct": 5.0,
        "server_rss_kb": 55_000,
    }
    found = compression.cost(deflate, plain, 10.0)
    assert (found["extra_cpu_pct"], found["extra_cpu_pct_per_client"], found["extra_us_per_frame"]) == (8.0, 0.08, 80.0)
    assert found["extra_rss_kb_per_client"] == 250.0
    assert compression.cost({**deflate, "server_cpu_s": None}, plain, 10.0)["extra_cpu_pct"] is None
    plain_side, declined = sides(400, 400, deflate_bytes=60_000, deflate_wbits=0)
    pair = {
        "case": "ticker x20",
        "plain": plain_side,
        "deflate": declined,
        **compression.compare(plain_side, declined),
        "server_cpu_pct": 3.0,
    }
    crowd = compression.cost({**deflate, "negotiated": 0}, plain, 10.0)
    found_warnings = compression.warnings([pair], crowd)
    assert len(found_warnings) == 2 and "declined permessage-deflate" in found_warnings[0]
    table = compression.format_compression(
        {"cases": [pair], "cost": crowd, "warnings": found_warnings, "config": {"cores": "server on core 0, load on 1"}}
    )
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["subscription", "plain", "B/s"]
    assert lines[1].split()[:7] == ["ticker", "x20", "30.00k", "30.00k", "1.000", "0", "%"] and "same" in lines[1]
    assert "8 % of a core" in lines[2] and "250.0 KiB per bot" in lines[2]
    assert lines[-1].startswith("WARNING: cost: only 0 of 100")


def test_compression_refuses_what_does_not_apply(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--compression", "--channels", "ticker,nope"]) == 2
    assert cli.main(["--compression", "--stalled", "1"]) == 2
    assert cli.main(["--compression", "--sweep", "clients=1,2"]) == 2
    assert "--channels" in capsys.readouterr().err
    options = cli.options_from(parse("--compression"))
    assert options.channels == ("ticker", "trades", "book") and options.clients == 100
    assert [c.name for c in compression.cases(options)] == ["ticker x20", "trades x3", "book x3"]


def test_compression_on_a_started_server_negotiates_deflate_and_sends_fewer_bytes_for_the_same_messages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "compression.json"
    assert cli.main(["--compression", "--duration", "1", "--warmup", "0.5", "--clients", "0", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "--bot-compression" in result["config"]["server_command"] and result["cost"] is None
    assert [pair["case"] for pair in result["cases"]] == ["ticker x20", "trades x3", "book x3"]
    for pair in result["cases"]:
        plain, deflate = pair["plain"], pair["deflate"]
        assert deflate["negotiated_wbits"] == 15 and plain["negotiated_wbits"] == 0, pair["case"]
        assert 0 < deflate["down_bytes"] < plain["down_bytes"], pair["case"]
        assert plain["messages"] > 0 and pair["same_data"], pair["case"]
        assert abs(plain["messages"] - deflate["messages"]) <= plain["largest_frame_messages"]
        # the relay counted real bytes: the plain bot's frames, give or take a frame at each edge, plus headers
        assert (
            abs(plain["down_bytes"] - plain["payload_bytes"]) <= 2 * plain["largest_frame_bytes"] + 4 * plain["frames"]
        )
    assert result["warnings"] == []
    printed = capsys.readouterr().out
    assert "ticker x20" in printed and "same" in printed and "WARNING" not in printed


def test_a_server_without_bot_compression_declines_the_offer(tmp_path: Path) -> None:
    out = tmp_path / "declined.json"
    with ServerChild(server_command(rate=10, symbols=DEFAULT_SYMBOLS[:3])) as server:
        argv = [
            "--compression",
            "--url",
            f"ws://{server.host}:{server.port}/ws",
            "--server-pid",
            str(server.pid),
            "--symbols",
            "3",
            "--channels",
            "ticker",
            "--clients",
            "2",
            "--duration",
            "0.5",
            "--warmup",
            "0.2",
            "--json",
            str(out),
        ]
        assert cli.main(argv) == 0
    result = json.loads(out.read_text())
    (pair,) = result["cases"]
    assert pair["deflate"]["negotiated_wbits"] == 0 and pair["plain"]["messages"] > 0 and pair["same_data"]
    assert result["cost"]["deflate"]["negotiated"] == 0 and result["cost"]["deflate"]["messages"] > 0
    assert result["cost"]["deflate"]["server_rss_kb"] > 0 and result["cost"]["extra_cpu_pct"] is not None
    assert any("declined permessage-deflate" in w for w in result["warnings"])
