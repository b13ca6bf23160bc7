"""SQLite storage: schema and migrations, the group-commit writer, and read connections.

One writer thread owns the only write connection. Callers (worker threads running
guests, the asyncio API) submit write operations; the writer runs every operation that
is queued in one transaction and one durable commit (WAL, synchronous=FULL), so the
throughput of many concurrent instances is not one fsync per step. Each operation runs
inside its own savepoint, so one failing operation does not undo the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import sqlite3
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol, TypeVar

import aiosqlite

T = TypeVar("T")
log = logging.getLogger("tenantflow.database")
WriteOp = Callable[[sqlite3.Connection], T]

DEFER_MS = 50  # how long a deferred write may wait for a commit to ride along with
# The write-ahead log is grown to this many pages before the first commit (see `prefill_wal`).
WAL_PREFILL_PAGES = 1100  # SQLite checkpoints (and restarts the log) at 1000 pages
SCHEMA_VERSION = 6

# Each entry migrates from version i to i+1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE components (
        digest TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        workflows TEXT NOT NULL,           -- JSON list of workflow names
        created_at INTEGER NOT NULL
    );
    CREATE TABLE deployments (
        pk INTEGER PRIMARY KEY,
        tenant TEXT NOT NULL,
        workflow TEXT NOT NULL,
        digest TEXT NOT NULL,
        deployed_at INTEGER NOT NULL
    );
    CREATE INDEX deployments_current ON deployments(tenant, workflow, pk);
    CREATE TABLE instances (
        pk INTEGER PRIMARY KEY,
        tenant TEXT NOT NULL,
        id TEXT NOT NULL,
        workflow TEXT NOT NULL,
        digest TEXT NOT NULL,
        params TEXT NOT NULL,              -- JSON
        metadata TEXT,                     -- JSON, platform-owned, never used to authorize
        status TEXT NOT NULL,
        output TEXT,                       -- JSON
        error_name TEXT,
        error_message TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        started_at INTEGER,
        ended_at INTEGER,
        wake_at INTEGER,                   -- next timer (sleep, retry, wait timeout)
        waiting_for TEXT,                  -- event type of a pending wait
        pause_requested INTEGER NOT NULL DEFAULT 0,
        generation INTEGER NOT NULL DEFAULT 0,   -- fencing token: bumped by terminate/restart
        claim_owner TEXT,                  -- host running it now, with its lease
        lease_until INTEGER,
        log_bytes INTEGER NOT NULL DEFAULT 0,
        log_dropped INTEGER NOT NULL DEFAULT 0,
        parent_pk INTEGER,                 -- the instance that started this one as a child
        UNIQUE (tenant, id)
    );
    CREATE INDEX instances_by_parent ON instances(parent_pk) WHERE parent_pk IS NOT NULL;
    CREATE INDEX instances_active ON instances(status) WHERE status IN ('queued','running','waiting','waitingForPause');
    CREATE INDEX instances_by_tenant ON instances(tenant, pk);
    CREATE TABLE journal (
        instance_pk INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,                -- step | sleep | event
        name TEXT NOT NULL,
        status TEXT NOT NULL,              -- done | failed | retrying | waiting | timed_out
        attempts INTEGER NOT NULL DEFAULT 0,
        result TEXT,                       -- JSON: step result, or the received event
        error_name TEXT,
        error_message TEXT,
        wake_at INTEGER,                   -- sleep end, wait timeout, next retry
        event_type TEXT,
        started_at INTEGER,
        ended_at INTEGER,
        history TEXT,                      -- JSON list of failed attempts
        PRIMARY KEY (instance_pk, seq)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        pk INTEGER PRIMARY KEY,
        instance_pk INTEGER NOT NULL,
        event_type TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        consumed_seq INTEGER               -- journal seq of the wait that took it
    );
    CREATE INDEX events_pending ON events(instance_pk, event_type, pk) WHERE consumed_seq IS NULL;
    CREATE TABLE logs (
        pk INTEGER PRIMARY KEY,
        instance_pk INTEGER NOT NULL,
        at INTEGER NOT NULL,
        stream TEXT NOT NULL,              -- stdout | stderr | debug | info | warning | error
        message TEXT NOT NULL
    );
    CREATE INDEX logs_by_instance ON logs(instance_pk, pk);
    """,
    # 2: tenants and API keys (tenantflow.auth). Only the sha256 of a key is stored.
    """
    CREATE TABLE tenants (
        name TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,               -- public key id, part of the token
        tenant TEXT,                       -- NULL for platform-admin keys
        role TEXT NOT NULL,                -- tenant-developer | tenant-readonly | platform-admin
        token_sha256 TEXT NOT NULL,        -- hex sha256 of the whole token
        description TEXT NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE INDEX api_keys_by_tenant ON api_keys(tenant);
    """,
    """
    CREATE TABLE tenant_manifests (
        tenant TEXT PRIMARY KEY,
        manifest TEXT NOT NULL,            -- JSON of the validated manifest (secrets as references, never values)
        folder TEXT NOT NULL,              -- where relative file: secrets are read from
        updated_at INTEGER NOT NULL
    );
    """,
    # 4: each tenant's unfinished instances, counted by triggers in the transaction that
    # changes them (any process, any code path), so a quota check is one row read.
    """
    CREATE TABLE tenant_usage (
        tenant TEXT PRIMARY KEY,
        unfinished INTEGER NOT NULL DEFAULT 0  -- instances not complete, errored or terminated
    );
    INSERT INTO tenant_usage (tenant, unfinished)
        SELECT tenant, COUNT(*) FROM instances WHERE status NOT IN ('complete','errored','terminated') GROUP BY tenant;
    CREATE TRIGGER usage_created AFTER INSERT ON instances WHEN NEW.status NOT IN ('complete','errored','terminated')
    BEGIN
        INSERT INTO tenant_usage (tenant, unfinished) VALUES (NEW.tenant, 1)
            ON CONFLICT(tenant) DO UPDATE SET unfinished = unfinished + 1;
    END;
    CREATE TRIGGER usage_finished AFTER UPDATE OF status ON instances
        WHEN OLD.status NOT IN ('complete','errored','terminated') AND NEW.status IN ('complete','errored','terminated')
    BEGIN
        UPDATE tenant_usage SET unfinished = unfinished - 1 WHERE tenant = NEW.tenant;
    END;
    CREATE TRIGGER usage_revived AFTER UPDATE OF status ON instances
        WHEN OLD.status IN ('complete','errored','terminated') AND NEW.status NOT IN ('complete','errored','terminated')
    BEGIN
        INSERT INTO tenant_usage (tenant, unfinished) VALUES (NEW.tenant, 1)
            ON CONFLICT(tenant) DO UPDATE SET unfinished = unfinished + 1;
    END;
    CREATE TRIGGER usage_deleted AFTER DELETE ON instances WHEN OLD.status NOT IN ('complete','errored','terminated')
    BEGIN
        UPDATE tenant_usage SET unfinished = unfinished - 1 WHERE tenant = OLD.tenant;
    END;
    """,
    # 5: finished instances by when they ended, for the retention sweep (retention.py).
    """
    CREATE INDEX instances_finished ON instances(ended_at) WHERE status IN ('complete','errored','terminated');
    """,
    # 6: the component versions each tenant may run. Components are stored once by digest
    # (tenants deploying the same bytes share them); a tenant pins or upgrades to a digest
    # only if it deployed or registered it itself, and a version no tenant holds is garbage
    # (offboarding.py). An existing database grants what its tenants deployed or ran.
    """
    CREATE TABLE tenant_components (
        tenant TEXT NOT NULL,
        digest TEXT NOT NULL,
        registered_at INTEGER NOT NULL,
        PRIMARY KEY (tenant, digest)
    ) WITHOUT ROWID;
    CREATE INDEX tenant_components_by_digest ON tenant_components(digest);
    INSERT OR IGNORE INTO tenant_components (tenant, digest, registered_at)
        SELECT tenant, digest, MIN(deployed_at) FROM deployments GROUP BY tenant, digest;
    INSERT OR IGNORE INTO tenant_components (tenant, digest, registered_at)
        SELECT tenant, digest, MIN(created_at) FROM instances GROUP BY tenant, digest;
    """,
]


