"""The isolate cache's memory bounds with real (componentize-py) components: entries count
the pages of their artifact that are resident, idle components are evicted by the reaper
thread without any lookup, and freshly compiled components are served from their artifact."""

from __future__ import annotations

import asyncio
import platform
import shutil
import sys
import time
from pathlib import Path

import pytest
import wasmtime
from enginekit import ARTIFACTS, component, wait_for

from tenantflow.clock import ManualClock
from tenantflow.engine import Engine
from tenantflow.isolates import IsolateCache
from tenantflow.registry import digest_of
from tenantflow.sandbox import SandboxConfig, make_engine

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resident pages are read from /proc/self/smaps")


def key(n: int) -> str:
    return f"{n:064x}"


def never() -> bytes:
    raise AssertionError("the loader ran: the seeded artifact should have been used")


def seeded(tmp_path: Path, copies: int, **kwargs: object) -> IsolateCache:
    """A cache whose artifact directory holds `copies` versions of the basics component
    (its precompiled artifact under distinct digests: loads are real deserializations)."""
    config = SandboxConfig()
    wasm = component("basics").read_bytes()
    source = IsolateCache(make_engine(config, pool_slots=2), config, ARTIFACTS, reaper=False)
    source.get(digest_of(wasm), lambda: wasm)  # compiles only if the shared test cache lacks it
    artifact = source.artifact_path(digest_of(wasm))
    assert artifact is not None and artifact.is_file()
    cache = IsolateCache(make_engine(config, pool_slots=2), config, tmp_path, **kwargs)  # type: ignore[arg-type]
    for n in range(1, copies + 1):
        target = cache.artifact_path(key(n))
        assert target is not None
        shutil.copyfile(artifact, target)
    return cache


def test_entries_count_their_resident_pages_and_are_evicted_by_them(tmp_path: Path) -> None:
    c = seeded(tmp_path, 3, reaper=False)
    evicted: list[str] = []
    c.on_evict.append(evicted.append)
    c.get(key(1), never)
    c.get(key(2), never)
    path = c.artifact_path(key(1))
    assert path is not None
    artifact_bytes = path.stat().st_size
    assert c.resident_bytes == 2 * artifact_bytes  # unmeasured: counted at their file size
    c.measure()
    one = c.resident_bytes // 2
    # Only touched pages count (a deserialized, never instantiated component maps little).
    assert 0 < one < artifact_bytes // 2 and c.resident_count == 2
    c.max_bytes = int(2.5 * one)
    c.get(key(3), never)  # a new entry is estimated from what the others measured
    c.measure()
    assert c.resident_count == 2 and key(1) not in c and evicted == [key(1)]
    assert c.resident_bytes <= c.max_bytes and c.stats.evictions == 1


def rss_of_every_area(path: Path | None) -> int:
    """The Rss of every area of /proc/self/smaps that maps `path`, summed."""
    assert path is not None
    lines, total = Path("/proc/self/smaps").read_text().splitlines(), 0
    for i, line in enumerate(lines):
        if line.endswith(" " + str(path.resolve())):
            total += next(int(x.split()[1]) for x in lines[i + 1:] if x.startswith("Rss:")) * 1024
    return total


def test_a_second_mapping_of_the_same_artifact_is_not_counted_twice(tmp_path: Path) -> None:
    """Another cache in this process on the same artifact (as the hot tier's pooled engine
    is, or an engine not yet collected) maps the file again: the entry's pages are still
    counted once, so it is not evicted for memory it does not hold."""
    c = seeded(tmp_path, 1, reaper=False)
    c.get(key(1), never)
    c.measure()
    alone = c.resident_bytes
    assert alone == rss_of_every_area(c.artifact_path(key(1)))  # one mapping: all its areas count
    other = IsolateCache(make_engine(SandboxConfig(), pool_slots=2), SandboxConfig(), tmp_path, reaper=False)
    other.get(key(1), never)
    other.measure()
    c.measure()
    assert 0 < alone and c.resident_bytes < 1.5 * alone and other.resident_bytes < 1.5 * alone


