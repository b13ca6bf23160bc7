"""How much CPU this VM actually got while a workload ran (stdlib only: the peer harness
imports it from its own virtual environment too).

The load average counts threads that are runnable inside this VM; it cannot see a
hypervisor that runs other guests on the same physical cores. Steal time can: the kernel
accounts, per vCPU, the time it had work but the hypervisor ran someone else
(`/proc/stat`, 8th field). On this shared 2-core machine that share has been seen above
half of the CPU time asked for, which slows every workload by more than any change to the
engine; recording it next to each result says which runs can be compared.

A core can be slow without any steal, too (a neighbour on its hyperthread sibling or in its
caches, a hypervisor that makes page faults expensive): three fixed probes timed before each
workload give the speed of what was left, comparable across runs. A pure-Python loop
(`python_speed_us`: the host's and the guest interpreter's work), a large memory copy and
first touches of fresh anonymous pages (`memory_speed`: what instantiating a Wasm instance and
resetting its pooled slot cost).
"""

from __future__ import annotations

import mmap
import time
from pathlib import Path
from typing import Any, Optional

# /proc/stat's aggregate "cpu" line: user nice system idle iowait irq softirq steal ...
_BUSY = (0, 1, 2, 5, 6)  # user, nice, system, irq, softirq (guest time is inside user)
_IDLE = (3, 4)  # idle, iowait
_STEAL = 7


def cpu_sample() -> Optional[list[int]]:
    """The aggregate CPU counters in clock ticks, or None where /proc/stat is unreadable."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if first[0] != "cpu" or len(first) < 9:
        return None
    return [int(x) for x in first[1:9]]


def cpu_share(before: Optional[list[int]], after: Optional[list[int]]) -> Optional[dict[str, Any]]:
    """What the VM's vCPUs did between two samples, in percent of all vCPU time.

    `steal_of_demand_pct` is the hypervisor's share of the time this VM wanted to run
    (busy + steal): the fraction of the work that had to wait for a physical core."""
    if before is None or after is None:
        return None
    delta = [b - a for a, b in zip(before, after)]
    busy = sum(delta[i] for i in _BUSY)
    idle = sum(delta[i] for i in _IDLE)
    steal = delta[_STEAL]
    total = busy + idle + steal
    if total <= 0:
        return None
    return {
        "busy_pct": round(100 * busy / total, 1),
        "steal_pct": round(100 * steal / total, 1),
        "steal_of_demand_pct": round(100 * steal / (busy + steal), 1) if busy + steal else 0.0,
    }


def python_speed_us(rounds: int = 5) -> float:
    """Best of `rounds` timings of a fixed pure-Python loop (µs): lower is a faster CPU."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        total = 0
        for i in range(20_000):
            total += i * i % 7
        best = min(best, time.perf_counter() - t0)
    return round(best * 1e6, 1)


def memory_speed(mib: int = 32, rounds: int = 3) -> dict[str, float]:
    """Best of `rounds`: a `mib` MiB copy (GB/s) and a first write to a fresh anonymous page
    (µs per page fault, the loop's own cost included)."""
    size = mib << 20
    src, dst = bytearray(size), bytearray(size)
    copy_s = fault_s = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        dst[:] = src
        copy_s = min(copy_s, time.perf_counter() - t0)
        pages = mmap.mmap(-1, size)
        t0 = time.perf_counter()
        for offset in range(0, size, mmap.PAGESIZE):
            pages[offset] = 1
        fault_s = min(fault_s, time.perf_counter() - t0)
        pages.close()
    return {"copy_gb_s": round(size / copy_s / 1e9, 2), "fault_us": round(fault_s / (size // mmap.PAGESIZE) * 1e6, 2)}
