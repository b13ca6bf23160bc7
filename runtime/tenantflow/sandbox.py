"""The wasmtime side of isolation: one shared Engine, epoch ticks, per-instance stores.

Guests get WASI with nothing granted: no preopened directories, no environment, no
arguments, no sockets. stdout/stderr go to a callback (the instance's log; `OutputSink`).
CPU is bounded by epoch deadlines (a ticker thread advances the epoch every `TICK_MS`),
memory by store limits.

With `SandboxConfig(pooling=True)` instances live in wasmtime's pooling allocator. A componentize-py instance starts from a
copy-on-write image of a snapshotted interpreter, and the first write to each page of it
is a page fault plus a TLB shootdown across the host's cores: about 400 of them per
invocation, 3 ms of a 4 ms first pass on a 2-core VM. Pool slots keep the pages a guest
dirtied resident and reset them with memcpy when the instance is dropped (found with
Linux's PAGEMAP_SCAN), so the next instance of the same component in that slot starts
without faults. Slots are bounded: `pool_slots` instances can be alive at once.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Optional

import wasmtime
from wasmtime import _ffi as ffi

TICK_MS = 10
# A running guest is checked every SLICE_TICKS: deadlines and terminate take effect within
# a slice. (A deadline lowered from inside a host import is not seen by the guest code
# that is already running, because compiled code caches it; the callback re-decides.)
SLICE_TICKS = 5
INTERRUPTED = "tenantflow: interrupted"


@dataclass(frozen=True)
class SandboxConfig:
    """Settings baked into compiled artifacts: a change invalidates the disk cache."""

    epoch_interruption: bool = True
    max_wasm_stack: int = 1024 * 1024
    cranelift_opt_level: str = "speed"
    # wasmtime's pooling allocator (see the module's docstring): worth it for a few hot
    # component versions (a one-step workflow ~2 ms sooner, no page faults), costly when
    # many versions take turns in the slots (each switch remaps and resets a slot: tenant
    # churn 3-4x slower, cold start 2x) and in memory (up to 16 MiB per used slot). So off
    # by default. Part of the fingerprint: artifacts are kept apart per setting.
    pooling: bool = False

    def fingerprint(self) -> str:
        text = f"wasmtime={wasmtime_version()};{self!r}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def wasmtime_version() -> str:
    from importlib.metadata import version

    return version("wasmtime")


MiB = 1024 * 1024
# Per-instance bounds of a pool slot, generous for componentize-py components (an
# interpreter plus its libraries: ~20 core instances, a 10k+ element function table).
_CORE_INSTANCES_PER_COMPONENT = 64
_MEMORIES_PER_COMPONENT = 8
_TABLES_PER_COMPONENT = 16
_TABLE_ELEMENTS = 100_000
_MAX_INSTANCE_STATE = 4 * MiB
# A slot keeps the pages its instances dirtied resident (reset with memcpy) up to this
# size; beyond it they go back to the kernel and fault in again next time. The set grows
# to the union of what successive instances touched: a componentize-py workflow needs
# about 16 MiB for its first pass to take no faults (8 MiB: ~180 faults, 4 MiB: ~390).
KEEP_RESIDENT_BYTES = 16 * MiB
# What all slots together may keep resident: large pools keep less per slot.
POOL_RESIDENT_BUDGET = 288 * MiB
DEFAULT_POOL_SLOTS = 8
POOL_EXHAUSTED = "concurrent"  # wasmtime: "maximum concurrent ... limit of N reached"


def make_engine(config: SandboxConfig, pool_slots: int = DEFAULT_POOL_SLOTS, warm_slots: Optional[int] = None) -> wasmtime.Engine:
    """The wasmtime engine; with `config.pooling`, at most `pool_slots` live instances.
    `warm_slots`: how many unused slots keep their pages (each up to KEEP_RESIDENT_BYTES;
    the default shares POOL_RESIDENT_BUDGET among half the slots)."""
    cfg = wasmtime.Config()
    cfg.epoch_interruption = config.epoch_interruption
    cfg.max_wasm_stack = config.max_wasm_stack
    cfg.cranelift_opt_level = config.cranelift_opt_level
    cfg.parallel_compilation = True
    if config.pooling:
        _use_pooling(cfg, max(1, pool_slots), warm_slots)
    return wasmtime.Engine(cfg)


def keep_resident_bytes(slots: int) -> int:
    page = 64 * 1024
    memories = 2 * max(1, slots)  # memory slots: two per instance slot (see _use_pooling)
    return max(page, min(KEEP_RESIDENT_BYTES, POOL_RESIDENT_BUDGET // memories) // page * page)


def _use_pooling(cfg: wasmtime.Config, slots: int, warm_slots: Optional[int] = None) -> None:
    pool = ffi.wasmtime_pooling_allocation_config_new()
    try:
        ffi.wasmtime_pooling_allocation_config_total_component_instances_set(pool, slots)
        ffi.wasmtime_pooling_allocation_config_total_stacks_set(pool, slots)
        # Totals of core pieces: a typical component needs far fewer than the per-component
        # maximum, so the totals are sized for the typical case times the slots.
        ffi.wasmtime_pooling_allocation_config_total_core_instances_set(pool, slots * 32)
        ffi.wasmtime_pooling_allocation_config_total_memories_set(pool, slots * 2)
        ffi.wasmtime_pooling_allocation_config_total_tables_set(pool, slots * 4)
        ffi.wasmtime_pooling_allocation_config_max_core_instances_per_component_set(pool, _CORE_INSTANCES_PER_COMPONENT)
        ffi.wasmtime_pooling_allocation_config_max_memories_per_component_set(pool, _MEMORIES_PER_COMPONENT)
        ffi.wasmtime_pooling_allocation_config_max_tables_per_component_set(pool, _TABLES_PER_COMPONENT)
        ffi.wasmtime_pooling_allocation_config_max_memories_per_module_set(pool, 2)
        ffi.wasmtime_pooling_allocation_config_max_tables_per_module_set(pool, 4)
        ffi.wasmtime_pooling_allocation_config_table_elements_set(pool, _TABLE_ELEMENTS)
        # Memory caps are the stores' limits (per tenant); a slot can hold any wasm32 memory.
        ffi.wasmtime_pooling_allocation_config_max_memory_size_set(pool, 4096 * MiB)
        ffi.wasmtime_pooling_allocation_config_max_core_instance_size_set(pool, _MAX_INSTANCE_STATE)
        ffi.wasmtime_pooling_allocation_config_max_component_instance_size_set(pool, _MAX_INSTANCE_STATE)
        keep = KEEP_RESIDENT_BYTES if warm_slots is not None else keep_resident_bytes(slots)
        ffi.wasmtime_pooling_allocation_config_linear_memory_keep_resident_set(pool, keep)
        # Tables are reset by decommit: kept resident they would each pin their whole slot.
        ffi.wasmtime_pooling_allocation_config_table_keep_resident_set(pool, 0)
        # Idle slots beyond these are handed out again without their old component's
        # pages: what stays resident between bursts is bounded by these, not by `slots`.
        ffi.wasmtime_pooling_allocation_config_max_unused_warm_slots_set(pool, max(1, slots // 2 if warm_slots is None else warm_slots))
        ffi.wasmtime_pooling_allocation_strategy_set(cfg.ptr(), pool)
    finally:
        ffi.wasmtime_pooling_allocation_config_delete(pool)


class EpochTicker:
    """Advances the engine's epoch every TICK_MS so deadlines fire; stops cleanly, or by
    itself once the engine is gone (it holds it weakly: an engine let go while a guest
    still runs on it keeps ticking for that guest until its last store is freed)."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        self._engine = weakref.ref(engine)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tenantflow-epoch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(TICK_MS / 1000):
            engine = self._engine()
            if engine is None:
                return
            engine.increment_epoch()
            del engine

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class OutputSink:
    """A store's WASI stdout or stderr callback, reaching its consumer by weak reference.

    wasmtime-wasi calls it from its own (tokio) threads, not the guest's, and drops it
    there when the stream goes, which can be after the store is gone. So it holds nothing
    whose release could reach a store or an engine (an invocation, a warm binding, a
    tier): a write after its consumer is gone goes nowhere."""

    __slots__ = ("_write", "_stream", "__weakref__")

    def __init__(self, write: Callable[[str, bytes], None], stream: str) -> None:
        self._write = weakref.WeakMethod(write)
        self._stream = stream

    def __call__(self, data: bytes) -> None:
        write = self._write()
        if write is not None:
            write(self._stream, data)


