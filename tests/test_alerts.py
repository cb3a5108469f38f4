"""Alert rules on known price series, their validation and caps; chart annotations' validation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bixweb import alerts
from bixweb.alerts import (
    MAX_NOTE_CHARS,
    MAX_RULES,
    MAX_RULES_PER_OWNER,
    MAX_WINDOW_S,
    AlertBook,
    AlertHistory,
    Rule,
    rule_from_request,
)
from bixweb.annotations import MAX_ANNOTATIONS_PER_SYMBOL, Annotation, annotation_from_request
from bixweb.errors import ProtocolError
from bixweb.market import Market
from bixweb.model import Trade

T0 = 1_764_158_400_000
SYMBOLS = ["BTCUSDT", "ETHUSDT"]


def cross(
    condition: str = "above", level: float = 100.0, *, repeat: bool = False, id: str = "r1", owner: str = "bot"
) -> Rule:
    return Rule(id, "BTCUSDT", condition, level=level, repeat=repeat, owner=owner)  # type: ignore[arg-type]


def move(
    pct: float = 2.0, window_s: float = 300.0, direction: str = "any", *, repeat: bool = False, id: str = "m1"
) -> Rule:
    return Rule(
        id,
        "BTCUSDT",
        "move",
        pct=pct,
        window_s=window_s,
        direction=direction,  # type: ignore[arg-type]
        repeat=repeat,
        owner="bot",
    )


def fired_at(book: AlertBook, prices: Sequence[float], *, step_ms: int = 1_000, start: int = T0) -> list[int]:
    """The indexes of ``prices`` (one per ``step_ms``) at which some rule fired."""
    hits = []
    for n, price in enumerate(prices):
        if book.observe("BTCUSDT", price, start + n * step_ms, n + 1).fired:
            hits.append(n)
    return hits


# -- crossing -----------------------------------------------------------------


def test_above_fires_when_the_price_crosses_up_through_the_level() -> None:
    assert fired_at(AlertBook([cross("above", repeat=True)]), [99, 99.5, 100, 101, 99, 100.5]) == [2, 5]


def test_below_fires_when_the_price_crosses_down_through_the_level() -> None:
    assert fired_at(AlertBook([cross("below", repeat=True)]), [101, 100.5, 100, 99, 101, 99.5]) == [2, 5]


def test_a_one_shot_rule_fires_once_and_leaves_the_book() -> None:
    book = AlertBook([cross("above"), cross("above", 200.0, id="r2")])
    book.observe("BTCUSDT", 99.0, T0, 1)
    result = book.observe("BTCUSDT", 101.0, T0 + 1_000, 2)
    assert [a.rule_id for a in result.fired] == ["r1"] and result.finished == ("r1",)
    assert [r.id for r in book.rules()] == ["r2"]
    assert fired_at(book, [99, 101, 99, 101], start=T0 + 2_000) == []


def test_an_alert_carries_its_rule_price_time_and_seq() -> None:
    rule = Rule("r1", "BTCUSDT", "above", level=100.0, note="breakout", owner="page-1", created_ms=T0 - 5)
    book = AlertBook([rule])
    book.observe("BTCUSDT", 99.0, T0, 7)
    (alert,) = book.observe("BTCUSDT", 100.25, T0 + 250, 8).fired
    assert (alert.rule_id, alert.owner, alert.symbol, alert.condition, alert.level, alert.note) == (
        "r1",
        "page-1",
        "BTCUSDT",
        "above",
        100.0,
        "breakout",
    )
    assert (alert.price, alert.time_ms, alert.seq, alert.reference, alert.change_pct) == (
        100.25,
        T0 + 250,
        8,
        None,
        None,
    )
    assert alert.id == f"r1:{T0 + 250}:8"


def test_a_flat_price_sitting_at_the_level_fires_once() -> None:
    assert fired_at(AlertBook([cross("above", repeat=True)]), [99, 100, 100, 100, 100]) == [1]
    assert fired_at(AlertBook([cross("below", repeat=True)]), [101, 100, 100, 100, 100]) == [1]


def test_a_repeating_cross_rearms_only_after_the_price_went_back_to_the_other_side() -> None:
    # 100 -> 100.5 -> 100 -> 100.2 stays at or above the level: no new crossing until 99.9.
    prices = [99, 100, 100.5, 100, 100.2, 99.9, 100]
    assert fired_at(AlertBook([cross("above", repeat=True)]), prices) == [1, 6]


def test_the_first_observation_only_arms_a_rule() -> None:
    book = AlertBook([cross("above")])
    assert fired_at(book, [105, 106, 99, 101]) == [3]


def test_a_rule_added_after_a_price_compares_with_that_price() -> None:
    book = AlertBook()
    book.observe("BTCUSDT", 99.0, T0, 1)
    book.add(cross("above"))
    assert [a.price for a in book.observe("BTCUSDT", 101.0, T0 + 1_000, 2).fired] == [101.0]
    book.add(cross("above", id="r2"))  # the last price, 101, is past the level already
    assert not book.observe("BTCUSDT", 102.0, T0 + 2_000, 3).fired


def test_prices_that_are_not_positive_and_finite_are_ignored() -> None:
    book = AlertBook([cross("below", repeat=True)])
    assert fired_at(book, [101, float("nan"), 0.0, -5.0, float("inf"), 101]) == []


def test_other_symbols_do_not_move_a_rule() -> None:
    book = AlertBook([cross("above")])
    book.observe("BTCUSDT", 99.0, T0, 1)
    assert not book.observe("ETHUSDT", 3_000.0, T0 + 1, 1).fired
    assert book.observe("BTCUSDT", 100.0, T0 + 2, 2).fired


def test_rules_are_listed_in_order_by_owner_and_removed_by_id() -> None:
    eth = Rule("d", "ETHUSDT", "below", level=3_000.0, owner="x")
    book = AlertBook([cross(id="a", owner="x"), eth, cross(id="b", owner="y"), move(id="c")])
    assert [r.id for r in book.rules()] == ["a", "d", "b", "c"]
    assert [r.id for r in book.rules("x")] == ["a", "d"]
    assert [r.id for r in book.rules("y")] == ["b"]
    removed = book.remove("b")
    assert removed is not None and removed.id == "b"
    assert book.remove("b") is None and len(book) == 3
    with pytest.raises(ValueError, match="already"):
        book.add(cross(id="a"))


def test_a_rule_with_fields_that_do_not_fit_its_condition_cannot_be_made() -> None:
    with pytest.raises(ValueError):
        Rule("r", "BTCUSDT", "above")
    with pytest.raises(ValueError):
        Rule("r", "BTCUSDT", "move", level=1.0, pct=2.0, window_s=60.0)
    with pytest.raises(ValueError):
        Rule("r", "BTCUSDT", "sideways", level=1.0)  # type: ignore[arg-type]


# -- moves within a window ----------------------------------------------------


def test_a_move_of_pct_within_the_window_fires_either_way() -> None:
    book = AlertBook([move(2.0, 300.0, repeat=True)])
    assert fired_at(book, [100, 101, 102], step_ms=60_000) == [2]
    (alert,) = book.observe("BTCUSDT", 99.9, T0 + 180_000, 4).fired
    assert alert.reference == 102 and round(alert.change_pct or 0, 4) == -2.0588


def test_the_move_is_measured_from_the_low_or_high_of_the_window() -> None:
    book = AlertBook([move(2.0, 300.0)])
    book.observe("BTCUSDT", 100.0, T0, 1)
    book.observe("BTCUSDT", 98.5, T0 + 10_000, 2)  # -1.5 %
    (alert,) = book.observe("BTCUSDT", 100.5, T0 + 20_000, 3).fired  # +2.03 % from the low
    assert alert.reference == 98.5 and alert.pct == 2.0 and alert.window_s == 300.0


def test_a_slow_drift_longer_than_the_window_does_not_fire() -> None:
    # 0.9 % a minute: 2 % takes more than the 2-minute window.
    assert fired_at(AlertBook([move(2.0, 120.0)]), [100, 100.9, 101.8, 102.7, 103.6], step_ms=60_000) == []
    assert fired_at(AlertBook([move(2.0, 180.0)]), [100, 100.9, 101.8, 102.7, 103.6], step_ms=60_000) == [3]


def test_a_price_older_than_the_window_is_no_reference() -> None:
    book = AlertBook([move(2.0, 300.0)])
    book.observe("BTCUSDT", 100.0, T0, 1)
    assert not book.observe("BTCUSDT", 103.0, T0 + 300_001, 2).fired
    assert book.observe("BTCUSDT", 100.0, T0 + 300_002, 3).fired  # -2.9 % from 103, 1 ms ago


def test_a_move_rule_with_a_direction_ignores_the_other_one() -> None:
    down = [100.0, 97.9]
    up = [100.0, 102.1]
    assert fired_at(AlertBook([move(2.0, 60.0, "up")]), down) == []
    assert fired_at(AlertBook([move(2.0, 60.0, "up")]), up) == [1]
    assert fired_at(AlertBook([move(2.0, 60.0, "down")]), up) == []
    book = AlertBook([move(2.0, 60.0, "down")])
    assert fired_at(book, down) == [1]
    assert book.rules() == []  # one-shot: it fired and left


def test_a_move_that_was_over_before_the_rule_existed_does_not_fire() -> None:
    book = AlertBook()
    book.observe("BTCUSDT", 100.0, T0, 1)
    book.observe("BTCUSDT", 103.0, T0 + 10_000, 2)
    book.add(move(2.0, 300.0))
    assert not book.observe("BTCUSDT", 103.0, T0 + 20_000, 3).fired
    (alert,) = book.observe("BTCUSDT", 105.1, T0 + 30_000, 4).fired
    assert alert.reference == 103.0


def test_a_move_rule_added_after_a_price_measures_from_that_price() -> None:
    book = AlertBook()
    book.observe("BTCUSDT", 100.0, T0, 1)
    book.add(move(2.0, 300.0))
    assert [a.reference for a in book.observe("BTCUSDT", 102.0, T0 + 1_000, 2).fired] == [100.0]


def test_the_prices_kept_for_move_rules_stay_within_the_window() -> None:
    book = AlertBook([move(50.0, 10.0)])
    for n in range(5_000):  # rising: every price stays a candidate low until it leaves the window
        book.observe("BTCUSDT", 100.0 + n / 100, T0 + n * 1_000, n)
    assert book.kept_prices("BTCUSDT") < 2 * 1_100
    book.remove("m1")
    assert book.kept_prices("BTCUSDT") == 0


def test_a_market_going_one_way_for_hours_keeps_at_most_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alerts, "MAX_EXTREMES", 100)
    book = AlertBook([move(50.0, MAX_WINDOW_S)])
    for n in range(5_000):
        book.observe("BTCUSDT", 100.0 + n / 100, T0 + n * 1_000, n)
    assert book.kept_prices("BTCUSDT") < 1_500  # 100 candidates, and those not compacted away yet


def test_a_repeating_move_starts_over_at_the_price_that_fired_it() -> None:
    book = AlertBook([move(2.0, 300.0, "up", repeat=True)])
    # fires at 102 (from 100); 102.5 and a dip to 101 then 102.9 are under 2 % from 102 and 101;
    # 103.1 is 2.08 % above the low since the alert, 101.
    prices = [100, 101, 102, 102, 102.5, 101, 102.9, 103.1]
    assert fired_at(book, prices) == [2, 7]


def test_a_flat_price_after_a_move_does_not_fire_again() -> None:
    assert fired_at(AlertBook([move(2.0, 300.0, repeat=True)]), [100, 102, 102, 102, 102]) == [1]


def test_the_window_follows_the_largest_move_rule_of_the_symbol() -> None:
    book = AlertBook([move(2.0, 10.0, id="short", repeat=True), move(2.0, 600.0, id="long", repeat=True)])
    book.observe("BTCUSDT", 100.0, T0, 1)
    hits = book.observe("BTCUSDT", 102.0, T0 + 300_000, 2).fired
    assert [a.rule_id for a in hits] == ["long"]
    book.remove("long")
    book.observe("BTCUSDT", 100.0, T0 + 300_001, 3)  # -1.96 %: nothing
    assert [a.rule_id for a in book.observe("BTCUSDT", 102.0, T0 + 300_002, 4).fired] == ["short"]


def reference_move(prices: Sequence[tuple[int, float]], pct: float, window_ms: int, direction: str) -> list[int]:
    """Brute force: every price since the rule armed (or last fired) and within the window."""
    hits: list[int] = []
    armed = prices[0][0]
    seen: list[tuple[int, float]] = []
    for n, (time, price) in enumerate(prices):
        seen.append((time, price))
        window = [p for t, p in seen if t >= max(armed, time - window_ms)]
        low, high = min(window), max(window)
        up = price - low >= low * pct / 100 and direction != "down"
        down = high - price >= high * pct / 100 and direction != "up"
        if up or down:
            hits.append(n)
            armed = time
    return hits


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.tuples(st.integers(0, 30_000), st.floats(-3.0, 3.0)), min_size=1, max_size=120),
    pct=st.sampled_from([0.5, 1.0, 2.0, 5.0]),
    window_s=st.sampled_from([1.0, 10.0, 60.0, 300.0]),
    direction=st.sampled_from(["up", "down", "any"]),
)
def test_move_rules_agree_with_a_brute_force_reading(
    steps: list[tuple[int, float]], pct: float, window_s: float, direction: str
) -> None:
    prices: list[tuple[int, float]] = []
    time, price = T0, 100.0
    for gap, change_pct in steps:
        time, price = time + gap, round(price * (1 + change_pct / 100), 2)
        prices.append((time, price))
    book = AlertBook([move(pct, window_s, direction, repeat=True)])
    hits = [n for n, (t, p) in enumerate(prices) if book.observe("BTCUSDT", p, t, n).fired]
    assert hits == reference_move(prices, pct, round(window_s * 1000), direction)


def test_the_book_reads_ticker_updates_from_the_market() -> None:
    market = Market(["BTCUSDT"])
    book = AlertBook([cross("above", 100.0)])
    book.observe_updates(market.apply([Trade("BTCUSDT", 1, 99.0, 1.0, "buy", T0)], T0))
    out = market.apply([Trade("BTCUSDT", 2, 100.5, 1.0, "buy", T0 + 100)], T0 + 120)
    result = book.observe_updates(out)
    (update,) = [o.message for o in out if o.message["type"] == "market_update"]
    assert [(a.price, a.time_ms, a.seq) for a in result.fired] == [(100.5, T0 + 100, update["seq"])]
    assert result.finished == ("r1",)


def test_the_history_keeps_the_newest_alerts() -> None:
    book = AlertBook([cross("above", repeat=True, owner="x"), cross("above", 100.0, repeat=True, id="r2", owner="y")])
    history = AlertHistory(limit=3)
    for n, price in enumerate([99, 101, 99, 101, 99, 101]):
        history.add(book.observe("BTCUSDT", price, T0 + n, n).fired)
    assert len(history) == 3 and history.limit == 3
    assert [(a.rule_id, a.seq) for a in history] == [("r2", 3), ("r1", 5), ("r2", 5)]
    assert [a.seq for a in history.alerts("x")] == [5]


# -- requests -----------------------------------------------------------------


def request(**fields: Any) -> dict[str, Any]:
    return {"symbol": "BTCUSDT", "condition": "above", "level": 100_000, **fields}


def make_rule(fields: dict[str, Any], existing: Sequence[Rule] = (), owner: str = "bot") -> Rule:
    return rule_from_request(
        fields, symbols=SYMBOLS, owner=owner, existing=existing, new_id="new", now_ms=T0, request_id=7
    )


def test_a_bot_request_makes_a_rule() -> None:
    rule = make_rule(request(note="  breakout ", repeat=True))
    assert rule == Rule(
        "new", "BTCUSDT", "above", level=100_000.0, note="breakout", repeat=True, owner="bot", created_ms=T0
    )


def test_a_dashboard_form_of_strings_makes_a_rule() -> None:
    fields = {
        "symbol": "ETHUSDT",
        "condition": "move",
        "level": "",
        "pct": "2.5",
        "window_s": "300",
        "direction": "down",
        "note": "",
        "repeat": "on",
        "headers": {"HX-Request": "true"},
    }
    rule = make_rule(fields)
    assert (rule.condition, rule.pct, rule.window_s, rule.direction, rule.repeat, rule.level) == (
        "move",
        2.5,
        300.0,
        "down",
        True,
        None,
    )
    assert make_rule({**fields, "direction": "", "repeat": "0"}).direction == "any"


@pytest.mark.parametrize(
    "fields",
    [
        request(level="1e-8", note="x" * MAX_NOTE_CHARS, repeat=False, direction="any"),
        request(condition="move", level=None, pct=100, window_s=1),
        request(condition="move", level=None, pct=0.01, window_s=MAX_WINDOW_S),
    ],
)
def test_values_at_the_bounds_are_taken(fields: dict[str, Any]) -> None:
    make_rule(fields)


MOVE: dict[str, Any] = {"symbol": "BTCUSDT", "condition": "move", "pct": 2, "window_s": 300}


@pytest.mark.parametrize(
    ("fields", "code", "path"),
    [
        (request(symbol="DOGEBTC"), "unknown_symbol", "$.symbol"),
        ({"condition": "above", "level": 1}, "invalid_message", "$.symbol"),
        (request(symbol=["BTCUSDT"]), "invalid_message", "$.symbol"),
        (request(condition="sideways"), "invalid_message", "$.condition"),
        ({"symbol": "BTCUSDT", "level": 1}, "invalid_message", "$.condition"),
        (request(level=None), "invalid_message", "$.level"),
        (request(level="abc"), "invalid_message", "$.level"),
        (request(level="1_000"), "invalid_message", "$.level"),
        (request(level=-5), "invalid_message", "$.level"),
        (request(level=0), "invalid_message", "$.level"),
        (request(level=True), "invalid_message", "$.level"),
        (request(level="nan"), "invalid_message", "$.level"),
        (request(level="1e999"), "invalid_message", "$.level"),
        (request(level=10**400), "invalid_message", "$.level"),
        (request(level=[1]), "invalid_message", "$.level"),
        (request(pct=2), "invalid_message", "$.pct"),
        (request(direction="up"), "invalid_message", "$.direction"),
        ({**MOVE, "level": 5}, "invalid_message", "$.level"),
        ({**MOVE, "pct": 0}, "invalid_message", "$.pct"),
        ({**MOVE, "pct": 100.5}, "invalid_message", "$.pct"),
        ({**MOVE, "pct": "two"}, "invalid_message", "$.pct"),
        ({**MOVE, "window_s": 0.5}, "invalid_message", "$.window_s"),
        ({**MOVE, "window_s": MAX_WINDOW_S + 1}, "invalid_message", "$.window_s"),
        ({**MOVE, "window_s": None}, "invalid_message", "$.window_s"),
        ({**MOVE, "direction": "sideways"}, "invalid_message", "$.direction"),
        (request(note="x" * (MAX_NOTE_CHARS + 1)), "invalid_message", "$.note"),
        (request(note="two\nlines"), "invalid_message", "$.note"),
        (request(note=5), "invalid_message", "$.note"),
        (request(repeat="maybe"), "invalid_message", "$.repeat"),
        (request(repeat=1), "invalid_message", "$.repeat"),
    ],
)
def test_a_bad_request_is_refused_with_its_code_and_path(fields: dict[str, Any], code: str, path: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        make_rule(fields)
    assert (caught.value.code, caught.value.path, caught.value.request_id) == (code, path, 7)


def many(count: int, owner: str) -> list[Rule]:
    return [Rule(f"{owner}-{n}", "BTCUSDT", "above", level=1.0 + n, owner=owner) for n in range(count)]


def test_an_owner_may_have_so_many_rules() -> None:
    full = many(MAX_RULES_PER_OWNER, "bot")
    make_rule(request(), full[1:])
    make_rule(request(), full, owner="page-1")
    with pytest.raises(ProtocolError) as caught:
        make_rule(request(), full)
    assert (caught.value.code, caught.value.path) == ("too_many_rules", "$")


def test_there_are_so_many_rules_in_all() -> None:
    full = [rule for n in range(MAX_RULES // 10) for rule in many(10, f"owner-{n}")]
    make_rule(request(), full[1:], owner="new")
    with pytest.raises(ProtocolError) as caught:
        make_rule(request(), full, owner="new")
    assert (caught.value.code, caught.value.path) == ("too_many_rules", "$")


# -- annotations --------------------------------------------------------------


def make_annotation(fields: dict[str, Any], existing: Sequence[Annotation] = ()) -> Annotation:
    return annotation_from_request(
        fields, symbols=SYMBOLS, owner="page-1", existing=existing, new_id="a1", now_ms=T0, request_id="req"
    )


def test_an_annotation_request_makes_an_annotation() -> None:
    assert make_annotation({"symbol": "BTCUSDT", "price": "95012.5", "label": " support "}) == Annotation(
        "a1", "BTCUSDT", 95012.5, "support", "page-1", T0
    )
    assert make_annotation({"symbol": "BTCUSDT", "price": 1, "label": "x" * 60}).label == "x" * 60


@pytest.mark.parametrize(
    ("fields", "code", "path"),
    [
        ({"symbol": "DOGEBTC", "price": 1}, "unknown_symbol", "$.symbol"),
        ({"symbol": "BTCUSDT"}, "invalid_message", "$.price"),
        ({"symbol": "BTCUSDT", "price": -1}, "invalid_message", "$.price"),
        ({"symbol": "BTCUSDT", "price": "inf"}, "invalid_message", "$.price"),
        ({"symbol": "BTCUSDT", "price": 1, "label": "x" * 61}, "invalid_message", "$.label"),
    ],
)
def test_a_bad_annotation_is_refused_with_its_code_and_path(fields: dict[str, Any], code: str, path: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        make_annotation(fields)
    assert (caught.value.code, caught.value.path, caught.value.request_id) == (code, path, "req")


def test_a_chart_has_so_many_annotations() -> None:
    full = [Annotation(f"a{n}", "BTCUSDT", 1.0 + n, "", "page-1", T0) for n in range(MAX_ANNOTATIONS_PER_SYMBOL)]
    make_annotation({"symbol": "ETHUSDT", "price": 1}, full)
    make_annotation({"symbol": "BTCUSDT", "price": 1}, full[1:])
    with pytest.raises(ProtocolError) as caught:
        make_annotation({"symbol": "BTCUSDT", "price": 1}, full)
    assert (caught.value.code, caught.value.path) == ("too_many_annotations", "$")
