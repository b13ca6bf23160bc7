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
