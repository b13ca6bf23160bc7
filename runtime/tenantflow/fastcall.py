"""Low-overhead host imports (and export calls) for wasmtime component functions.

`LinkerInstance.add_func` re-reflects the function type through ctypes on every call
(parameters, result, record fields, variant cases and their "tagged"-ness) and walks the
`wasmtime_component_val_t` tree through ctypes objects. `add_fast_func` has the same
contract, but the first call with a given signature builds a *plan*: closures specialised
per WIT type, with field names, case tables and tagged-ness resolved once. Later calls
check that the signature is the same one (usually one C call, see `_Signature`) and run
the plan, which reads and writes the C values as raw memory with `struct` and copies
record skeletons and variant cases from prebuilt templates.

Python values follow wasmtime-py's converters (`wasmtime/component/_types.py`) exactly:
records are `Record`s with attributes named by the (hyphenated) WIT field names, read
back with getattr; variants, options and results are `Variant(tag, payload)` when
"tagged" by wasmtime-py's rule and otherwise the bare payload (None for a case without
one); enums and strings are `str`, `list<u8>` is `bytes`, other lists `list`, tuples
`tuple`. Flags, resources, futures, streams and error-context are not specialised and go
through wasmtime-py's own `convert_from_c` / `convert_to_c`.

Errors: exceptions from the host function, or from converting its result (same types
and messages as wasmtime-py's), are handled as wasmtime-py's `catch_exceptions` does
(inlined in `_trampoline`), so the guest traps and the export call re-raises the very
same exception object.

Memory: the C API owns an import's argument values and drops them after the callback, so
lifting only reads them. Results are built with the C API's allocators in its result
slot, which it drops after copying. `fast_call` drops its argument and result values
itself. (wasmtime-py instead takes values apart while lifting; only the fallback
converters still do, see `_fallback`.)

Relies on wasmtime-py 50 internals (`_ffi`, `_enter`, `_slab`) and on the C API's value
layout, which is checked at import.
"""

from __future__ import annotations

import ctypes
import struct
import threading
import weakref
from ctypes import POINTER, addressof, byref, c_bool, c_char, c_char_p, c_size_t, c_void_p
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

from wasmtime import StoreContext, WasmtimeError
from wasmtime import _ffi as ffi
from wasmtime._slab import Slab
from wasmtime._store import Storelike
from wasmtime.component import (
    F32,
    F64,
    S8,
    S16,
    S32,
    S64,
    U8,
    U16,
    U32,
    U64,
    Bool,
    BorrowType,
    Char,
    EnumType,
    Func,
    FuncType,
    LinkerInstance,
    ListType,
    OptionType,
    OwnType,
    Record,
    RecordType,
    ResultType,
    String,
    TupleType,
    ValType,
    Variant,
    VariantType,
    _enter,
)
from wasmtime.component._enter import enter_wasm

__all__ = ["add_fast_func", "fast_call"]

# --------------------------------------------------------------------------- raw memory

# A writable byte view of the whole address space. `struct.unpack_from`/`pack_into` at
# an absolute address cost ~0.1 us; building ctypes objects per field costs several.
# Nothing is read through it except C API values and buffers we were handed.
_MEM = memoryview((c_char * (1 << 62)).from_address(0)).cast("B")

_VAL_T = ffi.wasmtime_component_val_t
_VAL = ctypes.sizeof(_VAL_T)
_ENTRY = ctypes.sizeof(ffi.wasmtime_component_valrecord_entry)
_ENTRY_VAL = ffi.wasmtime_component_valrecord_entry.val.offset
_OF = _VAL_T.of.offset
_VALTYPE = ctypes.sizeof(ffi.wasmtime_component_valtype_t)

# The struct formats below hard-code the C layout of the 64-bit C API; refuse to run
# against bindings that disagree rather than corrupt memory.
_layout = (
    _VAL,
    _OF,
    _ENTRY,
    _ENTRY_VAL,
    _VALTYPE,
    # The bindings annotate these fields as their value type, not as ctypes descriptors.
    ffi.wasmtime_component_valvariant.val.offset,  # type: ignore[attr-defined]
    ffi.wasmtime_component_valresult.val.offset,  # type: ignore[attr-defined]
    ctypes.sizeof(ffi.wasm_byte_vec_t),
)
if _layout != (32, 8, 48, 16, 16, 16, 8, 16):
    raise ImportError(f"tenantflow.fastcall: unexpected wasmtime C API layout {_layout}")

_HDR = struct.Struct("=B7xQQ")  # kind, size, data: string, enum, list, record, tuple
_VARIANT = struct.Struct("=B7xQQQ")  # kind, discriminant size, discriminant data, box
_OPTION = struct.Struct("=B7xQ")  # kind, box (0 = none)
_RESULT = struct.Struct("=B7x?7xQ")  # kind, is_ok, box
_PTR = struct.Struct("=Q")
_NAME = struct.Struct("=QQ")  # a name's (pointer, length), as `param_nth` writes them

