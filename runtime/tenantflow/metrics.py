"""Prometheus text-format metrics for one engine (no client library, no global registry).

Cheap by construction: counters the engine keeps anyway (isolate cache, writer), one
GROUP BY for instance counts, and a step-latency histogram fed at scrape time from the
journal rows of instances that ran since the previous scrape (the scheduler's
`on_finished` hook only notes which instances ran).
"""

from __future__ import annotations

import bisect
from dataclasses import fields
from typing import TYPE_CHECKING, Optional

from . import journal as jn

if TYPE_CHECKING:
    from .engine import Engine
    from .executor import InvocationResult
    from .scheduler import Scheduler

STEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
MAX_PENDING = 100_000  # instances noted between scrapes; beyond that timings are dropped
FINISHED = frozenset(jn.FINISHED)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, cumulative = [], 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts):
            cumulative += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{le="{le}"}} {cumulative}')
        out.append(f"{name}_sum {self.total:.6f}")
        out.append(f"{name}_count {self.count}")
        return out


class Metrics:
    def __init__(self) -> None:
        self._scheduler: Optional["Scheduler"] = None
        self.invocations: dict[str, int] = {}
        self.steps = Histogram(STEP_BUCKETS)
        self._pending: set[int] = set()
        self._finished: set[int] = set()
        self._seen: dict[int, int] = {}  # instance pk -> latest step ended_at already observed

    def attach(self, engine: "Engine") -> None:
        """Hook the engine's current scheduler (a reopened engine has a new one)."""
        scheduler = getattr(engine, "scheduler", None)
        if scheduler is None or scheduler is self._scheduler:
            return
        self._scheduler = scheduler
        scheduler.on_finished.append(self._on_finished)

    def _on_finished(self, pk: int, result: "InvocationResult") -> None:
        self.invocations[result.status] = self.invocations.get(result.status, 0) + 1
        if len(self._pending) < MAX_PENDING:
            self._pending.add(pk)
            if result.status in FINISHED:
                self._finished.add(pk)

    async def _collect_steps(self, engine: "Engine") -> None:
        pending, finished = sorted(self._pending), self._finished
        self._pending, self._finished = set(), set()
        latest: dict[int, int] = {}
        for i in range(0, len(pending), 500):
            chunk = pending[i : i + 500]
            since = min(self._seen.get(pk, -1) for pk in chunk)
            for pk, started, ended in await engine.read(jn.step_timings_query(chunk, since)):
                seen = self._seen.get(pk, -1)
                if ended > seen:
                    self.steps.observe(max(0, ended - started) / 1000)
                    latest[pk] = max(latest.get(pk, -1), ended)
            for pk in chunk:
                if pk in finished:
                    self._seen.pop(pk, None)
                elif pk in latest:
                    self._seen[pk] = latest[pk]

    async def render(self, engine: "Engine") -> str:
        self.attach(engine)
        await self._collect_steps(engine)
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                lines.append(f"{name}{labels} {_num(value)}")

        counts = await engine.read(jn.status_counts_query())
        metric("tenantflow_instances", "gauge", "Instances by status.", [(f'{{status="{s}"}}', counts.get(s, 0)) for s in jn.STATUSES])
        stats = engine.isolates.stats
        for f in fields(stats):
            value = getattr(stats, f.name)
            if f.name == "live_instances":
                metric("tenantflow_isolate_live_instances", "gauge", "Wasm instances alive now.", [("", value)])
            elif f.name.endswith("_seconds"):
                metric(f"tenantflow_isolate_{f.name}_total", "counter", f"Isolate cache: total {f.name.replace('_', ' ')}.", [("", value)])
            else:
                metric(f"tenantflow_isolate_cache_{f.name}_total", "counter", f"Isolate cache: {f.name.replace('_', ' ')}.", [("", value)])
        metric("tenantflow_isolate_cache_resident_bytes", "gauge", "Bytes of compiled components held in memory.", [("", engine.isolates.resident_bytes)])
        metric("tenantflow_writer_commits_total", "counter", "Group commits (durable transactions) of the journal writer.", [("", engine.writer.commits)])
        metric("tenantflow_writer_operations_total", "counter", "Write operations committed by the journal writer.", [("", engine.writer.operations)])
        metric("tenantflow_scheduler_running", "gauge", "Invocations running now.", [("", engine.scheduler.running_count)])
        if engine.retention is not None:
            metric("tenantflow_retention_deleted_total", "counter", "Finished instances deleted past their retention.", [("", engine.retention.deleted)])
        metric(
            "tenantflow_invocations_total", "counter", "Finished invocations by the instance's status after them.",
            [(f'{{status="{s}"}}', n) for s, n in sorted(self.invocations.items())],
        )
        lines.append("# HELP tenantflow_step_duration_seconds Time from a step's first start to its recorded result.")
        lines.append("# TYPE tenantflow_step_duration_seconds histogram")
        lines.extend(self.steps.lines("tenantflow_step_duration_seconds"))
        return "\n".join(lines) + "\n"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6f}"
