"""Decides which instance runs next, on which worker, and when sleepers wake.

- Runnable instances wait in per-tenant queues served round-robin, with a per-tenant
  concurrency cap, so one tenant's thousand instances cannot starve another's one.
- Timers (sleeps, retry backoffs, wait timeouts) live in an in-memory heap fed from the
  database (rebuilt on start); no polling of the instances table.
- Guests run on a bounded thread pool of this process (`LocalDispatch`) or in runner
  processes (`runners.RunnerPool`); the asyncio loop only routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections import defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Callable, Optional, Protocol

from .clock import Clock, FastForwardClock, ManualClock
from .executor import Control, Executor, InvocationResult, Prepared

log = logging.getLogger("tenantflow.scheduler")
HOST_FAILURE_RETRY_MS = 1000  # an invocation that failed in the host is retried after this,
HOST_FAILURE_MAX_RETRY_MS = 5 * 60 * 1000  # doubling each time it fails again, up to this


class Dispatch(Protocol):
    """Where invocations run: `start` begins one and returns the signals it obeys and its
    result (resolved on the event loop); `close` stops what still runs after `Scheduler.close`."""

    def start(self, pk: int, tenant: str, prepared: Optional[Prepared] = None) -> tuple[Control, "asyncio.Future[InvocationResult]"]: ...

    def close(self) -> None: ...


class LocalDispatch:
    """Invocations on a thread pool of this process (wasmtime releases the GIL in guest code)."""

    def __init__(self, executor: Executor, workers: int) -> None:
        self._executor = executor
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tenantflow-worker")

    def start(self, pk: int, tenant: str, prepared: Optional[Prepared] = None) -> tuple[Control, "asyncio.Future[InvocationResult]"]:
        control = Control()
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[InvocationResult] = loop.create_future()

        def publish(result: InvocationResult) -> None:  # on the worker, before the store goes
            loop.call_soon_threadsafe(_resolve, outcome, result, None)

        work = self._pool.submit(self._executor.invoke, pk, control, prepared, publish)
        work.add_done_callback(partial(_work_done, loop, outcome, pk))
        return control, outcome

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _work_done(loop: asyncio.AbstractEventLoop, outcome: "asyncio.Future[InvocationResult]", pk: int, work: "Future[InvocationResult]") -> None:
    """What a work item that published no outcome ended with (cancelled at shutdown, or the
    host failed) reaches the outcome's future, as `run_in_executor` would have had it."""
    error: Optional[BaseException] = asyncio.CancelledError() if work.cancelled() else work.exception()
    if error is None:
        return  # published
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(_resolve, outcome, None, error, pk)


def _resolve(outcome: "asyncio.Future[InvocationResult]", result: Optional[InvocationResult], error: Optional[BaseException], pk: int = 0) -> None:
    if outcome.done():  # the outcome was out when letting the store go failed
        if error is not None and not isinstance(error, asyncio.CancelledError):
            log.error("releasing the instance of invocation %s failed: %r", pk, error, exc_info=error)
        return
    if isinstance(error, asyncio.CancelledError):
        outcome.cancel()
    elif error is not None:
        outcome.set_exception(error)
    else:
        assert result is not None
        outcome.set_result(result)


