"""Child workflows: fan-out, joins, events, failures, and the tenant boundary."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from enginekit import open_engine

from tenantflow.clock import ManualClock
from tenantflow.errors import InstanceNotFound, QuotaExceeded
from tenantflow.limits import Limits
from tenantflow.policy import TenantPolicy


async def test_fan_out_of_20_children_awaited_by_a_parent(tmp_path: Path) -> None:
    clock = ManualClock()
    async with open_engine(tmp_path / "flows.db", clock=clock, workers=4, deploy={"t": "family"}) as engine:
        t = engine.tenant("t")
        parent = await t.create("FanOut", {"n": 20, "sleep": "1 minute"}, id="parent")
        await engine.scheduler.quiesce()
        assert (await t.status(parent)).status == "waiting"
        children = [i for i in (await t.list(workflow="Child", limit=100)).instances]
        assert len(children) == 20 and all(c.status == "waiting" for c in children)
        small = await t.create("FanOut", {"n": 2, "sleep": "1 minute"}, id="small")
        await engine.scheduler.quiesce()
        assert {c.id for c in (await t.list(parent="parent", limit=100)).instances} == {c.id for c in children}
        assert {(await t.status(c.id)).parent for c in children} == {"parent"}  # a child names its parent
        assert (await t.status(parent)).parent is None
        assert len((await t.list(parent=small)).instances) == 2
        page = await t.list(parent="parent", limit=15)  # pages like any list
        rest = await t.list(parent="parent", limit=15, cursor=page.next_cursor)
        assert len(page.instances) == 15 and len(rest.instances) == 5 and rest.next_cursor is None
        with pytest.raises(InstanceNotFound):
            await t.list(parent="nobody")
        with pytest.raises(InstanceNotFound):  # another tenant's instance is as missing as any
            await engine.tenant("other").list(parent="parent")
        clock.advance(60)
        status = await t.wait(parent, timeout=120)
        assert status.status == "complete"
        assert status.output == {"sum": sum(i * i for i in range(20)), "squares": [i * i for i in range(20)]}
        assert [s.kind for s in status.steps] == ["children", "join"]
        # replays did not create children twice
        assert len((await t.list(parent="parent", limit=100)).instances) == 20


async def test_join_reports_failed_children_and_result_raises(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "flows.db", deploy={"t": "family"}) as engine:
        t = engine.tenant("t")
        status = await t.wait(await t.create("Supervisor", {"good_id": "good-one"}))
        assert status.status == "complete", status.error
        assert status.output["good"] == 9 and status.output["bad_ok"] is False
        assert status.output["caught"] == ["ValueError", "child 4 failed"]
        assert (await t.status("good-one")).status == "complete"


async def test_events_and_status_of_children(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "flows.db", deploy={"t": "family"}) as engine:
        t = engine.tenant("t")
        status = await t.wait(await t.create("Sender"))
        assert status.status == "complete", status.error
        assert status.output["child_said"] == {"do": "it"}
        assert status.output["first_status"] in ("queued", "running", "waiting")


async def test_guest_cannot_reach_another_tenants_instance(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "flows.db", deploy={"victim": "family", "mallory": "family"}) as engine:
        victim, mallory = engine.tenant("victim"), engine.tenant("mallory")
        await victim.create("Listener", id="secret-instance")
        status = await mallory.wait(await mallory.create("Crosser", {"target": "secret-instance"}))
        missing = await mallory.wait(await mallory.create("Crosser", {"target": "never-existed"}))
        same = {k: [v[0], v[1].replace("never-existed", "secret-instance")] for k, v in missing.output.items()}
        assert status.output == same  # indistinguishable from a missing instance
        assert status.output["status"] == ["InstanceNotFound", "instance 'secret-instance' not found"]
        assert (await victim.status("secret-instance")).status == "waiting"  # untouched


async def test_unknown_child_workflow_is_a_catchable_error(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "flows.db", deploy={"t": "family"}) as engine:
        t = engine.tenant("t")
        status = await t.wait(await t.create("Unknown"))
        assert status.output == ["UnknownWorkflow", "tenant 't' has no workflow 'NoSuchWorkflow'"]


async def test_terminating_a_child_wakes_its_joining_parent(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "flows.db", deploy={"t": "family"}) as engine:
        t = engine.tenant("t")
        parent = await t.create("Sender")  # its Listener child waits... until the parent sends
        status = await t.wait(parent)
        assert status.status == "complete"
        # a parent joining a child that gets terminated sees the termination
        supervisor = await t.create("FanOut", {"n": 1, "sleep": "1 hour"})
        await engine.scheduler.quiesce()
        child = (await t.list(workflow="Child")).instances[0].id
        await t.terminate(child)
        result = await t.wait(supervisor)
        assert result.status == "errored" and result.error is not None
        assert result.error.name == "ChildFailedError" and "was terminated" in result.error.message


async def test_a_guests_fan_out_is_bounded_per_call_and_per_instance(tmp_path: Path) -> None:
    """A `start` may create at most `max_children_per_call` children and an instance at most
    `max_children_per_instance` over its life: a hostile fan-out gets a precise error (the
    guest may catch it) and creates nothing, rather than filling the disk."""
    limits = Limits(max_children_per_call=3, max_children_per_instance=4)
    async with open_engine(tmp_path / "flows.db", limits=limits, deploy={"t": "family"}) as engine:
        t = engine.tenant("t")
        too_many = await t.wait(await t.create("FanOut", {"n": 4}, id="too-many"))
        assert too_many.status == "errored" and too_many.error is not None
        assert (too_many.error.name, too_many.error.message) == ("ChildWorkflowError", "start of 4 children: at most 3 at once")
        assert (await t.list(parent="too-many")).instances == []
        assert (await t.wait(await t.create("FanOut", {"n": 3}))).output["squares"] == [0, 1, 4]
        over_life = await t.wait(await t.create("Spawner", {"batches": [3, 2]}, id="over-life"))
        assert over_life.status == "complete", over_life.error
        assert over_life.output == [
            {"started": 3},
            {"error": "ChildLimitExceeded", "message": "instance 'over-life' has started 3 children; 2 more would pass its limit of 4"},
        ]
        assert len((await t.list(parent="over-life")).instances) == 3
    # A join names its instances: as many as an instance may start, each read on every wake-up.
    async with open_engine(tmp_path / "none.db", limits=Limits(max_children_per_instance=0), deploy={"t": "family"}) as engine:
        t = engine.tenant("t")
        crossed = await t.wait(await t.create("Crosser", {"target": "anyone"}))
        assert crossed.output["join"] == ["InvalidInput", "join 'join anyone' of 1 instances: at most 0, as many as an instance may start"]


async def test_a_tenants_unfinished_instances_are_bounded_by_its_quota(tmp_path: Path) -> None:
    """`max_unfinished_instances_per_tenant` bounds what a tenant has in flight, whoever
    starts it (the API, a batch, a guest's children starting children): past it a create is
    refused whole (QuotaExceeded) and a guest's start gets a catchable error; an instance that
    finishes, is terminated or deleted frees its place (counted by triggers in the database)."""
    async with open_engine(tmp_path / "flows.db", limits=Limits(max_unfinished_instances_per_tenant=3), deploy={"t": "family", "u": "family"}) as engine:
        t = engine.tenant("t")
        listener = await t.create("Listener", id="l1")  # waits for an event: unfinished
        spawner = await t.wait(await t.create("Spawner", {"batches": [1, 1]}, id="sp"))  # itself, l1, then its children
        assert spawner.output == [
            {"started": 1},
            {"error": "QuotaExceeded", "message": "tenant 't' has 3 unfinished instances; 1 more would pass its quota of 3"},
        ]
        await engine.scheduler.quiesce()
        with pytest.raises(QuotaExceeded, match="tenant 't' has 1 unfinished instances; 3 more would pass its quota of 3"):
            await t.create_batch([{"workflow": "Listener"} for _ in range(3)])  # all or nothing (the spawner and its child are done)
        assert len((await t.list(workflow="Listener")).instances) == 1
        await engine.tenant("u").create_batch([{"workflow": "Listener"} for _ in range(3)])  # another tenant's quota is its own
        await t.create("Listener", id="l2")
        third = await t.create("Listener", id="l3")
        with pytest.raises(QuotaExceeded):
            await t.create("Listener")
        await t.terminate(third)
        await t.delete(listener)
        for i in range(2):  # two places freed
            await t.create("Listener", id=f"again-{i}")
        with pytest.raises(QuotaExceeded):
            await t.create("Listener")
        with pytest.raises(QuotaExceeded):  # a finished one restarted is unfinished again
            await t.restart(third)
        assert (await t.status(third)).status == "terminated"
        assert await t.restart("again-0") == "queued"  # an unfinished one takes no new place


async def test_a_tenants_policy_sets_its_own_quota(tmp_path: Path) -> None:
    """A platform's plans differ per tenant: `TenantPolicy.max_unfinished_instances` (a
    manifest's `unfinished_instances_max`) replaces the engine's default for that tenant,
    for its API creates and its guests' children alike."""
    async with open_engine(tmp_path / "flows.db", deploy={"t": "family", "u": "family"}) as engine:
        engine.set_policy("t", TenantPolicy(max_unfinished_instances=1))
        t = engine.tenant("t")
        waiting = await t.create("Listener")
        with pytest.raises(QuotaExceeded, match="tenant 't' has 1 unfinished instances; 1 more would pass its quota of 1"):
            await t.create("Listener")
        await t.terminate(waiting)
        spawned = await t.wait(await t.create("Spawner", {"batches": [1]}))  # itself fills the quota
        assert spawned.output == [{"error": "QuotaExceeded", "message": "tenant 't' has 1 unfinished instances; 1 more would pass its quota of 1"}]
        await engine.tenant("u").create_batch([{"workflow": "Listener"} for _ in range(5)])  # the engine's default for others


async def test_a_join_is_bounded_by_the_instances_state_budget(tmp_path: Path) -> None:
    """A join records every child's output: they count against the parent's state budget
    like its steps' results (the children's start answer too), and a join that would pass
    it is a catchable error read no further than the budget (10,000 children of 1 MiB each
    were read into host memory and journaled as one answer)."""
    clock = ManualClock()
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "family"}) as engine:
        t = engine.tenant("t")
        fits = await t.wait(await t.create("FanOut", {"n": 20}, id="fits"))
        assert fits.status == "complete" and [s.kind for s in fits.steps] == ["children", "join"]
    with sqlite3.connect(tmp_path / "flows.db") as conn:  # the same ids, answer and outputs in the next run
        [(started,)] = conn.execute("SELECT length(result) FROM journal j JOIN instances i ON i.pk = j.instance_pk WHERE i.id='fits' AND seq=0")
    # The same fan-out with a budget that holds the start's answer but not the outputs too.
    outputs = sum(len(str(i * i)) for i in range(20))
    budget = started + outputs - 1
    async with open_engine(tmp_path / "tight.db", clock=clock, limits=Limits(max_state_bytes_per_instance=budget), deploy={"t": "family"}) as engine:
        t = engine.tenant("t")
        tight = await t.wait(await t.create("FanOut", {"n": 20}, id="fits"))
        assert tight.status == "errored" and tight.error is not None and tight.error.name == "ChildWorkflowError", tight.error  # uncaught
        assert tight.error.message.startswith("join ") and tight.error.message.endswith(
            f"the children's outputs add up to more than the {budget - started} bytes left in the instance's state budget "
            f"({started} bytes of {budget} bytes recorded)")
        assert [s.kind for s in tight.steps] == ["children", "join"] and tight.steps[-1].status == "done"


