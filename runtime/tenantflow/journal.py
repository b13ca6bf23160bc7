"""The durable record of instances: envelopes, journal entries, events and logs.

Reads return plain dataclasses; writes are functions of a connection that the
group-commit writer runs. The writes an invocation makes are `functools.partial`s of
module-level functions over plain data, so that they pickle: a runner process
(`runner.py`) sends them to the engine's writer. Every write an invocation makes is
fenced by the instance's generation: terminate and restart bump it, so a late write from
an abandoned invocation changes nothing.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import dataclass, field, fields
from functools import partial
from operator import attrgetter
from typing import Any, Callable, Generic, Iterable, Optional, Sequence, TypeVar

import aiosqlite

from .errors import InstanceAlreadyExists, QuotaExceeded, TenantflowError, UnknownWorkflow

ACTIVE = ("queued", "running", "waiting", "waitingForPause")
FINISHED = ("complete", "errored", "terminated")
R = TypeVar("R")
WriteOp = Callable[[sqlite3.Connection], R]
STATUSES = ("queued", "running", "paused", "waitingForPause", "waiting", "errored", "terminated", "complete")

INSTANCE_COLUMNS = (
    "pk, tenant, id, workflow, digest, params, metadata, status, output, error_name, error_message, "
    "created_at, updated_at, started_at, ended_at, wake_at, waiting_for, pause_requested, generation, log_bytes, log_dropped, parent_pk"
)
MAX_ROW_ID = 2**63 - 1  # SQLite's largest INTEGER: a bound for ids and cursors taken from callers
JOURNAL_COLUMNS = "seq, kind, name, status, attempts, result, error_name, error_message, wake_at, event_type, started_at, ended_at, history"


class Fenced(Exception):
    """The instance moved on (terminated, restarted, deleted) while this invocation ran."""


@dataclass
class InstanceRow:
    pk: int
    tenant: str
    id: str
    workflow: str
    digest: str
    params: str
    metadata: Optional[str]
    status: str
    output: Optional[str]
    error_name: Optional[str]
    error_message: Optional[str]
    created_at: int
    updated_at: int
    started_at: Optional[int]
    ended_at: Optional[int]
    wake_at: Optional[int]
    waiting_for: Optional[str]
    pause_requested: int
    generation: int
    log_bytes: int
    log_dropped: int
    parent_pk: Optional[int] = None


@dataclass
class JournalEntry:
    seq: int
    kind: str
    name: str
    status: str
    attempts: int = 0
    result: Optional[str] = None
    error_name: Optional[str] = None
    error_message: Optional[str] = None
    wake_at: Optional[int] = None
    event_type: Optional[str] = None
    started_at: Optional[int] = None
    ended_at: Optional[int] = None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PendingEvent:
    pk: int
    event_type: str
    payload: str
    created_at: int


@dataclass
class NewInstance:
    tenant: str
    id: str
    workflow: str
    digest: Optional[str]  # None: the version deployed when the row is inserted
    params: str
    metadata: Optional[str]
    created_at: int
    parent_pk: Optional[int] = None


def _instance(row: Iterable[Any]) -> InstanceRow:
    return InstanceRow(*row)


def _entry(row: tuple[Any, ...]) -> JournalEntry:
    seq, kind, name, status, attempts, result, error_name, error_message, wake_at, event_type, started_at, ended_at, history = row
    return JournalEntry(
        seq, kind, name, status, attempts, result, error_name, error_message, wake_at, event_type, started_at, ended_at,
        json.loads(history) if history else [],
    )


# ---- reads ----------------------------------------------------------------------
# A read is a Query (SQL, parameters, how to map the rows) so that worker threads run it
# on their own sqlite3 connection and the asyncio API runs it on aiosqlite, from one text.

@dataclass(frozen=True)
class Query(Generic[R]):
    sql: str
    params: tuple[Any, ...]
    mapper: Callable[[list[Any]], R]

    def run(self, conn: sqlite3.Connection) -> R:
        return self.mapper(conn.execute(self.sql, self.params).fetchall())

    async def arun(self, conn: aiosqlite.Connection) -> R:
        # One trip to aiosqlite's thread (execute + fetchall + close would be three).
        return self.mapper(list(await conn.execute_fetchall(self.sql, self.params)))


def _first_instance(rows: list[Any]) -> Optional[InstanceRow]:
    return _instance(rows[0]) if rows else None


def instance_query(tenant: str, instance_id: str) -> Query[Optional[InstanceRow]]:
    return Query(f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE tenant=? AND id=?", (tenant, instance_id), _first_instance)


def instance_by_pk_query(pk: int) -> Query[Optional[InstanceRow]]:
    return Query(f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE pk=?", (pk,), _first_instance)


def journal_query(pk: int, limit: int = -1, from_seq: int = 0) -> Query[list[JournalEntry]]:
    """The instance's journal in order from `from_seq` on; with `limit`, its first `limit` entries."""
    return Query(
        f"SELECT {JOURNAL_COLUMNS} FROM journal WHERE instance_pk=? AND seq>=? ORDER BY seq LIMIT ?",
        (pk, from_seq, limit), lambda rows: [_entry(r) for r in rows],
    )


