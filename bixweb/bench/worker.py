"""One load process: open its share of the connections, count, report over a pipe.

The conversation with the parent, one tuple per message::

    worker -> ("ready", index)
    parent -> ("connect",)
    worker -> ("connected", ConnectReport)
    parent -> ("measure", open_at, close_at)     # time.monotonic() values, shared by all processes
    worker -> ("progress", index, msgs, frames, ui_frames, open)   # every PROGRESS_S, until close_at
    worker -> ("result", WindowReport)
    parent -> ("stop",)                          # connections are held until then

``("stop",)`` may come at any point; so may the pipe's end, which counts as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypedDict

from bixweb.bench import dial
from bixweb.bench.procstat import raise_nofile
from bixweb.bench.stats import Histogram, WireHistogram
from bixweb.bench.wsclient import BotClient, DashboardClient, StampingSelector, Tally, WakeClock, WsClient

PROGRESS_S = 0.5


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """One worker's share of the load (picklable: it crosses into the process)."""

    index: int
    target: dial.Target
    bots: int
    stalled: int = 0
    dashboards: int = 0
    sources: tuple[str, ...] = ()
    concurrency: int = 100
    connect_timeout: float = 60.0
    cores: frozenset[int] = frozenset()
    nofile: int = 0


class ConnectReport(TypedDict):
    index: int
    bots: int
    stalled: int
    dashboards: int
    failed: int
    started_at: float
    opened_at: float
    handshake: WireHistogram
    last_error: str


class WindowReport(TypedDict):
    index: int
    window_s: float
    cpu_s: float
    msgs: int
    frames: int
    bytes: int
    ui_frames: int
    ui_bytes: int
    latency: WireHistogram
    ui_latency: WireHistogram
    ui_stamps: dict[bytes, list[float]]
    per_client: list[int]
    open_at_start: int
    open_at_end: int
    closed: int
    pings: int
    errors: int
    last_error: str


