"""Dashboard logic without sockets: actions, page memory, render once per change."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bixweb import assets
from bixweb.dashboard import Dashboard, PageStore, apply_action, join_fragments, parse_action
from bixweb.desk import Desk
from bixweb.errors import ProtocolError
from bixweb.feeds.simulated import SimulatedMarket
from bixweb.hub import Hub
from bixweb.market import Market
from bixweb.model import Interval
from bixweb.render import PageView, Renderer, Status, environment
from bixweb.store import SQLiteStore

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
    view = apply_action(
        view, parse_action(action(action="view", symbol="ETHUSDT", interval="5m", average="ema", period="50")), SYMBOLS
    )
    assert view == PageView("ETHUSDT", ("BTCUSDT",), Interval.M5, "ema", 50)
    assert view.fragments() == {
        "ticker:BTCUSDT",
        "chart:ETHUSDT:5m:ema:50",
        "trades:ETHUSDT",
        "book:ETHUSDT",
        "status",
        "alerts",
        "alert-history",
        "alert-rules",
        "annotations:ETHUSDT",
    }


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
    renderer = Renderer(environment(assets.templates_dir()), chart_points=30)
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


def desk_board(tmp_path: Path) -> Dashboard:
    board = dashboard()
    board.desk = Desk(SQLiteStore(tmp_path / "desk.sqlite3"), SYMBOLS)
    board.desk.listeners.append(board.desk_changed)
    return board


def test_desk_changes_are_rendered_once_and_reach_every_page_that_shows_them(tmp_path: Path) -> None:
    board = desk_board(tmp_path)
    assert board.desk is not None
    btc, sol = [Page() for _ in range(3)], Page()
    for page in btc:
        board.hub.add(page, board.default_view().fragments())
    board.hub.add(sol, PageView("SOLUSDT", ()).fragments())
    board.desk.create_rule({"symbol": "ETHUSDT", "condition": "above", "level": "99999"}, owner="bot", now_ms=T0)
    board.flush()
    assert board.renders == 1  # alert-rules, once for four pages
    assert all(
        'id="alert-rules"' in p.frames[-1].decode() and "above 99,999" in p.frames[-1].decode() for p in [*btc, sol]
    )
    board.desk.add_annotation({"symbol": "BTCUSDT", "price": 95_000, "label": "round"}, owner="bot", now_ms=T0)
    board.flush()
    assert board.renders == 3  # the BTC line list and the BTC chart; nothing for the SOL page
    frame = btc[0].frames[-1].decode()
    assert 'id="annotations"' in frame and 'id="chart"' in frame and "round" in frame
    assert len(sol.frames) == 1


def test_fired_alerts_reach_every_page_as_a_notification_and_a_history_entry(tmp_path: Path) -> None:
    board = desk_board(tmp_path)
    assert board.desk is not None
    pages = [Page(), Page()]
    board.hub.add(pages[0], board.default_view().fragments())
    board.hub.add(pages[1], PageView("SOLUSDT", ()).fragments())
    board.desk.create_rule(
        {"symbol": "BTCUSDT", "condition": "move", "pct": "0.0001", "window_s": "60", "note": "wiggle"},
        owner="bot",
        now_ms=T0,
    )
    board.flush()
    sim = SimulatedMarket(SYMBOLS, seed=4)
    fired = []
    for n in range(50):
        fired += board.desk.observe(board.market.apply(sim.tick(T0 + 200 + n * 100), T0 + 200 + n * 100))
        if fired:
            break
    assert fired, "a 0.0001 % move did not happen in 5 s of simulated market"
    board.flush()
    for page in pages:
        frame = page.frames[-1].decode()
        assert 'id="alerts"' in frame and 'id="alert-history"' in frame and "wiggle" in frame


def test_a_page_frame_has_the_desk_fragments(tmp_path: Path) -> None:
    board = desk_board(tmp_path)
    frame = board.page_frame(board.default_view(), Status("live", 1, T0)).decode()
    for fragment_id in ("alerts", "alert-history", "alert-rules", "alert-form", "annotations"):
        assert f'id="{fragment_id}"' in frame
    assert "not available" not in frame
    assert (
        "alerts are not available on this server"
        in dashboard().page_frame(board.default_view(), Status("live", 1, T0)).decode()
    )


async def test_desk_forms_create_and_delete_rules_and_lines_through_the_desk(tmp_path: Path) -> None:
    board = desk_board(tmp_path)
    assert board.desk is not None
    form = {
        "action": "alert_create",
        "symbol": "BTCUSDT",
        "condition": "above",
        "level": "95000.5",
        "pct": "",
        "window_s": "60",
        "note": "breakout",
        "repeat": "on",
    }  # the move inputs come along
    reply = await board.desk_action(parse_action(action(**form)), page="page-one", now_ms=T0)
    assert reply is not None and b'id="alert-form"' in reply  # a fresh form for the page that sent it
    (rule,) = board.desk.rules()
    assert (rule.condition, rule.level, rule.repeat, rule.note, rule.owner) == (
        "above",
        95_000.5,
        True,
        "breakout",
        "page:page-one",
    )
    move = {**form, "condition": "move", "pct": "0.5", "level": "123"}
    await board.desk_action(parse_action(action(**move)), page="page-one", now_ms=T0)
    assert board.desk.rules()[1].pct == 0.5 and board.desk.rules()[1].level is None
    with pytest.raises(ProtocolError) as caught:
        await board.desk_action(parse_action(action(**{**form, "level": "-3"})), page="p", now_ms=T0)
    assert "level" in caught.value.message
    await board.desk_action(parse_action(action(action="alert_delete", rule_id=rule.id)), page="p", now_ms=T0)
    assert len(board.desk.rules()) == 1
    add = action(action="annotation_add", symbol="ETHUSDT", price="3000.25", label="wall")
    assert await board.desk_action(parse_action(add), page="p", now_ms=T0) is None
    (line,) = board.desk.annotations_of("ETHUSDT")
    assert (line.price, line.label, line.owner) == (3000.25, "wall", "page:p")
    remove = action(action="annotation_remove", annotation_id=line.id)
    await board.desk_action(parse_action(remove), page="p", now_ms=T0)
    assert board.desk.annotations_of() == []
    with pytest.raises(ProtocolError) as caught:
        await dashboard().desk_action(parse_action(add), page="p", now_ms=T0)
    assert caught.value.code == "unavailable"


@pytest.mark.parametrize(
    "values",
    [
        {"action": "alert_delete"},
        {"action": "annotation_remove"},
        {"action": "alert_create", "symbol": "BTCUSDT"},
        {"action": "annotation_add", "price": "1"},
    ],
)
def test_desk_forms_without_their_required_fields_are_refused(values: dict[str, str]) -> None:
    with pytest.raises(ProtocolError):
        parse_action(action(**values))
