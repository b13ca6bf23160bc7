"""The wasmtime side of isolation: one shared Engine, epoch ticks, per-instance stores.

Guests get WASI with nothing granted: no preopened directories, no environment, no
arguments, no sockets. stdout/stderr go to a callback (the instance's log). CPU is bounded
by epoch deadlines (a ticker thread advances the epoch every `TICK_MS`), memory by store
limits.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import threading
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

    def fingerprint(self) -> str:
        text = f"wasmtime={wasmtime_version()};{self!r}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def wasmtime_version() -> str:
    from importlib.metadata import version

    return version("wasmtime")


def make_engine(config: SandboxConfig) -> wasmtime.Engine:
    cfg = wasmtime.Config()
    cfg.epoch_interruption = config.epoch_interruption
    cfg.max_wasm_stack = config.max_wasm_stack
    cfg.cranelift_opt_level = config.cranelift_opt_level
    cfg.parallel_compilation = True
    return wasmtime.Engine(cfg)


class EpochTicker:
    """Advances the engine's epoch every TICK_MS so deadlines fire; stops cleanly."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        self._engine = engine
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tenantflow-epoch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(TICK_MS / 1000):
            self._engine.increment_epoch()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def new_store(
    engine: wasmtime.Engine,
    *,
    memory_bytes: int,
    check: DeadlineCheck,
    on_stdout: Optional[Callable[[bytes], None]] = None,
    on_stderr: Optional[Callable[[bytes], None]] = None,
) -> wasmtime.Store:
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()  # nothing granted
    if on_stdout is not None:
        wasi.stdout_custom = on_stdout
    if on_stderr is not None:
        wasi.stderr_custom = on_stderr
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
