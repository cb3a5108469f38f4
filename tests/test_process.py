"""The real ``python -m bixweb`` process, spoken to by a plain WebSocket client (``websockets``)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import websockets

from bixweb.feeds.simulated import DEFAULT_SYMBOLS
from tests.support import ROOT, ServerProcess, assert_valid, unwrap

Start = Callable[..., ServerProcess]


async def test_welcome_snapshot_then_updates_for_all_symbols_within_2s(server_process: Start) -> None:
    server = server_process("--seed", "11")
    async with websockets.connect(server.url) as ws:
        started = time.monotonic()
        frames: list[dict[str, Any]] = []
        symbols_seen: set[str] = set()
        while symbols_seen != set(DEFAULT_SYMBOLS):
            assert time.monotonic() - started < 2.0, f"only {sorted(symbols_seen)} within 2 s"
            frame = json.loads(await asyncio.wait_for(ws.recv(), 2.0))
            assert_valid(frame)
            frames.append(frame)
            symbols_seen |= {m["symbol"] for m in unwrap(frame) if m["type"] == "market_update"}
    assert [f["type"] for f in frames[:2]] == ["welcome", "initial_data"]
    assert set(frames[1]["tickers"]) == set(DEFAULT_SYMBOLS)


async def test_sigterm_closes_sockets_with_1012_and_exits_cleanly(server_process: Start) -> None:
    server = server_process()
    async with websockets.connect(server.url) as ws:
        await ws.recv()
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5.0)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    assert server.stop() == 0
    assert b"shutting down" in server.output


def test_help_lists_every_option_with_its_variable() -> None:
    from bixweb.config import OPTIONS, env_name

    out = subprocess.run(
        [sys.executable, "-m", "bixweb", "serve", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for name in OPTIONS:
        assert "--" + name.replace("_", "-") in out, name
        assert env_name(name) in out, name


def test_options_come_from_bixweb_variables(server_process: Start) -> None:
    server = server_process(env={"BIXWEB_SYMBOLS": "BTCUSDT,ETHUSDT", "BIXWEB_LOG_LEVEL": "debug"})

    async def symbols() -> list[str]:
        async with websockets.connect(server.url) as ws:
            welcome = json.loads(await ws.recv())
            return list(welcome["symbols"])

    assert asyncio.run(symbols()) == ["BTCUSDT", "ETHUSDT"]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--port", "0", "--symbols", "BTCUSDT,NOPEUSDT"], {}, "NOPEUSDT"),
        (["--port", "0", "--tick-rate", "0"], {}, "--tick-rate"),
        ([], {"BIXWEB_PORT": "http"}, "BIXWEB_PORT"),
    ],
)
def test_bad_options_stop_start_up_with_a_clear_message(args: list[str], env: dict[str, str], expected: str) -> None:
    import os

    result = subprocess.run(
        [sys.executable, "-m", "bixweb", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
    )
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr


TOKEN = "process-test-token-0123456789"


async def test_json_logs_one_line_per_event_never_tokens_or_message_contents(server_process: Start) -> None:
    server = server_process("--log-format", "json", env={"BIXWEB_TOKENS": TOKEN})
    async with websockets.connect(
        server.url + "?channels=none", additional_headers={"Authorization": f"Bearer {TOKEN}"}
    ) as ws:
        await ws.recv()
        await ws.send('{"type": "SECRET-CONTENT-123"}')
        assert json.loads(await ws.recv())["type"] == "error"
    async with websockets.connect(server.url + f"?channels=none&token={TOKEN}") as ws:
        await ws.recv()
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(server.url + "?token=wrong-token-but-long-enough"):
            pass
    assert refused.value.response.status_code == 401
    assert server.stop() == 0
    text = server.output.decode()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is one JSON object
    events = [line.get("event") for line in lines]
    assert events.count("connected") == 2 and events.count("disconnected") == 2
    assert "refused" in events and "refused_message" in events
    assert any("bearer token required" in line.get("message", "") for line in lines)
    requests = [line for line in lines if line.get("event") == "request"]
    assert any(line["path"] == "/ws?channels=none&token=***" for line in requests)
    for secret in (TOKEN, "wrong-token-but-long-enough", "SECRET-CONTENT"):
        assert secret not in text


def test_start_up_says_who_may_use_the_bot_socket(server_process: Start) -> None:
    server = server_process()
    server.stop()
    assert b"INFO bixweb.app bot socket /ws: no tokens configured, so it serves loopback clients only" in server.output
    assert b"WARNING" not in server.output  # the intended default is said, not warned of
    opened = server_process("--open-bots")
    opened.stop()
    assert b"WARNING bixweb.app bot socket /ws: open to every address without a token" in opened.output


async def test_shutdown_is_bounded_even_with_a_client_that_never_reads(server_process: Start) -> None:
    server = server_process("--tick-rate", "50", "--shutdown-timeout", "2")
    stalled = socket.create_connection(("127.0.0.1", server.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(
        b"GET /ws?channels=trades,book HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    await asyncio.sleep(2)  # its buffers fill; it never reads
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 2 + 1.0  # the bound, plus the interpreter's exit
    stalled.close()
