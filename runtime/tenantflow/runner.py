"""A runner process: where the engine's invocations run when it has `processes` > 0.

Why processes: host imports are Python, and one process runs Python under one GIL, its
threads handing it over on every call into and out of a guest. On the 2-core machine of
BENCHMARKS.md, worker threads of one process spread over both cores spent ~430 µs of
CPU per durable step (wake-ups across cores, TLB shootdowns); the same threads pinned to
one core ~250 µs. So each runner is a process pinned to a core of its own.

A runner executes and nothing else: a wasmtime engine with its isolate cache and warm
pool, and an `Executor` that reads the database over its own connections. Writes go to
the engine, which owns the only write connection: SQLite commits one writer at a time,
and one writer batching the writes of every runner into one transaction and one fsync
keeps up where writers in several processes queue for the file lock, one fsync each.

Each of its `lanes` is a socket to the engine served by one guest thread: the engine
sends `invoke` on an idle lane; the thread runs the invocation, sends its writes
(`RemoteWriter`), wake-ups and component loads on the lane and reads the answers itself
(no handoff to another thread), then sends `done`. A control socket, served by the main
thread, carries what must reach a running guest at any moment (pause, terminate), the
engine's backlog and `stop`; each `invoke` carries the tenant's policy. When the engine goes away, the runner exits
at once: a new engine replays what ran here and must not find this process still at it.

    python -m tenantflow.runner CONTROL_FD HOST_LOCK_FD LANE_FD [LANE_FD ...]

The engine's host lock (an flock on `<db>.lock`) is inherited and kept open: a runner
that outlived its engine would still hold it, so no new engine could start beside it.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import socket
import sys
import threading
import traceback
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TypeVar

from . import isolates
from . import journal as jn
from .clock import SystemClock
from .database import DEFER_MS, Readers, WriteOp
from .executor import Control, Executor, InvocationResult, Prepared, build_linker
from .hot import HotTier
from .isolates import IsolateCache
from .limits import Limits
from .loader import LoaderError
from .policy import DEFAULT_POLICY, TenantPolicy
from .sandbox import EpochTicker, SandboxConfig, make_engine
from .warm import WarmPool
from .wire import Channel, ChannelClosed

T = TypeVar("T")
log = logging.getLogger("tenantflow.runner")
EARLY_SIGNALS_KEPT = 1024


@dataclass(frozen=True)
class RunnerConfig:
    """What the engine tells a runner as it starts (the first control message)."""

    name: str  # in host ids and logs: "runner-0", ...
    db: str
    artifact_dir: Optional[str]
    sandbox: SandboxConfig
    limits: Limits
    warm_instances: int
    pool_slots: int
    hot_versions: int = 0
    cpu: Optional[int] = None  # the core to pin this process to
    cache_max_count: int = isolates.DEFAULT_MAX_COUNT
    cache_max_bytes: int = isolates.DEFAULT_MAX_BYTES
    cache_idle_seconds: float = isolates.DEFAULT_IDLE_SECONDS


class _Reply(Future[Any]):
    """A request's answer; `rid` names the request to the engine (`after` dependencies).

    Made, answered and waited for by its lane's thread alone (`Lane.take` runs on it), so
    it needs none of a Future's lock and condition, which cost ~2.7 µs on every step's
    path: only `done`, `result`, `set_result` and `set_exception` are supported."""

    def __init__(self, rid: int) -> None:  # no super().__init__(): no condition to make
        self.rid = rid
        self._settled = False
        self._ok = False
        self._value: Any = None

    def done(self) -> bool:
        return self._settled

    def set_result(self, result: Any) -> None:
        self._settled, self._ok, self._value = True, True, result

    def set_exception(self, exception: Optional[BaseException]) -> None:
        self._settled, self._ok, self._value = True, False, exception

    def result(self, timeout: Optional[float] = None) -> Any:
        if not self._settled:
            raise RuntimeError("a lane's reply was read before its answer came")
        if not self._ok:
            raise self._value
        return self._value


class Lane:
    """One socket to the engine, used by one thread: requests go out in order, and that
    thread reads the answers (also to requests it did not wait for) itself. Deferred
    writes wait in `outbox` and leave with the next message (so a step result and the
    call that needs it durable cost one message), or within DEFER_MS when none comes
    (`Runner._flush_deferred`), as the engine's own deferred writes would."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Reply] = {}
        self._created: dict[int, Future[None]] = {}  # by invocation token (see `Prepared`)
        self.outbox: list[tuple[int, Optional[int], Any]] = []
        self._outbox_lock = threading.Lock()  # taking the outbox and sending it are one step
        self.stopping = False  # `stop` came while this lane's thread waited for an answer

    def reply(self) -> _Reply:
        reply = _Reply(next(self._ids))
        self._waiting[reply.rid] = reply
        return reply

    def send(self, message: tuple[Any, ...]) -> None:
        """Send `message` behind the deferred writes (which then ride along, uncommitted)."""
        self.flush(lead=False)
        self.channel.send(message)

    def defer(self, write: tuple[int, Optional[int], Any]) -> None:
        with self._outbox_lock:
            self.outbox.append(write)

    def flush(self, lead: bool) -> None:
        """Send the deferred writes; with `lead`, the engine commits them (and anything
        queued) now."""
        with self._outbox_lock:
            if self.outbox or lead:
                writes, self.outbox = self.outbox, []
                self.channel.send(("w", writes, lead))

    def wait(self, reply: Future[T]) -> T:
        while not reply.done():
            message = self.channel.recv()
            if not self.take(message):
                log.error("unexpected message while waiting for the engine: %r", message[0])
        return reply.result()

    def created(self, token: int) -> Future[None]:
        """Resolved when the engine's `created` says the row of the invocation `token`
        runs is durable."""
        future: Future[None] = Future()
        self._created[token] = future
        return future

    def take(self, message: Any) -> bool:
        """Handle answers (or a `stop` that came meanwhile); False for anything else."""
        kind = message[0]
        if kind == "r":
            for rid, ok, value in message[1]:
                self._resolve(rid, ok, value)
        elif kind == "created":
            _, token, ok, error = message
            created = self._created.pop(token, None)
            if created is not None:
                if ok:
                    created.set_result(None)
                else:
                    created.set_exception(error)
        elif kind == "loaded":
            self._resolve(message[1], message[2], message[3])
        elif kind == "stop":
            self.stopping = True
        else:
            return False
        return True

    def _resolve(self, rid: int, ok: bool, value: Any) -> None:
        reply = self._waiting.pop(rid, None)
        if reply is not None:
            reply.set_result(value) if ok else reply.set_exception(value)


