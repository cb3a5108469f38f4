"""Reading a feed URL's options (``binance://?url=…&rotate=…``, ``replay://FILE?speed=10``).

Pure functions: text in, values out, :class:`~bixweb.errors.ConfigError`
naming the option when a value will not do.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from urllib.parse import parse_qsl, urlsplit

from bixweb.errors import ConfigError


def url_options(url: str, allowed: Collection[str]) -> dict[str, str]:
    """The query options of a feed URL; an option not in ``allowed``, or given twice, is refused."""
    scheme = urlsplit(url).scheme
    options: dict[str, str] = {}
    for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise ConfigError(f"{scheme}:// has no option {name!r} (its options: {known})")
        if name in options:
            raise ConfigError(f"{scheme}://: option {name!r} given twice")
        options[name] = value
    return options


def seconds(name: str, text: str, *, zero: bool = False) -> float:
    """A duration option in seconds: above zero, or also zero when ``zero``."""
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"feed option {name}={text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ConfigError(f"feed option {name}={text!r} is not {'0 or more' if zero else 'above 0'} seconds")
    return value


def speed_option(text: str) -> float | None:
    """``speed=``: a factor above zero (``1`` is real time), or ``max`` (None: no waiting at all)."""
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"feed option speed={text!r} is neither a factor like 10 nor max") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"feed option speed={text!r} is not above 0 (use max for as fast as possible)")
    return value