@dataclass(frozen=True)
class StatusSnapshot:
    row: InstanceRow
    journal: Optional[list[JournalEntry]]  # None: not read (the status is not settled yet)
    parent_id: Optional[str] = None  # the instance that started this one as a child
    truncated: bool = False  # the journal goes on past the read's `journal_limit`: not all of it read


def status_snapshot(
    tenant: str, instance_id: str, settled: Optional[frozenset[str]] = None, journal_limit: Optional[int] = None,
    from_seq: int = 0,
) -> Callable[[sqlite3.Connection], Optional[StatusSnapshot]]:
    """An instance's row, its journal and its parent's id, read together (one read
    transaction); with `settled`, the journal only when the status is one of those (`wait`
    polling); from `from_seq` on, with `journal_limit` at most that many entries
    (`truncated` says if more follow)."""

    def read(conn: sqlite3.Connection) -> Optional[StatusSnapshot]:
        conn.execute("BEGIN")
        try:
            row = instance_query(tenant, instance_id).run(conn)
            if row is None:
                return None
            if settled is not None and row.status not in settled:
                return StatusSnapshot(row, None)
            parent = None
            if row.parent_pk is not None:  # a child's parent is always of its tenant
                found = conn.execute("SELECT id FROM instances WHERE pk=?", (row.parent_pk,)).fetchone()
                parent = str(found[0]) if found else None
            journal = journal_query(row.pk, -1 if journal_limit is None else journal_limit + 1, from_seq).run(conn)
            if journal_limit is not None and len(journal) > journal_limit:
                return StatusSnapshot(row, journal[:journal_limit], parent, truncated=True)
            return StatusSnapshot(row, journal, parent)
        finally:
            conn.execute("COMMIT")

    return read


def pending_events_query(pk: int) -> Query[list[PendingEvent]]:
    return Query(
        "SELECT pk, event_type, payload, created_at FROM events WHERE instance_pk=? AND consumed_seq IS NULL ORDER BY pk",
        (pk,),
        lambda rows: [PendingEvent(*r) for r in rows],
    )


def active_instances_query() -> Query[list[tuple[int, str, str, Optional[int], int]]]:
    """(pk, tenant, status, wake_at, generation) of every instance the scheduler owns."""
    return Query(
        "SELECT pk, tenant, status, wake_at, generation FROM instances WHERE status IN ('queued','running','waiting','waitingForPause')",
        (),
        lambda rows: [tuple(r) for r in rows],
    )


def list_query(
    tenant: str, workflow: Optional[str], status: Optional[str], before_pk: Optional[int], limit: int, parent_pk: Optional[int] = None
) -> Query[list[InstanceRow]]:
    """Newest first; `before_pk` is the cursor; `parent_pk` keeps that instance's children."""
    where: list[str] = ["tenant=?"]
    params: list[object] = [tenant]
    filters: tuple[tuple[str, object], ...] = (("workflow", workflow), ("status", status), ("parent_pk", parent_pk))
    for column, value in filters:
        if value is not None:
            where.append(f"{column}=?")
            params.append(value)
    if before_pk is not None:
        where.append("pk<?")
        params.append(before_pk)
    sql = f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE {' AND '.join(where)} ORDER BY pk DESC LIMIT ?"
    return Query(sql, (*params, limit), lambda rows: [_instance(r) for r in rows])


def logs_query(pk: int, limit: int, after_pk: int = 0) -> Query[list[tuple[int, int, str, str]]]:
    """(pk, at, stream, message) of the instance's log lines in order, after `after_pk` (a page's cursor)."""
    return Query(
        "SELECT pk, at, stream, message FROM logs WHERE instance_pk=? AND pk>? ORDER BY pk LIMIT ?",
        (pk, after_pk, limit), lambda rows: [tuple(r) for r in rows],
    )


def current_digest_query(tenant: str, workflow: str) -> Query[Optional[str]]:
    return Query(
        "SELECT digest FROM deployments WHERE tenant=? AND workflow=? ORDER BY pk DESC LIMIT 1",
        (tenant, workflow),
        lambda rows: rows[0][0] if rows else None,
    )


