"""The workloads, measured the same way for every peer (see README.md)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .common import Json, Peer, Sizes, log, median, metric, percentile

T = TypeVar("T")

# footprint_waiting runs last: the workflows it parks stay parked until the peer stops.
WORKLOADS = ("sequential_steps", "aggregate_steps", "one_step_latency", "wakeup_latency", "replay", "cold_start", "footprint_waiting")


async def _bounded(coro: Awaitable[T], sizes: Sizes) -> T:
    return await asyncio.wait_for(coro, timeout=sizes.call_timeout_s)


async def warm_up(peer: Peer, sizes: Sizes) -> None:
    """Workers warm: one-step runs (at least `warmup_runs`, for `warmup_seconds`) plus one
    short run of each other shape before measuring."""
    deadline = time.perf_counter() + sizes.warmup_seconds
    runs = 0
    while runs < sizes.warmup_runs or time.perf_counter() < deadline:
        await _bounded(peer.one_step(), sizes)
        runs += 1
    await _bounded(peer.sequential(5), sizes)
    await _bounded(peer.aggregate(2, 2), sizes)
    await _bounded(peer.sleep_gap(10), sizes)


async def _sequential(peer: Peer, sizes: Sizes, repeats: int) -> Json:
    rates: list[float] = []
    elapsed: list[float] = []
    for r in range(repeats):
        t0 = time.perf_counter()
        await _bounded(peer.sequential(sizes.seq_steps), sizes)
        dt = time.perf_counter() - t0
        elapsed.append(round(dt, 4))
        rates.append(sizes.seq_steps / dt)
        log(f"{peer.name} sequential_steps repeat {r + 1}/{repeats}: {rates[-1]:.1f} steps/s")
    return {
        "params": {"workflows": 1, "steps_per_workflow": sizes.seq_steps},
        "metrics": {"steps_per_s": metric(rates, "steps/s", "higher")},
        "raw": {"elapsed_s": elapsed},
    }


async def _aggregate(peer: Peer, sizes: Sizes, repeats: int) -> Json:
    total = sizes.agg_workflows * sizes.agg_steps
    rates: list[float] = []
    elapsed: list[float] = []
    for r in range(repeats):
        t0 = time.perf_counter()
        await _bounded(peer.aggregate(sizes.agg_workflows, sizes.agg_steps), sizes)
        dt = time.perf_counter() - t0
        elapsed.append(round(dt, 4))
        rates.append(total / dt)
        log(f"{peer.name} aggregate_steps repeat {r + 1}/{repeats}: {rates[-1]:.1f} steps/s")
    return {
        "params": {"workflows": sizes.agg_workflows, "steps_per_workflow": sizes.agg_steps, "total_steps": total},
        "metrics": {"total_steps_per_s": metric(rates, "steps/s", "higher")},
        "raw": {"elapsed_s": elapsed},
    }


async def _latency_loop(
    peer: Peer, sizes: Sizes, runs: int, what: str, run_once: Callable[[], Awaitable[float]]
) -> list[float]:
    """Up to `runs` sequential runs, stopping early (logged) past the repeat's time budget."""
    deadline = time.monotonic() + sizes.repeat_budget_s
    out: list[float] = []
    for _ in range(runs):
        if time.monotonic() > deadline:
            log(f"{peer.name} {what}: time budget of {sizes.repeat_budget_s:.0f}s spent after {len(out)} runs")
            break
        out.append(await _bounded(run_once(), sizes))
    if not out:
        raise RuntimeError(f"{what}: no run finished within the budget")
    return out


async def _one_step(peer: Peer, sizes: Sizes, repeats: int) -> Json:
    async def once() -> float:
        return await peer.one_step() * 1000.0

    async def paced() -> float:  # a request `latency_gap_ms` after the last result
        await asyncio.sleep(sizes.latency_gap_ms / 1000.0)
        return await once()

    p50s: list[float] = []
    p99s: list[float] = []
    paced_p50s: list[float] = []
    paced_p99s: list[float] = []
    raw: list[list[float]] = []
    raw_paced: list[list[float]] = []
    for r in range(repeats):
        lat = await _latency_loop(peer, sizes, sizes.latency_runs, "one_step_latency", once)
        p50s.append(percentile(lat, 50))
        p99s.append(percentile(lat, 99))
        raw.append([round(x, 3) for x in lat])
        lat = await _latency_loop(peer, sizes, sizes.latency_runs, "one_step_latency (paced)", paced)
        paced_p50s.append(percentile(lat, 50))
        paced_p99s.append(percentile(lat, 99))
        raw_paced.append([round(x, 3) for x in lat])
        log(f"{peer.name} one_step_latency repeat {r + 1}/{repeats}: p50 {p50s[-1]:.2f} ms p99 {p99s[-1]:.2f} ms; "
            f"{sizes.latency_gap_ms} ms apart: p50 {paced_p50s[-1]:.2f} ms p99 {paced_p99s[-1]:.2f} ms")
    return {
        "params": {"runs_per_repeat": sizes.latency_runs, "runs_done": [len(x) for x in raw], "paced_gap_ms": sizes.latency_gap_ms},
        "metrics": {"p50_ms": metric(p50s, "ms", "lower"), "p99_ms": metric(p99s, "ms", "lower"),
                    "paced_p50_ms": metric(paced_p50s, "ms", "lower"), "paced_p99_ms": metric(paced_p99s, "ms", "lower")},
        "raw": {"latencies_ms": raw, "paced_latencies_ms": raw_paced},
    }


