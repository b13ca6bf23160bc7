"""What a platform operator watches: isolate cache economics, writer and scheduler load."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from pydantic import BaseModel

if TYPE_CHECKING:
    from .engine import Engine


class IsolateStats(BaseModel):
    hits: int
    misses: int
    disk_hits: int
    compiles: int
    compile_seconds: float
    disk_load_seconds: float
    evictions: int
    corrupt_artifacts: int
    resident_components: int
    resident_bytes: int
    live_instances: int
    instantiations: int
    instantiate_seconds_mean: float


class WriterStats(BaseModel):
    commits: int
    operations: int


class SchedulerStats(BaseModel):
    running: int
    queued: int


class RunnerStats(BaseModel):
    """Runner processes (`Engine(processes=N)`); their isolate caches are their own."""

    processes: int
    pids: list[int]
    restarts: int


class EngineStats(BaseModel):
    isolates: IsolateStats
    writer: WriterStats
    scheduler: SchedulerStats
    runners: Optional[RunnerStats] = None


def engine_stats(engine: "Engine") -> EngineStats:
    cache, s = engine.isolates, engine.isolates.stats
    scheduler = engine.scheduler
    return EngineStats(
        isolates=IsolateStats(
            hits=s.hits,
            misses=s.misses,
            disk_hits=s.disk_hits,
            compiles=s.compiles,
            compile_seconds=s.compile_seconds,
            disk_load_seconds=s.disk_load_seconds,
            evictions=s.evictions,
            corrupt_artifacts=s.corrupt_artifacts,
            resident_components=cache.resident_count,
            resident_bytes=cache.resident_bytes,
            live_instances=s.live_instances,
            instantiations=s.instantiations,
            instantiate_seconds_mean=s.instantiate_seconds / s.instantiations if s.instantiations else 0.0,
        ),
        writer=WriterStats(commits=engine.writer.commits, operations=engine.writer.operations),
        scheduler=SchedulerStats(running=scheduler.running_count, queued=scheduler.queued_count),
        runners=RunnerStats(processes=engine.runners.processes, pids=engine.runners.pids, restarts=engine.runners.restarts) if engine.runners else None,
    )
