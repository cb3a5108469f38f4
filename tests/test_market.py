"""Market state from known events: candles, 24 h statistics, seq, snapshots."""

from __future__ import annotations

from collections import Counter

from bixweb import protocol
from bixweb.market import DAY_MS, Market
from bixweb.model import Book, Candle, History, Interval, Trade

T0 = 1_764_158_400_000  # a whole hour


def trade(n: int, price: float, qty: float = 1.0, at: int = T0, side: str = "buy") -> Trade:
    return Trade("BTCUSDT", n, price, qty, side, at)  # type: ignore[arg-type]


def test_a_trade_yields_trade_candles_and_one_ticker_with_contiguous_seq() -> None:
    market = Market(["BTCUSDT", "ETHUSDT"])
    out = market.apply([trade(1, 100.0), trade(2, 101.0)], T0)
    kinds = Counter(o.message["type"] for o in out)
    assert kinds == {"trade": 2, "candle": 4, "market_update": 1}
    assert [o.message["seq"] for o in out if o.stream == "trades:BTCUSDT"] == [1, 2]
    out = market.apply([trade(3, 99.0)], T0 + 10)
    assert [o.message["seq"] for o in out if o.stream == "trades:BTCUSDT"] == [3]
    assert [o.message["seq"] for o in out if o.stream == "ticker:BTCUSDT"] == [2]
    for o in out:
        assert protocol.schemas().errors("server", o.message) == []


def test_candles_roll_over_and_report_the_closed_one() -> None:
    market = Market(["BTCUSDT"])
    market.apply([trade(1, 100.0, 2.0, T0), trade(2, 105.0, 1.0, T0 + 500), trade(3, 98.0, 1.0, T0 + 900)], T0 + 900)
    out = market.apply([trade(4, 101.0, 1.0, T0 + 1_000)], T0 + 1_000)
    closed = [o.message for o in out if o.message["type"] == "candle" and o.message["data"]["closed"]]
    assert len(closed) == 1 and closed[0]["interval"] == "1s"
    assert closed[0]["data"] == {"start": T0, "open": 100.0, "high": 105.0, "low": 98.0, "close": 98.0,
                                 "volume": 4.0, "closed": True}
    state = market.states["BTCUSDT"]
    assert state.forming[Interval.S1] == Candle(T0 + 1_000, 101.0, 101.0, 101.0, 101.0, 1.0)
    assert state.forming[Interval.M1] == Candle(T0, 100.0, 105.0, 98.0, 101.0, 5.0)


def test_24h_statistics_combine_history_and_the_forming_minute() -> None:
    market = Market(["BTCUSDT"])
    minutes = tuple(
        Candle(T0 - (1440 - n) * 60_000, 100.0 + n, 110.0 + n, 90.0 + n, 101.0 + n, 2.0, True) for n in range(1440)
    )
    market.apply([History("BTCUSDT", minutes)], T0)
    ticker = market.states["BTCUSDT"].ticker()
    assert (ticker.open, ticker.high, ticker.low, ticker.price) == (100.0, 1549.0, 90.0, 1540.0)
    assert ticker.volume == 2880.0
    market.apply([trade(1, 2000.0, 1.0, T0 + 5)], T0 + 5)
    ticker = market.states["BTCUSDT"].ticker()
    assert (ticker.high, ticker.price, ticker.volume) == (2000.0, 2000.0, 2881.0)
    assert ticker.change == 1900.0 and round(ticker.change_pct, 6) == 1900.0


def test_minutes_older_than_a_day_leave_the_window() -> None:
    market = Market(["BTCUSDT"])
    old = Candle(T0 - DAY_MS - 60_000, 50.0, 500.0, 1.0, 60.0, 9.0, True)
    recent = Candle(T0 - 60_000, 100.0, 101.0, 99.0, 100.0, 1.0, True)
    market.apply([History("BTCUSDT", (old, recent))], T0)
    ticker = market.states["BTCUSDT"].ticker()
    assert (ticker.open, ticker.high, ticker.low, ticker.volume) == (100.0, 101.0, 99.0, 1.0)


def test_history_is_aggregated_into_5m_and_1h_candles() -> None:
    market = Market(["BTCUSDT"], history_points=50)
    minutes = tuple(Candle(T0 + n * 60_000, 10.0 + n, 11.0 + n, 9.0 + n, 10.5 + n, 1.0, True) for n in range(120))
    market.apply([History("BTCUSDT", minutes)], T0 + 120 * 60_000)
    state = market.states["BTCUSDT"]
    assert len(state.closed[Interval.M5]) == 24
    assert state.closed[Interval.H1][0] == Candle(T0, 10.0, 70.0, 9.0, 69.5, 60.0, True)
    assert len(state.candles(Interval.M1, 50)) == 50


