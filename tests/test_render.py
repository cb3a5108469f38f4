"""Fragments rendered alone: well-formed HTML, a stable id, out-of-band when pushed."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from bixweb import assets
from bixweb.alerts import Alert, Rule
from bixweb.annotations import Annotation
from bixweb.charts import build_chart
from bixweb.market import Market
from bixweb.model import Book, Candle, History, Interval, Trade
from bixweb.render import HISTORY_SHOWN, PageView, Renderer, Status, environment

T0 = 1_764_158_400_000
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
SVG_LEAVES = {"line", "rect", "polyline", "path", "circle"}


class Checker(HTMLParser):
    """Fails on unbalanced tags; records the root elements and every id."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.roots: list[tuple[str, dict[str, str | None]]] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if not self.stack:
            self.roots.append((tag, attributes))
        if attributes.get("id"):
            self.ids.append(str(attributes["id"]))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if not self.stack:
            self.roots.append((tag, dict(attrs)))
        assert tag in VOID | SVG_LEAVES, f"self-closing <{tag}/>"

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:] or 'nothing'}"
        self.stack.pop()


def check(html: str) -> Checker:
    checker = Checker()
    checker.feed(html)
    checker.close()
    assert not checker.stack, f"unclosed {checker.stack}"
    assert len(checker.ids) == len(set(checker.ids)), "duplicate ids"
    return checker


@pytest.fixture
def market() -> Market:
    market = Market(["BTCUSDT", "ETHUSDT"], history_points=50)
    minutes = tuple(
        Candle(T0 - (120 - n) * 60_000, 95_000.0 + n, 95_010.0 + n, 94_990.0 + n, 95_005.0 + n, 1.5, True)
        for n in range(120)
    )
    market.apply([History("BTCUSDT", minutes), History("ETHUSDT", ())], T0)
    market.apply(
        [
            Trade("BTCUSDT", 1, 95_200.5, 0.25, "buy", T0 + 10),
            Trade("BTCUSDT", 2, 95_199.0, 0.5, "sell", T0 + 20),
            Book("BTCUSDT", ((95_198.5, 1.0), (95_198.0, 2.0)), ((95_199.5, 0.5), (95_200.0, 3.0)), T0 + 30),
        ],
        T0 + 30,
    )
    return market


@pytest.fixture
def renderer() -> Renderer:
    return Renderer(environment(assets.templates_dir()), chart_points=50)


def test_each_fragment_alone_is_one_oob_element_with_its_id(market: Market, renderer: Renderer) -> None:
    state = market.states["BTCUSDT"]
    view = PageView("BTCUSDT", ("BTCUSDT", "ETHUSDT"))
    fragments = {
        "ticker-BTCUSDT": renderer.ticker_card(state),
        "tickers": renderer.tickers([state], ["ETHUSDT"]),
        "chart": renderer.chart(state, Interval.M1, "sma", 20),
        "trades": renderer.trades(state),
        "book": renderer.book(state),
        "status": renderer.status(Status("live", 3, T0)),
        "controls": renderer.controls(view, market.symbols),
        "notice": renderer.notice("unknown symbol"),
    }
    for fragment_id, html in fragments.items():
        roots = check(html).roots
        assert len(roots) == 1, fragment_id
        tag, attributes = roots[0]
        assert attributes.get("id") == fragment_id
        assert attributes.get("hx-swap-oob") == "true", fragment_id


def test_fragments_in_the_page_are_not_out_of_band(market: Market, renderer: Renderer) -> None:
    html = renderer.book(market.states["BTCUSDT"], oob=False)
    assert "hx-swap-oob" not in html and 'id="book"' in html


def test_ticker_card_shows_price_change_and_direction(market: Market, renderer: Renderer) -> None:
    html = renderer.ticker_card(market.states["BTCUSDT"])
    assert "95,199.00" in html and "tick-down" in html and "card up" in html
    assert 'name="symbol" value="BTCUSDT"' in html  # its remove button


def test_trades_are_newest_first_and_coloured_by_side(market: Market, renderer: Renderer) -> None:
    html = renderer.trades(market.states["BTCUSDT"])
    assert html.index('data-id="2"') < html.index('data-id="1"')
    assert 'class="sell" data-id="2"' in html and 'class="buy" data-id="1"' in html


def test_book_shows_spread_mid_and_depth(market: Market, renderer: Renderer) -> None:
    html = renderer.book(market.states["BTCUSDT"])
    assert "spread <strong>1.00</strong>" in html and "mid <strong>95,199.000</strong>" in html
    assert "--depth: 100.0%" in html  # the deepest side's last level fills the bar
    assert "no book yet" in renderer.book(market.states["ETHUSDT"])


