"""Market state → HTML fragments for the dashboard (``templates/fragments/``).

Each fragment has a stable ``id``; rendered with ``oob=True`` its root
carries ``hx-swap-oob`` so htmx swaps it in place when it arrives over the
socket. The full page includes the same templates with ``oob=False``.
Nothing here awaits: values in, HTML out.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from bixweb import charts
from bixweb.alerts import Alert, Rule
from bixweb.annotations import Annotation
from bixweb.market import SymbolState
from bixweb.model import Interval

AVERAGES = ("sma", "ema")
PERIODS = (5, 10, 20, 50)
DESK_FRAGMENTS = ("alerts", "alert-history", "alert-rules")
"""Fragment keys of the alert desk that every page shows, the same for all."""
ALERTS_NOTIFIED = 3
HISTORY_SHOWN = 50
RULES_SHOWN = 100


def environment(templates: Path) -> jinja2.Environment:
    """The one Jinja environment for pages and fragments."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["static"] = lambda name: f"/static/{name}"
    env.globals["vendor"] = lambda name: f"/vendor/{name}"
    return env


@dataclass(frozen=True, slots=True)
class PageView:
    """What one dashboard page shows: per-page state, not per-page rendering."""

    symbol: str
    watchlist: tuple[str, ...]
    interval: Interval = Interval.M1
    average: str = "sma"
    period: int = 20

    @property
    def chart_key(self) -> str:
        return chart_key(self.symbol, self.interval, self.average, self.period)

    def fragments(self) -> frozenset[str]:
        """The live fragments this page receives."""
        return frozenset(
            {f"ticker:{s}" for s in self.watchlist}
            | {self.chart_key, f"trades:{self.symbol}", f"book:{self.symbol}", "status"}
            | {*DESK_FRAGMENTS, f"annotations:{self.symbol}"}
        )


def chart_key(symbol: str, interval: Interval, average: str, period: int) -> str:
    return f"chart:{symbol}:{interval.label}:{average}:{period}"


def parse_chart_key(key: str) -> tuple[str, Interval, str, int]:
    _, symbol, label, average, period = key.split(":")
    return symbol, Interval.from_label(label), average, int(period)


@dataclass(frozen=True, slots=True)
class Status:
    feed: str
    clients: int
    now_ms: int

    @property
    def clock(self) -> str:
        return datetime.fromtimestamp(self.now_ms / 1000, UTC).strftime("%H:%M:%S")

    @property
    def iso(self) -> str:
        return datetime.fromtimestamp(self.now_ms / 1000, UTC).isoformat(timespec="milliseconds")


def _fixed(value: float, decimals: int) -> str:
    return f"{value:,.{decimals}f}"


def _volume(value: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.2f}"


