"""Tenancy: envelope-and-dispatch per tenant, code versions and upgrades, the loader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from enginekit import component, open_engine

from tenantflow import journal as jn
from tenantflow.clock import ManualClock
from tenantflow.engine import Engine
from tenantflow.errors import InstanceNotFound, InvalidInput, UnknownWorkflow
from tenantflow.registry import digest_of


async def _to_approval(engine: Engine, tenant: str, instance_id: str, clock: ManualClock) -> None:
    await engine.scheduler.quiesce()
    clock.advance(60)
    await engine.scheduler.quiesce()
    status = await engine.tenant(tenant).status(instance_id)
    assert (status.status, status.waiting_for) == ("waiting", "go")


async def test_two_tenants_same_workflow_name_run_their_own_code_across_restarts(tmp_path: Path) -> None:
    db, clock = tmp_path / "flows.db", ManualClock()
    async with open_engine(db, clock=clock, deploy={"alpha": "flow_v1", "beta": "flow_v3"}) as engine:
        alpha, beta = engine.tenant("alpha"), engine.tenant("beta")
        await alpha.create("pipeline", {"commit": "a1"}, id="run-1")
        await beta.create("pipeline", {"commit": "b1"}, id="run-1")  # same id, other tenant: allowed
        await engine.scheduler.quiesce()
        assert [s.name for s in (await alpha.status("run-1")).steps][:1] == ["build"]
        assert [s.name for s in (await beta.status("run-1")).steps][:1] == ["compile"]
    clock.advance(60)
    async with open_engine(db, clock=clock) as engine:  # a restarted host routes by envelope
        alpha, beta = engine.tenant("alpha"), engine.tenant("beta")
        await engine.scheduler.quiesce()
        await alpha.send_event("run-1", "go", {"env": "prod"})
        await beta.send_event("run-1", "go", {"env": "staging"})
        a, b = await alpha.wait("run-1"), await beta.wait("run-1")
        assert a.output == {"version": 1, "deployed": "app-a1", "to": "prod"}
        assert b.output == {"version": 3, "deployed": "app-b1", "to": "staging"}


async def test_every_binding_operation_refuses_another_tenants_instance_like_a_missing_one(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "flows.db", deploy={"alpha": "flow_v1", "beta": "flow_v1"}) as engine:
        alpha, beta = engine.tenant("alpha"), engine.tenant("beta")
        await alpha.create("pipeline", {"commit": "x"}, id="private")
        operations = {
            "status": lambda b, i: b.status(i),
            "pause": lambda b, i: b.pause(i),
            "resume": lambda b, i: b.resume(i),
            "terminate": lambda b, i: b.terminate(i),
            "restart": lambda b, i: b.restart(i),
            "delete": lambda b, i: b.delete(i),
            "send_event": lambda b, i: b.send_event(i, "go", {}),
            "logs": lambda b, i: b.logs(i),
            "log_page": lambda b, i: b.log_page(i, limit=1),
            "a page of the status": lambda b, i: b.status(i, steps_limit=1, steps_from=1),
        }
        for name, operation in operations.items():
            with pytest.raises(InstanceNotFound) as foreign:
                await operation(beta, "private")
            with pytest.raises(InstanceNotFound) as missing:
                await operation(beta, "nothing-here")
            assert str(foreign.value).replace("private", "X") == str(missing.value).replace("nothing-here", "X"), name
        assert [i.id for i in (await beta.list()).instances] == []
        assert (await alpha.status("private")).status != "terminated"


async def test_a_tenant_runs_only_component_versions_it_deployed_or_registered(tmp_path: Path) -> None:
    """Components are stored once by digest, but a digest is no key to another tenant's
    code: pinning or upgrading to a version another tenant deployed (or one the platform
    registered for no tenant) is refused like an unknown one, until the tenant registers
    those bytes itself."""
    clock = ManualClock()
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"alpha": "flow_v3", "beta": "flow_v1"}) as engine:
        alpha, beta = engine.tenant("alpha"), engine.tenant("beta")
        alphas = (await alpha.status(await alpha.create("pipeline", {"commit": "a"}))).digest
        unowned = (await engine.register_component(component("flow_v2").read_bytes())).digest
        waiting = await beta.create("pipeline", {"commit": "b"}, id="b")
        await _to_approval(engine, "beta", waiting, clock)
        for digest in (alphas, unowned, "0" * 64):
            with pytest.raises(UnknownWorkflow) as refused:
                await beta.create("pipeline", {"commit": "x"}, digest=digest)
            assert str(refused.value) == f"component {digest[:12]} is not registered"
            with pytest.raises(UnknownWorkflow):
                await beta.create_batch([{"workflow": "pipeline", "params": {}, "digest": digest}])
            with pytest.raises(UnknownWorkflow):
                await beta.upgrade("pipeline", digest, apply=True)
        # Past the read that checks a pin, the insert checks it again in its own transaction.
        with pytest.raises(UnknownWorkflow):
            await engine.write(jn.insert_instances([jn.NewInstance("beta", "raced", "pipeline", alphas, "{}", None, clock.now_ms())]))
        assert [i.id for i in (await beta.list()).instances] == ["b"]
        assert (await beta.status(waiting)).digest != alphas

        await beta.register(component("flow_v3").read_bytes())  # the same bytes, now beta's too
        assert [r.result for r in await beta.upgrade("pipeline", alphas, apply=True)] == ["diverged"]
        pinned = await beta.create("pipeline", {"commit": "p"}, digest=alphas)
        assert (await beta.status(pinned)).digest == alphas


async def test_deploying_a_new_version_affects_new_instances_only(tmp_path: Path) -> None:
    clock = ManualClock()
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "flow_v1"}) as engine:
        t = engine.tenant("t")
        old = await t.create("pipeline", {"commit": "c1"})
        await _to_approval(engine, "t", old, clock)
        await engine.deploy("t", component("flow_v2").read_bytes())
        new = await t.create("pipeline", {"commit": "c2"})
        await _to_approval(engine, "t", new, clock)
        for instance_id in (old, new):
            await t.send_event(instance_id, "go", {"env": "prod"})
        assert (await t.wait(old)).output["version"] == 1
        assert (await t.wait(new)).output["version"] == 2


async def test_upgrade_moves_compatible_instances_and_refuses_divergent_code(tmp_path: Path) -> None:
    clock = ManualClock()
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "flow_v1"}) as engine:
        t = engine.tenant("t")
        waiting = await t.create("pipeline", {"commit": "w"}, id="waiting")
        await _to_approval(engine, "t", waiting, clock)
        v2 = (await t.register(component("flow_v2").read_bytes())).digest
        v3 = (await t.register(component("flow_v3").read_bytes())).digest
        v1 = (await t.status(waiting)).digest

        dry = await t.upgrade("pipeline", v3)
        assert [(r.id, r.result) for r in dry] == [("waiting", "diverged")]
        assert dry[0].divergence is not None and "position 0" in dry[0].divergence
        assert "step 'build'" in dry[0].divergence and "step 'compile'" in dry[0].divergence
        assert (await t.upgrade("pipeline", v3, apply=True))[0].result == "diverged"
        assert (await t.status(waiting)).digest == v1  # untouched

        assert [r.result for r in await t.upgrade("pipeline", v2)] == ["compatible"]
        assert (await t.status(waiting)).digest == v1  # a dry run changes nothing
        assert [r.result for r in await t.upgrade("pipeline", v2, apply=True)] == ["upgraded"]
        assert (await t.status(waiting)).digest == v2
        await t.send_event(waiting, "go", {"env": "prod"})
        done = await t.wait(waiting)
        assert done.output["version"] == 2 and [s.name for s in done.steps][-1] == "notify"



async def test_an_upgrade_goes_a_page_at_a_time(tmp_path: Path) -> None:
    """`upgrade_page` examines at most `limit` instances, oldest first, and its cursor leads
    through the rest; upgraded ones leave the set, diverged ones are passed over."""
    clock = ManualClock()
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "flow_v1"}) as engine:
        t = engine.tenant("t")
        ids = [await t.create("pipeline", {"commit": c}, id=c) for c in ("a", "b", "c", "d", "e")]
        await _to_approval(engine, "t", "a", clock)
        v2 = (await t.register(component("flow_v2").read_bytes())).digest
        v3 = (await t.register(component("flow_v3").read_bytes())).digest

        async def pages(digest: str, limit: int, **kw: object) -> list[list[tuple[str, str]]]:
            out, cursor = [], None
            while True:
                page = await t.upgrade_page("pipeline", digest, limit=limit, cursor=cursor, **kw)  # type: ignore[arg-type]
                out.append([(r.id, r.result) for r in page.results])
                if page.next_cursor is None:
                    return out
                cursor = page.next_cursor

        assert await pages(v3, 2) == [[("a", "diverged"), ("b", "diverged")], [("c", "diverged"), ("d", "diverged")], [("e", "diverged")]]
        assert await pages(v2, 5) == [[(i, "compatible") for i in ids]]  # a full last page: no empty one after it
        assert await pages(v2, 1, instance_ids=["e", "b", "nope"]) == [[("b", "compatible")], [("e", "compatible")]]
        assert await pages(v2, 2, apply=True, instance_ids=["a", "c", "d"]) == [[("a", "upgraded"), ("c", "upgraded")], [("d", "upgraded")]]
        assert [(r.id, r.result) for r in await t.upgrade("pipeline", v2)] == [("b", "compatible"), ("e", "compatible")]
        assert {i: (await t.status(i)).digest == v2 for i in ids} == {"a": True, "b": False, "c": True, "d": True, "e": False}
        for bad, message in [({"limit": 0}, "limit must be between 1 and 1000, got 0"), ({"cursor": "???"}, "invalid cursor '???'")]:
            with pytest.raises(InvalidInput, match=re.escape(message)):
                await t.upgrade_page("pipeline", v2, **bad)  # type: ignore[arg-type]


class FlakyLoader:
    """A platform loader that can be down, or serve the wrong bytes, on demand."""

    def __init__(self, good: bytes) -> None:
        self.good = good
        self.mode = "down"
        self.calls = 0

    async def load(self, tenant: str, workflow: str, digest: str) -> bytes:
        self.calls += 1
        if self.mode == "down":
            raise ConnectionError("registry unreachable")
        if self.mode == "wrong":
            return self.good + b"tampered"
        return self.good


@pytest.mark.slow
async def test_loader_failures_leave_the_instance_waiting_and_it_recovers(tmp_path: Path) -> None:
    db, clock = tmp_path / "flows.db", ManualClock()
    wasm = component("flow_v1").read_bytes()
    async with open_engine(db, clock=clock, deploy={"t": "flow_v1"}) as engine:
        iid = await engine.tenant("t").create("pipeline", {"commit": "l"})
        await engine.scheduler.quiesce()
    loader = FlakyLoader(wasm)
    # A fresh artifact cache: the next wake-up must go to the loader.
    async with Engine(db, clock=clock, loader=loader, artifact_dir=tmp_path / "artifacts") as engine:
        t = engine.tenant("t")
        clock.advance(60)
        await engine.scheduler.quiesce()
        status = await t.status(iid)
        assert status.status == "waiting" and status.error is not None
        assert status.error.name == "LoaderError" and "registry unreachable" in status.error.message
        loader.mode = "wrong"
        clock.advance(5)
        await engine.scheduler.quiesce()
        status = await t.status(iid)
        assert status.error is not None and f"for component {digest_of(wasm)[:12]}; refusing them" in status.error.message
        loader.mode = "ok"
        clock.advance(300)
        await engine.scheduler.quiesce()
        status = await t.status(iid)
        assert (status.status, status.waiting_for, status.error) == ("waiting", "go", None)
        await t.send_event(iid, "go", {"env": "prod"})
        assert (await t.wait(iid, timeout=120)).status == "complete"
        assert loader.calls >= 3


async def test_applied_manifests_survive_a_restart_with_secrets_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tenantflow.manifest import load_manifest

    folder = tmp_path / "tenant"
    folder.mkdir()
    (folder / "workflow.py").write_text("")
    (folder / "tenant.toml").write_text(
        'tenant = "gamma"\nsource = "workflow.py"\n[egress]\nallow = ["api.example.com"]\n'
        '[secrets]\nTOKEN = "env:GAMMA_TOKEN"\n[limits]\nmemory_mib = 128\n'
    )
    monkeypatch.setenv("GAMMA_TOKEN", "first-value")
    db = tmp_path / "flows.db"
    async with open_engine(db) as engine:
        policy = await engine.apply_manifest(load_manifest(folder / "tenant.toml"))
        assert policy.secrets == {"TOKEN": "first-value"} and policy.egress == ("api.example.com",)
    assert b"first-value" not in db.read_bytes() + (db.with_name(db.name + "-wal").read_bytes() if db.with_name(db.name + "-wal").exists() else b"")
    monkeypatch.setenv("GAMMA_TOKEN", "rotated")
    async with open_engine(db) as engine:
        restored = engine.policy_for("gamma")
        assert restored.secrets == {"TOKEN": "rotated"} and restored.memory_bytes == 128 * 1024 * 1024
    monkeypatch.delenv("GAMMA_TOKEN")
    async with open_engine(db) as engine:  # a missing secret does not stop the engine
        assert engine.policy_for("gamma").secrets == {} and engine.policy_for("gamma").egress == ("api.example.com",)


async def test_the_binding_asks_the_authorizer_before_every_operation(tmp_path: Path) -> None:
    from tenantflow.auth import Action, Principal, Role
    from tenantflow.errors import Forbidden

    class Recording:
        def __init__(self) -> None:
            self.asked: list[tuple[str, str, str | None]] = []

        async def authenticate(self, token: str | None) -> Principal:
            raise NotImplementedError

        async def authorize(self, principal: Principal, action: Action, tenant: str, instance_id: str | None) -> None:
            self.asked.append((action.value, tenant, instance_id))
            if action is Action.CONTROL:
                raise Forbidden(f"{principal.subject} may not control instances of {tenant}")

    async with open_engine(tmp_path / "flows.db", deploy={"t": "basics"}) as engine:
        authorizer = Recording()
        viewer = Principal(subject="viewer", tenant="t", role=Role.TENANT_READONLY)
        t = engine.tenant("t", principal=viewer, authorizer=authorizer)
        iid = await t.create("Steps", {"n": 1}, id="one")
        await t.wait(iid)
        with pytest.raises(Forbidden):
            await t.terminate(iid)
        await t.list()
        assert ("create", "t", None) in authorizer.asked and ("read", "t", "one") in authorizer.asked
        assert ("control", "t", "one") in authorizer.asked and ("read", "t", None) in authorizer.asked
        assert (await engine.tenant("t").status(iid)).status == "complete"  # refused: nothing changed
