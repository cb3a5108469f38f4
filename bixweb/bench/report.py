"""What people see: the progress line while running, the tables after.

Progress goes to stderr: a redrawn bar when it is a terminal, a plain
line a second otherwise (so logs and CI stay readable). Tables go to stdout.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

BAR = 24
PLAIN_EVERY_S = 1.0
DRAW_EVERY_S = 0.2


def si(value: float | None, unit: str = "") -> str:
    """1234567 → "1.23M"; None or NaN → "-"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    for suffix, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{suffix}{unit}"
    return f"{value:.1f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def bar(done: float, width: int = BAR) -> str:
    filled = max(0, min(width, round(done * width)))
    return "[" + "#" * filled + "." * (width - filled) + "]"


class Display:
    """Progress of one run on ``stream`` (stderr)."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self.counts: dict[int, tuple[int, int]] = {}
        self.rate = 0.0
        self._last: tuple[float, int] | None = None
        self._drawn = 0.0
        self.window = (0.0, 0.0, 0.0)
        self.opened = 0

    def phase(self, text: str) -> None:
        if not self.quiet:
            self._clear()
            print(f"bench: {text}", file=self.stream, flush=True)

    def start_window(self, open_at: float, close_at: float, opened: int) -> None:
        self.window = (time.monotonic(), open_at, close_at)
        self.opened = opened

    def progress(self, message: tuple[Any, ...]) -> None:
        """A worker's ``("progress", index, msgs, frames, ui_frames, open)``."""
        _, index, msgs, _, _, opened = message
        self.counts[index] = (msgs, opened)

    def tick(self, now: float) -> None:
        if self.quiet or now - self._drawn < (DRAW_EVERY_S if self.tty else PLAIN_EVERY_S):
            return
        self._drawn = now
        msgs = sum(m for m, _ in self.counts.values())
        if self._last is not None and now > self._last[0]:
            self.rate = (msgs - self._last[1]) / (now - self._last[0])
        self._last = (now, msgs)
        line = self.line(now)
        if self.tty:
            print("\r" + line + "\x1b[K", end="", file=self.stream, flush=True)
        else:
            print("bench: " + line, file=self.stream, flush=True)

    def line(self, now: float) -> str:
        started, open_at, close_at = self.window
        opened = sum(o for _, o in self.counts.values())
        if now < open_at:
            phase, done, left = "warm-up", (now - started) / max(open_at - started, 1e-9), open_at - now
        else:
            phase, done, left = "measure", (now - open_at) / max(close_at - open_at, 1e-9), close_at - now
        return f"{phase:7} {bar(done)} {max(left, 0.0):5.1f} s left  {opened} bots open  {si(self.rate)} msg/s"

    def finish(self) -> None:
        self._clear()

    def _clear(self) -> None:
        if self.tty and self._drawn:
            print("\r\x1b[K", end="", file=self.stream, flush=True)


def _latency(section: dict[str, Any] | None) -> str:
    if not section or not section.get("samples"):
        return "-"
    return f"p50 {section['p50']} / p90 {section['p90']} / p99 {section['p99']} / max {section['max']} ms"


def format_result(result: dict[str, Any]) -> str:
    """The table of one run."""
    t, c, s, ld, f = (result[k] for k in ("throughput", "connect", "server", "load", "fairness"))
    rss = s["rss_kb"]
    offered = f"  (offered {si(t['offered_per_s'])})" if t["offered_per_s"] else ""
    rows = [
        ("messages/s", si(t["messages_per_s"]) + offered),
        ("frames/s", f"{si(t['frames_per_s'])}  ({t['messages_per_frame']} messages/frame)"),
        ("bytes/s", si(t["bytes_per_s"], "B")),
        ("latency", _latency(result["latency_ms"])),
        ("per client", f"min {f['min']} / max {f['max']} messages over {f['clients']} clients"),
        (
            "connections",
            f"{c['opened']} open, {c['failed']} failed, {si(c['per_s'])}/s "
            f"(handshake p99 {c['handshake_ms']['p99']} ms)",
        ),
        ("server CPU", f"{s['cpu_pct']} % (while connecting {c['server_cpu_pct']} %)"),
        (
            "server RSS",
            f"start {rss.get('start')} / connected {rss.get('connected')} / peak {rss.get('peak')} KiB, "
            f"{s['rss_per_connection_kb']} KiB per connection",
        ),
        (
            "load CPU",
            f"{ld['cpu_pct']} % ({ld['cpu_pct_of_cores']} % of cores {ld['cores']}), workers {ld['worker_cpu_pct']}",
        ),
        ("cores busy", " ".join(f"{k}:{v}%" for k, v in result["cores_busy_pct"].items())),
    ]
    if "dashboard" in result:
        d = result["dashboard"]
        rows += [
            (
                "dashboard",
                f"{si(d['frames_per_s'])} frames/s, {si(d['bytes_per_s'], 'B')}/s, "
                f"{d['status_broadcasts']} status broadcasts",
            ),
            ("  latency", _latency(d["latency_ms"]) if d["latency_ms"] else d["latency_method"]),
            ("  fan-out spread", _latency(d["fanout_spread_ms"])),
        ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines += [f"note: {n}" for n in result["notes"]] + [f"WARNING: {w}" for w in result["warnings"]]
    return "\n".join(lines)


SWEEP_COLUMNS = ("msg/s", "frames/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "srv CPU %", "KiB/conn", "load CPU %")


def fixed(value: float | None) -> str:
    """One decimal, or "-" for a figure that could not be measured."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.1f}"


def sweep_row(result: dict[str, Any]) -> list[str]:
    t, lat, s, ld = result["throughput"], result["latency_ms"], result["server"], result["load"]
    return [
        si(t["messages_per_s"]),
        si(t["frames_per_s"]),
        *(fixed(lat[k]) for k in ("p50", "p90", "p99", "max")),
        fixed(s["cpu_pct"]),
        fixed(s["rss_per_connection_kb"]),
        fixed(ld["cpu_pct"]),
    ]


def format_sweep(name: str, values: Sequence[float], runs: Sequence[dict[str, Any]]) -> str:
    """One row per point of a sweep."""
    header = [name, *SWEEP_COLUMNS]
    rows = [[f"{v:g}", *sweep_row(r)] for v, r in zip(values, runs, strict=True)]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    for value, run in zip(values, runs, strict=True):
        lines += [f"WARNING ({name}={value:g}): {w}" for w in run["warnings"]]
    return "\n".join(lines)