_K_BOOL = ffi.WASMTIME_COMPONENT_BOOL.value
_K_CHAR = ffi.WASMTIME_COMPONENT_CHAR.value
_K_STRING = ffi.WASMTIME_COMPONENT_STRING.value
_K_LIST = ffi.WASMTIME_COMPONENT_LIST.value
_K_RECORD = ffi.WASMTIME_COMPONENT_RECORD.value
_K_TUPLE = ffi.WASMTIME_COMPONENT_TUPLE.value
_K_VARIANT = ffi.WASMTIME_COMPONENT_VARIANT.value
_K_ENUM = ffi.WASMTIME_COMPONENT_ENUM.value
_K_OPTION = ffi.WASMTIME_COMPONENT_OPTION.value
_K_RESULT = ffi.WASMTIME_COMPONENT_RESULT.value
_K_U8 = ffi.WASMTIME_COMPONENT_U8.value
_K_F32 = ffi.WASMTIME_COMPONENT_F32.value
_K_F64 = ffi.WASMTIME_COMPONENT_F64.value

# Value-type kinds whose `wasmtime_component_valtype_t` carries no boxed payload.
_UNBOXED_VALTYPES = frozenset(
    k.value
    for k in (
        ffi.WASMTIME_COMPONENT_VALTYPE_BOOL,
        ffi.WASMTIME_COMPONENT_VALTYPE_S8,
        ffi.WASMTIME_COMPONENT_VALTYPE_S16,
        ffi.WASMTIME_COMPONENT_VALTYPE_S32,
        ffi.WASMTIME_COMPONENT_VALTYPE_S64,
        ffi.WASMTIME_COMPONENT_VALTYPE_U8,
        ffi.WASMTIME_COMPONENT_VALTYPE_U16,
        ffi.WASMTIME_COMPONENT_VALTYPE_U32,
        ffi.WASMTIME_COMPONENT_VALTYPE_U64,
        ffi.WASMTIME_COMPONENT_VALTYPE_F32,
        ffi.WASMTIME_COMPONENT_VALTYPE_F64,
        ffi.WASMTIME_COMPONENT_VALTYPE_CHAR,
        ffi.WASMTIME_COMPONENT_VALTYPE_STRING,
        ffi.WASMTIME_COMPONENT_VALTYPE_ERROR_CONTEXT,
    )
)


def _cfunc(name: str, restype: Any, *argtypes: Any) -> Any:
    # Prototypes over plain int addresses, separate from the (cached) ones wasmtime-py
    # calls. PYFUNCTYPE keeps the GIL across these short, non-blocking C calls, which
    # is cheaper than releasing it and means no other Python thread runs meanwhile.
    addr = ctypes.cast(ffi.dll[name], c_void_p).value
    if not addr:
        raise ImportError(f"tenantflow.fastcall: {name} missing from the wasmtime library")
    return ctypes.PYFUNCTYPE(restype, *argtypes)(addr)


_byte_vec_new = _cfunc("wasm_byte_vec_new", None, c_void_p, c_size_t, c_char_p)
_vallist_new_uninit = _cfunc("wasmtime_component_vallist_new_uninit", None, c_void_p, c_size_t)
_valtuple_new_uninit = _cfunc("wasmtime_component_valtuple_new_uninit", None, c_void_p, c_size_t)
_valrecord_new_uninit = _cfunc(
    "wasmtime_component_valrecord_new_uninit", None, c_void_p, c_size_t
)
_val_new = _cfunc("wasmtime_component_val_new", c_void_p, c_void_p)
_val_clone = _cfunc("wasmtime_component_val_clone", None, c_void_p, c_void_p)
_val_delete = _cfunc("wasmtime_component_val_delete", None, c_void_p)
_param_nth = _cfunc(
    "wasmtime_component_func_type_param_nth", c_bool, c_void_p, c_size_t, c_void_p, c_void_p,
    c_void_p,
)
_func_type_result = _cfunc("wasmtime_component_func_type_result", c_bool, c_void_p, c_void_p)
_valtype_equal = _cfunc("wasmtime_component_valtype_equal", c_bool, c_void_p, c_void_p)
_valtype_delete = _cfunc("wasmtime_component_valtype_delete", None, c_void_p)
_func_type_clone = _cfunc("wasmtime_component_func_type_clone", c_void_p, c_void_p)
_func_type_delete = _cfunc("wasmtime_component_func_type_delete", None, c_void_p)

# Calls that run wasm or may block keep wasmtime-py's GIL-releasing convention.
_func_call = ffi.dll["wasmtime_component_func_call"]
_func_call.restype = POINTER(ffi.wasmtime_error_t)
_func_call.argtypes = [
    POINTER(ffi.wasmtime_component_func_t), POINTER(ffi.wasmtime_context_t), c_void_p, c_size_t,
    c_void_p, c_size_t,
]

# Same C signature as `wasmtime_component_func_callback_t`, but with the pointers we
# only do arithmetic on as ints: ctypes building a POINTER object per argument is slow.
_CALLBACK = ctypes.CFUNCTYPE(
    c_size_t, c_void_p, POINTER(ffi.wasmtime_context_t), c_void_p, c_void_p, c_size_t, c_void_p,
    c_size_t,
)
_FINALIZER = ctypes.CFUNCTYPE(None, c_void_p)
_add_func = ffi.dll["wasmtime_component_linker_instance_add_func"]
_add_func.restype = POINTER(ffi.wasmtime_error_t)
_add_func.argtypes = [
    POINTER(ffi.wasmtime_component_linker_instance_t), c_char_p, c_size_t, _CALLBACK, c_void_p,
    _FINALIZER,
]