def test_the_chart_svg_has_a_candle_per_point_and_labelled_axes(market: Market, renderer: Renderer) -> None:
    state = market.states["BTCUSDT"]
    candles = state.candles(Interval.M1, 50)
    assert len(candles) == 50
    html = renderer.chart(state, Interval.M1, "ema", 10)
    checker = check(html)
    assert checker.roots[0][0] == "div"  # a wrapper around the whole <svg>, never a bare SVG child
    assert len(re.findall(r'<g class="(?:up|down)"><line', html)) == 50
    chart = build_chart(candles, max_points=50, average="ema", period=10, last_price=state.price)
    assert 3 <= len(chart.price_labels) and 3 <= len(chart.time_labels) <= 7
    for label in (*chart.price_labels, *chart.time_labels):
        assert f">{label.text}</text>" in html
    assert "EMA 10" in html and 'class="average"' in html
    assert chart.last_price is not None and f">{chart.last_price.text}</text>" in html


def test_an_empty_chart_says_so(renderer: Renderer) -> None:
    market = Market(["ETHUSDT"])
    html = renderer.chart(market.states["ETHUSDT"], Interval.S1, "sma", 20)
    check(html)
    assert "waiting for trades" in html


def alert(n: int, symbol: str = "BTCUSDT", note: str = "") -> Alert:
    return Alert(
        f"r{n}:{T0 + n}:{n}",
        f"r{n}",
        "page:abc",
        symbol,
        "above",
        95_000.5,
        None,
        None,
        "any",
        note,
        95_001.25,
        None,
        T0 + n * 1000,
        n,
    )


def test_the_desk_fragments_alone_are_one_oob_element_with_their_id(renderer: Renderer) -> None:
    rule = Rule("r1", "BTCUSDT", "move", pct=0.5, window_s=60, note="wake up", repeat=True, owner="page:x")
    line = Annotation("a1", "BTCUSDT", 95_100.0, "support", "bot", T0)
    fragments = {
        "alerts": renderer.alerts([alert(1)], available=True),
        "alert-history": renderer.alert_history([alert(1)], available=True),
        "alert-rules": renderer.alert_rules([rule], available=True),
        "alert-form": renderer.alert_form("BTCUSDT", available=True),
        "annotations": renderer.annotations("BTCUSDT", [line], available=True),
    }
    for fragment_id, html in fragments.items():
        roots = check(html).roots
        assert len(roots) == 1, fragment_id
        assert roots[0][1].get("id") == fragment_id and roots[0][1].get("hx-swap-oob") == "true", fragment_id
    assert 'role="status"' in fragments["alerts"] and 'aria-live="polite"' in fragments["alerts"]
    assert "moves 0.5 % within 60 s" in fragments["alert-rules"] and "wake up" in fragments["alert-rules"]
    assert 'name="action" value="alert_delete"' in fragments["alert-rules"]
    assert 'name="rule_id" value="r1"' in fragments["alert-rules"]
    assert 'name="action" value="alert_create"' in fragments["alert-form"]
    assert 'name="symbol" value="BTCUSDT"' in fragments["alert-form"]
    assert 'name="annotation_id" value="a1"' in fragments["annotations"] and "support" in fragments["annotations"]
    assert " hidden>" in renderer.alerts([], available=True)  # nothing to notify: no empty box


def test_notifications_show_the_newest_three_and_the_history_is_bounded_newest_first(renderer: Renderer) -> None:
    alerts = [alert(n, note=f"note {n}") for n in range(HISTORY_SHOWN + 10)]
    html = renderer.alerts(alerts, available=True)
    shown = re.findall(r'data-alert="r(\d+):', html)
    assert shown == [str(n) for n in range(HISTORY_SHOWN + 9, HISTORY_SHOWN + 6, -1)]
    assert "crossed above 95,000.50" in html and "95,001.25" in html and "note 59" in html
    assert " hidden>" not in html
    history = renderer.alert_history(alerts, available=True)
    listed = [int(n) for n in re.findall(r'<li data-alert="r(\d+):', history)]
    assert listed == list(range(HISTORY_SHOWN + 9, 9, -1))
    assert f"{HISTORY_SHOWN} of {HISTORY_SHOWN + 10} kept" in history


def test_without_a_desk_the_forms_say_alerts_are_not_available(renderer: Renderer) -> None:
    form = renderer.alert_form("BTCUSDT", available=False)
    assert "alerts are not available on this server" in form and "<form" not in form
    lines = renderer.annotations("BTCUSDT", [], available=False)
    assert "not available" in lines and "<form" not in lines
    assert "no rules" not in renderer.alert_rules([], available=False)


def test_the_chart_draws_each_annotation_as_a_labelled_line(market: Market, renderer: Renderer) -> None:
    state = market.states["BTCUSDT"]
    lines = [
        Annotation("a1", "BTCUSDT", 95_100.0, "support", "bot", T0),
        Annotation("a2", "BTCUSDT", 10.0, "far below", "bot", T0),
    ]
    html = renderer.chart(state, Interval.M1, "sma", 20, lines)
    check(html)
    drawn = re.findall(r'<g class="annotation" data-price="([^"]+)"><line x1="0" x2="[\d.]+" y1="([\d.]+)"', html)
    assert [price for price, _ in drawn] == ["95100"]
    assert 0 <= float(drawn[0][1]) <= 296 and "support · 95100</text>" in html and "far below" not in html
