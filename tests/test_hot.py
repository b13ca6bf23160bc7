"""The hot tier (tenantflow.hot): a version with most of the invocations moves to the
pooled engine and behaves exactly as before; a long tail of versions stays off it."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from enginekit import ARTIFACTS, component, open_engine

from tenantflow.clock import SystemClock
from tenantflow.hot import HotTier
from tenantflow.isolates import IsolateCache
from tenantflow.registry import digest_of
from tenantflow.sandbox import SandboxConfig, make_engine


def epoch_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "tenantflow-epoch")


async def until_hot(engine, binding, digest: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Run one-step workflows until the version is hot (it must stay dominant for a while)."""
    deadline = time.monotonic() + timeout
    while digest not in engine.executor.hot.hot_digests:
        assert time.monotonic() < deadline, "never became hot"
        assert (await binding.wait(await binding.create("Steps", {"n": 1}))).status == "complete"


async def test_a_hot_version_runs_on_the_pooled_engine_and_behaves_the_same(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "flows.db", clock=SystemClock(), workers=2, deploy={"t": "basics"}) as engine:
        hot = engine.executor.hot
        assert hot is not None
        t = engine.tenant("t")
        digest = digest_of(component("basics").read_bytes())
        await until_hot(engine, t, digest)
        before = hot.invocations
        steps = await t.create("Steps", {"n": 30})
        retry = await t.create("Retry", {"fail": 2, "delay": 0, "backoff": "constant"})
        nap = await t.create("Sleeper", {"duration": "400 ms"})  # unwinds and replays, on the pool again
        waiter = await t.create("Waiter", {"timeout": "1 minute"})
        assert (await t.wait(steps)).output == {"total": sum(range(30))}
        assert (await t.wait(retry)).output["attempt"] == 3
        assert (await t.wait(nap)).output == ["before", "after"]
        assert (await t.wait(waiter, statuses=frozenset({"waiting"}))).status == "waiting"
        await t.send_event(waiter, "approval", {"ok": 1})
        assert (await t.wait(waiter)).output == {"type": "approval", "payload": {"ok": 1}}
        assert hot.invocations >= before + 5  # each of those (and the replays) ran pooled
        spin = await t.wait(await t.create("Spin", {"timeout": "300 ms"}))  # limits hold on the pool
        assert spin.output["caught"] == "StepTimeoutError"
        await engine.scheduler.quiesce()  # wait() sees the outcome committed; the worker lets go of its store just after
        assert engine.isolates.stats.live_instances == 0
        # Let go of the pooled engine while a guest spins on it: its deadline still fires
        # (the engine's epoch ticks on until its last store is gone), then the ticker ends.
        await until_hot(engine, t, digest)
        spinning = await t.create("Spin", {"timeout": "1500 ms"})
        deadline = time.monotonic() + 30
        while engine.isolates.stats.live_instances == 0:
            assert time.monotonic() < deadline, "the spin never started"
            await asyncio.sleep(0.01)
        ticking = epoch_threads()
        hot.clear()  # forgotten: the next runs are on the default engine, and count afresh
        assert hot.hot_digests == [] and hot.tier is None
        assert (await t.wait(spinning, timeout=30)).output["caught"] == "StepTimeoutError"
        deadline = time.monotonic() + 10
        while epoch_threads() >= ticking:
            assert time.monotonic() < deadline, "the released engine's ticker kept running"
            await asyncio.sleep(0.05)
        before = hot.invocations
        assert (await t.wait(await t.create("Steps", {"n": 3}))).output == {"total": 3}
        assert hot.invocations == before


def test_a_long_tail_of_versions_stays_off_the_pool(tmp_path: Path) -> None:
    """Eight versions taking turns: none has a quarter of the last invocations. A burst of
    one is not hot yet; one that keeps most of them is loaded (from the artifact the other
    engine wrote); one whose artifact is gone is not, and nothing breaks; once nothing is
    hot, the pooled engine is let go."""
    config = SandboxConfig()
    cache = IsolateCache(make_engine(config), config, ARTIFACTS, reaper=False)
    wasm = component("basics").read_bytes()
    digest = digest_of(wasm)
    cache.get(digest, lambda: wasm)  # writes (or finds) its artifact
    hot = HotTier(config, cache.artifact_path, slots=4, warm_instances=0, sustain_seconds=0.3, idle_seconds=0.6)
    try:
        tail = [f"{i:064x}" for i in range(8)]
        for _ in range(20):
            for d in tail:
                assert hot.component(d) is None
        for _ in range(60):  # a burst, over at once
            assert hot.component(digest) is None
        time.sleep(0.2)
        assert hot.hot_digests == [] and hot.promotions == 0 and hot.tier is None
        deadline = time.monotonic() + 30
        while hot.component(digest) is None:  # it keeps most of the invocations
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert hot.hot_digests == [digest] and hot.promotions == 1 and hot.tier is not None
        missing = "f" * 64  # no artifact: stays unpooled
        started = time.monotonic()
        while time.monotonic() - started < 0.5:
            assert hot.component(missing) is None
            time.sleep(0.005)
        assert missing not in hot.hot_digests
        deadline = time.monotonic() + 10  # the hot one is idle now: it goes, and the engine with it
        while hot.tier is not None:
            assert time.monotonic() < deadline, "the pooled engine was kept"
            time.sleep(0.05)
        assert hot.hot_digests == []
    finally:
        hot.close()