def _kind_error(found: int, expected: int) -> TypeError:
    return TypeError(f"fastcall: C value of kind {found} where the plan expects kind {expected}")


def _reset(addr: int) -> None:
    """Make the slot at `addr` a `bool` again (without dropping what it held)."""
    _MEM[addr] = _K_BOOL
    _MEM[addr + _OF] = 0


def _data(addr: int) -> int:
    """The element pointer of the list, tuple or record value at `addr`."""
    ptr: int = _PTR.unpack_from(_MEM, addr + _OF + 8)[0]
    return ptr


class _Template:
    """A value owned by the C API but stored in Python memory, copied into slots with
    one `wasmtime_component_val_clone`: a record's skeleton (entries named, values
    unset) or a variant case with its discriminant and payload box."""

    def __init__(self) -> None:
        self.buf = (c_char * _VAL)()  # zeroed: a `bool`
        self.addr = addressof(self.buf)
        weakref.finalize(self, _drop_template, self.buf)


def _drop_template(buf: Any) -> None:
    _val_delete(addressof(buf))


# ------------------------------------------------------------------------ converters

# Converters work on slots, addresses of `wasmtime_component_val_t`s. `lift(addr)`
# reads the value at `addr` without modifying it (except in `_fallback`, which leaves
# it as wasmtime-py does: still droppable). `lower(store, val, addr)` writes `val` over
# a `bool` slot; `fill` does the same over a slot that already holds the type's skeleton
# (records and tuples: entries allocated and named), which is what a parent whose own
# skeleton contains the child calls. A slot is always droppable: a lowering that raises
# leaves a valid (partial) value in it, and the slot's owner (the C API for an import's
# result, `fast_call` for arguments) drops it.
Lift = Callable[[int], Any]
Lower = Callable[[Storelike, Any, int], None]


class _Conv(NamedTuple):
    lift: Lift
    lower: Lower
    fill: Lower
    skeleton: Optional[_Template]


def _make(lift: Lift, fill: Lower, skeleton: Optional[_Template] = None) -> _Conv:
    if skeleton is None:
        return _Conv(lift, fill, fill, None)

    def lower(store: Storelike, val: Any, addr: int) -> None:
        _val_clone(skeleton.addr, addr)  # the closure keeps the template alive
        fill(store, val, addr)

    return _Conv(lift, lower, fill, skeleton)


def _conv(ty: ValType) -> _Conv:
    builder = _BUILDERS.get(type(ty))
    if builder is not None:
        try:
            return builder(ty)
        except Exception:  # whatever cannot be planned is converted by wasmtime-py
            pass
    return _fallback(ty)


def _fallback(ty: ValType) -> _Conv:
    # wasmtime-py lifts resources by taking the boxed pointer out of the value; like
    # its own containers, reset the slot afterwards so the C API's drop skips it.
    reset = isinstance(ty, (OwnType, BorrowType))

    def lift(addr: int) -> Any:
        val = ty.convert_from_c(_VAL_T.from_address(addr))
        if reset:
            _reset(addr)
        return val

    def lower(store: Storelike, val: Any, addr: int) -> None:
        try:
            ty.convert_to_c(store, val, ctypes.pointer(_VAL_T.from_address(addr)))
        except BaseException:
            _reset(addr)  # as wasmtime-py's containers do with a failed element
            raise

    return _make(lift, lower)


def _scalar(kind: int, lift_code: str, lower_code: str, mask: Optional[int], check: type,
            msg: str) -> _Conv:
    unpack = struct.Struct("=B7x" + lift_code).unpack_from
    pack = struct.Struct("=B7x" + lower_code).pack_into

    def lift(addr: int) -> Any:
        k, v = unpack(_MEM, addr)
        if k != kind:
            raise _kind_error(k, kind)
        return v

    if mask is None:
        def lower(store: Storelike, val: Any, addr: int) -> None:
            if not isinstance(val, check):
                raise TypeError(msg)
            pack(_MEM, addr, kind, val)
    else:
        # ctypes integer fields truncate silently; masking keeps wasmtime-py's behaviour.
        def lower(store: Storelike, val: Any, addr: int) -> None:
            if not isinstance(val, int):
                raise TypeError(msg)
            pack(_MEM, addr, kind, val & mask)

    return _make(lift, lower)


def _int(kind: Any, signed: str, unsigned: str, bits: int, name: str) -> Callable[[Any], _Conv]:
    return lambda _ty: _scalar(kind.value, signed, unsigned, (1 << bits) - 1, int,
                               f"expected int for {name} type")


def _bool(_ty: ValType) -> _Conv:
    return _scalar(_K_BOOL, "?", "?", None, bool, "expected bool for Bool type")


def _f64(_ty: ValType) -> _Conv:
    return _scalar(_K_F64, "d", "d", None, float, "expected float for F64 type")


