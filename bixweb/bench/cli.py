"""``python -m bixweb bench``: options, then one run or a sweep; table, JSON, SVG.

See ``docs/performance.md`` for the method and the targets.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bixweb.bench.compression import format_compression, run_compression
from bixweb.bench.options import COMPRESSION, QUICK, BenchError, BenchOptions, Sweep, parse_sweep
from bixweb.bench.plot import sweep_svg, write_svg
from bixweb.bench.report import Display, format_result, format_sweep
from bixweb.bench.runner import run_once
from bixweb.config import CommandParser

DEFAULTS = BenchOptions()


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is below 0")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds")
    return value


def _list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _sweep(text: str) -> Sweep:
    try:
        return parse_sweep(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# flag -> (type, metavar, help); defaults come from BenchOptions, shown in --help
FLAGS: dict[str, tuple[Callable[[str], Any], str, str]] = {
    "clients": (_count, "N", "bot connections (GET /ws) that read everything"),
    "ui_clients": (_count, "M", "dashboard sockets (GET / for a page id, then /ws/ui?page=...)"),
    "symbols": (_count, "K", "subscribe to the first K default symbols (the started server carries those K)"),
    "channels": (_list, "LIST", "comma-separated channels per symbol; 'none' for idle connections"),
    "rate": (float, "R", "ticks per second of the simulated market (the server bench starts)"),
    "duration": (_seconds, "T", "seconds of measuring"),
    "warmup": (_seconds, "W", "seconds between the last connection and the start of measuring"),
    "workers": (_count, "W", "load processes (0: one per core available to the load)"),
    "stalled": (_count, "S", "extra bot clients that stop reading once connected (slow consumers)"),
    "connect_concurrency": (_count, "C", "handshakes in flight at once, over all workers"),
    "connect_timeout": (_seconds, "S", "seconds allowed for all connections to open"),
    "sources": (
        _list,
        "ADDRS",
        "comma-separated local addresses to connect from, round robin; unset, "
        "127.0.0.1, .2, ... are used as needed beyond 25,000 loopback connections",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="bixweb bench",
        description="Load a bixweb server with N raw WebSocket clients and measure delivered messages/s, "
        "latency (server ts to receipt), connection set-up rate, server CPU and memory. "
        "Starts its own server unless --url is given.",
    )
    load = parser.add_argument_group("load", "the clients, what they ask for, and for how long")
    for name, (kind, metavar, help_text) in FLAGS.items():
        flag = "--source-addresses" if name == "sources" else "--" + name.replace("_", "-")
        default = getattr(DEFAULTS, name)
        shown = ",".join(default) if isinstance(default, tuple) else default
        load.add_argument(
            flag,
            dest=name,
            type=kind,
            metavar=metavar,
            default=None,
            help=f"{help_text}" + (f" (default: {shown})" if shown != "" else ""),
        )
    server = parser.add_argument_group("server", "the server measured: one bench starts, or one running")
    server.add_argument(
        "--url", metavar="WS_URL", help="load a running server at ws://HOST:PORT/PATH instead of starting one"
    )
    server.add_argument(
        "--server-pid",
        type=int,
        metavar="PID",
        help="with --url: the server's process id, to read its CPU and memory from /proc",
    )
    server.add_argument(
        "--server-args",
        metavar="ARGS",
        default="",
        help='extra options for the started server, one quoted string (e.g. "--outbox-messages 64")',
    )
    server.add_argument(
        "--server-log", metavar="FILE", help="keep the started server's log in FILE (default: a temporary file)"
    )
    server.add_argument(
        "--no-pin", dest="pin", action="store_false", help="do not pin the server and the load to different cores"
    )
    runs = parser.add_argument_group("runs", "one run, a sweep, the compression study or a smoke test")
    runs.add_argument(
        "--sweep",
        type=_sweep,
        metavar="NAME=V1,V2,...",
        help="run once per value of clients, ui-clients, stalled, symbols or rate",
    )
    runs.add_argument(
        "--compression",
        action="store_true",
        help="measure what permessage-deflate saves on the bot socket (the started server gets "
        "--bot-compression): per --channels case (default: ticker,trades,book) a plain and a "
        "deflating bot side by side; then the server CPU of --clients (default 100) deflating "
        "bots against as many plain ones (0: skip)",
    )
    output = parser.add_argument_group("output", "where the results go besides the table on stdout")
    output.add_argument("--json", type=Path, metavar="FILE", help="write the full result as JSON to FILE")
    output.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.svg",
        help="with --sweep: plot throughput and latency against the swept value to an SVG",
    )
    runs.add_argument(
        "--quick",
        action="store_true",
        help=f"tiny preset for a smoke test: {', '.join(f'{k}={v:g}' for k, v in QUICK.items())}",
    )
    return parser


def options_from(args: argparse.Namespace) -> BenchOptions:
    """Flags over the ``--quick`` preset over the defaults."""
    values: dict[str, Any] = dict(QUICK) if args.quick else {}
    values.update({name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None})
    values.update(
        url=args.url,
        server_pid=args.server_pid,
        pin=args.pin,
        server_log=args.server_log,
        server_args=tuple(shlex.split(args.server_args)),
    )
    if args.server_pid is not None and args.url is None:
        raise BenchError("--server-pid goes with --url (bench knows the pid of a server it starts)")
    if args.url is not None and (args.server_args or args.server_log):
        raise BenchError("--server-args and --server-log are for the server bench starts, not one at --url")
    return dataclasses.replace(COMPRESSION if args.compression else DEFAULTS, **values)


def jsonable(value: Any) -> Any:
    """NaN and infinities become null (JSON has no such numbers); bytes become text."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def run(args: argparse.Namespace, display: Display) -> tuple[str, Any]:
    """The table to print and the document to write as JSON."""
    options = options_from(args)
    sweep: Sweep | None = args.sweep
    if args.compression:
        if sweep is not None:
            raise BenchError("--compression runs once: no --sweep")
        document = run_compression(options, display)
        return format_compression(document), document
    if sweep is None:
        result = run_once(options, display)
        return format_result(result), result
    if sweep.name == "rate" and options.url is not None:
        raise BenchError("--sweep rate needs a server bench starts (the tick rate is a server option)")
    runs = []
    for value in sweep.values:
        display.phase(f"sweep {sweep.name}={value:g}")
        runs.append(run_once(sweep.apply(options, value), display))
    if args.plot is not None:
        write_svg(args.plot, sweep_svg(sweep.name, sweep.values, runs))
    return format_sweep(sweep.name, sweep.values, runs), {
        "sweep": {"name": sweep.name, "values": sweep.values},
        "runs": runs,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.plot is not None and args.sweep is None:
        parser.error("--plot needs --sweep")
    try:
        table, document = run(args, Display())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    print(table)
    if args.json is not None:
        args.json.write_text(json.dumps(jsonable(document), indent=2) + "\n", encoding="utf-8")
    return 0
