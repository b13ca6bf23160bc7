"""Warm isolates: instances created and initialised ahead of the invocation that uses them.

A fresh instance per invocation is the isolation and determinism contract, and it is
kept: a warm instance has only been instantiated and had its language runtime started
(by calling the pure `workflows` export), off the latency path, on a warmer thread. It
never ran a workflow, saw params or belonged to an invocation; each is used at most once.
Keyed by (digest, memory limit) and bounded in number (each costs a few MB). The executor
asks for a refill when an invocation's instance has been closed, not while it runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Optional

import wasmtime
from wasmtime import component as wc

from .sandbox import new_store

if TYPE_CHECKING:
    from .executor import Invocation

log = logging.getLogger("tenantflow.warm")
Key = tuple[str, int]  # (digest, memory bytes)
WARMUP_BUDGET_S = 10.0


class Binding:
    """Where a pooled store's output and deadline checks go: nowhere while it waits in the
    pool, to its invocation once taken."""

    def __init__(self) -> None:
        self.inv: Optional[Invocation] = None
        self.warming_until = time.monotonic() + WARMUP_BUDGET_S

    def check(self) -> Optional[str]:
        if self.inv is not None:
            return self.inv.check_deadlines()
        return "warmup-timeout" if time.monotonic() > self.warming_until else None

    def write_output(self, stream: str, data: bytes) -> None:
        inv = self.inv
        if inv is not None:
            inv.write_output(stream, data)


Warm = tuple[wasmtime.Store, wc.Instance, Binding, wc.Component]  # ..., the component it is of


class WarmPool:
    """Ready instances per (digest, memory limit), up to `per_key` each and `max_total` in
    all (least recently refilled keys lose theirs first). Two per key let back-to-back
    invocations of one hot component always find one ready while the next is prepared."""

    def __init__(
        self,
        engine: wasmtime.Engine,
        linker: wc.Linker,
        *,
        max_total: int = 8,
        per_key: int = 2,
        on_instantiate: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self._engine = engine
        self._linker = linker
        self._on_instantiate = on_instantiate
        self.max_total = max_total
        self.per_key = max(1, per_key)
        self._ready: OrderedDict[Key, list[Warm]] = OrderedDict()
        self._warming: set[Key] = set()  # at most one instance in preparation per key
        self._lock = threading.Lock()
        self._warmer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tenantflow-warmer")
        self._closed = False
        self.hits = 0
        self.misses = 0

    def ready_count(self, key: Key) -> int:
        with self._lock:
            return len(self._ready.get(key, ()))

    def take(self, key: Key) -> Optional[Warm]:
        with self._lock:
            ready = self._ready.get(key)
            if not ready:
                self.misses += 1
                return None
            self.hits += 1
            warm = ready.pop(0)
            if not ready:
                del self._ready[key]
            return warm

    def refill(self, key: Key, component: wc.Component) -> None:
        """Prepare instances for `key` in the background, up to `per_key` ready."""
        if self.max_total <= 0:
            return
        with self._lock:
            if self._closed or key in self._warming or len(self._ready.get(key, ())) >= self._target():
                return
            self._warming.add(key)
        try:
            self._warmer.submit(self._warm, key, component)
        except RuntimeError:  # closed meanwhile
            with self._lock:
                self._warming.discard(key)

    def _target(self) -> int:
        return min(self.per_key, self.max_total)

    def _warm(self, key: Key, component: wc.Component) -> None:
        made = self._make(key, component)
        dropped: list[Warm] = []
        again = False
        with self._lock:
            self._warming.discard(key)
            if made is not None and self._closed:
                dropped.append(made)
            elif made is not None:
                self._ready.setdefault(key, []).append(made)
                self._ready.move_to_end(key)
                while sum(len(r) for r in self._ready.values()) > self.max_total:
                    oldest = next(iter(self._ready))
                    dropped.append(self._ready[oldest].pop(0))
                    if not self._ready[oldest]:
                        del self._ready[oldest]
                again = len(self._ready.get(key, ())) < self._target()
        _close_all(dropped)  # free their memory now, not at garbage collection
        if again:
            self.refill(key, component)

    def _make(self, key: Key, component: wc.Component) -> Optional[Warm]:
        """A new instance of `component`, its runtime started; None if that failed."""
        store: Optional[wasmtime.Store] = None
        try:
            binding = Binding()
            store = new_store(self._engine, memory_bytes=key[1], check=binding.check, output=binding.write_output)
            started = time.perf_counter()
            instance = self._linker.instantiate(store, component)
            self._on_instantiate(time.perf_counter() - started)
            names = instance.get_func(store, "workflows")
            if names is None:
                store.close()
                return None
            names(store)  # starts the guest's runtime; pure, touches no workflow
            names.post_return(store)
            return (store, instance, binding, component)
        except Exception as exc:  # noqa: BLE001 - warming is an optimisation: the invocation instantiates itself
            log.debug("warming %s failed: %s", key[0][:12], exc)
            if store is not None:
                store.close()
            return None

    def discard(self, digest: str) -> None:
        """Drop the ready instances of `digest` (its component was evicted: they would keep
        it, and their pool slots' memory, alive)."""
        with self._lock:
            keys = [key for key in self._ready if key[0] == digest]
            dropped = [warm for key in keys for warm in self._ready.pop(key)]
        _close_all(dropped)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            dropped = [warm for ready in self._ready.values() for warm in ready]
            self._ready.clear()
        self._warmer.shutdown(wait=True, cancel_futures=True)
        _close_all(dropped)


def _close_all(warm: list[Warm]) -> None:
    for store, *_ in warm:
        store.close()
