"""``python -m bixweb bench --compression``: what permessage-deflate saves on the bot socket, and costs.

Per subscription (``--channels``: every symbol's ``ticker``; ``trades``,
``book`` on a few symbols) two bots connect side by side, one offering
permessage-deflate (``ws_connect(compress=15)``) and one not, each through its
own in-process TCP relay that counts the bytes on the wire each way. After
``--warmup`` both are measured for ``--duration`` seconds: wire bytes by
arrival time, messages by the server ``ts`` of their frame (so both count the
same data, give or take one tick at the window's edges). Then the cost:
``--clients`` plain bots alone for a window, as many deflating ones for
another, and the server's CPU and memory in each.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bixweb import __version__
from bixweb.bench import scan
from bixweb.bench.options import BenchError, BenchOptions, parse_target
from bixweb.bench.options import check as check_options
from bixweb.bench.procstat import CorePlan, machine_facts, plan_cores, read_proc
from bixweb.bench.report import Display, si
from bixweb.bench.server import ServerChild, server_command
from bixweb.model import CHANNELS, TICKER

FEW = 3
"""Symbols of the cases other than the ticker (which takes every symbol)."""
WBITS = 15
GRACE_S = 0.3
"""Seconds after the window for its last frames to arrive."""
FORMAT = "bixweb-bench-compression/1"


@dataclasses.dataclass(frozen=True, slots=True)
class Case:
    """One subscription, as ``/ws?symbols=…&channels=…`` asks for it."""

    channel: str
    symbols: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.channel} x{len(self.symbols)}"

    def path(self, base: str) -> str:
        return f"{base}?symbols={','.join(self.symbols)}&channels={self.channel}"


def cases(options: BenchOptions) -> list[Case]:
    symbols = options.symbol_list()
    return [Case(c, symbols if c == TICKER else symbols[:FEW]) for c in options.channels]


@dataclasses.dataclass(frozen=True, slots=True)
class Window:
    """Wire bytes count by arrival (monotonic s), messages by their frame's server ``ts`` (wall ms)."""

    open_at: float = math.inf
    close_at: float = math.inf
    open_ms: float = math.inf
    close_ms: float = math.inf

    @classmethod
    def starting_in(cls, delay: float, duration: float) -> Window:
        mono, wall_ms = time.monotonic() + delay, time.time() * 1000 + delay * 1000
        return cls(mono, mono + duration, wall_ms, wall_ms + duration * 1000)


@dataclasses.dataclass
class Wire:
    """TCP payload bytes a relay passed in the window: ``down`` from the server, ``up`` to it."""

    window: Window = dataclasses.field(default_factory=Window)
    down: int = 0
    up: int = 0

    def add(self, size: int, *, down: bool, now: float) -> None:
        if self.window.open_at <= now < self.window.close_at:
            if down:
                self.down += size
            else:
                self.up += size


@dataclasses.dataclass
class Tally:
    """The (inflated) text frames one bot received whose first ``ts`` falls in the window."""

    window: Window = dataclasses.field(default_factory=Window)
    frames: int = 0
    messages: int = 0
    payload_bytes: int = 0
    largest_messages: int = 0
    largest_bytes: int = 0

    def frame(self, payload: bytes) -> None:
        ts = scan.first_ts(payload, 0, len(payload))
        if ts is None or not self.window.open_ms <= ts < self.window.close_ms:
            return
        count = scan.count_messages(payload, 0, len(payload))
        self.frames += 1
        self.messages += count
        self.payload_bytes += len(payload)
        self.largest_messages = max(self.largest_messages, count)
        self.largest_bytes = max(self.largest_bytes, len(payload))


def side(wbits: int, wire: Wire, tally: Tally, seconds: float) -> dict[str, Any]:
    """One bot of a pair: what it negotiated, what crossed the wire, what it received."""
    return {
        "negotiated_wbits": wbits,
        "down_bytes": wire.down,
        "up_bytes": wire.up,
        "down_bytes_per_s": round(wire.down / seconds, 1),
        "up_bytes_per_s": round(wire.up / seconds, 1),
        "frames": tally.frames,
        "messages": tally.messages,
        "payload_bytes": tally.payload_bytes,
        "largest_frame_messages": tally.largest_messages,
        "largest_frame_bytes": tally.largest_bytes,
    }


