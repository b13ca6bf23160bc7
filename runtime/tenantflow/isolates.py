"""Compiled components, cached per code digest in memory and on disk.

Compiling an ~18 MB componentize-py component takes seconds; loading its precompiled
artifact takes milliseconds (mmap). So: a bounded in-memory LRU of `Component`s (by
count and artifact bytes, idle ones evicted), backed by artifacts on disk keyed by digest,
wasmtime version and engine configuration. The loader is consulted only on a miss, and
concurrent misses for one digest compile once. Idle entries are dropped on the next
lookup after `idle_seconds` (and by `evict_idle`); `clock` is injectable for tests.

Loaded artifacts are memory-mapped: they are only ever replaced (write, then rename) or
unlinked, never rewritten in place; anything else writing into the artifact directory
must do the same, since truncating a mapped artifact crashes the process (SIGBUS).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import wasmtime
from wasmtime import component as wc

from .errors import ComponentError
from .sandbox import SandboxConfig


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


@dataclass
class _Entry:
    component: wc.Component
    size: int
    last_used: float


class IsolateCache:
    def __init__(
        self,
        engine: wasmtime.Engine,
        config: SandboxConfig,
        artifact_dir: Optional[Path],
        *,
        max_count: int = 64,
        max_bytes: int = 4 * 1024**3,
        idle_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self._clock = clock
        self.stats = CacheStats()
        self._fingerprint = config.fingerprint()
        self._dir = artifact_dir
        if artifact_dir is not None:
            artifact_dir.mkdir(parents=True, exist_ok=True)
        self.max_count, self.max_bytes, self.idle_seconds = max_count, max_bytes, idle_seconds
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._digest_locks: dict[str, threading.Lock] = {}

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
            component, size = self._load_artifact(digest)
            if component is None:
                component, size = self._compile(digest, load_bytes())
            self._insert(digest, component, size)
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

    def _load_artifact(self, digest: str) -> tuple[Optional[wc.Component], int]:
        path = self.artifact_path(digest)
        if path is None or not path.exists():
            return None, 0
        started = time.perf_counter()
        try:
            component = wc.Component.deserialize_file(self.engine, str(path))
        except wasmtime.WasmtimeError:
            # A stale or corrupt artifact is recompiled, never trusted.
            self.stats.corrupt_artifacts += 1
            path.unlink(missing_ok=True)
            return None, 0
        self.stats.disk_hits += 1
        self.stats.disk_load_seconds += time.perf_counter() - started
        return component, path.stat().st_size

    def _compile(self, digest: str, wasm: bytes) -> tuple[wc.Component, int]:
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
        if path is not None:
            tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
            tmp.write_bytes(artifact)
            os.replace(tmp, path)  # atomic: a crash never leaves a half-written artifact
        return component, len(artifact)

    def _insert(self, digest: str, component: wc.Component, size: int) -> None:
        with self._lock:
            self._entries[digest] = _Entry(component, size, self._clock())
            self._entries.move_to_end(digest)
            self._evict_over_bounds()

    def _evict_over_bounds(self) -> None:
        total = sum(e.size for e in self._entries.values())
        while self._entries and (len(self._entries) > self.max_count or total > self.max_bytes):
            _, entry = self._entries.popitem(last=False)
            total -= entry.size
            self.stats.evictions += 1

    def evict_idle(self) -> int:
        """Drop components unused for `idle_seconds`; returns how many."""
        cutoff = self._clock() - self.idle_seconds
        with self._lock:
            idle = [d for d, e in self._entries.items() if e.last_used < cutoff]
            for digest in idle:
                del self._entries[digest]
            self.stats.evictions += len(idle)
            return len(idle)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
