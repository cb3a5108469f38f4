"""Settings, read once at start-up from command-line flags and ``BIXWEB_*`` variables.

A flag wins over its variable, which wins over the default. Every option
is listed by ``bixweb serve --help`` (in groups) with its variable's name.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields
from typing import Any, NoReturn

import platformdirs

from bixweb import values
from bixweb.errors import ConfigError
from bixweb.feeds.simulated import DEFAULT_SYMBOLS


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service can be told. Field names match the flags."""

    host: str = "127.0.0.1"
    port: int = 8080
    feed: str = "simulated://"
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    tick_rate: float = 10.0
    seed: int = 42
    log_level: str = "info"
    book_depth: int = 10
    history_points: int = 100
    trade_history: int = 100
    replay_depth: int = 1_000
    heartbeat: float = 20.0
    status_interval: float = 5.0
    stale_after: float = 5.0
    max_message_bytes: int = 16_384
    max_messages_per_s: float = 20.0
    max_subscriptions: int = 1_000
    outbox_messages: int = 1_024
    outbox_bytes: int = 8 * 1024 * 1024
    ui_rate: float = 4.0
    watchlist: tuple[str, ...] = ()
    """Empty: the first six of ``symbols``."""
    strict: bool = False
    trusted_proxies: tuple[str, ...] = ()
    """Addresses or networks whose ``X-Forwarded-For``/``-Proto`` are believed."""
    allowed_origins: tuple[str, ...] = ()
    """Empty: a browser socket must come from a page of the host it connects to."""
    tokens: tuple[str, ...] = ()
    token_file: str = ""
    open_bots: bool = False
    max_connections: int = 10_000
    max_connections_per_client: int = 100
    header_timeout: float = 10.0
    """Seconds a new connection has to send its first complete request head."""
    keepalive_timeout: float = 75.0
    """Seconds an HTTP connection may sit idle between requests (above nginx's upstream 60 s)."""
    bot_compression: bool = False
    ui_compression: bool = False
    shutdown_timeout: float = 5.0
    log_format: str = "text"
    broker: str = "memory://"
    data_dir: str = platformdirs.user_data_dir("bixweb")
    """Where alert rules, alert history and annotations are kept (created on first start): the
    platform's per-user data directory unless told; ``make run`` gives a checkout's ``./data``."""


# name -> (parser, help). The order is the order of --help.
OPTIONS: dict[str, tuple[Callable[[str], Any], str]] = {
    "host": (values.host, "address to listen on"),
    "port": (values.port_number, "port to listen on; 0 picks a free one (the log says which)"),
    "feed": (values.feed_url, "market-data source: simulated://, binance://, replay://FILE?speed=N (docs/feeds.md)"),
    "symbols": (values.symbols, "comma-separated symbols to carry"),
    "tick_rate": (values.positive_number, "simulated market ticks per second"),
    "seed": (values.whole, "seed of the simulated market (same seed, same market)"),
    "log_level": (values.log_level, "debug, info, warning or error"),
    "book_depth": (values.count, "order-book levels per side"),
    "history_points": (values.count, "candles per interval kept for snapshots and charts"),
    "trade_history": (values.count, "recent trades kept per symbol for snapshots"),
    "replay_depth": (values.count, "trade messages kept per symbol for clients that resume"),
    "heartbeat": (values.seconds, "seconds between WebSocket pings; a peer that does not answer is closed"),
    "status_interval": (values.seconds, "seconds between status messages"),
    "stale_after": (values.seconds, "seconds without feed events before the feed counts as stale"),
    "max_message_bytes": (values.count, "largest client frame; larger closes the socket with 1009"),
    "max_messages_per_s": (values.positive_number, "client messages per second allowed on average (burst: twice that)"),
    "max_subscriptions": (values.count, "streams (channel x symbol) per connection"),
    "outbox_messages": (
        values.count,
        "trades and replies queued for a client before it is closed as a slow consumer (4008)",
    ),
    "outbox_bytes": (values.count, "bytes queued for a client before it is closed as a slow consumer"),
    "ui_rate": (values.positive_number, "dashboard updates per second per fragment (latest wins)"),
    "watchlist": (
        values.symbols,
        "comma-separated symbols a new dashboard page watches (default: the first six symbols)",
    ),
    "strict": (values.switch, "validate every outbound message against its schema (slow; for debugging)"),
    "trusted_proxies": (
        values.networks,
        "comma-separated proxy addresses or networks whose X-Forwarded-For and X-Forwarded-Proto "
        "are believed (client address for limits and logs; https for the page's wss:// socket)",
    ),
    "allowed_origins": (
        values.origins,
        "comma-separated origins (https://example.com) whose pages may open the dashboard socket "
        "(default: the host the page was served from)",
    ),
    "tokens": (
        values.words,
        "comma-separated bearer tokens the bot socket and /metrics from elsewhere accept "
        "(a feed process: its /metrics); prefer the variable or "
        "--token-file, since flags show in ps",
    ),
    "token_file": (values.plain, "file of bearer tokens for the bot socket, one per line (# comments allowed)"),
    "open_bots": (
        values.switch,
        "serve the bot socket to any address without a token (default: loopback only unless tokens are configured)",
    ),
    "max_connections": (
        values.at_least_zero,
        "open connections in total (HTTP and WebSocket); more are refused with "
        "HTTP 503 (0: no limit; never more than the open-files limit allows)",
    ),
    "max_connections_per_client": (
        values.at_least_zero,
        "open connections per client address; more are refused with HTTP 429 (0: no limit)",
    ),
    "header_timeout": (
        values.seconds,
        "seconds a new connection has to send a complete request head before it is closed (slow or silent clients)",
    ),
    "keepalive_timeout": (
        values.seconds,
        "seconds an HTTP connection may stay idle between requests (keep it above a proxy's upstream keep-alive)",
    ),
    "bot_compression": (values.switch, "offer permessage-deflate on the bot socket (costs CPU per client)"),
    "ui_compression": (
        values.switch,
        "offer permessage-deflate on the dashboard socket (see docs/deployment.md: BREACH)",
    ),
    "shutdown_timeout": (values.seconds, "seconds a SIGTERM/SIGINT shutdown may take before sockets are dropped"),
    "log_format": (values.log_format, "text (key=value lines) or json (one object per line)"),
    "broker": (values.broker_url, "memory:// (one process) or redis://host:port/db (a feed process and web processes)"),
    "data_dir": (
        values.directory,
        "directory of the SQLite file that keeps alert rules, alert history and annotations (created on first "
        "start; a relative path is taken from the working directory)",
    ),
}
FLAGS = frozenset(name for name, (parse, _) in OPTIONS.items() if parse is values.switch)
"""Options that are switches: ``--strict`` alone means on."""
assert list(OPTIONS) == [f.name for f in fields(Settings)]


class CommandParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (not the usage of forty options) and status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} ({self.prog} --help lists the options)\n")


def env_name(option: str) -> str:
    return "BIXWEB_" + option.upper()


GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "listen": (
        "where the server listens and what its sockets send",
        (
            "host",
            "port",
            "heartbeat",
            "status_interval",
            "ui_rate",
            "watchlist",
            "bot_compression",
            "ui_compression",
            "strict",
            "shutdown_timeout",
        ),
    ),
    "feed": (
        "where the market comes from and how it reaches the web processes",
        (
            "feed",
            "symbols",
            "tick_rate",
            "seed",
            "book_depth",
            "history_points",
            "trade_history",
            "replay_depth",
            "stale_after",
            "broker",
        ),
    ),
    "limits": (
        "what one client or all of them may cost",
        (
            "max_message_bytes",
            "max_messages_per_s",
            "max_subscriptions",
            "outbox_messages",
            "outbox_bytes",
            "max_connections",
            "max_connections_per_client",
            "header_timeout",
            "keepalive_timeout",
        ),
    ),
    "access": (
        "who may connect",
        ("trusted_proxies", "allowed_origins", "tokens", "token_file", "open_bots"),
    ),
    "storage": ("where alert rules, alert history and annotations are kept", ("data_dir",)),
    "logging": ("what the log says and how", ("log_level", "log_format")),
}
"""The option groups of ``--help``: name → (title, options). Every option is in exactly one."""
assert sorted(n for _, names in GROUPS.values() for n in names) == sorted(OPTIONS)


def add_options(
    parser: argparse.ArgumentParser, names: Collection[str] | None = None, defaults: Settings | None = None
) -> None:
    """Add one flag per setting (those in ``names``, or all), in their groups, with the
    ``defaults`` their help shows; the parsed values stay unset so the environment can fill them."""
    defaults = defaults or Settings()
    for group_name, (title, members) in GROUPS.items():
        chosen = [name for name in members if names is None or name in names]
        if not chosen:
            continue
        group = parser.add_argument_group(group_name, title)
        for name in chosen:
            help_text = OPTIONS[name][1]
            flag = "--" + name.replace("_", "-")
            default = getattr(defaults, name)
            shown = ",".join(default) if isinstance(default, tuple) else default
            if name in FLAGS:
                group.add_argument(
                    flag, action="store_const", const="true", default=None, help=f"{help_text} [env {env_name(name)}]"
                )
                continue
            default_text = f" (default: {shown})" if shown != "" else ""
            group.add_argument(
                flag, metavar=name.upper(), default=None, help=f"{help_text}{default_text} [env {env_name(name)}]"
            )


def settings_from(
    args: argparse.Namespace | Mapping[str, Any], environ: Mapping[str, str], names: Collection[str] | None = None
) -> Settings:
    """Settings from parsed flags (strings or None) over ``BIXWEB_*`` variables; only the options
    in ``names`` (the ones a command uses) are read, the rest keep their defaults."""
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    values: dict[str, Any] = {}
    for name, (parse, _) in OPTIONS.items():
        if names is not None and name not in names:
            continue
        raw = given.get(name)
        source = "--" + name.replace("_", "-")
        if raw is None:
            raw = environ.get(env_name(name))
            source = env_name(name)
        if raw is None:
            continue
        try:
            values[name] = parse(str(raw))
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return Settings(**values)
