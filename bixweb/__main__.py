"""``python -m bixweb``: run the service (``serve``, the default command), or ``bench`` it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from bixweb import __version__
from bixweb.config import Settings, add_options, settings_from
from bixweb.errors import BixwebError, ConfigError
from bixweb.logs import configure as configure_logging

log = logging.getLogger("bixweb")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bixweb",
        description="bixweb: a live market-data hub. Every option can also be set by its BIXWEB_* variable.",
    )
    parser.add_argument("--version", action="version", version=f"bixweb {__version__}")
    parser.add_argument(
        "command",
        nargs="?",
        choices=["serve", "feed", "bench", "record"],
        default="serve",
        help="serve: run the web service (default); "
        "feed: own the market and publish it to --broker redis://… for web processes; "
        "bench: measure a server (its options: python -m bixweb bench --help); "
        "record: write feed events to a file (python -m bixweb record --help)",
    )
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
    from bixweb.web.app import create_app
    from bixweb.web.listen import ACCEPT_BATCH, AcceptGuard, deepen_backlog
    from bixweb.web.service import SERVICE

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
    loop = asyncio.get_running_loop()
    # asyncio's accept loop runs `backlog` times per wakeup: start with a short one, then deepen the
    # kernel's queue (bixweb.web.listen explains)
    site = web.TCPSite(runner, settings.host, settings.port, backlog=ACCEPT_BATCH)
    await site.start()
    server = site._server  # the only way to learn which port 0 chose
    sockets = list(getattr(server, "sockets", ()))
    guard = AcceptGuard(loop, deepen_backlog(sockets))
    guard.install()
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        log.info("bixweb %s listening on http://%s:%d/ (bots: ws://%s:%d/ws)", __version__, shown, port, shown, port)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down: no new connections; closing sockets (at most %g s)", settings.shutdown_timeout)
    app[SERVICE].shutting_down = True  # /healthz says so to whoever still asks
    started = loop.time()
    guard.close()  # its duplicates would keep the port open
    await runner.cleanup()  # stops listening, closes every socket with 1012, then stops the feed
    log.info("stopped in %.2f s", loop.time() - started)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # bench has options of its own
        from bixweb.bench import main as bench

        return bench(argv[1:])
    if argv[:1] == ["record"]:  # record has options of its own
        from bixweb.record import main as record

        return record(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("bench", "record"):
        parser.error(f"{args.command} comes first: python -m bixweb {args.command} [its options]")
    try:
        settings = settings_from(args, os.environ)
        configure_logging(settings.log_level, settings.log_format)
        if args.command == "feed":
            if settings.broker.startswith("memory:"):
                raise ConfigError("feed publishes to a broker other processes can reach: --broker redis://host:port/db")
            from bixweb.owner import run_feed_process

            asyncio.run(run_feed_process(settings))
        else:
            asyncio.run(serve(settings))
    except BixwebError as exc:
        print(f"bixweb: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
