"""Warm isolates: instances created and initialised ahead of the invocation that uses them.

A fresh instance per invocation is the isolation and determinism contract, and it is
kept: a warm instance has only been instantiated and had its language runtime started
(by calling the pure `workflows` export), off the latency path, on a warmer thread. It
never ran a workflow, saw params or belonged to an invocation; each is used at most once.
Keyed by (digest, memory limit) and bounded in number (each costs a few MB).
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

    def stream(self, name: str) -> Callable[[bytes], None]:
        def write(data: bytes) -> None:
            if self.inv is not None:
                self.inv.output(name)(data)

        return write


Warm = tuple[wasmtime.Store, wc.Instance, Binding, wc.Component]  # ..., the component it is of


class WarmPool:
    def __init__(
        self, engine: wasmtime.Engine, linker: wc.Linker, *, max_total: int = 8, on_instantiate: Callable[[float], None] = lambda seconds: None
    ) -> None:
        self._engine = engine
        self._linker = linker
        self._on_instantiate = on_instantiate
        self.max_total = max_total
        self._ready: OrderedDict[Key, Warm] = OrderedDict()
        self._warming: set[Key] = set()
        self._lock = threading.Lock()
        self._warmer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tenantflow-warmer")
        self._closed = False
        self.hits = 0
        self.misses = 0

    def take(self, key: Key) -> Optional[Warm]:
        with self._lock:
            warm = self._ready.pop(key, None)
            if warm is None:
                self.misses += 1
            else:
                self.hits += 1
            return warm

    def refill(self, key: Key, component: wc.Component) -> None:
        """Prepare the next instance for `key` in the background (one per key)."""
        if self.max_total <= 0:
            return
        with self._lock:
            if self._closed or key in self._ready or key in self._warming:
                return
            self._warming.add(key)
        self._warmer.submit(self._warm, key, component)

    def _warm(self, key: Key, component: wc.Component) -> None:
        store: Optional[wasmtime.Store] = None
        try:
            binding = Binding()
            store = new_store(self._engine, memory_bytes=key[1], check=binding.check, on_stdout=binding.stream("stdout"), on_stderr=binding.stream("stderr"))
            started = time.perf_counter()
            instance = self._linker.instantiate(store, component)
            self._on_instantiate(time.perf_counter() - started)
            names = instance.get_func(store, "workflows")
            if names is None:
                store.close()
                return
            names(store)  # starts the guest's runtime; pure, touches no workflow
            names.post_return(store)
        except Exception as exc:  # noqa: BLE001 - warming is an optimisation: the invocation instantiates itself
            log.debug("warming %s failed: %s", key[0][:12], exc)
            if store is not None:
                store.close()
            return
        finally:
            with self._lock:
                self._warming.discard(key)
        dropped: list[Warm] = []
        with self._lock:
            if self._closed:
                dropped.append((store, instance, binding, component))
            else:
                self._ready[key] = (store, instance, binding, component)
                self._ready.move_to_end(key)
                while len(self._ready) > self.max_total:
                    dropped.append(self._ready.popitem(last=False)[1])
        _close_all(dropped)  # free their memory now, not at garbage collection

    def discard(self, digest: str) -> None:
        """Drop the ready instances of `digest` (its component was evicted: they would keep
        it, and their pool slots' memory, alive)."""
        with self._lock:
            keys = [key for key in self._ready if key[0] == digest]
            dropped = [self._ready.pop(key) for key in keys]
        _close_all(dropped)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            dropped = list(self._ready.values())
            self._ready.clear()
        self._warmer.shutdown(wait=True, cancel_futures=True)
        _close_all(dropped)


def _close_all(warm: list[Warm]) -> None:
    for store, *_ in warm:
        store.close()
