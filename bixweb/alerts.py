"""Price alerts as values: rules, their validation, and the evaluator.

A :class:`Rule` watches one symbol for a condition:

``above``
    the price crosses up through ``level``: previous < level <= current.
``below``
    the price crosses down through ``level``: previous > level >= current.
``move``
    the price has moved by ``pct`` percent or more within the trailing
    ``window_s`` seconds: up from the lowest price of the window, down from
    the highest, or either (``direction`` ``up``, ``down``, ``any``).

An :class:`AlertBook` (one per process that owns the market) is told every
ticker update with :meth:`AlertBook.observe` and returns the alerts that
fired. Nothing here reads the clock or does I/O: the caller passes the
market time of each price, and the ids and times of new rules.

When a rule fires, and when it may fire again:

* Crossing needs a previous price: the book's last price of the symbol when
  the rule is added, else its first observation after, which only arms it
  (so rules loaded at start-up do not report a crossing made while the
  server was down). A price already at or past the level does not fire; a
  flat price at the level fires once, when it gets there.
* A one-shot rule fires once and leaves the book (``Evaluation.finished``).
* A repeating cross rule fires again only after the price has gone back to
  the other side of the level and crossed it anew.
* A ``move`` rule measures only prices seen since it was armed (it does not
  fire for a move that was over before it existed); when a repeating one
  fires, its measurement starts over at the price that fired it, so the
  next alert needs a new move of ``pct`` after that one.

Bounds of a request: see the constants below; :func:`rule_from_request`
refuses anything else with :class:`~bixweb.errors.ProtocolError`.
"""

from __future__ import annotations

import math
import re
import unicodedata
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, cast

from bixweb.errors import ProtocolError

if TYPE_CHECKING:
    from bixweb.market import Outgoing

Condition = Literal["above", "below", "move"]
Direction = Literal["up", "down", "any"]
CONDITIONS: Final[tuple[Condition, ...]] = ("above", "below", "move")
DIRECTIONS: Final[tuple[Direction, ...]] = ("up", "down", "any")

MAX_NOTE_CHARS: Final = 200
MIN_WINDOW_S: Final = 1.0
MAX_WINDOW_S: Final = 7 * 86_400.0
"""A week: the trailing prices a symbol keeps are bounded by the largest window of its rules."""
MAX_PCT: Final = 100.0
MAX_RULES_PER_OWNER: Final = 50
MAX_RULES: Final = 1_000
HISTORY_LIMIT: Final = 200
MAX_EXTREMES: Final = 100_000
"""Candidate lows (and highs) kept per symbol; only a market going one way for hours comes near it."""

TOO_MANY_RULES: Final = "too_many_rules"


@dataclass(frozen=True, slots=True)
class Rule:
    """One alert rule; ``level`` for ``above``/``below``, ``pct`` and ``window_s`` for ``move``."""

    id: str
    symbol: str
    condition: Condition
    level: float | None = None
    pct: float | None = None
    window_s: float | None = None
    direction: Direction = "any"
    """Of a ``move``; a cross rule's direction is its condition, and this stays ``any``."""
    note: str = ""
    repeat: bool = False
    owner: str = ""
    """Who made it: a bot's session or token name, or a dashboard page id."""
    created_ms: int = 0

    def __post_init__(self) -> None:
        # Rules also come back from a store: hold them to the shape the evaluator relies on.
        if self.condition not in CONDITIONS or self.direction not in DIRECTIONS:
            raise ValueError(f"rule {self.id!r}: condition {self.condition!r}, direction {self.direction!r}")
        if self.condition == "move":
            if self.pct is None or self.window_s is None or self.level is not None:
                raise ValueError(f"rule {self.id!r}: a move needs pct and window_s, and no level")
        elif self.level is None or self.pct is not None or self.window_s is not None or self.direction != "any":
            raise ValueError(f"rule {self.id!r}: a cross needs a level, and no pct, window_s or direction")