def compare(plain: dict[str, Any], deflate: dict[str, Any]) -> dict[str, Any]:
    """Ratio and saving of the deflating bot's wire bytes; whether both got the same data (within one frame)."""
    ratio = deflate["down_bytes"] / plain["down_bytes"] if plain["down_bytes"] else None
    tick = max(plain["largest_frame_messages"], deflate["largest_frame_messages"])
    tick_bytes = max(plain["largest_frame_bytes"], deflate["largest_frame_bytes"])
    same = (
        plain["messages"] > 0
        and abs(plain["messages"] - deflate["messages"]) <= tick
        and abs(plain["payload_bytes"] - deflate["payload_bytes"]) <= tick_bytes
    )
    return {
        "ratio": None if ratio is None else round(ratio, 4),
        "saving_pct": None if ratio is None else round(100 * (1 - ratio), 1),
        "same_data": same,
    }


def cost(deflate: dict[str, Any], plain: dict[str, Any], seconds: float) -> dict[str, Any]:
    """What deflating costs the server: the CPU and memory of N deflating bots over those of N plain ones."""
    out: dict[str, Any] = {
        "deflate": deflate,
        "plain": plain,
        "extra_cpu_pct": None,
        "extra_cpu_pct_per_client": None,
        "extra_us_per_frame": None,
        "extra_rss_kb_per_client": None,
    }
    if deflate["server_cpu_s"] is None or plain["server_cpu_s"] is None or not deflate["clients"]:
        return out
    extra, clients = deflate["server_cpu_s"] - plain["server_cpu_s"], deflate["clients"]
    out["extra_cpu_pct"] = round(100 * extra / seconds, 2)
    out["extra_cpu_pct_per_client"] = round(100 * extra / seconds / clients, 3)
    out["extra_us_per_frame"] = round(1e6 * extra / deflate["frames"], 1) if deflate["frames"] else None
    out["extra_rss_kb_per_client"] = round((deflate["server_rss_kb"] - plain["server_rss_kb"]) / clients, 1)
    return out


def warnings(pairs: list[dict[str, Any]], crowd: dict[str, Any] | None) -> list[str]:
    found = []
    for pair in pairs:
        if not pair["deflate"]["negotiated_wbits"]:
            found.append(f"{pair['case']}: the server declined permessage-deflate (start it with --bot-compression)")
        if not pair["same_data"]:
            found.append(
                f"{pair['case']}: the two bots did not receive the same messages: "
                f"{pair['plain']['messages']} plain, {pair['deflate']['messages']} deflate"
            )
    if crowd is not None and crowd["deflate"]["negotiated"] < crowd["deflate"]["clients"]:
        found.append(
            f"cost: only {crowd['deflate']['negotiated']} of {crowd['deflate']['clients']} deflate bots negotiated it"
        )
    return found


def check(options: BenchOptions) -> None:
    """The general checks (with room for the pair), then those of this mode."""
    check_options(dataclasses.replace(options, clients=options.clients + 2))
    if options.ui_clients or options.stalled:
        raise BenchError("--ui-clients and --stalled do not apply to --compression")
    if not options.channels or any(c not in CHANNELS for c in options.channels):
        raise BenchError(f"--compression --channels: one or more of {', '.join(CHANNELS)}")


