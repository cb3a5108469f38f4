"""The alert desk: rules, the alerts they fired, and chart annotations, kept in a :class:`~bixweb.store.Store`.

One desk lives in the process that owns the market. Requests (from bots
and dashboards) are checked by :mod:`bixweb.alerts` and
:mod:`bixweb.annotations`, written to the store first, and only then
applied, so what was acknowledged survives a restart and what failed to
be written is not half there. :meth:`Desk.observe` runs on every flush
window of the market and returns the alerts that fired, once, for every
client. Listeners (the dashboard) hear what changed.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from bixweb.alerts import Alert, AlertBook, AlertHistory, Rule, rule_from_request
from bixweb.annotations import Annotation, annotation_from_request
from bixweb.errors import ProtocolError, StoreError
from bixweb.market import Outgoing
from bixweb.store import Store

log = logging.getLogger("bixweb.desk")

Change = str
"""``"rules"``, ``"alerts"``, or ``"annotations:<SYMBOL>"``."""


def new_id() -> str:
    return secrets.token_hex(6)


class Desk:
    def __init__(self, store: Store, symbols: Sequence[str]) -> None:
        self.store = store
        self.symbols = list(symbols)
        state = store.load()
        self.book = AlertBook(state.rules)
        self.history = AlertHistory(state.history)
        self.annotations: dict[str, Annotation] = {a.id: a for a in state.annotations}
        self.listeners: list[Callable[[Change], None]] = []
        log.info("alert desk: %d rules, %d alerts in history, %d annotations", len(self.book), len(self.history),
                 len(self.annotations))

    def _changed(self, change: Change) -> None:
        for listener in self.listeners:
            listener(change)

    def _write(self, action: Callable[[], Any], request_id: str | int | None) -> Any:
        try:
            return action()
        except StoreError:
            log.exception("the desk could not write to its store")
            raise ProtocolError("storage_failed", "the server could not store that; nothing was changed",
                                request_id=request_id) from None

    # -- rules ---------------------------------------------------------------

    def create_rule(self, fields: Mapping[str, Any], *, owner: str, now_ms: int,
                    request_id: str | int | None = None) -> Rule:
        rule = rule_from_request(fields, symbols=self.symbols, owner=owner, existing=self.book.rules(),
                                 new_id=new_id(), now_ms=now_ms, request_id=request_id)
        self._write(lambda: self.store.add_rule(rule), request_id)
        self.book.add(rule)
        self._changed("rules")
        return rule

    def delete_rule(self, rule_id: str, *, request_id: str | int | None = None) -> Rule:
        if not any(rule.id == rule_id for rule in self.book.rules()):
            raise ProtocolError("unknown_rule", "no alert rule has that id", request_id=request_id, path="$.rule_id")
        self._write(lambda: self.store.delete_rule(rule_id), request_id)
        rule = self.book.remove(rule_id)
        assert rule is not None
        self._changed("rules")
        return rule

    def rules(self) -> list[Rule]:
        return self.book.rules()

    def alerts(self) -> list[Alert]:
        """The alert history, oldest first."""
        return self.history.alerts()

    def observe(self, outgoing: Iterable[Outgoing]) -> list[Alert]:
        """Evaluate every rule against the ticker updates of one flush window; the alerts that fired."""
        evaluation = self.book.observe_updates(outgoing)
        if not evaluation.fired and not evaluation.finished:
            return []
        try:
            self.store.record(evaluation.fired, evaluation.finished)
        except StoreError:  # the alerts still go out; the history on disk misses them
            log.exception("the desk could not keep %d alerts", len(evaluation.fired))
        self.history.add(evaluation.fired)
        if evaluation.finished:
            self._changed("rules")
        self._changed("alerts")
        return list(evaluation.fired)

    # -- annotations -----------------------------------------------------------

    def add_annotation(self, fields: Mapping[str, Any], *, owner: str, now_ms: int,
                       request_id: str | int | None = None) -> Annotation:
        annotation = annotation_from_request(fields, symbols=self.symbols, owner=owner,
                                             existing=list(self.annotations.values()), new_id=new_id(),
                                             now_ms=now_ms, request_id=request_id)
        self._write(lambda: self.store.add_annotation(annotation), request_id)
        self.annotations[annotation.id] = annotation
        self._changed(f"annotations:{annotation.symbol}")
        return annotation

    def remove_annotation(self, annotation_id: str, *, request_id: str | int | None = None) -> Annotation:
        annotation = self.annotations.get(annotation_id)
        if annotation is None:
            raise ProtocolError("unknown_annotation", "no annotation has that id", request_id=request_id,
                                path="$.annotation_id")
        self._write(lambda: self.store.delete_annotation(annotation_id), request_id)
        del self.annotations[annotation_id]
        self._changed(f"annotations:{annotation.symbol}")
        return annotation

    def annotations_of(self, symbol: str | None = None) -> list[Annotation]:
        """Oldest first; of one symbol, or all."""
        found = sorted(self.annotations.values(), key=lambda a: (a.created_ms, a.id))
        return [a for a in found if symbol is None or a.symbol == symbol]
