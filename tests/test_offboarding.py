"""Deleting a tenant with everything it stored (offboarding.py), and nothing of another's."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from enginekit import ARTIFACTS, component, open_engine

from tenantflow import offboarding
from tenantflow.auth import KeyAdmin, Role, issue_key
from tenantflow.clock import ManualClock, SystemClock
from tenantflow.errors import HostBusy, TenantNotFound, UnknownWorkflow
from tenantflow.manifest import TenantManifest
from tenantflow.registry import digest_of


def _private_artifacts(tmp_path: Path, *names: str) -> Path:
    """A copy of the session's compiled artifacts of these components: the deletion removes
    artifacts, and the shared cache must keep them for the other tests."""
    folder = tmp_path / "artifacts"
    folder.mkdir()
    for name in names:
        for artifact in ARTIFACTS.glob(f"{digest_of(component(name).read_bytes())}-*.cwasm"):
            shutil.copy(artifact, folder / artifact.name)
    return folder


def _rows(db: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


async def test_deleting_a_tenant_removes_everything_it_stored_and_nothing_of_anothers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offboarding, "DELETE_BATCH", 3)  # seven instances: three batches
    db, clock = tmp_path / "flows.db", ManualClock()
    artifacts = _private_artifacts(tmp_path, "basics", "flow_v1")
    shared, own = (digest_of(component(n).read_bytes()) for n in ("basics", "flow_v1"))
    async with open_engine(db, clock=clock, deploy={"alpha": "basics", "beta": "basics"}, artifact_dir=artifacts) as engine:
        admin = KeyAdmin(engine)
        await admin.create_tenant("alpha")
        await admin.create_tenant("beta")
        alpha_key = (await admin.issue_key("alpha", Role.TENANT_DEVELOPER.value)).key.id
        beta_key = (await admin.issue_key("beta", Role.TENANT_READONLY.value)).key.id
        manifest = TenantManifest.model_validate({"tenant": "alpha", "source": "workflow.py", "folder": str(tmp_path), "limits": {"unfinished_instances_max": 50}})
        await engine.apply_manifest(manifest)
        alpha, beta = engine.tenant("alpha"), engine.tenant("beta")
        await alpha.register(component("flow_v1").read_bytes())  # a version only alpha holds
        chatty = await alpha.create("Chatty", id="chatty")  # logs, then sleeps
        waiter = await alpha.create("Waiter", {"timeout": "1 hour"}, id="waiter")
        done = [await alpha.create("Steps", {"n": 2}, id=f"done-{i}") for i in range(5)]
        theirs = await beta.create("Waiter", {"timeout": "1 day"}, id="waiter")  # same id, other tenant
        await engine.scheduler.quiesce()
        await alpha.send_event(waiter, "other", {"buffered": True})  # a pending event row
        assert (await alpha.status(chatty)).status == "waiting" and (await alpha.status(done[0])).status == "complete"
        assert await alpha.logs(chatty)
        alpha_pks = [pk for (pk,) in _rows(db, "SELECT pk FROM instances WHERE tenant='alpha'")]
        assert len(alpha_pks) == 7

        deleted = await engine.delete_tenant("alpha")

        assert (deleted.name, deleted.instances, deleted.deployments, deleted.api_keys, deleted.components) == ("alpha", 7, len(
            _rows(db, "SELECT 1 FROM deployments WHERE tenant='beta'")), 1, 1)
        marks = ",".join("?" * len(alpha_pks))
        for table, column in (("journal", "instance_pk"), ("events", "instance_pk"), ("logs", "instance_pk")):
            assert _rows(db, f"SELECT COUNT(*) FROM {table} WHERE {column} IN ({marks})", *alpha_pks) == [(0,)], table
        for table, column in (("instances", "tenant"), ("deployments", "tenant"), ("api_keys", "tenant"), ("tenants", "name"),
                              ("tenant_manifests", "tenant"), ("tenant_components", "tenant"), ("tenant_usage", "tenant")):
            assert _rows(db, f"SELECT COUNT(*) FROM {table} WHERE {column}='alpha'") == [(0,)], table
        # Its own version went with its bytes and artifact; the one beta deployed too stays.
        assert [d for (d,) in _rows(db, "SELECT digest FROM components ORDER BY digest")] == [shared]
        assert not (engine.data_dir / "components" / f"{own}.wasm").exists() and not list(artifacts.glob(f"{own}-*"))
        assert (engine.data_dir / "components" / f"{shared}.wasm").exists() and list(artifacts.glob(f"{shared}-*"))
        assert engine.policy_for("alpha").max_unfinished_instances is None
        assert [k.id for k in await admin.keys()] == [beta_key] and alpha_key != beta_key

        # Nothing of alpha is left to run: its timers are due and nothing happens.
        clock.advance(7200)
        await engine.scheduler.quiesce()
        assert engine.stats().scheduler.running == 0
        with pytest.raises(UnknownWorkflow):
            await alpha.create("Steps", {"n": 1})
        assert (await alpha.list()).instances == []
        with pytest.raises(TenantNotFound, match="tenant 'alpha' not found"):
            await engine.delete_tenant("alpha")

        # Beta's instance of the same id and code was untouched and still runs.
        await beta.send_event(theirs, "approval", {"ok": 1})
        assert (await beta.wait(theirs)).output == {"type": "approval", "payload": {"ok": 1}}

        # The name is free again: a new alpha starts empty, and its code comes back.
        await admin.create_tenant("alpha")
        await engine.deploy("alpha", component("flow_v1").read_bytes())
        assert (engine.data_dir / "components" / f"{own}.wasm").exists()
        again = await alpha.create("pipeline", {"commit": "c"})
        assert [i.id for i in (await alpha.list()).instances] == [again]


async def test_a_registration_racing_a_deletion_keeps_its_bytes(tmp_path: Path) -> None:
    """A deletion drops a version no tenant holds, with its file, in its own transaction;
    a tenant registering those bytes meanwhile (its file written, its grant not yet
    committed) writes the file again once its grant is in."""
    artifacts = _private_artifacts(tmp_path, "basics")
    async with open_engine(tmp_path / "flows.db", artifact_dir=artifacts) as engine:
        wasm = component("basics").read_bytes()
        digest = digest_of(wasm)
        put = engine.components.put
        raced = []

        def put_then_lose(data: bytes) -> str:
            got = put(data)
            if not raced:  # the deletion's transaction runs here, between the put and the grant
                raced.append(digest)
                engine.remove_component_files(digest)
            return got

        engine.components.put = put_then_lose  # type: ignore[method-assign]
        await engine.deploy("gamma", wasm)
        assert raced and (engine.data_dir / "components" / f"{digest}.wasm").exists()
        instance = engine.tenant("gamma")
        done = await instance.wait(await instance.create("Steps", {"n": 2}))
        assert done.output == {"total": 1}


async def test_deleting_a_tenant_that_never_existed_is_an_error(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "flows.db", deploy={"beta": "basics"}) as engine:
        with pytest.raises(TenantNotFound):
            await engine.delete_tenant("nobody")
        with pytest.raises(ValueError):
            await engine.delete_tenant("Not A Name")
        # A tenant known only by its name (created, nothing deployed) can be deleted.
        await engine.write(lambda conn: conn.execute("INSERT INTO tenants (name, created_at) VALUES ('empty', 0)"))
        assert (await engine.delete_tenant("empty")).instances == 0
        await engine.write(issue_key(None, Role.PLATFORM_ADMIN, 0))
        assert _rows(engine.path, "SELECT COUNT(*) FROM api_keys") == [(1,)]  # platform keys are no tenant's


@pytest.mark.parametrize("processes", [0, 1], ids=["in-process", "runner-process"])
async def test_deleting_a_tenant_stops_its_running_instances_and_leaves_no_rows(tmp_path: Path, processes: int) -> None:
    """An invocation in the middle of a step when its tenant goes is stopped, and what it
    would still write (the step's result, its logs, its end) is fenced: no row of the
    instance outlives the deletion."""
    db = tmp_path / "flows.db"
    async with open_engine(db, clock=SystemClock(), processes=processes, workers=2, deploy={"gone": "basics"}) as engine:
        t = engine.tenant("gone")
        busy = await t.create("Busy", {"ms": 1500, "sleep": "1 second"})
        deadline = time.monotonic() + 30
        while (await t.status(busy)).status != "running" and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert (await t.status(busy)).status == "running"
        [(pk,)] = _rows(db, "SELECT pk FROM instances WHERE id=?", busy)
        assert (await engine.delete_tenant("gone")).instances == 1
        while engine.stats().scheduler.running and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert engine.stats().scheduler.running == 0
        await asyncio.sleep(2)  # past the step's end and the sleep: nothing comes back
        for table, column in (("instances", "pk"), ("journal", "instance_pk"), ("logs", "instance_pk"), ("events", "instance_pk")):
            assert _rows(db, f"SELECT COUNT(*) FROM {table} WHERE {column}=?", pk) == [(0,)], table


async def test_a_deleted_version_leaves_the_runner_processes_memory(tmp_path: Path) -> None:
    """A runner process maps the compiled artifacts it runs; once the version is deleted the
    engine tells every runner to drop it, rather than keeping the code mapped until the
    cache's idle eviction."""
    artifacts = _private_artifacts(tmp_path, "basics")
    async with open_engine(tmp_path / "flows.db", clock=SystemClock(), processes=1, workers=1, artifact_dir=artifacts, deploy={"gone": "basics"}) as engine:
        t = engine.tenant("gone")
        assert (await t.wait(await t.create("Steps", {"n": 1}))).status == "complete"
        assert engine.runners is not None
        [pid] = engine.runners.pids
        [artifact] = artifacts.glob("*.cwasm")
        maps = Path(f"/proc/{pid}/maps")
        assert str(artifact) in maps.read_text()
        assert (await engine.delete_tenant("gone")).components == 1
        deadline = time.monotonic() + 20
        while str(artifact) in maps.read_text() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert str(artifact) not in maps.read_text()


async def test_a_tenant_is_deleted_only_by_the_host_that_runs_the_scheduler(tmp_path: Path) -> None:
    """A host running the scheduler keeps the tenant's policy and code in memory: another
    process deleting the tenant under it would leave them there, to be granted to the next
    tenant of that name. So the deletion goes through the host (its API), or runs with the
    database's host lock held."""
    db = tmp_path / "flows.db"
    async with open_engine(db, deploy={"gone": "basics"}) as host:
        async with open_engine(db, run_scheduler=False) as beside:
            with pytest.raises(HostBusy, match="use its API"):
                await beside.delete_tenant("gone")
        assert _rows(db, "SELECT COUNT(*) FROM deployments WHERE tenant='gone'") != [(0,)]  # nothing went
        assert (await host.tenant("gone").wait(await host.tenant("gone").create("Steps", {"n": 1}))).status == "complete"
    async with open_engine(db, run_scheduler=False) as alone:  # no host runs: it may, holding the lock meanwhile
        assert (await alone.delete_tenant("gone")).deployments > 0
        assert alone._lock_file is None
    async with open_engine(db):  # and the lock was given back
        assert _rows(db, "SELECT COUNT(*) FROM deployments") == [(0,)]


async def test_an_interrupted_deletion_is_finished_by_asking_again(tmp_path: Path) -> None:
    """What is left of a tenant after a deletion stopped midway (its instances, its hold on
    its versions) still makes it exist: deleting it again goes on where the first stopped."""
    db = tmp_path / "flows.db"
    artifacts = _private_artifacts(tmp_path, "basics")
    async with open_engine(db, deploy={"gone": "basics"}, artifact_dir=artifacts) as engine:
        t = engine.tenant("gone")
        for i in range(5):
            await t.wait(await t.create("Steps", {"n": 1}, id=f"i{i}"))
        await engine.write(offboarding.close_tenant("gone"))  # a first deletion, stopped after a batch
        assert len(await engine.write(offboarding.delete_instances_of("gone", 2))) == 2
        again = await engine.delete_tenant("gone")
        assert (again.instances, again.deployments, again.components) == (3, 0, 1)
        for table, column in (("instances", "tenant"), ("tenant_components", "tenant"), ("tenant_usage", "tenant")):
            assert _rows(db, f"SELECT COUNT(*) FROM {table} WHERE {column}='gone'") == [(0,)], table
        assert _rows(db, "SELECT COUNT(*) FROM components") == [(0,)] and not list(artifacts.glob("*.cwasm"))
        with pytest.raises(TenantNotFound):
            await engine.delete_tenant("gone")
