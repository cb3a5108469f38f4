"""Connections against descriptors, on real processes: a lowered open-files limit and more sockets than fit."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

from tests.support import ROOT, ServerProcess

Start = Callable[..., ServerProcess]
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def healthz(port: int, timeout: float = 2.0) -> tuple[int, float]:
    """Status of a /healthz from a fresh connection (0: no answer), and how long it took."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(HEALTHZ)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    except OSError:
        return 0, time.monotonic() - started
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0
    if status == 200:
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["status"] in ("ok", "degraded")
    return status, time.monotonic() - started


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:  # reset: closed too
        return True


@contextlib.contextmanager
def silent_connections(port: int, count: int, per_address: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that never send a byte, from 127.0.0.2, .3, … (``per_address`` each)."""
    held: list[socket.socket] = []
    try:
        for n in range(count):
            sock = socket.create_connection(
                ("127.0.0.1", port), timeout=5, source_address=(f"127.0.0.{2 + n // per_address}", 0)
            )
            held.append(sock)
        yield held
    finally:
        for sock in held:
            sock.close()


def test_silent_connects_beyond_the_descriptors_leave_healthz_answering_and_the_log_short(
    server_process: Start,
) -> None:
    server = server_process("--header-timeout", "3", open_files=200)
    assert b"at most 40 connections: the open files limit is 200" in server.output
    with silent_connections(server.port, 400, per_address=100) as held:
        time.sleep(0.5)  # the server has accepted what it will
        probes = [healthz(server.port) for _ in range(10)]
        assert [status for status, _ in probes] == [200] * 10, probes  # a reserved slot, while all are held
        time.sleep(3.5)  # the header timeout: every silent one is closed by now
        for sock in held:
            sock.settimeout(2.0)
        still_open = sum(not closed_by_peer(sock) for sock in held)
        assert still_open == 0
    assert healthz(server.port)[0] == 200
    server.stop()
    lines = server.output.decode(errors="replace").splitlines()
    assert len(lines) < 100, "\n".join(lines[:120])
    assert not [line for line in lines if "Traceback" in line or " ERROR " in line], "\n".join(lines)
    assert any("turned_away" in line for line in lines)


CHILD = """
import asyncio, resource, sys
from bixweb.logs import configure
from bixweb.web.listen import ACCEPT_BATCH, AcceptGuard, deepen_backlog

async def main():
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    held = []
    async def keep(reader, writer):  # every connection kept: the descriptors run out
        held.append(writer)
    server = await asyncio.start_server(keep, "127.0.0.1", 0, backlog=ACCEPT_BATCH)
    guard = AcceptGuard(asyncio.get_running_loop(), deepen_backlog(server.sockets))
    if sys.argv[1] == "guarded":
        guard.install()
    print("port", server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(float(sys.argv[2]))
    print("failed", guard.failed, "shed", guard.shed, "held", len(held), flush=True)
    await asyncio.sleep(60)  # holding on until the test has looked

configure("info")
asyncio.run(main())
"""


def run_out_of_descriptors(mode: str, connections: int, seconds: float) -> tuple[list[str], int]:
    """A server that keeps every connection, under a 64-descriptor limit; its log until ``seconds``
    after start, and how many of our ``connections`` it had closed a second after they connected
    (rather than leaving them to hang), while it still runs."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, str(seconds)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline().split()[1])
        socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(connections)]
        time.sleep(1.0)
        poll = select.poll()  # the server sends nothing: a readable socket is a closed one
        for sock in socks:
            poll.register(sock, select.POLLIN)
        readable = {fd for fd, _ in poll.poll(0)}
        closed = sum(closed_by_peer(sock) for sock in socks if sock.fileno() in readable)
        lines = []
        while not (lines and lines[-1].startswith("failed")):
            line = child.stdout.readline()
            assert line, "the server stopped"
            lines.append(line.decode(errors="replace").rstrip("\n"))
        for sock in socks:
            sock.close()
        return lines, closed
    finally:
        child.kill()
        child.communicate()


def test_out_of_descriptors_accept_errors_make_one_line_and_waiting_connections_are_closed() -> None:
    lines, closed = run_out_of_descriptors("guarded", 300, 3.0)
    accept_lines = [line for line in lines if "accept_failed" in line]
    assert 1 <= len(accept_lines) <= 2, lines
    assert "count=" in accept_lines[0] and "shed=" in accept_lines[0]
    _, failed, _, shed, _, held = lines[-1].split()
    assert int(failed) >= 1 and len(lines) < 10, lines
    assert int(shed) + int(held) >= 290, lines[-1]  # each accepted: kept, or closed with the spare descriptor
    assert closed >= 150, closed  # beyond the ~55 held, the waiting got a close within a second, not a hang
    unguarded, unguarded_closed = run_out_of_descriptors("plain", 300, 3.0)
    assert len(unguarded) > 10 * len(lines) and unguarded_closed < closed  # asyncio alone: a line per failure
