"""Compiled components, cached per code digest in memory and on disk.

Compiling an ~18 MB componentize-py component takes seconds; loading its precompiled
artifact takes milliseconds (mmap). So: a bounded in-memory LRU of `Component`s, backed by
artifacts on disk keyed by digest, wasmtime version and engine configuration. The loader is
consulted only on a miss, and concurrent misses for one digest compile once.

Bounds. An entry counts against `max_bytes` with the bytes it keeps resident: its
artifact's pages mapped in this process (`/proc/self/smaps`), which is about half the
artifact file for a componentize-py guest. They are measured off the request path, on the
cache's reaper thread, shortly after each load; until then (and where /proc is missing, or
a component was compiled without an artifact directory) an entry counts an estimate (the
file size times the resident share measured so far). Not counted: wasmtime's heap
metadata per component (~2 MB for a componentize-py guest, bounded by `max_count`) and
the memory its instances leave in the pooling allocator's slots (bounded by the pool,
see sandbox.py); both are released when the component is evicted and no live instance
still holds it.

Idle components are evicted after `idle_seconds`: on the next lookup, and by the reaper
thread when no lookup comes (a host whose instances all wait makes none). A waiting
instance needs no component; its wake-up reloads the artifact (a few ms). After the reaper
evicts, it collects reference cycles and returns the freed heap to the OS (glibc
`malloc_trim`; when the cache empties, else at most every `RELEASE_INTERVAL_SECONDS`), so
an idle host shrinks back instead of keeping the high-water mark of its last burst. The
engine also asks for a trim alone when its scheduler runs out of work (`trim_soon`).
`on_evict` listeners hear every evicted digest (to drop anything else that pins the
component, e.g. warm instances). `clock` is injectable for tests; `close()` stops the
reaper.

Loaded artifacts are memory-mapped: they are only ever replaced (write, then rename) or
unlinked, never rewritten in place; anything else writing into the artifact directory
must do the same, since truncating a mapped artifact crashes the process (SIGBUS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import re
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import wasmtime
from wasmtime import component as wc

from .errors import ComponentError
from .sandbox import SandboxConfig

log = logging.getLogger("tenantflow.isolates")
MiB = 1024 * 1024
# Defaults for a small host (the engine's constructor uses them): a componentize-py
# component keeps ~19 MiB of its 35 MiB artifact resident, so 128 MiB holds about six of
# them; tenants idle for 30 s give their memory back (reloading costs them a few ms).
DEFAULT_MAX_COUNT = 32
DEFAULT_MAX_BYTES = 128 * MiB
DEFAULT_IDLE_SECONDS = 30.0
# Resident pages are counted this long after a load (its first instantiation touches
# most of what it will), batching the loads of a burst into one read of smaps.
MEASURE_DELAY_SECONDS = 1.0
# After idle evictions the reaper collects reference cycles (a finished invocation's
# traceback can still reach its store, and so the component) and trims the heap: at once
# when the cache has emptied, else at most this often (a full collection pauses every
# Python thread for a few milliseconds).
RELEASE_INTERVAL_SECONDS = 10.0
# When the host runs out of work (`trim_soon`), the heap is trimmed this much later if no
# new work came meanwhile: a burst's freed memory (~100 MiB after parking 10,000 instances
# across 100 versions) goes back to the OS in a second, not when the cache next empties.
IDLE_TRIM_DELAY_SECONDS = 1.0
# ... but after this many invocations since the last trim, at once: a burst (10,000
# instances parked) leaves ~100 MiB of freed heap behind, and a host whose work ran out
# should not keep it for a second; trimming costs milliseconds, paid once per burst.
BURST_INVOCATIONS = 1000
_REAPER_MAX_WAIT_SECONDS = 60.0


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    disk_hits: int = 0
    compiles: int = 0
    compile_seconds: float = 0.0
    disk_load_seconds: float = 0.0
    evictions: int = 0
    corrupt_artifacts: int = 0
    instantiations: int = 0
    instantiate_seconds: float = 0.0
    live_instances: int = 0
    trims: int = 0  # heap returned to the OS after idle evictions or an idle host


@dataclass
class _Entry:
    component: wc.Component
    size: int  # counted against max_bytes: measured resident bytes, else an estimate
    last_used: float
    file_size: int  # of the artifact (or the serialized component)
    path: Optional[str] = None  # the mapped artifact, as /proc/self/smaps names it
    measured: bool = False


class IsolateCache:
    def __init__(
        self,
        engine: wasmtime.Engine,
        config: SandboxConfig,
        artifact_dir: Optional[Path],
        *,
        max_count: int = DEFAULT_MAX_COUNT,
        max_bytes: int = DEFAULT_MAX_BYTES,
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        reaper: bool = True,
    ) -> None:
        self.engine = engine
        self._clock = clock
        self.stats = CacheStats()
        self._fingerprint = config.fingerprint()
        self._dir = artifact_dir
        if artifact_dir is not None:
            artifact_dir.mkdir(parents=True, exist_ok=True)
        self.max_count, self.max_bytes, self.idle_seconds = max_count, max_bytes, idle_seconds
        self.on_evict: list[Callable[[str], None]] = []
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._digest_locks: dict[str, threading.Lock] = {}
        # Resident bytes per file byte, from the last measurement (1.0 until there is one).
        self._resident_share = 1.0
        self._use_reaper = reaper
        self._reaper: Optional[threading.Thread] = None
        self._wake = threading.Event()
        self._measure_at: Optional[float] = None  # time.monotonic() of the next measurement
        self._release_owed = False  # idle evictions since the last collect + trim
        self._release_after = 0.0  # time.monotonic() before which no collect + trim runs
        self._trim_at: Optional[float] = None  # time.monotonic() of a trim asked for by `trim_soon`
        self._busy: Callable[[], bool] = lambda: False
        self._invocations_at_trim = 0  # see `out_of_work`
        self._closed = False

    def artifact_path(self, digest: str) -> Optional[Path]:
        return None if self._dir is None else self._dir / f"{digest}-{self._fingerprint}.cwasm"

    def __contains__(self, digest: str) -> bool:
        with self._lock:
            return digest in self._entries

    @property
    def resident_bytes(self) -> int:
        with self._lock:
            return sum(e.size for e in self._entries.values())

    @property
    def resident_count(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, digest: str, load_bytes: Callable[[], bytes]) -> wc.Component:
        """The compiled component for `digest`; `load_bytes` is called only on a full miss."""
        self.evict_idle()
        entry = self._lookup(digest)
        if entry is not None:
            return entry
        with self._lock:
            digest_lock = self._digest_locks.setdefault(digest, threading.Lock())
        with digest_lock:  # concurrent misses for one digest compile once
            entry = self._lookup(digest, count_miss=False)
            if entry is not None:
                return entry
            component, size, path = self._load_artifact(digest)
            if component is None:
                component, size, path = self._compile(digest, load_bytes())
            self._insert(digest, component, size, path)
            return component

    def _lookup(self, digest: str, count_miss: bool = True) -> Optional[wc.Component]:
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                if count_miss:
                    self.stats.misses += 1
                return None
            self._entries.move_to_end(digest)
            entry.last_used = self._clock()
            if count_miss:
                self.stats.hits += 1
            return entry.component

    def _load_artifact(self, digest: str) -> tuple[Optional[wc.Component], int, Optional[Path]]:
        path = self.artifact_path(digest)
        if path is None or not path.exists():
            return None, 0, None
        started = time.perf_counter()
        try:
            component = wc.Component.deserialize_file(self.engine, str(path))
        except wasmtime.WasmtimeError:
            # A stale or corrupt artifact is recompiled, never trusted.
            self.stats.corrupt_artifacts += 1
            path.unlink(missing_ok=True)
            return None, 0, None
        self.stats.disk_hits += 1
        self.stats.disk_load_seconds += time.perf_counter() - started
        return component, path.stat().st_size, path

    def _compile(self, digest: str, wasm: bytes) -> tuple[wc.Component, int, Optional[Path]]:
        started = time.perf_counter()
        if bytes(wasm[:4]) != b"\0asm":  # wasmtime would try bytes that are not wasm as WAT text
            raise ComponentError(f"component {digest[:12]} is not WebAssembly: it does not start with the '\\0asm' magic (got {bytes(wasm[:8])!r})")
        if bytes(wasm[4:8]) == b"\x01\0\0\0":
            raise ComponentError(f"component {digest[:12]} is a core WebAssembly module, not a component; build workflows with `tenantflow compile`")
        try:
            component = wc.Component(self.engine, wasm)
        except wasmtime.WasmtimeError as exc:
            detail = "; ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip() and ln.strip() != "Caused by:")
            raise ComponentError(f"component {digest[:12]} is not a valid WebAssembly component: {detail}") from None
        self.stats.compiles += 1
        self.stats.compile_seconds += time.perf_counter() - started
        artifact = component.serialize()
        path = self.artifact_path(digest)
        if path is None:
            return component, len(artifact), None
        tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
        tmp.write_bytes(artifact)
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written artifact
        # Serve it from the artifact, as every later load will be: the compiled code then
        # lives in clean, shared page cache instead of ~35 MB of private memory, and its
        # resident pages are measurable like any other entry's.
        try:
            return wc.Component.deserialize_file(self.engine, str(path)), len(artifact), path
        except wasmtime.WasmtimeError:
            return component, len(artifact), None

    def _insert(self, digest: str, component: wc.Component, file_size: int, path: Optional[Path]) -> None:
        entry = _Entry(component, file_size, self._clock(), file_size)
        if path is not None and _SMAPS.exists():
            entry.path = os.path.realpath(path)
            entry.size = int(file_size * self._resident_share)
        with self._lock:
            self._entries[digest] = entry
            self._entries.move_to_end(digest)
            evicted = self._pop_over_bounds()
            if entry.path is not None and self._measure_at is None:
                self._measure_at = time.monotonic() + MEASURE_DELAY_SECONDS
            self._start_reaper()
        self._evicted(evicted)

    def _pop_over_bounds(self) -> list[tuple[str, _Entry]]:
        """Pop least recently used entries beyond the bounds (the caller holds the lock)."""
        total = sum(e.size for e in self._entries.values())
        popped = []
        while self._entries and (len(self._entries) > self.max_count or total > self.max_bytes):
            digest, entry = self._entries.popitem(last=False)
            total -= entry.size
            popped.append((digest, entry))
        return popped

    def _pop_idle(self) -> list[tuple[str, _Entry]]:
        cutoff = self._clock() - self.idle_seconds
        idle = [(d, e) for d, e in self._entries.items() if e.last_used < cutoff]
        for digest, _ in idle:
            del self._entries[digest]
        return idle

    def _evicted(self, popped: list[tuple[str, _Entry]]) -> None:
        """Count evictions and tell the listeners (outside the lock)."""
        if not popped:
            return
        with self._lock:
            self.stats.evictions += len(popped)
        for digest, _ in popped:
            for listener in list(self.on_evict):
                try:
                    listener(digest)
                except Exception:  # noqa: BLE001 - a listener must not break the cache
                    log.exception("on_evict listener failed for %s", digest[:12])

    def evict(self, digest: str) -> None:
        """Drop one component now (its code was deleted); instances using it keep it alive
        until they end."""
        with self._lock:
            entry = self._entries.pop(digest, None)
        self._evicted([] if entry is None else [(digest, entry)])

    def evict_idle(self) -> int:
        """Drop components unused for `idle_seconds`; returns how many."""
        with self._lock:
            idle = self._pop_idle()
        self._evicted(idle)
        return len(idle)

    def measure(self) -> None:
        """Count each artifact-backed entry with the bytes of it resident now (smaps), and
        evict least recently used entries beyond `max_bytes`."""
        with self._lock:
            self._measure_at = None
            paths = {e.path for e in self._entries.values() if e.path is not None}
        resident = _mapped_resident(paths) if paths else None
        with self._lock:
            if resident is not None:
                measured_file = measured_resident = 0
                for entry in self._entries.values():
                    if entry.path is not None and entry.path in resident:
                        entry.size, entry.measured = resident[entry.path], True
                        measured_file += entry.file_size
                        measured_resident += entry.size
                if measured_file:
                    self._resident_share = measured_resident / measured_file
            evicted = self._pop_over_bounds()
        self._evicted(evicted)

    def clear(self) -> None:
        with self._lock:
            popped = list(self._entries.items())
            self._entries.clear()
        self._evicted(popped)

    def out_of_work(self, busy: Callable[[], bool], invocations: int) -> None:
        """The host has run out of work, `invocations` having ended in all: trim the heap
        at once after a burst (`BURST_INVOCATIONS` since the last trim), else soon."""
        if invocations - self._invocations_at_trim >= BURST_INVOCATIONS:
            self._invocations_at_trim = invocations
            if _malloc_trim():
                self.stats.trims += 1
            return
        self.trim_soon(busy)

    def trim_soon(self, busy: Callable[[], bool], delay: float = IDLE_TRIM_DELAY_SECONDS) -> None:
        """The host has run out of work: return the free heap to the OS after `delay`
        seconds unless `busy()` says work came back by then (trimming locks the allocator's
        arenas for a moment). Thread-safe; calls made while one is pending are merged."""
        with self._lock:
            if self._closed or self._trim_at is not None:
                return
            self._busy = busy
            self._trim_at = time.monotonic() + delay
            self._start_reaper()

    def close(self) -> None:
        """Stop the reaper thread (entries stay; the cache still works without it)."""
        with self._lock:
            self._closed = True
        self._wake.set()

    # ---- the reaper: idle eviction, measurement and heap trimming off the request path ----
    def _start_reaper(self) -> None:
        """(The caller holds the lock.)"""
        if not self._use_reaper or self._closed:
            return
        if self._reaper is None:
            self._reaper = threading.Thread(target=_reap, args=(weakref.ref(self), self._wake), name="tenantflow-isolate-reaper", daemon=True)
            self._reaper.start()
        else:
            self._wake.set()  # a new measurement may be due earlier than the reaper's wake-up

    def _reap_once(self) -> Optional[float]:
        """One pass; returns how long to sleep before the next, or None when the reaper
        should exit (nothing cached, or closed)."""
        if self._measure_at is not None and time.monotonic() >= self._measure_at:
            self.measure()
        with self._lock:
            idle = [] if self._closed else self._pop_idle()
        self._evicted(idle)
        if idle:
            self._release_owed = True
        del idle  # drop the components (and their mappings) before trimming the heap
        with self._lock:
            emptied = not self._entries
        if self._release_owed and (emptied or time.monotonic() >= self._release_after):
            self._release_owed = False
            self._release_after = time.monotonic() + RELEASE_INTERVAL_SECONDS
            self._trim_at = None  # the trim an idle host asked for happens here
            gc.collect()
            if _malloc_trim():
                self.stats.trims += 1
        if self._trim_at is not None and time.monotonic() >= self._trim_at:
            self._trim_at = None
            if not self._busy() and _malloc_trim():
                self.stats.trims += 1
        with self._lock:
            if self._closed or (not self._entries and not self._release_owed and self._trim_at is None):
                self._reaper = None
                return None
            waits = [_REAPER_MAX_WAIT_SECONDS]
            if self._entries:
                waits.append(min(e.last_used for e in self._entries.values()) + self.idle_seconds - self._clock())
            if self._measure_at is not None:
                waits.append(self._measure_at - time.monotonic())
            if self._release_owed:
                waits.append(self._release_after - time.monotonic())
            if self._trim_at is not None:
                waits.append(self._trim_at - time.monotonic())
            return max(min(waits), 0.01)


def _reap(ref: "weakref.ReferenceType[IsolateCache]", wake: threading.Event) -> None:
    """The reaper thread's loop; holds its cache only weakly, so an abandoned cache is
    collected and its reaper ends at the next wake-up."""
    while True:
        wake.clear()  # a wake-up asked for during the pass below is kept for the wait
        cache = ref()
        if cache is None:
            return
        try:
            wait = cache._reap_once()
        except Exception:  # noqa: BLE001 - the reaper is housekeeping: log, retry later
            log.exception("isolate cache reaper pass failed")
            wait = 1.0
        del cache
        if wait is None:
            return
        wake.wait(wait)


_SMAPS = Path("/proc/self/smaps")
# A read-only private mapping of a file (its address range and file offset) and its Rss
# (pool slots map memory images of the same file read-write: those are the allocator's,
# not the component's).
_MAPPING = re.compile(
    rb"^([0-9a-f]+)-([0-9a-f]+) r-[-x]p ([0-9a-f]+) \S+ \d+ +(/[^\n]*?)(?: \(deleted\))?\n(?:\w+:[^\n]*\n)*?Rss: +(\d+) kB", re.M
)


def _mapped_resident(paths: set[str]) -> Optional[dict[str, int]]:
    """Resident bytes of this process's largest read-only mapping of each path that is
    mapped; None without /proc. One mapping is a run of adjacent areas at consecutive file
    offsets (a loaded artifact is three: its code is made executable in place). Not the sum
    over mappings: a file mapped more than once here (another cache on the same artifact
    directory, the hot tier's pooled engine, an engine not yet collected) has its pages in
    memory once, and this cache's mapping is one of them."""
    try:
        data = _SMAPS.read_bytes()
    except OSError:
        return None
    wanted = {os.fsencode(p): p for p in paths}
    out: dict[str, int] = {}
    runs: dict[str, tuple[int, int, int]] = {}  # path -> (end address, end offset, Rss) of its current run
    for match in _MAPPING.finditer(data):
        path = wanted.get(match.group(4))
        if path is None:
            continue
        start, end, offset = int(match.group(1), 16), int(match.group(2), 16), int(match.group(3), 16)
        rss = int(match.group(5)) * 1024
        run = runs.get(path)
        if run is not None and run[0] == start and run[1] == offset:  # the same mapping goes on
            rss += run[2]
        runs[path] = (end, offset + end - start, rss)
        out[path] = max(out.get(path, 0), rss)
    return out


_libc_trim: Optional[Callable[[int], int]] = None
_libc_checked = False


def _malloc_trim() -> bool:
    """Return free heap pages to the OS (glibc only); whether it ran."""
    global _libc_trim, _libc_checked
    if not _libc_checked:
        _libc_checked = True
        name = ctypes.util.find_library("c")
        try:
            _libc_trim = ctypes.CDLL(name).malloc_trim if name else None
        except (OSError, AttributeError):  # not glibc (musl, macOS)
            _libc_trim = None
    if _libc_trim is None:
        return False
    _libc_trim(0)
    return True