class RemoteWriter:
    """The executor's writer in a runner: `GroupCommitWriter`'s calls, each op sent over
    the calling thread's lane to the engine's writer, which applies them in the order
    sent, and answers when they are durable."""

    def __init__(self) -> None:
        self._local = threading.local()

    def bind(self, lane: Lane) -> None:
        self._local.lane = lane

    @property
    def lane(self) -> Lane:
        lane: Optional[Lane] = getattr(self._local, "lane", None)
        if lane is None:
            raise RuntimeError("this thread has no lane to the engine")
        return lane

    def _queue(self, op: WriteOp[T], after: Optional[Future[Any]]) -> _Reply:
        lane = self.lane
        reply = lane.reply()
        lane.defer((reply.rid, after.rid if isinstance(after, _Reply) else None, jn.wire_form(op)))
        return reply

    def defer(self, op: WriteOp[T], after: Optional[Future[Any]] = None) -> Future[T]:
        return self._queue(op, after)

    def submit(self, op: WriteOp[T], after: Optional[Future[Any]] = None) -> Future[T]:
        reply = self._queue(op, after)
        self.lane.flush(lead=True)
        return reply

    def run(self, op: WriteOp[T], after: Optional[Future[Any]] = None) -> T:
        result: T = self.lane.wait(self.submit(op, after))
        return result

    def wait(self, future: Future[T]) -> T:
        lane = self.lane
        if not future.done() and isinstance(future, _Reply):  # a deferred write of ours: commit it now
            lane.flush(lead=True)
        return lane.wait(future)