ComponentRow = tuple[str, int, list[str]]  # digest, size, the workflows it defines


def _component_row(rows: list[Any]) -> Optional[ComponentRow]:
    return (rows[0][0], rows[0][1], json.loads(rows[0][2])) if rows else None


def tenant_component_query(tenant: str, digest: str) -> Query[Optional[ComponentRow]]:
    """A component version `tenant` may run (it deployed or registered it): another
    tenant's version is answered like a missing one."""
    return Query(
        "SELECT c.digest, c.size, c.workflows FROM tenant_components t JOIN components c ON c.digest = t.digest "
        "WHERE t.tenant=? AND t.digest=?",
        (tenant, digest),
        _component_row,
    )


def _holds_component(conn: sqlite3.Connection, tenant: str, digest: str) -> bool:
    return conn.execute("SELECT 1 FROM tenant_components WHERE tenant=? AND digest=?", (tenant, digest)).fetchone() is not None


def component_query(digest: str) -> Query[Optional[ComponentRow]]:
    return Query("SELECT digest, size, workflows FROM components WHERE digest=?", (digest,), _component_row)


# ---- writes (run by the group-commit writer) ----------------------------------------

def insert_instances(
    new: list[NewInstance], on_inserted: Optional[Callable[[list[InstanceRow]], None]] = None, quota: Optional[int] = None
) -> WriteOp[list[int]]:
    """All or nothing: a duplicate id fails the whole batch, naming the id, and so does a
    tenant past its `quota` of unfinished instances. `on_inserted` hears the rows as
    inserted, inside the transaction (before its commit)."""
    return partial(_insert_instances, new, on_inserted, quota)


def _check_quota(new: list[NewInstance], quota: Optional[int], conn: sqlite3.Connection) -> None:
    for tenant, count in Counter(inst.tenant for inst in new).items():
        _check_room(conn, tenant, count, quota)


def _check_room(conn: sqlite3.Connection, tenant: str, count: int, quota: Optional[int]) -> None:
    """QuotaExceeded unless `count` more unfinished instances fit the tenant's quota."""
    if quota is None:
        return
    found = conn.execute("SELECT unfinished FROM tenant_usage WHERE tenant=?", (tenant,)).fetchone()  # kept by triggers
    unfinished = found[0] if found else 0
    if unfinished + count > quota:
        raise QuotaExceeded(f"tenant {tenant!r} has {unfinished:,} unfinished instances; {count:,} more would pass its quota of {quota:,}")


def _insert_instances(
    new: list[NewInstance], on_inserted: Optional[Callable[[list[InstanceRow]], None]], quota: Optional[int], conn: sqlite3.Connection
) -> list[int]:
    _check_quota(new, quota, conn)
    rows = []
    current: dict[tuple[str, str], str] = {}
    held: set[tuple[str, str]] = set()
    for inst in new:
        digest = inst.digest
        if digest is not None:  # a pin (or a child's parent's version): the tenant's own, checked as it is used
            if (inst.tenant, digest) not in held:
                if not _holds_component(conn, inst.tenant, digest):
                    raise UnknownWorkflow(f"component {digest[:12]} is not registered")
                held.add((inst.tenant, digest))
        else:  # the deployed version, read in the same transaction
            key = (inst.tenant, inst.workflow)
            if key not in current:
                found = current_digest_query(*key).run(conn)
                if found is None:
                    raise UnknownWorkflow(f"tenant {inst.tenant!r} has no deployed workflow {inst.workflow!r}")
                current[key] = found
            digest = current[key]
        try:
            cur = conn.execute(
                "INSERT INTO instances (tenant, id, workflow, digest, params, metadata, status, created_at, updated_at, parent_pk) "
                "VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
                (inst.tenant, inst.id, inst.workflow, digest, inst.params, inst.metadata, inst.created_at, inst.created_at, inst.parent_pk),
            )
        except sqlite3.IntegrityError:
            raise InstanceAlreadyExists(inst.id) from None
        rows.append(InstanceRow(
            int(cur.lastrowid or 0), inst.tenant, inst.id, inst.workflow, digest, inst.params, inst.metadata, "queued", None, None, None,
            inst.created_at, inst.created_at, None, None, None, None, 0, 0, 0, 0, inst.parent_pk,
        ))
    if on_inserted is not None:
        on_inserted(rows)
    return [row.pk for row in rows]


def _fence(conn: sqlite3.Connection, pk: int, generation: int) -> None:
    row = conn.execute("SELECT generation, status FROM instances WHERE pk=?", (pk,)).fetchone()
    if row is None or row[0] != generation or row[1] in FINISHED or row[1] == "paused":
        raise Fenced()


