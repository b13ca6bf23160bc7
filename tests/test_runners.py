"""Runner processes (`Engine(processes=N)`): invocations run in other processes, the
engine keeps scheduling and the only write connection. Real processes throughout: the
runners are spawned, signalled and killed like in production."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from enginekit import ARTIFACTS, component, open_engine, settle

from tenantflow.clock import ManualClock
from tenantflow.engine import Engine
from tenantflow.errors import HostBusy, InvalidInput
from tenantflow.policy import TenantPolicy

HERE = Path(__file__).resolve().parent


async def inside_first_step(engine: Engine, instance_id: str, tenant: str = "t") -> None:
    """Until the instance is dispatched, then a little longer: its first step (seconds of
    guest work in these tests) has begun. "running" is not visible in the database before
    the first commit, at the end of that step."""
    from tenantflow import journal as jn

    row = await engine.read(jn.instance_query(tenant, instance_id))
    assert row is not None
    deadline = time.monotonic() + 30
    while not engine.scheduler.is_running(row.pk):
        assert time.monotonic() < deadline, "never dispatched"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.8)


def host_lock_free(db: Path) -> bool:
    with open(f"{db}.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_every_durable_primitive_runs_in_runner_processes(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "flows.db", processes=2, workers=4, deploy={"t": "basics", "f": "family"}) as engine:
        assert engine.runners is not None
        pids = engine.runners.pids
        assert len(pids) == 2 and os.getpid() not in pids and all(alive(pid) for pid in pids)
        t, f = engine.tenant("t"), engine.tenant("f")
        steps = await t.create("Steps", {"n": 20})
        retry = await t.create("Retry", {"fail": 2, "delay": 0, "backoff": "constant"})
        short = await t.create("Sleeper", {"duration": "100 ms"})  # served in place
        long = await t.create("Sleeper", {"duration": "600 ms"})  # unwinds, woken by the timer
        waiter = await t.create("Waiter", {"timeout": "1 minute"})
        chatty = await t.create("Chatty")
        fan = await f.create("FanOut", {"n": 3})
        assert (await t.wait(steps)).output == {"total": sum(range(20))}
        assert (await t.wait(retry)).output["attempt"] == 3
        assert (await t.wait(short)).output == ["before", "after"]
        assert (await t.wait(long)).output == ["before", "after"]
        assert await settle(t, waiter, "waiting") == "waiting"
        await t.send_event(waiter, "approval", {"ok": True})
        assert (await t.wait(waiter)).output == {"type": "approval", "payload": {"ok": True}}
        assert (await t.wait(chatty)).output == "ok"
        assert [line.message for line in await t.logs(chatty)] == ["hello from the guest", "a log line", "after the nap"]
        fanned = await f.wait(fan, timeout=60)
        assert fanned.status == "complete", fanned.error
        # Everything ran over there: the engine's own process instantiated nothing but
        # the deploy-time inspections.
        assert engine.runners.pids == pids and engine.isolates.stats.live_instances == 0


async def test_pause_resume_and_terminate_reach_an_invocation_in_a_runner(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "flows.db", processes=1, workers=2, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        paused = await t.create("Busy", {"ms": 3000, "sleep": 0})
        await inside_first_step(engine, paused)
        assert await t.pause(paused) == "waitingForPause"
        status = await t.wait(paused)
        assert status.status == "paused" and [(s.name, s.status) for s in status.steps] == [("work", "done")]
        await t.resume(paused)
        assert (await t.wait(paused)).output == ["worked", "after"]

        doomed = await t.create("Busy", {"ms": 60_000})
        await inside_first_step(engine, doomed)
        started = time.monotonic()
        assert await t.terminate(doomed) == "terminated"
        await engine.scheduler.quiesce(timeout=10)  # the runner gave its slot back
        assert time.monotonic() - started < 5  # cancelled within an epoch slice, not after 60 s
        status = await t.status(doomed)
        assert status.status == "terminated" and status.steps == []


async def test_a_runner_that_dies_is_restarted_and_its_instance_replays(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "flows.db", processes=1, workers=2, deploy={"t": "basics"}) as engine:
        assert engine.runners is not None
        t = engine.tenant("t")
        iid = await t.create("Busy", {"ms": 3000, "sleep": 0})
        await inside_first_step(engine, iid)
        (victim,) = engine.runners.pids
        os.kill(victim, signal.SIGKILL)
        status = await t.wait(iid, timeout=60)  # retried a second later, on the new runner
        assert status.status == "complete" and status.output == ["worked", "after"]
        runners = engine.stats().runners
        assert runners is not None and runners.restarts == 1 and runners.pids != [victim] and len(runners.pids) == 1
        assert (await t.wait(await t.create("Steps", {"n": 2}))).output == {"total": 1}


def test_runners_exit_when_their_engine_is_killed(tmp_path: Path) -> None:
    """A runner must not outlive its engine (it would run instances a new engine replays);
    the new engine then finishes what the killed one left."""
    db = tmp_path / "flows.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    host = subprocess.Popen([sys.executable, str(HERE / "runner_host.py"), str(db), str(component("basics")), str(ARTIFACTS)],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert host.stdout is not None
    line = host.stdout.readline().split()
    assert line[0] == "running", line
    runner_pids = [int(pid) for pid in line[1:]]
    assert runner_pids and all(alive(pid) for pid in runner_pids)
    for pid in runner_pids:  # a runner that cannot exit yet (stopped) ...
        os.kill(pid, signal.SIGSTOP)
    host.send_signal(signal.SIGKILL)
    host.wait()
    with pytest.raises(HostBusy):  # ... keeps the host lock: no second engine beside it
        asyncio.run(Engine(db, artifact_dir=ARTIFACTS, processes=1, workers=2).open())
    for pid in runner_pids:
        os.kill(pid, signal.SIGCONT)
    # The runners notice at once and exit; the host lock they inherited is free once the
    # last of them is gone (its threads tear down its memory first), not before.
    deadline = time.monotonic() + 10
    while not host_lock_free(db) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert host_lock_free(db) and not any(alive(pid) for pid in runner_pids)

    async def finish() -> None:
        async with Engine(db, artifact_dir=ARTIFACTS, processes=1, workers=2) as engine:
            status = await engine.tenant("t").wait("long", timeout=60)
            assert status.status == "complete" and status.output == ["worked", "after"]

    asyncio.run(finish())


async def test_policies_set_while_open_reach_the_runners(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "flows.db", processes=1, workers=1, deploy={"t": "egress"}) as engine:
        t = engine.tenant("t")
        denied = await t.wait(await t.create("Secret", {"name": "API_KEY"}))
        assert denied.output["error"] == "SecretNotGranted"
        engine.set_policy("t", TenantPolicy(secrets={"API_KEY": "sk-12345"}))
        granted = await t.wait(await t.create("Secret", {"name": "API_KEY"}))
        assert granted.output == {"length": 8, "starts": "sk-"}


async def test_a_loader_failure_in_a_runner_is_reported_and_retried(tmp_path: Path) -> None:
    """A runner that finds neither the component in memory nor its artifact on disk asks
    the engine's loader; a failing loader leaves the instance waiting with its error."""

    class Refusing:
        calls = 0

        async def load(self, tenant: str, workflow: str, digest: str) -> bytes:
            Refusing.calls += 1
            raise ConnectionError("registry unreachable")

    artifacts = tmp_path / "artifacts"
    wasm = component("basics").read_bytes()
    async with Engine(tmp_path / "flows.db", artifact_dir=artifacts, processes=1, workers=1, loader=Refusing()) as engine:
        await engine.register_component(wasm)  # compiled here, but the runner will not find it:
        for artifact in artifacts.rglob("*"):
            if artifact.is_file():
                artifact.unlink()
        digest = (await engine.deploy("t", wasm)).digest
        for artifact in artifacts.rglob("*"):
            if artifact.is_file():
                artifact.unlink()
        t = engine.tenant("t")
        iid = await t.create("Steps", {"n": 1}, digest=digest)
        deadline = time.monotonic() + 30
        while Refusing.calls == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        status = await settle(t, iid, "waiting")
        assert status == "waiting" and Refusing.calls >= 1
        row = await t.status(iid)
        assert row.error is not None and row.error.name == "LoaderError"
        assert "registry unreachable" in row.error.message