@dataclass(frozen=True, slots=True)
class Alert:
    """A rule that fired: what it was, and the price, market time and ticker ``seq`` that fired it."""

    id: str
    rule_id: str
    owner: str
    symbol: str
    condition: Condition
    level: float | None
    pct: float | None
    window_s: float | None
    direction: Direction
    note: str
    price: float
    reference: float | None
    """For a ``move``: the low (up) or high (down) of the window the move is measured from."""
    time_ms: int
    seq: int

    @property
    def change_pct(self) -> float | None:
        """For a ``move``: how far the price moved, in percent (negative: down)."""
        if self.reference is None:
            return None
        return 100.0 * (self.price - self.reference) / self.reference


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What one observation caused: the alerts fired, and the one-shot rules that left the book."""

    fired: tuple[Alert, ...] = ()
    finished: tuple[str, ...] = ()
    """Rule ids to delete from the store."""

    def __add__(self, other: Evaluation) -> Evaluation:
        return Evaluation(self.fired + other.fired, self.finished + other.finished)


# -- requests ---------------------------------------------------------------

_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_TRUE = ("true", "on", "1")
_FALSE = ("false", "off", "0")


class RequestFields:
    """Reads the fields of one request, bots' JSON or a dashboard form's strings alike.

    Each reader refuses a bad field with ``invalid_message`` and its JSON
    path (``$.level``). A field that is missing, ``null`` or ``""`` is absent.
    """

    def __init__(self, fields: Mapping[str, Any], *, request_id: str | int | None = None) -> None:
        self.fields = fields
        self.request_id = request_id

    def refuse(self, name: str | None, message: str, code: str = "invalid_message") -> ProtocolError:
        path = "$" if name is None else f"$.{name}"
        return ProtocolError(code, message, request_id=self.request_id, path=path)

    def present(self, name: str) -> bool:
        return self.fields.get(name) not in (None, "")

    def absent(self, names: Iterable[str], reason: str) -> None:
        """Refuse the first of ``names`` that is present."""
        for name in names:
            if self.present(name):
                raise self.refuse(name, f"{name} {reason}")

    def symbol(self, symbols: Sequence[str], name: str = "symbol") -> str:
        value = self.fields.get(name)
        if not isinstance(value, str) or not value:
            raise self.refuse(name, f"{name} is required, a string")
        if value not in symbols:
            raise self.refuse(name, f"unknown symbol {value[:32]!r}", "unknown_symbol")
        return value

    def choice(self, name: str, options: Sequence[str], default: str | None = None) -> str:
        value = self.fields.get(name) if self.present(name) else default
        if value not in options:
            raise self.refuse(name, f"{name} is one of {', '.join(options)}")
        return cast(str, value)

    def number(
        self, name: str, *, above: float | None = None, at_least: float | None = None, at_most: float | None = None
    ) -> float:
        """A finite number within the bounds, from a JSON number or a decimal string."""
        bounds = " and ".join(
            text
            for text in (
                f"> {above:g}" if above is not None else "",
                f">= {at_least:g}" if at_least is not None else "",
                f"<= {at_most:g}" if at_most is not None else "",
            )
            if text
        )
        wanted = f"{name} is required, a number {bounds}".rstrip()
        value = self.fields.get(name)
        if isinstance(value, str) and len(value) <= 32 and _DECIMAL.fullmatch(value.strip()):
            value = value.strip()
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise self.refuse(name, wanted)
        try:
            number = float(value)
        except OverflowError:
            raise self.refuse(name, wanted) from None
        if (
            not math.isfinite(number)
            or (above is not None and number <= above)
            or (at_least is not None and number < at_least)
            or (at_most is not None and number > at_most)
        ):
            raise self.refuse(name, wanted)
        return number

    def text(self, name: str, limit: int) -> str:
        """One line of at most ``limit`` characters, stripped; ``""`` when absent."""
        value = self.fields.get(name)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.refuse(name, f"{name} is a string")
        value = value.strip()
        if len(value) > limit:
            raise self.refuse(name, f"{name} is at most {limit} characters")
        if any(unicodedata.category(c) == "Cc" for c in value):
            raise self.refuse(name, f"{name} is one line without control characters")
        return value

    def flag(self, name: str) -> bool:
        """``true``/``false``, or a form's ``on``/``true``/``1`` and ``off``/``false``/``0``; absent is false."""
        value = self.fields.get(name)
        if isinstance(value, bool):
            return value
        if value is None or value == "":
            return False
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise self.refuse(name, f"{name} is true or false")


