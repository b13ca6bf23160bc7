"""The warm pool with real components: two ready instances per hot component, refilled
after an invocation's instance is closed (never beside a running guest), bounded in all."""

from __future__ import annotations

import asyncio
from pathlib import Path

from enginekit import component, open_engine, wait_for

from tenantflow.clock import SystemClock
from tenantflow.engine import Engine
from tenantflow.warm import Key, WarmPool


def pool_of(engine: Engine) -> WarmPool:
    assert engine.executor.warm is not None
    return engine.executor.warm


async def test_a_hot_component_keeps_two_ready_and_every_later_run_takes_one(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "flows.db") as engine:
        info = await engine.deploy("t", component("basics").read_bytes())
        t, warm = engine.tenant("t"), pool_of(engine)
        key: Key = (info.digest, engine.limits.memory_bytes)
        for n in range(6):
            iid = await t.create("Steps", {"n": 3})
            status = await t.wait(iid, timeout=60)
            assert status.status == "complete" and status.output == {"total": 3}, status
            assert await asyncio.to_thread(wait_for, lambda: warm.ready_count(key) == 2, 30.0), f"run {n}: {warm.ready_count(key)} ready"
        assert (warm.hits, warm.misses) == (5, 1)  # only the first run had to instantiate


async def test_the_pool_refills_only_after_the_invocation_ends(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "flows.db", clock=SystemClock()) as engine:
        info = await engine.deploy("t", component("basics").read_bytes())
        t, warm = engine.tenant("t"), pool_of(engine)
        key: Key = (info.digest, engine.limits.memory_bytes)
        await t.wait(await t.create("Steps", {"n": 1}), timeout=60)
        assert await asyncio.to_thread(wait_for, lambda: warm.ready_count(key) == 2, 30.0)

        busy = await t.create("Busy", {"ms": 600})  # one step that computes for 0.6 s
        assert await asyncio.to_thread(wait_for, lambda: warm.hits == 1)  # it took a ready one
        during = []
        for _ in range(20):  # sampled while its step computes
            during.append((warm.ready_count(key), key in warm._warming))
            await asyncio.sleep(0.02)
        assert set(during) == {(1, False)}  # nothing is prepared beside the running guest
        await t.wait(busy, timeout=60, statuses=frozenset({"waiting", "complete"}))
        assert await asyncio.to_thread(wait_for, lambda: warm.ready_count(key) == 2, 30.0)


async def test_ready_instances_are_bounded_across_components(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "flows.db", deploy={"a": "basics", "b": "flow_v1"}) as engine:
        warm = pool_of(engine)
        assert warm.max_total == engine.warm_instances == 2
        for tenant, workflow in (("a", "Steps"), ("b", "pipeline"), ("a", "Steps"), ("b", "pipeline")):
            t = engine.tenant(tenant)
            await t.wait(await t.create(workflow, {"commit": "c1"}), timeout=60, statuses=frozenset({"complete", "waiting", "errored"}))
        await engine.scheduler.quiesce()
        await asyncio.sleep(0.5)  # refills in flight land
        with warm._lock:
            ready = sum(len(r) for r in warm._ready.values())
        assert 1 <= ready <= 2
