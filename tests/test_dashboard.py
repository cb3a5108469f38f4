"""Dashboard logic without sockets: actions, page memory, render once per change."""

from __future__ import annotations

import orjson
import pytest

from bixweb import protocol
from bixweb.dashboard import Dashboard, PageStore, apply_action, join_fragments, parse_action
from bixweb.errors import ProtocolError
from bixweb.feeds.simulated import SimulatedMarket
from bixweb.hub import Hub
from bixweb.market import Market
from bixweb.model import Interval
from bixweb.render import PageView, Renderer, Status, environment

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
T0 = 1_764_160_000_000


class Page:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def deliver(self, frame: bytes, parts: object) -> None:
        self.frames.append(frame)


def action(**values: object) -> bytes:
    return orjson.dumps({**values, "headers": {"HX-Request": "true", "HX-Trigger": None}})


def test_view_actions_change_symbol_interval_average_and_period() -> None:
    view = PageView("BTCUSDT", ("BTCUSDT",))
    view = apply_action(view, parse_action(action(action="view", symbol="ETHUSDT", interval="5m", average="ema",
                                                  period="50")), SYMBOLS)
    assert view == PageView("ETHUSDT", ("BTCUSDT",), Interval.M5, "ema", 50)
    assert view.fragments() == {"ticker:BTCUSDT", "chart:ETHUSDT:5m:ema:50", "trades:ETHUSDT", "book:ETHUSDT",
                                "status"}


def test_watch_and_unwatch_change_the_watchlist() -> None:
    view = PageView("BTCUSDT", ("BTCUSDT",))
    view = apply_action(view, parse_action(action(action="watch", symbol="SOLUSDT")), SYMBOLS)
    assert view.watchlist == ("BTCUSDT", "SOLUSDT")
    assert apply_action(view, parse_action(action(action="watch", symbol="SOLUSDT")), SYMBOLS) == view
    view = apply_action(view, parse_action(action(action="unwatch", symbol="BTCUSDT")), SYMBOLS)
    assert view.watchlist == ("SOLUSDT",)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"nope", "invalid_json"),
        (action(action="launch"), "invalid_message"),
        (action(action="watch"), "invalid_message"),
        (action(action="view", interval="2m"), "invalid_message"),
        (action(action="view", period="7"), "invalid_message"),
        (action(action="view", symbol="DOGEBTC"), "unknown_symbol"),
        (action(action="view", extra="x"), "invalid_message"),
    ],
)
def test_bad_actions_are_refused(frame: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        apply_action(PageView("BTCUSDT", ()), parse_action(frame), SYMBOLS)
    assert caught.value.code == code


def test_the_page_store_forgets_the_oldest_page_first() -> None:
    store = PageStore(capacity=2)
    a, b, c = (PageView(s, ()) for s in SYMBOLS)
    store.put("a", a)
    store.put("b", b)
    assert store.get("a") == a  # now the most recent
    store.put("c", c)
    assert store.get("b") is None and store.get("a") == a and store.get("c") == c


def dashboard() -> Dashboard:
    market = Market(SYMBOLS, history_points=30)
    sim = SimulatedMarket(SYMBOLS, seed=3)
    market.apply(sim.history(T0), T0)
    market.apply(sim.tick(T0 + 100), T0 + 100)
    renderer = Renderer(environment(protocol.ROOT / "templates"), chart_points=30)
    return Dashboard(market, renderer, Hub(join=join_fragments), watchlist=SYMBOLS[:2])


def test_a_changed_fragment_is_rendered_once_for_every_page_that_shows_it() -> None:
    board = dashboard()
    sim = SimulatedMarket(SYMBOLS, seed=4)
    same = [Page() for _ in range(50)]
    other = Page()
    view = board.default_view()
    for page in same:
        board.hub.add(page, view.fragments())
    board.hub.add(other, PageView("SOLUSDT", ("SOLUSDT",)).fragments())
    for n in range(5):  # five market ticks within one browser period: latest wins
        board.mark(board.market.apply(sim.tick(T0 + 200 + n), T0 + 200 + n))
    board.flush()
    # tickers of BTC, ETH, SOL; chart, trades and book of BTC and of SOL: each rendered once
    assert board.renders == 9
    assert all(len(p.frames) == 1 for p in same) and len({id(p.frames[0]) for p in same}) == 1
    frame = same[0].frames[0].decode()
    for fragment_id in ("ticker-BTCUSDT", "ticker-ETHUSDT", "chart", "trades", "book"):
        assert f'id="{fragment_id}"' in frame
    assert 'id="ticker-SOLUSDT"' not in frame
    assert 'data-symbol="SOLUSDT"' in other.frames[0].decode()
    board.flush()
    assert board.renders == 9 and len(other.frames) == 1  # nothing changed, nothing sent


def test_status_reaches_every_page_and_a_page_frame_has_everything() -> None:
    board = dashboard()
    pages = [Page(), Page()]
    board.hub.add(pages[0], board.default_view().fragments())
    board.hub.add(pages[1], PageView("SOLUSDT", ()).fragments())
    board.broadcast_status(Status("stale", 2, T0))
    assert all('id="status"' in p.frames[0].decode() and "stale" in p.frames[0].decode() for p in pages)
    frame = board.page_frame(board.default_view(), Status("live", 1, T0)).decode()
    for fragment_id in ("status", "tickers", "controls", "chart", "trades", "book"):
        assert f'id="{fragment_id}"' in frame
