"""Chart drawing models from known candle series: averages, ticks, labels, marks."""

from __future__ import annotations

import re

import pytest

from bixweb.charts import build_chart, ema, format_price, nice_ticks, sma
from bixweb.model import Candle

T0 = 1_764_158_400_000  # a whole hour: 2025-11-26 12:00 UTC
EPS = 1e-9


def series(n: int = 30, spacing: int = 60_000) -> list[Candle]:
    """A wavy uptrend with both up and down candles; its highest high is the last but two."""
    candles = []
    for i in range(n):
        open_ = 100.0 + i
        close = open_ + (1.5 if i % 3 else -1.0)
        high = max(open_, close) + 0.5 + (5.0 if i == n - 3 else 0.0)
        low = min(open_, close) - 0.75
        candles.append(Candle(T0 + i * spacing, open_, high, low, close, 1.0, closed=True))
    return candles


def test_sma_on_a_known_series() -> None:
    assert sma([1.0, 2.0, 3.0, 4.0, 5.0], 3) == [None, None, 2.0, 3.0, 4.0]
    assert sma([7.0, 1.0], 1) == [7.0, 1.0]
    assert sma([1.0, 2.0], 3) == [None, None]
    assert sma([], 3) == []


def test_ema_is_seeded_with_the_sma_then_uses_alpha_two_over_period_plus_one() -> None:
    # alpha = 2/3; seed (2 + 4) / 2 = 3; then 2/3*6 + 1/3*3 = 5; 2/3*8 + 1/3*5 = 7; 2/3*4 + 1/3*7 = 5
    assert ema([2.0, 4.0, 6.0, 8.0, 4.0], 2) == pytest.approx([None, 3.0, 5.0, 7.0, 5.0])
    assert ema([1.0, 2.0], 3) == [None, None]
    assert ema([], 3) == []


def test_a_period_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        sma([1.0], 0)
    with pytest.raises(ValueError):
        ema([1.0], 0)


def test_nice_ticks_for_typical_price_ranges() -> None:
    assert nice_ticks(95_000, 96_000) == [95_000.0, 95_200.0, 95_400.0, 95_600.0, 95_800.0, 96_000.0]
    assert nice_ticks(0.18, 0.19) == [0.18, 0.182, 0.184, 0.186, 0.188, 0.19]
    assert nice_ticks(0.0000179, 0.0000183) == [0.0000179, 0.000018, 0.0000181, 0.0000182, 0.0000183]
    assert nice_ticks(100, 100) == [100.0]


def test_nice_ticks_stay_within_the_bounds_and_use_nice_steps() -> None:
    assert nice_ticks(95_013.7, 95_988.2) == [95_200.0, 95_400.0, 95_600.0, 95_800.0]
    assert nice_ticks(0, 12) == [0.0, 2.5, 5.0, 7.5, 10.0]
    assert nice_ticks(9.1, 3.7) == nice_ticks(3.7, 9.1) == [4.0, 6.0, 8.0]
    for low, high in [(95_013.7, 95_988.2), (0.18234, 0.18911), (1.0e-6, 3.3e-6), (-5.0, 7.0)]:
        ticks = nice_ticks(low, high)
        assert 2 <= len(ticks) <= 6
        assert all(low <= t <= high for t in ticks)
        assert ticks == sorted(ticks)
    assert nice_ticks(float("nan"), 1.0) == []


def test_format_price_shows_the_decimals_the_step_needs() -> None:
    assert format_price(95_000.0, 50) == "95000"
    assert format_price(95_123.4, 200) == "95123"
    assert format_price(0.18234, 0.0005) == "0.1823"
    assert format_price(2.5, 0.25) == "2.50"
    assert format_price(0.000018, 0.0000001) == "0.0000180"
    assert format_price(-0.0001, 1) == "0"


def test_format_price_never_uses_scientific_notation() -> None:
    assert format_price(0.000018, 0.0) == "0.000018"
    assert format_price(0.0000179, 2.5e-8) == "0.000017900"
    for value, step in [(1.8e-5, 1e-7), (1.8e-8, 1e-10), (1.0e-5, 0.0)]:
        assert "e" not in format_price(value, step).lower()