def _f32(_ty: ValType) -> _Conv:
    base = _scalar(_K_F32, "f", "f", None, float, "expected float for F32 type")

    def lower(store: Storelike, val: Any, addr: int) -> None:
        try:
            base.lower(store, val, addr)
        except OverflowError:
            # struct refuses out-of-range floats; the ctypes field wasmtime-py writes
            # rounds them to +-inf instead.
            ctypes.c_float.from_address(addr + _OF).value = val
            _MEM[addr] = _K_F32

    return _make(base.lift, lower)


def _char(_ty: ValType) -> _Conv:
    codec = struct.Struct("=B7xI")
    unpack, pack = codec.unpack_from, codec.pack_into

    def lift(addr: int) -> Any:
        k, v = unpack(_MEM, addr)
        if k != _K_CHAR:
            raise _kind_error(k, _K_CHAR)
        return chr(v)

    def lower(store: Storelike, val: Any, addr: int) -> None:
        if not isinstance(val, str) or len(val) != 1:
            raise TypeError("expected single-character string for Char type")
        pack(_MEM, addr, _K_CHAR, ord(val))

    return _make(lift, lower)


def _text(kind: int, msg: str) -> _Conv:
    unpack = _HDR.unpack_from

    def lift(addr: int) -> Any:
        k, size, data = unpack(_MEM, addr)
        if k != kind:
            raise _kind_error(k, kind)
        return str(_MEM[data : data + size], "utf-8")

    def lower(store: Storelike, val: Any, addr: int) -> None:
        if not isinstance(val, str):
            raise TypeError(msg)
        raw = val.encode("utf-8")
        _byte_vec_new(addr + _OF, len(raw), raw)
        _MEM[addr] = kind

    return _make(lift, lower)


def _string(_ty: ValType) -> _Conv:
    return _text(_K_STRING, "expected string type")


def _enum(_ty: ValType) -> _Conv:
    # Like wasmtime-py, lowering does not check the case name: wasmtime's type check
    # of the value rejects an unknown one.
    return _text(_K_ENUM, "expected str type")


def _list(ty: ValType) -> _Conv:
    assert isinstance(ty, ListType)
    element = ty.element
    if isinstance(element, U8):
        return _bytes_list()
    item = _conv(element)
    item_lift, item_lower = item.lift, item.lower
    unpack = _HDR.unpack_from

    def lift(addr: int) -> Any:
        k, size, data = unpack(_MEM, addr)
        if k != _K_LIST:
            raise _kind_error(k, _K_LIST)
        return [item_lift(data + _VAL * i) for i in range(size)]

    def lower(store: Storelike, val: Any, addr: int) -> None:
        if not isinstance(val, list):
            raise TypeError("expected list value")
        items = tuple(val)  # a snapshot: the C buffer is sized once, up front
        _vallist_new_uninit(addr + _OF, len(items))  # elements are `bool`s
        _MEM[addr] = _K_LIST
        data = _data(addr)
        for i, e in enumerate(items):
            item_lower(store, e, data + _VAL * i)

    return _make(lift, lower)


def _bytes_list() -> _Conv:
    # list<u8> <-> bytes without a Python call per byte: the kind and the u8 of every
    # 32-byte element are read and written as strided slices.
    unpack = _HDR.unpack_from
    u8_kind = bytes([_K_U8])

    def lift(addr: int) -> Any:
        k, size, data = unpack(_MEM, addr)
        if k != _K_LIST:
            raise _kind_error(k, _K_LIST)
        end = data + _VAL * size
        if size and _MEM[data:end:_VAL] != u8_kind * size:
            raise TypeError("fastcall: list<u8> element of another kind")
        return bytes(_MEM[data + _OF : end + _OF : _VAL])

    def lower(store: Storelike, val: Any, addr: int) -> None:
        if not isinstance(val, bytes):
            raise TypeError("expected bytes value")
        size = len(val)
        _vallist_new_uninit(addr + _OF, size)
        if size:
            data = _data(addr)
            end = data + _VAL * size
            _MEM[data:end:_VAL] = u8_kind * size
            _MEM[data + _OF : end + _OF : _VAL] = val
        _MEM[addr] = _K_LIST

    return _make(lift, lower)


def _entries_template(kind: int, new_uninit: Any, stride: int, offset: int,
                      convs: Sequence[_Conv], names: Optional[Sequence[str]]) -> _Template:
    """Skeleton of a record or tuple: the entries allocated (and named), each holding its
    own type's skeleton or a `bool`."""
    template = _Template()
    new_uninit(template.addr + _OF, len(convs))
    _MEM[template.addr] = kind
    data = _data(template.addr)
    for i, conv in enumerate(convs):
        if names is not None:
            raw = names[i].encode("utf-8")
            _byte_vec_new(data + stride * i, len(raw), raw)  # over an empty name
        if conv.skeleton is not None:
            _val_clone(conv.skeleton.addr, data + stride * i + offset)
    return template


