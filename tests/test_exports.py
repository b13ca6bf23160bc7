"""`ExportCall` (types read once per component) answers exactly as wasmtime-py's own
`Func.__call__`, on instances in other stores than the one it was built from."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import wasmtime
from enginekit import ARTIFACTS, component
from wasmtime import component as wc

from tenantflow.executor import build_linker, record
from tenantflow.exports import ExportCall, ExportCalls
from tenantflow.isolates import IsolateCache
from tenantflow.registry import digest_of
from tenantflow.sandbox import EpochTicker, SandboxConfig, make_engine, new_store

Fresh = Any  # () -> (store, instance)


@pytest.fixture(scope="module")
def fresh() -> Iterator[tuple[str, Fresh]]:
    config = SandboxConfig()
    engine = make_engine(config, pool_slots=32)  # the tests keep their instances open
    ticker = EpochTicker(engine)
    wasm = component("basics").read_bytes()
    digest = digest_of(wasm)
    compiled = IsolateCache(engine, config, ARTIFACTS).get(digest, lambda: wasm)
    linker = build_linker(engine)
    stores: list[wasmtime.Store] = []

    def make() -> tuple[wasmtime.Store, wc.Instance]:
        store = new_store(engine, memory_bytes=256 * 1024 * 1024, check=lambda: None)
        stores.append(store)
        return store, linker.instantiate(store, compiled)

    yield digest, make
    for store in stores:
        store.close()
    ticker.stop()


def stock(store: wasmtime.Store, instance: wc.Instance, name: str, *params: Any) -> Any:
    func = instance.get_func(store, name)
    assert func is not None
    return func(store, *params)


def test_an_export_call_built_on_one_instance_serves_others(fresh: tuple[str, Fresh]) -> None:
    _, make = fresh
    first = make()
    call = ExportCall(*first, "workflows")
    expected = stock(*make(), "workflows")
    assert "Steps" in expected
    for _ in range(3):
        assert call(*make()) == expected


def test_run_lowers_the_event_record_and_lifts_the_outcome_variant_like_stock(fresh: tuple[str, Fresh]) -> None:
    _, make = fresh
    call = ExportCall(*make(), "run")
    event = record(payload="{}", instance_id="i-1", workflow="Nope", created_at=2**63)
    ours, theirs = call(*make(), "Nope", event), stock(*make(), "run", "Nope", event)
    assert type(ours) is type(theirs)
    assert (ours.name, ours.message) == (theirs.name, theirs.message)
    assert ours.name == "UnknownWorkflow" and "Steps" in ours.message


def test_missing_exports_and_wrong_arity_are_precise_errors(fresh: tuple[str, Fresh]) -> None:
    digest, make = fresh
    with pytest.raises(LookupError, match="does not export `nope`"):
        ExportCall(*make(), "nope")
    with pytest.raises(TypeError, match="takes 2 parameters, 1 given"):
        ExportCall(*make(), "run")(*make(), "Steps")



def test_export_calls_are_cached_per_component_object(fresh: tuple[str, Fresh]) -> None:
    digest, make = fresh
    calls = ExportCalls(max_entries=1)
    component = object()  # stands for the Component the instances were made from
    one = calls.get(digest, component, *make(), "workflows")  # type: ignore[arg-type]
    assert calls.get(digest, component, *make(), "workflows") is one
    reloaded = object()  # the same digest loaded again after an eviction: new index and types
    assert calls.get(digest, reloaded, *make(), "workflows") is not one  # type: ignore[arg-type]
    calls.forget(digest)
    assert calls.get(digest, reloaded, *make(), "workflows") is not one  # type: ignore[arg-type]
    calls.get("other", component, *make(), "workflows")  # type: ignore[arg-type]
    assert len(calls._entries) == 1  # bounded
