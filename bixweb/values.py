"""Parsers of option values: text in, the value out, or a ``ValueError`` whose message names the
text and says what would do (``'abc' is not a port number (0-65535; 0 picks a free one)``).

:mod:`bixweb.config` puts the option's flag or variable in front of the message.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


def symbols(text: str) -> tuple[str, ...]:
    """Comma-separated symbols, upper-cased, each once, at least one."""
    symbols = tuple(dict.fromkeys(s.strip().upper() for s in text.split(",") if s.strip()))
    if not symbols:
        raise ValueError(f"{text!r} names no symbol (expects comma-separated symbols, like BTCUSDT,ETHUSDT)")
    return symbols


def whole(text: str) -> int:
    """A whole number."""
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


def number(text: str) -> float:
    """A finite number."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value):  # "nan" would pass every comparison below
        raise ValueError(f"{text!r} is not a finite number")
    return value


def positive(kind: Callable[[str], Any], expected: str) -> Callable[[str], Any]:
    """A parser of values of ``kind`` above 0, whose message says it expects ``expected``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value <= 0:
            raise ValueError(f"{text!r} is not {expected} above 0")
        return value

    return parse


positive_number = positive(number, "a number")
seconds = positive(number, "a number of seconds")
count = positive(whole, "a whole number")


def port_number(text: str) -> int:
    """A TCP port, 0 to 65535 (0: the system picks a free one)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise ValueError(f"{text!r} is not a port number (0-65535; 0 picks a free one)")
    return value


def log_level(text: str) -> str:
    """One of :data:`LOG_LEVELS`, in any case."""
    if text.lower() not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not a log level (one of {', '.join(LOG_LEVELS)})")
    return text.lower()


def at_least_zero(text: str) -> int:
    """A whole number of 0 or more (0 means no limit where a limit takes it)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{text!r} is not a whole number of 0 or more (0: no limit)")
    return value


def words(text: str) -> tuple[str, ...]:
    """Comma-separated words, each once (tokens)."""
    return tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))


def networks(text: str) -> tuple[str, ...]:
    """Comma-separated addresses or CIDR networks, checked here, kept as text."""
    networks = words(text)
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(
                f"{network!r} is not an IP address or network (expects comma-separated ones, like 127.0.0.1,10.0.0.0/8)"
            ) from None
    return networks


def url_parts(text: str) -> tuple[str, str, str]:
    """Scheme, host part and path of ``text``; empty ones for text that is no URL (``http://[``)."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return "", "", ""
    return parts.scheme, parts.netloc, parts.path


def origins(text: str) -> tuple[str, ...]:
    """Comma-separated web origins (``https://example.com``), lower-cased, without a trailing slash."""
    origins = tuple(o.rstrip("/").lower() for o in words(text))
    for origin in origins:
        scheme, netloc, path = url_parts(origin)
        if scheme not in ("http", "https") or not netloc or path:
            raise ValueError(f"{origin!r} is not an origin (expects ones like https://example.com or http://host:8080)")
    return origins


def log_format(text: str) -> str:
    """One of :data:`LOG_FORMATS`, in any case."""
    if text.lower() not in LOG_FORMATS:
        raise ValueError(f"{text!r} is not a log format (one of {', '.join(LOG_FORMATS)})")
    return text.lower()


def feed_url(text: str) -> str:
    """A URL with a scheme; :func:`bixweb.feeds.open_feed` checks the rest."""
    if not url_parts(text)[0]:
        raise ValueError(f"{text!r} is not a feed URL (simulated://, binance:// or replay://FILE)")
    return text


def broker_url(text: str) -> str:
    """``memory://`` or a Redis URL."""
    scheme = url_parts(text)[0]
    if scheme not in ("memory", "redis", "rediss", "unix"):
        shown = f"{scheme}://…" if "@" in text or "?" in text else text  # never echo a password
        raise ValueError(f"{shown!r} is not a broker URL (memory:// or redis://host:port/db)")
    return text


def switch(text: str) -> bool:
    """A yes/no value: 1, true, yes, on or 0, false, no, off (or empty), in any case."""
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not a yes/no value (1, true, yes, on or 0, false, no, off)")


def host(text: str) -> str:
    """An address or host name to listen on; never empty (an unset ``${HOST}`` would mean every interface)."""
    if not text.strip():
        raise ValueError("'' is not an address (expects one like 127.0.0.1, 0.0.0.0 for every interface, or ::)")
    return text.strip()


def plain(text: str) -> str:
    """Any text (an address, a file name)."""
    return text


def directory(text: str) -> str:
    """A path, not empty; ``bixweb`` makes it absolute and checks it at start-up."""
    if not text.strip():
        raise ValueError("'' is not a directory (expects a path; a relative one is taken from the working directory)")
    return text