class Runner:
    def __init__(self, config: RunnerConfig, control: Channel, lanes: list[Lane]) -> None:
        self.config = config
        self.control = control
        self.lanes = lanes
        self.backlog = False
        self._policy = threading.local()  # the invoking thread's tenant policy (from `invoke`)
        self._lock = threading.Lock()
        # Running invocations' signals by the token the engine gave each; signals that
        # came before their invocation started here wait in `_early`.
        self._controls: dict[int, Control] = {}
        self._early: dict[int, tuple[bool, bool]] = {}
        self._finished = 0  # invocations ended here
        self.writer = RemoteWriter()
        self.wasm_engine = make_engine(config.sandbox, config.pool_slots)
        self.ticker = EpochTicker(self.wasm_engine)
        artifacts = Path(config.artifact_dir) if config.artifact_dir else None
        self.isolates = IsolateCache(
            self.wasm_engine, config.sandbox, artifacts,
            max_count=config.cache_max_count, max_bytes=config.cache_max_bytes, idle_seconds=config.cache_idle_seconds,
        )
        self.readers = Readers(config.db)
        self.executor = Executor(
            linker=build_linker(self.wasm_engine),
            cache=self.isolates,
            writer=self.writer,
            readers=self.readers,
            clock=SystemClock(),
            limits=config.limits,
            host_id=f"{socket.gethostname()}:{os.getpid()}:{config.name}",
            load_component_bytes=self._load,
            policy_for=self._policy_for,
            wake=lambda pk, tenant: self.writer.lane.send(("wake", pk, tenant)),
            backlog=lambda: self.backlog,
        )
        if config.warm_instances > 0:
            self.executor.warm = WarmPool(self.wasm_engine, self.executor.linker, max_total=config.warm_instances)
            self.isolates.on_evict.append(self.executor.warm.discard)
        if config.hot_versions > 0:
            self.executor.hot = HotTier(config.sandbox, self.isolates.artifact_path, slots=config.pool_slots,
                                        warm_instances=config.warm_instances, versions=config.hot_versions)
            if self.executor.warm is not None:
                self.executor.hot.on_promote.append(self.executor.warm.discard)
        self.isolates.on_evict.append(self.executor.exports.forget)

    def _policy_for(self, tenant: str) -> TenantPolicy:
        given: Optional[tuple[str, TenantPolicy]] = getattr(self._policy, "value", None)
        return given[1] if given is not None and given[0] == tenant else DEFAULT_POLICY

    def _load(self, tenant: str, workflow: str, digest: str) -> bytes:
        """Component bytes from the engine's loader (only on a miss of memory and disk)."""
        lane = self.writer.lane
        reply = lane.reply()
        lane.send(("load", reply.rid, tenant, workflow, digest))
        try:
            data: bytes = lane.wait(reply)
        except Exception as exc:  # noqa: BLE001 - reported like the engine's own loader failures
            raise LoaderError(str(exc)) from None
        return data

    # ---- guest threads --------------------------------------------------------------------
    def serve_lane(self, lane: Lane) -> None:
        self.writer.bind(lane)
        while not lane.stopping:
            try:
                message = lane.channel.recv()
            except ChannelClosed:
                os._exit(1)  # the engine is gone (see the module docstring)
            if message[0] == "invoke":
                _, pk, token, tenant, policy, row = message
                self._policy.value = (tenant, policy)
                self._invoke(lane, pk, token, Prepared(row, lane.created(token)) if row is not None else None)
            elif not lane.take(message):
                log.error("unknown message from the engine: %r", message[0])

    def _invoke(self, lane: Lane, pk: int, token: int, prepared: Optional[Prepared]) -> None:
        """Run one invocation and answer the engine: its outcome as soon as it is known,
        before the instance's store is let go (see `Executor.invoke`)."""
        control = Control()
        with self._lock:
            control.pause_requested, control.cancelled = self._early.pop(token, (False, False))
            self._controls[token] = control
        published = False

        def answer(message: tuple[Any, ...]) -> None:
            try:
                lane.send(message)
            except ChannelClosed:
                os._exit(1)  # the engine is gone

        def publish(result: InvocationResult) -> None:
            nonlocal published
            answer(("done", token, result))
            published = True

        try:
            self.executor.invoke(pk, control, prepared, publish)
        except ChannelClosed:
            os._exit(1)
        except BaseException as exc:  # noqa: BLE001 - the engine logs it and retries the instance
            if published:  # letting the store go failed after the outcome was sent
                log.error("releasing the instance of invocation %s failed: %r", pk, exc, exc_info=exc)
            else:
                answer(("failed", token, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        finally:
            with self._lock:
                del self._controls[token]
                self._finished += 1
                idle = not self._controls
            if idle:  # out of work: give the burst's heap back
                self.isolates.out_of_work(lambda: bool(self._controls), self._finished)

    # ---- the control socket (main thread) ---------------------------------------------------
    def serve_control(self) -> None:
        while True:
            try:
                message = self.control.recv()
            except ChannelClosed:
                os._exit(1)
            kind = message[0]
            if kind == "control":
                _, token, pause_requested, cancelled = message
                with self._lock:
                    control = self._controls.get(token)
                    if control is not None:
                        control.pause_requested, control.cancelled = pause_requested, cancelled
                    else:  # not started yet (or just ended: bounded)
                        self._early[token] = (pause_requested, cancelled)
                        while len(self._early) > EARLY_SIGNALS_KEPT:
                            del self._early[next(iter(self._early))]
            elif kind == "backlog":
                self.backlog = bool(message[1])
            elif kind == "evict":  # its code was deleted (a tenant's offboarding)
                self.isolates.evict(str(message[1]))
            elif kind == "stop":
                return
            else:
                log.error("unknown control message from the engine: %r", kind)

    def flush_deferred(self, stop: threading.Event) -> None:
        """Send what lanes deferred (e.g. an invocation's start: its status shows within
        DEFER_MS, not when its first step ends)."""
        while not stop.wait(DEFER_MS / 2000):
            for lane in self.lanes:
                if lane.outbox:
                    try:
                        lane.flush(lead=False)
                    except OSError:
                        os._exit(1)  # the engine is gone

    def close(self) -> None:
        self.executor.close()
        self.isolates.close()
        self.ticker.stop()


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: python -m tenantflow.runner CONTROL_FD HOST_LOCK_FD LANE_FD [LANE_FD ...]", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    control = Channel(socket.socket(fileno=int(argv[0])))
    lanes = [Lane(Channel(socket.socket(fileno=int(fd)))) for fd in argv[2:]]
    config: RunnerConfig = control.recv()
    if config.cpu is not None:  # before any thread starts: they inherit it
        os.sched_setaffinity(0, {config.cpu})
    runner = Runner(config, control, lanes)
    gc.freeze()  # what imports and start-up built stays out of the collector's walks
    threads = [threading.Thread(target=runner.serve_lane, args=(lane,), name=f"tenantflow-guest-{i}", daemon=True) for i, lane in enumerate(lanes)]
    stop_flushing = threading.Event()
    threads.append(threading.Thread(target=runner.flush_deferred, args=(stop_flushing,), name="tenantflow-flush", daemon=True))
    for thread in threads:
        thread.start()
    control.send(("ready", os.getpid()))
    runner.serve_control()
    stop_flushing.set()
    # Stopping: the engine sends `stop` on every lane once its invocations ended (or were
    # cancelled); a lane still busy past this grace is abandoned to replay.
    for thread in threads:
        thread.join(timeout=15)
    runner.close()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown under threads that may still be in a guest