async def _wakeup(peer: Peer, sizes: Sizes, repeats: int) -> Json:
    settle_s = sizes.settle_ms / 1000.0

    async def signal_once() -> float:
        return await peer.signal_wakeup(settle_s) * 1000.0

    async def sleep_once() -> float:
        return await peer.sleep_gap(sizes.sleep_ms) * 1000.0 - sizes.sleep_ms

    sig_p50: list[float] = []
    sig_p99: list[float] = []
    over_p50: list[float] = []
    over_p99: list[float] = []
    raw_sig: list[list[float]] = []
    raw_over: list[list[float]] = []
    for r in range(repeats):
        sig = await _latency_loop(peer, sizes, sizes.wakeup_runs, "wakeup_latency/signal", signal_once)
        over = await _latency_loop(peer, sizes, sizes.wakeup_runs, "wakeup_latency/sleep", sleep_once)
        sig_p50.append(percentile(sig, 50))
        sig_p99.append(percentile(sig, 99))
        over_p50.append(percentile(over, 50))
        over_p99.append(percentile(over, 99))
        raw_sig.append([round(x, 3) for x in sig])
        raw_over.append([round(x, 3) for x in over])
        log(
            f"{peer.name} wakeup_latency repeat {r + 1}/{repeats}: signal p50 {sig_p50[-1]:.2f} ms, "
            f"sleep({sizes.sleep_ms} ms) overshoot p50 {over_p50[-1]:.2f} ms"
        )
    return {
        "params": {
            "runs_per_repeat": sizes.wakeup_runs,
            "settle_ms": sizes.settle_ms,
            "sleep_ms": sizes.sleep_ms,
            "signal_runs_done": [len(x) for x in raw_sig],
            "sleep_runs_done": [len(x) for x in raw_over],
        },
        "metrics": {
            "signal_p50_ms": metric(sig_p50, "ms", "lower"),
            "signal_p99_ms": metric(sig_p99, "ms", "lower"),
            "sleep_overshoot_p50_ms": metric(over_p50, "ms", "lower"),
            "sleep_overshoot_p99_ms": metric(over_p99, "ms", "lower"),
        },
        "raw": {"signal_latencies_ms": raw_sig, "sleep_overshoot_ms": raw_over},
    }


async def _replay(peer: Peer, sizes: Sizes, repeats: int) -> Json:
    """Cost per recorded step of going through a workflow's history again, as tenantflow's
    replay workload measures it: (T(N) - T(0)) / N, with T the re-run of a finished workflow of
    N steps (and of 0 steps) and one final step; re-runs of both alternate."""
    n = sizes.replay_steps
    per_step: list[float] = []
    long_ms: list[float] = []
    empty_ms: list[float] = []
    raw: list[dict[str, list[float]]] = []
    for r in range(repeats):
        with_n: list[float] = []
        with_0: list[float] = []
        for _ in range(sizes.replay_runs):
            with_n.append(await _bounded(peer.replay(n), sizes) * 1000.0)
            with_0.append(await _bounded(peer.replay(0), sizes) * 1000.0)
        long_ms.append(median(with_n))
        empty_ms.append(median(with_0))
        per_step.append((long_ms[-1] - empty_ms[-1]) * 1000.0 / n)
        raw.append({"replay_ms": [round(x, 3) for x in with_n], "empty_replay_ms": [round(x, 3) for x in with_0]})
        log(f"{peer.name} replay repeat {r + 1}/{repeats}: {long_ms[-1]:.1f} ms with {n} steps, {empty_ms[-1]:.1f} ms with 0: {per_step[-1]:.1f} us per step")
    return {
        "params": {"steps": n, "runs_per_repeat": sizes.replay_runs},
        "metrics": {
            "us_per_step": metric(per_step, "us", "lower"),
            "replay_ms": metric(long_ms, "ms", "lower"),
            "empty_replay_ms": metric(empty_ms, "ms", "lower"),
        },
        "raw": {"runs": raw},
    }