def worker_main(plan: WorkerPlan, pipe: Connection) -> None:
    """The worker process's entry point."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if plan.cores:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, plan.cores)
    if plan.nofile:
        raise_nofile(plan.nofile)
    clock = WakeClock()
    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(StampingSelector(clock))) as runner:
        runner.run(Worker(plan, pipe, clock).run())


class Worker:
    def __init__(self, plan: WorkerPlan, pipe: Connection, clock: WakeClock) -> None:
        self.plan = plan
        self.pipe = pipe
        self.tally = Tally(clock)
        self.bots: list[WsClient] = []
        self.others: list[WsClient] = []
        self.commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.pipe.fileno(), self._command_ready)
        try:
            self.pipe.send(("ready", self.plan.index))
            if (await self.commands.get())[0] != "connect":
                return
            self.pipe.send(("connected", await self.connect_all()))
            command = await self.commands.get()
            if command[0] == "measure":
                self.pipe.send(("result", await self.measure(command[1], command[2])))
                await self.commands.get()
        finally:
            loop.remove_reader(self.pipe.fileno())
            for client in self.bots + self.others:
                if client.transport is not None:
                    client.transport.abort()

    def _command_ready(self) -> None:
        try:
            self.commands.put_nowait(self.pipe.recv())
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(self.pipe.fileno())
            self.commands.put_nowait(("stop",))

    async def connect_all(self) -> ConnectReport:
        plan = self.plan
        gate = asyncio.Semaphore(plan.concurrency)
        kinds = ["bot"] * plan.bots + ["stalled"] * plan.stalled + ["dashboard"] * plan.dashboards
        started = time.monotonic()
        tasks = [asyncio.create_task(self._open(kind, i, gate)) for i, kind in enumerate(kinds)]
        done, pending = await asyncio.wait(tasks, timeout=plan.connect_timeout) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        opened = time.monotonic()
        opened_kinds = [t.result() for t in done if not t.cancelled() and t.exception() is None]
        if pending:
            self.tally.fail(f"{len(pending)} connections not open after {plan.connect_timeout:g} s")
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                self.tally.fail(repr(task.exception()))
        return {
            "index": plan.index,
            "bots": opened_kinds.count("bot"),
            "stalled": opened_kinds.count("stalled"),
            "dashboards": opened_kinds.count("dashboard"),
            "failed": len(kinds) - len(opened_kinds),
            "started_at": started,
            "opened_at": opened,
            "handshake": self.tally.handshake.to_wire(),
            "last_error": self.tally.last_error,
        }

    async def _open(self, kind: str, number: int, gate: asyncio.Semaphore) -> str:
        plan = self.plan
        source = plan.sources[number % len(plan.sources)] if plan.sources else None
        tally = self.tally
        async with gate:
            if kind == "dashboard":
                path = await dial.dashboard_socket_path(plan.target)
                client = await dial.open_socket(
                    plan.target, path, lambda r, k: DashboardClient(r, k, tally), source=source
                )
                self.others.append(client)
            else:
                stall = kind == "stalled"
                client = await dial.open_socket(
                    plan.target,
                    plan.target.bot_path,
                    lambda r, k: BotClient(r, k, tally, stall=stall),
                    source=source,
                    stall=stall,
                )
                (self.others if stall else self.bots).append(client)
        return kind

    async def measure(self, open_at: float, close_at: float) -> WindowReport:
        """Warm up until ``open_at``, count until ``close_at``, report the difference."""
        progress = asyncio.create_task(self._progress(close_at))
        try:
            await _sleep_until(open_at)
            window = Window(self.tally, self.bots)
            await _sleep_until(close_at)
            return window.close(self.plan.index, self.tally, self.bots)
        finally:
            progress.cancel()

    async def _progress(self, until: float) -> None:
        tally = self.tally
        while time.monotonic() < until:
            opened = sum(1 for c in self.bots if c.is_open)
            self.pipe.send(("progress", self.plan.index, tally.msgs, tally.frames, tally.ui_frames, opened))
            await asyncio.sleep(PROGRESS_S)


async def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


class Window:
    """Readings at the opening of a measuring window, and the report at its close."""

    def __init__(self, tally: Tally, bots: list[WsClient]) -> None:
        self.at = time.monotonic()
        self.cpu = time.process_time()
        self.counts = (tally.msgs, tally.frames, tally.bytes, tally.ui_frames, tally.ui_bytes)
        self.closed = tally.closed
        self.pings = tally.pings
        self.errors = tally.errors
        self.per_client = {id(c): c.msgs for c in bots if c.is_open}
        tally.latency = Histogram()
        tally.ui_latency = Histogram()
        tally.ui_stamps = {}

    def close(self, index: int, tally: Tally, bots: list[WsClient]) -> WindowReport:
        window_s = time.monotonic() - self.at
        cpu_s = time.process_time() - self.cpu
        latency, ui_latency, stamps = tally.latency, tally.ui_latency, tally.ui_stamps or {}
        tally.latency, tally.ui_latency, tally.ui_stamps = Histogram(), Histogram(), None
        msgs, frames, nbytes, ui_frames, ui_bytes = (
            now - then
            for now, then in zip(
                (tally.msgs, tally.frames, tally.bytes, tally.ui_frames, tally.ui_bytes), self.counts, strict=True
            )
        )
        return {
            "index": index,
            "window_s": window_s,
            "cpu_s": cpu_s,
            "msgs": msgs,
            "frames": frames,
            "bytes": nbytes,
            "ui_frames": ui_frames,
            "ui_bytes": ui_bytes,
            "latency": latency.to_wire(),
            "ui_latency": ui_latency.to_wire(),
            "ui_stamps": stamps,
            "per_client": [c.msgs - self.per_client[id(c)] for c in bots if id(c) in self.per_client],
            "open_at_start": len(self.per_client),
            "open_at_end": sum(1 for c in bots if c.is_open),
            "closed": tally.closed - self.closed,
            "pings": tally.pings - self.pings,
            "errors": tally.errors - self.errors,
            "last_error": tally.last_error,
        }
