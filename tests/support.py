"""Test helpers: settings for the in-process app, schema checks, real server processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from bixweb import protocol
from bixweb.config import Settings
from bixweb.feeds.simulated import SimulatedMarket
from bixweb.model import MarketEvent

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(rb"listening on http://[^:]+:(\d+)/")


def fast_settings(**overrides: Any) -> Settings:
    """Settings for in-process tests: seeded, quick ticks, strict outbound validation."""
    values: dict[str, Any] = {
        "port": 0,
        "seed": 7,
        "tick_rate": 20.0,
        "status_interval": 0.5,
        "strict": True,
        "data_dir": tempfile.mkdtemp(prefix="bixweb-test-"),
    }
    values.update(overrides)
    return Settings(**values)


def assert_valid(message: dict[str, Any]) -> None:
    """The message, and every message inside a batch, matches its server schema."""
    errors = protocol.schemas().errors("server", message)
    assert not errors, (message.get("type"), errors[:3])
    for inner in message.get("messages", []) if message.get("type") == "batch" else []:
        errors = protocol.schemas().errors("server", inner)
        assert not errors, (inner.get("type"), errors[:3])


def unwrap(message: dict[str, Any]) -> list[dict[str, Any]]:
    return list(message["messages"]) if message["type"] == "batch" else [message]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``python -m bixweb`` (or ``command``, from ``cwd``) in a child process, on a port it reports."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        open_files: int | None = None,
        command: Sequence[str] = (sys.executable, "-m", "bixweb"),
        cwd: Path = ROOT,
    ) -> None:
        self.command = list(command)
        self.cwd = cwd
        self.open_files = open_files
        """A lower RLIMIT_NOFILE for the child, soft and hard alike (so bixweb cannot raise it)."""
        self.args = ["--port", "0", *args] if "--port" not in args else list(args)
        if "--data-dir" not in self.args:  # a store of its own, not the checkout's data/
            self.args += ["--data-dir", tempfile.mkdtemp(prefix="bixweb-test-")]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.output = b""
        self._drain: threading.Thread | None = None

    def start(self, timeout: float = 15.0) -> ServerProcess:
        self.proc = subprocess.Popen(
            [*self.command, *self.args],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=self._limit_files if self.open_files is not None else None,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output += line
            match = LISTENING.search(line)
            if match:
                self.port = int(match.group(1))
                # keep reading, or a full pipe would block the server on its next log line
                self._drain = threading.Thread(target=self._read_rest, daemon=True)
                self._drain.start()
                return self
        self.stop()
        raise RuntimeError(f"bixweb did not start: {self.output.decode(errors='replace')}")

    def _limit_files(self) -> None:
        import resource

        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def _read_rest(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output += line

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._drain is not None:
            self._drain.join(timeout)
        elif self.proc.stdout is not None:
            with contextlib.suppress(Exception):
                self.output += self.proc.stdout.read() or b""
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


class PausingFeed:
    """A simulated market whose ticks stop while ``paused`` (for watchdog tests)."""

    def __init__(self, symbols: tuple[str, ...] = ("BTCUSDT",), period: float = 0.05) -> None:
        self.running = asyncio.Event()
        self.running.set()
        self.market = SimulatedMarket(symbols, seed=1)
        self.period = period

    def pause(self) -> None:
        self.running.clear()

    def resume(self) -> None:
        self.running.set()

    async def events(self) -> AsyncIterator[list[MarketEvent]]:
        while True:
            await self.running.wait()
            yield self.market.tick(time.time_ns() // 1_000_000)
            await asyncio.sleep(self.period)
