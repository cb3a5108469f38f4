"""One bench run, from the parent's side: server, workers, phases, readings.

Phases: start the server (or find it), start the workers, connect, warm
up, measure, report. The parent reads the server's ``/proc`` entries at
each phase boundary (and its memory often, for the peak) and leaves the
counting to the workers.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bixweb.bench import results
from bixweb.bench.dial import Target, loopback_sources
from bixweb.bench.options import BenchError, BenchOptions, bot_path, check, parse_target
from bixweb.bench.pool import LoadPool
from bixweb.bench.procstat import CorePlan, ProcSample, core_times, plan_cores, raise_nofile, read_proc
from bixweb.bench.report import Display
from bixweb.bench.server import ServerChild, server_command
from bixweb.bench.worker import WorkerPlan

PORTS_PER_SOURCE = 25_000
"""Connections per loopback source address before another one is used (the kernel has ~28,000)."""
FD_SPARE = 1024
PEAK_EVERY_S = 0.25


@dataclass(frozen=True, slots=True)
class Mark:
    """Readings at one moment: the server, every core, and this process."""

    at: float
    server: ProcSample | None
    cores: dict[int, tuple[int, int]]
    own_cpu_s: float


@dataclass
class Meter:
    """Reads the server (``pid``) at named moments and keeps its peak RSS."""

    pid: int | None
    marks: dict[str, Mark] = field(default_factory=dict)
    peak_rss_kb: int = 0
    _next_peak: float = 0.0

    def mark(self, name: str) -> None:
        sample = read_proc(self.pid) if self.pid else None
        if sample is not None:
            self.peak_rss_kb = max(self.peak_rss_kb, sample.rss_kb)
        self.marks[name] = Mark(time.monotonic(), sample, core_times(), time.process_time())

    def tick(self) -> None:
        now = time.monotonic()
        if self.pid and now >= self._next_peak:
            self._next_peak = now + PEAK_EVERY_S
            sample = read_proc(self.pid)
            if sample is not None:
                self.peak_rss_kb = max(self.peak_rss_kb, sample.rss_kb)


@dataclass(frozen=True, slots=True)
class Setup:
    """Decided before anything connects."""

    options: BenchOptions
    target: Target
    cores: CorePlan
    plans: list[WorkerPlan]
    server_pid: int | None
    server_command: list[str] | None
    notes: list[str]
    available: frozenset[int]
    """The cores this process could use before the run pinned it."""


def split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as integers allow (the first ones get the rest)."""
    base, rest = divmod(total, parts)
    return [base + (1 if i < rest else 0) for i in range(parts)]