class Renderer:
    """Renders fragments; remembers how many decimals each symbol's prices need."""

    def __init__(self, env: jinja2.Environment, *, chart_points: int = 100, trades_shown: int = 20) -> None:
        self.env = env
        self.chart_points = chart_points
        self.trades_shown = trades_shown
        self._decimals: dict[str, int] = {}

    def _render(self, template: str, **context: Any) -> str:
        return self.env.get_template(template).render(**context)

    def decimals(self, state: SymbolState) -> int:
        """Price decimals of a symbol: the most any of its prices has shown, at least 2."""
        prices = [state.price]
        if state.book is not None:
            prices += [p for p, _ in state.book.bids[:3]] + [p for p, _ in state.book.asks[:3]]
        known = max(self._decimals.get(state.symbol, 2), charts.price_decimals(prices))
        self._decimals[state.symbol] = known
        return known

    def card(self, state: SymbolState) -> dict[str, Any]:
        ticker = state.ticker()
        d = self.decimals(state)
        return {
            "symbol": state.symbol,
            "price": ticker.price,
            "price_text": _fixed(ticker.price, d),
            "change": ticker.change,
            "change_text": f"{ticker.change:+,.{d}f}",
            "change_pct_text": f"{ticker.change_pct:+.2f} %",
            "high_text": _fixed(ticker.high, d),
            "low_text": _fixed(ticker.low, d),
            "volume_text": _volume(ticker.volume),
            "tick": state.direction,
        }

    def ticker_card(self, state: SymbolState, *, oob: bool = True) -> str:
        return self._render("fragments/ticker_card.html", card=self.card(state), oob=oob)

    def tickers_context(self, states: Iterable[SymbolState], addable: Sequence[str]) -> dict[str, Any]:
        return {"cards": [self.card(s) for s in states if s.has_price], "addable": list(addable)}

    def tickers(self, states: Iterable[SymbolState], addable: Sequence[str], *, oob: bool = True) -> str:
        return self._render("fragments/tickers.html", **self.tickers_context(states, addable), oob=oob)

    def chart_context(
        self, state: SymbolState, interval: Interval, average: str, period: int, annotations: Sequence[Annotation] = ()
    ) -> dict[str, Any]:
        chart = charts.build_chart(
            state.candles(interval, self.chart_points),
            max_points=self.chart_points,
            average="ema" if average == "ema" else "sma",
            period=period,
            last_price=state.price if state.has_price else None,
            lines=[(a.price, a.label) for a in annotations],
        )
        return {"chart": chart, "chart_symbol": state.symbol, "chart_interval": interval.label}

    def chart(
        self,
        state: SymbolState,
        interval: Interval,
        average: str,
        period: int,
        annotations: Sequence[Annotation] = (),
        *,
        oob: bool = True,
    ) -> str:
        context = self.chart_context(state, interval, average, period, annotations)
        return self._render("fragments/chart.html", **context, oob=oob)

    def trades_context(self, state: SymbolState) -> dict[str, Any]:
        d = self.decimals(state)
        shown = list(state.trades)[-self.trades_shown :]
        rows = [
            {
                "id": t.id,
                "side": t.side,
                "clock": datetime.fromtimestamp(t.time / 1000, UTC).strftime("%H:%M:%S"),
                "price_text": _fixed(t.price, d),
                "qty": t.qty,
            }
            for t in reversed(shown)
        ]
        return {"trades": rows, "trades_symbol": state.symbol}

    def trades(self, state: SymbolState, *, oob: bool = True) -> str:
        return self._render("fragments/trades.html", **self.trades_context(state), oob=oob)

    def book_context(self, state: SymbolState) -> dict[str, Any]:
        book = state.book
        if book is None or not book.bids or not book.asks:
            return {"book": None, "book_symbol": state.symbol}
        d = self.decimals(state)

        def levels(side: Sequence[tuple[float, float]], deepest: float) -> list[dict[str, Any]]:
            total, out = 0.0, []
            for price, qty in side:
                total += qty
                out.append({"price_text": _fixed(price, d), "qty": qty, "depth": round(100 * total / deepest, 1)})
            return out

        deepest = max(sum(q for _, q in book.bids), sum(q for _, q in book.asks)) or 1.0
        return {
            "book": {
                "bids": levels(book.bids, deepest),
                "asks": levels(book.asks, deepest),
                "spread_text": _fixed(book.best_ask - book.best_bid, d),
                "mid_text": _fixed((book.best_ask + book.best_bid) / 2, d + 1),
            },
            "book_symbol": state.symbol,
        }

    def book(self, state: SymbolState, *, oob: bool = True) -> str:
        return self._render("fragments/book.html", **self.book_context(state), oob=oob)

    def status(self, status: Status, *, oob: bool = True) -> str:
        return self._render("fragments/status.html", status=status, oob=oob)

    def controls_context(self, view: PageView, symbols: Sequence[str]) -> dict[str, Any]:
        return {
            "view": view,
            "symbols": list(symbols),
            "intervals": [i.label for i in Interval],
            "averages": AVERAGES,
            "periods": PERIODS,
        }

    def controls(self, view: PageView, symbols: Sequence[str], *, oob: bool = True) -> str:
        return self._render("fragments/controls.html", **self.controls_context(view, symbols), oob=oob)

    # -- the alert desk: shared by every page (rules, alerts), or by a symbol's viewers (annotations) --

    def _price_text(self, symbol: str, price: float) -> str:
        return _fixed(price, max(self._decimals.get(symbol, 2), charts.price_decimals([price])))

    def rule_text(self, rule: Rule) -> str:
        """``above 95,000.50``, ``moves 0.5 % up within 60 s``."""
        if rule.level is not None:
            return f"{rule.condition} {self._price_text(rule.symbol, rule.level)}"
        way = "" if rule.direction == "any" else f" {rule.direction}"
        return f"moves {rule.pct:g} %{way} within {rule.window_s:g} s"

    def alert_row(self, alert: Alert) -> dict[str, Any]:
        if alert.level is not None:
            what = f"crossed {alert.condition} {self._price_text(alert.symbol, alert.level)}"
        else:
            what = f"moved {alert.change_pct or 0.0:+.3g} % within {alert.window_s or 0.0:g} s"
        moment = datetime.fromtimestamp(alert.time_ms / 1000, UTC)
        return {
            "id": alert.id,
            "symbol": alert.symbol,
            "what": what,
            "price_text": self._price_text(alert.symbol, alert.price),
            "clock": moment.strftime("%H:%M:%S"),
            "iso": moment.isoformat(timespec="milliseconds"),
            "note": alert.note,
        }

    def alerts_context(self, alerts: Sequence[Alert], *, available: bool) -> dict[str, Any]:
        """The newest few of the history (oldest first), newest first."""
        newest = alerts[-ALERTS_NOTIFIED:][::-1]
        return {"recent_alerts": [self.alert_row(a) for a in newest], "desk_available": available}

    def alerts(self, alerts: Sequence[Alert], *, available: bool, oob: bool = True) -> str:
        return self._render("fragments/alerts.html", **self.alerts_context(alerts, available=available), oob=oob)

    def alert_history_context(self, alerts: Sequence[Alert], *, available: bool) -> dict[str, Any]:
        """At most :data:`HISTORY_SHOWN` of the history (oldest first), newest first."""
        shown = alerts[-HISTORY_SHOWN:][::-1]
        return {
            "history": [self.alert_row(a) for a in shown],
            "history_total": len(alerts),
            "desk_available": available,
        }

    def alert_history(self, alerts: Sequence[Alert], *, available: bool, oob: bool = True) -> str:
        context = self.alert_history_context(alerts, available=available)
        return self._render("fragments/alert_history.html", **context, oob=oob)

    def alert_rules_context(self, rules: Sequence[Rule], *, available: bool) -> dict[str, Any]:
        """At most :data:`RULES_SHOWN` rules, newest first."""
        rows = [
            {
                "id": r.id,
                "symbol": r.symbol,
                "what": self.rule_text(r),
                "note": r.note,
                "repeat": r.repeat,
                "owner": r.owner.split(":", 1)[0] or "?",
            }
            for r in rules[-RULES_SHOWN:][::-1]
        ]
        return {"rules": rows, "rules_total": len(rules), "desk_available": available}

    def alert_rules(self, rules: Sequence[Rule], *, available: bool, oob: bool = True) -> str:
        context = self.alert_rules_context(rules, available=available)
        return self._render("fragments/alert_rules.html", **context, oob=oob)

    def alert_form_context(self, symbol: str, *, available: bool) -> dict[str, Any]:
        return {"form_symbol": symbol, "desk_available": available}

    def alert_form(self, symbol: str, *, available: bool, oob: bool = True) -> str:
        context = self.alert_form_context(symbol, available=available)
        return self._render("fragments/alert_form.html", **context, oob=oob)

    def annotations_context(self, symbol: str, annotations: Sequence[Annotation], *, available: bool) -> dict[str, Any]:
        rows = [{"id": a.id, "price_text": self._price_text(symbol, a.price), "label": a.label} for a in annotations]
        return {"annotations_symbol": symbol, "annotations": rows, "desk_available": available}

    def annotations(self, symbol: str, annotations: Sequence[Annotation], *, available: bool, oob: bool = True) -> str:
        context = self.annotations_context(symbol, annotations, available=available)
        return self._render("fragments/annotations.html", **context, oob=oob)

    def notice(self, text: str) -> str:
        return self._render("fragments/notice.html", text=text, at=time.strftime("%H:%M:%S", time.gmtime()))
