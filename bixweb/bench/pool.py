"""The load's worker processes, seen from the parent: start, tell, gather, stop."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from bixweb.bench.options import BenchError
from bixweb.bench.worker import WorkerPlan, worker_main

TICK_S = 0.1
"""The longest the parent waits on the pipes before it looks at the clock again."""

Progress = Callable[[tuple[Any, ...]], None]


class LoadPool:
    """Worker processes and a pipe to each. Use as a context manager: leaving it stops them."""

    def __init__(self, plans: list[WorkerPlan]) -> None:
        self.plans = plans
        self.pipes: list[Connection] = []
        self.procs: list[BaseProcess] = []

    def __enter__(self) -> LoadPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0, tick: Callable[[], None] | None = None) -> None:
        """Start every worker and wait until each says it is ready."""
        context = multiprocessing.get_context("spawn")  # no inherited event loop or threads
        for plan in self.plans:
            ours, theirs = context.Pipe()
            proc = context.Process(
                target=worker_main, args=(plan, theirs), name=f"bench-load-{plan.index}", daemon=True
            )
            proc.start()
            theirs.close()
            self.pipes.append(ours)
            self.procs.append(proc)
        self.gather("ready", timeout, tick=tick)

    def send_all(self, message: tuple[Any, ...]) -> None:
        for pipe in self.pipes:
            pipe.send(message)

    def gather(
        self, kind: str, timeout: float, *, tick: Callable[[], None] | None = None, progress: Progress | None = None
    ) -> list[Any]:
        """The payload of one ``kind`` message from every worker, in worker order.

        ``progress`` gets every ``progress`` message on the way; ``tick`` is
        called at least every :data:`TICK_S`.
        """
        got: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(self.pipes):
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{len(self.pipes) - len(got)} load workers did not report {kind!r} in {timeout:g} s")
            waiting = {i: p for i, p in enumerate(self.pipes) if i not in got}
            for ready in wait(list(waiting.values()), min(left, TICK_S)):
                index = next(i for i, p in waiting.items() if p is ready)
                message = self._receive(self.pipes[index], index, kind)
                if message[0] == kind:
                    got[index] = message[1] if len(message) > 1 else None
                elif message[0] == "progress" and progress is not None:
                    progress(message)
            if tick is not None:
                tick()
        return [got[i] for i in range(len(self.pipes))]

    def _receive(self, pipe: Connection, index: int, kind: str) -> tuple[Any, ...]:
        try:
            message: tuple[Any, ...] = pipe.recv()
        except (EOFError, OSError):
            code = self.procs[index].exitcode
            raise BenchError(f"load worker {index} ended (exit code {code}) before reporting {kind!r}") from None
        return message

    def stop(self, timeout: float = 10.0) -> None:
        """Tell every worker to stop (they close their connections), then make sure they have."""
        for pipe in self.pipes:
            try:
                pipe.send(("stop",))
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            proc.join(max(deadline - time.monotonic(), 0.1))
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
        for pipe in self.pipes:
            pipe.close()
        self.pipes.clear()
        self.procs.clear()
