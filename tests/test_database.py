"""The SQLite layer: the write-ahead log prefill and the group-commit writer across restarts."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from tenantflow.database import WAL_PREFILL_PAGES, GroupCommitWriter, migrate


def test_the_log_is_prefilled_and_the_database_stays_whole(tmp_path: Path) -> None:
    db = tmp_path / "flows.db"
    migrate(db)
    writer = GroupCommitWriter(db)
    try:
        wal = Path(f"{db}-wal")
        page_size = sqlite3.connect(db).execute("PRAGMA page_size").fetchone()[0]
        assert wal.stat().st_size >= 32 + WAL_PREFILL_PAGES * (page_size + 24)
        for i in range(3000):  # through a checkpoint and a restart of the log
            writer.run(lambda conn, i=i: conn.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (f"k{i}", "v" * 200)))
    finally:
        writer.close()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("SELECT COUNT(*) FROM meta WHERE key LIKE 'k%'").fetchone() == (3000,)


def test_commits_before_a_kill_survive_a_prefilled_log(tmp_path: Path) -> None:
    """The zeros after the last frame must never be taken for frames: a process that is
    killed right after its commits leaves a log that recovers to exactly those commits."""
    db = tmp_path / "flows.db"
    script = f"""
import os, sys
from tenantflow.database import GroupCommitWriter, migrate
migrate({str(db)!r})
writer = GroupCommitWriter({str(db)!r})
for i in range(500):
    writer.run(lambda conn, i=i: conn.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (f"k{{i}}", "v")))
print("committed", flush=True)
os.kill(os.getpid(), 9)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env={**os.environ})
    assert done.stdout.strip() == "committed", done.stderr
    conn = sqlite3.connect(db)  # recovers from the log the killed writer left
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("SELECT COUNT(*) FROM meta WHERE key LIKE 'k%'").fetchone() == (500,)


def _database_at_version(path: Path, version: int) -> sqlite3.Connection:
    """A database as an older tenantflow left it (its first `version` migrations), in an
    open transaction for the test to fill and commit."""
    from tenantflow import database

    conn = database.connect(path)
    conn.execute("BEGIN IMMEDIATE")
    for script in database.MIGRATIONS[:version]:
        for statement in database._statements(script):
            conn.execute(statement)
    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(version),))
    return conn


def test_unfinished_instances_are_counted_from_the_migration_on(tmp_path: Path) -> None:
    """Migration 4 counts each tenant's unfinished instances of an existing database; its
    triggers keep the count through inserts, finishes, restarts and deletes."""
    from tenantflow import database

    path = tmp_path / "v3.db"
    conn = _database_at_version(path, 3)
    add = "INSERT INTO instances (tenant, id, workflow, digest, params, status, created_at, updated_at) VALUES (?, ?, 'w', 'd', 'null', ?, 0, 0)"
    for i, status in enumerate(["queued", "waiting", "complete", "paused", "errored"]):
        conn.execute(add, ("a", f"a{i}", status))
    conn.execute(add, ("b", "b0", "terminated"))
    conn.execute("COMMIT")
    conn.close()
    database.migrate(path)
    with sqlite3.connect(path) as conn:
        usage = lambda: dict(conn.execute("SELECT tenant, unfinished FROM tenant_usage").fetchall())  # noqa: E731
        assert usage() == {"a": 3}
        conn.execute(add, ("b", "b1", "queued"))
        conn.execute("UPDATE instances SET status='complete' WHERE id='a0'")
        conn.execute("UPDATE instances SET status='running' WHERE id='a1'")  # unfinished to unfinished: no change
        conn.execute("UPDATE instances SET status='queued' WHERE id='b0'")  # a restart of a finished one
        conn.execute("DELETE FROM instances WHERE id IN ('a3', 'a4')")  # one unfinished, one finished
        assert usage() == {"a": 1, "b": 2}
        actual = "SELECT tenant, COUNT(*) FROM instances WHERE status NOT IN ('complete','errored','terminated') GROUP BY tenant"
        assert usage() == dict(conn.execute(actual).fetchall())


def test_the_versions_tenants_deployed_or_ran_stay_theirs_after_the_migration(tmp_path: Path) -> None:
    """Migration 6 grants each tenant the component versions it deployed or has instances
    of (an upgrade may have moved them to a version it never deployed), and no other."""
    from tenantflow import database

    path = tmp_path / "v5.db"
    conn = _database_at_version(path, 5)
    deploy = "INSERT INTO deployments (tenant, workflow, digest, deployed_at) VALUES (?, ?, ?, ?)"
    conn.executemany(deploy, [("a", "w", "d1", 5), ("a", "w", "d2", 7), ("a", "v", "d1", 3), ("b", "w", "d1", 9)])
    add = "INSERT INTO instances (tenant, id, workflow, digest, params, status, created_at, updated_at) VALUES (?, ?, 'w', ?, 'null', 'queued', ?, 0)"
    conn.executemany(add, [("a", "i1", "d1", 1), ("b", "i2", "d3", 4), ("b", "i3", "d3", 2)])
    conn.execute("COMMIT")
    conn.close()
    database.migrate(path)
    with sqlite3.connect(path) as conn:
        granted = conn.execute("SELECT tenant, digest, registered_at FROM tenant_components ORDER BY tenant, digest").fetchall()
    assert granted == [("a", "d1", 3), ("a", "d2", 7), ("b", "d1", 9), ("b", "d3", 2)]