def test_build_chart_on_thirty_candles() -> None:
    candles = series()
    chart = build_chart(candles)
    assert not chart.empty
    assert (chart.width, chart.height, chart.plot_width, chart.plot_height) == (800, 320, 736, 296)
    assert len(chart.candles) == 30
    xs = [m.x for m in chart.candles]
    assert xs == sorted(xs) and len(set(xs)) == 30
    gaps = {round(b - a, 1) for a, b in zip(xs, xs[1:], strict=False)}
    assert len(gaps) == 1, "evenly spaced"
    slot = chart.plot_width / 30
    for mark, candle in zip(chart.candles, candles, strict=True):
        assert mark.start == candle.start
        assert mark.up == (candle.close >= candle.open)
        assert mark.wick_top <= mark.body_y <= mark.body_y + mark.body_height <= mark.wick_bottom + EPS
        assert 0 <= mark.wick_top and mark.wick_bottom <= chart.plot_height
        assert mark.body_height >= 1
        assert mark.width == pytest.approx(0.7 * slot, abs=0.01)
        assert mark.body_x == pytest.approx(mark.x - mark.width / 2, abs=0.01)
        assert mark.label.startswith("12:")
    assert {m.up for m in chart.candles} == {True, False}
    highest = max(range(30), key=lambda i: candles[i].high)
    assert min(range(30), key=lambda i: chart.candles[i].wick_top) == highest
    lowest = min(range(30), key=lambda i: candles[i].low)
    assert max(range(30), key=lambda i: chart.candles[i].wick_bottom) == lowest


def test_coordinates_are_rounded_to_two_decimals() -> None:
    chart = build_chart(series())
    for mark in chart.candles:
        for value in (mark.x, mark.body_x, mark.body_y, mark.body_height, mark.wick_top, mark.wick_bottom):
            assert value == round(value, 2)
    for pair in chart.average_points.split():
        for number in pair.split(","):
            assert re.fullmatch(r"-?\d+(\.\d{1,2})?", number)


def test_max_points_keeps_the_newest_candles() -> None:
    candles = series(50)
    chart = build_chart(candles, max_points=10)
    assert [m.start for m in chart.candles] == [c.start for c in candles[-10:]]
    assert chart.candles[0].x == pytest.approx(chart.plot_width / 20, abs=0.01)


def test_price_labels_are_sorted_nice_and_inside_the_plot() -> None:
    chart = build_chart(series())
    ys = [label.y for label in chart.price_labels]
    assert len(ys) >= 2
    assert ys == sorted(ys), "highest price (smallest y) first"
    assert all(0 <= y <= chart.plot_height for y in ys)
    prices = [float(label.text) for label in chart.price_labels]
    assert prices == sorted(prices, reverse=True)
    assert all(re.fullmatch(r"\d+(\.\d+)?", label.text) for label in chart.price_labels)


def test_time_labels_for_one_minute_candles_are_hh_mm() -> None:
    chart = build_chart(series())
    texts = [label.text for label in chart.time_labels]
    assert 2 <= len(texts) <= 6
    assert all(re.fullmatch(r"\d\d:\d\d", t) for t in texts)
    assert texts[0] == "12:00"
    xs = [label.x for label in chart.time_labels]
    assert xs == sorted(xs) and set(xs) <= {m.x for m in chart.candles}


def test_time_labels_for_one_second_candles_show_seconds() -> None:
    chart = build_chart(series(spacing=1_000))
    assert chart.time_labels
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d", label.text) for label in chart.time_labels)


def test_time_labels_stay_on_their_candles_while_the_chart_scrolls() -> None:
    candles = series(40)
    before = build_chart(candles[:30])
    after = build_chart(candles[1:31])
    assert {label.text for label in before.time_labels[1:]} <= {label.text for label in after.time_labels}