def _statements(script: str) -> Iterator[str]:
    """The statements of a migration, whole (a trigger's body has semicolons of its own)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending
            pending = ""


def connect(path: Path | str) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA foreign_keys=OFF")
    return conn


def prefill_wal(conn: sqlite3.Connection, path: Path | str) -> None:
    """Grow a young write-ahead log to its working size with zeros, once, before traffic.

    A commit that extends the log costs an fsync of the file's size as well: on a fresh
    database the first ~4 MB of commits ran at ~4,300 commits/s here, later ones (which
    overwrite a log already that long) at ~7,100. Postgres preallocates its WAL segments
    for the same reason. Safe: SQLite reads the log only up to the last frame whose salt
    and checksum chain hold, so zeros past it are never taken for data (as with a log
    left long by earlier traffic); the zeros go in while this connection holds the log's
    write lock, so no other writer appends meanwhile."""
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        return
    conn.execute("BEGIN IMMEDIATE")  # a write, so that the log exists with its header
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('writer_opened_at', strftime('%s','now'))")
    conn.execute("COMMIT")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    target = 32 + WAL_PREFILL_PAGES * (page_size + 24)  # log header + frames (header + page)
    conn.execute("BEGIN IMMEDIATE")  # holds the log's write lock while it grows
    try:
        fd = os.open(f"{path}-wal", os.O_WRONLY)
        try:
            size = os.fstat(fd).st_size
            if size >= 32 and size < target:
                zeros = bytes(1 << 20)
                while size < target:
                    size += os.pwrite(fd, zeros[: target - size], size)
                os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        conn.execute("ROLLBACK")


def migrate(path: Path | str) -> None:
    """Create or upgrade the schema; refuse a database from a newer tenantflow."""
    conn = connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            conn.execute("ROLLBACK")
            raise RuntimeError(f"database {path} has schema version {version}; this tenantflow supports up to {SCHEMA_VERSION}")
        for script in MIGRATIONS[version:]:
            for statement in _statements(script):
                conn.execute(statement)
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    finally:
        conn.close()


@contextlib.contextmanager
def _flocked(fd: int) -> Iterator[None]:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


class Writer(Protocol):
    """What an invocation writes through: `GroupCommitWriter` in the engine's process,
    `runner.RemoteWriter` (the same calls, over a socket to it) in a runner process."""

    def run(self, op: WriteOp[T], after: Optional[Future[Any]] = None) -> T: ...

    def submit(self, op: WriteOp[T], after: Optional[Future[Any]] = None) -> Future[T]: ...

    def defer(self, op: WriteOp[T], after: Optional[Future[Any]] = None) -> Future[T]: ...

    def wait(self, future: Future[T]) -> T: ...


class GroupCommitWriter:
    """Runs queued write operations in shared transactions, one durable commit each.

    Leader/follower group commit: a thread that needs its write durable (`run`) becomes
    the leader if no commit is in progress and commits everything queued, its own op
    included, on its own thread (no handoff: a sequential workflow pays one fsync per step
    and nothing more). Otherwise it waits while the current leader commits, and the leader
    picks up what queued meanwhile. Fire-and-forget ops (`submit`) and asyncio callers are
    led by a background thread.

    Runner processes (`runners.py`) send their writes to the engine's writer rather than
    commit themselves. Another process may still write (a CLI command beside a running
    server): each commit holds an exclusive `flock` on `<db>.write-lock` from BEGIN to
    COMMIT, so a writer that has to wait sleeps in the kernel and wakes the moment it may
    go on (SQLite's own busy handler would poll with sleeps of 1 ms and more).

    `after`: an op may name the future of an earlier op whose failure must keep it from
    applying (a durable call queued behind a step result that failed, see
    `Invocation.commit`): it then fails with that op's exception instead, also when both
    ran in the same batch.
    """

    max_batch = 512

    def __init__(self, path: Path | str) -> None:
        self._path = path
        self._conn = connect(path)
        self._write_lock = os.open(f"{path}.write-lock", os.O_RDWR | os.O_CREAT, 0o644)
        with _flocked(self._write_lock):
            try:
                prefill_wal(self._conn, path)
            except (OSError, sqlite3.Error) as exc:  # an optimisation: the log grows as it goes instead
                log.warning("could not prefill the write-ahead log of %s: %s", path, exc)
        self._queue: queue.SimpleQueue[tuple[WriteOp[Any], Future[Any]]] = queue.SimpleQueue()
        self._leader = threading.Lock()
        self._pending = threading.Event()
        self._closing = False
        # Ops of the running batch that failed, until their futures are set (see `after`).
        self._failed_in_batch: dict[Future[Any], BaseException] = {}
        self.commits = 0
        self.operations = 0
        self._thread = threading.Thread(target=self._background, name="tenantflow-writer", daemon=True)
        self._thread.start()

    def submit(self, op: WriteOp[T], after: Optional[Future[Any]] = None) -> Future[T]:
        """Queue `op`; the background leader commits it soon. Does not wait."""
        future = self.defer(op, after)
        self._pending.set()
        return future

    def defer(self, op: WriteOp[T], after: Optional[Future[Any]] = None) -> Future[T]:
        """Queue `op` to ride along with the next commit (or the background one within
        DEFER_MS): for bookkeeping that need not cost an fsync of its own."""
        future: Future[T] = Future()
        self._queue.put((self._guarded(op, after), future))
        return future

    def run(self, op: WriteOp[T], after: Optional[Future[Any]] = None) -> T:
        """Run `op` and wait until it is durably committed (leading the commit if free)."""
        future = self.defer(op, after)
        self.lead()
        return future.result()

    def wait(self, future: Future[T]) -> T:
        """Wait for a `defer`red op, leading the commit if no one is committing."""
        if not future.done():
            self.lead()
        return future.result()

    async def arun(self, op: WriteOp[T]) -> T:
        return await asyncio.wrap_future(self.submit(op))

    def close(self) -> None:
        if self._thread.is_alive():
            self._closing = True
            self._pending.set()
            self._thread.join()
        self.lead()  # anything queued at the last moment
        self._conn.close()
        os.close(self._write_lock)

    def _guarded(self, op: WriteOp[T], after: Optional[Future[Any]]) -> WriteOp[T]:
        if after is None:
            return op

        def guarded(conn: sqlite3.Connection) -> T:
            failure = self._failed_in_batch.get(after)
            if failure is None and after.done():
                failure = after.exception()
            if failure is not None:
                raise failure
            return op(conn)

        return guarded

    def _background(self) -> None:
        while True:
            self._pending.wait(DEFER_MS / 1000)
            self._pending.clear()
            self.lead()
            if self._closing:
                return

    def lead(self) -> None:
        """Commit queued work until the queue is empty or another thread leads. A leader
        re-checks the queue after releasing, so no queued op is left without a leader."""
        while not self._queue.empty():
            if not self._leader.acquire(blocking=False):
                return  # the current leader will see our op
            try:
                # The batch is taken once the file lock is held: what queued while another
                # process committed rides along.
                with _flocked(self._write_lock):
                    batch: list[tuple[WriteOp[Any], Future[Any]]] = []
                    while len(batch) < self.max_batch:
                        try:
                            batch.append(self._queue.get_nowait())
                        except queue.Empty:
                            break
                    if batch:
                        self._commit(self._conn, batch)
            finally:
                self._leader.release()

    def _commit(self, conn: sqlite3.Connection, batch: list[tuple[WriteOp[Any], Future[Any]]]) -> None:
        outcomes: list[tuple[Future[Any], Any, BaseException | None]] = []
        # A savepoint lets one op fail without taking the others down; alone, an op that
        # fails rolls back the whole transaction instead (two statements fewer per step).
        if len(batch) == 1:
            self._commit_one(conn, *batch[0])
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, future in batch:
                conn.execute("SAVEPOINT op")
                try:
                    result = op(conn)
                except BaseException as exc:  # noqa: BLE001 - handed to the submitter
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((future, None, exc))
                    self._failed_in_batch[future] = exc
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((future, result, None))
            conn.execute("COMMIT")
        except BaseException as exc:  # noqa: BLE001 - e.g. disk full: nothing in the batch committed
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._failed_in_batch.clear()
            for _, future in batch:
                future.set_exception(exc)
            return
        self._failed_in_batch.clear()
        self.commits += 1
        self.operations += len(batch)
        for future, result, error in outcomes:
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    def _commit_one(self, conn: sqlite3.Connection, op: WriteOp[Any], future: Future[Any]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            result = op(conn)
            conn.execute("COMMIT")
        except BaseException as exc:  # noqa: BLE001 - handed to the submitter
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            future.set_exception(exc)
            return
        self.commits += 1
        self.operations += 1
        future.set_result(result)


class Readers:
    """Read connections: one per worker thread (guests' replays) plus one async one."""

    def __init__(self, path: Path | str) -> None:
        self._path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._async: aiosqlite.Connection | None = None

    def sync(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(str(self._path), isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    async def aconn(self) -> aiosqlite.Connection:
        if self._async is None:
            self._async = await aiosqlite.connect(str(self._path), isolation_level=None)
            await self._async.execute("PRAGMA query_only=ON")
        return self._async

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.close()
            self._async = None
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
