"""A real ``redis-server`` on a free loopback port, for the scale-out tests.

Locally a missing ``redis-server`` skips those tests with the reason; under
``CI=true`` it fails them (``make test`` installs it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.browser import require
from tests.support import free_port

REDIS_SERVER = os.environ.get("BIXWEB_REDIS_SERVER", "redis-server")


class RedisServer:
    """``redis-server`` without persistence: a restart comes back empty, as a crashed cache would."""

    def __init__(self, directory: Path, port: int = 0) -> None:
        binary = shutil.which(REDIS_SERVER)
        require(binary is not None, f"no {REDIS_SERVER}: apt-get install redis-server (make test does)")
        assert binary is not None
        self.binary = binary
        self.directory = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")

    def stop(self) -> None:
        """Kill it (SIGKILL: no goodbye to its clients, as in a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