def _record(ty: ValType) -> _Conv:
    assert isinstance(ty, RecordType)
    fields = ty.fields
    names = [name for name, _ in fields]
    convs = [_conv(fty) for _, fty in fields]
    offsets = [_ENTRY * i + _ENTRY_VAL for i in range(len(fields))]
    lifts = list(zip(names, [c.lift for c in convs], offsets))
    fills = list(zip(names, [c.fill for c in convs], offsets))
    count = len(fields)
    skeleton = _entries_template(_K_RECORD, _valrecord_new_uninit, _ENTRY, _ENTRY_VAL, convs,
                                 names)
    unpack = _HDR.unpack_from

    def lift(addr: int) -> Any:
        k, size, data = unpack(_MEM, addr)
        if k != _K_RECORD or size != count:
            raise _kind_error(k, _K_RECORD)
        rec = Record()
        attrs = rec.__dict__  # what setattr does on this plain class, minus the lookup
        for name, field_lift, off in lifts:
            attrs[name] = field_lift(data + off)
        return rec

    def fill(store: Storelike, val: Any, addr: int) -> None:
        data = _data(addr)
        for name, field_fill, off in fills:
            field_fill(store, getattr(val, name), data + off)

    return _make(lift, fill, skeleton)


def _tuple(ty: ValType) -> _Conv:
    assert isinstance(ty, TupleType)
    convs = [_conv(e) for e in ty.elements]
    lifts = [(c.lift, _VAL * i) for i, c in enumerate(convs)]
    fills = [(c.fill, _VAL * i) for i, c in enumerate(convs)]
    count = len(convs)
    skeleton = _entries_template(_K_TUPLE, _valtuple_new_uninit, _VAL, 0, convs, None)
    unpack = _HDR.unpack_from

    def lift(addr: int) -> Any:
        k, size, data = unpack(_MEM, addr)
        if k != _K_TUPLE or size != count:
            raise _kind_error(k, _K_TUPLE)
        return tuple([item_lift(data + off) for item_lift, off in lifts])

    def fill(store: Storelike, val: Any, addr: int) -> None:
        if not isinstance(val, tuple):
            raise TypeError("expected tuple type")
        if len(val) != count:
            raise TypeError("tuple length mismatch")
        data = _data(addr)
        for (item_fill, off), e in zip(fills, val):
            item_fill(store, e, data + off)

    return _make(lift, fill, skeleton)


class _Case:
    """One case of a variant, option or result."""

    def __init__(self, name: str, ty: Optional[ValType]) -> None:
        self.name = name
        self.encoded = name.encode("utf-8")
        self.conv = None if ty is None else _conv(ty)
        # What wasmtime-py recognises an untagged payload by.
        classes: Set[type] = set()
        if ty is None:
            classes.add(object)
        else:
            ty.add_classes(classes)
        self.classes = tuple(classes)
        self.template: Optional[_Template] = None  # set by the variant-like builders

    def boxed_payload(self) -> int:
        """A new box holding the payload's skeleton (or a `bool`), 0 if no payload."""
        if self.conv is None:
            return 0
        tmp = (c_char * _VAL)()  # a `bool`, moved into the box by `val_new`
        if self.conv.skeleton is not None:
            _val_clone(self.conv.skeleton.addr, addressof(tmp))
        box: int = _val_new(addressof(tmp))
        return box


class _Cases:
    """The cases of a variant, option or result, with wasmtime-py's tagging rule
    applied once (wasmtime-py recomputes `_tagged()` and the classes per value)."""

    def __init__(self, cases: Sequence[Tuple[str, Optional[ValType]]], tagged: bool) -> None:
        self.tagged = tagged
        self.cases = [_Case(name, ty) for name, ty in cases]
        self.by_name = {c.name: c for c in self.cases}
        self.by_encoded = {c.encoded: c for c in self.cases}

    def lift(self, case: _Case, box: int) -> Any:
        if case.conv is None:
            return Variant(case.name) if self.tagged else None
        if not box:
            raise TypeError(f"fastcall: case {case.name} without its payload")
        payload = case.conv.lift(box)
        return Variant(case.name, payload) if self.tagged else payload

    def select(self, val: Any) -> Tuple[_Case, Any]:
        """The case `val` lowers to and its payload, as `VariantLikeType._lower` picks."""
        if self.tagged:
            if not isinstance(val, Variant):
                raise TypeError("expected Variant type")
            tag = val.tag
            found = self.by_name.get(tag) if type(tag) is str else self._scan(tag)
            if found is not None:
                return found, (None if found.conv is None else val.payload)
        else:
            for case in self.cases:
                if case.conv is None:
                    if val is not None:
                        continue
                elif not isinstance(val, case.classes):
                    continue
                return case, val
        raise ValueError("value not valid for this variant")

    def _scan(self, tag: Any) -> Optional[_Case]:
        for case in self.cases:  # wasmtime-py's comparison, for tags that are not str
            if not case.name != tag:
                return case
        return None

    def fill_payload(self, store: Storelike, case: _Case, payload: Any, box_at: int) -> None:
        if case.conv is not None:
            case.conv.fill(store, payload, _PTR.unpack_from(_MEM, box_at)[0])