async def _cold_start(peer: Peer, sizes: Sizes, repeats: int) -> Json:
    """First step of a tenant whose code runs nowhere yet: for a peer, a new process with that
    tenant's code (tenantflow loads the tenant's artifact into the running host instead)."""
    p50s: list[float] = []
    raw: list[list[float]] = []
    for r in range(repeats):
        runs = [await _bounded(peer.cold_start(f"tf-cold-{r}-{i}-{os.getpid()}"), sizes) * 1000.0 for i in range(sizes.cold_runs)]
        p50s.append(median(runs))
        raw.append([round(x, 2) for x in runs])
        log(f"{peer.name} cold_start repeat {r + 1}/{repeats}: median {p50s[-1]:.0f} ms ({', '.join(f'{x:.0f}' for x in runs)})")
    return {
        "params": {"runs_per_repeat": sizes.cold_runs},
        "metrics": {"first_step_ms": metric(p50s, "ms", "lower")},
        "raw": {"first_step_ms": raw},
    }


def _tree(roots: list[int]) -> list[int]:
    """`roots` and all their descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    seen: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in seen and os.path.exists(f"/proc/{pid}"):
            seen.append(pid)
            todo.extend(children.get(pid, []))
    return seen


def _memory(roots: list[int]) -> Json:
    """RSS (VmRSS) and PSS of each process of the peer, in MiB, and their sums."""
    per: dict[str, Json] = {}
    for pid in _tree(roots):
        try:
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/status") as f:
                rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            with open(f"/proc/{pid}/smaps_rollup") as f:
                pss_kib = next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration, ValueError):
            continue
        per[f"{name}[{pid}]"] = {"rss_mib": round(rss_kib / 1024, 1), "pss_mib": round(pss_kib / 1024, 1)}
    return {
        "rss_mib": round(sum(p["rss_mib"] for p in per.values()), 1),
        "pss_mib": round(sum(p["pss_mib"] for p in per.values()), 1),
        "processes": per,
    }


async def _footprint_waiting(peer: Peer, sizes: Sizes, repeats: int) -> Json:
    """Memory of every process of the peer with `park_workflows` workflows waiting on an event
    (one step first, as tenantflow's `Park`): right after the last one ran its step, 2 s later,
    and after `park_settle_s` of idling. One run whatever `repeats` says: the parked workflows
    stay until the peer stops."""
    n = sizes.park_workflows
    # What earlier workloads left freed but mapped in this driver (where DBOS and Temporal's worker
    # live) is the harness's, not the parked workflows': returned before the first reading.
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _memory(peer.processes())
    log(f"{peer.name} footprint_waiting: parking {n} workflows (RSS now {before['rss_mib']:.0f} MiB) ...")
    t0 = time.perf_counter()
    await asyncio.wait_for(peer.park(n), timeout=sizes.park_budget_s)
    park_s = time.perf_counter() - t0
    after = _memory(peer.processes())
    await asyncio.sleep(2.0)
    later = _memory(peer.processes())
    await asyncio.sleep(sizes.park_settle_s)
    settled = _memory(peer.processes())
    per_workflow_kib = (after["rss_mib"] - before["rss_mib"]) * 1024 / n
    log(
        f"{peer.name} footprint_waiting: {n} parked in {park_s:.1f} s; RSS {before['rss_mib']:.0f} -> {after['rss_mib']:.0f} MiB "
        f"({per_workflow_kib:.1f} KiB per waiting workflow), {later['rss_mib']:.0f} 2 s later, "
        f"{settled['rss_mib']:.0f} after {sizes.park_settle_s:.0f} s idle"
    )
    return {
        "params": {"waiting_workflows": n, "settle_s": sizes.park_settle_s, "runs": 1},
        "metrics": {
            "rss_mib": metric([after["rss_mib"]], "MiB", "lower"),
            "rss_two_seconds_later_mib": metric([later["rss_mib"]], "MiB", "lower"),
            "rss_settled_mib": metric([settled["rss_mib"]], "MiB", "lower"),
            "rss_before_mib": metric([before["rss_mib"]], "MiB", "lower"),
            "kib_per_waiting_workflow": metric([per_workflow_kib], "KiB", "lower"),
            "park_workflows_per_s": metric([n / park_s], "workflows/s", "higher"),
        },
        "raw": {"before": before, "all_waiting": after, "two_seconds_later": later, "settled": settled, "park_s": round(park_s, 2)},
    }


_RUNNERS: dict[str, Callable[[Peer, Sizes, int], Awaitable[Json]]] = {
    "sequential_steps": _sequential,
    "aggregate_steps": _aggregate,
    "one_step_latency": _one_step,
    "wakeup_latency": _wakeup,
    "replay": _replay,
    "cold_start": _cold_start,
    "footprint_waiting": _footprint_waiting,
}


async def run_workload(name: str, peer: Peer, sizes: Sizes, repeats: int) -> Json:
    """Run one workload; a failure is recorded in the result instead of ending the peer's run."""
    t0 = time.perf_counter()
    try:
        result = await _RUNNERS[name](peer, sizes, repeats)
        result = {"status": "ok", **result}
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # recorded, the other workloads still run
        log(f"{peer.name} {name} failed: {exc!r}")
        result = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    result["wall_s"] = round(time.perf_counter() - t0, 3)
    return result