def test_average_line_has_a_point_per_candle_where_it_is_defined() -> None:
    for period in (1, 5, 20, 30):
        chart = build_chart(series(), period=period)
        assert len(chart.average_points.split()) == 30 - period + 1
    assert build_chart(series(), period=31).average_points == ""
    chart = build_chart(series(), average="ema", period=10)
    assert chart.average_label == "EMA 10"
    assert len(chart.average_points.split()) == 21
    assert build_chart(series()).average_label == "SMA 20"


def test_average_uses_history_before_the_shown_candles() -> None:
    chart = build_chart(series(60), max_points=30, period=20)
    assert len(chart.average_points.split()) == 30


def test_last_price_defaults_to_the_last_close_and_joins_the_scale() -> None:
    candles = series()
    chart = build_chart(candles)
    assert chart.last_price is not None
    assert chart.last_price.text == "130.50", "as precise as the most precise price shown"
    assert chart.last_price.up
    assert chart.last_price.y == pytest.approx(chart.candles[-1].body_y, abs=0.01)

    spike = build_chart(candles, last_price=200.0)
    assert spike.last_price is not None
    assert spike.last_price.text == "200.00"
    assert 0 < spike.last_price.y < min(m.wick_top for m in spike.candles)

    falling = [Candle(T0, 10.0, 10.5, 9.0, 9.5, 1.0), Candle(T0 + 60_000, 9.5, 9.6, 8.0, 8.25, 1.0)]
    down = build_chart(falling)
    assert down.last_price is not None and not down.last_price.up
    assert down.last_price.text == "8.25"


def test_an_empty_series_gives_an_empty_chart() -> None:
    chart = build_chart([])
    assert chart.empty
    assert chart.candles == () and chart.price_labels == () and chart.time_labels == ()
    assert chart.average_points == "" and chart.last_price is None
    assert (chart.width, chart.height) == (800, 320)


def test_a_flat_series_is_drawn_in_the_middle() -> None:
    flat = [Candle(T0 + i * 60_000, 0.000018, 0.000018, 0.000018, 0.000018, 0.0) for i in range(25)]
    chart = build_chart(flat)
    assert not chart.empty and len(chart.candles) == 25
    for mark in chart.candles:
        assert mark.body_height == 1
        assert mark.wick_top <= mark.body_y <= mark.body_y + mark.body_height <= mark.wick_bottom + EPS
        assert 0 < mark.body_y < chart.plot_height
    assert chart.last_price is not None
    assert chart.last_price.y == pytest.approx(chart.plot_height / 2, abs=0.01)
    assert chart.last_price.text == "0.000018"
    assert chart.price_labels and all("e" not in label.text for label in chart.price_labels)
    assert len(chart.average_points.split()) == 6
    single = build_chart([Candle(T0, 5.0, 5.0, 5.0, 5.0, 0.0)])
    assert len(single.candles) == 1 and single.time_labels[0].text == "12:00"


def test_annotation_lines_sit_at_their_price_and_lines_off_the_plot_are_left_out() -> None:
    candles = series()
    plain = build_chart(candles)
    chart = build_chart(
        candles,
        lines=[
            (candles[-1].close, "last close"),
            (110.0, "mid"),
            (1_000.0, "far"),
            (1.0, "floor"),
            (float("nan"), "nan"),
        ],
    )
    assert chart.price_labels == plain.price_labels, "lines do not stretch the scale"
    assert [line.label for line in chart.lines] == ["last close", "mid"]
    last, mid = chart.lines
    assert plain.last_price is not None and last.y == plain.last_price.y
    assert 0 <= last.y < mid.y <= chart.plot_height  # the higher price is nearer the top
    # linear in price: the label ticks give the scale
    (y1, p1), (y2, p2) = [(label.y, float(label.text)) for label in plain.price_labels[:2]]
    assert mid.y == pytest.approx(y1 + (110.0 - p1) * (y2 - y1) / (p2 - p1), abs=0.02)
    assert mid.price_text == "110" and last.price_text == f"{candles[-1].close:g}"
    assert build_chart([], lines=[(100.0, "x")]).lines == ()
