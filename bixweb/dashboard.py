"""The live dashboard: which fragment changed, render it once, fan it out.

:class:`Dashboard` collects the streams the market touched, and at the
browser rate (a few times a second, latest wins) renders every changed
fragment that somebody watches exactly once and hands the HTML to the
dashboard hub, which sends each page one frame with all its fragments.
Per-page state (:class:`~bixweb.render.PageView`) only decides who
receives what. Page actions arrive as htmx form values and are validated
against ``schemas/ui/action.json``.

The alert desk (:class:`~bixweb.desk.Desk`), when this process has one,
is drawn the same way: its listener marks ``alert-rules``, ``alerts`` and
``alert-history`` (every page shows them) or ``annotations:<SYMBOL>`` (the
symbol's line list and charts) dirty, and the next flush renders each once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from bixweb import protocol
from bixweb.annotations import Annotation
from bixweb.desk import Change, DeskView
from bixweb.errors import ProtocolError
from bixweb.hub import Hub
from bixweb.market import Market, Outgoing
from bixweb.model import BOOK, TICKER, TRADES, Interval, canonical_symbol
from bixweb.render import DESK_FRAGMENTS, PERIODS, PageView, Renderer, Status, parse_chart_key

MAX_WATCHLIST = 24
DESK_ACTIONS = frozenset({"alert_create", "alert_delete", "annotation_add", "annotation_remove"})
UNAVAILABLE = "alerts are not available on this server"
CROSS_FIELDS = ("level",)
MOVE_FIELDS = ("pct", "window_s", "direction")


def join_fragments(parts: Sequence[bytes]) -> bytes:
    return b"\n".join(parts)


def parse_action(frame: str | bytes) -> dict[str, Any]:
    """Decode and validate one dashboard form message; its ``symbol`` in upper case."""
    values = protocol.parse_json_object(frame)
    error = protocol.schemas().first_error("ui", "action", values)
    if error is not None:
        raise ProtocolError("invalid_message", error[1], path=error[0])
    if "symbol" in values:
        values["symbol"] = canonical_symbol(values["symbol"])
    return values


def apply_action(view: PageView, values: Mapping[str, Any], symbols: Sequence[str]) -> PageView:
    """The page state after a form action; :class:`ProtocolError` for a value we do not carry."""
    action = values["action"]
    symbol = values.get("symbol")
    if symbol is not None and symbol not in symbols:
        raise ProtocolError("unknown_symbol", f"unknown symbol {symbol[:32]!r}", path="$.symbol")
    if action == "watch":
        if symbol is None or symbol in view.watchlist:
            return view
        if len(view.watchlist) >= MAX_WATCHLIST:
            raise ProtocolError("too_many_subscriptions", f"at most {MAX_WATCHLIST} symbols on a watchlist")
        return replace(view, watchlist=(*view.watchlist, symbol))
    if action == "unwatch":
        return replace(view, watchlist=tuple(s for s in view.watchlist if s != symbol))
    period = int(values.get("period", view.period))
    if period not in PERIODS:
        raise ProtocolError("invalid_message", f"period must be one of {PERIODS}", path="$.period")
    return replace(
        view,
        symbol=symbol or view.symbol,
        interval=Interval.from_label(values["interval"]) if "interval" in values else view.interval,
        average=values.get("average", view.average),
        period=period,
    )


def rule_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """A rule form's values for :meth:`Desk.create_rule`.

    The form has inputs for both kinds of condition (there is no script to
    hide the others), so those of the kind not chosen are dropped here;
    everything else is the desk's to check.
    """
    unused = MOVE_FIELDS if values.get("condition") in ("above", "below") else CROSS_FIELDS
    return {name: value for name, value in values.items() if name not in unused and name != "headers"}


class PageStore:
    """Page id → :class:`PageView`, so a page that reconnects finds its choices; bounded, oldest out."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._views: OrderedDict[str, PageView] = OrderedDict()

    def get(self, page: str) -> PageView | None:
        view = self._views.get(page)
        if view is not None:
            self._views.move_to_end(page)
        return view

    def put(self, page: str, view: PageView) -> None:
        self._views[page] = view
        self._views.move_to_end(page)
        while len(self._views) > self.capacity:
            self._views.popitem(last=False)