def rule_from_request(
    fields: Mapping[str, Any],
    *,
    symbols: Sequence[str],
    owner: str,
    existing: Sequence[Rule],
    new_id: str,
    now_ms: int,
    request_id: str | int | None = None,
    max_per_owner: int = MAX_RULES_PER_OWNER,
    max_total: int = MAX_RULES,
) -> Rule:
    """The rule a client asks for, or :class:`ProtocolError`; nothing is stored here.

    Fields: ``symbol``; ``condition`` (``above``, ``below``, ``move``);
    ``level`` (> 0) for a cross, ``pct`` (> 0, <= 100), ``window_s`` (1 s to
    7 days) and ``direction`` (``up``, ``down``, ``any``: the default) for a
    move; ``note`` (<= 200 characters) and ``repeat`` (default false) for
    both. Fields of the other condition are refused (but ``direction``
    ``any``, a form's default), other keys are the caller's. Codes: ``too_many_rules`` (path ``$``) when ``owner`` has
    ``max_per_owner`` rules among ``existing`` or there are ``max_total``,
    ``unknown_symbol``, else ``invalid_message`` with the field's path.
    """
    read = RequestFields(fields, request_id=request_id)
    if len(existing) >= max_total:
        raise read.refuse(None, f"there are {max_total} alert rules already, the most kept", TOO_MANY_RULES)
    if sum(1 for rule in existing if rule.owner == owner) >= max_per_owner:
        raise read.refuse(
            None, f"you have {max_per_owner} alert rules already, the most allowed; delete one", TOO_MANY_RULES
        )
    symbol = read.symbol(symbols)
    condition = cast(Condition, read.choice("condition", CONDITIONS))
    level = pct = window_s = None
    direction: Direction = "any"
    if condition == "move":
        read.absent(["level"], "is for conditions above and below")
        pct = read.number("pct", above=0.0, at_most=MAX_PCT)
        window_s = read.number("window_s", at_least=MIN_WINDOW_S, at_most=MAX_WINDOW_S)
        direction = cast(Direction, read.choice("direction", DIRECTIONS, "any"))
    else:
        read.absent(["pct", "window_s"], "is for condition move")
        if read.choice("direction", DIRECTIONS, "any") != "any":  # a form may send its default
            raise read.refuse("direction", "direction is for condition move")
        level = read.number("level", above=0.0)
    note = read.text("note", MAX_NOTE_CHARS)
    repeat = read.flag("repeat")
    return Rule(new_id, symbol, condition, level, pct, window_s, direction, note, repeat, owner, now_ms)


# -- evaluation -------------------------------------------------------------


class _Extreme:
    """The lowest (or highest) price since any time within the trailing window, in O(log n).

    A monotonic queue: each kept price is lower (higher) than every price
    after it, so the extreme since ``start`` is the first one kept at or
    after ``start``. Prices that can never be that are dropped on arrival.
    """

    __slots__ = ("low", "times", "prices", "head")

    def __init__(self, *, low: bool) -> None:
        self.low = low
        self.times: list[int] = []
        self.prices: list[float] = []
        self.head = 0
        """Entries before it have left the window; compacted away now and then."""

    def push(self, time_ms: int, price: float) -> None:
        prices = self.prices
        while len(prices) > self.head and (prices[-1] >= price if self.low else prices[-1] <= price):
            prices.pop()
            self.times.pop()
        prices.append(price)
        self.times.append(time_ms)
        if len(prices) - self.head > MAX_EXTREMES:
            self.head += 1

    def trim(self, start_ms: int) -> None:
        self.head = bisect_left(self.times, start_ms, lo=self.head)
        if self.head > 1024 and self.head * 2 > len(self.times):
            del self.times[: self.head], self.prices[: self.head]
            self.head = 0

    def since(self, start_ms: int) -> float:
        """The extreme of the prices at or after ``start_ms``; there is always one: the last pushed."""
        return self.prices[min(bisect_left(self.times, start_ms, lo=self.head), len(self.prices) - 1)]


@dataclass(slots=True)
class _Watch:
    """One symbol: its last price, its rules, and the trailing window its ``move`` rules need."""

    rules: dict[str, Rule] = field(default_factory=dict)
    price: float | None = None
    time_ms: int = 0
    armed_ms: dict[str, int | None] = field(default_factory=dict)
    """Per ``move`` rule: measure prices from here on; None until its first observation."""
    window_ms: int = 0
    lows: _Extreme = field(default_factory=lambda: _Extreme(low=True))
    highs: _Extreme = field(default_factory=lambda: _Extreme(low=False))

    def track(self) -> None:
        """Size the trailing window to the largest of the ``move`` rules; none: keep no prices."""
        window_ms = max((round(r.window_s * 1000) for r in self.rules.values() if r.window_s is not None), default=0)
        if window_ms and not self.window_ms and self.price is not None:
            self.lows.push(self.time_ms, self.price)
            self.highs.push(self.time_ms, self.price)
        elif not window_ms:
            self.lows, self.highs = _Extreme(low=True), _Extreme(low=False)
        self.window_ms = window_ms