class Relay:
    """``127.0.0.1:<port>`` → ``host:port``, counting every byte that passes into :attr:`wire`."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.wire = Wire()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:  # each read then ends: its peer's transport is gone
            writer.close()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        self._pipes.add(asyncio.create_task(self._pipe(reader, writer)))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers.append(up_writer)
        await asyncio.gather(self._copy(reader, up_writer, down=False), self._copy(up_reader, writer, down=True))

    async def _copy(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, down: bool) -> None:
        try:
            while data := await source.read(65536):
                self.wire.add(len(data), down=down, now=time.monotonic())
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    base: str
    pid: int | None
    command: list[str] | None
    note: str


@contextlib.contextmanager
def _target(options: BenchOptions, available: set[int]) -> Iterator[Target]:
    """The server at ``--url``, or one started with ``--bot-compression`` (pinned away from this process)."""
    if options.url is not None:
        host, port, path = parse_target(options.url)
        yield Target(host, port, path.partition("?")[0], options.server_pid, None, "server at --url: nothing pinned")
        return
    cores = plan_cores(available) if options.pin else CorePlan(frozenset(), frozenset(), "not pinned (--no-pin)")
    command = server_command(
        rate=options.rate, symbols=options.symbol_list(), extra=("--bot-compression", *options.server_args)
    )
    log = Path(options.server_log) if options.server_log else None
    with ServerChild(command, cores=cores.server, log_path=log) as server:
        if cores.load:
            os.sched_setaffinity(0, cores.load)
        try:
            yield Target(server.host, server.port, "/ws", server.pid, command, cores.note)
        finally:
            if cores.load:
                os.sched_setaffinity(0, available)


async def _measure(window: Window, pid: int | None, seconds: float) -> dict[str, Any]:
    """Wait out the window; the server's CPU in it and its memory at its end (None: cannot be read)."""
    await asyncio.sleep(max(0.0, window.open_at - time.monotonic()))
    before = read_proc(pid) if pid is not None else None
    await asyncio.sleep(max(0.0, window.close_at - time.monotonic()))
    after = read_proc(pid) if pid is not None else None
    await asyncio.sleep(GRACE_S)
    if before is None or after is None:
        return {"server_cpu_s": None, "server_cpu_pct": None, "server_rss_kb": None}
    cpu_s = after.cpu_s - before.cpu_s
    return {
        "server_cpu_s": round(cpu_s, 3),
        "server_cpu_pct": round(100 * cpu_s / seconds, 1),
        "server_rss_kb": after.rss_kb,
    }


async def _read(ws: aiohttp.ClientWebSocketResponse, tally: Tally) -> None:
    async for msg in ws:
        if msg.type is aiohttp.WSMsgType.TEXT:
            tally.frame(msg.data.encode())


async def _bots(
    session: aiohttp.ClientSession,
    urls: list[tuple[str, int]],
    options: BenchOptions,
    pid: int | None,
    wires: tuple[Wire, ...] = (),
) -> tuple[list[int], list[Tally], dict[str, Any]]:
    """Connect a bot to each ``(url, wbits)``, count one window; negotiated wbits, tallies, server readings."""
    async with contextlib.AsyncExitStack() as stack:
        sockets = [
            await stack.enter_async_context(session.ws_connect(url, compress=wbits, max_msg_size=0))
            for url, wbits in urls
        ]
        tallies = [Tally() for _ in sockets]
        readers = [asyncio.create_task(_read(ws, tally)) for ws, tally in zip(sockets, tallies, strict=True)]
        window = Window.starting_in(options.warmup, options.duration)
        for tally in tallies:
            tally.window = window
        for wire in wires:
            wire.window = window
        server = await _measure(window, pid, options.duration)
        for ws in sockets:
            await ws.close()
        await asyncio.gather(*readers, return_exceptions=True)
        return [ws.compress for ws in sockets], tallies, server


async def _pair(session: aiohttp.ClientSession, target: Target, case: Case, options: BenchOptions) -> dict[str, Any]:
    """A plain and a deflating bot with the same subscription, each through its relay."""
    async with Relay(target.host, target.port) as plain, Relay(target.host, target.port) as deflate:
        urls = [
            (f"ws://127.0.0.1:{relay.port}{case.path(target.base)}", wbits)
            for relay, wbits in ((plain, 0), (deflate, WBITS))
        ]
        wbits, tallies, server = await _bots(session, urls, options, target.pid, (plain.wire, deflate.wire))
    sides = {
        name: side(w, relay.wire, tally, options.duration)
        for name, w, relay, tally in zip(("plain", "deflate"), wbits, (plain, deflate), tallies, strict=True)
    }
    return {
        "case": case.name,
        "path": case.path(target.base),
        **sides,
        **compare(sides["plain"], sides["deflate"]),
        **server,
    }


