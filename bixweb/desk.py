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
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Protocol

import orjson

from bixweb import protocol
from bixweb.alerts import Alert, AlertBook, AlertHistory, Rule, rule_from_request
from bixweb.annotations import Annotation, annotation_from_request
from bixweb.errors import ProtocolError, StoreError
from bixweb.market import Message, Outgoing
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
        self._unwritten_finished: list[str] = []
        """One-shot rules that fired but whose deletion the store refused: tried again next time
        (touched on the writer thread only)."""
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bixweb-desk")
        log.info(
            "alert desk: %d rules, %d alerts in history, %d annotations",
            len(self.book),
            len(self.history),
            len(self.annotations),
        )

    def _changed(self, change: Change) -> None:
        for listener in self.listeners:
            listener(change)

    def _write(self, action: Callable[[], Any], request_id: str | int | None) -> Any:
        try:
            return action()
        except StoreError:
            log.exception("the desk could not write to its store")
            raise ProtocolError(
                "storage_failed", "the server could not store that; nothing was changed", request_id=request_id
            ) from None

    # -- rules ---------------------------------------------------------------

    def create_rule(
        self, fields: Mapping[str, Any], *, owner: str, now_ms: int, request_id: str | int | None = None
    ) -> Rule:
        rule = rule_from_request(
            fields,
            symbols=self.symbols,
            owner=owner,
            existing=self.book.rules(),
            new_id=new_id(),
            now_ms=now_ms,
            request_id=request_id,
        )
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
        # a replayed market fires at the same times and seqs again: each firing gets an id of its own
        fired = [replace(alert, id=f"{alert.id}:{secrets.token_hex(3)}") for alert in evaluation.fired]
        # kept on the store's own thread: an fsync must not hold up the market for every client
        self._writer.submit(self._record, fired, list(evaluation.finished))
        self.history.add(fired)
        if evaluation.finished:
            self._changed("rules")
        self._changed("alerts")
        return fired

    def _record(self, fired: list[Alert], finished: list[str]) -> None:
        """On the writer thread, in order: keep fired alerts, delete finished one-shot rules."""
        finished = [*self._unwritten_finished, *finished]
        try:
            self.store.record(fired, finished)
            self._unwritten_finished = []
        except StoreError:  # the alerts went out; finished rules are deleted with the next write
            log.exception("the desk could not keep %d alerts", len(fired))
            self._unwritten_finished = finished

    def flush(self) -> None:
        """Wait until every alert handed to the writer thread is written (tests; before closing)."""
        self._writer.submit(lambda: None).result()

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self.store.close()

    # -- annotations -----------------------------------------------------------

    def add_annotation(
        self, fields: Mapping[str, Any], *, owner: str, now_ms: int, request_id: str | int | None = None
    ) -> Annotation:
        annotation = annotation_from_request(
            fields,
            symbols=self.symbols,
            owner=owner,
            existing=list(self.annotations.values()),
            new_id=new_id(),
            now_ms=now_ms,
            request_id=request_id,
        )
        self._write(lambda: self.store.add_annotation(annotation), request_id)
        self.annotations[annotation.id] = annotation
        self._changed(f"annotations:{annotation.symbol}")
        return annotation

    def remove_annotation(self, annotation_id: str, *, request_id: str | int | None = None) -> Annotation:
        annotation = self.annotations.get(annotation_id)
        if annotation is None:
            raise ProtocolError(
                "unknown_annotation", "no annotation has that id", request_id=request_id, path="$.annotation_id"
            )
        self._write(lambda: self.store.delete_annotation(annotation_id), request_id)
        del self.annotations[annotation_id]
        self._changed(f"annotations:{annotation.symbol}")
        return annotation

    def annotations_of(self, symbol: str | None = None) -> list[Annotation]:
        """Oldest first; of one symbol, or all."""
        return _sorted(self.annotations.values(), symbol)

    # -- requests, as the protocol has them -------------------------------------

    def perform(
        self, kind: str, fields: Mapping[str, Any], *, owner: str, now_ms: int, request_id: str | int | None = None
    ) -> Message:
        """Carry out one request (``alert_create``, …, ``annotation_list``); its reply message."""
        rid = request_id
        if kind == "alert_create":
            rule = self.create_rule(fields, owner=owner, now_ms=now_ms, request_id=rid)
            return protocol.alert_rules_message(now_ms, "created", [rule], request_id=rid)
        if kind == "alert_delete":
            rule = self.delete_rule(str(fields["rule_id"]), request_id=rid)
            return protocol.alert_rules_message(now_ms, "deleted", [rule], request_id=rid)
        if kind == "alert_list":
            return protocol.alert_rules_message(now_ms, "list", self.rules(), history=self.alerts(), request_id=rid)
        if kind == "annotation_add":
            annotation = self.add_annotation(fields, owner=owner, now_ms=now_ms, request_id=rid)
            return protocol.annotations_message(now_ms, "added", [annotation], request_id=rid)
        if kind == "annotation_remove":
            annotation = self.remove_annotation(str(fields["annotation_id"]), request_id=rid)
            return protocol.annotations_message(now_ms, "removed", [annotation], request_id=rid)
        if kind == "annotation_list":
            symbol = fields.get("symbol")
            return protocol.annotations_message(
                now_ms, "list", self.annotations_of(symbol if isinstance(symbol, str) else None), request_id=rid
            )
        raise ProtocolError("unknown_type", f"not a desk request: {kind[:32]!r}", request_id=rid, path="$.type")

    async def perform_async(
        self, kind: str, fields: Mapping[str, Any], *, owner: str, now_ms: int, request_id: str | int | None = None
    ) -> Message:
        return self.perform(kind, fields, owner=owner, now_ms=now_ms, request_id=request_id)

    def state(self) -> bytes:
        """Everything a replica shows, as JSON (what the owner keeps in the broker)."""
        return orjson.dumps(
            {
                "rules": [protocol.rule_data(r) for r in self.rules()],
                "history": [protocol.alert_data(a) for a in self.alerts()],
                "annotations": [protocol.annotation_data(a) for a in self.annotations_of()],
            }
        )

    def answer(self, request: Mapping[str, Any]) -> Message:
        """A request forwarded by another process (:meth:`DeskReplica.perform_async`): its reply, or its error."""
        try:
            return self.perform(
                str(request["kind"]),
                request.get("fields") or {},
                owner=str(request["owner"]),
                now_ms=int(request["now_ms"]),
            )
        except ProtocolError as exc:
            return {"type": "error", "code": exc.code, "message": exc.message, "path": exc.path}


