"""Runner processes, seen from the engine: spawning, dispatch, their writes, crashes.

With `Engine(processes=N)` invocations run in N runner processes (`runner.py`), each
pinned to a core, instead of on the engine's threads: the host's Python then runs on
every core instead of under one GIL. The engine keeps scheduling, timers, the API and
the only write connection.

`RunnerPool` is the scheduler's `Dispatch`: `start` hands an instance to an idle lane (a
guest thread in a runner), preferring the runner its tenant last ran on (its components
are cached there). One hub thread serves every lane: it reads all the requests that
have arrived, queues their writes in the engine's `GroupCommitWriter` (in the order each
lane sent them, `after` dependencies kept) and leads the commit itself, so the writes of
all runners share one transaction and one fsync; the answers go back, one message per
lane, once their writes are durable. Component loads (an isolate cache miss in a runner)
go to the engine's loader on threads of their own. A running invocation's `Control`
forwards every signal set on it (pause, terminate) to its runner; each `invoke` carries
the tenant's policy as it is then.

A runner that dies (a crash, the OOM killer) fails its running invocations as host
failures (the scheduler retries them a second later; each replays from its journal) and
is started again, after a pause that doubles while it keeps dying at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
import selectors
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Optional

from . import journal as jn
from .database import GroupCommitWriter
from .executor import Control, InvocationResult, Prepared
from .policy import TenantPolicy
from .runner import RunnerConfig
from .wire import Channel, ChannelClosed

log = logging.getLogger("tenantflow.runners")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
RESTART_DELAY_S = (0.5, 30.0)  # first pause before restarting a dead runner, and the cap
QUICK_DEATH_S = 10.0  # a runner that dies sooner than this after its start backs off longer


class RunnerFailed(RuntimeError):
    """An invocation ended in a runner's host code (not in the guest), or with its runner."""


class _RemoteControl(Control):
    """A running invocation's signals, forwarded to its runner whenever one is set."""

    _forward: Callable[[Control], None]

    def __init__(self, forward: Callable[[Control], None]) -> None:
        object.__setattr__(self, "_forward", forward)
        super().__init__()

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        self._forward(self)


@dataclass
class _Running:
    token: int  # names this invocation to its runner (control messages carry it)
    future: "asyncio.Future[InvocationResult]"


@dataclass(eq=False)
class _Lane:
    runner: "_Runner"
    channel: Channel
    running: Optional[_Running] = None
    # Requests whose writes are queued or committing, by request id (for `after`), and
    # those that failed (their dependents fail too), until the invocation ends.
    queued: dict[int, Future[Any]] = field(default_factory=dict)
    failed: dict[int, BaseException] = field(default_factory=dict)


@dataclass(eq=False)
class _Runner:
    index: int
    process: subprocess.Popen[bytes]
    control: Channel
    lanes: list[_Lane] = field(default_factory=list)
    alive: bool = True
    started_at: float = field(default_factory=time.monotonic)

    @property
    def busy(self) -> int:
        return sum(lane.running is not None for lane in self.lanes)


