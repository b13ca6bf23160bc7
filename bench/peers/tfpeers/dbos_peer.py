"""DBOS Transact (Python library) with its default SQLite system database, all in this process."""

from __future__ import annotations

import asyncio
import importlib.metadata
import itertools
import os
import shutil
import sqlite3
import sys
import threading
import time
import uuid
from pathlib import Path

from dbos import DBOS, DBOSConfig, SetWorkflowID

from .common import PEERS_DIR, Json, Peer, ProcessGroup


@DBOS.step()
def tf_step(x: int) -> int:
    return x + 1


@DBOS.step()
def tf_stamp() -> float:
    return time.monotonic()


_replay_step_runs = itertools.count()  # next() is atomic: how many times tf_replay_step ran


@DBOS.step()
def tf_replay_step(x: int) -> int:
    next(_replay_step_runs)
    return x + 1


@DBOS.workflow()
def tf_replay(n: int) -> list[float]:
    """n steps, then a final one (replay). `entered` is not a step: each run of the function
    takes it anew, so a re-run reports when it began going through the recorded steps."""
    entered = time.monotonic()
    acc = 0
    for _ in range(n):
        acc = tf_replay_step(acc)
    return [entered, tf_stamp()]


PARK_TIMEOUT_S = 86_400.0
_parked = [0]  # park steps run so far (footprint_waiting)
_parked_lock = threading.Lock()


@DBOS.step()
def tf_park_step() -> int:
    with _parked_lock:
        _parked[0] += 1
        return _parked[0]


@DBOS.workflow()
def tf_park() -> None:
    tf_park_step()
    DBOS.recv("wake", timeout_seconds=PARK_TIMEOUT_S)


@DBOS.workflow()
def tf_steps(n: int) -> int:
    acc = 0
    for _ in range(n):
        acc = tf_step(acc)
    return acc


@DBOS.workflow()
def tf_wait_event(timeout_s: float) -> float:
    msg = DBOS.recv("wake", timeout_seconds=timeout_s)
    if msg is None:
        raise TimeoutError("no message within the timeout")
    return tf_stamp()


@DBOS.workflow()
def tf_sleep(sleep_ms: int) -> list[float]:
    t0 = tf_stamp()
    DBOS.sleep(sleep_ms / 1000.0)
    t1 = tf_stamp()
    return [t0, t1]