def _sorted(annotations: Iterable[Annotation], symbol: str | None) -> list[Annotation]:
    found = sorted(annotations, key=lambda a: (a.created_ms, a.id))
    return [a for a in found if symbol is None or a.symbol == symbol]


class DeskView(Protocol):
    """What the dashboard and the bot socket need of a desk, here or in the feed process."""

    listeners: list[Callable[[Change], None]]

    def rules(self) -> list[Rule]: ...

    def alerts(self) -> list[Alert]: ...

    def annotations_of(self, symbol: str | None = None) -> list[Annotation]: ...

    async def perform_async(
        self, kind: str, fields: Mapping[str, Any], *, owner: str, now_ms: int, request_id: str | int | None = None
    ) -> Message: ...


Forward = Callable[[Message], Awaitable[Message]]
"""Sends a request to the process that owns the desk and returns its answer."""


class DeskReplica:
    """The desk of the feed process, as a web process sees it (``--broker redis://``).

    Its state comes from the broker (:meth:`load`); requests go to the owner
    through ``forward`` and come back as the owner's reply or error.
    """

    def __init__(self, forward: Forward) -> None:
        self.forward = forward
        self.listeners: list[Callable[[Change], None]] = []
        self._rules: list[Rule] = []
        self._alerts: list[Alert] = []
        self._annotations: list[Annotation] = []

    def rules(self) -> list[Rule]:
        return list(self._rules)

    def alerts(self) -> list[Alert]:
        return list(self._alerts)

    def annotations_of(self, symbol: str | None = None) -> list[Annotation]:
        return _sorted(self._annotations, symbol)

    def load(self, state: bytes, change: Change | None = None) -> None:
        """Take the owner's state; tell the listeners what changed (everything when ``change`` is None)."""
        data = orjson.loads(state)
        before = {a.symbol for a in self._annotations}
        self._rules = [rule_of(r) for r in data.get("rules", ())]
        self._alerts = [alert_of(a) for a in data.get("history", ())]
        self._annotations = [annotation_of(a) for a in data.get("annotations", ())]
        if change is not None:
            changes = [change]
        else:
            symbols = before | {a.symbol for a in self._annotations}
            changes = ["rules", "alerts", *(f"annotations:{s}" for s in sorted(symbols))]
        for listener in self.listeners:
            for one in changes:
                listener(one)

    async def perform_async(
        self, kind: str, fields: Mapping[str, Any], *, owner: str, now_ms: int, request_id: str | int | None = None
    ) -> Message:
        try:
            reply = await self.forward({"kind": kind, "fields": dict(fields), "owner": owner, "now_ms": now_ms})
        except Exception as exc:
            log.warning("the feed process did not answer a desk request: %s", exc.__class__.__name__)
            raise ProtocolError(
                "unavailable", "the feed process that keeps alerts did not answer; try again", request_id=request_id
            ) from None
        if reply.get("type") == "error":
            raise ProtocolError(
                str(reply["code"]), str(reply["message"]), request_id=request_id, path=reply.get("path")
            )
        if request_id is not None:
            reply["id"] = request_id
        return reply


def rule_of(data: Mapping[str, Any]) -> Rule:
    return Rule(
        id=data["id"],
        symbol=data["symbol"],
        condition=data["condition"],
        level=data.get("level"),
        pct=data.get("pct"),
        window_s=data.get("window_s"),
        direction=data.get("direction", "any"),
        note=data.get("note", ""),
        repeat=bool(data.get("repeat")),
        owner=data.get("owner", ""),
        created_ms=int(data.get("created", 0)),
    )


def alert_of(data: Mapping[str, Any]) -> Alert:
    return Alert(
        id=data["id"],
        rule_id=data["rule_id"],
        owner=data.get("owner", ""),
        symbol=data["symbol"],
        condition=data["condition"],
        level=data.get("level"),
        pct=data.get("pct"),
        window_s=data.get("window_s"),
        direction=data.get("direction", "any"),
        note=data.get("note", ""),
        price=float(data["price"]),
        reference=data.get("reference"),
        time_ms=int(data["time"]),
        seq=int(data["ticker_seq"]),
    )


def annotation_of(data: Mapping[str, Any]) -> Annotation:
    return Annotation(
        id=data["id"],
        symbol=data["symbol"],
        price=float(data["price"]),
        label=data.get("label", ""),
        owner=data.get("owner", ""),
        created_ms=int(data.get("created", 0)),
    )
