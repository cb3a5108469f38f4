"""The SQLite store on a real file: round trips, restarts, the history bound, atomic writes, unusable files."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from bixweb.alerts import Alert, AlertBook, Rule
from bixweb.annotations import Annotation
from bixweb.errors import ConfigError
from bixweb.store import SCHEMA_VERSION, STORE_FILE, SQLiteStore, StoredState, StoreError

T0 = 1_764_158_400_000
ABOVE = Rule("r1", "BTCUSDT", "above", level=100_000.5, note="breakout", repeat=True, owner="bot", created_ms=T0)
MOVE = Rule("r2", "ETHUSDT", "move", pct=2.5, window_s=300.0, direction="down", owner="page-1", created_ms=T0 + 1)
LINE = Annotation("a1", "BTCUSDT", 95_000.0, "support", "page-1", T0 + 2)


def alert(n: int, rule: Rule = ABOVE) -> Alert:
    return Alert(
        f"{rule.id}:{n}",
        rule.id,
        rule.owner,
        rule.symbol,
        rule.condition,
        rule.level,
        rule.pct,
        rule.window_s,
        rule.direction,
        rule.note,
        100_001.0 + n,
        98_000.0 if rule.pct else None,
        T0 + n,
        n,
    )


def test_what_is_written_is_loaded_again_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE
    with SQLiteStore(path) as store:
        assert store.load() == StoredState()
        store.add_rule(ABOVE)
        store.add_rule(MOVE)
        store.add_alert(alert(1))
        store.add_alert(alert(2, MOVE))
        store.add_annotation(LINE)
        expected = StoredState((ABOVE, MOVE), (alert(1), alert(2, MOVE)), (LINE,))
        assert store.load() == expected
    with SQLiteStore(path) as store:
        assert store.load() == expected
        assert store.delete_rule("r1") and not store.delete_rule("r1")
        assert store.delete_annotation("a1") and not store.delete_annotation("a1")
    with SQLiteStore(path) as store:
        assert store.load() == StoredState((MOVE,), expected.history, ())


def test_the_store_is_created_with_its_directory_on_first_start(tmp_path: Path) -> None:
    path = tmp_path / "data" / "bixweb" / STORE_FILE
    SQLiteStore(path).close()
    assert path.is_file()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def test_rows_have_typed_columns_that_can_be_queried(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE
    with SQLiteStore(path) as store:
        store.add_rule(ABOVE)
        store.add_rule(MOVE)
        conn = sqlite3.connect(path)
        rows = conn.execute(
            "SELECT id, typeof(level), typeof(pct), typeof(repeat) FROM rules WHERE condition = 'above'"
        ).fetchall()
        conn.close()
    assert rows == [("r1", "real", "null", "integer")]


def test_the_history_keeps_the_newest_alerts_up_to_its_bound(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE
    with SQLiteStore(path, history_limit=5) as store:
        for n in range(8):
            store.add_alert(alert(n))
        assert [a.seq for a in store.load().history] == [3, 4, 5, 6, 7]
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM alerts").fetchone() == (5,)
    conn.close()
    with SQLiteStore(path, history_limit=3) as store:
        assert [a.seq for a in store.load().history] == [5, 6, 7]


def test_recording_an_observation_keeps_its_alerts_and_drops_its_finished_rules(tmp_path: Path) -> None:
    one_shot = Rule("once", "BTCUSDT", "above", level=100.0)
    path = tmp_path / STORE_FILE
    with SQLiteStore(path) as store:
        store.add_rule(ABOVE)
        store.add_rule(one_shot)
        book = AlertBook(store.load().rules)
        book.observe("BTCUSDT", 99.0, T0, 1)
        result = book.observe("BTCUSDT", 100_001.0, T0 + 1, 2)
        assert result.finished == ("once",) and len(result.fired) == 2
        store.record(result.fired, result.finished)
    with SQLiteStore(path) as store:
        state = store.load()
    assert state.rules == (ABOVE,)
    assert state.history == result.fired


def test_a_failing_write_leaves_nothing_half_written(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / STORE_FILE) as store:
        store.add_rule(ABOVE)
        before = store.load()
        with pytest.raises(StoreError, match="r1"):
            store.add_rule(Rule("r1", "ETHUSDT", "below", level=1.0))
        # the second alert repeats the first one's id: neither is kept, and the rule is not deleted
        with pytest.raises(StoreError):
            store.record([alert(1), alert(2), alert(1)], ["r1"])
        assert store.load() == before
        store.add_alert(alert(3))  # and the store still takes writes
        assert [a.seq for a in store.load().history] == [3]


def test_the_store_may_be_used_from_another_thread(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / STORE_FILE) as store:
        writer = threading.Thread(target=store.add_rule, args=(ABOVE,))
        writer.start()
        writer.join()
        assert store.load().rules == (ABOVE,)


def test_a_closed_store_refuses_writes(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / STORE_FILE)
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.add_rule(ABOVE)


def test_a_file_that_is_not_a_database_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE
    path.write_bytes(b"this is not SQLite, only garbage \x00\xff" * 200)
    with pytest.raises(ConfigError) as caught:
        SQLiteStore(path)
    assert str(path) in str(caught.value) and "move it aside" in str(caught.value)
    assert path.read_bytes().startswith(b"this is not SQLite")  # left as it was, for whoever looks into it


def test_a_damaged_database_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE
    with SQLiteStore(path) as store:
        for n in range(300):
            store.add_rule(Rule(f"rule-{n}", "BTCUSDT", "above", level=1.0 + n, note="x" * 100))
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    data[2 * page : 4 * page] = b"\xa5" * (2 * page)  # the first page (the schema) stays readable
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError) as caught:
        SQLiteStore(path)
    assert str(path) in str(caught.value)


def test_a_directory_where_the_file_should_be_is_refused(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE
    path.mkdir()
    with pytest.raises(ConfigError) as caught:
        SQLiteStore(path)
    assert str(path) in str(caught.value)


def test_a_data_directory_that_cannot_be_made_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a directory")
    with pytest.raises(ConfigError) as caught:
        SQLiteStore(tmp_path / "taken" / STORE_FILE)
    assert str(tmp_path / "taken") in str(caught.value)


def test_a_store_of_a_newer_bixweb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.close()
    with pytest.raises(ConfigError, match="newer") as caught:
        SQLiteStore(path)
    assert str(path) in str(caught.value)


def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY)")
    conn.close()
    with pytest.raises(ConfigError, match="not a bixweb data store"):
        SQLiteStore(path)


def test_a_row_that_makes_no_sense_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    with conn:  # a cross rule without its level
        conn.execute("INSERT INTO rules VALUES ('r', 'BTCUSDT', 'above', NULL, NULL, NULL, 'any', '', 0, 'bot', 0)")
    conn.close()
    with SQLiteStore(path) as store, pytest.raises(ConfigError) as caught:
        store.load()
    assert str(path) in str(caught.value)
