"""Settings, read once at start-up from command-line flags and ``BIXWEB_*`` variables.

A flag wins over its variable, which wins over the default. Every option
is listed by ``python -m bixweb --help`` with its variable's name.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from bixweb.errors import ConfigError
from bixweb.feeds.simulated import DEFAULT_SYMBOLS

LOG_LEVELS = ("debug", "info", "warning", "error")


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
    "feed": (str, "market-data source: simulated://"),
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
        _positive(int), "trades and replies queued for a client before it is closed as a slow consumer (4008)"
    ),
    "outbox_bytes": (_positive(int), "bytes queued for a client before it is closed as a slow consumer"),
    "ui_rate": (_positive(float), "dashboard updates per second per fragment (latest wins)"),
    "watchlist": (_symbols, "comma-separated symbols a new dashboard page watches (default: the first six symbols)"),
    "strict": (_flag, "validate every outbound message against its schema (slow; for debugging)"),
}
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
        if name == "strict":
            parser.add_argument(flag, action="store_const", const="true", default=None,
                                help=f"{help_text} [env {env_name(name)}]")
            continue
        default_text = f" (default: {shown})" if shown != "" else ""
        parser.add_argument(flag, metavar=name.upper(), default=None,
                            help=f"{help_text}{default_text} [env {env_name(name)}]")


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




def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