class RunnerPool:
    def __init__(
        self,
        *,
        processes: int,
        lanes: int,
        writer: GroupCommitWriter,
        config: Callable[[int, int], RunnerConfig],
        load: Callable[[str, str, str], bytes],
        wake: Callable[[int, str], None],
        policy_for: Callable[[str], TenantPolicy],
        host_lock_fd: int,
    ) -> None:
        if processes < 1 or lanes < processes:
            raise ValueError(f"{lanes} concurrent invocations cannot be spread over {processes} runner processes")
        self.processes = processes
        self._lane_counts = [lanes // processes + (i < lanes % processes) for i in range(processes)]
        self._writer = writer
        self._config = config
        self._load = load
        self._wake = wake
        self._policy_for = policy_for
        self._host_lock_fd = host_lock_fd
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._runners: list[Optional[_Runner]] = [None] * processes
        self._affinity: dict[str, int] = {}  # tenant -> the runner it last ran on
        self._tokens = itertools.count(1)
        self._backlog = False
        self._stopping = False  # `close` began: dead runners are not restarted
        self._closing = False  # the runners are gone: the hub stops
        self._selector = selectors.DefaultSelector()
        self._wakeup_r, self._wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_w, False)
        self._selector.register(self._wakeup_r, selectors.EVENT_READ, None)
        self._hub_thread: Optional[int] = None
        # Writes that became durable, to be answered by the hub (one message per lane).
        self._answered: deque[tuple[_Lane, int, Future[Any]]] = deque()
        self._loaders = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tenantflow-load")
        self._restart_delay = RESTART_DELAY_S[0]
        self.restarts = 0
        self._hub = threading.Thread(target=self._serve, name="tenantflow-runner-hub", daemon=True)

    # ---- lifecycle ------------------------------------------------------------------------
    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start every runner and wait until each is ready (blocking: call it off the loop)."""
        self._loop = loop
        self._hub.start()
        for index in range(self.processes):
            self._install(self._spawn(index))

    def _spawn(self, index: int) -> _Runner:
        control, control_theirs = Channel.pair()
        pairs = [Channel.pair() for _ in range(self._lane_counts[index])]
        theirs = [control_theirs, *(sock for _, sock in pairs)]
        fds = [theirs[0].fileno(), self._host_lock_fd, *(sock.fileno() for sock in theirs[1:])]
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "tenantflow.runner", *map(str, fds)],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                env=_runner_environment(),
            )
        finally:
            for sock in theirs:
                sock.close()
        runner = _Runner(index, process, control)
        runner.lanes = [_Lane(runner, channel) for channel, _ in pairs]
        try:
            control.send(self._config(index, len(runner.lanes)))
            control.sock.settimeout(START_TIMEOUT_S)
            ready = control.recv()
            control.sock.settimeout(None)
            if ready[0] != "ready":
                raise RuntimeError(f"it answered {ready!r}")
        except (OSError, ChannelClosed, RuntimeError) as exc:
            process.kill()
            process.wait()
            for channel in (control, *(lane.channel for lane in runner.lanes)):
                channel.close()
            raise RuntimeError(f"runner process {index} did not start (exit status {process.returncode}): {exc}") from None
        return runner

    def _install(self, runner: _Runner) -> None:
        self._runners[runner.index] = runner
        self._selector.register(runner.control.fileno(), selectors.EVENT_READ, (runner, None))
        for lane in runner.lanes:
            self._selector.register(lane.channel.fileno(), selectors.EVENT_READ, (runner, lane))
        self._nudge()

    def _nudge(self) -> None:
        """Wake the hub (a new runner to select on, answers to send, or closing)."""
        try:
            os.write(self._wakeup_w, b"x")
        except BlockingIOError:
            pass  # already awake-pending

    def close(self) -> None:
        """Stop the runners (what still runs was cancelled by the scheduler), then the hub."""
        self._stopping = True
        runners = [r for r in self._runners if r is not None and r.alive]
        for runner in runners:
            for channel in (*(lane.channel for lane in runner.lanes), runner.control):
                try:
                    channel.send(("stop",))
                except OSError:
                    pass
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for runner in runners:
            try:
                runner.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("runner %d did not stop in time; killing it", runner.index)
                runner.process.kill()
                runner.process.wait()
        self._closing = True  # the hub served the runners' writes until they exited
        self._nudge()
        self._hub.join(timeout=10)
        self._loaders.shutdown(wait=False, cancel_futures=True)
        for stopped in self._runners:
            if stopped is not None:
                for channel in (stopped.control, *(lane.channel for lane in stopped.lanes)):
                    channel.close()
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)
        self._selector.close()

    # ---- dispatch (event loop) --------------------------------------------------------------
    def start(self, pk: int, tenant: str, prepared: Optional[Prepared] = None) -> tuple[Control, "asyncio.Future[InvocationResult]"]:
        assert self._loop is not None
        future: asyncio.Future[InvocationResult] = self._loop.create_future()
        lane = self._idle_lane(tenant)
        runner = lane.runner if lane is not None else None
        token = next(self._tokens)
        control = _RemoteControl(lambda c: self._forward(runner, token, c))
        if lane is None:  # every runner is down or restarting: a host failure, retried
            future.set_exception(RunnerFailed("no runner process is available"))
            return control, future
        lane.running = _Running(token, future)
        self._affinity[tenant] = lane.runner.index
        try:
            # The tenant's policy as of now; a new instance's row (`Prepared`), whose commit
            # the lane hears of with `created`.
            lane.channel.send(("invoke", pk, token, tenant, self._policy_for(tenant), prepared.row if prepared else None))
        except OSError as exc:
            lane.running = None
            future.set_exception(RunnerFailed(f"runner {lane.runner.index} is gone: {exc}"))
            return control, future
        if prepared is not None:
            prepared.durable.add_done_callback(partial(self._created, lane, token))
        return control, future

    def _created(self, lane: _Lane, token: int, durable: Future[Any]) -> None:
        error = durable.exception()
        try:
            lane.channel.send(("created", token, error is None, None if error is None else _portable(error)))
        except OSError:
            pass  # the runner is gone; its invocation fails with it

    def _idle_lane(self, tenant: str) -> Optional[_Lane]:
        """An idle lane of the tenant's runner (its components are warm there), else of
        the least busy runner. The scheduler starts no more invocations than lanes."""
        alive = [r for r in self._runners if r is not None and r.alive]
        preferred = self._affinity.get(tenant)
        alive.sort(key=lambda r: (r.index != preferred, r.busy))
        for runner in alive:
            for lane in runner.lanes:
                if lane.running is None:
                    return lane
        return None

    def _forward(self, runner: Optional[_Runner], token: int, control: Control) -> None:
        if runner is not None and runner.alive:
            try:
                runner.control.send(("control", token, control.pause_requested, control.cancelled))
            except OSError:
                pass  # a dead runner's invocation fails on its own

    def set_backlog(self, backlog: bool) -> None:
        """Whether instances wait for a lane (runners then serve no sleep in place)."""
        if backlog != self._backlog:
            self._backlog = backlog
            self._broadcast(("backlog", backlog))

    def evict(self, digest: str) -> None:
        """Drop a component from every runner's cache (its code was deleted)."""
        self._broadcast(("evict", digest))

    def _broadcast(self, message: Any) -> None:
        for runner in self._runners:
            if runner is not None and runner.alive:
                try:
                    runner.control.send(message)
                except OSError:
                    pass

    @property
    def pids(self) -> list[int]:
        return [r.process.pid for r in self._runners if r is not None and r.alive]

    # ---- the hub ------------------------------------------------------------------------------
    def _serve(self) -> None:
        self._hub_thread = threading.get_ident()
        while not self._closing:
            lead = False
            for key, _ in self._selector.select(timeout=1.0):
                if key.data is None:
                    os.read(self._wakeup_r, 4096)
                    continue
                runner, lane = key.data
                if not runner.alive:
                    continue
                try:
                    if lane is None:
                        runner.control.recv_ready()  # a runner writes nothing here after `ready`
                        continue
                    for message in lane.channel.recv_ready():
                        if message[0] in ("done", "failed") and lead:
                            # What the invocation wrote before it ended (its logs) is
                            # durable before anyone hears that it ended.
                            self._writer.lead()
                            lead = False
                        lead = self._handle(lane, message) or lead
                except (ChannelClosed, OSError, ValueError) as exc:
                    self._lost(runner, exc)
            if lead:
                self._writer.lead()  # this thread commits what every lane sent: one fsync
            self._send_answers()

    def _handle(self, lane: _Lane, message: Any) -> bool:
        """Serve one message from a lane; True if it asks for a commit now."""
        kind = message[0]
        if kind == "w":
            _, writes, lead = message
            for rid, after_rid, op in writes:
                future = self._writer.defer(jn.from_wire_form(op), after=self._after(lane, after_rid))
                lane.queued[rid] = future
                future.add_done_callback(partial(self._durable, lane, rid))
            return bool(lead)
        if kind in ("done", "failed"):
            self._finished(lane, message)
        elif kind == "wake":
            self._wake(message[1], message[2])
        elif kind == "load":
            self._loaders.submit(self._serve_load, lane, *message[1:])
        else:
            log.error("runner %d sent an unknown message %r", lane.runner.index, kind)
        return False

    def _after(self, lane: _Lane, rid: Optional[int]) -> Optional[Future[Any]]:
        if rid is None:
            return None
        queued = lane.queued.get(rid)
        if queued is not None:
            return queued
        failure = lane.failed.get(rid)
        if failure is None:
            return None  # it committed: nothing holds the dependent back
        failed: Future[Any] = Future()
        failed.set_exception(failure)
        return failed

    def _durable(self, lane: _Lane, rid: int, future: Future[Any]) -> None:
        """A write's future is done (on the thread that committed it)."""
        self._answered.append((lane, rid, future))
        if threading.get_ident() != self._hub_thread:
            self._nudge()  # another leader (the writer's own thread) committed it

    def _send_answers(self) -> None:
        by_lane: dict[_Lane, list[tuple[int, bool, Any]]] = {}
        while self._answered:
            lane, rid, future = self._answered.popleft()
            error = future.exception()
            if error is not None:  # kept before it leaves `queued`: `_after` sees one or the other
                lane.failed[rid] = error
            lane.queued.pop(rid, None)
            by_lane.setdefault(lane, []).append((rid, error is None, future.result() if error is None else _portable(error)))
        for lane, answers in by_lane.items():
            if lane.runner.alive:
                try:
                    lane.channel.send(("r", answers))
                except OSError:
                    pass  # the runner is gone; its invocation fails with it

    def _serve_load(self, lane: _Lane, rid: int, tenant: str, workflow: str, digest: str) -> None:
        try:
            answer: tuple[Any, ...] = ("loaded", rid, True, self._load(tenant, workflow, digest))
        except Exception as exc:  # noqa: BLE001 - the runner raises it as a LoaderError
            answer = ("loaded", rid, False, RuntimeError(str(exc)))
        try:
            lane.channel.send(answer)
        except OSError:
            pass

    def _finished(self, lane: _Lane, message: Any) -> None:
        running, lane.running = lane.running, None
        lane.failed.clear()
        if running is None or running.token != message[1]:
            log.error("runner %d reported the end of an invocation it was not given", lane.runner.index)
            return
        if message[0] == "done":
            self._resolve(running.future, result=message[2])
        else:
            log.error("an invocation failed in runner %d: %s\n%s", lane.runner.index, message[2], message[3])
            self._resolve(running.future, error=RunnerFailed(message[2]))

    def _resolve(self, future: "asyncio.Future[InvocationResult]", *, result: Optional[InvocationResult] = None, error: Optional[BaseException] = None) -> None:
        assert self._loop is not None

        def settle() -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        self._loop.call_soon_threadsafe(settle)

    def _lost(self, runner: _Runner, exc: BaseException) -> None:
        """A runner's socket closed: the process exited (or is exiting)."""
        runner.alive = False
        for channel in (runner.control, *(lane.channel for lane in runner.lanes)):
            try:
                self._selector.unregister(channel.fileno())
            except (KeyError, ValueError, OSError):
                pass
        for lane in runner.lanes:
            running, lane.running = lane.running, None
            if running is not None:
                self._resolve(running.future, error=RunnerFailed(f"runner process {runner.index} exited while it ran this instance"))
        if not self._stopping:  # waiting for the process and restarting it is not the hub's job
            threading.Thread(target=self._restart, args=(runner, exc), name="tenantflow-runner-restart", daemon=True).start()

    def _stopped(self) -> bool:  # a method: `close` sets the flag while this thread loops
        return self._stopping

    def _restart(self, dead: _Runner, exc: BaseException) -> None:
        try:
            status = dead.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # its sockets closed but it lingers: make sure
            dead.process.kill()
            status = dead.process.wait()
        log.error("runner process %d (pid %d) exited with status %s (%s); restarting it", dead.index, dead.process.pid, status, exc or "socket closed")
        quick = time.monotonic() - dead.started_at < QUICK_DEATH_S
        delay = self._restart_delay if quick else RESTART_DELAY_S[0]
        self._restart_delay = min(delay * 2, RESTART_DELAY_S[1]) if quick else RESTART_DELAY_S[0]
        while not self._stopped():
            time.sleep(delay)
            try:
                runner = self._spawn(dead.index)
            except Exception as error:  # noqa: BLE001 - logged, tried again later
                log.error("restarting runner %d failed: %s", dead.index, error)
                delay = min(delay * 2, RESTART_DELAY_S[1])
                continue
            if self._stopped():
                runner.process.kill()
                runner.process.wait()
                return
            self.restarts += 1
            self._install(runner)
            return


def _portable(error: BaseException) -> BaseException:
    """`error` if it pickles (the runner re-raises it as itself), else a RuntimeError
    with its text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any unpicklable error travels as text
        return RuntimeError(f"{type(error).__name__}: {error}")


def _runner_environment() -> dict[str, str]:
    """The engine's environment, with this package importable (also when it runs from a
    checkout that is on sys.path but not installed)."""
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return env
