"""Settings, read once at start-up from command-line flags and ``BIXWEB_*`` variables.

A flag wins over its variable, which wins over the default. Every option
is listed by ``python -m bixweb --help`` with its variable's name.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from bixweb.errors import ConfigError
from bixweb.feeds.simulated import DEFAULT_SYMBOLS

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


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
    data_dir: str = "data"
    """Where alert rules, alert history and annotations are kept (created on first start)."""


def _symbols(text: str) -> tuple[str, ...]:
    symbols = tuple(dict.fromkeys(s.strip().upper() for s in text.split(",") if s.strip()))
    if not symbols:
        raise ValueError("no symbols given")
    return symbols


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise ValueError(f"{text} is not above 0")
        return value

    parse.__name__ = kind.__name__
    return parse


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"{text} is not a port (0-65535; 0 picks a free one)")
    return value


def _level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise ValueError(f"{text} is not one of {', '.join(LOG_LEVELS)}")
    return text.lower()


def _at_least_zero(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"{text} is below 0")
    return value


def _words(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))


def _networks(text: str) -> tuple[str, ...]:
    """Comma-separated addresses or CIDR networks, checked here, kept as text."""
    networks = _words(text)
    for network in networks:
        ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
    return networks


def _origins(text: str) -> tuple[str, ...]:
    origins = tuple(o.rstrip("/").lower() for o in _words(text))
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ValueError(f"{origin} is not an origin like https://example.com or http://host:8080")
    return origins


def _log_format(text: str) -> str:
    if text.lower() not in LOG_FORMATS:
        raise ValueError(f"{text} is not one of {', '.join(LOG_FORMATS)}")
    return text.lower()


def _broker(text: str) -> str:
    if urlsplit(text).scheme not in ("memory", "redis", "rediss", "unix"):
        raise ValueError(f"{text} is not memory:// or redis://host:port/db")
    return text


def _flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text} is not a yes/no value")


# name -> (parser, help). The order is the order of --help.
OPTIONS: dict[str, tuple[Callable[[str], Any], str]] = {
    "host": (str, "address to listen on"),
    "port": (_port, "port to listen on; 0 picks a free one (the log says which)"),
    "feed": (str, "market-data source: simulated://, binance://, replay://FILE?speed=N (docs/feeds.md)"),
    "symbols": (_symbols, "comma-separated symbols to carry"),
    "tick_rate": (_positive(float), "simulated market ticks per second"),
    "seed": (int, "seed of the simulated market (same seed, same market)"),
    "log_level": (_level, "debug, info, warning or error"),
    "book_depth": (_positive(int), "order-book levels per side"),
    "history_points": (_positive(int), "candles per interval kept for snapshots and charts"),
    "trade_history": (_positive(int), "recent trades kept per symbol for snapshots"),
    "replay_depth": (_positive(int), "trade messages kept per symbol for clients that resume"),
    "heartbeat": (_positive(float), "seconds between WebSocket pings; a peer that does not answer is closed"),
    "status_interval": (_positive(float), "seconds between status messages"),
    "stale_after": (_positive(float), "seconds without feed events before the feed counts as stale"),
    "max_message_bytes": (_positive(int), "largest client frame; larger closes the socket with 1009"),
    "max_messages_per_s": (_positive(float), "client messages per second allowed on average (burst: twice that)"),
    "max_subscriptions": (_positive(int), "streams (channel x symbol) per connection"),
    "outbox_messages": (
        _positive(int),
        "trades and replies queued for a client before it is closed as a slow consumer (4008)",
    ),
    "outbox_bytes": (_positive(int), "bytes queued for a client before it is closed as a slow consumer"),
    "ui_rate": (_positive(float), "dashboard updates per second per fragment (latest wins)"),
    "watchlist": (_symbols, "comma-separated symbols a new dashboard page watches (default: the first six symbols)"),
    "strict": (_flag, "validate every outbound message against its schema (slow; for debugging)"),
    "trusted_proxies": (
        _networks,
        "comma-separated proxy addresses or networks whose X-Forwarded-For and X-Forwarded-Proto "
        "are believed (client address for limits and logs; https for the page's wss:// socket)",
    ),
    "allowed_origins": (
        _origins,
        "comma-separated origins (https://example.com) whose pages may open the dashboard socket "
        "(default: the host the page was served from)",
    ),
    "tokens": (
        _words,
        "comma-separated bearer tokens the bot socket accepts; prefer the variable or "
        "--token-file, since flags show in ps",
    ),
    "token_file": (str, "file of bearer tokens for the bot socket, one per line (# comments allowed)"),
    "open_bots": (
        _flag,
        "serve the bot socket to any address without a token (default: loopback only unless tokens are configured)",
    ),
    "max_connections": (
        _at_least_zero,
        "open connections in total (HTTP and WebSocket); more are refused with "
        "HTTP 503 (0: no limit; never more than the open-files limit allows)",
    ),
    "max_connections_per_client": (
        _at_least_zero,
        "open connections per client address; more are refused with HTTP 429 (0: no limit)",
    ),
    "header_timeout": (
        _positive(float),
        "seconds a new connection has to send a complete request head before it is closed (slow or silent clients)",
    ),
    "keepalive_timeout": (
        _positive(float),
        "seconds an HTTP connection may stay idle between requests (keep it above a proxy's upstream keep-alive)",
    ),
    "bot_compression": (_flag, "offer permessage-deflate on the bot socket (costs CPU per client)"),
    "ui_compression": (_flag, "offer permessage-deflate on the dashboard socket (see docs/deployment.md: BREACH)"),
    "shutdown_timeout": (_positive(float), "seconds a SIGTERM/SIGINT shutdown may take before sockets are dropped"),
    "log_format": (_log_format, "text (key=value lines) or json (one object per line)"),
    "broker": (_broker, "memory:// (one process) or redis://host:port/db (a feed process and web processes)"),
    "data_dir": (
        str,
        "directory of the SQLite file that keeps alert rules, alert history and annotations (created on first start)",
    ),
}
FLAGS = frozenset(name for name, (parse, _) in OPTIONS.items() if parse is _flag)
"""Options that are switches: ``--strict`` alone means on."""
assert list(OPTIONS) == [f.name for f in fields(Settings)]


def env_name(option: str) -> str:
    return "BIXWEB_" + option.upper()


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; defaults stay unset so the environment can fill them."""
    defaults = Settings()
    for name, (_, help_text) in OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        shown = ",".join(default) if isinstance(default, tuple) else default
        if name in FLAGS:
            parser.add_argument(
                flag, action="store_const", const="true", default=None, help=f"{help_text} [env {env_name(name)}]"
            )
            continue
        default_text = f" (default: {shown})" if shown != "" else ""
        parser.add_argument(
            flag, metavar=name.upper(), default=None, help=f"{help_text}{default_text} [env {env_name(name)}]"
        )


def settings_from(args: argparse.Namespace | Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    """Settings from parsed flags (strings or None) over ``BIXWEB_*`` variables."""
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    values: dict[str, Any] = {}
    for name, (parse, _) in OPTIONS.items():
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
