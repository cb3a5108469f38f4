"""The server under test, as a child process: ``python -m bixweb --port 0 ...``.

Its log goes to a file, not a pipe: a pipe nobody drains fills up and
blocks the server on its next log line (one per connection at ``info``).
The port comes from its "listening on http://HOST:PORT/" line.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from bixweb.bench.options import BenchError

LISTENING = re.compile(rb"listening on http://(\[[^\]]+\]|[^:/\s]+):(\d+)/")


def server_command(*, rate: float, symbols: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """The command line of the server child; every load client comes from loopback, so no connection limits."""
    return [
        sys.executable,
        "-m",
        "bixweb",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--max-connections",
        "0",
        "--max-connections-per-client",
        "0",
        "--data-dir",
        tempfile.mkdtemp(prefix="bixweb-bench-"),
        "--tick-rate",
        f"{rate:g}",
        "--symbols",
        ",".join(symbols),
        *extra,
    ]


def find_listening(log: bytes) -> tuple[str, int] | None:
    """(host, port) from the server's "listening on" log line, if it is there yet."""
    found = LISTENING.search(log)
    if found is None:
        return None
    return found[1].decode().strip("[]"), int(found[2])


class ServerChild:
    """Start with :meth:`start`, always :meth:`stop` (it is a context manager too)."""

    def __init__(
        self, command: Sequence[str], *, cores: frozenset[int] = frozenset(), log_path: Path | None = None
    ) -> None:
        self.command = list(command)
        self.cores = cores
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.host = ""
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> ServerChild:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 20.0) -> ServerChild:
        if self.log_path is None:
            self._log = tempfile.TemporaryFile()
        else:
            self._log = self.log_path.open("w+b")
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if self.cores:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.proc.pid, self.cores)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = find_listening(self.log_head())
            if found is not None:
                self.host, self.port = found
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.log_head()[-2000:].decode(errors="replace")
        self.stop()
        raise BenchError(f"the server did not start ({' '.join(self.command[1:])}):\n{tail}")

    def log_head(self, limit: int = 65536) -> bytes:
        """The first ``limit`` bytes of the server's log."""
        if self._log is None:
            return b""
        self._log.flush()
        return os.pread(self._log.fileno(), limit, 0)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit status."""
        status = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
            try:
                status = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                status = self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return status
