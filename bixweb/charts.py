"""Candlestick charts as drawing models: candles in, SVG-ready numbers out.

The functions here do no I/O and know nothing of Jinja: :func:`build_chart`
turns a candle series into a frozen :class:`Chart` whose coordinates are
already scaled and rounded to 2 decimals, so a template only has to place
them. SVG coordinates grow downward: the plot area spans ``0..plot_width``
horizontally and ``0..plot_height`` vertically, and the ``pad_right`` and
``pad_bottom`` strips beyond it are left for the price and time labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from bixweb.model import Candle

Average = Literal["sma", "ema"]

BODY_FRACTION = 0.7  # of a candle's slot; the rest is the gap between bodies
Y_MARGIN = 0.05  # of the price range, above and below
TIME_LABELS = 6
NICE_STEPS = (1.0, 2.0, 2.5, 5.0, 10.0)
MAX_DECIMALS = 12


@dataclass(frozen=True, slots=True)
class CandleMark:
    """One candle: a wick line at ``x`` and a body rectangle centred on it."""

    x: float
    body_x: float
    body_y: float
    body_height: float
    wick_top: float
    wick_bottom: float
    width: float
    up: bool
    start: int
    label: str


@dataclass(frozen=True, slots=True)
class AxisLabel:
    """A label at one position along an axis: a y for prices, an x for times."""

    position: float
    text: str

    @property
    def x(self) -> float:
        return self.position

    @property
    def y(self) -> float:
        return self.position


@dataclass(frozen=True, slots=True)
class LastPrice:
    """The marker for the latest price on the right edge of the plot."""

    y: float
    text: str
    up: bool


@dataclass(frozen=True, slots=True)
class PriceLine:
    """A labelled horizontal line across the plot at one price (a chart annotation)."""

    y: float
    price_text: str
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    """Everything a template needs to draw one candlestick chart."""

    width: int
    height: int
    plot_width: int
    plot_height: int
    candles: tuple[CandleMark, ...]
    price_labels: tuple[AxisLabel, ...]
    time_labels: tuple[AxisLabel, ...]
    average_points: str
    average_label: str
    last_price: LastPrice | None
    empty: bool
    lines: tuple[PriceLine, ...] = ()
    """The annotation lines inside the plotted price range, in the order given."""


def sma(values: Sequence[float], period: int) -> list[float | None]:
    """The simple moving average of ``values``; ``None`` until ``period`` values are in."""
    _check_period(period)
    return [math.fsum(values[i + 1 - period : i + 1]) / period if i + 1 >= period else None for i in range(len(values))]


def ema(values: Sequence[float], period: int) -> list[float | None]:
    """The exponential moving average of ``values`` with alpha ``2 / (period + 1)``.

    It is ``None`` until ``period`` values are in, and seeded with the simple
    average of the first ``period`` values.
    """
    _check_period(period)
    alpha = 2.0 / (period + 1)
    out: list[float | None] = [None] * min(len(values), period - 1)
    if len(values) < period:
        return out
    current = math.fsum(values[:period]) / period
    out.append(current)
    for value in values[period:]:
        current = alpha * value + (1.0 - alpha) * current
        out.append(current)
    return out


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round axis values between ``low`` and ``high`` inclusive, ascending.

    The step is the smallest of 1, 2, 2.5 or 5 times a power of ten that is at
    least ``(high - low) / count``, so there are at most ``count + 1`` ticks.
    A flat range gives the one value; non-finite bounds give none.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    low, high = min(low, high), max(low, high)
    if high == low:
        return [float(low)]
    step = _nice_step((high - low) / count)
    decimals = _decimals(step)
    first = math.ceil(low / step - 1e-9)
    last = math.floor(high / step + 1e-9)
    ticks = (round(k * step, decimals) for k in range(first, last + 1))
    return [tick for tick in ticks if low <= tick <= high]


def format_price(value: float, step: float) -> str:
    """``value`` with as many decimals as a tick ``step`` needs, never in scientific notation.

    ``format_price(95000, 50) == "95000"``, ``format_price(0.18234, 0.0005) ==
    "0.1823"``. Without a usable step, the value's own decimals are shown.
    """
    if not math.isfinite(value):
        return str(value)
    decimals = _decimals(step) if math.isfinite(step) and step > 0 else price_decimals([value])
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text


def build_chart(
    candles: Sequence[Candle],
    *,
    width: int = 800,
    height: int = 320,
    max_points: int = 100,
    average: Average = "sma",
    period: int = 20,
    last_price: float | None = None,
    pad_right: int = 64,
    pad_bottom: int = 24,
    lines: Sequence[tuple[float, str]] = (),
) -> Chart:
    """The drawing model of the newest ``max_points`` of ``candles`` (oldest first).

    The moving average is computed over the whole series before trimming, so
    its line reaches the left edge when there is enough history. The y scale
    covers the shown lows and highs, the average and ``last_price`` (by
    default the last close) with a 5 % margin. No candles give an empty chart.

    ``lines`` are ``(price, label)`` pairs drawn as horizontal lines; they do
    not stretch the scale (a far-away line would flatten the candles), so a
    line outside the plotted range is left out.
    """
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1, not {max_points}")
    plot_width, plot_height = max(1, width - pad_right), max(1, height - pad_bottom)
    averaged = (sma if average == "sma" else ema)([c.close for c in candles], period)
    shown, shown_average = list(candles[-max_points:]), averaged[-max_points:]
    label = f"{average.upper()} {period}"
    if not shown:
        return Chart(width, height, plot_width, plot_height, (), (), (), "", label, None, True)

    price = shown[-1].close if last_price is None else last_price
    extremes = [c.low for c in shown] + [c.high for c in shown] + [a for a in shown_average if a is not None]
    scale = _YScale.covering([*extremes, price], plot_height)
    slot = plot_width / len(shown)
    xs = [(i + 0.5) * slot for i in range(len(shown))]
    decimals = price_decimals([price, *(v for c in shown for v in (c.open, c.high, c.low, c.close))])
    marks = tuple(_candle_mark(c, x, slot, scale, decimals) for c, x in zip(shown, xs, strict=True))
    points = " ".join(f"{_r(x)},{scale.y(a)}" for x, a in zip(xs, shown_average, strict=True) if a is not None)
    marker = LastPrice(scale.y(price), f"{price:.{decimals}f}", shown[-1].close >= shown[0].open)
    return Chart(
        width, height, plot_width, plot_height, marks, _price_labels(scale),
        _time_labels(shown, xs), points, label, marker, False, _price_lines(lines, scale),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _YScale:
    """Prices from ``low`` (bottom) to ``high`` (top) onto ``0..height``, downward."""

    low: float
    high: float
    height: int

    @classmethod
    def covering(cls, values: Sequence[float], height: int) -> _YScale:
        low, high = min(values), max(values)
        span = high - low
        if span <= 0:  # a flat series: give it a band around the one price
            span = abs(high) * 0.01 or 1.0
            low, high = low - span / 2, high + span / 2
        return cls(low - span * Y_MARGIN, high + span * Y_MARGIN, height)

    def y(self, price: float) -> float:
        return _r(self.height * (self.high - price) / (self.high - self.low))


def _candle_mark(candle: Candle, x: float, slot: float, scale: _YScale, decimals: int) -> CandleMark:
    top, bottom = sorted((scale.y(candle.open), scale.y(candle.close)))
    if bottom - top < 1:  # keep a doji visible: a 1-unit body around its price
        top = _r((top + bottom) / 2 - 0.5)
        bottom = _r(top + 1)
    body_width = max(1.0, slot * BODY_FRACTION)
    prices = (candle.open, candle.high, candle.low, candle.close)
    ohlc = " ".join(f"{name} {value:.{decimals}f}" for name, value in zip("OHLC", prices, strict=True))
    return CandleMark(
        x=_r(x),
        body_x=_r(x - body_width / 2),
        body_y=top,
        body_height=_r(bottom - top),
        wick_top=min(scale.y(candle.high), top),
        wick_bottom=max(scale.y(candle.low), bottom),
        width=_r(body_width),
        up=candle.close >= candle.open,
        start=candle.start,
        label=f"{_time_text(candle.start, seconds=False)} {ohlc}",
    )


def _price_labels(scale: _YScale) -> tuple[AxisLabel, ...]:
    """Tick labels from the top of the plot down (highest price first)."""
    ticks = nice_ticks(scale.low, scale.high)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 0.0
    return tuple(AxisLabel(scale.y(tick), format_price(tick, step)) for tick in reversed(ticks))


def _price_lines(lines: Sequence[tuple[float, str]], scale: _YScale) -> tuple[PriceLine, ...]:
    """The lines whose price is within the plotted range (margins included)."""
    return tuple(
        PriceLine(scale.y(price), f"{price:.{price_decimals([price])}f}", label)
        for price, label in lines
        if math.isfinite(price) and scale.low <= price <= scale.high
    )


def _time_labels(shown: Sequence[Candle], xs: Sequence[float]) -> tuple[AxisLabel, ...]:
    """At most about :data:`TIME_LABELS` labels, left to right.

    The labelled candles are picked by their place in time, not in the list,
    so a label stays on its candle while the chart scrolls.
    """
    gaps = [b.start - a.start for a, b in zip(shown, shown[1:], strict=False) if b.start > a.start]
    spacing = min(gaps, default=60_000)
    stride = math.ceil(len(shown) / TIME_LABELS)
    return tuple(
        AxisLabel(_r(x), _time_text(c.start, seconds=spacing < 60_000))
        for c, x in zip(shown, xs, strict=True)
        if (c.start // spacing) % stride == 0
    )


def _time_text(start_ms: int, *, seconds: bool) -> str:
    moment = datetime.fromtimestamp(start_ms / 1000, tz=UTC)
    return moment.strftime("%H:%M:%S" if seconds else "%H:%M")


def _nice_step(raw: float) -> float:
    exponent = math.floor(math.log10(raw))
    fraction = raw / 10.0**exponent
    multiple = next(m for m in NICE_STEPS if fraction <= m * (1 + 1e-9))
    return float(f"{multiple}e{exponent}")  # exact decimal, no 10**-7 float noise


def _decimals(step: float) -> int:
    """The fewest decimals that write ``step`` (and its multiples) exactly."""
    return next((d for d in range(MAX_DECIMALS + 1) if abs(round(step, d) - step) <= step * 1e-9), MAX_DECIMALS)


def price_decimals(prices: Sequence[float]) -> int:
    """The decimals the most precise of ``prices`` needs, to about 8 significant digits."""
    needed = 0
    for price in prices:
        if price == 0 or not math.isfinite(price):
            continue
        cap = min(MAX_DECIMALS, max(0, 7 - math.floor(math.log10(abs(price)))))
        tolerance = abs(price) * 1e-9
        needed = max(needed, next((d for d in range(cap + 1) if abs(round(price, d) - price) <= tolerance), cap))
    return needed


def _check_period(period: int) -> None:
    if period < 1:
        raise ValueError(f"period must be at least 1, not {period}")


def _r(value: float) -> float:
    return round(value, 2)