def source_addresses(options: BenchOptions, host: str) -> tuple[str, ...]:
    """The given ``--source-addresses``, or enough loopback ones for the connection count."""
    if options.sources:
        return options.sources
    if host.startswith("127.") and options.connections > PORTS_PER_SOURCE:
        return loopback_sources(-(-options.connections // PORTS_PER_SOURCE))
    return ()


def worker_plans(options: BenchOptions, target: Target, cores: CorePlan, nofile: int) -> list[WorkerPlan]:
    available = cores.load or frozenset(os.sched_getaffinity(0))
    count = options.workers or max(1, len(available))
    count = min(count, max(1, options.connections))
    sources = source_addresses(options, target.host)
    return [
        WorkerPlan(
            index=i,
            target=target,
            bots=b,
            stalled=s,
            dashboards=d,
            sources=sources,
            concurrency=max(1, options.connect_concurrency // count),
            connect_timeout=options.connect_timeout,
            cores=cores.load,
            nofile=nofile,
        )
        for i, (b, s, d) in enumerate(
            zip(
                split(options.clients, count),
                split(options.stalled, count),
                split(options.ui_clients, count),
                strict=True,
            )
        )
    ]


def run_once(options: BenchOptions, display: Display) -> dict[str, Any]:
    """Run the bench once; the result as a JSON-ready dict (see ``docs/performance.md``)."""
    check(options)
    notes: list[str] = []
    nofile = raise_nofile(options.connections + FD_SPARE)
    if nofile < options.connections + 64:
        notes.append(f"open-file limit {nofile} is below the {options.connections} connections wanted")
    with contextlib.ExitStack() as stack:
        setup = stack.enter_context(_server(options, notes, nofile))
        stack.enter_context(_pinned(setup.cores.load))
        display.phase(f"{setup.cores.note}; {len(setup.plans)} load worker(s)")
        meter = Meter(setup.server_pid)
        meter.mark("start")
        pool = stack.enter_context(LoadPool(setup.plans))
        pool.start(tick=meter.tick)
        result = _measure(setup, pool, meter, display)
    return result


@contextlib.contextmanager
def _server(options: BenchOptions, notes: list[str], nofile: int) -> Iterator[Setup]:
    """The server to load: ours (started, pinned, stopped after) or the one at ``--url``."""
    available = set(os.sched_getaffinity(0))
    if options.url is not None:
        host, port, path = parse_target(options.url)
        pid = options.server_pid
        if pid is not None and read_proc(pid) is None:
            raise BenchError(f"--server-pid {pid}: no such process to read")
        server_cores = set(os.sched_getaffinity(pid)) if pid is not None else None
        cores = plan_cores(available, server_cores=server_cores, pin_server=False)
        if not options.pin:
            cores = CorePlan(frozenset(), frozenset(), "not pinned (--no-pin)")
        target = Target(host, port, bot_path(options, path))
        yield Setup(
            options, target, cores, worker_plans(options, target, cores, nofile), pid, None, notes, frozenset(available)
        )
        return
    cores = plan_cores(available) if options.pin else CorePlan(frozenset(), frozenset(), "not pinned (--no-pin)")
    command = server_command(rate=options.rate, symbols=options.symbol_list(), extra=options.server_args)
    log = Path(options.server_log) if options.server_log else None
    with ServerChild(command, cores=cores.server, log_path=log) as server:
        target = Target(server.host, server.port, bot_path(options))
        yield Setup(
            options,
            target,
            cores,
            worker_plans(options, target, cores, nofile),
            server.pid,
            command,
            notes,
            frozenset(available),
        )


@contextlib.contextmanager
def _pinned(cores: frozenset[int]) -> Iterator[None]:
    """This process on the load's cores for the run (it is part of the load), then back."""
    before = os.sched_getaffinity(0)
    if cores:
        os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        if cores:
            os.sched_setaffinity(0, before)


def _measure(setup: Setup, pool: LoadPool, meter: Meter, display: Display) -> dict[str, Any]:
    options = setup.options
    display.phase(f"connecting {options.connections} sockets to {setup.target.authority}")
    meter.mark("connect")
    pool.send_all(("connect",))
    connects = pool.gather("connected", options.connect_timeout + 30.0, tick=meter.tick)
    meter.mark("connected")
    opened = sum(r["bots"] + r["stalled"] + r["dashboards"] for r in connects)
    if opened == 0:
        errors = "; ".join(sorted({r["last_error"] for r in connects if r["last_error"]}))
        raise BenchError(f"no connection opened: {errors or 'no error reported'}")
    display.phase(f"{opened} open; warming up {options.warmup:g} s, then measuring {options.duration:g} s")
    open_at = time.monotonic() + options.warmup
    close_at = open_at + options.duration
    pool.send_all(("measure", open_at, close_at))
    display.start_window(open_at, close_at, opened)

    def tick() -> None:
        meter.tick()
        now = time.monotonic()
        if "open" not in meter.marks and now >= open_at:
            meter.mark("open")
        if "close" not in meter.marks and now >= close_at:
            meter.mark("close")
        display.tick(now)

    windows = pool.gather("result", options.warmup + options.duration + 30.0, tick=tick, progress=display.progress)
    for name in ("open", "close"):
        if name not in meter.marks:
            meter.mark(name)
    display.finish()
    return results.assemble(setup, connects, windows, meter)
