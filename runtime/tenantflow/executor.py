"""One invocation of an instance: a fresh Wasm instance that replays the journal.

The guest's `run` starts from the top on every invocation. Each durable call takes the
next sequence number; calls already in the journal are answered from it (loaded once per
invocation), new ones are recorded, and a step's result is durable before the guest goes
on. When the instance has to wait (sleep, event, retry backoff, pause) the host import
raises `Unwind`, which traps out of the guest (the guest cannot catch it); the instance is
dropped and replayed later. Runs on a worker thread: everything here is synchronous.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

import wasmtime
from wasmtime import component as wc

from . import journal as jn
from .clock import Clock
from .database import Readers, Writer
from .exports import ExportCalls
from .isolates import IsolateCache
from .limits import EVENT_TYPE, Limits, cut_text, format_bytes, json_problem, over_limit, size_over, utf8_size
from .loader import LoaderError
from .policy import DEFAULT_POLICY, TenantPolicy
from .sandbox import INTERRUPTED, POOL_EXHAUSTED, new_store
from .warm import Binding, Key, WarmPool

if TYPE_CHECKING:
    from .hot import HotTier

WIT_PACKAGE = "tenantflow:workflow"
WIT_VERSION = "0.1.0"
DURABLE = f"{WIT_PACKAGE}/durable@{WIT_VERSION}"
CHILDREN = f"{WIT_PACKAGE}/children@{WIT_VERSION}"
CAPABILITIES = f"{WIT_PACKAGE}/capabilities@{WIT_VERSION}"
POOL_WAIT_SECONDS = 2.0
CLOSE_BACKLOG = 3  # stores queued to close beyond which the caller closes its own
SLEEP_POLL_MS = 10  # how often a sleep served in place checks for pause and terminate


def pool_slots_for(workers: int, warm_instances: int) -> int:
    """Pool slots for an executor: one instance per worker, the warm ones (and one
    warming), the stores queued to close (`CLOSE_BACKLOG`), one being closed by its
    invoking thread, and a deploy inspection or upgrade check."""
    return workers + warm_instances + CLOSE_BACKLOG + 3


class Unwind(Exception):
    """Raised from a host import to leave the guest: the instance waits, pauses, stops or errs.

    An `Exception` (not BaseException) because wasmtime-py only carries `Exception`s
    across the guest boundary."""

    def __init__(
        self,
        reason: str,
        error: Optional[tuple[str, str]] = None,
        status: str = "",
        wake_at: Optional[int] = None,
        waiting_for: Optional[str] = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason  # waiting | paused | cancelled | errored
        self.error = error
        self.status = status  # for waiting/paused: the status now recorded
        self.wake_at = wake_at
        self.waiting_for = waiting_for


@dataclass
class Control:
    """Signals from the API to a running invocation (checked at each durable call)."""

    pause_requested: bool = False
    cancelled: bool = False


@dataclass(frozen=True)
class Tier:
    """Where instances are made: a wasmtime engine with its linker, warm pool and export
    types (the isolate cache's engine; `hot.HotTier`'s pooled one)."""

    engine: wasmtime.Engine
    linker: wc.Linker
    warm: Optional[WarmPool]
    exports: ExportCalls


@dataclass
class Prepared:
    """A new instance and the row it was created with (see `TenantBinding.create`): its
    first invocation starts from this row, with no read back. With runner processes the
    row may still be committing (the guest gets ready while the engine's fsync runs): its
    first durable call waits for `durable` (nothing the guest does before that leaves the
    instance). In this process the commit is done before the instance is dispatched."""

    row: jn.InstanceRow
    durable: Future[Any]


@dataclass
class InvocationResult:
    status: str  # the instance's status after this invocation
    wake_at: Optional[int] = None
    waiting_for: Optional[str] = None
    error: Optional[tuple[str, str]] = None
    parent: Optional[tuple[int, str]] = None  # (pk, tenant) to wake when this child finished


@dataclass
class _StepRun:
    seq: int
    name: str
    limit: int
    delay_ms: int
    backoff: str
    timeout_ms: int
    attempt: int
    started_at: int
    entry: Optional[jn.JournalEntry]


def backoff_delay_ms(backoff: str, delay_ms: int, attempt: int) -> int:
    """Delay before the retry that follows failed `attempt` (Cloudflare semantics)."""
    if backoff == "constant":
        return delay_ms
    if backoff == "linear":
        return delay_ms * attempt
    return int(delay_ms * 2 ** (attempt - 1))


def format_duration_ms(ms: int) -> str:
    for unit, size in (("day", 86_400_000), ("hour", 3_600_000), ("minute", 60_000), ("second", 1000)):
        if ms >= size and ms % size == 0:
            n = ms // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    if ms >= 86_400_000:  # days and the rest: exact, and a guest's absurd wait reads as one
        days, rest = divmod(ms, 86_400_000)
        return f"{days:,} day{'s' if days != 1 else ''} {format_duration_ms(rest)}"
    return f"{ms / 1000:g} s" if ms >= 1000 else f"{ms} ms"


def _record(**fields: Any) -> wc.Record:
    rec = wc.Record()
    for key, value in fields.items():
        setattr(rec, key.replace("_", "-"), value)
    return rec


def _get(record: Any, field_name: str) -> Any:
    return getattr(record, field_name)


def error_info(name: str, message: str) -> wc.Record:
    return _record(name=name, message=message)


def record(**fields: Any) -> wc.Record:
    """A WIT record value (field names with '_' become the WIT's '-')."""
    return _record(**fields)


# `result<T, error-info>` crosses untagged when T is not a record (list, string, none),
# tagged (a Variant) when T is a record too: wasmtime-py's rule for variant-likes.
def ok(value: Any, tagged: bool) -> Any:
    return wc.Variant("ok", value) if tagged else value


def err(name: str, message: str, tagged: bool) -> Any:
    info = error_info(name, message)
    return wc.Variant("err", info) if tagged else info


# step-state is "tagged" in wasmtime-py's sense (two cases carry records), so it crosses as
# Variant; attempt-result, wait-result and outcome are untagged (payload types differ).
def _done(result: str) -> wc.Variant:
    return wc.Variant("done", result)


def _failed(name: str, message: str) -> wc.Variant:
    return wc.Variant("failed", error_info(name, message))


def _execute(attempt: int, key: str) -> wc.Variant:
    attempt_record = wc.Record()
    attempt_record.__dict__.update({"attempt": attempt, "idempotency-key": key})  # as _record would set them
    return wc.Variant("execute", attempt_record)


_current = threading.local()


class Invocation:
    """State of one invocation; host imports on this thread dispatch to it."""

    def __init__(self, executor: "Executor", row: jn.InstanceRow, control: Control) -> None:
        self.x = executor
        self.row = row
        self.control = control
        self.generation = row.generation
        self.journal: list[jn.JournalEntry] = []
        self.events: list[jn.PendingEvent] = []
        self.seq = 0
        self.replay_len = 0  # journal entries recorded before this invocation
        self.step: Optional[_StepRun] = None
        self.deadline_ms = 0  # end of this invocation's budget (monotonic ms)
        self.step_deadline = 0  # end of the running attempt's timeout (monotonic ms)
        self.logs: list[tuple[int, str, str]] = []
        self.partial: dict[str, str] = {}
        self.output_closed = False
        self.raised: Optional[Exception] = None  # what a host import raised (see _carried)
        self.warm_binding: Optional[Binding] = None  # set when a warm instance serves this invocation
        self.refill_warm: Optional[tuple[WarmPool, Key, wc.Component]] = None  # what a warm pool makes next
        self.tier: Optional[Tier] = None  # where its instance was made
        self.policy: TenantPolicy = executor.policy_for(row.tenant)
        # Verifying new code against this journal (an upgrade): answer recorded calls only,
        # never run a step body, never write.
        self.verifying = False
        self.log_bytes = 0
        self.log_dropped = 0
        self.state_bytes = -1  # what the journal's recorded results add up to (-1: not counted yet)
        self.out_of_memory = False  # the guest reported running out of memory on stderr
        self.in_flight: Optional[Future[Any]] = None  # a step result queued to commit
        self.prefix_len = -1  # steps handed to the guest by recorded-steps (-1: not asked)
        self.renew_at = sys.maxsize  # when the claim is extended next (never, unless `invoke` claimed it)
        self.limits = executor.limits
        # sha256 of "tenant\0id\0generation\0" so far: each key hashes only its seq on top.
        self.key_prefix = hashlib.sha256(f"{row.tenant}\0{row.id}\0{row.generation}\0".encode())

    # ---- helpers ---------------------------------------------------------------------
    def now(self) -> int:
        return self.x.clock.now_ms()

    def commit(self, op: Callable[[Any], Any]) -> Any:
        # Writes apply in queue order, and this one only if the step result queued before
        # it did not fail (its op, or its batch's commit): it commits with it.
        try:
            result = self.x.writer.run(op, after=self.in_flight)
        except jn.Fenced:
            raise Unwind("cancelled") from None
        self.await_durable()
        return result

    def commit_end(self, op: Callable[[Any], Any]) -> Any:
        """Commit the write that ends this invocation (its outcome, a wait, a pause) with
        its log lines queued just before: whoever sees the new state sees its logs."""
        logs = self.take_logs()
        if logs is not None:
            self.x.writer.defer(logs)
        return self.commit(op)

    def commit_at_next_call(self, op: Callable[[Any], Any]) -> None:
        """Queue a step's result to commit with the instance's next durable call (or its
        completion): the guest runs on without waiting for an fsync of its own, and the
        last step of a workflow shares one commit with its outcome. Safe because the guest
        can do nothing outside the instance before that call: every effect (a step body,
        a child, a capability, the outcome) is behind one, and each waits for it."""
        self.await_durable()
        self.in_flight = self.x.writer.defer(op)

    def await_durable(self) -> None:
        """Make the queued step result durable (leading the commit if nobody is)."""
        pending, self.in_flight = self.in_flight, None
        if pending is not None:
            try:
                self.x.writer.wait(pending)
            except jn.Fenced:
                raise Unwind("cancelled") from None

    def renew_lease(self) -> None:
        """Past half its lease, a running invocation extends its claim; the write rides with
        its next commit (a long invocation must not look abandoned to another host)."""
        now = self.now()
        if now >= self.renew_at:
            x = self.x
            self.renew_at = now + x.lease_ms // 2
            x.writer.defer(jn.renew_lease(self.row.pk, self.generation, x.host_id, now + x.lease_ms))

    def detach_warm(self) -> None:
        """Unlink the warm instance's binding from this invocation (see `Executor.invoke`)."""
        if self.warm_binding is not None:
            self.warm_binding.inv = None
            self.warm_binding = None

    def fatal(self, name: str, message: str) -> Unwind:
        return Unwind("errored", (name, message))

    def check_wait(self, what: str, ms: int) -> None:
        """A wait the guest asked for (any u64 crosses the boundary) ends the instance with
        a precise error past `max_wait_ms`, before its wake-up time is computed or stored."""
        longest = self.x.limits.max_wait_ms
        if ms > longest:
            raise self.fatal("InvalidDuration", f"{what} is {format_duration_ms(ms)}, longer than the longest wait ({format_duration_ms(longest)})")

    def check_control(self) -> None:
        if self.control.cancelled:
            raise Unwind("cancelled")
        if self.control.pause_requested:
            self.commit_end(jn.mark_paused(self.row.pk, self.generation, self.now()))
            raise Unwind("paused", status="paused")

    def next_call(self, kind: str, name: str) -> Optional[jn.JournalEntry]:
        """Take the next sequence number; the recorded entry there, checked for determinism."""
        self.await_durable()
        self.check_control()
        self.renew_lease()
        if self.step is not None:
            raise self.fatal(
                "InvalidDurableCall",
                f"{kind} {name!r} was called inside the body of step {self.step.name!r}; durable calls cannot be nested in a step",
            )
        limits = self.limits
        if len(name) > limits.max_step_name_chars:
            raise self.fatal("InvalidStepName", f"{kind} name is {len(name)} characters; at most {limits.max_step_name_chars} are allowed")
        seq = self.seq
        self.seq += 1
        if seq < len(self.journal):
            entry = self.journal[seq]
            if entry.kind != kind or entry.name != name:
                raise self.fatal(
                    "NonDeterminismError",
                    f"non-determinism at position {seq}: the journal has {entry.kind} {entry.name!r}, "
                    f"but the workflow now calls {kind} {name!r}",
                )
            if self.verifying and entry.status not in ("done", "failed", "timed_out"):
                raise Unwind("verified")  # matched up to the open call: nothing further to check
            return entry
        if self.verifying:
            raise Unwind("verified")  # every recorded call matched; new work is not run
        if seq >= limits.max_steps_per_instance:
            raise self.fatal("StepLimitExceeded", f"the instance reached its limit of {limits.max_steps_per_instance} durable calls")
        return None

    def idempotency_key(self, seq: int) -> str:
        """The first 32 hex digits of sha256(tenant, id, generation, seq joined by NULs): the
        same on every host and across retries and replays."""
        h = self.key_prefix.copy()
        h.update(b"%d" % seq)
        return h.hexdigest()[:32]

    def check_deadlines(self) -> Optional[str]:
        """Called every epoch slice while guest code runs: why it must stop now, if it must."""
        if self.control.cancelled:
            return "cancelled"
        now = self.now_wall()
        if self.step is not None and now >= self.step_deadline:
            return "step-timeout"
        if now >= self.deadline_ms:
            return "invocation-timeout"
        return None

    @staticmethod
    def now_wall() -> int:
        # CPU deadlines are wall-clock on this host, independent of the (injectable) clock.
        return time.monotonic_ns() // 1_000_000

    def suspend(self, entry: jn.JournalEntry, wake_at: Optional[int], waiting_for: Optional[str]) -> Unwind:
        status = self.commit_end(jn.record_entry(self.row.pk, self.generation, entry, suspend=(wake_at, waiting_for), now=self.now()))
        return Unwind("waiting", status=status or "waiting", wake_at=wake_at, waiting_for=waiting_for)

    # ---- replay in the guest ------------------------------------------------------------
    def recorded_steps(self) -> str:
        """The journal's leading run of finished steps, for the guest to answer itself
        (see WIT `recorded-steps`). Result texts are spliced in as they are: valid JSON."""
        if self.seq != 0 or self.prefix_len >= 0:
            raise self.fatal("InvalidDurableCall", "recorded-steps must be the first durable call of an invocation")
        parts: list[str] = []
        for entry in self.journal:
            if entry.kind != "step" or entry.status not in ("done", "failed"):
                break
            if entry.status == "done":
                parts.append(f"[{json.dumps(entry.name)},true,{entry.result or 'null'}]")
            else:
                parts.append(f"[{json.dumps(entry.name)},false,{json.dumps([entry.error_name or 'Error', entry.error_message or ''])}]")
        self.prefix_len = len(parts)
        return "[" + ",".join(parts) + "]"

    def replayed(self, count: int) -> None:
        """The guest answered `count` recorded steps itself: continue from there."""
        if self.seq != 0 or self.prefix_len < 0 or count > self.prefix_len:
            raise self.fatal("InvalidDurableCall", f"replayed({count}) does not follow recorded-steps ({max(self.prefix_len, 0)} recorded) as the first durable call")
        self.seq = count
        self.prefix_len = 0  # once only

    # ---- steps -----------------------------------------------------------------------
    def begin_step(self, name: str, config: Any) -> wc.Variant:
        """The first protocol's `begin-step`: `start-step` with its answer tagged and keyed."""
        retries = config.retries
        state = self.start_step(name, retries.limit, retries.delay, retries.backoff, config.timeout)
        if type(state) is int:
            return _execute(state, self.running_key())
        if type(state) is str:
            return _done(state)
        return wc.Variant("failed", state)

    def start_step(self, name: str, limit: int, delay_ms: int, backoff: str, timeout_ms: int) -> Any:
        """`step-start` crosses untagged (its payload types differ): the result text when
        the step is done, an error-info record when it failed, the attempt to run."""
        entry = self.next_call("step", name)
        if entry is not None:  # the replay fast path: answered from the journal
            if entry.status == "done":
                return entry.result or "null"
            if entry.status == "failed":
                return error_info(entry.error_name or "Error", entry.error_message or "")
        if delay_ms > self.x.limits.max_wait_ms:  # (the message is built only then: this is every step's path)
            self.check_wait(f"step {name!r}: its retry delay", delay_ms)
        run = _StepRun(
            seq=self.seq - 1, name=name, limit=limit, delay_ms=delay_ms, backoff=backoff,
            timeout_ms=min(timeout_ms, self.policy.max_step_timeout_ms or 2**63), attempt=1, started_at=0, entry=entry,
        )
        if entry is not None:
            if entry.wake_at is not None and entry.wake_at > self.now():  # woken before the retry is due
                raise self.suspend(entry, entry.wake_at, None)
            run.attempt = entry.attempts + 1
        return self.start_attempt(run)

    def start_attempt(self, run: _StepRun) -> int:
        run.started_at = self.now()
        self.step = run
        self.step_deadline = self.now_wall() + run.timeout_ms
        return run.attempt

    def execute(self, run: _StepRun) -> wc.Variant:
        return _execute(self.start_attempt(run), self.idempotency_key(run.seq))

    def running_key(self) -> str:
        """`idempotency-key`: the running step's key."""
        if self.step is None:
            raise self.fatal("InvalidDurableCall", "idempotency-key called while no step is running")
        return self.idempotency_key(self.step.seq)

    def _ending(self, name: str) -> _StepRun:
        run = self.step
        if run is None or run.name != name:
            raise self.fatal("InvalidDurableCall", f"end of attempt for step {name!r}, which is not running")
        self.step = None
        return run

    def end_attempt(self, name: str, outcome: Any) -> wc.Variant:
        run = self._ending(name)
        if isinstance(outcome, wc.Variant):  # tolerate either representation
            outcome = outcome.payload
        if isinstance(outcome, str):
            failed = self.succeeded_or_too_large(run, outcome)
            return _done(outcome) if failed is None else wc.Variant("failed", failed)
        return self.attempt_failed(run, *self.limit_error(_get(outcome, "name"), _get(outcome, "message")), _get(outcome, "retryable"))

    def end_attempt_ok(self, name: str, result: str) -> Optional[wc.Record]:
        """`end-attempt-ok`: None once `result` is the step's result, else why it failed."""
        return self.succeeded_or_too_large(self._ending(name), result)

    def succeeded_or_too_large(self, run: _StepRun, result: str) -> Optional[wc.Record]:
        limit = self.limits.max_step_result_bytes
        size = size_over(result, limit)
        if size is not None:
            message = f"step {run.name!r} returned {over_limit(size, limit)}"
            return self.attempt_failed(run, "StepResultTooLarge", message, retryable=False).payload
        problem = json_problem(result)  # only a guest that bypasses the SDK's encoder sends such text
        if problem is not None:
            return self.attempt_failed(run, "StepResultNotJSON", f"step {run.name!r} returned text that is not JSON: {problem}", retryable=False).payload
        too_much = self.over_state_budget(result)  # (every step's path: the words only when over)
        if too_much is not None:
            return self.attempt_failed(run, "StateLimitExceeded", f"step {run.name!r}: its result {too_much}", retryable=False).payload
        self.attempt_succeeded(run, result)
        self.count_state(result)
        return None

    def over_state_budget(self, result: str) -> Optional[str]:
        """How recording `result` would take the instance past its state budget, if it would."""
        state, budget = self.recorded_state() + utf8_size(result), self.limits.max_state_bytes_per_instance
        return f"would bring the instance's recorded state to {over_limit(state, budget)}" if state > budget else None

    def recorded_state(self) -> int:
        """What the journal's results add up to: summed once per invocation that asks (one
        that records a step or joins children), then kept up to date as results are added."""
        if self.state_bytes < 0:
            self.state_bytes = sum(utf8_size(e.result) for e in self.journal if e.result is not None)
        return self.state_bytes

    def count_state(self, result: Optional[str]) -> None:
        """A result recorded by a call other than a step (an event taken, children started
        or joined, a durable call): the next step's budget check counts it."""
        if self.state_bytes >= 0 and result is not None:
            self.state_bytes += utf8_size(result)

    def _entry(self, run: _StepRun) -> jn.JournalEntry:
        if run.entry is None:
            run.entry = jn.JournalEntry(seq=run.seq, kind="step", name=run.name, status="running", started_at=run.started_at)
            self.journal.append(run.entry)
        return run.entry

    def attempt_succeeded(self, run: _StepRun, result: str) -> None:
        now = self.now()
        entry = run.entry
        if entry is None:  # the common case: made whole at once rather than by _entry and five updates
            entry = run.entry = jn.JournalEntry(run.seq, "step", run.name, "done", run.attempt, result, started_at=run.started_at, ended_at=now)
            self.journal.append(entry)
        else:
            entry.status, entry.result, entry.attempts, entry.ended_at, entry.wake_at = "done", result, run.attempt, now, None
        self.commit_at_next_call(jn.record_entry(self.row.pk, self.generation, entry, now=now))

    def attempt_failed(self, run: _StepRun, error_name: str, message: str, retryable: bool) -> wc.Variant:
        entry = self._entry(run)
        now = self.now()
        entry.attempts = run.attempt
        entry.history.append({"attempt": run.attempt, "started_at": run.started_at, "ended_at": now, "error": {"name": error_name, "message": message}})
        if len(entry.history) > self.limits.max_attempt_history:
            del entry.history[: -self.limits.max_attempt_history]
        entry.error_name, entry.error_message = error_name, message
        if not retryable or run.attempt > run.limit:
            entry.status, entry.ended_at, entry.wake_at = "failed", now, None
            self.commit(jn.record_entry(self.row.pk, self.generation, entry, now=now))
            return _failed(error_name, message)
        delay = min(backoff_delay_ms(run.backoff, run.delay_ms, run.attempt), self.x.limits.max_wait_ms)  # backoff grows to the cap
        entry.status = "retrying"
        if delay <= 0:  # retry in place: nothing to wait for
            entry.wake_at = None
            self.x.writer.submit(jn.record_entry(self.row.pk, self.generation, entry, now=now))
            run.attempt += 1
            return self.execute(run)
        entry.wake_at = now + delay
        raise self.suspend(entry, entry.wake_at, None)

    def step_timed_out(self) -> InvocationResult:
        """The epoch deadline fired inside a step body: a failed attempt (then replay)."""
        run = self.step
        assert run is not None
        self.step = None
        try:
            self.attempt_failed(run, "StepTimeoutError", f"step {run.name!r} exceeded its {format_duration_ms(run.timeout_ms)} timeout", True)
        except Unwind as unwind:
            return self.x.settle(self, unwind)
        # Failed for good (or retry in place): replay at once; the guest sees the failure there.
        self.commit_end(jn.requeue(self.row.pk, self.generation, self.now()))
        return InvocationResult("queued")

    # ---- sleeps and events ------------------------------------------------------------
    def sleep_until(self, kind: str, name: str, until: Optional[int], duration: Optional[int]) -> None:
        entry = self.next_call(kind, name)
        now = self.now()
        if entry is None:
            ahead = until - now if until is not None else duration or 0
            self.check_wait(f"sleep {name!r}" if until is None else f"sleep_until {name!r}: the time to wait", ahead)
            wake = until if until is not None else now + (duration or 0)
            entry = jn.JournalEntry(seq=self.seq - 1, kind=kind, name=name, status="waiting", wake_at=wake, started_at=now)
            self.journal.append(entry)
            if wake > now:
                if not self.can_sleep_in_place(wake - now):
                    raise self.suspend(entry, wake, None)
                self.commit(jn.record_entry(self.row.pk, self.generation, entry, now=now))  # a crash resumes it
        if entry.status == "done":
            return
        assert entry.wake_at is not None
        if entry.wake_at > self.now():
            if not self.can_sleep_in_place(entry.wake_at - self.now()):
                raise self.suspend(entry, entry.wake_at, None)
            self.sleep_in_place(entry)
        now = self.now()
        entry.status, entry.ended_at = "done", now
        self.x.writer.submit(jn.record_entry(self.row.pk, self.generation, entry, now=now))  # bookkeeping only

    def can_sleep_in_place(self, ms: int) -> bool:
        x = self.x
        return ms <= x.limits.sleep_in_place_ms and x.clock.real_time and not self.verifying and not x.backlog()

    def sleep_in_place(self, entry: jn.JournalEntry) -> None:
        """Wait for a short sleep on this worker, checking for pause and terminate; the
        time slept does not count against the invocation's budget."""
        assert entry.wake_at is not None
        started = self.now_wall()
        while (remaining := entry.wake_at - self.now()) > 0:
            if self.control.cancelled:
                raise Unwind("cancelled")
            if self.control.pause_requested:
                raise self.suspend(entry, entry.wake_at, None)  # recorded as paused
            time.sleep(min(remaining, SLEEP_POLL_MS) / 1000)
        self.deadline_ms += self.now_wall() - started

    def wait_for_event(self, name: str, event_type: str, timeout: Optional[int]) -> Any:
        entry = self.next_call("event", name)
        if not EVENT_TYPE.fullmatch(event_type):
            raise self.fatal("InvalidEventType", f"wait {name!r}: invalid event type {event_type!r} (1 to 100 letters, digits, '-' or '_')")
        now = self.now()
        if entry is None:
            timeout_ms = self.x.limits.default_event_timeout_ms if timeout is None else timeout
            self.check_wait(f"wait_for_event {name!r}: its timeout", timeout_ms)
            entry = jn.JournalEntry(seq=self.seq - 1, kind="event", name=name, status="waiting", event_type=event_type, wake_at=now + timeout_ms, started_at=now)
            self.journal.append(entry)
        elif entry.event_type != event_type:
            raise self.fatal(
                "NonDeterminismError",
                f"non-determinism at position {entry.seq}: the journal waits for event type {entry.event_type!r}, the workflow now for {event_type!r}",
            )
        if entry.status == "done":
            return self._received(entry.result or "{}")
        if entry.status == "timed_out":
            return None
        event = next((e for e in self.events if e.event_type == event_type), None)
        if event is not None:
            self.events.remove(event)
            entry.status, entry.ended_at = "done", now
            entry.result = json.dumps({"type": event.event_type, "payload": json.loads(event.payload), "timestamp": event.created_at})
            self.count_state(entry.result)
            self.commit(jn.record_entry(self.row.pk, self.generation, entry, consume_event=event.pk, now=now))
            return self._received(entry.result)
        assert entry.wake_at is not None
        if entry.wake_at <= now:
            entry.status, entry.ended_at = "timed_out", now
            self.commit(jn.record_entry(self.row.pk, self.generation, entry, now=now))
            return None  # wait-result is untagged: None is `timed-out`
        raise self.suspend(entry, entry.wake_at, event_type)

    @staticmethod
    def _received(result: str) -> wc.Record:
        data = json.loads(result)
        return _record(event_type=data["type"], payload=json.dumps(data["payload"]), timestamp=data["timestamp"])

    # ---- other durable calls (children, capabilities outside steps) ------------------
    @property
    def in_step(self) -> bool:
        return self.step is not None

    def durable_call(self, kind: str, name: str, compute: Callable[[], str]) -> str:
        """A call answered once and journaled (JSON text); replays get the recorded answer."""
        entry = self.next_call(kind, name)
        if entry is not None and entry.status == "done":
            return entry.result or "null"
        now = self.now()
        result = compute()
        too_much = self.over_state_budget(result)
        if too_much is not None:  # the call was made (a fetch went out); its answer is not kept
            result = json.dumps({"err": {"name": "StateLimitExceeded", "message": f"{kind} {name!r}: its answer {too_much}"}})
        entry = jn.JournalEntry(seq=self.seq - 1, kind=kind, name=name, status="done", result=result, started_at=now, ended_at=self.now())
        self.journal.append(entry)
        self.count_state(result)
        self.commit(jn.record_entry(self.row.pk, self.generation, entry, now=entry.ended_at or now))
        return result

    # ---- limits ----------------------------------------------------------------------
    @property
    def memory_limit(self) -> int:
        return self.policy.memory_bytes or self.x.limits.memory_bytes

    def limit_error(self, name: str, message: str) -> tuple[str, str]:
        """A guest's error as it is recorded: cut to its bounds, and a MemoryError as the
        instance's memory cap."""
        limits = self.limits
        name, message = cut_text(name, limits.max_error_name_bytes), cut_text(message, limits.max_error_message_bytes)
        if name != "MemoryError":
            return name, message
        detail = f" ({message})" if message and message != "MemoryError" else ""
        return "MemoryLimitExceeded", f"memory limit {format_bytes(self.memory_limit)} reached{detail}"

    # ---- logs ------------------------------------------------------------------------
    def log(self, stream: str, message: str) -> None:
        if self.seq < self.replay_len and stream != "host":
            return  # this line was logged when the code first ran: replays stay quiet
        size = len(message.encode())
        limits = self.x.limits
        if self.log_bytes + size > limits.max_log_bytes_per_instance or len(self.logs) >= limits.max_log_lines_per_instance:
            self.log_dropped += size
            return
        self.log_bytes += size
        self.logs.append((self.now(), stream, message))

    def write_output(self, stream: str, data: bytes) -> None:
        """The guest's stdout/stderr (from wasmtime-wasi's threads, see OutputSink), logged
        in whole lines (print() writes in pieces)."""
        if self.output_closed:
            return  # a write that was still in flight when the invocation ended
        if stream == "stderr" and (b"MemoryError" in data or b"memory allocation of" in data):
            self.out_of_memory = True  # a trap that follows is the memory cap, not a crash
        text = self.partial.pop(stream, "") + data.decode("utf-8", "replace")
        *lines, rest = text.split("\n")
        for line in lines:
            self.log(stream, line)
        if rest:
            if len(rest) > 64 * 1024:  # no newline in sight: do not buffer without bound
                self.log(stream, rest)
            else:
                self.partial[stream] = rest

    def take_logs(self) -> Optional[jn.WriteOp[None]]:
        """End the guest's output and hand over what it logged (lines held back for a
        newline included) as one write, if there is anything to write."""
        self.output_closed = True
        for stream, rest in self.partial.items():
            self.log(stream, rest)
        self.partial.clear()
        if not self.logs and not self.log_dropped:
            return None
        lines, dropped = self.logs, self.log_dropped
        self.logs, self.log_dropped = [], 0
        return jn.append_logs(self.row.pk, lines, self.limits.max_log_bytes_per_instance, self.limits.max_log_lines_per_instance, dropped)


def _invocation() -> Invocation:
    inv: Optional[Invocation] = getattr(_current, "invocation", None)
    if inv is None:
        raise RuntimeError("host import called outside an invocation")
    return inv


def _host_begin_step(_: Any, name: str, config: Any) -> Any:
    return _invocation().begin_step(name, config)


def _host_end_attempt(_: Any, name: str, outcome: Any) -> Any:
    return _invocation().end_attempt(name, outcome)


def _host_start_step(_: Any, name: str, limit: int, delay: int, backoff: str, timeout: int) -> Any:
    return _invocation().start_step(name, limit, delay, backoff, timeout)


def _host_idempotency_key(_: Any) -> str:
    return _invocation().running_key()


def _host_end_attempt_ok(_: Any, name: str, result: str) -> Any:
    return _invocation().end_attempt_ok(name, result)


def _host_sleep(_: Any, name: str, duration: int) -> None:
    _invocation().sleep_until("sleep", name, None, duration)


def _host_sleep_until(_: Any, name: str, until: int) -> None:
    _invocation().sleep_until("sleep", name, until, None)


def _host_wait_for_event(_: Any, name: str, event_type: str, timeout: Optional[int]) -> Any:
    return _invocation().wait_for_event(name, event_type, timeout)


def _host_log(_: Any, level: str, message: str) -> None:
    inv: Optional[Invocation] = getattr(_current, "invocation", None)
    if inv is not None:
        inv.log(str(level), message)


def _host_recorded_steps(_: Any) -> str:
    return _invocation().recorded_steps()


def _host_replayed(_: Any, count: int) -> None:
    _invocation().replayed(count)


def current_invocation() -> Invocation:
    """The invocation running on this thread (for host imports defined in other modules)."""
    return _invocation()


HOST_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "begin-step": _host_begin_step,
    "end-attempt": _host_end_attempt,
    "start-step": _host_start_step,
    "idempotency-key": _host_idempotency_key,
    "end-attempt-ok": _host_end_attempt_ok,
    "sleep": _host_sleep,
    "sleep-until": _host_sleep_until,
    "wait-for-event": _host_wait_for_event,
    "log": _host_log,
    "recorded-steps": _host_recorded_steps,
    "replayed": _host_replayed,
}


def _carried(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Carry a host import's exception across the guest on this thread.

    wasmtime-py hands a Python exception from an import back to the caller through one
    process-wide slot, so with guests on several threads an exception can surface in the
    wrong thread. We park it on the thread's invocation instead and trap with a
    WasmtimeError, which wasmtime-py passes through untouched."""

    def host(context: Any, *args: Any) -> Any:
        try:
            return fn(context, *args)
        except Exception as exc:
            inv: Optional[Invocation] = getattr(_current, "invocation", None)
            if inv is None:
                raise
            inv.raised = exc
            raise wasmtime.WasmtimeError(f"tenantflow: host import raised {type(exc).__name__}") from None

    return host


def build_linker(engine: wasmtime.Engine) -> wc.Linker:
    """One linker per engine: WASI (nothing granted per store) plus the tenantflow imports."""
    from . import capabilities, children
    from .fastcall import add_fast_func

    interfaces = {DURABLE: HOST_FUNCTIONS, CHILDREN: children.HOST_FUNCTIONS, CAPABILITIES: capabilities.HOST_FUNCTIONS}
    linker = wc.Linker(engine)
    linker.add_wasip2()
    with linker.root() as root:
        for interface, functions in interfaces.items():
            with root.add_instance(interface) as instance:
                for name, fn in functions.items():
                    add_fast_func(instance, name, _carried(fn))
    return linker


def _trap_message(exc: BaseException) -> str:
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("Exited with i32 exit status"):  # os._exit / sys.exit from native code
            return f"the workflow exited the interpreter ({ln.removeprefix('Exited with i32 ')})"
    for ln in lines:
        if "stack overflow" in ln or "call stack exhausted" in ln:
            return "the workflow exhausted its stack (deep recursion)"
        if "out of bounds memory" in ln:
            return "the workflow accessed memory out of bounds"
        if "unreachable" in ln:
            return "the workflow aborted (wasm `unreachable` executed)"
    return lines[0] if lines else type(exc).__name__


def call_run(inv: Invocation, store: wasmtime.Store, instance: wc.Instance, digest: str, component: wc.Component) -> Any:
    """Call the guest's `run` export for the invocation's instance (of `component`, code
    `digest`). A host import's exception comes out as itself (see `_carried`), a trap as
    WasmtimeError."""
    row = inv.row
    try:
        run = (inv.tier.exports if inv.tier is not None else inv.x.exports).get(digest, component, store, instance, "run")
    except LookupError:
        raise Unwind("errored", ("ComponentError", "component does not export `run`")) from None
    event = _record(payload=row.params, instance_id=row.id, workflow=row.workflow, created_at=row.created_at)
    try:
        return run(store, instance, row.workflow, event)
    except wasmtime.WasmtimeError as trap:
        # wasmtime-py raises the trap from a frame that holds it: a cycle through this
        # frame's store that only a full collection would free (~8 MB an instance).
        trap.__traceback__ = None
        if inv.raised is None:
            raise
    # Outside the handler (no context pointing back at the trap) and from no local of this
    # frame (its traceback holds the frame); `invoke` clears `inv.raised` when it is done.
    raise inv.raised


@dataclass
class Executor:
    """Runs invocations; shared by the scheduler's worker threads."""

    linker: wc.Linker
    cache: IsolateCache
    writer: Writer
    readers: Readers
    clock: Clock
    limits: Limits
    host_id: str
    # (tenant, workflow, digest) -> verified component bytes; called only on a cache miss.
    load_component_bytes: Callable[[str, str, str], bytes]
    lease_ms: int = 60_000
    policy_for: Callable[[str], TenantPolicy] = field(default=lambda tenant: DEFAULT_POLICY)
    # Thread-safe: make an instance runnable (a child's event, a parent's join).
    wake: Callable[[int, str], None] = field(default=lambda pk, tenant: None)
    warm: Optional[WarmPool] = None
    # Thread-safe: whether instances are queued for a worker (then sleeps are not served in place).
    backlog: Callable[[], bool] = field(default=lambda: False)
    exports: ExportCalls = field(default_factory=ExportCalls)
    hot: Optional["HotTier"] = None  # hot versions run on a pooled engine (hot.py)
    _closer: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="tenantflow-closer"))
    _closing: int = 0  # stores queued for the closer thread
    _closing_lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        """Drop the warm instances and the hot tier, then finish the queued closes."""
        if self.warm is not None:
            self.warm.close()
        if self.hot is not None:
            self.hot.close()
        self._closer.shutdown(wait=True)

    @property
    def tier(self) -> Tier:
        """The isolate cache's engine, with this executor's linker, warm pool and exports."""
        return Tier(self.cache.engine, self.linker, self.warm, self.exports)

    def instantiate(
        self, digest: str, inv: Optional[Invocation], memory_bytes: int, owner: tuple[str, str] = ("", "")
    ) -> tuple[wasmtime.Store, wc.Instance, wc.Component]:
        """A fresh instance of `digest` in its own store, and the component it is of (a
        warm instance may be of an object that the isolate cache has since replaced).
        An invocation of a hot version gets it from the hot tier's pooled engine."""
        hot = self.hot.component(digest) if self.hot is not None and inv is not None else None
        if hot is not None:
            tier, component = hot
        else:
            tier = self.tier
            component = self.cache.get(digest, lambda: self.load_component_bytes(owner[0], owner[1], digest))
        if inv is not None:
            inv.tier = tier
        if inv is not None and tier.warm is not None:
            key = (digest, memory_bytes)
            # The pool refills when this invocation ends (`Executor._close`), not beside
            # it: a warmer running on the other core competes for the GIL and the mm lock,
            # and makes each copy-on-write fault of either a TLB shootdown between the
            # cores (measured: the guest's first pass 2x faster without it).
            inv.refill_warm = (tier.warm, key, component)
            warm = tier.warm.take(key)
            if warm is not None:
                store, instance, binding, made_from = warm
                binding.inv = inv
                inv.warm_binding = binding
                return store, instance, made_from
        if inv is not None:
            check = inv.check_deadlines
        else:  # inspecting a component: its exports get a fixed budget
            until = time.monotonic() + 30

            def check() -> Optional[str]:
                return "inspect-timeout" if time.monotonic() > until else None

        store = new_store(
            tier.engine,
            memory_bytes=memory_bytes,
            check=check,
            output=inv.write_output if inv else None,
        )
        started = time.perf_counter()
        try:
            instance = self._instantiate_in_slot(tier.linker, store, component)
        except BaseException:
            store.close()
            raise
        self.cache.stats.instantiations += 1
        self.cache.stats.instantiate_seconds += time.perf_counter() - started
        return store, instance, component

    def _instantiate_in_slot(self, linker: wc.Linker, store: wasmtime.Store, component: wc.Component) -> wc.Instance:
        """Instantiate in a pool slot; when every slot is taken (stores still being
        closed), wait briefly for one, then give up with a LoaderError (retried later)."""
        deadline = time.monotonic() + POOL_WAIT_SECONDS
        while True:
            try:
                return linker.instantiate(store, component)
            except wasmtime.WasmtimeError as exc:
                exhausted = POOL_EXHAUSTED in str(exc)
                if exhausted and time.monotonic() < deadline:
                    time.sleep(0.005)
                    continue
                if exhausted:
                    raise LoaderError(f"no free instance slot on this host ({str(exc).splitlines()[0]})") from None
                raise

    def release(self, store: Optional[wasmtime.Store], inv: Optional[Invocation] = None) -> None:
        """Free an instance's store and its pool slot now rather than at garbage
        collection, off the caller's path (resetting a pool slot's memory takes a
        millisecond or more). After an invocation's instance is closed, the warm pool
        prepares the next one. When closes back up (the closer thread starved of CPU),
        the caller closes its own: stores waiting to close hold pool slots, and an
        exhausted pool makes the next instantiation wait."""
        refill = None
        if inv is not None:
            inv.detach_warm()
            refill = inv.refill_warm
        if store is None:
            return
        with self._closing_lock:
            backed_up = self._closing >= CLOSE_BACKLOG
            if not backed_up:
                self._closing += 1
        if backed_up:
            self._close(store, refill)
        else:
            self._closer.submit(self._close_queued, store, refill)

    def _close_queued(self, store: wasmtime.Store, refill: Optional[tuple[WarmPool, Key, wc.Component]]) -> None:
        try:
            self._close(store, refill)
        finally:
            with self._closing_lock:
                self._closing -= 1

    def _close(self, store: wasmtime.Store, refill: Optional[tuple[WarmPool, Key, wc.Component]]) -> None:
        store.close()
        if refill is not None:
            pool, key, component = refill
            pool.refill(key, component)

    def workflows(self, digest: str) -> list[str]:
        """The workflow names a component exports."""
        store, instance, _ = self.instantiate(digest, None, self.limits.memory_bytes)
        try:
            func = instance.get_func(store, "workflows")
            if func is None:
                raise RuntimeError("component does not export `workflows`; was it built with `tenantflow compile`?")
            names = func(store)
            func.post_return(store)
            return list(names)
        finally:
            self.release(store)

    def invoke(
        self, pk: int, control: Control, prepared: Optional[Prepared] = None, publish: Optional[Callable[[InvocationResult], None]] = None
    ) -> InvocationResult:
        """Run the instance from the top until it completes, fails or has to wait.

        `publish` gets the outcome before the instance's store is let go. Handing the store
        to the closer thread wakes it, and woken on this thread's core it preempts this
        thread, while the other core, idle, leaves this thread (cache-hot) where it is: the
        outcome then waited for the whole store reset (~1.2-1.6 ms of memcpy, measured with
        `perf sched timehist --state`) before it reached the event loop."""
        released: list[tuple[Optional[wasmtime.Store], Invocation]] = []
        try:
            result = self._invoke(pk, control, prepared, released)
            if publish is not None:
                publish(result)
            return result
        finally:
            for store, inv in released:
                self.release(store, inv)

    def _invoke(self, pk: int, control: Control, prepared: Optional[Prepared], released: list[tuple[Optional[wasmtime.Store], Invocation]]) -> InvocationResult:
        if prepared is not None:  # new: no journal and no events yet
            row = prepared.row
            inv = Invocation(self, row, control)
            inv.in_flight = prepared.durable  # waited for at the first durable call
        else:
            conn = self.readers.sync()
            found = jn.instance_by_pk_query(pk).run(conn)
            if found is None or found.status not in jn.ACTIVE:
                return InvocationResult(found.status if found else "deleted")
            row = found
            control.pause_requested = control.pause_requested or bool(row.pause_requested)
            inv = Invocation(self, row, control)
            inv.journal = jn.journal_query(pk).run(conn)
            inv.replay_len = len(inv.journal)
            inv.events = jn.pending_events_query(pk).run(conn)
        now = self.clock.now_ms()
        # Status and lease are bookkeeping: they ride along with the invocation's first commit.
        self.writer.defer(jn.start_invocation(pk, row.generation, self.host_id, now + self.lease_ms, now))
        inv.renew_at = now + self.lease_ms // 2
        inv.deadline_ms = inv.now_wall() + self.limits.invocation_timeout_ms
        _current.invocation = inv
        self.cache.stats.live_instances += 1
        store: Optional[wasmtime.Store] = None
        try:
            try:
                store, instance, component = self.instantiate(row.digest, inv, inv.memory_limit, (row.tenant, row.workflow))
            except LoaderError as exc:  # the code may come back: wait and retry, do not fail
                return self.loader_failed(inv, str(exc))
            except Exception as exc:  # noqa: BLE001 - a component that cannot load errs its instance
                error = ("ComponentError", f"could not load the workflow's component: {exc}")
                if "exceeds memory limits" in str(exc):
                    error = ("MemoryLimitExceeded", f"memory limit {format_bytes(inv.memory_limit)} is below what the component needs to start ({exc})")
                return self.settle(inv, Unwind("errored", error))
            try:
                outcome = call_run(inv, store, instance, row.digest, component)
            except Unwind as unwind:
                return self.settle(inv, unwind)
            except wasmtime.WasmtimeError as trap:
                if control.cancelled:  # terminated, restarted or shutting down: record nothing
                    return self.settle(inv, Unwind("cancelled"))
                if INTERRUPTED in str(trap):
                    if "step-timeout" in str(trap) and inv.step is not None:
                        return inv.step_timed_out()
                    budget = format_duration_ms(self.limits.invocation_timeout_ms)
                    return self.settle(inv, Unwind("errored", ("InvocationTimeoutError", f"the invocation exceeded its {budget} budget")))
                inv.log("host", f"guest trapped: {trap}")  # the full trap, for the operator
                crash = inv.limit_error("MemoryError", "") if inv.out_of_memory else ("WorkflowCrashed", _trap_message(trap))
                return self.settle(inv, Unwind("errored", crash))
            if isinstance(outcome, wc.Variant):
                outcome = outcome.payload
            if isinstance(outcome, str):
                refused = self.output_refused(outcome)
                return self.settle(inv, None, output=outcome) if refused is None else self.settle(inv, Unwind("errored", refused))
            return self.settle(inv, Unwind("errored", inv.limit_error(_get(outcome, "name"), _get(outcome, "message"))))
        except Unwind as unwind:  # raised while settling (e.g. fenced)
            return self.settle(inv, unwind)
        finally:
            _current.invocation = None
            # Break what ties a finished invocation to its store: wasmtime-py keeps output
            # callbacks (which reach `inv`) in a process-wide table until the store is freed,
            # so a traceback on `inv` or a pooled binding pointing at it would keep the
            # store (~8 MB) alive forever.
            inv.raised = None
            self.cache.stats.live_instances -= 1
            released.append((store, inv))  # by `invoke`, once the outcome is out
            logs = inv.take_logs()  # what no end write took (cancelled, fenced, or logged after it)
            if logs is not None:
                self.writer.submit(logs)

    def verify(self, pk: int, digest: str) -> Optional[str]:
        """Replay instance `pk`'s journal against component `digest` without side effects.
        None if every recorded call matches; else the first divergence, in words."""
        conn = self.readers.sync()
        row = jn.instance_by_pk_query(pk).run(conn)
        if row is None:
            return "the instance no longer exists"
        inv = Invocation(self, row, Control())
        inv.verifying = True
        inv.journal = jn.journal_query(pk).run(conn)
        inv.replay_len = len(inv.journal)
        inv.deadline_ms = inv.now_wall() + self.limits.invocation_timeout_ms
        _current.invocation = inv
        store: Optional[wasmtime.Store] = None
        try:
            store, instance, component = self.instantiate(digest, inv, inv.memory_limit, (row.tenant, row.workflow))
            try:
                outcome = call_run(inv, store, instance, digest, component)
            except Unwind as unwind:
                if unwind.reason == "verified":
                    return None
                if unwind.error is not None:
                    return f"{unwind.error[0]}: {unwind.error[1]}"
                return f"the new code stopped replaying ({unwind.reason})"
            except wasmtime.WasmtimeError as trap:
                return f"the new code crashed while replaying: {_trap_message(trap)}"
            if isinstance(outcome, wc.Variant):
                outcome = outcome.payload
            if inv.seq < len(inv.journal):
                how = "completed" if isinstance(outcome, str) else f"failed ({_get(outcome, 'name')}: {_get(outcome, 'message')})"
                return f"the new code {how} after {inv.seq} of the {len(inv.journal)} recorded calls"
            return None
        finally:
            _current.invocation = None
            self.release(store, inv)

    def loader_failed(self, inv: Invocation, message: str) -> InvocationResult:
        """Retry loading later (backoff doubling from 1 s to 5 min); the error is visible."""
        previous = (inv.row.wake_at - inv.row.updated_at) if inv.row.error_name == "LoaderError" and inv.row.wake_at else 0
        delay = min(max(1000, previous * 2), 300_000)
        wake_at = self.clock.now_ms() + delay
        try:
            self.writer.run(jn.loader_failed(inv.row.pk, inv.generation, wake_at, message, self.clock.now_ms()))
        except jn.Fenced:
            return InvocationResult("cancelled")
        return InvocationResult("waiting", wake_at)

    def output_refused(self, output: str) -> Optional[tuple[str, str]]:
        """Why a workflow's output cannot be its result (too large, not JSON), or None."""
        limit = self.limits.max_output_bytes
        size = size_over(output, limit)
        if size is not None:
            return "OutputTooLarge", f"the workflow returned {over_limit(size, limit)}"
        problem = json_problem(output)
        return None if problem is None else ("OutputNotJSON", f"the workflow returned text that is not JSON: {problem}")

    def settle(self, inv: Invocation, unwind: Optional[Unwind], output: Optional[str] = None) -> InvocationResult:
        """Make the invocation's end durable and tell the scheduler what comes next."""
        pk, gen, now = inv.row.pk, inv.generation, self.clock.now_ms()
        parent = (inv.row.parent_pk, inv.row.tenant) if inv.row.parent_pk is not None else None
        try:
            if unwind is None:
                inv.commit_end(jn.finish(pk, gen, "complete", output, None, now))
                return InvocationResult("complete", parent=parent)
            if unwind.reason == "errored":
                inv.commit_end(jn.finish(pk, gen, "errored", None, unwind.error, now))
                return InvocationResult("errored", error=unwind.error, parent=parent)
            inv.await_durable()  # e.g. cancelled: what the guest completed before is kept
        except (jn.Fenced, Unwind):
            pass
        if unwind is not None and unwind.reason in ("waiting", "paused") and unwind.status:
            return InvocationResult(unwind.status, unwind.wake_at, unwind.waiting_for)
        row = jn.instance_by_pk_query(pk).run(self.readers.sync())  # cancelled / fenced: report what it is now
        return InvocationResult(row.status if row else "deleted", row.wake_at if row else None)
