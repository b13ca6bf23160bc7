"""The embeddable engine: `async with Engine("flows.db") as engine: ...`.

Opens (and migrates) the SQLite database, runs the scheduler while open, and exposes
tenant-scoped instance operations through `engine.tenant(name)`.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import gc
import json
import logging
import os
import sqlite3
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any, Callable, List, NamedTuple, Optional, Sequence, TypeVar

import wasmtime

from . import executor, hot, isolates, offboarding
from . import journal as jn
from .api_models import TenantDeleted
from .auth import Action, Authorizer, Principal
from .clock import Clock, SystemClock
from .database import GroupCommitWriter, Readers, migrate
from .errors import HostBusy, InstanceNotFound, InvalidInput, UnknownWorkflow
from .executor import Executor, Prepared, build_linker
from .isolates import IsolateCache
from .limits import DAY_MS, Limits, check_event_type, check_instance_id, check_tenant, check_workflow_name, encode_json
from .loader import Loader, RegistryLoader, load_verified
from .manifest import ManifestError, TenantManifest
from .models import (
    DEFAULT_UPGRADE_PAGE,
    MAX_UPGRADE_PAGE,
    SETTLED,
    ComponentInfo,
    InstancePage,
    InstanceStatus,
    InstanceSummary,
    LogLine,
    LogPage,
    UpgradeResult,
    UpgradeResults,
    every_upgrade_page,
    instance_status,
    ts,
)
from .policy import DEFAULT_POLICY, TenantPolicy, quota_of
from .registry import ComponentStore, digest_of
from .retention import RetentionSweeper
from .runner import RunnerConfig
from .runners import RunnerPool
from .sandbox import EpochTicker, SandboxConfig, make_engine
from .scheduler import Dispatch, LocalDispatch, Scheduler
from .stats import EngineStats, engine_stats
from .warm import WarmPool

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("tenantflow.engine")
DEFAULT_TENANT = "default"
CREATED_PK_HINTS = 4096
# Statuses with more steps than this are read and built off the event loop (`_snapshot`).
INLINE_STATUS_STEPS = 256
MAX_STATUS_STEPS = 10_000  # the largest page of a status's steps one may ask for (the default journal cap)
MAX_LOG_PAGE = 10_000  # the largest page of log lines one may ask for
MAX_LIST_PAGE = 1000  # the largest page of instances one may list
WAIT_POLL_S = 0.25  # `wait` re-reads at least this often (another process may change an instance)


class StepPage(NamedTuple):
    """Which of an instance's steps a status carries: `limit` (None: all) from seq `start` on."""

    limit: Optional[int] = None
    start: int = 0


WHOLE_HISTORY = StepPage()


def default_artifact_dir() -> Path:
    """Precompiled artifacts are keyed by digest and engine config, so one machine-wide
    cache is safe to share between databases (and saves seconds per cold start)."""
    env = os.environ.get("TENANTFLOW_CACHE_DIR")
    if env:
        return Path(env) / "artifacts"
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "tenantflow" / "artifacts"


_heap_frozen = False


def _freeze_startup_heap() -> None:
    """Once per process: move what imports built (pydantic, FastAPI, wasmtime bindings:
    hundreds of thousands of objects) out of the cyclic GC's reach. Full collections
    otherwise walk them all again and again: 10% of the host's CPU under load."""
    global _heap_frozen
    if not _heap_frozen:
        _heap_frozen = True
        gc.freeze()