class Dashboard:
    """Renders live fragments once per change for every page that shows them."""

    def __init__(
        self, market: Market, renderer: Renderer, hub: Hub, *, watchlist: Sequence[str], desk: DeskView | None = None
    ) -> None:
        self.market = market
        self.renderer = renderer
        self.hub = hub
        self.default_watchlist = tuple(watchlist)
        self.pages = PageStore()
        self._dirty: dict[str, None] = {}
        self.renders = 0
        self.desk = desk
        if desk is not None:
            desk.listeners.append(self.desk_changed)

    def desk_changed(self, change: Change) -> None:
        """The desk's listener: mark the fragments a change touches (the next flush renders them)."""
        if change == "rules":
            self._dirty["alert-rules"] = None
        elif change == "alerts":
            self._dirty.update(dict.fromkeys(("alerts", "alert-history")))
        else:  # annotations:<SYMBOL>
            self._dirty[change] = None

    def default_view(self) -> PageView:
        return PageView(symbol=self.default_watchlist[0], watchlist=self.default_watchlist)

    def mark(self, outgoing: Iterable[Outgoing]) -> None:
        """Remember which streams changed since the last flush."""
        for item in outgoing:
            self._dirty[item.stream] = None

    def mark_streams(self, streams: Iterable[str]) -> None:
        self._dirty.update(dict.fromkeys(streams))

    def _fragment_keys(self, stream: str, charts: list[str]) -> list[str]:
        """The watched fragments a changed market stream touches; ``charts``: the watched chart keys."""
        channel, _, symbol = stream.partition(":")
        if stream in DESK_FRAGMENTS:
            return [stream] if self.hub.has_subscribers(stream) else []
        if channel == "annotations":  # the line list, and every chart of the symbol
            prefix = f"chart:{symbol}:"
            lines = [stream] if self.hub.has_subscribers(stream) else []
            return lines + [key for key in charts if key.startswith(prefix)]
        if channel in (TICKER, TRADES, BOOK):
            key = f"{channel}:{symbol}"
            return [key] if self.hub.has_subscribers(key) else []
        prefix = f"chart:{symbol}:{channel.removeprefix('candles_')}:"
        return [key for key in charts if key.startswith(prefix)]

    def render(self, key: str) -> str:
        """The live fragment called ``key``."""
        kind, _, rest = key.partition(":")
        if kind == "status":
            raise ValueError("status is rendered by broadcast_status")
        if kind == "chart":
            symbol, interval, average, period = parse_chart_key(key)
            return self.renderer.chart(
                self.market.states[symbol], interval, average, period, self.annotations_of(symbol)
            )
        if kind in DESK_FRAGMENTS or kind == "annotations":
            return self.render_desk(key)
        state = self.market.states[rest]
        if kind == TICKER:
            return self.renderer.ticker_card(state)
        if kind == TRADES:
            return self.renderer.trades(state)
        return self.renderer.book(state)

    def flush(self) -> None:
        """Render each changed, watched fragment once and fan it out."""
        if not self._dirty:
            return
        charts = [key for key in self.hub.streams() if key.startswith("chart:")]
        keys: dict[str, None] = {}
        for stream in self._dirty:
            keys.update(dict.fromkeys(self._fragment_keys(stream, charts)))
        self._dirty.clear()
        parts = [(key, self.render(key).encode(), True) for key in keys]
        self.renders += len(parts)
        self.hub.publish_encoded(parts)

    def annotations_of(self, symbol: str) -> list[Annotation]:
        return [] if self.desk is None else self.desk.annotations_of(symbol)

    def render_desk(self, key: str) -> str:
        """``alerts``, ``alert-history``, ``alert-rules`` or ``annotations:<SYMBOL>``."""
        desk, r = self.desk, self.renderer
        available = desk is not None
        if key == "alerts":
            return r.alerts(desk.alerts() if desk else [], available=available)
        if key == "alert-history":
            return r.alert_history(desk.alerts() if desk else [], available=available)
        if key == "alert-rules":
            return r.alert_rules(desk.rules() if desk else [], available=available)
        symbol = key.removeprefix("annotations:")
        return r.annotations(symbol, self.annotations_of(symbol), available=available)

    async def desk_action(self, values: Mapping[str, Any], *, page: str, now_ms: int) -> bytes | None:
        """Apply a page's alert or annotation form; a fragment for that page only, or None.

        Everybody's fragments follow from the desk's listener. A refused
        form is a :class:`ProtocolError` with the desk's human message.
        """
        desk = self.desk
        if desk is None:
            raise ProtocolError("unavailable", UNAVAILABLE)
        action, owner = values["action"], f"page:{page}"
        fields = rule_fields(values) if action == "alert_create" else values
        reply = await desk.perform_async(action, fields, owner=owner, now_ms=now_ms)
        if action == "alert_create":
            symbol = reply["rules"][0]["symbol"]
            return self.renderer.alert_form(symbol, available=True).encode()  # a fresh, empty form
        return None

    def status(self, status: Status) -> bytes:
        return self.renderer.status(status).encode()

    def broadcast_status(self, status: Status) -> None:
        self.hub.publish_encoded([("status", self.status(status), True)])

    def page_frame(self, view: PageView, status: Status) -> bytes:
        """Everything one page shows, for a page that (re)connects or changes its view."""
        states = self.market.states
        addable = [s for s in self.market.symbols if s not in view.watchlist]
        symbols = self.market.symbols
        parts = [
            self.renderer.status(status),
            self.renderer.tickers((states[s] for s in view.watchlist), addable),
            self.renderer.controls(view, symbols),
            self.renderer.chart(
                states[view.symbol], view.interval, view.average, view.period, self.annotations_of(view.symbol)
            ),
            self.renderer.trades(states[view.symbol]),
            self.renderer.book(states[view.symbol]),
            self.renderer.alert_form(view.symbol, available=self.desk is not None),
            *(self.render_desk(key) for key in (*DESK_FRAGMENTS, f"annotations:{view.symbol}")),
        ]
        return join_fragments([p.encode() for p in parts])

    def page_context(self, view: PageView, status: Status) -> dict[str, Any]:
        """The full page's template context: the same fragments, not out-of-band."""
        states = self.market.states
        state = states[view.symbol]
        addable = [s for s in self.market.symbols if s not in view.watchlist]
        r, desk = self.renderer, self.desk
        available = desk is not None
        alerts = desk.alerts() if desk else []
        return {
            "view": view,
            "status": status,
            **r.tickers_context((states[s] for s in view.watchlist), addable),
            **r.controls_context(view, self.market.symbols),
            **r.chart_context(state, view.interval, view.average, view.period, self.annotations_of(view.symbol)),
            **r.trades_context(state),
            **r.book_context(state),
            **r.alerts_context(alerts, available=available),
            **r.alert_history_context(alerts, available=available),
            **r.alert_rules_context(desk.rules() if desk else [], available=available),
            **r.alert_form_context(view.symbol, available=available),
            **r.annotations_context(view.symbol, self.annotations_of(view.symbol), available=available),
        }
