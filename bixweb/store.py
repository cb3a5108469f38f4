"""Alert rules, alert history and chart annotations, kept across restarts.

:class:`Store` is the interface; :class:`SQLiteStore`, one SQLite file in
the data directory, is the embedded default. Every write is one
transaction: it happens whole or not at all. A file that cannot be used is
a :class:`~bixweb.errors.ConfigError` when the store opens, at start-up,
never a silently empty state.

Calls are synchronous and short (a few small rows, one fsync per write).
Call :meth:`Store.load` once at start-up; from the event loop, run the
writes on one worker thread (``ThreadPoolExecutor(max_workers=1)``): that
keeps an fsync off the loop and the writes in the order they were made,
which ``asyncio.to_thread`` (several threads) would not.
:class:`SQLiteStore` serialises its calls itself, so it may be used from
any one thread at a time or several.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol

from bixweb.alerts import HISTORY_LIMIT, Alert, Rule
from bixweb.annotations import Annotation
from bixweb.errors import ConfigError, StoreError

SCHEMA_VERSION: Final = 1
STORE_FILE: Final = "bixweb.sqlite3"
"""The file's name in the data directory."""

_SCHEMA: Final = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE rules (
    id TEXT PRIMARY KEY,
    symbol TEXT NOT NULL,
    condition TEXT NOT NULL CHECK (condition IN ('above', 'below', 'move')),
    level REAL,
    pct REAL,
    window_s REAL,
    direction TEXT NOT NULL CHECK (direction IN ('up', 'down', 'any')),
    note TEXT NOT NULL,
    repeat INTEGER NOT NULL CHECK (repeat IN (0, 1)),
    owner TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX rules_owner ON rules (owner);
CREATE TABLE alerts (
    n INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    rule_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    symbol TEXT NOT NULL,
    condition TEXT NOT NULL CHECK (condition IN ('above', 'below', 'move')),
    level REAL,
    pct REAL,
    window_s REAL,
    direction TEXT NOT NULL CHECK (direction IN ('up', 'down', 'any')),
    note TEXT NOT NULL,
    price REAL NOT NULL,
    reference REAL,
    time_ms INTEGER NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE annotations (
    id TEXT PRIMARY KEY,
    symbol TEXT NOT NULL,
    price REAL NOT NULL CHECK (price > 0),
    label TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
"""
_RULE_COLUMNS: Final = "id, symbol, condition, level, pct, window_s, direction, note, repeat, owner, created_ms"
_ALERT_COLUMNS: Final = (
    "id, rule_id, owner, symbol, condition, level, pct, window_s, direction, note, price, reference, time_ms, seq"
)
_ANNOTATION_COLUMNS: Final = "id, symbol, price, label, owner, created_ms"


def _rule(row: sqlite3.Row | tuple[Any, ...]) -> Rule:
    id_, symbol, condition, level, pct, window_s, direction, note, repeat, owner, created_ms = row
    return Rule(id_, symbol, condition, level, pct, window_s, direction, note, bool(repeat), owner, created_ms)


@dataclass(frozen=True, slots=True)
class StoredState:
    """Everything a store keeps, as :meth:`Store.load` finds it: rules and annotations as added, alerts oldest first."""

    rules: tuple[Rule, ...] = ()
    history: tuple[Alert, ...] = ()
    annotations: tuple[Annotation, ...] = ()


class Store(Protocol):
    """Where rules, alert history and annotations live; each write is atomic, failures raise :class:`StoreError`."""

    def load(self) -> StoredState: ...

    def add_rule(self, rule: Rule) -> None: ...

    def delete_rule(self, rule_id: str) -> bool:
        """Whether there was such a rule."""
        ...

    def add_alert(self, alert: Alert) -> None:
        """Keep ``alert``, and only the newest alerts up to the history bound."""
        ...

    def record(self, fired: Sequence[Alert], finished: Sequence[str]) -> None:
        """Keep the alerts one observation fired and delete the one-shot rules it finished, at once."""
        ...

    def add_annotation(self, annotation: Annotation) -> None: ...

    def delete_annotation(self, annotation_id: str) -> bool:
        """Whether there was such an annotation."""
        ...

    def close(self) -> None: ...


class SQLiteStore:
    """A :class:`Store` in one SQLite file, created with its directory on first start.

    WAL journal, ``synchronous=FULL``: writes are rare (people adding rules,
    alerts firing), so an fsync per commit costs little, and a rule once
    acknowledged survives a power cut, not only a crash of the process.
    """

    def __init__(self, path: str | Path, *, history_limit: int = HISTORY_LIMIT) -> None:
        self.path = Path(path)
        self.history_limit = history_limit
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = self._open()

    def _unusable(self, detail: str, *, damaged: bool = True) -> ConfigError:
        if damaged:
            advice = (
                f"move it aside (`sqlite3 {self.path} .recover` may save its rows) and start again: bixweb "
                f"then creates a new, empty store"
            )
        else:
            advice = "check that bixweb's user may read and write it and its directory, and that the disk has room"
        return ConfigError(f"cannot use the data store {self.path}: {detail}; {advice}")

    def _failed(self, error: sqlite3.Error) -> ConfigError:
        damaged = error.sqlite_errorname.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
        return self._unusable(str(error), damaged=damaged)

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(
                f"cannot create the data directory {self.path.parent}: {error.strerror}; create it, or choose "
                f"another data directory"
            ) from None
        if self.path.exists() and not self.path.is_file():
            raise ConfigError(
                f"the data store {self.path} is not a file; move it away, or choose another data directory"
            )
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise self._failed(error) from None
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise self._unusable("it is damaged (" + "; ".join(problems[:3]) + ")")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            self._prepare(conn)
        except sqlite3.Error as error:
            conn.close()
            raise self._failed(error) from None
        except ConfigError:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Create the tables in a new file; check the schema version of an old one."""
        conn.execute("BEGIN IMMEDIATE")  # two processes starting at once: one creates, the other reads
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                # executescript would commit first: one statement at a time keeps them in this transaction
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif "meta" not in tables:
                raise ConfigError(
                    f"{self.path} is an SQLite database but not a bixweb data store; choose another "
                    f"data directory, or move the file away"
                )
            else:
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                version = row[0] if row else None
                if not (isinstance(version, str) and version.isdigit() and int(version) >= 1):
                    raise self._unusable(f"its schema version is {version!r}")
                if int(version) > SCHEMA_VERSION:
                    raise ConfigError(
                        f"the data store {self.path} has schema version {version}, newer than this bixweb reads "
                        f"({SCHEMA_VERSION}); run the newer bixweb, or choose another data directory"
                    )
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.rollback()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"the data store {self.path} is closed")
        return self._conn

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed whole when the block ends, rolled back if it raises."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.rollback()
                    raise
            except sqlite3.Error as error:
                raise StoreError(f"could not {what} in {self.path}: {error}") from error

    def load(self) -> StoredState:
        """Everything stored; a row bixweb cannot read is a :class:`ConfigError` (this runs at start-up)."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN")
                try:
                    rules = conn.execute(f"SELECT {_RULE_COLUMNS} FROM rules ORDER BY rowid").fetchall()
                    alerts = conn.execute(
                        f"SELECT {_ALERT_COLUMNS} FROM alerts ORDER BY n DESC LIMIT ?", (self.history_limit,)
                    ).fetchall()
                    annotations = conn.execute(
                        f"SELECT {_ANNOTATION_COLUMNS} FROM annotations ORDER BY rowid"
                    ).fetchall()
                finally:
                    conn.rollback()
            except sqlite3.Error as error:
                raise self._failed(error) from None
        try:
            return StoredState(
                tuple(_rule(row) for row in rules),
                tuple(Alert(*row) for row in reversed(alerts)),
                tuple(Annotation(*row) for row in annotations),
            )
        except (TypeError, ValueError) as error:
            raise self._unusable(f"a row does not make sense ({error})") from None

    def add_rule(self, rule: Rule) -> None:
        with self._transaction(f"add alert rule {rule.id!r}") as conn:
            conn.execute(
                f"INSERT INTO rules ({_RULE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rule.id,
                    rule.symbol,
                    rule.condition,
                    rule.level,
                    rule.pct,
                    rule.window_s,
                    rule.direction,
                    rule.note,
                    int(rule.repeat),
                    rule.owner,
                    rule.created_ms,
                ),
            )

    def delete_rule(self, rule_id: str) -> bool:
        with self._transaction(f"delete alert rule {rule_id!r}") as conn:
            return conn.execute("DELETE FROM rules WHERE id = ?", (rule_id,)).rowcount > 0

    def add_alert(self, alert: Alert) -> None:
        self.record([alert], [])

    def record(self, fired: Sequence[Alert], finished: Sequence[str]) -> None:
        if not fired and not finished:
            return
        with self._transaction(f"record {len(fired)} alerts") as conn:
            conn.executemany(
                f"INSERT INTO alerts ({_ALERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        a.id,
                        a.rule_id,
                        a.owner,
                        a.symbol,
                        a.condition,
                        a.level,
                        a.pct,
                        a.window_s,
                        a.direction,
                        a.note,
                        a.price,
                        a.reference,
                        a.time_ms,
                        a.seq,
                    )
                    for a in fired
                ],
            )
            conn.executemany("DELETE FROM rules WHERE id = ?", [(rule_id,) for rule_id in finished])
            conn.execute(
                "DELETE FROM alerts WHERE n NOT IN (SELECT n FROM alerts ORDER BY n DESC LIMIT ?)",
                (self.history_limit,),
            )

    def add_annotation(self, annotation: Annotation) -> None:
        a = annotation
        with self._transaction(f"add annotation {a.id!r}") as conn:
            conn.execute(
                f"INSERT INTO annotations ({_ANNOTATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (a.id, a.symbol, a.price, a.label, a.owner, a.created_ms),
            )

    def delete_annotation(self, annotation_id: str) -> bool:
        with self._transaction(f"delete annotation {annotation_id!r}") as conn:
            return conn.execute("DELETE FROM annotations WHERE id = ?", (annotation_id,)).rowcount > 0

    def close(self) -> None:
        """Close the file (checkpointing the WAL into it); later calls raise :class:`StoreError`."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
