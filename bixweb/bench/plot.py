"""A sweep as an SVG: throughput and latency against the swept option.

Plain SVG text built by hand (no plotting library): two panels, linear
axes with round ticks, one polyline and dots per series.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

WIDTH, PANEL_HEIGHT = 720, 300
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 80, 130, 34, 46
COLORS = ("#1f6feb", "#d29922", "#cf222e", "#8250df", "#1a7f37")


@dataclass(frozen=True, slots=True)
class Series:
    """One line: a name for the legend and a y value (or None: no point) per x."""

    name: str
    values: Sequence[float | None]


@dataclass(frozen=True, slots=True)
class Box:
    left: float
    top: float
    width: float
    height: float


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2 or 5 times a power of ten) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value < high + step * 0.5:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def label(value: float) -> str:
    """A tick label: 1500000 → 1.5M, 0.25 → 0.25."""
    for suffix, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def panel(box: Box, xs: Sequence[float], series: Sequence[Series], *, title: str, x_label: str) -> list[str]:
    """The SVG elements of one chart inside ``box``."""
    ys = [v for s in series for v in s.values if v is not None and math.isfinite(v)]
    x_ticks = nice_ticks(min(xs), max(xs)) if xs else [0.0, 1.0]
    y_ticks = nice_ticks(0.0, max(ys) if ys else 1.0)
    x0, x1, y1 = x_ticks[0], x_ticks[-1], y_ticks[-1]

    def px(x: float) -> float:
        return box.left + (x - x0) / ((x1 - x0) or 1.0) * box.width

    def py(y: float) -> float:
        return box.top + box.height - y / (y1 or 1.0) * box.height

    out = [
        f'<text x="{box.left}" y="{box.top - 12}" class="title">{escape(title)}</text>',
        f'<rect x="{box.left}" y="{box.top}" width="{box.width}" height="{box.height}" class="frame"/>',
    ]
    for y in y_ticks:
        out.append(
            f'<line x1="{box.left}" x2="{box.left + box.width}" y1="{py(y):.1f}" y2="{py(y):.1f}" '
            f'class="grid"/><text x="{box.left - 6}" y="{py(y) + 4:.1f}" class="ytick">{label(y)}</text>'
        )
    for x in x_ticks:
        out.append(f'<text x="{px(x):.1f}" y="{box.top + box.height + 16}" class="xtick">{label(x)}</text>')
    out.append(
        f'<text x="{box.left + box.width / 2}" y="{box.top + box.height + 34}" class="xlabel">{escape(x_label)}</text>'
    )
    for i, line in enumerate(series):
        color = COLORS[i % len(COLORS)]
        points = [(px(x), py(y)) for x, y in zip(xs, line.values, strict=True) if y is not None and math.isfinite(y)]
        if points:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
            out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in points]
        legend_y = box.top + 14 + 18 * i
        out.append(
            f'<rect x="{box.left + box.width + 12}" y="{legend_y - 9}" width="12" height="3" fill="{color}"/>'
            f'<text x="{box.left + box.width + 30}" y="{legend_y}" class="legend">{escape(line.name)}</text>'
        )
    return out


STYLE = (
    ".title{font:bold 14px sans-serif}.frame{fill:none;stroke:#888}.grid{stroke:#ddd}"
    ".ytick{font:11px sans-serif;text-anchor:end}.xtick{font:11px sans-serif;text-anchor:middle}"
    ".xlabel{font:12px sans-serif;text-anchor:middle}.legend{font:12px sans-serif}"
)


def svg(panels: Sequence[tuple[str, Sequence[Series]]], xs: Sequence[float], x_label: str) -> str:
    """A whole SVG document: ``panels`` (title, series) stacked, sharing the x values."""
    height = PANEL_HEIGHT * len(panels)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}"><style>{STYLE}</style>'
        f'<rect width="{WIDTH}" height="{height}" fill="#fff"/>'
    ]
    for i, (title, series) in enumerate(panels):
        box = Box(
            MARGIN_LEFT,
            PANEL_HEIGHT * i + MARGIN_TOP,
            WIDTH - MARGIN_LEFT - MARGIN_RIGHT,
            PANEL_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM,
        )
        parts += panel(box, xs, series, title=title, x_label=x_label)
    parts.append("</svg>\n")
    return "\n".join(parts)


def sweep_svg(name: str, values: Sequence[float], runs: Sequence[dict[str, Any]]) -> str:
    """Throughput (messages/s) and latency (p50, p90, p99 ms) against the swept option."""
    throughput = [Series("messages/s", [r["throughput"]["messages_per_s"] for r in runs])]
    latency = [Series(p, [r["latency_ms"].get(p) for r in runs]) for p in ("p50", "p90", "p99")]
    return svg(
        [("Delivered messages per second", throughput), ("Latency, ms (server ts to receipt)", latency)],
        values,
        name.replace("_", "-"),
    )


def write_svg(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
