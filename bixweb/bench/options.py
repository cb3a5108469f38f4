"""What one bench run is asked to do, and how a sweep varies it. Values only, no I/O."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from bixweb.errors import BixwebError
from bixweb.feeds.simulated import DEFAULT_SYMBOLS


class BenchError(BixwebError):
    """The bench cannot run: a bad option, a server that did not start, no connection opened."""


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """One run. Field names match the ``bench`` flags."""

    clients: int = 1000
    ui_clients: int = 0
    symbols: int = 20
    channels: tuple[str, ...] = ("ticker",)
    rate: float = 10.0
    duration: float = 10.0
    warmup: float = 3.0
    workers: int = 0
    """0: one per core available to the load."""
    url: str | None = None
    server_pid: int | None = None
    stalled: int = 0
    connect_concurrency: int = 100
    connect_timeout: float = 60.0
    sources: tuple[str, ...] = ()
    """Source addresses to spread connections over; empty: decide from the count."""
    server_args: tuple[str, ...] = ()
    server_log: str | None = None
    """Where the started server's log goes; None: a temporary file."""
    pin: bool = True

    @property
    def connections(self) -> int:
        return self.clients + self.stalled + self.ui_clients

    def symbol_list(self) -> tuple[str, ...]:
        return DEFAULT_SYMBOLS[: self.symbols]


QUICK: Final = {"clients": 20, "duration": 2.0, "warmup": 0.5, "workers": 1}
"""``--quick``: a tiny run that proves the bench works (used by the tests)."""

COMPRESSION: Final = BenchOptions(clients=100, channels=("ticker", "trades", "book"))
"""The defaults of ``--compression``: ``clients`` deflate and as many plain bots for the cost, three cases."""

SWEEPABLE: Final = {"clients": int, "ui_clients": int, "stalled": int, "symbols": int, "rate": float}


@dataclass(frozen=True, slots=True)
class Sweep:
    """One option and the values it takes in turn."""

    name: str
    values: tuple[float, ...]

    def apply(self, options: BenchOptions, value: float) -> BenchOptions:
        kind = SWEEPABLE[self.name]
        return dataclasses.replace(options, **{self.name: kind(value)})


def parse_sweep(text: str) -> Sweep:
    """``clients=100,500,1000`` or ``rate=10,20,50`` (``ui-clients`` may be spelled with a dash)."""
    name, sep, values = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in SWEEPABLE:
        raise ValueError(f"{text!r}: expected NAME=V1,V2,... with NAME one of {', '.join(SWEEPABLE)}")
    kind = SWEEPABLE[name]
    try:
        parsed = tuple(float(kind(v.strip())) for v in values.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{text!r}: the values of {name} must be {kind.__name__}s") from None
    if not parsed:
        raise ValueError(f"{text!r}: no values")
    return Sweep(name, parsed)


def parse_target(url: str) -> tuple[str, int, str]:
    """(host, port, path with query) of ``ws://host:port/path?query``."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        raise ValueError(f"{url!r}: expected ws://HOST:PORT/PATH (wss is not supported)")
    path = (parts.path or "/ws") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, parts.port or 80, path


def bot_path(options: BenchOptions, base: str = "/ws") -> str:
    """The bots' socket path: ``base`` with the symbols and channels as its query (unless it has one)."""
    if "?" in base:
        return base
    if options.channels == ("none",):
        return f"{base}?channels=none"
    return f"{base}?symbols={','.join(options.symbol_list())}&channels={','.join(options.channels)}"


def check(options: BenchOptions) -> None:
    """Refuse options that cannot make a run."""
    if options.clients < 0 or options.ui_clients < 0 or options.stalled < 0:
        raise BenchError("--clients, --ui-clients and --stalled cannot be negative")
    if options.connections == 0:
        raise BenchError("nothing to connect: --clients, --ui-clients and --stalled are all 0")
    if not 1 <= options.symbols <= len(DEFAULT_SYMBOLS):
        raise BenchError(f"--symbols: 1 to {len(DEFAULT_SYMBOLS)} (the first K of the default symbols)")
    if options.rate <= 0 or options.duration <= 0 or options.warmup < 0:
        raise BenchError("--rate and --duration must be above 0, --warmup at least 0")
    if options.connect_concurrency < 1 or options.workers < 0:
        raise BenchError("--connect-concurrency must be at least 1, --workers at least 0")
    if options.url is not None:
        try:
            parse_target(options.url)
        except ValueError as exc:
            raise BenchError(f"--url: {exc}") from None