async def test_a_durable_calls_answer_counts_against_the_state_budget(tmp_path: Path) -> None:
    """A child's status (like a fetch's response) is journaled: an answer that would pass
    the budget is refused (a catchable error, recorded in its place) rather than kept."""
    async with open_engine(tmp_path / "flows.db", deploy={"t": "family"}) as engine:
        t = engine.tenant("t")
        assert (await t.wait(await t.create("Sender", id="sender"))).status == "complete"
    with sqlite3.connect(tmp_path / "flows.db") as conn:
        [(started,)] = conn.execute("SELECT length(result) FROM journal j JOIN instances i ON i.pk = j.instance_pk WHERE i.id='sender' AND seq=0")
    budget = started + 10  # the children's start fits, the status answer after it does not
    async with open_engine(tmp_path / "tight.db", limits=Limits(max_state_bytes_per_instance=budget), deploy={"t": "family"}) as engine:
        t = engine.tenant("t")
        refused = await t.wait(await t.create("Sender", id="sender"))
        assert refused.status == "errored" and refused.error is not None and refused.error.name == "ChildWorkflowError"
        assert refused.error.message.startswith("child-status ") and refused.error.message.endswith(f"; the limit is {budget} bytes")
        assert "its answer would bring the instance's recorded state to" in refused.error.message
        assert [s.kind for s in refused.steps] == ["children", "child-status"]
