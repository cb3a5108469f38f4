"""``bixweb`` (or ``python -m bixweb``): one command. ``serve`` (the default: ``bixweb`` alone)
runs the service; ``feed`` owns the market for web processes over Redis; ``record`` writes a
feed to a file; ``bench`` measures a server. Each has its own ``--help``.

Every problem a person can act on at start-up (a bad option or variable, a port in use, a data
directory that cannot be written) ends the process with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import resource
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from bixweb import __version__
from bixweb.config import FLAGS, GROUPS, CommandParser, Settings, add_options, settings_from
from bixweb.errors import BixwebError, ConfigError
from bixweb.logs import configure as configure_logging

log = logging.getLogger("bixweb")

PROG = "bixweb"
COMMANDS: dict[str, str] = {
    "serve": "run the web service: dashboard, bot socket, probes and metrics (the default)",
    "feed": "own the market and publish it to --broker redis://… for web processes (bixweb serve --broker …)",
    "record": "write a feed's events to a file, to play back with --feed replay://FILE",
    "bench": "load a server with many WebSocket clients and measure it",
}
FEED_OPTIONS = frozenset(
    {
        *GROUPS["feed"][1],  # its market, and the broker it publishes to
        *GROUPS["logging"][1],
        *GROUPS["storage"][1],  # its alert desk
        "host",  # its probe server
        "port",
        "header_timeout",
        "keepalive_timeout",
        "trusted_proxies",  # and the /metrics rule: loopback clients, or a token
        "tokens",
        "token_file",
    }
)
"""The options the feed process reads: its market and broker, its probe server (the timeouts,
and the tokens and proxies of the ``/metrics`` rule), its alert desk, its log."""
FEED_PORT = 8079
"""The feed process's probe port unless told: beside, not on, the web service's 8080."""


def overview_parser() -> argparse.ArgumentParser:
    """``bixweb --help``: the commands, one line each."""
    parser = CommandParser(
        prog=PROG,
        description="bixweb: a live market-data hub. Without a command, bixweb runs serve.",
        epilog="Each command's --help lists its options, each with its BIXWEB_* variable (a flag wins).",
    )
    parser.add_argument("--version", action="version", version=f"bixweb {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, summary in COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    return parser


def build_parser(command: str = "serve") -> argparse.ArgumentParser:
    """The options of ``serve`` (all of them) or of ``feed``, in their groups."""
    parser = CommandParser(
        prog=f"{PROG} {command}",
        description=COMMANDS[command] + ". Every option can also be set by its BIXWEB_* variable; a flag wins.",
    )
    parser.add_argument("--version", action="version", version=f"bixweb {__version__}")
    if command == "feed":
        add_options(parser, FEED_OPTIONS, Settings(port=FEED_PORT, broker=""))  # it needs a redis:// one
    else:
        add_options(parser)
    return parser


WANTED_OPEN_FILES = 65_536
FILES_KEPT = 64
"""Descriptors never given to connections: the store, the broker, logs, static files, the spare."""


def raise_open_files_limit() -> None:
    """One socket is one file: raise the limit to 65,536 (root may), else to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in (max(hard, WANTED_OPEN_FILES), hard):
        try:
            if soft < limit:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, max(limit, hard)))
            break
        except (ValueError, OSError):
            continue
    log.debug("open files limit %d", resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def connections_allowed(configured: int, open_files: int) -> int:
    """``--max-connections``, lowered so that connections, refused ones awaiting their answer and
    the accepts in flight (not yet counted or turned away) leave the server :data:`FILES_KEPT`
    descriptors of its own: a full server refuses, it does not run dry."""
    from bixweb.web.listen import ACCEPTED_IN_FLIGHT
    from bixweb.web.tcp import REFUSED_WAITING

    room = max(1, open_files - FILES_KEPT - REFUSED_WAITING - ACCEPTED_IN_FLIGHT)
    return min(configured, room) if configured else room


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully."""
    from aiohttp import web  # here, not at the top: a Ctrl-C during imports is then caught by main

    from bixweb.web.app import create_app
    from bixweb.web.listen import ACCEPT_BATCH, AcceptGuard, check_listenable, deepen_backlog, start_site
    from bixweb.web.service import SERVICE

    check_listenable(settings.host, settings.port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()  # a signal during start-up stops the server once it is up, cleanly
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    app = create_app(settings)
    raise_open_files_limit()
    limits = app[SERVICE].limits
    open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limits.total = connections_allowed(limits.total, open_files)
    if limits.total != settings.max_connections:
        log.warning(
            "at most %d connections: the open files limit is %d (--max-connections %d)",
            limits.total,
            open_files,
            settings.max_connections,
        )
    # the closing handshakes get half the bound (close_sockets), the handlers' ends the rest
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=settings.shutdown_timeout / 2)
    await runner.setup()
    # asyncio's accept loop runs `backlog` times per wakeup: start with a short one, then deepen the
    # kernel's queue (bixweb.web.listen explains)
    try:
        sockets = await start_site(runner, settings.host, settings.port, backlog=ACCEPT_BATCH)
    except ConfigError:
        await runner.cleanup()  # the feed, the broker and the desk started with the app
        raise
    if settings.broker.startswith("memory:"):
        log.info("data directory %s (alert rules, alert history, annotations)", settings.data_dir)
    guard = AcceptGuard(loop, deepen_backlog(sockets))
    guard.install()
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        log.info("bixweb %s listening on http://%s:%d/ (bots: ws://%s:%d/ws)", __version__, shown, port, shown, port)
    await stop.wait()
    log.info("shutting down: no new connections; closing sockets (at most %g s)", settings.shutdown_timeout)
    app[SERVICE].shutting_down = True  # /livez and /readyz say so to whoever still asks
    started = loop.time()
    guard.close()  # its duplicates would keep the port open
    await runner.cleanup()  # stops listening, closes every socket with 1012, then stops the feed
    log.info("stopped in %.2f s", loop.time() - started)


def usable_data_dir(text: str) -> str:
    """The data directory as an absolute path (a relative one is taken from the working
    directory), created if need be and shown writable now, not at the first alert rule."""
    path = Path(os.path.abspath(os.path.expanduser(text)))
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        verb = "written" if path.is_dir() else "created"
        raise ConfigError(
            f"the data directory {path} cannot be {verb} ({exc.strerror or exc}): "
            "choose another with --data-dir or BIXWEB_DATA_DIR"
        ) from None
    return str(path)


def command_settings(command: str, argv: Sequence[str]) -> Settings:
    """Parse ``argv`` for ``serve`` or ``feed``; settings over the environment, checked for use."""
    names = FEED_OPTIONS if command == "feed" else None
    args = build_parser(command).parse_args(argv)
    settings = settings_from(args, os.environ, names)
    if command == "feed":
        if settings.broker.startswith("memory:"):
            raise ConfigError("feed publishes to a broker other processes can reach: --broker redis://host:port/db")
        if args.port is None and "BIXWEB_PORT" not in os.environ:
            settings = dataclasses.replace(settings, port=FEED_PORT)
    if command == "feed" or settings.broker.startswith("memory:"):  # the process that keeps the desk
        settings = dataclasses.replace(settings, data_dir=usable_data_dir(settings.data_dir))
    return settings


def feed_process() -> Callable[[Settings], Coroutine[Any, Any, None]]:
    """:func:`bixweb.web.feed_process.run_feed_process`, or the one line that says how to get Redis's client."""
    try:
        from bixweb.web.feed_process import run_feed_process
    except ModuleNotFoundError as exc:
        if exc.name != "redis":
            raise
        raise ConfigError("the feed process needs Redis's client: pip install 'bixweb[redis]'") from None
    return run_feed_process


def takes(word: str) -> bool:
    """Whether ``word`` is a flag whose value is the next word (``--data-dir feed`` names a directory)."""
    return word.startswith("--") and "=" not in word and word[2:].replace("-", "_") not in FLAGS


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in COMMANDS:
        command, argv = argv[0], argv[1:]
    elif argv[:1] and (argv[0] in ("-h", "--help", "--version") or not argv[0].startswith("-")):
        overview_parser().parse_args(argv[:1])  # the overview, the version, or which command is unknown
        return 2
    else:
        command = "serve"  # bixweb --port 0 is bixweb serve --port 0
    if command == "bench":
        from bixweb.bench import main as bench

        return bench(argv)
    if command == "record":
        from bixweb.record import main as record

        return record(argv)
    misplaced = [
        word for before, word in zip(["", *argv], argv, strict=False) if word in COMMANDS and not takes(before)
    ]
    if misplaced:
        print(f"{PROG}: the command comes first: {PROG} {misplaced[0]} [its options]", file=sys.stderr)
        return 2
    try:
        settings = command_settings(command, argv)
        configure_logging(settings.log_level, settings.log_format)
        if command == "feed":
            asyncio.run(feed_process()(settings))
        else:
            asyncio.run(serve(settings))
    except BixwebError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers (they come once listening)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
