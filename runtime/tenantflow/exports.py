"""Calling a component's exports without reading their types again on every call.

wasmtime-py's `Instance.get_func` + `Func.__call__` look the export up by name, fetch its
function type and walk the parameter and result types through the C API on every call:
about half of the host-side time of a one-step invocation (~0.5 ms). An export's index and
types belong to the component, not to an instance or a store, so `ExportCall` reads them
once per component version and every invocation reuses them.

Uses the same wasmtime-py internals `Func.__call__` uses (`_ffi`, `convert_to_c`,
`convert_from_c`, `enter_wasm`); `tests/test_exports.py` checks it answers exactly as the
stock call does.
"""

from __future__ import annotations

import ctypes
import threading
from collections import OrderedDict
from ctypes import byref, pointer
from typing import Any, Optional

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime import component as wc
from wasmtime.component._enter import enter_wasm


class ExportCall:
    """One export of one component: its index and types, ready to call on any instance."""

    def __init__(self, store: wasmtime.Store, instance: wc.Instance, name: str) -> None:
        index = instance.get_export_index(store, name)
        func = instance.get_func(store, index) if index is not None else None
        if index is None or func is None:
            raise LookupError(f"component does not export `{name}`")
        self.name = name
        self._index = index
        self._type = func.type(store)  # keeps the type handles below alive
        self._params = [ty for _, ty in self._type.params]
        self._result = self._type.result

    def __call__(self, store: wasmtime.Store, instance: wc.Instance, *params: Any) -> Any:
        if len(params) != len(self._params):
            raise TypeError(f"`{self.name}` takes {len(self._params)} parameters, {len(params)} given")
        func = ffi.wasmtime_component_func_t()
        if not ffi.wasmtime_component_instance_get_func(byref(instance._instance), store._context(), self._index.ptr(), byref(func)):
            raise LookupError(f"component does not export `{self.name}`")
        count = len(params)
        lowered = (ffi.wasmtime_component_val_t * count)()
        done = 0
        try:
            for ty, value in zip(self._params, params):
                ty.convert_to_c(store, value, pointer(lowered[done]))
                done += 1
            result = ffi.wasmtime_component_val_t() if self._result is not None else None
            result_ptr = byref(result) if result is not None else None

            def run() -> "ctypes._Pointer[ffi.wasmtime_error_t]":
                return ffi.wasmtime_component_func_call(byref(func), store._context(), lowered, count, result_ptr, 1 if result is not None else 0)

            enter_wasm(run)
            if result is None or self._result is None:
                return None
            return self._result.convert_from_c(result)
        finally:
            for i in range(done):
                ffi.wasmtime_component_val_delete(byref(lowered[i]))


class ExportCalls:
    """`ExportCall`s by component digest and export name, bounded, shared by threads.

    An export's index and types belong to one `Component` object: after an eviction the
    same digest is loaded again as a new object, whose instances need their own. So each
    entry keeps the component it was read from (alive, and so its types) and is replaced
    when an instance of another object for that digest comes along; `forget` drops it
    when the isolate cache evicts the digest."""

    def __init__(self, max_entries: int = 256) -> None:
        self._entries: OrderedDict[str, tuple[wc.Component, dict[str, ExportCall]]] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_entries

    def get(self, digest: str, component: wc.Component, store: wasmtime.Store, instance: wc.Instance, name: str) -> ExportCall:
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None and entry[0] is component:
                self._entries.move_to_end(digest)
                call: Optional[ExportCall] = entry[1].get(name)
                if call is not None:
                    return call
        call = ExportCall(store, instance, name)
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None or entry[0] is not component:
                entry = self._entries[digest] = (component, {})
            entry[1][name] = call
            self._entries.move_to_end(digest)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return call

    def forget(self, digest: str) -> None:
        with self._lock:
            self._entries.pop(digest, None)