class Engine:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Optional[Clock] = None,
        limits: Optional[Limits] = None,
        workers: int = 4,
        per_tenant_concurrency: Optional[int] = None,
        artifact_dir: Optional[str | os.PathLike[str]] = None,
        sandbox: Optional[SandboxConfig] = None,
        run_scheduler: bool = True,
        # Isolate cache bounds (isolates.py): bytes are the components' resident pages.
        cache_max_count: int = isolates.DEFAULT_MAX_COUNT,
        cache_max_bytes: int = isolates.DEFAULT_MAX_BYTES,
        cache_idle_seconds: float = isolates.DEFAULT_IDLE_SECONDS,
        loader: Optional[Loader] = None,
        warm_instances: int = 2,
        pool_slots: Optional[int] = None,
        processes: int = 0,
        hot_versions: int = hot.DEFAULT_VERSIONS,
        # Finished instances older than this are deleted, with their journal and logs (None: kept).
        retention_days: Optional[float] = None,
    ) -> None:
        self.path = Path(path)
        self.retention: Optional[RetentionSweeper] = None
        self._retention_ms = None if retention_days is None else int(retention_days * DAY_MS)
        if self._retention_ms is not None and self._retention_ms <= 0:
            raise ValueError(f"retention_days must be positive, got {retention_days}")
        self.clock: Clock = clock or SystemClock()
        self.limits = limits or Limits()
        self.workers = workers
        self.per_tenant_concurrency = per_tenant_concurrency or workers
        self.data_dir = self.path.with_name(self.path.name + ".d")
        self.artifact_dir = Path(artifact_dir) if artifact_dir else default_artifact_dir()
        self.sandbox_config = sandbox or SandboxConfig()
        self.run_scheduler = run_scheduler
        self._cache_args = (cache_max_count, cache_max_bytes, cache_idle_seconds)
        self._custom_loader = loader
        # Instances prepared ahead of use (see warm.py); 0 turns it off.
        self.warm_instances = warm_instances
        # Versions run on a pooled engine once they have most of the invocations (hot.py);
        # 0 turns it off (so does SandboxConfig(pooling=True): everything is pooled then).
        self.hot_versions = 0 if self.sandbox_config.pooling else hot_versions
        # Instances alive at once with the pooling allocator (sandbox.py; the hot tier's too).
        self.pool_slots = pool_slots or executor.pool_slots_for(workers, warm_instances)
        # Runner processes (runners.py): 0 runs invocations on this process's threads; N
        # spreads the `workers` concurrent invocations over N processes (one GIL each).
        if processes < 0 or (processes and workers < processes):
            raise InvalidInput(f"processes must be between 0 and workers ({workers}), got {processes}")
        if processes and not self.clock.real_time:
            raise InvalidInput("runner processes need the system clock (a manual or fast-forward clock lives in this process only)")
        self.processes = processes
        self.runners: Optional[RunnerPool] = None
        self.host_id = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._opened = False
        self._lock_file: Optional[IO[str]] = None
        self._policies: dict[str, TenantPolicy] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        # (tenant, id) -> pk of instances created here lately: `wait` watches a new one's
        # invocation instead of reading its row first. A hint only (a wait reads the row
        # before it answers), so bounded and never invalidated.
        self._created_pks: OrderedDict[tuple[str, str], int] = OrderedDict()

    # ---- lifecycle -------------------------------------------------------------------
    async def __aenter__(self) -> "Engine":
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def is_open(self) -> bool:
        return self._opened

    async def open(self) -> None:
        _freeze_startup_heap()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._loop = asyncio.get_running_loop()
        if self.run_scheduler:
            self._take_host_lock()
        await asyncio.to_thread(migrate, self.path)
        self.writer = GroupCommitWriter(self.path)
        self.readers = Readers(self.path)
        self.wasm_engine: wasmtime.Engine = make_engine(self.sandbox_config, self.pool_slots)
        self._ticker = EpochTicker(self.wasm_engine)
        max_count, max_bytes, idle = self._cache_args
        self.isolates = IsolateCache(self.wasm_engine, self.sandbox_config, self.artifact_dir, max_count=max_count, max_bytes=max_bytes, idle_seconds=idle)
        self.components = ComponentStore(self.data_dir / "components")
        self.loader: Loader = self._custom_loader or RegistryLoader(self.components)
        self.executor = Executor(
            linker=build_linker(self.wasm_engine),
            cache=self.isolates,
            writer=self.writer,
            readers=self.readers,
            clock=self.clock,
            limits=self.limits,
            host_id=self.host_id,
            load_component_bytes=lambda tenant, workflow, digest: load_verified(self.loader, self._loop, tenant, workflow, digest),
            policy_for=self.policy_for,
            wake=self._wake_threadsafe,
        )
        dispatch: Dispatch
        if self.run_scheduler and self.processes:
            assert self._lock_file is not None
            self.runners = RunnerPool(
                processes=self.processes,
                lanes=self.workers,
                writer=self.writer,
                config=self._runner_config,
                load=self.executor.load_component_bytes,
                wake=self._wake_threadsafe,
                policy_for=self.policy_for,
                host_lock_fd=self._lock_file.fileno(),
            )
            await asyncio.to_thread(self.runners.open, self._loop)
            dispatch = self.runners
        else:
            if self.run_scheduler and self.warm_instances > 0:
                self.executor.warm = WarmPool(self.wasm_engine, self.executor.linker, max_total=self.warm_instances, on_instantiate=self._count_instantiation)
                self.isolates.on_evict.append(self.executor.warm.discard)  # an idle host lets go of all
            if self.run_scheduler and self.hot_versions > 0:
                self.executor.hot = hot.HotTier(
                    self.sandbox_config, self.isolates.artifact_path, slots=self.pool_slots,
                    warm_instances=self.warm_instances, versions=self.hot_versions, on_instantiate=self._count_instantiation,
                )
                if self.executor.warm is not None:
                    self.executor.hot.on_promote.append(self.executor.warm.discard)
            dispatch = LocalDispatch(self.executor, self.workers)
        self.scheduler = Scheduler(dispatch, self.clock, workers=self.workers, per_tenant=self.per_tenant_concurrency)
        self.scheduler.on_idle.append(lambda: self.isolates.out_of_work(lambda: not self.scheduler.idle, self.scheduler.finished_seq))
        self.executor.backlog = lambda: self.scheduler.queued_count > 0
        if self.runners is not None:
            self.scheduler.on_backlog.append(self.runners.set_backlog)
        self.isolates.on_evict.append(self.executor.exports.forget)  # let evicted components go
        self._opened = True
        await self._load_manifests()
        if self.run_scheduler:
            self.scheduler.start(await self.read(jn.active_instances_query()))
        # Always there: a tenant's manifest may set a retention period with the engine's off.
        self.retention = RetentionSweeper(self.write, self.clock, self._retention_ms, self._retention_overrides)
        if self.run_scheduler:  # the host that owns the database sweeps it
            self.retention.start()

    async def close(self) -> None:
        if not self._opened:
            return
        self._opened = False
        if self.retention is not None:
            await self.retention.stop()
        if self.run_scheduler:
            await self.scheduler.close()
        self.executor.close()
        self.isolates.close()
        self.writer.close()
        await self.readers.aclose()
        self._ticker.stop()
        self._release_host_lock()

    def _release_host_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _take_host_lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        handle = open(lock_path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise HostBusy(f"another tenantflow host is running the scheduler on {self.path}; use its API (--url) instead") from None
        handle.seek(0)
        handle.truncate()
        handle.write(self.host_id)
        handle.flush()
        self._lock_file = handle

    def _runner_config(self, index: int, lanes: int) -> RunnerConfig:
        """A runner's settings: this engine's, pinned to a core of its own (round robin
        over the cores this process may use), with the isolate cache split between the
        runners (each caches mostly the components of the tenants routed to it)."""
        max_count, max_bytes, idle = self._cache_args
        cpus = sorted(os.sched_getaffinity(0))
        return RunnerConfig(
            name=f"runner-{index}",
            db=str(self.path),
            artifact_dir=str(self.artifact_dir) if self.artifact_dir else None,
            sandbox=self.sandbox_config,
            limits=self.limits,
            warm_instances=self.warm_instances,
            pool_slots=executor.pool_slots_for(lanes, self.warm_instances),
            hot_versions=self.hot_versions,
            cpu=cpus[index % len(cpus)] if len(cpus) > 1 else None,
            cache_max_count=max(4, max_count // self.processes),
            cache_max_bytes=max(64 * isolates.MiB, max_bytes // self.processes),
            cache_idle_seconds=idle,
        )

    # ---- tenant policy ---------------------------------------------------------------
    def set_policy(self, tenant: str, policy: TenantPolicy) -> None:
        """Grant a tenant capabilities and limits (egress, secrets, memory)."""
        self._policies[check_tenant(tenant)] = policy

    async def apply_manifest(self, manifest: TenantManifest) -> TenantPolicy:
        """Grant what a tenant manifest declares, now and after restarts (stored in the
        database with secret references, never values; values are read on every open)."""
        policy = manifest.to_policy()
        body = manifest.model_dump_json()
        await self.write(jn.store_manifest(manifest.tenant, body, str(manifest.folder), self.now()))
        self.set_policy(manifest.tenant, policy)
        return policy

    async def _load_manifests(self) -> None:
        for tenant, body, folder in await self.read(jn.manifests_query()):
            manifest = TenantManifest.model_validate({**json.loads(body), "folder": folder})
            try:
                self.set_policy(tenant, manifest.to_policy())
            except ManifestError as exc:  # e.g. a secret's env var is not set on this host
                log.error("tenant %s: %s; its workflows run without their secrets until this is fixed", tenant, exc)
                self.set_policy(tenant, manifest.model_copy(update={"secrets": {}}).to_policy())

    def _retention_overrides(self) -> dict[str, int]:
        return {tenant: p.retention_ms for tenant, p in self._policies.items() if p.retention_ms is not None}

    def forget_policy(self, tenant: str) -> None:
        self._policies.pop(tenant, None)

    def policy_for(self, tenant: str) -> TenantPolicy:
        return self._policies.get(tenant, DEFAULT_POLICY)

    def quota_for(self, tenant: str) -> Optional[int]:
        """The tenant's quota of unfinished instances: its policy's, else the engine's."""
        return quota_of(self.policy_for(tenant), self.limits)

    def stats(self) -> EngineStats:
        """Isolate cache, writer and scheduler counters (what an operator watches)."""
        return engine_stats(self)

    def _count_instantiation(self, seconds: float) -> None:
        self.isolates.stats.instantiations += 1
        self.isolates.stats.instantiate_seconds += seconds

    def _wake_threadsafe(self, pk: int, tenant: str) -> None:
        if self.run_scheduler and self._loop is not None:
            self._loop.call_soon_threadsafe(self.scheduler.make_ready, pk, tenant)

    # ---- plumbing shared by bindings -------------------------------------------------
    async def read(self, query: jn.Query[T]) -> T:
        return await query.arun(await self.readers.aconn())

    def read_now(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run reads on this thread's own connection, now: an indexed read of one instance
        (its row and journal) takes tens of microseconds from the page cache, less than a
        trip to a reader thread and back (and less than building its status model)."""
        return fn(self.readers.sync())

    async def write(self, op: Callable[[Any], T]) -> T:
        return await self.writer.arun(op)

    def now(self) -> int:
        return self.clock.now_ms()

    # ---- components ------------------------------------------------------------------
    async def register_component(self, wasm: bytes) -> ComponentInfo:
        """Validate and store a component (compiling it into the artifact cache). No tenant
        may run it until it deploys it (`deploy`) or registers it (`TenantBinding.register`)."""
        return await self._register(wasm, None)

    async def deploy(self, tenant: str, wasm: bytes) -> ComponentInfo:
        """Register a component and make it the current version of its workflows for `tenant`."""
        check_tenant(tenant)
        return await self._register(wasm, lambda info: jn.record_deployment(tenant, info.digest, info.workflows, self.now()))

    async def _register(self, wasm: bytes, grant: Optional[Callable[[ComponentInfo], jn.WriteOp[None]]]) -> ComponentInfo:
        digest = digest_of(wasm)
        await asyncio.to_thread(self.isolates.get, digest, lambda: wasm)
        workflows = await asyncio.to_thread(self.executor.workflows, digest)
        info = ComponentInfo(digest=digest, size=len(wasm), workflows=workflows)
        await asyncio.to_thread(self.components.put, wasm)
        record = jn.record_component(digest, len(wasm), workflows, self.now())
        granted = None if grant is None else grant(info)

        def op(conn: sqlite3.Connection) -> None:
            record(conn)
            if granted is not None:
                granted(conn)

        await self.write(op)
        # A tenant deletion may have dropped these bytes (held by no tenant then) between
        # the put and the commit: they are this tenant's now, so they go back.
        await asyncio.to_thread(self.components.put, wasm)
        return info

    def remove_component_files(self, digest: str) -> None:
        """A component's bytes and its compiled artifacts (any engine configuration's)."""
        self.components.remove(digest)
        artifact = self.isolates.artifact_path(digest)
        if artifact is not None:
            for path in artifact.parent.glob(f"{digest}-*.cwasm"):
                path.unlink(missing_ok=True)

    async def delete_tenant(self, tenant: str) -> TenantDeleted:
        """Delete a tenant and everything it stored (offboarding.py): its instances (running
        ones are stopped), deployments, API keys, manifest and the component versions no
        other tenant holds. Raises TenantNotFound if nothing of the tenant exists, and
        HostBusy if another host runs the scheduler on this database (it would keep the
        tenant's policy and code in memory, and grant them to a new tenant of that name)."""
        check_tenant(tenant)
        borrowed = self._lock_file is None  # not the scheduler's host: no other may run meanwhile
        if borrowed:
            self._take_host_lock()
        try:
            return await offboarding.delete_tenant(self, tenant)
        finally:
            if borrowed:
                self._release_host_lock()

    # ---- tenants ---------------------------------------------------------------------
    def tenant(self, tenant: str, *, principal: Optional[Principal] = None, authorizer: Optional[Authorizer] = None) -> "TenantBinding":
        """Operations scoped to `tenant`. With an authorizer, the binding asks it (for
        `principal`) before every operation: a layer of its own, whatever the caller
        checked before."""
        return TenantBinding(self, check_tenant(tenant), principal, authorizer)

    def _note_created(self, rows: Sequence[jn.InstanceRow]) -> None:
        hints = self._created_pks
        for row in rows:
            hints[(row.tenant, row.id)] = row.pk
        while len(hints) > CREATED_PK_HINTS:
            hints.popitem(last=False)

    def created_pk(self, tenant: str, instance_id: str) -> Optional[int]:
        """The pk of an instance created here lately, as a hint (see `_created_pks`)."""
        return self._created_pks.get((tenant, instance_id))

    def _after_control(self, result: jn.ControlResult) -> None:
        if not self.run_scheduler:
            return
        sched = self.scheduler
        control = sched.control(result.pk)
        if result.status in ("queued",):
            if control is not None:  # restarted while running: stop the old run, replay after
                control.cancelled = True
            sched.make_ready(result.pk, result.tenant)
        elif result.status == "waitingForPause" and control is not None:
            control.pause_requested = True
        elif result.status == "running" and control is not None:  # resumed before the pause landed
            control.pause_requested = False
        elif result.status in ("paused", "terminated", "deleted"):
            if control is not None:
                control.cancelled = result.status != "paused"
            sched.forget(result.pk)


def _encode_cursor(pk: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"pk": pk}).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        pk = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["pk"]
    except (ValueError, KeyError, TypeError):
        pk = None
    # A crafted cursor is anything JSON can hold: only a row id SQLite can compare is one.
    if type(pk) is not int or not 0 <= pk <= jn.MAX_ROW_ID:
        raise InvalidInput(f"invalid cursor {cursor!r}")
    return pk


def _check_page_limit(limit: int, most: int) -> None:
    if not 1 <= limit <= most:
        raise InvalidInput(f"limit must be between 1 and {most}, got {limit}")


def _cut_page(rows: list[R], limit: int, pk_of: Callable[[R], int]) -> tuple[list[R], Optional[str]]:
    """The page among `limit + 1` rows read, and the cursor after it when more follow."""
    page = rows[:limit]
    return page, (_encode_cursor(pk_of(page[-1])) if len(rows) > limit else None)


class TenantBinding:
    """Every instance operation, scoped to one tenant. Another tenant's instance is
    indistinguishable from a missing one."""

    def __init__(self, engine: Engine, tenant: str, principal: Optional[Principal] = None, authorizer: Optional[Authorizer] = None) -> None:
        if authorizer is not None and principal is None:
            raise InvalidInput("a binding with an authorizer needs the principal it acts for")
        self.engine = engine
        self.name = tenant
        self.principal = principal
        self.authorizer = authorizer

    async def _allow(self, action: Action, instance_id: Optional[str] = None) -> None:
        if self.authorizer is not None:
            assert self.principal is not None
            await self.authorizer.authorize(self.principal, action, self.name, instance_id)

    async def _digest_for(self, workflow: str, digest: Optional[str]) -> Optional[str]:
        """A pinned digest, checked; None for the deployed version (resolved as the row is
        inserted, in the same transaction: no read of its own on the way to a commit)."""
        check_workflow_name(workflow)
        if digest is None:
            return None
        info = await self.engine.read(jn.tenant_component_query(self.name, digest))
        if info is None:  # another tenant's version is answered like a missing one
            raise UnknownWorkflow(f"component {digest[:12]} is not registered")
        if workflow not in info[2]:
            raise UnknownWorkflow(f"component {digest[:12]} defines no workflow {workflow!r} (it defines: {', '.join(info[2])})")
        return digest

    async def register(self, wasm: bytes) -> ComponentInfo:
        """Register a component version for this tenant without making it current: its
        instances may then pin it (`create(digest=)`) or move to it (`upgrade`)."""
        await self._allow(Action.DEPLOY)
        return await self.engine._register(wasm, lambda info: jn.grant_component(self.name, info.digest, self.engine.now()))

    async def create(
        self,
        workflow: str,
        params: Any = None,
        *,
        id: Optional[str] = None,
        digest: Optional[str] = None,
        metadata: Optional[dict[str, Any]] = None,
    ) -> str:
        """Create an instance (queued at once). Returns its id."""
        return (await self.create_batch([{"workflow": workflow, "params": params, "id": id, "digest": digest, "metadata": metadata}]))[0]

    async def create_batch(self, items: Sequence[dict[str, Any]]) -> list[str]:
        """Create several instances atomically (a duplicate id fails the whole batch)."""
        await self._allow(Action.CREATE)
        if not items:
            raise InvalidInput("a batch needs at least one instance")
        now = self.engine.now()
        new: list[jn.NewInstance] = []
        seen: set[str] = set()
        digests: dict[tuple[str, Optional[str]], Optional[str]] = {}
        for item in items:
            unknown = set(item) - {"workflow", "params", "id", "digest", "metadata"}
            if unknown:
                raise InvalidInput(f"unknown fields in instance spec: {sorted(unknown)}")
            instance_id = check_instance_id(item["id"]) if item.get("id") is not None else uuid.uuid4().hex
            if instance_id in seen:
                raise InvalidInput(f"instance id {instance_id!r} appears twice in the batch")
            seen.add(instance_id)
            workflow = item.get("workflow")
            if not isinstance(workflow, str):
                raise InvalidInput("each instance needs a workflow name")
            key = (workflow, item.get("digest"))
            if key not in digests:  # one lookup per workflow in a batch, not per instance
                digests[key] = await self._digest_for(workflow, item.get("digest"))
            digest = digests[key]
            params = encode_json(item.get("params"), self.engine.limits.max_params_bytes, "params")
            metadata = encode_json(item["metadata"], self.engine.limits.max_params_bytes, "metadata") if item.get("metadata") is not None else None
            new.append(jn.NewInstance(self.name, instance_id, workflow, digest, params, metadata, now))
        engine = self.engine
        if engine.runners is None:
            # Dispatched once committed, from the rows just written: the worker need not
            # read back a row, a journal and events that cannot have changed (`Prepared`).
            rows: list[jn.InstanceRow] = []
            committed = engine.writer.submit(jn.insert_instances(new, on_inserted=rows.extend, quota=engine.quota_for(self.name)))
            await asyncio.wrap_future(committed)
            engine._note_created(rows)
            if engine.run_scheduler:
                for row in rows:
                    engine.scheduler.make_ready(row.pk, self.name, Prepared(row, committed))
            return [n.id for n in new]
        # With runner processes each new instance is dispatched as soon as its row is
        # inserted: its guest gets ready in the runner while the engine's fsync runs (its
        # first durable call waits for the commit, `Prepared`). In this process the two
        # would slow each other down instead (measured: cross-core contention).
        loop = asyncio.get_running_loop()
        committing: list[Future[list[int]]] = []

        def start(rows: list[jn.InstanceRow]) -> None:
            engine._note_created(rows)
            for row in rows:
                engine.scheduler.make_ready(row.pk, self.name, Prepared(row, committing[0]))

        def inserted(rows: list[jn.InstanceRow]) -> None:  # on the writer's thread, before the commit
            loop.call_soon_threadsafe(start, rows)

        committing.append(engine.writer.submit(jn.insert_instances(new, on_inserted=inserted, quota=engine.quota_for(self.name))))
        await asyncio.wrap_future(committing[0])
        return [n.id for n in new]

    async def _row(self, instance_id: str) -> jn.InstanceRow:
        check_instance_id(instance_id)
        row = await self.engine.read(jn.instance_query(self.name, instance_id))
        if row is None:
            raise InstanceNotFound(instance_id)
        return row

    async def status(self, instance_id: str, *, steps_limit: Optional[int] = None, steps_from: int = 0) -> InstanceStatus:
        """The instance's status with its history: every step from `steps_from` (a `seq`)
        on, or at most `steps_limit` of them (0: none). A page that stops short of the
        end says where the next one starts (`next_steps_from`)."""
        await self._allow(Action.READ, instance_id)
        if steps_limit is not None and not 0 <= steps_limit <= MAX_STATUS_STEPS:
            raise InvalidInput(f"steps_limit must be between 0 and {MAX_STATUS_STEPS}, got {steps_limit}")
        if not 0 <= steps_from <= jn.MAX_ROW_ID:
            raise InvalidInput(f"steps_from must be a step's seq (0 or more), got {steps_from}")
        status = await self._snapshot(instance_id, page=StepPage(steps_limit, steps_from))
        assert status is not None
        return status

    async def _snapshot(self, instance_id: str, settled: Optional[frozenset[str]] = None, page: StepPage = WHOLE_HISTORY) -> Optional[InstanceStatus]:
        """The instance's status (row and journal in one read); None when `settled` is
        given and the instance is not in one of those statuses yet.

        A short history (or page of one) is read and built right here (a trip to another
        thread would cost more). A long one is read and built again on a thread: ~30 µs a
        step, 0.3 s for the 10,000-step cap, that would otherwise hold the event loop and
        every request of every tenant with it; on a thread the loop gets the GIL back
        every few ms."""
        check_instance_id(instance_id)
        inline = INLINE_STATUS_STEPS if page.limit is None else min(page.limit, INLINE_STATUS_STEPS)
        snapshot = self.engine.read_now(jn.status_snapshot(self.name, instance_id, settled, inline, page.start))
        if snapshot is not None and snapshot.truncated and inline != page.limit:
            return await asyncio.to_thread(self._read_status, instance_id, settled, page)
        return self._built(instance_id, snapshot, page)

    def _read_status(self, instance_id: str, settled: Optional[frozenset[str]], page: StepPage) -> Optional[InstanceStatus]:
        snapshot = self.engine.read_now(jn.status_snapshot(self.name, instance_id, settled, page.limit, page.start))
        return self._built(instance_id, snapshot, page)

    @staticmethod
    def _built(instance_id: str, snapshot: Optional[jn.StatusSnapshot], page: StepPage) -> Optional[InstanceStatus]:
        if snapshot is None:
            raise InstanceNotFound(instance_id)
        if snapshot.journal is None:
            return None
        next_from = None
        if snapshot.truncated:  # the next page starts after this one's last step (where it began, if empty)
            next_from = snapshot.journal[-1].seq + 1 if snapshot.journal else page.start
        return instance_status(snapshot.row, snapshot.journal, snapshot.parent_id, next_from)

    def get(self, instance_id: str) -> "Instance":
        return Instance(self, check_instance_id(instance_id))

    async def _control(self, op: Callable[[Any], jn.ControlResult]) -> str:
        result = await self.engine.write(op)
        self.engine._after_control(result)
        if result.status == "terminated" and self.engine.run_scheduler:
            parent = await self.engine.read(jn.parent_query(result.pk))
            if parent is not None:  # a parent joining this child must see it end
                self.engine.scheduler.make_ready(*parent)
        return result.status

    async def pause(self, instance_id: str) -> str:
        await self._allow(Action.CONTROL, instance_id)
        return await self._control(jn.pause(self.name, check_instance_id(instance_id), self.engine.now()))

    async def resume(self, instance_id: str) -> str:
        await self._allow(Action.CONTROL, instance_id)
        return await self._control(jn.resume(self.name, check_instance_id(instance_id), self.engine.now()))

    async def terminate(self, instance_id: str) -> str:
        await self._allow(Action.CONTROL, instance_id)
        return await self._control(jn.terminate(self.name, check_instance_id(instance_id), self.engine.now()))

    async def restart(self, instance_id: str) -> str:
        await self._allow(Action.CONTROL, instance_id)
        return await self._control(jn.restart(self.name, check_instance_id(instance_id), self.engine.now(), self.engine.quota_for(self.name)))

    async def delete(self, instance_id: str) -> None:
        await self._allow(Action.CONTROL, instance_id)
        await self._control(jn.delete(self.name, check_instance_id(instance_id)))

    async def send_event(self, instance_id: str, event_type: str, payload: Any = None) -> None:
        """Deliver an event: to the waiting step if one waits for its type, else buffered."""
        await self._allow(Action.SEND_EVENT, instance_id)
        check_instance_id(instance_id)
        check_event_type(event_type)
        body = encode_json(payload, self.engine.limits.max_event_payload_bytes, "event payload")
        limit = self.engine.limits.max_pending_events_per_instance
        sent = await self.engine.write(jn.send_event(self.name, instance_id, event_type, body, self.engine.now(), limit))
        if self.engine.run_scheduler and sent.status in ("waiting", "running", "waitingForPause", "queued"):
            if sent.status != "waiting" or sent.waiting_for == event_type:
                self.engine.scheduler.make_ready(sent.pk, self.name)

    async def list(
        self, *, workflow: Optional[str] = None, status: Optional[str] = None, limit: int = 50, cursor: Optional[str] = None,
        parent: Optional[str] = None,
    ) -> InstancePage:
        """Instances newest first, a page at a time; `parent`: only the children that instance started."""
        await self._allow(Action.READ)
        if status is not None and status not in jn.STATUSES:
            raise InvalidInput(f"unknown status {status!r}; one of {', '.join(jn.STATUSES)}")
        _check_page_limit(limit, MAX_LIST_PAGE)
        before = _decode_cursor(cursor) if cursor else None
        parent_pk = (await self._row(parent)).pk if parent is not None else None  # another tenant's: not found
        rows = await self.engine.read(jn.list_query(self.name, workflow, status, before, limit + 1, parent_pk))
        page, next_cursor = _cut_page(rows, limit, lambda r: r.pk)
        return InstancePage(
            instances=[
                InstanceSummary(id=r.id, workflow=r.workflow, status=r.status, created_at=ts(r.created_at), ended_at=ts(r.ended_at))  # type: ignore[arg-type]
                for r in page
            ],
            next_cursor=next_cursor,
        )

    async def upgrade(self, workflow: str, digest: str, *, apply: bool = False, instance_ids: Optional[Sequence[str]] = None) -> List[UpgradeResult]:
        """Move every in-flight instance of `workflow` to component `digest` (a page at a
        time: `upgrade_page`).

        Each instance's journal is first replayed against the new code without side
        effects; only if every recorded call matches is its pin switched (when `apply`;
        the default is a dry run). Otherwise the first divergence is reported and the
        instance is left untouched."""
        return await every_upgrade_page(
            lambda cursor: self.upgrade_page(workflow, digest, apply=apply, instance_ids=instance_ids, limit=MAX_UPGRADE_PAGE, cursor=cursor)
        )

    async def upgrade_page(
        self, workflow: str, digest: str, *, apply: bool = False, instance_ids: Optional[Sequence[str]] = None,
        limit: int = DEFAULT_UPGRADE_PAGE, cursor: Optional[str] = None,
    ) -> UpgradeResults:
        """`upgrade` for at most `limit` instances (oldest first) after `cursor`, the last
        page's `next_cursor`: each one examined is replayed, so a page bounds one call."""
        await self._allow(Action.CONTROL)
        _check_page_limit(limit, MAX_UPGRADE_PAGE)
        await self._digest_for(workflow, digest)  # registered and defines the workflow
        after = _decode_cursor(cursor) if cursor else 0
        wanted = sorted({check_instance_id(i) for i in instance_ids}) if instance_ids is not None else None
        rows = await self.engine.read(jn.upgradable_query(self.name, workflow, digest, after, limit + 1, wanted))
        page, next_cursor = _cut_page(rows, limit, lambda r: r.pk)
        return UpgradeResults(results=[await self._upgrade_one(row, digest, apply) for row in page], next_cursor=next_cursor)

    async def _upgrade_one(self, row: jn.InstanceRow, digest: str, apply: bool) -> UpgradeResult:
        def result(outcome: str, divergence: Optional[str] = None) -> UpgradeResult:
            return UpgradeResult(id=row.id, from_digest=row.digest, to_digest=digest, result=outcome, divergence=divergence)  # type: ignore[arg-type]

        if self.engine.run_scheduler and self.engine.scheduler.is_running(row.pk) or row.status in ("running", "waitingForPause"):
            return result("busy")
        length = await self.engine.read(jn.journal_length_query(row.pk))
        divergence = await asyncio.to_thread(self.engine.executor.verify, row.pk, digest)
        if divergence is not None:
            return result("diverged", divergence)
        if not apply:
            return result("compatible")
        moved = await self.engine.write(jn.repin(row.pk, row.generation, length, row.digest, digest, self.engine.now()))
        return result("upgraded" if moved else "busy")

    async def logs(self, instance_id: str, limit: int = 1000) -> List[LogLine]:
        """The instance's first `limit` log lines, oldest first (`log_page` for the rest)."""
        return (await self.log_page(instance_id, limit=limit)).logs

    async def log_page(self, instance_id: str, *, limit: int = 1000, cursor: Optional[str] = None) -> LogPage:
        """At most `limit` of the instance's log lines, oldest first, from `cursor` (the
        last page's `next_cursor`) on."""
        await self._allow(Action.READ, instance_id)
        _check_page_limit(limit, MAX_LOG_PAGE)
        after = _decode_cursor(cursor) if cursor else 0
        row = await self._row(instance_id)
        lines = await self.engine.read(jn.logs_query(row.pk, limit + 1, after))
        page, next_cursor = _cut_page(lines, limit, lambda line: line[0])
        return LogPage(
            logs=[LogLine(at=ts(at), stream=stream, message=message) for _, at, stream, message in page],  # type: ignore[arg-type]
            next_cursor=next_cursor,
        )

    async def wait(self, instance_id: str, *, timeout: float = 60.0, statuses: frozenset[str] = SETTLED) -> InstanceStatus:
        """Wait until the instance reaches one of `statuses` (default: finished or paused)."""
        deadline = time.monotonic() + timeout
        sched = self.engine.scheduler if self.engine.run_scheduler else None
        pk = self.engine.created_pk(self.name, check_instance_id(instance_id)) if sched is not None else None
        # An instance queued or running here has no settled status until its invocation
        # ends: wait for that before the first read (a read on the event loop while the
        # guest starts up delays it: they share the GIL).
        read = not (pk is not None and statuses <= SETTLED and sched is not None and sched.is_active(pk))
        while True:
            seen = sched.finished_seq if sched is not None else None
            if read:
                status = await self._snapshot(instance_id, statuses)  # the journal only once settled
                if status is not None:
                    await self._allow(Action.READ, instance_id)
                    if sched is not None and pk is not None and status.status in ("complete", "errored") and sched.is_running(pk):
                        # Read between the invocation's last commit and its outcome reaching
                        # the scheduler (a poll, not the watch, woke this waiter): that outcome
                        # is on its way, so that stats and the scheduler agree with the answer.
                        await sched.watch(pk, max(0.0, deadline - time.monotonic()))
                    return status
            read = True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                row = await self._row(instance_id)
                raise TimeoutError(f"instance {instance_id!r} is still {row.status} after {timeout} s")
            if sched is not None and pk is not None:
                await sched.watch(pk, min(remaining, WAIT_POLL_S))
            else:
                await self.engine.scheduler.changed(min(remaining, WAIT_POLL_S), since=seen)


class Instance:
    """A handle on one instance (Cloudflare's `Workflow.get(id)`)."""

    def __init__(self, binding: TenantBinding, instance_id: str) -> None:
        self.binding = binding
        self.id = instance_id

    async def status(self, *, steps_limit: Optional[int] = None, steps_from: int = 0) -> InstanceStatus:
        return await self.binding.status(self.id, steps_limit=steps_limit, steps_from=steps_from)

    async def pause(self) -> str:
        return await self.binding.pause(self.id)

    async def resume(self) -> str:
        return await self.binding.resume(self.id)

    async def terminate(self) -> str:
        return await self.binding.terminate(self.id)

    async def restart(self) -> str:
        return await self.binding.restart(self.id)

    async def send_event(self, event_type: str, payload: Any = None) -> None:
        await self.binding.send_event(self.id, event_type, payload)