def start_invocation(pk: int, generation: int, owner: str, lease_until: int, now: int) -> WriteOp[None]:
    return partial(_start_invocation, pk, generation, owner, lease_until, now)


def _start_invocation(pk: int, generation: int, owner: str, lease_until: int, now: int, conn: sqlite3.Connection) -> None:
    _fence(conn, pk, generation)
    conn.execute(
        "UPDATE instances SET status = CASE WHEN pause_requested THEN 'waitingForPause' ELSE 'running' END, "
        "started_at = COALESCE(started_at, ?), updated_at=?, claim_owner=?, lease_until=?, wake_at=NULL, waiting_for=NULL, "
        "error_name=NULL, error_message=NULL WHERE pk=?",
        (now, now, owner, lease_until, pk),
    )


def renew_lease(pk: int, generation: int, owner: str, lease_until: int) -> WriteOp[None]:
    """Extend a running invocation's claim. Only its own: a claim another host took (or a
    new generation) is left alone, and the invocation's next write is fenced anyway."""
    return partial(_renew_lease, pk, generation, owner, lease_until)


def _renew_lease(pk: int, generation: int, owner: str, lease_until: int, conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE instances SET lease_until=? WHERE pk=? AND generation=? AND claim_owner=?", (lease_until, pk, generation, owner))


# The entry is written only while the invocation still owns the instance (the `_fence`
# condition, folded into the write: one statement per step result). `<>` rather than
# NOT IN: SQLite builds an ephemeral table for an IN list on every run.
_UPSERT_FENCED = (
    f"INSERT OR REPLACE INTO journal (instance_pk, {JOURNAL_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? "
    "FROM instances WHERE pk=? AND generation=? AND " + " AND ".join(f"status<>'{s}'" for s in (*FINISHED, "paused"))
)


def _upsert_entry(conn: sqlite3.Connection, pk: int, generation: int, e: JournalEntry) -> None:
    cur = conn.execute(
        _UPSERT_FENCED,
        (pk, e.seq, e.kind, e.name, e.status, e.attempts, e.result, e.error_name, e.error_message, e.wake_at,
         e.event_type, e.started_at, e.ended_at, json.dumps(e.history) if e.history else None, pk, generation),
    )
    if cur.rowcount != 1:
        raise Fenced()


def _suspend(conn: sqlite3.Connection, pk: int, wake_at: Optional[int], waiting_for: Optional[str], now: int) -> str:
    row = conn.execute("SELECT pause_requested FROM instances WHERE pk=?", (pk,)).fetchone()
    status = "paused" if row and row[0] else "waiting"
    conn.execute(
        "UPDATE instances SET status=?, wake_at=?, waiting_for=?, updated_at=?, claim_owner=NULL, lease_until=NULL WHERE pk=?",
        (status, wake_at, waiting_for, now, pk),
    )
    return status


def record_entry(
    pk: int,
    generation: int,
    entry: JournalEntry,
    *,
    suspend: Optional[tuple[Optional[int], Optional[str]]] = None,
    consume_event: Optional[int] = None,
    now: int,
) -> WriteOp[Optional[str]]:
    """Record one journal entry; optionally consume an event and suspend the instance
    (wake time, awaited event type) in the same transaction. Returns the new status when
    suspending (`waiting`, or `paused` if a pause was requested)."""
    return partial(_record_entry, pk, generation, entry, suspend, consume_event, now)


def _record_entry(
    pk: int,
    generation: int,
    entry: JournalEntry,
    suspend: Optional[tuple[Optional[int], Optional[str]]],
    consume_event: Optional[int],
    now: int,
    conn: sqlite3.Connection,
) -> Optional[str]:
    _upsert_entry(conn, pk, generation, entry)
    if consume_event is not None:
        cur = conn.execute("UPDATE events SET consumed_seq=? WHERE pk=? AND consumed_seq IS NULL", (entry.seq, consume_event))
        if cur.rowcount != 1:
            raise Fenced()
    if suspend is not None:
        return _suspend(conn, pk, suspend[0], suspend[1], now)
    return None


# A write crosses from a runner process to the engine pickled (wire.py). A step's result
# is one on every step's path, and pickling its `partial` and `JournalEntry` (a function
# and a class by name, the entry's __dict__) took ~4 µs to send and as much to read back,
# ~14 µs in a runner whose caches the guest had just cycled; as a tuple of plain values,
# ~1 µs each way. Other writes are rare and cross as they are.
_ENTRY_FORM = "entry"
_entry_values = attrgetter(*(f.name for f in fields(JournalEntry)))  # in field order: JournalEntry(*values)


def wire_form(op: WriteOp[Any]) -> Any:
    """`op` as it crosses to the engine: a plain entry's record as a tuple of values."""
    if type(op) is partial and op.func is _record_entry and op.args[3] is None and op.args[4] is None:
        pk, generation, entry, _, _, now = op.args
        return (_ENTRY_FORM, pk, generation, now) + _entry_values(entry)
    return op


def from_wire_form(form: Any) -> WriteOp[Any]:
    """The write op a runner sent (see `wire_form`)."""
    if type(form) is tuple and form[0] == _ENTRY_FORM:
        return partial(_record_entry, form[1], form[2], JournalEntry(*form[4:]), None, None, form[3])
    op: WriteOp[Any] = form
    return op


def start_children(
    pk: int, generation: int, entry: JournalEntry, children: list[NewInstance], quota: Optional[int] = None
) -> WriteOp[tuple[list[int], str]]:
    """Insert a parent's children and its journal entry (the `start` answer) together;
    returns the children's pks and the answer recorded. An insert that fails (an explicit
    child id that exists, the tenant's quota) becomes the recorded answer."""
    return partial(_start_children, pk, generation, entry, children, quota)


def _start_children(
    pk: int, generation: int, entry: JournalEntry, children: list[NewInstance], quota: Optional[int], conn: sqlite3.Connection
) -> tuple[list[int], str]:
    pks: list[int] = []
    if children:
        try:
            pks = _insert_instances(children, None, quota, conn)
        except TenantflowError as exc:
            entry.result = json.dumps({"err": {"name": type(exc).__name__, "message": str(exc)}})
    _record_entry(pk, generation, entry, None, None, entry.ended_at or 0, conn)
    return pks, entry.result or "{}"


def mark_paused(pk: int, generation: int, now: int) -> WriteOp[None]:
    return partial(_mark_paused, pk, generation, now)


def _mark_paused(pk: int, generation: int, now: int, conn: sqlite3.Connection) -> None:
    _fence(conn, pk, generation)
    conn.execute("UPDATE instances SET status='paused', updated_at=?, claim_owner=NULL, lease_until=NULL WHERE pk=?", (now, pk))


def finish(pk: int, generation: int, status: str, output: Optional[str], error: Optional[tuple[str, str]], now: int) -> WriteOp[None]:
    return partial(_finish, pk, generation, status, output, error, now)


def _finish(
    pk: int, generation: int, status: str, output: Optional[str], error: Optional[tuple[str, str]], now: int, conn: sqlite3.Connection
) -> None:
    _fence(conn, pk, generation)
    conn.execute(
        "UPDATE instances SET status=?, output=?, error_name=?, error_message=?, ended_at=?, updated_at=?, "
        "wake_at=NULL, waiting_for=NULL, pause_requested=0, claim_owner=NULL, lease_until=NULL WHERE pk=?",
        (status, output, error[0] if error else None, error[1] if error else None, now, now, pk),
    )


def loader_failed(pk: int, generation: int, wake_at: int, message: str, now: int) -> WriteOp[None]:
    """The instance's code could not be loaded: it waits (error shown) and retries."""
    return partial(_loader_failed, pk, generation, wake_at, message, now)


def _loader_failed(pk: int, generation: int, wake_at: int, message: str, now: int, conn: sqlite3.Connection) -> None:
    _fence(conn, pk, generation)
    conn.execute(
        "UPDATE instances SET status='waiting', wake_at=?, error_name='LoaderError', error_message=?, updated_at=?, "
        "claim_owner=NULL, lease_until=NULL WHERE pk=?",
        (wake_at, message, now, pk),
    )


def requeue(pk: int, generation: int, now: int) -> WriteOp[None]:
    """Hand an instance back to the queue (e.g. its code could not be loaded yet)."""
    return partial(_requeue, pk, generation, now)


def _requeue(pk: int, generation: int, now: int, conn: sqlite3.Connection) -> None:
    _fence(conn, pk, generation)
    conn.execute("UPDATE instances SET status='queued', updated_at=?, claim_owner=NULL, lease_until=NULL WHERE pk=?", (now, pk))


def append_logs(pk: int, lines: list[tuple[int, str, str]], limit_bytes: int, limit_lines: int, dropped_before: int = 0) -> WriteOp[None]:
    """Store log lines up to the instance's budgets of bytes and lines; count the rest (and
    the `dropped_before` bytes the invocation already discarded) as dropped."""
    return partial(_append_logs, pk, lines, limit_bytes, limit_lines, dropped_before)


def _append_logs(
    pk: int, lines: list[tuple[int, str, str]], limit_bytes: int, limit_lines: int, dropped_before: int, conn: sqlite3.Connection
) -> None:
    row = conn.execute("SELECT log_bytes, (SELECT COUNT(*) FROM logs WHERE instance_pk=?) FROM instances WHERE pk=?", (pk, pk)).fetchone()
    if row is None:
        return
    used, stored = row
    kept: list[tuple[int, int, str, str]] = []
    dropped = dropped_before
    for at, stream, message in lines:
        size = len(message.encode())
        if used + size > limit_bytes or stored + len(kept) >= limit_lines:
            dropped += size
            continue
        used += size
        kept.append((pk, at, stream, message))
    conn.executemany("INSERT INTO logs (instance_pk, at, stream, message) VALUES (?, ?, ?, ?)", kept)
    conn.execute("UPDATE instances SET log_bytes=?, log_dropped=log_dropped+? WHERE pk=?", (used, dropped, pk))


# ---- control operations (the API) -------------------------------------------------

@dataclass
class ControlResult:
    pk: int
    tenant: str
    status: str  # status after the operation
    previous: str


def _require(conn: sqlite3.Connection, tenant: str, instance_id: str) -> tuple[int, str, int, Optional[int]]:
    from .errors import InstanceNotFound

    row = conn.execute("SELECT pk, status, generation, wake_at FROM instances WHERE tenant=? AND id=?", (tenant, instance_id)).fetchone()
    if row is None:
        raise InstanceNotFound(instance_id)
    return row[0], row[1], row[2], row[3]


def _invalid(instance_id: str, status: str, action: str) -> Exception:
    from .errors import InvalidState

    return InvalidState(f"cannot {action} instance {instance_id!r}: it is {status}")


def _set_pause(tenant: str, instance_id: str, now: int, action: str, moves: dict[str, str], default: Optional[str], requested: int) -> Callable[[sqlite3.Connection], ControlResult]:
    def op(conn: sqlite3.Connection) -> ControlResult:
        pk, status, _, _ = _require(conn, tenant, instance_id)
        if status in FINISHED:
            raise _invalid(instance_id, status, action)
        new = moves.get(status, default or status)
        conn.execute("UPDATE instances SET status=?, pause_requested=?, updated_at=? WHERE pk=?", (new, requested, now, pk))
        return ControlResult(pk, tenant, new, status)

    return op


def pause(tenant: str, instance_id: str, now: int) -> Callable[[sqlite3.Connection], ControlResult]:
    """Queued or waiting instances pause at once; a running one at its next durable call."""
    moves = {"running": "waitingForPause", "waitingForPause": "waitingForPause"}
    return _set_pause(tenant, instance_id, now, "pause", moves, "paused", 1)


def resume(tenant: str, instance_id: str, now: int) -> Callable[[sqlite3.Connection], ControlResult]:
    """A paused instance is queued again (its replay re-suspends if it still has to wait)."""
    return _set_pause(tenant, instance_id, now, "resume", {"paused": "queued", "waitingForPause": "running"}, None, 0)


def terminate(tenant: str, instance_id: str, now: int) -> Callable[[sqlite3.Connection], ControlResult]:
    def op(conn: sqlite3.Connection) -> ControlResult:
        pk, status, _, _ = _require(conn, tenant, instance_id)
        if status in FINISHED:
            raise _invalid(instance_id, status, "terminate")
        conn.execute(
            "UPDATE instances SET status='terminated', generation=generation+1, ended_at=?, updated_at=?, wake_at=NULL, "
            "waiting_for=NULL, pause_requested=0, claim_owner=NULL, lease_until=NULL WHERE pk=?",
            (now, now, pk),
        )
        return ControlResult(pk, tenant, "terminated", status)

    return op


def restart(tenant: str, instance_id: str, now: int, quota: Optional[int] = None) -> Callable[[sqlite3.Connection], ControlResult]:
    """Clear the journal and run again from the top with the same params (a finished
    instance only if the tenant's quota has room for it again)."""

    def op(conn: sqlite3.Connection) -> ControlResult:
        pk, status, _, _ = _require(conn, tenant, instance_id)
        if status in FINISHED:
            _check_room(conn, tenant, 1, quota)
        conn.execute("DELETE FROM journal WHERE instance_pk=?", (pk,))
        conn.execute("DELETE FROM events WHERE instance_pk=? AND consumed_seq IS NOT NULL", (pk,))
        conn.execute(
            "UPDATE instances SET status='queued', generation=generation+1, output=NULL, error_name=NULL, error_message=NULL, "
            "started_at=NULL, ended_at=NULL, wake_at=NULL, waiting_for=NULL, pause_requested=0, claim_owner=NULL, "
            "lease_until=NULL, updated_at=? WHERE pk=?",
            (now, pk),
        )
        return ControlResult(pk, tenant, "queued", status)

    return op


def delete(tenant: str, instance_id: str) -> Callable[[sqlite3.Connection], ControlResult]:
    def op(conn: sqlite3.Connection) -> ControlResult:
        pk, status, _, _ = _require(conn, tenant, instance_id)
        delete_rows(conn, [pk])
        return ControlResult(pk, tenant, "deleted", status)

    return op


def delete_rows(conn: sqlite3.Connection, pks: list[int]) -> None:
    """Instances with their journal, events and logs."""
    marks = ",".join("?" * len(pks))
    for table, column in (("journal", "instance_pk"), ("events", "instance_pk"), ("logs", "instance_pk"), ("instances", "pk")):
        conn.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", pks)


def delete_finished_before(
    cutoff_ms: int, limit: int, *, tenant: Optional[str] = None, except_tenants: Sequence[str] = ()
) -> WriteOp[int]:
    """Delete up to `limit` instances that finished (complete, errored, terminated) before
    `cutoff_ms`, oldest first, with everything they recorded: only `tenant`'s if given, and
    none of `except_tenants` (which have periods of their own); how many went."""
    where = "status IN ('complete','errored','terminated') AND ended_at < ?"
    params: list[object] = [cutoff_ms]
    if tenant is not None:
        where += " AND tenant = ?"
        params.append(tenant)
    if except_tenants:
        where += " AND tenant NOT IN (SELECT value FROM json_each(?))"
        params.append(json.dumps(list(except_tenants)))

    def op(conn: sqlite3.Connection) -> int:
        pks = [int(r[0]) for r in conn.execute(f"SELECT pk FROM instances WHERE {where} ORDER BY ended_at LIMIT ?", (*params, limit))]
        if pks:
            delete_rows(conn, pks)
        return len(pks)

    return op


@dataclass
class EventSent:
    pk: int
    tenant: str
    status: str
    waiting_for: Optional[str]


def send_event(tenant: str, instance_id: str, event_type: str, payload: str, now: int, max_pending: Optional[int] = None) -> WriteOp[EventSent]:
    """Store the event durably; it is delivered to the first wait for its type (FIFO). An
    instance holding `max_pending` events it has not taken refuses more (QuotaExceeded)."""
    return partial(_send_event, tenant, instance_id, event_type, payload, now, max_pending)


def _send_event(
    tenant: str, instance_id: str, event_type: str, payload: str, now: int, max_pending: Optional[int], conn: sqlite3.Connection
) -> EventSent:
    pk, status, _, _ = _require(conn, tenant, instance_id)
    if status in FINISHED:
        raise _invalid(instance_id, status, "send an event to")
    if max_pending is not None:
        pending = conn.execute("SELECT COUNT(*) FROM events WHERE instance_pk=? AND consumed_seq IS NULL", (pk,)).fetchone()[0]
        if pending >= max_pending:
            raise QuotaExceeded(f"instance {instance_id!r} holds {pending:,} events it has not taken yet, its limit; send more once it takes some")
    conn.execute("INSERT INTO events (instance_pk, event_type, payload, created_at) VALUES (?, ?, ?, ?)", (pk, event_type, payload, now))
    waiting_for = conn.execute("SELECT waiting_for FROM instances WHERE pk=?", (pk,)).fetchone()[0]
    return EventSent(pk, tenant, status, waiting_for)


def record_component(digest: str, size: int, workflows: list[str], now: int) -> Callable[[sqlite3.Connection], None]:
    def op(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO components (digest, size, workflows, created_at) VALUES (?, ?, ?, ?)",
            (digest, size, json.dumps(workflows), now),
        )

    return op


def record_deployment(tenant: str, digest: str, workflows: list[str], now: int) -> Callable[[sqlite3.Connection], None]:
    def op(conn: sqlite3.Connection) -> None:
        _grant_component(conn, tenant, digest, now)
        conn.executemany(
            "INSERT INTO deployments (tenant, workflow, digest, deployed_at) VALUES (?, ?, ?, ?)",
            [(tenant, w, digest, now) for w in workflows],
        )

    return op


def grant_component(tenant: str, digest: str, now: int) -> WriteOp[None]:
    """Let `tenant` pin and upgrade to a registered component without deploying it."""
    return partial(_grant_component, tenant=tenant, digest=digest, now=now)


def _grant_component(conn: sqlite3.Connection, tenant: str, digest: str, now: int) -> None:
    conn.execute("INSERT OR IGNORE INTO tenant_components (tenant, digest, registered_at) VALUES (?, ?, ?)", (tenant, digest, now))



def parent_of(conn: sqlite3.Connection, pk: int) -> Optional[tuple[int, str]]:
    """(pk, tenant) of the instance that started `pk` as a child, if any."""
    row = conn.execute("SELECT p.pk, p.tenant FROM instances c JOIN instances p ON p.pk = c.parent_pk WHERE c.pk=?", (pk,)).fetchone()
    return (row[0], row[1]) if row else None


def parent_query(pk: int) -> Query[Optional[tuple[int, str]]]:
    return Query(
        "SELECT p.pk, p.tenant FROM instances c JOIN instances p ON p.pk = c.parent_pk WHERE c.pk=?",
        (pk,),
        lambda rows: (rows[0][0], rows[0][1]) if rows else None,
    )


# ---- reads for the HTTP API (deployments, metrics) -----------------------------------

@dataclass
class Deployment:
    workflow: str
    digest: str
    deployed_at: int
    size: int


def deployments_query(tenant: str) -> Query[list[Deployment]]:
    """Every deployment of `tenant`, oldest first (the last one per workflow is current)."""
    return Query(
        "SELECT d.workflow, d.digest, d.deployed_at, COALESCE(c.size, 0) FROM deployments d "
        "LEFT JOIN components c ON c.digest = d.digest WHERE d.tenant=? ORDER BY d.pk",
        (tenant,),
        lambda rows: [Deployment(*r) for r in rows],
    )


def status_counts_query() -> Query[dict[str, int]]:
    return Query("SELECT status, COUNT(*) FROM instances GROUP BY status", (), lambda rows: {str(r[0]): int(r[1]) for r in rows})


def step_timings_query(pks: list[int], ended_after: int) -> Query[list[tuple[int, int, int]]]:
    """(instance pk, started_at, ended_at) of finished steps of `pks` that ended after `ended_after`."""
    marks = ",".join("?" * len(pks))
    return Query(
        f"SELECT instance_pk, started_at, ended_at FROM journal WHERE instance_pk IN ({marks}) AND kind='step' "
        "AND ended_at > ? AND started_at IS NOT NULL",
        (*pks, ended_after),
        lambda rows: [(int(r[0]), int(r[1]), int(r[2])) for r in rows],
    )


def upgradable_query(
    tenant: str, workflow: str, exclude_digest: str, after_pk: int = 0, limit: int = -1, ids: Optional[Sequence[str]] = None
) -> Query[list[InstanceRow]]:
    """In-flight instances of a workflow pinned to another digest, in pk order after
    `after_pk` (a page's cursor); with `ids`, only those."""
    only = " AND id IN (SELECT value FROM json_each(?))" if ids is not None else ""
    return Query(
        f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE tenant=? AND workflow=? AND digest<>? "
        f"AND status IN ('queued','running','waiting','waitingForPause','paused') AND pk>?{only} ORDER BY pk LIMIT ?",
        (tenant, workflow, exclude_digest, after_pk, *([json.dumps(list(ids))] if ids is not None else []), limit),
        lambda rows: [_instance(r) for r in rows],
    )


def child_count_query(parent_pk: int) -> Query[int]:
    return Query("SELECT COUNT(*) FROM instances WHERE parent_pk=?", (parent_pk,), lambda rows: int(rows[0][0]))


def journal_length_query(pk: int) -> Query[int]:
    return Query("SELECT COUNT(*) FROM journal WHERE instance_pk=?", (pk,), lambda rows: int(rows[0][0]))


def repin(pk: int, generation: int, journal_length: int, old_digest: str, new_digest: str, now: int) -> Callable[[sqlite3.Connection], bool]:
    """Move an instance to new code, only if nothing changed since it was verified (same
    generation, same journal length, not running)."""

    def op(conn: sqlite3.Connection) -> bool:
        if journal_length_query(pk).run(conn) != journal_length:
            return False
        cur = conn.execute(
            "UPDATE instances SET digest=?, updated_at=? WHERE pk=? AND generation=? AND digest=? "
            "AND status NOT IN ('running','waitingForPause')",
            (new_digest, now, pk, generation, old_digest),
        )
        return cur.rowcount == 1

    return op


def store_manifest(tenant: str, manifest_json: str, folder: str, now: int) -> Callable[[sqlite3.Connection], None]:
    def op(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO tenant_manifests (tenant, manifest, folder, updated_at) VALUES (?, ?, ?, ?)",
            (tenant, manifest_json, folder, now),
        )

    return op


def manifests_query() -> Query[list[tuple[str, str, str]]]:
    return Query("SELECT tenant, manifest, folder FROM tenant_manifests ORDER BY tenant", (), lambda rows: [(r[0], r[1], r[2]) for r in rows])