class DbosPeer(Peer):
    """Workflows run in this process (DBOS is a library). DBOS refuses its blocking API on a thread
    with a running event loop, so each driver call runs in a worker thread via asyncio.to_thread;
    latencies are timed inside that thread."""

    name = "dbos"

    def __init__(self, procs: ProcessGroup, notification_poll_s: float | None, sqlite_wal: bool, call_timeout_s: float) -> None:
        self._procs = procs
        self._workdir: Path | None = None
        self._tenant_db_template: Path | None = None
        self._poll = notification_poll_s
        self._wal = sqlite_wal
        self._recv_timeout_s = min(call_timeout_s, 60.0)
        self._db: Path | None = None
        self._launched = False
        self._replay_originals: dict[int, tuple[str, int]] = {}  # steps -> (workflow id, its final step's id)

    async def start(self, workdir: Path) -> None:
        self._workdir = workdir
        self._db = workdir / "dbos_system.sqlite"
        if self._wal:
            # journal_mode=WAL is stored in the file, so DBOS's own connections inherit it.
            with sqlite3.connect(self._db) as c:
                c.execute("PRAGMA journal_mode=WAL")
        config: DBOSConfig = {
            "name": "tf-peers-bench",
            "system_database_url": f"sqlite:///{self._db}",
            "log_level": "WARNING",
        }
        if self._poll is not None:
            config["notification_listener_polling_interval_sec"] = self._poll

        def launch() -> None:
            DBOS(config=config)
            DBOS.launch()

        await asyncio.to_thread(launch)
        self._launched = True

    async def stop(self) -> None:
        if self._launched:
            self._launched = False
            await asyncio.to_thread(DBOS.destroy, workflow_completion_timeout_sec=0)

    def version(self) -> Json:
        return {"dbos": importlib.metadata.version("dbos"), "sqlite": sqlite3.sqlite_version}

    def durability(self) -> Json:
        journal = "unknown"
        if self._db is not None and self._db.exists():
            with sqlite3.connect(self._db) as c:
                journal = str(c.execute("PRAGMA journal_mode").fetchone()[0])
        with sqlite3.connect(":memory:") as c:
            sync = int(c.execute("PRAGMA synchronous").fetchone()[0])
        sync_name = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, str(sync))
        poll = self._poll if self._poll is not None else 1.0
        how = "set by the harness" if self._wal else "stock: SQLite default, DBOS sets no journal mode"
        return {
            "summary": (
                f"DBOS system database on a SQLite file, journal_mode={journal} ({how}), synchronous={sync_name} "
                "(SQLite default, DBOS does not change it): each step's result is committed before the next step"
            ),
            "system_database": "sqlite",
            "sqlite_journal_mode": journal,
            "sqlite_synchronous": sync_name,
            "notification_listener_polling_interval_s": poll,
            "notification_polling_is_default": self._poll is None,
        }

    # Driver code, run in a worker thread.

    @staticmethod
    def _one_step_sync() -> float:
        t0 = time.perf_counter()
        res = DBOS.start_workflow(tf_steps, 1).get_result()
        dt = time.perf_counter() - t0
        assert res == 1
        return dt

    @staticmethod
    def _aggregate_sync(workflows: int, steps: int) -> None:
        handles = [DBOS.start_workflow(tf_steps, steps) for _ in range(workflows)]
        for h in handles:
            assert h.get_result() == steps

    def _signal_sync(self, settle_s: float) -> float:
        wfid = f"tf-wake-{uuid.uuid4()}"
        with SetWorkflowID(wfid):
            handle = DBOS.start_workflow(tf_wait_event, self._recv_timeout_s)
        time.sleep(settle_s)
        t0 = time.monotonic()
        DBOS.send(wfid, "go", topic="wake")
        t1 = handle.get_result()
        return t1 - t0

    @staticmethod
    def _sleep_sync(sleep_ms: int) -> float:
        t0, t1 = DBOS.start_workflow(tf_sleep, sleep_ms).get_result()
        return t1 - t0

    def _replay_sync(self, steps: int) -> float:
        """DBOS re-runs a workflow from its recorded steps when it recovers one; fork_workflow
        from the final step takes that path on demand (the steps before it are copied to a new
        workflow, whose function then finds each recorded). The fork is dispatched through DBOS's
        internal queue, polled every second: timed from the re-run's start, not the fork call."""
        if steps not in self._replay_originals:
            first = DBOS.start_workflow(tf_replay, steps)
            first.get_result()
            workflow_id = first.get_workflow_id()
            self._replay_originals[steps] = (workflow_id, DBOS.list_workflow_steps(workflow_id)[-1]["function_id"])
        workflow_id, final_step = self._replay_originals[steps]
        runs_before = next(_replay_step_runs)
        entered, stamped = DBOS.fork_workflow(workflow_id, final_step).get_result(polling_interval_sec=0.01)
        if next(_replay_step_runs) != runs_before + 1:
            raise RuntimeError("the fork ran recorded steps again: not a replay")
        return float(stamped) - float(entered)

    async def one_step(self) -> float:
        return await asyncio.to_thread(self._one_step_sync)

    async def sequential(self, steps: int) -> None:
        assert await asyncio.to_thread(lambda: DBOS.start_workflow(tf_steps, steps).get_result()) == steps

    async def aggregate(self, workflows: int, steps: int) -> None:
        await asyncio.to_thread(self._aggregate_sync, workflows, steps)

    async def signal_wakeup(self, settle_s: float) -> float:
        return await asyncio.to_thread(self._signal_sync, settle_s)

    async def sleep_gap(self, sleep_ms: int) -> float:
        return await asyncio.to_thread(self._sleep_sync, sleep_ms)

    async def replay(self, steps: int) -> float:
        return await asyncio.to_thread(self._replay_sync, steps)

    async def _run_tenant(self, system_db: Path, name: str) -> float:
        """Run the tenant process of `dbos_tenant.py` on `system_db`; the stamp its step took."""
        assert self._workdir is not None
        stamp_file = self._workdir / "tenants" / f"{name}.stamp"
        proc = self._procs.start(
            f"dbos tenant {name}",
            [sys.executable, "-m", "tfpeers.dbos_tenant", str(system_db), str(stamp_file)],
            self._workdir / "tenants" / f"{name}.log",
            cwd=PEERS_DIR,
        )
        try:
            code = await asyncio.to_thread(proc.wait)
        finally:
            self._procs.stop(proc)
        if code != 0 or not stamp_file.exists():
            raise RuntimeError(f"DBOS tenant process {name} exited with {code} (log: tenants/{name}.log)")
        return float(stamp_file.read_text())

    async def cold_start(self, tenant: str) -> float:
        """A tenant's application process on the tenant's existing system database (copied from
        one that a first, untimed tenant process created: its schema is there, as for a tenant
        that ran before), from spawn to the start of its first workflow's step."""
        assert self._workdir is not None
        tenants = self._workdir / "tenants"
        if self._tenant_db_template is None:
            tenants.mkdir(exist_ok=True)
            template = tenants / "template.sqlite"
            await self._run_tenant(template, "template")
            if self._wal:  # as for the harness's own system database
                with sqlite3.connect(template) as c:
                    c.execute("PRAGMA journal_mode=WAL")
            self._tenant_db_template = template
        system_db = tenants / f"{tenant}.sqlite"
        shutil.copyfile(self._tenant_db_template, system_db)
        t0 = time.monotonic()
        stamp = await self._run_tenant(system_db, tenant)
        return stamp - t0

    async def park(self, count: int) -> None:
        target = _parked[0] + count

        def start_all() -> None:  # each DBOS workflow runs on a thread of its own
            for _ in range(count):
                DBOS.start_workflow(tf_park)

        await asyncio.to_thread(start_all)
        while _parked[0] < target:
            await asyncio.sleep(0.05)

    def processes(self) -> list[int]:
        return [os.getpid()]  # DBOS is a library: its workflows run in this process