def _variant(ty: ValType) -> _Conv:
    assert isinstance(ty, VariantType)
    cases = _Cases(ty.cases, ty._tagged())
    for case in cases.cases:
        case.template = _Template()
        addr = case.template.addr
        box = case.boxed_payload()
        _byte_vec_new(addr + _OF, len(case.encoded), case.encoded)
        _PTR.pack_into(_MEM, addr + _OF + 16, box)  # after the discriminant
        _MEM[addr] = _K_VARIANT
    unpack = _VARIANT.unpack_from

    def lift(addr: int) -> Any:
        k, size, disc, box = unpack(_MEM, addr)
        if k != _K_VARIANT:
            raise _kind_error(k, _K_VARIANT)
        case = cases.by_encoded.get(_MEM[disc : disc + size].tobytes())
        if case is None:
            tag = str(_MEM[disc : disc + size], "utf-8")
            raise ValueError(f"tag {tag} not found in variant cases")
        return cases.lift(case, box)

    def lower(store: Storelike, val: Any, addr: int) -> None:
        case, payload = cases.select(val)
        assert case.template is not None
        _val_clone(case.template.addr, addr)  # discriminant and payload box in one call
        cases.fill_payload(store, case, payload, addr + _OF + 16)

    return _make(lift, lower)


def _boxed_templates(cases: _Cases, pack: Callable[[int, _Case, int], None]) -> None:
    """Templates for the option/result cases that carry a payload; the others are
    written in place (they own no memory)."""
    for case in cases.cases:
        if case.conv is not None:
            case.template = _Template()
            pack(case.template.addr, case, case.boxed_payload())


def _option(ty: ValType) -> _Conv:
    assert isinstance(ty, OptionType)
    cases = _Cases([("none", None), ("some", ty.payload)], ty._tagged())
    none, some = cases.cases
    unpack, pack = _OPTION.unpack_from, _OPTION.pack_into
    _boxed_templates(cases, lambda addr, _case, box: pack(_MEM, addr, _K_OPTION, box))

    def lift(addr: int) -> Any:
        k, box = unpack(_MEM, addr)
        if k != _K_OPTION:
            raise _kind_error(k, _K_OPTION)
        return cases.lift(some if box else none, box)

    def lower(store: Storelike, val: Any, addr: int) -> None:
        case, payload = cases.select(val)
        if case.template is None:
            pack(_MEM, addr, _K_OPTION, 0)
        else:
            _val_clone(case.template.addr, addr)
            cases.fill_payload(store, case, payload, addr + _OF)

    return _make(lift, lower)


def _result(ty: ValType) -> _Conv:
    assert isinstance(ty, ResultType)
    cases = _Cases([("ok", ty.ok), ("err", ty.err)], ty._tagged())
    ok, err = cases.cases
    unpack, pack = _RESULT.unpack_from, _RESULT.pack_into
    _boxed_templates(cases, lambda addr, case, box: pack(_MEM, addr, _K_RESULT, case is ok, box))

    def lift(addr: int) -> Any:
        k, is_ok, box = unpack(_MEM, addr)
        if k != _K_RESULT:
            raise _kind_error(k, _K_RESULT)
        return cases.lift(ok if is_ok else err, box)

    def lower(store: Storelike, val: Any, addr: int) -> None:
        case, payload = cases.select(val)
        if case.template is None:
            pack(_MEM, addr, _K_RESULT, case is ok, 0)
        else:
            _val_clone(case.template.addr, addr)
            cases.fill_payload(store, case, payload, addr + _OF + 8)

    return _make(lift, lower)


_BUILDERS: Dict[type, Callable[[ValType], _Conv]] = {
    Bool: _bool,
    S8: _int(ffi.WASMTIME_COMPONENT_S8, "b", "B", 8, "S8"),
    U8: _int(ffi.WASMTIME_COMPONENT_U8, "B", "B", 8, "U8"),
    S16: _int(ffi.WASMTIME_COMPONENT_S16, "h", "H", 16, "S16"),
    U16: _int(ffi.WASMTIME_COMPONENT_U16, "H", "H", 16, "U16"),
    S32: _int(ffi.WASMTIME_COMPONENT_S32, "i", "I", 32, "S32"),
    U32: _int(ffi.WASMTIME_COMPONENT_U32, "I", "I", 32, "U32"),
    S64: _int(ffi.WASMTIME_COMPONENT_S64, "q", "Q", 64, "S64"),
    U64: _int(ffi.WASMTIME_COMPONENT_U64, "Q", "Q", 64, "U64"),
    F32: _f32,
    F64: _f64,
    Char: _char,
    String: _string,
    EnumType: _enum,
    ListType: _list,
    RecordType: _record,
    TupleType: _tuple,
    VariantType: _variant,
    OptionType: _option,
    ResultType: _result,
}


# ----------------------------------------------------------------------------- plans

_tls = threading.local()


def _scratch() -> int:
    """A per-thread buffer for the C API's out-parameters (guard checks only)."""
    try:
        addr: int = _tls.addr
    except AttributeError:
        _tls.buf = (c_char * 32)()
        addr = _tls.addr = addressof(_tls.buf)
    return addr