async def test_runner_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="between 0 and workers"):
        Engine(tmp_path / "a.db", workers=2, processes=3)
    with pytest.raises(InvalidInput, match="system clock"):
        Engine(tmp_path / "b.db", clock=ManualClock(), processes=1)


async def test_a_failed_step_write_from_a_runner_is_never_followed_by_the_outcome(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's step result and the outcome behind it are applied by the engine's
    writer: if the step result's write fails (a disk error, once), the outcome must not
    commit without it; the invocation is retried and the step runs again."""
    import sqlite3

    from tenantflow import journal as jn

    record = jn._record_entry
    failures = [sqlite3.OperationalError("disk I/O error")]

    def failing_once(pk: int, generation: int, entry: jn.JournalEntry, *rest: object) -> object:
        if entry.kind == "step" and entry.seq == 1 and entry.status == "done" and failures:
            raise failures.pop()
        return record(pk, generation, entry, *rest)  # type: ignore[arg-type]

    # Ops arrive pickled by name, so the engine's process runs this one for the runner.
    monkeypatch.setattr(jn, "_record_entry", failing_once)
    async with open_engine(tmp_path / "flows.db", processes=1, workers=1, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        status = await t.wait(await t.create("Steps", {"n": 2}), timeout=30)
        assert not failures
        assert status.status == "complete" and status.output == {"total": 1}
        assert [(s.name, s.status) for s in status.steps] == [("add", "done"), ("add", "done")]


async def test_closing_the_engine_stops_its_runners_and_leaves_work_to_replay(tmp_path: Path) -> None:
    db = tmp_path / "flows.db"
    async with open_engine(db, processes=2, workers=2, deploy={"t": "basics"}) as engine:
        assert engine.runners is not None
        pids = engine.runners.pids
        t = engine.tenant("t")
        iid = await t.create("Busy", {"ms": 60_000})
        await inside_first_step(engine, iid)
        started = time.monotonic()  # closing waits out the grace period (10 s), then cancels it
    assert time.monotonic() - started < 30 and not any(alive(pid) for pid in pids)
    async with open_engine(db, processes=1, workers=1) as engine:
        status = await engine.tenant("t").status(iid)
        assert status.status in ("queued", "running") and status.steps == []  # nothing was recorded
        await engine.tenant("t").terminate(iid)


def test_serve_with_runner_processes_survives_sigterm(tmp_path: Path) -> None:
    """`tenantflow serve --processes 2`: the API creates instances, runners run them; a
    SIGTERM mid-flight stops the runners with the server, and the next start finishes."""
    import httpx
    from apikit import ServeProcess, bearer, make_key, make_tenant, wait_status

    db, log = tmp_path / "serve.db", tmp_path / "serve.log"
    make_tenant(db, "acme")
    token = make_key(db, "acme")
    ids = [f"grind-{i}" for i in range(4)]
    first = ServeProcess(db, log, "--processes", "2").start()
    try:
        subprocess.run([sys.executable, "-m", "tenantflow.cli", "deploy", str(component("api")), "--tenant", "acme",
                        "--url", first.url, "--api-key", token], check=True, capture_output=True, timeout=120)
        with httpx.Client(base_url=first.url, headers=bearer(token), timeout=60) as client:
            batch = [{"workflow": "Grind", "id": i, "params": {"n": 6, "ms": 250}} for i in ids]
            client.post("/v1/tenants/acme/instances/batch", json={"instances": batch}).raise_for_status()
            wait_status(client, "acme", ids[0], "running")
            metrics = client.get("/metrics").status_code  # tenant keys may not read metrics
            assert metrics == 403
        assert first.terminate() == 0
    finally:
        first.kill()
    second = ServeProcess(db, log, "--processes", "2").start()
    try:
        with httpx.Client(base_url=second.url, headers=bearer(token), timeout=60) as client:
            for instance_id in ids:
                done = wait_status(client, "acme", instance_id)
                assert done["status"] == "complete" and done["output"] == list(range(6))
        assert second.terminate() == 0
    finally:
        second.kill()
    assert "processes" in log.read_text()


async def test_a_new_instance_started_before_its_row_committed_fails_cleanly_if_the_commit_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With runners a new instance is dispatched as soon as its row is inserted. If that
    commit then fails, `create` raises, the runner's guest never gets past its first
    durable call, and the instance is nowhere: not in the database, not retried forever."""
    import sqlite3

    from tenantflow import database

    commit_one = database.GroupCommitWriter._commit_one
    failures = [sqlite3.OperationalError("disk I/O error")]

    def failing_commit(self: database.GroupCommitWriter, conn: sqlite3.Connection, op: object, future: object) -> None:
        if failures and "insert_instances" in repr(op):
            def broken(c: sqlite3.Connection) -> object:
                op(c)  # type: ignore[operator]  # rows inserted, runner dispatched ...
                raise failures.pop()  # ... then the commit fails
            return commit_one(self, conn, broken, future)  # type: ignore[arg-type]
        return commit_one(self, conn, op, future)  # type: ignore[arg-type]

    monkeypatch.setattr(database.GroupCommitWriter, "_commit_one", failing_commit)
    async with open_engine(tmp_path / "flows.db", processes=1, workers=1, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
            await t.create("Steps", {"n": 1}, id="doomed")
        await asyncio.sleep(1.2)  # its invocation failed in the host: retried a second later, finds nothing
        await engine.scheduler.quiesce(timeout=10)
        with pytest.raises(Exception, match="not found"):
            await t.status("doomed")
        assert (await t.wait(await t.create("Steps", {"n": 2}))).output == {"total": 1}
        assert engine.scheduler.queued_count == 0 and engine.scheduler.running_count == 0
