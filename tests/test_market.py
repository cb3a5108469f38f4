"""Market state from known events: candles, 24 h statistics, seq, snapshots."""

from __future__ import annotations

from collections import Counter

from bixweb import protocol
from bixweb.market import DAY_MS, Market
from bixweb.model import Book, Candle, CandleUpdate, History, Interval, TickerStats, Trade

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
    assert closed[0]["data"] == {
        "start": T0,
        "open": 100.0,
        "high": 105.0,
        "low": 98.0,
        "close": 98.0,
        "volume": 4.0,
        "closed": True,
    }
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
    snap = market.snapshot(
        [("ticker", "BTCUSDT"), ("trades", "BTCUSDT"), ("candles_1s", "BTCUSDT"), ("book", "ETHUSDT")], T0 + 5000
    )
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
    assert classes == {
        ("trade", None): False,
        ("book", None): True,
        ("market_update", None): True,
        ("candle", False): True,
        ("candle", True): False,
    }


# -- an exchange's own statistics and candles ---------------------------------------------------


def stats(price: float = 100.0, at: int = T0, **values: float) -> TickerStats:
    fields = {
        "bid": 99.0,
        "ask": 101.0,
        "open": 80.0,
        "high": 120.0,
        "low": 70.0,
        "volume": 5000.0,
        "quote_volume": 450_000.0,
        **values,
    }
    return TickerStats("BTCUSDT", price=price, time=at, **fields)


def minute(start: int, close: float, volume: float, closed: bool = False) -> CandleUpdate:
    return CandleUpdate("BTCUSDT", Interval.M1, Candle(start, 90.0, 130.0, 60.0, close, volume, closed), start + 1)


def test_exchange_statistics_replace_the_derived_ones_and_stretch_to_the_last_trade() -> None:
    market = Market(["BTCUSDT"])
    out = market.apply([stats(at=T0)], T0)
    (update,) = [o.message for o in out]
    assert update["type"] == "market_update" and protocol.schemas().errors("server", update) == []
    assert update["data"] == {
        "price": 100.0,
        "bid": 99.0,
        "ask": 101.0,
        "open": 80.0,
        "high": 120.0,
        "low": 70.0,
        "volume": 5000.0,
        "quote_volume": 450_000.0,
        "change": 20.0,
        "change_pct": 25.0,
        "time": T0,
    }
    market.apply([trade(1, 125.0, at=T0 + 10), Book("BTCUSDT", ((124.0, 1.0),), ((126.0, 1.0),), T0 + 11)], T0 + 11)
    ticker = market.states["BTCUSDT"].ticker()
    assert (ticker.price, ticker.high, ticker.low, ticker.bid, ticker.ask) == (125.0, 125.0, 70.0, 124.0, 126.0)
    assert ticker.volume == 5000.0  # the exchange's count, not ours
    market.apply([stats(price=119.0, at=T0 + 5)], T0 + 12)  # older than the last trade: its price does not win
    assert market.states["BTCUSDT"].price == 125.0
    market.apply([stats(price=118.0, at=T0 + 20, high=126.0)], T0 + 20)
    assert market.states["BTCUSDT"].ticker().price == 118.0 and market.states["BTCUSDT"].direction == "down"


def test_an_exchange_candle_replaces_the_forming_one_and_closes_it() -> None:
    market = Market(["BTCUSDT"])
    market.apply([trade(1, 100.0, 2.0, T0 + 5_000)], T0 + 5_000)
    out = market.apply([minute(T0, 110.0, 33.0)], T0 + 6_000)
    candles = [o.message for o in out if o.message["type"] == "candle"]
    assert [(c["interval"], c["data"]["volume"], c["data"]["closed"]) for c in candles] == [("1m", 33.0, False)]
    market.apply([trade(2, 111.0, 1.0, T0 + 7_000)], T0 + 7_000)
    assert market.states["BTCUSDT"].forming[Interval.M1] == Candle(T0, 90.0, 130.0, 60.0, 111.0, 34.0)
    out = market.apply([minute(T0, 112.0, 40.0, closed=True)], T0 + 60_500)
    (closed,) = [o.message for o in out if o.message["type"] == "candle"]
    assert closed["data"]["closed"] and closed["data"]["volume"] == 40.0 and not out[0].conflate
    state = market.states["BTCUSDT"]
    assert state.forming[Interval.M1] is None and state.closed[Interval.M1][-1].volume == 40.0
    market.apply([trade(3, 113.0, 1.0, T0 + 59_999)], T0 + 60_600)  # late: the closed candle counts it already
    assert state.forming[Interval.M1] is None and len(state.closed[Interval.M1]) == 1
    for o in out:
        assert protocol.schemas().errors("server", o.message) == []


def test_an_exchange_candle_of_a_later_minute_closes_ours_and_a_late_close_corrects_it() -> None:
    market = Market(["BTCUSDT"])
    market.apply([trade(1, 100.0, 2.0, T0 + 5_000)], T0 + 5_000)
    out = market.apply([minute(T0 + 60_000, 101.0, 1.0)], T0 + 61_000)
    assert [
        (o.message["data"]["start"], o.message["data"]["closed"]) for o in out if o.message["type"] == "candle"
    ] == [(T0, True), (T0 + 60_000, False)]
    out = market.apply([minute(T0, 100.5, 2.5, closed=True)], T0 + 61_500)  # the exchange's word on that minute
    assert [
        (o.message["data"]["start"], o.message["data"]["volume"]) for o in out if o.message["type"] == "candle"
    ] == [(T0, 2.5)]
    assert market.states["BTCUSDT"].closed[Interval.M1][-1].volume == 2.5
    out = market.apply([minute(T0, 100.5, 9.0)], T0 + 62_000)  # a forming update of a minute closed already
    assert [o.message["type"] for o in out] == ["market_update"]
    assert market.states["BTCUSDT"].closed[Interval.M1][-1].volume == 2.5


def test_an_exchange_candle_changes_no_exchange_ticker() -> None:
    market = Market(["BTCUSDT"])
    market.apply([stats()], T0)
    out = market.apply([minute(T0, 100.0, 1.0)], T0 + 1)
    assert [o.message["type"] for o in out] == ["candle"]


def test_a_recorded_history_replayed_later_keeps_its_24h_window() -> None:
    minutes = tuple(Candle(T0 - (1440 - n) * 60_000, 100.0, 110.0, 90.0, 100.0, 2.0, True) for n in range(1440))
    live, replayed = Market(["BTCUSDT"]), Market(["BTCUSDT"])
    live.apply([History("BTCUSDT", minutes)], T0 + 1_234)
    replayed.apply([History("BTCUSDT", minutes)], T0 + 5 * DAY_MS)
    assert live.states["BTCUSDT"].ticker() == replayed.states["BTCUSDT"].ticker()
    assert replayed.states["BTCUSDT"].ticker().volume == 1439 * 2.0