class _Signature:
    """Owned copies of a function's parameter and result types.

    A host function registered once is imported by every component instantiated from
    the linker, possibly with different types (wasmtime type-checks the values of a
    dynamic host function, not its signature), so a plan is only reused for an equal
    signature. Checking costs one C call per primitive type and three per compound one.

    Most calls are answered by one C call instead (`probe`): wasmtime keeps a function
    type's parameter names in the `TypeFunc` entry of its component's `ComponentTypes`,
    each name in its own heap buffer, and `param_nth` hands out a pointer into it. While
    the clone of the type held here keeps that `ComponentTypes` alive, no other buffer
    can have that address: the same name address is the same `TypeFunc`, so the same
    signature. Only for structural signatures (`structural`): resource types also
    depend on the instance they are seen from, which the `TypeFunc` does not say.
    """

    def __init__(self, ty: int, nparams: int, structural: bool) -> None:
        slots = (c_char * (_VALTYPE * (nparams + 1)))()
        owned: List[int] = []
        keep: int = _func_type_clone(ty)  # pins the ComponentTypes the probe points into
        weakref.finalize(self, _delete_valtypes, slots, owned, keep)
        base = addressof(slots)
        names = _scratch()
        self.params: List[Tuple[int, int]] = []
        self.probe: Optional[Tuple[int, Tuple[int, int], bool]] = None
        for i in range(nparams):
            slot = base + _VALTYPE * i
            if not _param_nth(ty, i, names, names + 8, slot):
                raise WasmtimeError("fastcall: function type has fewer parameters than reported")
            self.params.append(_keep(slot, owned))
            name = _NAME.unpack_from(_MEM, names)
            # An empty name may have no buffer of its own (Rust's dangling pointer); an
            # unboxed parameter costs no release. The first of those is probed.
            if structural and name[1] and (self.probe is None or self.probe[2]):
                self.probe = (i, name, self.params[-1][1] != 0)
        slot = base + _VALTYPE * nparams
        self.result = _keep(slot, owned) if _func_type_result(ty, slot) else None

    def matches(self, ty: int, nparams: int, nresults: Optional[int]) -> bool:
        """Whether `ty` is this signature. `nresults` is None when the caller does not
        know it (export calls)."""
        if nparams != len(self.params):
            return False
        if nresults is not None and nresults != (self.result is not None):
            return False
        names = _scratch()
        got = names + 16
        probe = self.probe
        if probe is not None and _param_nth(ty, probe[0], names, names + 8, got):
            _release(got)
            if _NAME.unpack_from(_MEM, names) == probe[1]:
                return True
        i = 0
        for kind, ref in self.params:
            if not _param_nth(ty, i, names, names + 8, got):
                return False
            if ref:
                if not _same_boxed(got, kind, ref):
                    return False
            elif _MEM[got] != kind:
                _release(got)
                return False
            i += 1
        if not _func_type_result(ty, got):
            return self.result is None
        if self.result is None:
            _release(got)
            return False
        kind, ref = self.result
        if ref:
            return _same_boxed(got, kind, ref)
        if _MEM[got] != kind:
            _release(got)
            return False
        return True


def _keep(slot: int, owned: List[int]) -> Tuple[int, int]:
    """(kind, address of the owned boxed type or 0) of the valtype in `slot`."""
    kind = _MEM[slot]
    if kind in _UNBOXED_VALTYPES:
        return kind, 0
    owned.append(slot)
    return kind, slot


def _same_boxed(got: int, kind: int, ref: int) -> bool:
    """Compare the valtype the C API just wrote at `got` with the boxed one at `ref`,
    then release it."""
    same = _MEM[got] == kind and bool(_valtype_equal(got, ref))
    _release(got)
    return same


def _release(got: int) -> None:
    if _MEM[got] not in _UNBOXED_VALTYPES:
        _valtype_delete(got)


def _delete_valtypes(_slots: Any, owned: List[int], func_type: int) -> None:
    # `_slots` is passed only to keep the memory behind `owned` alive until now.
    for slot in owned:
        _valtype_delete(slot)
    _func_type_delete(func_type)


class _Plan:
    """Converters for one function signature."""

    def __init__(self, fty: FuncType, ty: int) -> None:
        params = fty.params
        result = fty.result
        structural = all(_structural(pty) for _, pty in params) and _structural(result)
        self.signature = _Signature(ty, len(params), structural)
        convs = [_conv(pty) for _, pty in params]
        self.lifts = [(c.lift, _VAL * i) for i, c in enumerate(convs)]
        self.lowers = [(c.lower, _VAL * i) for i, c in enumerate(convs)]
        self.result: Optional[_Conv] = None if result is None else _conv(result)

    def lift_args(self, base: int) -> List[Any]:
        return [lift(base + off) for lift, off in self.lifts]


def _structural(ty: Optional[ValType]) -> bool:
    """Whether `ty` is made of the types plans specialise only (no resources: the same
    type then looks the same from every instance)."""
    if ty is None:
        return True
    if type(ty) not in _BUILDERS:
        return False
    if isinstance(ty, ListType):
        return _structural(ty.element)
    if isinstance(ty, RecordType):
        return all(_structural(fty) for _, fty in ty.fields)
    if isinstance(ty, TupleType):
        return all(_structural(e) for e in ty.elements)
    if isinstance(ty, VariantType):
        return all(_structural(cty) for _, cty in ty.cases)
    if isinstance(ty, OptionType):
        return _structural(ty.payload)
    if isinstance(ty, ResultType):
        return _structural(ty.ok) and _structural(ty.err)
    return True


