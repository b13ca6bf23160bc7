"""Journal writes against a real SQLite file: an invocation's writes are fenced by the
instance's generation and status, so a late write from an abandoned invocation is a no-op."""

from __future__ import annotations

import pickle
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantflow import database
from tenantflow import journal as jn

NOW = 1_800_000_000_000


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    path = tmp_path / "flows.db"
    database.migrate(path)
    conn = database.connect(path)
    yield conn
    conn.close()


def run(conn: sqlite3.Connection, op: object) -> object:
    """Run a write op in its own transaction, as the group-commit writer does."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = op(conn)  # type: ignore[operator]
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def new_instance(conn: sqlite3.Connection) -> jn.InstanceRow:
    run(conn, jn.grant_component("t", "d" * 64, NOW))  # a pinned version must be the tenant's
    [pk] = run(conn, jn.insert_instances([jn.NewInstance("t", "i", "w", "d" * 64, "{}", None, NOW)]))  # type: ignore[misc]
    run(conn, jn.start_invocation(pk, 0, "host", NOW + 60_000, NOW))
    row = jn.instance_by_pk_query(pk).run(conn)
    assert row is not None and row.status == "running"
    return row


def step(seq: int, result: str | None, status: str = "done") -> jn.JournalEntry:
    return jn.JournalEntry(seq=seq, kind="step", name="s", status=status, attempts=1, result=result, started_at=NOW, ended_at=NOW)


def journal(conn: sqlite3.Connection, pk: int) -> list[tuple[int, str, str | None]]:
    return [(e.seq, e.status, e.result) for e in jn.journal_query(pk).run(conn)]


def test_record_entry_writes_and_replaces_while_the_generation_owns_the_instance(conn: sqlite3.Connection) -> None:
    row = new_instance(conn)
    run(conn, jn.record_entry(row.pk, row.generation, step(0, None, "retrying"), now=NOW))
    run(conn, jn.record_entry(row.pk, row.generation, step(0, "1"), now=NOW))
    run(conn, jn.record_entry(row.pk, row.generation, step(1, "2"), now=NOW))
    assert journal(conn, row.pk) == [(0, "done", "1"), (1, "done", "2")]


@pytest.mark.parametrize("control", ["terminate", "restart", "pause", "delete"])
def test_record_entry_after_the_instance_moved_on_is_fenced(conn: sqlite3.Connection, control: str) -> None:
    row = new_instance(conn)
    run(conn, jn.record_entry(row.pk, row.generation, step(0, "1"), now=NOW))
    if control == "pause":  # paused at a durable call: no writes until resumed (and replayed)
        run(conn, jn.mark_paused(row.pk, row.generation, NOW))
    elif control == "delete":
        run(conn, jn.delete("t", "i"))
    else:  # both bump the generation
        run(conn, getattr(jn, control)("t", "i", NOW))
    before = journal(conn, row.pk)
    with pytest.raises(jn.Fenced):
        run(conn, jn.record_entry(row.pk, row.generation, step(1, "2"), now=NOW))
    with pytest.raises(jn.Fenced):
        run(conn, jn.record_entry(row.pk, row.generation, step(0, "changed"), suspend=(NOW + 1000, None), now=NOW))
    assert journal(conn, row.pk) == before


def test_an_entry_record_crosses_to_the_engine_as_plain_values_and_writes_the_same_row(conn: sqlite3.Connection) -> None:
    """A runner sends its writes pickled (`wire_form`); the engine applies `from_wire_form`."""
    row = new_instance(conn)
    failed = jn.JournalEntry(0, "step", "s", "retrying", 2, None, "E", "boom", NOW + 5, None, NOW, NOW + 1,
                             [{"attempt": 1, "error": {"name": "E", "message": "boom"}}])
    for entry in (failed, step(1, '{"a": [1, 2]}')):
        op = jn.record_entry(row.pk, row.generation, entry, now=NOW)
        form = jn.wire_form(op)
        assert type(form) is tuple and all(isinstance(v, (int, str, list, type(None))) for v in form)
        run(conn, jn.from_wire_form(pickle.loads(pickle.dumps(form))))
    got = jn.journal_query(row.pk).run(conn)
    assert got == [failed, step(1, '{"a": [1, 2]}')]
    # A record that suspends or consumes an event, and every other write, crosses as it is.
    suspending = jn.record_entry(row.pk, row.generation, step(2, None, "waiting"), suspend=(NOW + 1000, None), now=NOW)
    assert jn.wire_form(suspending) is suspending and jn.from_wire_form(suspending) is suspending
    finishing = jn.finish(row.pk, row.generation, "complete", "1", None, NOW)
    assert jn.wire_form(finishing) is finishing
    run(conn, jn.from_wire_form(pickle.loads(pickle.dumps(jn.wire_form(suspending)))))
    assert jn.instance_by_pk_query(row.pk).run(conn).status == "waiting"  # type: ignore[union-attr]


def test_record_entry_for_a_finished_instance_is_fenced(conn: sqlite3.Connection) -> None:
    row = new_instance(conn)
    run(conn, jn.finish(row.pk, row.generation, "complete", "1", None, NOW))
    with pytest.raises(jn.Fenced):
        run(conn, jn.record_entry(row.pk, row.generation, step(0, "late"), now=NOW))
    assert journal(conn, row.pk) == []