def test_the_reaper_evicts_idle_components_without_lookups(tmp_path: Path) -> None:
    c = seeded(tmp_path, 2, idle_seconds=0.3)
    evicted: list[str] = []
    c.on_evict.append(evicted.append)
    c.get(key(1), never)
    c.get(key(2), never)
    assert wait_for(lambda: c.resident_count == 0)  # no get() after the loads
    assert sorted(evicted) == [key(1), key(2)] and c.stats.evictions == 2
    assert wait_for(lambda: c._reaper is None)  # nothing cached: the thread is gone
    if platform.libc_ver()[0] == "glibc":
        assert c.stats.trims >= 1  # and the heap was handed back
    c.get(key(1), never)  # the next load starts it again
    assert c._reaper is not None and c.stats.disk_hits == 3
    c.close()
    assert wait_for(lambda: c._reaper is None or not c._reaper.is_alive())


def test_a_compiled_component_is_served_from_its_artifact(tmp_path: Path) -> None:
    config = SandboxConfig()
    c = IsolateCache(make_engine(config, pool_slots=2), config, tmp_path, reaper=False)
    wasm = bytes(wasmtime.wat2wasm('(component (core module (func (export "f"))))'))
    c.get(key(9), lambda: wasm)
    path = c.artifact_path(key(9))
    assert c.stats.compiles == 1 and path is not None
    assert str(path.resolve()) in Path("/proc/self/maps").read_text()  # mapped, not private memory


async def test_an_idle_engine_lets_go_of_components_and_reloads_them(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "flows.db", clock=ManualClock(), artifact_dir=ARTIFACTS, cache_idle_seconds=0.5)
    async with engine:
        await engine.deploy("t", component("basics").read_bytes())
        t = engine.tenant("t")
        first = await t.wait(await t.create("Steps", {"n": 2}))
        assert first.status == "complete"
        for _ in range(200):  # no lookups now: only the reaper can evict
            if engine.isolates.resident_count == 0:
                break
            await asyncio.sleep(0.05)
        stats = engine.stats().isolates
        assert (stats.resident_components, stats.resident_bytes) == (0, 0) and stats.evictions >= 1
        # Reloaded from the disk artifact: a new Component for the same digest. Several runs,
        # so that instances of the reloaded component are used too (not only a warm instance
        # made from the evicted one before it was evicted).
        for _ in range(3):
            again = await t.wait(await t.create("Steps", {"n": 2}), timeout=30)
            assert again.status == "complete" and again.output == first.output
        assert engine.stats().isolates.disk_hits >= 2


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trim_soon_trims_once_unless_work_came_back(tmp_path: Path) -> None:
    config = SandboxConfig()
    c = IsolateCache(make_engine(config, pool_slots=2), config, tmp_path)
    busy = True
    c.trim_soon(lambda: busy, delay=0.05)
    c.trim_soon(lambda: busy, delay=0.05)  # merged with the pending one
    time.sleep(0.5)
    assert c.stats.trims == 0  # work came back before the delay ran out
    busy = False
    c.trim_soon(lambda: busy, delay=0.05)
    assert wait_for(lambda: c.stats.trims == 1)
    time.sleep(0.3)
    assert c.stats.trims == 1
    c.close()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
async def test_an_engine_trims_its_heap_once_its_work_runs_out(tmp_path: Path) -> None:
    async with Engine(tmp_path / "flows.db", clock=ManualClock(), artifact_dir=ARTIFACTS) as engine:
        await engine.deploy("t", component("basics").read_bytes())
        t = engine.tenant("t")
        before = engine.isolates.stats.trims
        ids = await t.create_batch([{"workflow": "Steps", "params": {"n": 2}} for _ in range(6)])
        for iid in ids:
            assert (await t.wait(iid, timeout=60)).status == "complete"
        assert await asyncio.to_thread(wait_for, lambda: engine.isolates.stats.trims > before, 5.0)
        assert engine.isolates.resident_count == 1  # trimmed, the component still cached