# Per registered function (usually one signature); bounded so a stream of components
# that disagree on a function's type cannot grow it without limit.
_MAX_PLANS = 8


def _find_plan(plans: List[_Plan], ty: int, nparams: int, nresults: Optional[int]) -> _Plan:
    for i, plan in enumerate(plans):
        if plan.signature.matches(ty, nparams, nresults):
            if i:
                plans.insert(0, plans.pop(i))
            return plan
    # A non-None owner makes the wrapper borrow `ty` instead of deleting it.
    with FuncType._from_ptr(ctypes.cast(ty, POINTER(ffi.wasmtime_component_func_type_t)),
                            owner=plans) as fty:
        plan = _Plan(fty, ty)
    plans.insert(0, plan)
    del plans[_MAX_PLANS:]
    return plan


# ----------------------------------------------------------------------- host imports


class _FastFunc:
    __slots__ = ("func", "plans")

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        self.plans: List[_Plan] = []


_FUNCS: Slab[_FastFunc] = Slab()


def _trampoline(data: Optional[int], context: Any, ty: int, args: Optional[int], nargs: int,
                results: Optional[int], nresults: int) -> Any:
    # wasmtime-py's `catch_exceptions`, inlined (no closure per call): a Python exception
    # becomes a trap here and is re-raised, as the same object, by the `enter_wasm` of the
    # export call.
    store = StoreContext(context)
    try:
        entry = _FUNCS.get(data or 0)
        plan = _find_plan(entry.plans, ty, nargs, nresults)
        result = entry.func(store, *plan.lift_args(args or 0))
        if plan.result is None:
            assert result is None  # as wasmtime-py's func_impl
        else:
            plan.result.lower(store, result, results or 0)
        return 0
    except WasmtimeError as exc:
        error = exc
    except Exception as exc:
        _enter.LAST_EXCEPTION = exc
        error = WasmtimeError("python exception")
        # `exc`'s traceback keeps this frame: the trap must not point back at `exc` (its
        # implicit context), or the cycle keeps the store's memory until a full collection.
        error.__context__ = None
    finally:
        store._invalidate()
    trap = ctypes.cast(error._consume(), c_void_p).value
    del error
    return trap


def _finalize(data: Optional[int]) -> None:
    if _FUNCS:
        _FUNCS.deallocate(data or 0)


# Module-level so the C function pointers outlive every linker that holds them.
_TRAMPOLINE = _CALLBACK(_trampoline)
_FINALIZE = _FINALIZER(_finalize)


def add_fast_func(instance: LinkerInstance, name: str, func: Callable[..., Any]) -> None:
    """Define `name` in `instance` like `LinkerInstance.add_func(name, func)`.

    `func(store_context, *args)` receives and returns the same Python values as with
    `add_func`, and a Python exception it raises propagates out of the guest's export
    call the same way; the conversion plan is built on the first call.
    """
    instance._assert_not_locked()
    raw = name.encode("utf-8")
    idx = _FUNCS.allocate(_FastFunc(func))
    err = _add_func(instance.ptr(), raw, len(raw), _TRAMPOLINE, idx, _FINALIZE)
    if err:
        raise WasmtimeError._from_ptr(err)


# --------------------------------------------------------------------- export calls

# Export plans by parameter count (functions come and go with instances, so they are
# matched by signature, like imports).
_EXPORT_PLANS: Dict[int, List[_Plan]] = {}


def fast_call(func: Func, store: Storelike, *params: Any) -> Any:
    """`func(store, *params)` (`Func.__call__`) with cached conversion plans.

    Call `func.post_return(store)` afterwards as with `Func.__call__`.
    """
    context = store._context()
    ty = ffi.wasmtime_component_func_type(byref(func._func), context)
    try:
        nparams = ffi.wasmtime_component_func_type_param_count(ty)
        plans = _EXPORT_PLANS.setdefault(nparams, [])
        plan = _find_plan(plans, ctypes.cast(ty, c_void_p).value or 0, nparams, None)
    finally:
        ffi.wasmtime_component_func_type_delete(ty)
    if len(params) != nparams:
        raise TypeError("wrong number of parameters provided: given %s, expected %s" %
                        (len(params), nparams))

    # Zeroed memory is a run of `bool` vals, the state lowering starts from.
    args = (c_char * (_VAL * max(nparams, 1)))()
    base = addressof(args)
    result_space = (c_char * _VAL)()
    result_addr = addressof(result_space)
    nresults = 0 if plan.result is None else 1
    try:
        for (lower, off), val in zip(plan.lowers, params):
            lower(store, val, base + off)

        def run() -> Any:
            return _func_call(byref(func._func), context, base, nparams, result_addr, nresults)

        try:
            enter_wasm(run)
            return None if plan.result is None else plan.result.lift(result_addr)
        finally:
            # Lifting only read the result (wasmtime-py takes it apart while lifting
            # and leaks boxed variant payloads); drop it whole.
            _val_delete(result_addr)
    finally:
        # The call only borrowed the arguments; every slot holds a droppable value.
        for i in range(nparams):
            _val_delete(base + _VAL * i)