def new_store(
    engine: wasmtime.Engine,
    *,
    memory_bytes: int,
    check: DeadlineCheck,
    output: Optional[Callable[[str, bytes], None]] = None,
) -> wasmtime.Store:
    """A store with nothing granted; the guest's stdout and stderr go to the bound method
    `output(stream, data)` while its object lives (see OutputSink)."""
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()  # nothing granted
    if output is not None:
        wasi.stdout_custom = OutputSink(output, "stdout")
        wasi.stderr_custom = OutputSink(output, "stderr")
    store.set_wasi(wasi)
    store.set_limits(memory_size=memory_bytes)
    watch_store(store, check)
    return store


# Deadline checks by store: the C callback receives the key as its data pointer.
DeadlineCheck = Callable[[], Optional[str]]
_checks: dict[int, DeadlineCheck] = {}
_keys = itertools.count(1)
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t),
)
_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _on_deadline(_context: Any, data: Any, delta: Any, kind: Any) -> int:
    check = _checks.get(data or 0)
    reason = check() if check is not None else None
    if reason is not None:
        error = wasmtime.WasmtimeError(f"{INTERRUPTED}: {reason}")
        return ctypes.cast(error._consume(), ctypes.c_void_p).value or 0
    delta[0] = SLICE_TICKS
    kind[0] = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE
    return 0


def _forget(data: Any) -> None:
    _checks.pop(data or 0, None)


# C function pointers, kept alive for the life of the process.
_ON_DEADLINE = _CALLBACK(_on_deadline)
_FORGET = _FINALIZER(_forget)


def watch_store(store: wasmtime.Store, check: DeadlineCheck) -> None:
    """Run `check` every slice while the store executes guest code; a returned reason
    traps the guest (with INTERRUPTED in the message), None lets it run on."""
    key = next(_keys)
    _checks[key] = check
    ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), _ON_DEADLINE, ctypes.c_void_p(key), _FORGET)
    store.set_epoch_deadline(SLICE_TICKS)
