"""Kill -9 a real host process repeatedly while 50 instances run; every instance must
finish with every step recorded exactly once, and no recorded step may run again."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from enginekit import ARTIFACTS, component

HERE = Path(__file__).resolve().parent
COUNT, STEPS, KILLS = 50, 40, 6


def start_host(db: Path, wasm: Path, trace: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    return subprocess.Popen(
        [sys.executable, str(HERE / "crash_host.py"), str(db), str(wasm), str(ARTIFACTS), str(trace), str(COUNT), str(STEPS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.slow
def test_kill_9_repeatedly_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    wasm = component("basics")
    db, trace = tmp_path / "crash.db", tmp_path / "trace.log"
    rng = random.Random(7)
    kills = 0
    while kills < KILLS:
        host = start_host(db, wasm, trace)
        assert host.stdout is not None
        line = host.stdout.readline()  # "running": instances exist, the scheduler is going
        assert line.strip() == "running", host.stderr.read() if host.stderr else line
        time.sleep(rng.uniform(0.05, 0.6))
        if host.poll() is not None:
            break  # finished before we could kill it
        host.send_signal(signal.SIGKILL)
        host.wait()
        kills += 1
    host = start_host(db, wasm, trace)
    out, err = host.communicate(timeout=600)
    assert host.returncode == 0, err
    assert "all settled" in out

    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT id, status, output, pk FROM instances WHERE tenant='crash' ORDER BY pk").fetchall()
    assert [r[0] for r in rows] == [f"c{i}" for i in range(COUNT)]  # none lost, none duplicated
    for instance_id, status, output, pk in rows:
        assert status == "complete", instance_id
        assert json.loads(output) == list(range(STEPS)), instance_id
        journal = conn.execute("SELECT seq, kind, status, attempts, result FROM journal WHERE instance_pk=? ORDER BY seq", (pk,)).fetchall()
        assert [j[0] for j in journal] == list(range(STEPS + 1))
        legs = [j for j in journal if j[1] == "step"]
        assert [j[4] for j in legs] == [str(i) for i in range(STEPS)]
        assert all(j[2] == "done" and j[3] == 1 for j in legs)

    # No step runs again once its result is recorded.
    committed: dict[tuple[str, str], int] = {}
    executions: defaultdict[tuple[str, str], int] = defaultdict(int)
    working_hosts: set[str] = set()
    for number, entry in enumerate(trace.read_text().splitlines()):
        kind, pid, instance_id, seq = entry.split()
        working_hosts.add(pid)
        key = (instance_id, seq)
        if kind == "commit":
            committed.setdefault(key, number)
        else:
            executions[key] += 1
            assert key not in committed, f"step {key} ran again after it was recorded"
    assert kills >= 3 and len(working_hosts) >= 4, "the hosts were not killed in the middle of their work often enough"