def _set_if_pending(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


async def _listen(listeners: list["asyncio.Future[None]"], timeout: float) -> None:
    """Wait on a new future in `listeners` until whoever owns the list resolves it, or
    `timeout` seconds pass. A timer on the future itself rather than wait_for: woken in
    one loop iteration fewer (wait_for relays the result through a future of its own)."""
    loop = asyncio.get_running_loop()
    listener: asyncio.Future[None] = loop.create_future()
    listeners.append(listener)
    timer = loop.call_later(timeout, _set_if_pending, listener)
    try:
        await listener
    finally:
        timer.cancel()
        if listener in listeners:
            listeners.remove(listener)


class Scheduler:
    def __init__(self, dispatch: Dispatch, clock: Clock, *, workers: int, per_tenant: int) -> None:
        self._dispatch = dispatch
        self._clock = clock
        self.workers = workers
        self.per_tenant = max(1, per_tenant)
        self._ready: dict[str, deque[int]] = {}
        self._ring: deque[str] = deque()
        self._queued: set[int] = set()
        self._prepared: dict[int, Prepared] = {}  # queued new instances whose row is still committing
        self._tenant_of: dict[int, str] = {}
        self._running: dict[int, Control] = {}
        self._running_by_tenant: defaultdict[str, int] = defaultdict(int)
        self._dirty: set[int] = set()  # got an event or a resume while running
        self._host_failures: dict[int, int] = {}  # pk -> invocations in a row that failed in the host
        self._timers: list[tuple[int, int]] = []
        self._timer_at: dict[int, int] = {}
        self._wake = asyncio.Event()
        self._listeners: list[asyncio.Future[None]] = []  # `changed` callers, woken by `_finished`
        self._watchers: defaultdict[int, list[asyncio.Future[None]]] = defaultdict(list)  # `watch`ers by pk
        self._task: Optional[asyncio.Task[None]] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._closing = False
        self.on_finished: list[Callable[[int, InvocationResult], None]] = []
        self.on_idle: list[Callable[[], None]] = []  # the last running invocation ended, none queued
        self.on_backlog: list[Callable[[bool], None]] = []  # whether instances wait for a worker, on each change
        self._backlog = False
        self.finished_seq = 0  # invocations finished so far (see `changed`)

    # ---- lifecycle -------------------------------------------------------------------
    def start(self, active: list[tuple[int, str, str, Optional[int], int]]) -> None:
        self._loop = asyncio.get_running_loop()
        for pk, tenant, status, wake_at, _ in active:
            self._tenant_of[pk] = tenant
            if status == "waiting" and wake_at is not None:
                self.add_timer(pk, tenant, wake_at)
            else:  # queued, or running/waitingForPause when the last host stopped: replay it
                self.make_ready(pk, tenant)
        self._task = asyncio.create_task(self._timer_loop(), name="tenantflow-timers")

    async def close(self, grace_seconds: float = 10.0) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        # Running invocations finish (their writes are durable) or are abandoned to replay.
        deadline = asyncio.get_running_loop().time() + grace_seconds
        while self._running and asyncio.get_running_loop().time() < deadline:
            await self.changed(0.1)
        # Abandon what still runs: flagged guests trap within an epoch slice. Nothing they
        # did after their last commit is lost: they replay on the next start.
        for control in self._running.values():
            control.cancelled = True
        self._dispatch.close()

    # ---- queueing --------------------------------------------------------------------
    def make_ready(self, pk: int, tenant: str, prepared: Optional[Prepared] = None) -> None:
        """Queue the instance (if it is running, it runs again once it ends). `prepared`:
        a new instance may start from the row it was created with (`Prepared`)."""
        self._tenant_of[pk] = tenant
        self._timer_at.pop(pk, None)
        if pk in self._running:
            self._dirty.add(pk)
            return
        if pk in self._queued or self._closing:
            self._prepared.pop(pk, None)  # something happened to it since: read it afresh
            return
        if prepared is not None:
            self._prepared[pk] = prepared
        self._queued.add(pk)
        queue = self._ready.get(tenant)
        if queue is None:
            queue = self._ready[tenant] = deque()
            self._ring.append(tenant)
        queue.append(pk)
        self._pump()

    def add_timer(self, pk: int, tenant: str, wake_at: int) -> None:
        self._tenant_of[pk] = tenant
        self._timer_at[pk] = wake_at
        if not self._timers or wake_at < self._timers[0][0]:
            self._wake.set()
        heapq.heappush(self._timers, (wake_at, pk))

    def forget(self, pk: int) -> None:
        """The instance left the scheduler's care (paused, finished, deleted)."""
        self._wake_watchers(pk)
        self._host_failures.pop(pk, None)
        self._timer_at.pop(pk, None)
        self._prepared.pop(pk, None)
        if pk in self._queued:
            self._queued.discard(pk)
            tenant = self._tenant_of.get(pk)
            if tenant in self._ready:
                try:
                    self._ready[tenant].remove(pk)
                except ValueError:
                    pass
            self._note_backlog()

    def _note_backlog(self) -> None:
        backlog = bool(self._queued)
        if backlog != self._backlog:
            self._backlog = backlog
            for listener in self.on_backlog:
                listener(backlog)

    def control(self, pk: int) -> Optional[Control]:
        return self._running.get(pk)

    def is_running(self, pk: int) -> bool:
        return pk in self._running

    def is_active(self, pk: int) -> bool:
        """Queued or running here: its row says queued, running or waiting (for a worker,
        or for the pause of a running invocation), nothing settled, until it finishes."""
        return pk in self._running or pk in self._queued

    @property
    def idle(self) -> bool:
        return not self._running and not self._queued

    @property
    def running_count(self) -> int:
        return len(self._running)

    @property
    def queued_count(self) -> int:
        return len(self._queued)

    @property
    def active(self) -> bool:
        """Started and not closing (readiness probes)."""
        return self._task is not None and not self._task.done() and not self._closing

    # ---- dispatch --------------------------------------------------------------------
    def _pump(self) -> None:
        while len(self._running) < self.workers and self._ring:
            for _ in range(len(self._ring)):
                tenant = self._ring.popleft()
                queue = self._ready[tenant]
                while queue and queue[0] not in self._queued:
                    queue.popleft()  # forgotten while queued
                if not queue:
                    del self._ready[tenant]
                    continue
                if self._running_by_tenant[tenant] >= self.per_tenant:
                    self._ring.append(tenant)
                    continue
                pk = queue.popleft()
                if queue:
                    self._ring.append(tenant)
                else:
                    del self._ready[tenant]
                self._start(pk, tenant)
                break
            else:
                break  # every tenant with work is at its cap
        self._note_backlog()

    def _start(self, pk: int, tenant: str) -> None:
        self._queued.discard(pk)
        control, future = self._dispatch.start(pk, tenant, self._prepared.pop(pk, None))
        self._running[pk] = control
        self._running_by_tenant[tenant] += 1
        future.add_done_callback(lambda f: self._finished(pk, tenant, f))

    def _finished(self, pk: int, tenant: str, future: "asyncio.Future[InvocationResult]") -> None:
        self.finished_seq += 1
        self._running.pop(pk, None)
        self._running_by_tenant[tenant] -= 1
        dirty = pk in self._dirty
        self._dirty.discard(pk)
        if future.cancelled():
            result = InvocationResult("abandoned")
        elif future.exception() is not None:
            exc = future.exception()
            failures = self._host_failures[pk] = self._host_failures.get(pk, 0) + 1
            retry_ms = min(HOST_FAILURE_RETRY_MS << min(failures - 1, 30), HOST_FAILURE_MAX_RETRY_MS)
            log.error("invocation of instance %s failed in the host (%d in a row): %r; retrying in %d ms", pk, failures, exc, retry_ms, exc_info=exc)
            # Replayed later, not at once, and later each time: a host fault that persists (a
            # full disk, a bug) must not spin a worker on the same instance or flood the log.
            result = InvocationResult("waiting", wake_at=self._clock.now_ms() + retry_ms)
        else:
            self._host_failures.pop(pk, None)
            result = future.result()
        if not self._closing:
            self._route(pk, tenant, result, dirty)
        for callback in self.on_finished:
            callback(pk, result)
        self._pump()
        if self.idle:
            for idle_callback in self.on_idle:
                idle_callback()
        if self._jumping_clock() is not None:  # the timer loop jumps it once nothing runs
            self._wake.set()
        self._wake_watchers(pk)
        listeners, self._listeners = self._listeners, []
        for listener in listeners:  # resolved here, in this callback: no task, no lock
            _set_if_pending(listener)

    def _route(self, pk: int, tenant: str, result: InvocationResult, dirty: bool) -> None:
        if result.parent is not None:  # a finished child wakes its parent (a join re-checks)
            self.make_ready(*result.parent)
        if result.status in ("queued", "running", "waitingForPause"):
            self.make_ready(pk, tenant)
        elif result.status == "waiting":
            if dirty:
                self.make_ready(pk, tenant)
            elif result.wake_at is not None:
                self.add_timer(pk, tenant, result.wake_at)

    async def changed(self, timeout: float, since: Optional[int] = None) -> None:
        """Wait until some invocation finishes (or `timeout` seconds pass). With `since` (a
        `finished_seq` read earlier), return at once if one finished meanwhile: no lost wake-up."""
        if since is not None and since != self.finished_seq:
            return
        await _listen(self._listeners, timeout)

    async def watch(self, pk: int, timeout: float) -> None:
        """Wait until an invocation of instance `pk` ends or the scheduler lets it go
        (paused, terminated, deleted while not running), or `timeout` seconds pass. The
        caller reads what it became: a status waiter wakes for its own instance only, not
        for every invocation that ends."""
        watchers = self._watchers[pk]
        try:
            await _listen(watchers, timeout)
        finally:
            if not watchers and self._watchers.get(pk) is watchers:
                del self._watchers[pk]

    def _wake_watchers(self, pk: int) -> None:
        for watcher in self._watchers.pop(pk, ()):
            _set_if_pending(watcher)

    def _jumping_clock(self) -> Optional[ManualClock | FastForwardClock]:
        """The clock, if it jumps to the next timer once nothing runs (tests, `--fast-forward`)."""
        clock = self._clock
        return clock if isinstance(clock, (ManualClock, FastForwardClock)) and clock.fast_forward else None

    def _timer_due(self) -> bool:
        now = self._clock.now_ms()
        return any(wake_at <= now for wake_at in self._timer_at.values())

    async def quiesce(self, timeout: float = 60.0) -> None:
        """Wait until nothing runs, nothing is queued and no timer is due (tests, CLI)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (self.idle and not self._timer_due()):
            if loop.time() > deadline:
                raise TimeoutError(f"scheduler still busy after {timeout} s ({len(self._running)} running, {len(self._queued)} queued)")
            await self.changed(0.02)

    # ---- timers ----------------------------------------------------------------------
    async def _timer_loop(self) -> None:
        while not self._closing:
            now = self._clock.now_ms()
            while self._timers and self._timers[0][0] <= now:
                wake_at, pk = heapq.heappop(self._timers)
                if self._timer_at.get(pk) == wake_at:
                    del self._timer_at[pk]
                    self.make_ready(pk, self._tenant_of[pk])
            next_at = self._timers[0][0] if self._timers else now + 3_600_000
            jumping = self._jumping_clock()
            if jumping is not None and self.idle and self._timers:
                await asyncio.sleep(0)  # let API calls that just happened land first
                if self.idle:
                    jumping.set(next_at)
                    continue
            self._wake.clear()
            await self._clock.sleep_until(next_at, self._wake)