def test_book_updates_bid_and_ask_of_the_ticker() -> None:
    market = Market(["BTCUSDT"])
    market.apply([trade(1, 100.0)], T0)
    out = market.apply([Book("BTCUSDT", ((99.5, 1.0),), ((100.5, 2.0),), T0 + 1)], T0 + 1)
    assert [o.message["type"] for o in out] == ["book", "market_update"]
    assert out[1].message["data"]["bid"] == 99.5 and out[1].message["data"]["ask"] == 100.5


def test_snapshot_reports_where_each_stream_stands() -> None:
    market = Market(["BTCUSDT", "ETHUSDT"], history_points=3)
    for n in range(5):
        market.apply([trade(n + 1, 100.0 + n, at=T0 + n * 1000)], T0 + n * 1000)
    snap = market.snapshot([("ticker", "BTCUSDT"), ("trades", "BTCUSDT"), ("candles_1s", "BTCUSDT"),
                            ("book", "ETHUSDT")], T0 + 5000)
    assert protocol.schemas().errors("server", snap) == []
    assert snap["seq"] == {"ticker:BTCUSDT": 5, "trades:BTCUSDT": 5, "candles_1s:BTCUSDT": 9, "book:ETHUSDT": 0}
    assert [t["id"] for t in snap["trades"]["BTCUSDT"]] == [1, 2, 3, 4, 5]
    assert [c["start"] for c in snap["candles"]["1s"]["BTCUSDT"]] == [T0 + 2000, T0 + 3000, T0 + 4000]
    assert snap["tickers"]["BTCUSDT"]["price"] == 104.0
    assert "books" not in snap  # ETHUSDT has no book yet, but its seq is reported


def test_events_for_symbols_the_market_does_not_carry_are_ignored() -> None:
    market = Market(["BTCUSDT"])
    assert market.apply([Trade("XYZUSDT", 1, 1.0, 1.0, "buy", T0)], T0) == []


def test_replay_returns_missed_trades_in_full_and_the_latest_state() -> None:
    market = Market(["BTCUSDT"], replay_depth=5, epoch=42)
    for n in range(1, 9):
        market.apply([trade(n, 100.0 + n, at=T0 + n)], T0 + n)
    streams = [("trades", "BTCUSDT"), ("ticker", "BTCUSDT")]
    missed = market.replay(protocol.Since(42, {"trades:BTCUSDT": 5, "ticker:BTCUSDT": 6}), streams)
    assert missed is not None
    assert [(m["type"], m["seq"]) for m in missed] == [("trade", 6), ("trade", 7), ("trade", 8), ("market_update", 8)]
    assert all(m["epoch"] == 42 for m in missed)
    assert market.replay(protocol.Since(42, {"trades:BTCUSDT": 8, "ticker:BTCUSDT": 8}), streams) == []


def test_replay_refuses_what_it_cannot_tell() -> None:
    market = Market(["BTCUSDT"], replay_depth=5, epoch=42)
    for n in range(1, 9):
        market.apply([trade(n, 100.0 + n, at=T0 + n)], T0 + n)
    streams = [("trades", "BTCUSDT")]
    assert market.replay(protocol.Since(41, {"trades:BTCUSDT": 7}), streams) is None  # another epoch
    assert market.replay(protocol.Since(42, {"trades:BTCUSDT": 2}), streams) is None  # older than kept
    assert market.replay(protocol.Since(42, {"trades:BTCUSDT": 9}), streams) is None  # ahead of the server
    assert market.replay(protocol.Since(42, {}), streams) is None  # a stream it never had


def test_state_messages_conflate_and_trades_do_not() -> None:
    market = Market(["BTCUSDT"])
    out = market.apply([trade(1, 100.0, at=T0), Book("BTCUSDT", ((99.0, 1.0),), ((101.0, 1.0),), T0)], T0)
    out += market.apply([trade(2, 100.0, at=T0 + 1_000)], T0 + 1_000)
    classes = {(o.message["type"], o.message.get("data", {}).get("closed")): o.conflate for o in out}
    assert classes == {("trade", None): False, ("book", None): True, ("market_update", None): True,
                       ("candle", False): True, ("candle", True): False}