async def _crowd(session: aiohttp.ClientSession, target: Target, options: BenchOptions, wbits: int) -> dict[str, Any]:
    """``--clients`` bots straight to the server, all deflating or all plain: the server's CPU."""
    url = f"ws://{target.host}:{target.port}{Case(TICKER, options.symbol_list()).path(target.base)}"
    negotiated, tallies, server = await _bots(session, [(url, wbits)] * options.clients, options, target.pid)
    return {
        "clients": options.clients,
        "negotiated": sum(1 for w in negotiated if w),
        "frames": sum(t.frames for t in tallies),
        "messages": sum(t.messages for t in tallies),
        **server,
    }


async def _run(
    options: BenchOptions, target: Target, display: Display
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    timing = f"{options.warmup:g} s warm-up, {options.duration:g} s measured"
    async with aiohttp.ClientSession() as session:
        pairs = []
        for case in cases(options):
            display.phase(f"{case.name}: a plain and a deflating bot side by side; {timing}")
            pairs.append(await _pair(session, target, case, options))
        if not options.clients:
            return pairs, None
        crowds = {}
        for name, wbits in (("plain", 0), ("deflate", WBITS)):  # plain first: memory freed after is not returned
            display.phase(f"cost: {options.clients} {name} bots on every symbol's ticker; {timing}")
            crowds[name] = await _crowd(session, target, options, wbits)
        return pairs, cost(crowds["deflate"], crowds["plain"], options.duration)


def run_compression(options: BenchOptions, display: Display) -> dict[str, Any]:
    """Measure; the result as a JSON-ready dict (see ``docs/performance.md``)."""
    check(options)
    available = set(os.sched_getaffinity(0))
    with _target(options, available) as target:
        display.phase(target.note)
        pairs, crowd = asyncio.run(_run(options, target, display))
    return {
        "format": FORMAT,
        "bixweb": __version__,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_facts(len(available)),
        "config": {
            "symbols": options.symbols,
            "rate": options.rate,
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "clients": options.clients,
            "url": options.url,
            "server_command": target.command,
            "server_pid": target.pid,
            "cores": target.note,
        },
        "cases": pairs,
        "cost": crowd,
        "warnings": warnings(pairs, crowd),
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:g} %"


def format_compression(result: dict[str, Any]) -> str:
    """The table: one row per subscription, then the cost, notes and warnings."""
    header = [
        "subscription",
        "plain B/s",
        "deflate B/s",
        "ratio",
        "saving",
        "messages plain/deflate",
        "up B/s plain/deflate",
        "server CPU",
    ]
    rows = [
        [
            p["case"],
            si(p["plain"]["down_bytes_per_s"]),
            si(p["deflate"]["down_bytes_per_s"]),
            "-" if p["ratio"] is None else f"{p['ratio']:.3f}",
            _pct(p["saving_pct"]),
            f"{p['plain']['messages']}/{p['deflate']['messages']}" + (" same" if p["same_data"] else " DIFFER"),
            f"{si(p['plain']['up_bytes_per_s'])}/{si(p['deflate']['up_bytes_per_s'])}",
            _pct(p["server_cpu_pct"]),
        ]
        for p in result["cases"]
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]
    crowd = result["cost"]
    if crowd is not None:
        d, p = crowd["deflate"], crowd["plain"]
        lines.append(
            f"cost: {d['clients']} deflate bots (every ticker): server CPU {_pct(d['server_cpu_pct'])}; "
            f"{p['clients']} plain bots: {_pct(p['server_cpu_pct'])}; extra {_pct(crowd['extra_cpu_pct'])} "
            f"of a core = {_pct(crowd['extra_cpu_pct_per_client'])} per bot, "
            f"{crowd['extra_us_per_frame']} µs per frame; server RSS {d['server_rss_kb']} KiB against "
            f"{p['server_rss_kb']} KiB = {crowd['extra_rss_kb_per_client']} KiB per bot"
        )
    lines.append(f"note: {result['config']['cores']}; B/s: TCP payload (WebSocket frames) from the server")
    return "\n".join(lines + [f"WARNING: {w}" for w in result["warnings"]])