class AlertBook:
    """Every rule, evaluated on every ticker update of its symbol (see the module docstring)."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._watches: dict[str, _Watch] = {}
        self._rules: dict[str, Rule] = {}
        """Every rule by id, in the order added."""
        for rule in rules:
            self.add(rule)

    def add(self, rule: Rule) -> None:
        """Watch ``rule`` from the next observation of its symbol on; an id already watched is a ValueError."""
        if rule.id in self._rules:
            raise ValueError(f"rule {rule.id!r} is in the book already")
        watch = self._watches.setdefault(rule.symbol, _Watch())
        watch.rules[rule.id] = self._rules[rule.id] = rule
        if rule.condition == "move":
            watch.armed_ms[rule.id] = watch.time_ms if watch.price is not None else None
            watch.track()

    def remove(self, rule_id: str) -> Rule | None:
        """Stop watching a rule; the rule, or None if it is not in the book."""
        rule = self._rules.pop(rule_id, None)
        if rule is None:
            return None
        watch = self._watches[rule.symbol]
        del watch.rules[rule_id]
        watch.armed_ms.pop(rule_id, None)
        if rule.condition == "move":
            watch.track()
        return rule

    def rules(self, owner: str | None = None) -> list[Rule]:
        """The rules in the order they were added, all or those of ``owner``."""
        return [rule for rule in self._rules.values() if owner is None or rule.owner == owner]

    def __len__(self) -> int:
        return len(self._rules)

    def kept_prices(self, symbol: str) -> int:
        """How many (time, price) pairs the book holds for ``symbol``'s ``move`` rules: its memory, bounded."""
        watch = self._watches.get(symbol)
        return 0 if watch is None else len(watch.lows.times) + len(watch.highs.times)

    def observe(self, symbol: str, price: float, time_ms: int, seq: int) -> Evaluation:
        """Take a ticker's price at market time ``time_ms`` (its ``seq`` goes into the alerts).

        Times that go back are taken as the last time seen; a price that is
        not positive and finite is ignored.
        """
        if not (math.isfinite(price) and price > 0):
            return Evaluation()
        watch = self._watches.setdefault(symbol, _Watch())
        time_ms = max(time_ms, watch.time_ms)
        previous = watch.price
        if watch.window_ms:
            for extreme in (watch.lows, watch.highs):
                extreme.push(time_ms, price)
                extreme.trim(time_ms - watch.window_ms)
        fired: list[Alert] = []
        for rule in watch.rules.values():
            reference: float | None = None
            if rule.condition == "move":
                reference = self._moved(watch, rule, price, time_ms)
                hit = reference is not None
            else:
                level = cast(float, rule.level)
                hit = previous is not None and (
                    previous < level <= price if rule.condition == "above" else previous > level >= price
                )
            if hit:
                fired.append(_alert(rule, price, reference, time_ms, seq))
        watch.price, watch.time_ms = price, time_ms
        finished = tuple(alert.rule_id for alert in fired if not watch.rules[alert.rule_id].repeat)
        for rule_id in finished:
            self.remove(rule_id)
        return Evaluation(tuple(fired), finished)

    @staticmethod
    def _moved(watch: _Watch, rule: Rule, price: float, time_ms: int) -> float | None:
        """The low or high the price has moved ``pct`` from within the window, or None; re-arms on a hit."""
        armed = watch.armed_ms[rule.id]
        if armed is None:
            armed = watch.armed_ms[rule.id] = time_ms
        start = max(armed, time_ms - round(cast(float, rule.window_s) * 1000))
        low, high = watch.lows.since(start), watch.highs.since(start)
        share = cast(float, rule.pct) / 100.0
        up = price - low >= low * share and rule.direction != "down"
        down = high - price >= high * share and rule.direction != "up"
        if not (up or down):
            return None
        watch.armed_ms[rule.id] = time_ms
        if up and down:  # both ways at once: report the larger move
            return low if (price - low) / low >= (high - price) / high else high
        return low if up else high

    def observe_updates(self, outgoing: Iterable[Outgoing]) -> Evaluation:
        """:meth:`observe` the ``market_update`` messages among what :meth:`Market.apply` returned."""
        result = Evaluation()
        for item in outgoing:
            message = item.message
            if message["type"] == "market_update":
                result += self.observe(
                    message["symbol"], message["data"]["price"], message["data"]["time"], message["seq"]
                )
        return result


def _alert(rule: Rule, price: float, reference: float | None, time_ms: int, seq: int) -> Alert:
    return Alert(
        id=f"{rule.id}:{time_ms}:{seq}",
        rule_id=rule.id,
        owner=rule.owner,
        symbol=rule.symbol,
        condition=rule.condition,
        level=rule.level,
        pct=rule.pct,
        window_s=rule.window_s,
        direction=rule.direction,
        note=rule.note,
        price=price,
        reference=reference,
        time_ms=time_ms,
        seq=seq,
    )


class AlertHistory:
    """The last ``limit`` alerts, oldest first."""

    def __init__(self, alerts: Iterable[Alert] = (), *, limit: int = HISTORY_LIMIT) -> None:
        self._alerts: deque[Alert] = deque(alerts, maxlen=limit)

    @property
    def limit(self) -> int:
        return cast(int, self._alerts.maxlen)

    def add(self, alerts: Iterable[Alert]) -> None:
        self._alerts.extend(alerts)

    def alerts(self, owner: str | None = None) -> list[Alert]:
        """Oldest first, all or those of ``owner``'s rules."""
        return [a for a in self._alerts if owner is None or a.owner == owner]

    def __iter__(self) -> Iterator[Alert]:
        return iter(self._alerts)

    def __len__(self) -> int:
        return len(self._alerts)
