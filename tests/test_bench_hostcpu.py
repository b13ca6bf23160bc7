"""bench/hostcpu.py: the steal-time accounting every benchmark result is recorded with."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import hostcpu  # noqa: E402


def test_cpu_share_splits_busy_idle_and_steal() -> None:
    # user nice system idle iowait irq softirq steal
    before = [100, 0, 50, 1000, 10, 0, 5, 20]
    after = [400, 0, 150, 1300, 10, 0, 55, 320]  # busy +450, idle +300, steal +300
    share = hostcpu.cpu_share(before, after)
    assert share == {"busy_pct": 42.9, "steal_pct": 28.6, "steal_of_demand_pct": 40.0}


def test_cpu_share_without_counters_or_elapsed_ticks_is_none() -> None:
    sample = [1, 2, 3, 4, 5, 6, 7, 8]
    assert hostcpu.cpu_share(None, sample) is None
    assert hostcpu.cpu_share(sample, None) is None
    assert hostcpu.cpu_share(sample, list(sample)) is None


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc/stat")
def test_real_counters_see_this_process_busy() -> None:
    before = hostcpu.cpu_sample()
    assert before is not None and len(before) == 8
    assert hostcpu.python_speed_us(rounds=2) > 0
    spin_until = time.process_time() + 0.3  # 30 ticks of USER_HZ=100 on this CPU alone
    while time.process_time() < spin_until:
        pass
    share = hostcpu.cpu_share(before, hostcpu.cpu_sample())
    assert share is not None
    assert 0 < share["busy_pct"] <= 100
    assert 0 <= share["steal_of_demand_pct"] <= 100


def test_memory_speed_measures_a_copy_and_page_faults() -> None:
    speed = hostcpu.memory_speed(mib=4, rounds=1)
    assert speed["copy_gb_s"] > 0 and speed["fault_us"] > 0
