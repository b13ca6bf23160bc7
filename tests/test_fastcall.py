"""tenantflow.fastcall against wasmtime-py's own conversions, through a real guest.

One componentize-py guest (source below) exports the tenantflow world and additionally
imports a `probe` interface with the value shapes the real WIT does not use. Its `run`
export performs the import calls the test describes (as JSON) and returns what each
call returned, so every case checks both directions: the Python values a host function
receives, and what the guest receives back from it. Each case runs once through
`LinkerInstance.add_func` and once through `add_fast_func`; both must match the
expectation (and so each other).
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import wasmtime
from wasmtime import component as cm
from wasmtime.component import _enter

from tenantflow import fastcall
from tenantflow.fastcall import add_fast_func, fast_call

REPO = Path(__file__).resolve().parent.parent
WIT = REPO / "guest_sdk" / "wit" / "tenantflow.wit"
CACHE_DIR = REPO / ".cache" / "test-components"
DURABLE = "tenantflow:workflow/durable@0.1.0"
PROBE = "tenantflow:workflow/probe@0.1.0"
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1

PROBE_WIT = """\
package tenantflow:workflow@0.1.0;

interface probe {
  use types.{error-info, backoff, step-config};

  flags perms { read, write, exec }

  variant shape {
    empty,
    num(u32),
    text(string),
    pair(tuple<u32, string>),
  }

  echo: func(s: string) -> string;
  inc: func(x: u32) -> u32;
  scalars: func(a: bool, b: s8, c: u8, d: s16, e: u16, f: s32, g: s64, h: f32, i: f64, j: char)
    -> tuple<bool, s8, u8, s16, u16, s32, s64, f32, f64, char>;
  lists: func(a: list<string>, b: list<u8>, c: list<error-info>)
    -> tuple<list<string>, list<u8>, list<error-info>>;
  results: func(a: result<string, u32>, b: result<_, string>, c: result) -> result<u64, error-info>;
  options: func(a: option<option<u32>>, b: option<backoff>) -> option<option<u32>>;
  shapes: func(v: shape) -> shape;
  perm: func(p: perms) -> perms;
  configs: func(c: list<step-config>) -> list<step-config>;
  maybe-config: func(c: option<step-config>) -> option<step-config>;
}

world probe-workflow {
  include workflow;
  import probe;
}
"""

GUEST_APP = '''\
import dataclasses
import enum
import json

import wit_world
from componentize_py_types import Err, Ok, Some
from wit_world.imports import durable, probe, types


def enc(v):
    """A guest value as JSON, with the generated class names kept."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, bytes):
        return {"bytes": v.hex()}
    if isinstance(v, (list, tuple)):
        return [enc(x) for x in v]
    if isinstance(v, dict):
        return {k: enc(x) for k, x in v.items()}
    if isinstance(v, enum.Flag):
        return {"flags": sorted(m.name.lower() for m in type(v) if m in v)}
    if isinstance(v, enum.Enum):
        return {"enum": v.name.lower()}
    if isinstance(v, Some):
        return {"some": enc(v.value)}
    if dataclasses.is_dataclass(v):
        out = {"type": type(v).__name__}
        for f in dataclasses.fields(v):
            out[f.name] = enc(getattr(v, f.name))
        return out
    raise TypeError(repr(v))


def step_config(d):
    r = d["retries"]
    policy = types.RetryPolicy(r["limit"], r["delay"], types.Backoff[r["backoff"].upper()])
    return types.StepConfig(policy, d["timeout"])


def attempt_result(d):
    if "ok" in d:
        return types.AttemptResult_Ok(d["ok"])
    e = d["err"]
    return types.AttemptResult_Err(types.AttemptError(e["name"], e["message"], e["retryable"]))


def result(d):
    return Ok(d["ok"]) if "ok" in d else Err(d["err"])


def shape(d):
    kind = d["kind"]
    if kind == "empty":
        return probe.Shape_Empty()
    if kind == "num":
        return probe.Shape_Num(d["v"])
    if kind == "text":
        return probe.Shape_Text(d["v"])
    return probe.Shape_Pair((d["v"][0], d["v"][1]))


def perms(names):
    out = probe.Perms(0)
    for n in names:
        out |= probe.Perms[n.upper()]
    return out


def call(fn, a):
    if fn == "begin-step":
        return durable.begin_step(a[0], step_config(a[1]))
    if fn == "end-attempt":
        return durable.end_attempt(a[0], attempt_result(a[1]))
    if fn == "start-step":
        return durable.start_step(a[0], a[1], a[2], types.Backoff[a[3].upper()], a[4])
    if fn == "idempotency-key":
        return durable.idempotency_key()
    if fn == "end-attempt-ok":
        return durable.end_attempt_ok(a[0], a[1])
    if fn == "sleep":
        return durable.sleep(a[0], a[1])
    if fn == "sleep-until":
        return durable.sleep_until(a[0], a[1])
    if fn == "wait-for-event":
        return durable.wait_for_event(a[0], a[1], a[2])
    if fn == "log":
        return durable.log(types.LogLevel[a[0].upper()], a[1])
    if fn == "recorded-steps":
        return durable.recorded_steps()
    if fn == "replayed":
        return durable.replayed(a[0])
    if fn == "echo":
        return probe.echo(a[0])
    if fn == "inc":
        return probe.inc(a[0])
    if fn == "scalars":
        return probe.scalars(*a)
    if fn == "lists":
        errors = [types.ErrorInfo(e["name"], e["message"]) for e in a[2]]
        return probe.lists(a[0], bytes.fromhex(a[1]), errors)
    if fn == "results":
        try:
            return {"ok": probe.results(result(a[0]), result(a[1]), result(a[2]))}
        except Err as e:
            return {"err": enc(e.value)}
    if fn == "options":
        inner = None if a[0] is None else Some(a[0]["some"])
        return probe.options(inner, None if a[1] is None else types.Backoff[a[1].upper()])
    if fn == "shapes":
        return probe.shapes(shape(a[0]))
    if fn == "perm":
        return probe.perm(perms(a[0]))
    if fn == "configs":
        return probe.configs([step_config(c) for c in a[0]])
    if fn == "maybe-config":
        return probe.maybe_config(None if a[0] is None else step_config(a[0]))
    raise ValueError(fn)


class WitWorld(wit_world.WitWorld):
    def workflows(self):
        return ["calls", "catch"]

    def run(self, workflow, event):
        if workflow == "calls":
            out = [enc(call(fn, args)) for fn, args in json.loads(event.payload)]
            return types.Outcome_Complete(json.dumps(out))
        if workflow == "catch":
            try:
                durable.sleep("boom", 1)
            except BaseException as e:  # a host exception must not arrive here
                return types.Outcome_Complete("caught " + type(e).__name__)
            return types.Outcome_Complete("returned")
        return types.Outcome_Failed(types.ErrorInfo("unknown-workflow", workflow))
'''

COMPONENTIZE_PY = [sys.executable, "-c", "import sys; from componentize_py import script; sys.exit(script())"]


def build_guest(workdir: Path) -> Path:
    """The compiled guest, cached by a digest of everything that goes into it."""
    digest = hashlib.sha256()
    for part in (GUEST_APP, PROBE_WIT, WIT.read_text(), version("componentize-py")):
        digest.update(part.encode() + b"\0")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    target = CACHE_DIR / f"{digest.hexdigest()}.wasm"
    if target.is_file():
        return target
    with open(CACHE_DIR / f"{digest.hexdigest()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():  # built by another session while we waited
            return target
        wit_dir, app_dir = workdir / "wit", workdir / "app"
        wit_dir.mkdir()
        app_dir.mkdir()
        (wit_dir / "tenantflow.wit").write_text(WIT.read_text())
        (wit_dir / "probe.wit").write_text(PROBE_WIT)
        (app_dir / "app.py").write_text(GUEST_APP)
        partial = workdir / "app.wasm"
        built = subprocess.run(
            [*COMPONENTIZE_PY, "-d", str(wit_dir), "-w", "probe-workflow", "componentize",
             "-p", str(app_dir), "app", "-o", str(partial)],
            capture_output=True, text=True,
        )
        if built.returncode:
            raise RuntimeError(f"componentize-py failed:\n{built.stdout}{built.stderr}")
        partial.replace(target)
    return target


@pytest.fixture(scope="module")
def engine() -> wasmtime.Engine:
    return wasmtime.Engine()


@pytest.fixture(scope="module")
def component(engine: wasmtime.Engine, tmp_path_factory: pytest.TempPathFactory) -> cm.Component:
    return cm.Component.from_file(engine, str(build_guest(tmp_path_factory.mktemp("guest"))))


@pytest.fixture(autouse=True)
def _no_pending_exception() -> Iterator[None]:
    """Every host exception was handed to its export call (none left in wasmtime-py's slot)."""
    yield
    assert _enter.LAST_EXCEPTION is None


# ------------------------------------------------------------------------------ host

Adder = Callable[[cm.LinkerInstance, str, Callable[..., Any]], None]
ADDERS: dict[str, Adder] = {
    "add_func": lambda inst, name, func: inst.add_func(name, func),
    "add_fast_func": add_fast_func,
}
IMPORTS = {
    DURABLE: ["begin-step", "end-attempt", "start-step", "idempotency-key", "end-attempt-ok", "sleep", "sleep-until", "wait-for-event", "log", "recorded-steps", "replayed"],
    PROBE: ["echo", "inc", "scalars", "lists", "results", "options", "shapes", "perm", "configs", "maybe-config"],
    # Part of the world, not exercised here: defined so the guest links.
    "tenantflow:workflow/children@0.1.0": ["start", "join", "status", "send-event"],
    "tenantflow:workflow/capabilities@0.1.0": ["fetch", "secret"],
}


class Host:
    """Host functions that record their arguments and answer as configured: a value, a
    function of the arguments, or an exception to raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.answers: dict[str, Any] = {}

    def func(self, name: str) -> Callable[..., Any]:
        def host_func(store: Any, *args: Any) -> Any:
            assert isinstance(store, wasmtime.StoreContext)
            self.calls.append((name, args))
            answer = self.answers.get(name)
            if isinstance(answer, BaseException):
                raise answer
            return answer(*args) if callable(answer) else answer

        return host_func

    def linker(self, engine: wasmtime.Engine, add: Adder) -> cm.Linker:
        linker = cm.Linker(engine)
        linker.add_wasip2()
        with linker.root() as root:
            for interface, names in IMPORTS.items():
                with root.add_instance(interface) as inst:
                    for name in names:
                        add(inst, name, self.func(name))
        return linker


def record(**fields: Any) -> cm.Record:
    """A wasmtime-py record; `_` in keyword names stands for the WIT `-`."""
    rec = cm.Record()
    for name, value in fields.items():
        setattr(rec, name.replace("_", "-"), value)
    return rec


def norm(v: Any) -> Any:
    """A comparable form that keeps the Python types apart (True vs 1, tuple vs list,
    bytes vs list, Variant vs its bare payload)."""
    if isinstance(v, cm.Record):
        return ("Record", {k: norm(x) for k, x in sorted(vars(v).items())})
    if isinstance(v, cm.Variant):
        return ("Variant", v.tag, norm(v.payload))
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, tuple):
        return ("tuple", [norm(x) for x in v])
    if isinstance(v, list):
        return [norm(x) for x in v]
    if isinstance(v, set):
        return ("set", sorted(v))
    if isinstance(v, (bytes, int, float, str)) or v is None:
        return (type(v).__name__, v)
    raise TypeError(f"unexpected host value {v!r}")


def event(payload: str, workflow: str = "calls") -> cm.Record:
    return record(payload=payload, instance_id="inst-1", workflow=workflow, created_at=1_700_000_000_000)


Call = Callable[..., Any]  # (func, store, *params) -> result
CALLERS: dict[str, Call] = {"Func.__call__": lambda f, s, *a: f(s, *a), "fast_call": fast_call}


def run_guest(engine: wasmtime.Engine, component: cm.Component, linker: cm.Linker, workflow: str,
              payload: str, call: Call = CALLERS["Func.__call__"]) -> Any:
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    instance = linker.instantiate(store, component)
    run = instance.get_func(store, "run")
    assert run is not None
    out = call(run, store, workflow, event(payload, workflow))
    run.post_return(store)
    return out


def run_calls_on(engine: wasmtime.Engine, component: cm.Component, linker: cm.Linker,
                 calls: list[tuple[str, list[Any]]]) -> Any:
    """Have the guest make `calls` (function, JSON args); what each call returned, as JSON."""
    out = run_guest(engine, component, linker, "calls", json.dumps(calls))
    assert isinstance(out, str), out  # outcome is untagged: complete(json) lifts to str
    return json.loads(out)


def run_calls(engine: wasmtime.Engine, component: cm.Component, host: Host, add: Adder,
              calls: list[tuple[str, list[Any]]]) -> Any:
    return run_calls_on(engine, component, host.linker(engine, add), calls)


# ---------------------------------------------------------------------- value shapes


@dataclass
class Case:
    fn: str
    guest_args: list[Any]  # JSON the guest turns into its typed arguments
    host_args: tuple[Any, ...]  # what the host function must receive
    answer: Any  # what the host function returns (or a function of its arguments)
    guest_result: Any  # what the guest must receive, as its JSON encoding


def config(limit: int = 3, delay: int = 1000, backoff: str = "exponential", timeout: int = 60_000) -> dict[str, Any]:
    return {"retries": {"limit": limit, "delay": delay, "backoff": backoff}, "timeout": timeout}


def config_record(limit: int = 3, delay: int = 1000, backoff: str = "exponential",
                  timeout: int = 60_000) -> cm.Record:
    return record(retries=record(limit=limit, delay=delay, backoff=backoff), timeout=timeout)


def config_json(limit: int = 3, delay: int = 1000, backoff: str = "exponential", timeout: int = 60_000) -> dict[str, Any]:
    """A step-config as the guest encodes it."""
    policy = {"type": "RetryPolicy", "limit": limit, "delay": delay, "backoff": {"enum": backoff}}
    return {"type": "StepConfig", "retries": policy, "timeout": timeout}


def error_info(name: str, message: str) -> dict[str, Any]:
    return {"type": "ErrorInfo", "name": name, "message": message}


def done(value: str) -> dict[str, Any]:
    return {"type": "StepState_Done", "value": value}


def echo_args(*args: Any) -> tuple[Any, ...]:
    return args


UNICODE = "ステップ 🚀 naïve ✓"

CASES: dict[str, Case] = {
    # begin-step(name, step-config) -> step-state: nested records and an enum in, a tagged
    # variant with record payloads out.
    "begin-step/done": Case(
        "begin-step", ["charge-card", config()], ("charge-card", config_record()),
        cm.Variant("done", '{"charged": 1250}'), done('{"charged": 1250}')),
    "begin-step/done-empty": Case(
        "begin-step", ["", config(backoff="constant", limit=0, delay=0, timeout=0)],
        ("", config_record(backoff="constant", limit=0, delay=0, timeout=0)),
        cm.Variant("done", ""), done("")),
    "begin-step/failed": Case(
        "begin-step", [UNICODE, config(backoff="linear", limit=U32_MAX, delay=U64_MAX, timeout=U64_MAX)],
        (UNICODE, config_record(backoff="linear", limit=U32_MAX, delay=U64_MAX, timeout=U64_MAX)),
        cm.Variant("failed", record(name="ValueError", message="bad ✗")),
        {"type": "StepState_Failed", "value": error_info("ValueError", "bad ✗")}),
    "begin-step/execute": Case(
        "begin-step", ["s", config()], ("s", config_record()),
        cm.Variant("execute", record(attempt=U32_MAX, idempotency_key="wf-1/s/1")),
        {"type": "StepState_Execute",
         "value": {"type": "StepAttempt", "attempt": U32_MAX, "idempotency_key": "wf-1/s/1"}}),
    "begin-step/execute-any-object": Case(  # like wasmtime-py, records are read with getattr
        "begin-step", ["s", config()], ("s", config_record()),
        cm.Variant("execute", SimpleNamespace(**{"attempt": 2, "idempotency-key": ""})),
        {"type": "StepState_Execute", "value": {"type": "StepAttempt", "attempt": 2, "idempotency_key": ""}}),
    # end-attempt(name, attempt-result) -> step-state: attempt-result is untagged (str | record).
    "end-attempt/ok": Case(
        "end-attempt", ["s", {"ok": '{"r": [1, 2]}'}], ("s", '{"r": [1, 2]}'),
        cm.Variant("done", '{"r": [1, 2]}'), done('{"r": [1, 2]}')),
    "end-attempt/ok-empty": Case(
        "end-attempt", ["s", {"ok": ""}], ("s", ""), cm.Variant("done", UNICODE), done(UNICODE)),
    "end-attempt/err-retryable": Case(
        "end-attempt", ["s", {"err": {"name": "Timeout", "message": UNICODE, "retryable": True}}],
        ("s", record(name="Timeout", message=UNICODE, retryable=True)),
        cm.Variant("execute", record(attempt=2, idempotency_key="k")),
        {"type": "StepState_Execute", "value": {"type": "StepAttempt", "attempt": 2, "idempotency_key": "k"}}),
    "end-attempt/err-final": Case(
        "end-attempt", ["s", {"err": {"name": "NonRetryableError", "message": "", "retryable": False}}],
        ("s", record(name="NonRetryableError", message="", retryable=False)),
        cm.Variant("failed", record(name="NonRetryableError", message="")),
        {"type": "StepState_Failed", "value": error_info("NonRetryableError", "")}),
    # start-step(name, u32, u64, backoff, u64) -> step-start: flat scalars and an enum in;
    # out an untagged variant (string | record | u32 payloads), so bare payloads cross.
    "start-step/done": Case(
        "start-step", ["charge-card", 3, 1000, "exponential", 60_000], ("charge-card", 3, 1000, "exponential", 60_000),
        '{"charged": 1250}', {"type": "StepStart_Done", "value": '{"charged": 1250}'}),
    "start-step/failed": Case(
        "start-step", [UNICODE, U32_MAX, U64_MAX, "linear", U64_MAX], (UNICODE, U32_MAX, U64_MAX, "linear", U64_MAX),
        record(name="ValueError", message="bad ✗"), {"type": "StepStart_Failed", "value": error_info("ValueError", "bad ✗")}),
    "start-step/execute": Case(
        "start-step", ["", 0, 0, "constant", 0], ("", 0, 0, "constant", 0), U32_MAX,
        {"type": "StepStart_Execute", "value": U32_MAX}),
    "idempotency-key": Case("idempotency-key", [], (), "0123456789abcdef" * 2, "0123456789abcdef" * 2),
    # end-attempt-ok(name, json) -> option<error-info>: untagged (None | record).
    "end-attempt-ok/recorded": Case("end-attempt-ok", ["s", '{"r": [1, 2]}'], ("s", '{"r": [1, 2]}'), None, None),
    "end-attempt-ok/too-large": Case(
        "end-attempt-ok", [UNICODE, ""], (UNICODE, ""), record(name="StepResultTooLarge", message=UNICODE),
        error_info("StepResultTooLarge", UNICODE)),
    # sleep / sleep-until(name, u64): no result.
    "sleep/zero": Case("sleep", ["nap", 0], ("nap", 0), None, None),
    "sleep/u64-max": Case("sleep", [UNICODE, U64_MAX], (UNICODE, U64_MAX), None, None),
    "sleep-until": Case("sleep-until", ["wake", 1_700_000_123_456], ("wake", 1_700_000_123_456), None, None),
    # wait-for-event(name, event-type, option<u64>) -> wait-result: the option is untagged
    # (None | int), and so is wait-result (record | None for timed-out).
    "wait-for-event/timed-out": Case(
        "wait-for-event", ["w", "approval", None], ("w", "approval", None), None,
        {"type": "WaitResult_TimedOut"}),
    "wait-for-event/received": Case(
        "wait-for-event", ["w", "approval", 86_400_000], ("w", "approval", 86_400_000),
        record(event_type="approval", payload='{"ok": true}', timestamp=U64_MAX),
        {"type": "WaitResult_Received",
         "value": {"type": "Event", "event_type": "approval", "payload": '{"ok": true}', "timestamp": U64_MAX}}),
    "wait-for-event/edges": Case(
        "wait-for-event", ["", UNICODE, 0], ("", UNICODE, 0),
        record(event_type="", payload="", timestamp=0),
        {"type": "WaitResult_Received",
         "value": {"type": "Event", "event_type": "", "payload": "", "timestamp": 0}}),
    "wait-for-event/u64-max": Case(
        "wait-for-event", ["w", "e", U64_MAX], ("w", "e", U64_MAX), None, {"type": "WaitResult_TimedOut"}),
    # log(log-level, string): each enum case.
    **{f"log/{level}": Case("log", [level, f"{level} ✓"], (level, f"{level} ✓"), None, None)
       for level in ("debug", "info", "warning", "error")},
    "recorded-steps": Case("recorded-steps", [], (), lambda: '[["s",true,{"n":1}]]', '[["s",true,{"n":1}]]'),
    "recorded-steps/unicode": Case("recorded-steps", [], (), lambda: UNICODE, UNICODE),
    "replayed": Case("replayed", [7], (7,), None, None),
    "replayed/u32-max": Case("replayed", [U32_MAX], (U32_MAX,), None, None),
    # probe: shapes the tenantflow WIT does not use (yet).
    "echo/unicode": Case("echo", [UNICODE], (UNICODE,), lambda s: s + "!", UNICODE + "!"),
    "echo/empty": Case("echo", [""], ("",), lambda s: s, ""),
    "echo/nul": Case("echo", ["a\x00b"], ("a\x00b",), lambda s: s + "\x00", "a\x00b\x00"),
    "echo/long": Case("echo", ["x" * 100_000], ("x" * 100_000,), lambda s: s[::-1], "x" * 100_000),
    "inc": Case("inc", [41], (41,), lambda x: x + 1, 42),
    "inc/wraps": Case("inc", [U32_MAX], (U32_MAX,), lambda x: x + 1, 0),  # ctypes truncation
    "scalars/min": Case(
        "scalars", [True, -128, 0, -32768, 0, -(2**31), -(2**63), 1.5, -2.25, "é"],
        (True, -128, 0, -32768, 0, -(2**31), -(2**63), 1.5, -2.25, "é"), echo_args,
        [True, -128, 0, -32768, 0, -(2**31), -(2**63), 1.5, -2.25, "é"]),
    "scalars/max": Case(
        "scalars", [False, 127, 255, 32767, 65535, 2**31 - 1, 2**63 - 1, -0.5, 1e300, "🚀"],
        (False, 127, 255, 32767, 65535, 2**31 - 1, 2**63 - 1, -0.5, 1e300, "🚀"), echo_args,
        [False, 127, 255, 32767, 65535, 2**31 - 1, 2**63 - 1, -0.5, 1e300, "🚀"]),
    "lists": Case(
        "lists", [["a", "", UNICODE], "00ff10", [{"name": "n", "message": "m"}, {"name": "", "message": ""}]],
        (["a", "", UNICODE], b"\x00\xff\x10", [record(name="n", message="m"), record(name="", message="")]),
        echo_args, [["a", "", UNICODE], {"bytes": "00ff10"}, [error_info("n", "m"), error_info("", "")]]),
    "lists/empty": Case("lists", [[], "", []], ([], b"", []), echo_args, [[], {"bytes": ""}, []]),
    "results/ok": Case(
        "results", [{"ok": "x"}, {"ok": None}, {"ok": None}], ("x", None, cm.Variant("ok")), U64_MAX,
        {"ok": U64_MAX}),
    "results/err": Case(
        "results", [{"err": 7}, {"err": UNICODE}, {"err": None}], (7, UNICODE, cm.Variant("err")),
        record(name="E", message="m"), {"err": error_info("E", "m")}),
    "options/none": Case("options", [None, None], (cm.Variant("none"), None), lambda a, b: a, None),
    "options/some-none": Case(
        "options", [{"some": None}, "linear"], (cm.Variant("some", None), "linear"), lambda a, b: a,
        {"some": None}),
    "options/some-some": Case(
        "options", [{"some": U32_MAX}, "constant"], (cm.Variant("some", U32_MAX), "constant"),
        lambda a, b: a, {"some": U32_MAX}),
    "shapes/empty": Case("shapes", [{"kind": "empty"}], (None,), lambda v: v, {"type": "Shape_Empty"}),
    "shapes/num": Case("shapes", [{"kind": "num", "v": 9}], (9,), lambda v: v, {"type": "Shape_Num", "value": 9}),
    "shapes/text": Case(
        "shapes", [{"kind": "text", "v": UNICODE}], (UNICODE,), lambda v: v, {"type": "Shape_Text", "value": UNICODE}),
    "shapes/pair": Case(
        "shapes", [{"kind": "pair", "v": [1, "x"]}], ((1, "x"),), lambda v: v,
        {"type": "Shape_Pair", "value": [1, "x"]}),
    # flags are not specialised: wasmtime-py's own converters run inside the fast path.
    "perm/fallback": Case("perm", [["read", "exec"]], ({"read", "exec"},), lambda p: p, {"flags": ["exec", "read"]}),
    "perm/empty": Case("perm", [[]], (set(),), lambda p: p, {"flags": []}),
    # Nested records as results: in a list, and as an option payload.
    "configs": Case(
        "configs", [[config(), config(backoff="linear", limit=U32_MAX, timeout=U64_MAX)]],
        ([config_record(), config_record(backoff="linear", limit=U32_MAX, timeout=U64_MAX)],), lambda c: c[::-1],
        [config_json(backoff="linear", limit=U32_MAX, timeout=U64_MAX), config_json()]),
    "configs/empty": Case("configs", [[]], ([],), lambda c: c, []),
    "maybe-config/none": Case("maybe-config", [None], (None,), lambda c: c, None),
    "maybe-config/some": Case(
        "maybe-config", [config(backoff="constant")], (config_record(backoff="constant"),), lambda c: c,
        config_json(backoff="constant")),
}


@pytest.mark.parametrize("adder", ADDERS)
@pytest.mark.parametrize("name", CASES)
def test_value_round_trip(engine: wasmtime.Engine, component: cm.Component, name: str, adder: str) -> None:
    case = CASES[name]
    host = Host()
    host.answers[case.fn] = case.answer
    out = run_calls(engine, component, host, ADDERS[adder], [(case.fn, case.guest_args)])
    assert [(fn, [norm(a) for a in args]) for fn, args in host.calls] == [
        (case.fn, [norm(a) for a in case.host_args])
    ]
    assert out == [case.guest_result]


def test_many_calls_agree_with_stock(engine: wasmtime.Engine, component: cm.Component) -> None:
    """All cases in one guest run (one plan per function, reused across calls)."""
    observed = {}
    for adder, add in ADDERS.items():
        host = Host()
        calls = []
        for case in CASES.values():
            if case.fn != "perm":  # a function answers one way per run
                host.answers[case.fn] = case.answer
                calls.append((case.fn, case.guest_args))
        out = run_calls(engine, component, host, add, calls * 3)
        observed[adder] = (out, [(fn, [norm(a) for a in args]) for fn, args in host.calls])
    assert observed["add_fast_func"] == observed["add_func"]


# ------------------------------------------------------------------ errors and traps


class Unwind(Exception):
    """Stands for the engine's own control-flow exceptions (e.g. unwinding a waiting guest)."""


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("adder", ADDERS)
@pytest.mark.parametrize("exc", [RuntimeError("boom"), Unwind("wait")], ids=["RuntimeError", "Unwind"])
def test_host_exception_propagates_as_same_object(
    engine: wasmtime.Engine, component: cm.Component, adder: str, caller: str, exc: Exception
) -> None:
    host = Host()
    host.answers["sleep"] = exc
    linker = host.linker(engine, ADDERS[adder])
    # The guest's `except BaseException` would return "caught ..."; the trap skips it.
    with pytest.raises(type(exc)) as excinfo:
        run_guest(engine, component, linker, "catch", "", CALLERS[caller])
    assert excinfo.value is exc
    assert host.calls == [("sleep", ("boom", 1))]

    host.answers["sleep"] = None  # the same linker keeps working afterwards
    assert run_guest(engine, component, linker, "catch", "", CALLERS[caller]) == "returned"


# Host answers that wasmtime-py refuses to convert: the export call must fail with the same
# exception type and message either way.
BAD_ANSWERS: dict[str, tuple[str, list[Any], Any]] = {
    "not-a-Variant": ("begin-step", ["s", config()], "done"),
    "unknown-case": ("begin-step", ["s", config()], cm.Variant("skipped", "x")),
    "missing-field": ("begin-step", ["s", config()], cm.Variant("execute", record(attempt=1))),
    "payload-type": ("begin-step", ["s", config()], cm.Variant("done", 5)),
    "string-type": ("echo", ["x"], b"x"),
    "string-surrogate": ("echo", ["x"], "\ud800"),
    "int-type": ("inc", [1], 1.0),
    "bool-type": ("scalars", [True, 0, 0, 0, 0, 0, 0, 0.0, 0.0, "c"], (1, 0, 0, 0, 0, 0, 0, 0.0, 0.0, "c")),
    "char-type": ("scalars", [True, 0, 0, 0, 0, 0, 0, 0.0, 0.0, "c"], (True, 0, 0, 0, 0, 0, 0, 0.0, 0.0, "cc")),
    "float-type": ("scalars", [True, 0, 0, 0, 0, 0, 0, 0.0, 0.0, "c"], (True, 0, 0, 0, 0, 0, 0, 0, 0.0, "c")),
    "tuple-length": ("scalars", [True, 0, 0, 0, 0, 0, 0, 0.0, 0.0, "c"], (True,)),
    "tuple-type": ("lists", [[], "", []], [[], b"", []]),
    "bytes-type": ("lists", [[], "", []], ([], [1], [])),
    "list-type": ("lists", [[], "", []], ((), b"", [])),
    "untagged-no-case": ("wait-for-event", ["w", "e", None], 5),
    "option-no-case": ("options", [None, None], 5),
    "result-no-case": ("results", [{"ok": "x"}, {"ok": None}, {"ok": None}], "x"),
    "nested-field-type": ("begin-step", ["s", config()], cm.Variant("failed", record(name=1, message="m"))),
    "result-for-no-result": ("sleep", ["s", 1], 1),
    "flags-type": ("perm", [[]], ["read"]),
}


@pytest.mark.parametrize("name", BAD_ANSWERS)
def test_bad_answers_fail_like_stock(engine: wasmtime.Engine, component: cm.Component, name: str) -> None:
    fn, guest_args, answer = BAD_ANSWERS[name]
    errors = {}
    for adder, add in ADDERS.items():
        host = Host()
        host.answers[fn] = answer
        with pytest.raises(Exception) as excinfo:
            run_calls(engine, component, host, add, [(fn, guest_args)])
        errors[adder] = (type(excinfo.value), str(excinfo.value))
    assert errors["add_fast_func"] == errors["add_func"]


# Answers wasmtime-py accepts although they are off-type (ctypes truncates integers and
# rounds floats): the guest must see the same values either way.
LENIENT_ANSWERS: dict[str, tuple[str, list[Any], Any]] = {
    "u32-negative": ("inc", [1], -1),
    "u32-bool": ("inc", [1], True),
    "s8-overflow": ("scalars", [True, 0, 0, 0, 0, 0, 0, 0.0, 0.0, "c"], (True, 200, 300, 0, -1, 2**40, 2**64, 0.0, 0.0, "c")),
    "f32-overflow": ("scalars", [True, 0, 0, 0, 0, 0, 0, 0.0, 0.0, "c"], (True, 0, 0, 0, 0, 0, 0, -1e300, 0.1, "c")),
}


@pytest.mark.parametrize("name", LENIENT_ANSWERS)
def test_lenient_answers_like_stock(engine: wasmtime.Engine, component: cm.Component, name: str) -> None:
    fn, guest_args, answer = LENIENT_ANSWERS[name]
    outs = {}
    for adder, add in ADDERS.items():
        host = Host()
        host.answers[fn] = answer
        outs[adder] = run_calls(engine, component, host, add, [(fn, guest_args)])
    assert outs["add_fast_func"] == outs["add_func"]


# ---------------------------------------------------------------------- export calls


@pytest.mark.parametrize("adder", ADDERS)
def test_fast_call_matches_func_call(engine: wasmtime.Engine, component: cm.Component, adder: str) -> None:
    host = Host()
    host.answers.update({"begin-step": cm.Variant("done", UNICODE), "echo": lambda s: s})
    linker = host.linker(engine, ADDERS[adder])
    calls = json.dumps([("begin-step", ["s", config()]), ("echo", [UNICODE])])
    outs = {name: run_guest(engine, component, linker, "calls", calls, call) for name, call in CALLERS.items()}
    assert outs["fast_call"] == outs["Func.__call__"] == json.dumps([done(UNICODE), UNICODE])

    # outcome.failed (a record, untagged) and workflows() -> list<string>.
    failed = {name: run_guest(engine, component, linker, "nope", "", call) for name, call in CALLERS.items()}
    assert norm(failed["fast_call"]) == norm(failed["Func.__call__"]) == norm(
        record(name="unknown-workflow", message="nope"))
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    workflows = linker.instantiate(store, component).get_func(store, "workflows")
    assert workflows is not None
    assert fast_call(workflows, store) == workflows(store) == ["calls", "catch"]
    with pytest.raises(TypeError, match="wrong number of parameters provided: given 1, expected 0"):
        fast_call(workflows, store, "extra")


# -------------------------------------------------------------------------- plans


def test_plans_are_per_signature(engine: wasmtime.Engine, component: cm.Component) -> None:
    """A plan is reused only for an equal signature: a registered function can be imported
    by components that disagree on its type."""
    funcs = {name: (fty, ctypes.cast(fty.ptr(), ctypes.c_void_p).value or 0, len(fty.params)) for name, fty in _import_types(engine, component).items()}

    def nresults(name: str) -> int:
        return 0 if funcs[name][0].result is None else 1

    plans = {name: fastcall._find_plan([], ty, nparams, nresults(name)) for name, (_, ty, nparams) in funcs.items()}
    same_signature = {
        frozenset({"sleep", "sleep-until"}),  # (string, u64), no result
        frozenset({"idempotency-key", "recorded-steps"}),  # () -> string
    }
    for a, plan in plans.items():
        for b, (_, ty, nparams) in funcs.items():
            expected = a == b or frozenset({a, b}) in same_signature
            assert plan.signature.matches(ty, nparams, nresults(b)) is expected, (a, b)
            assert plan.signature.matches(ty, nparams, None) is expected, (a, b)  # as export calls check


def test_plan_built_once_per_function(engine: wasmtime.Engine, component: cm.Component,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[int] = []
    plan_init = fastcall._Plan.__init__

    def counting_init(self: Any, *args: Any) -> None:
        built.append(1)
        plan_init(self, *args)

    monkeypatch.setattr(fastcall._Plan, "__init__", counting_init)
    host = Host()
    host.answers.update({"begin-step": cm.Variant("done", "1"), "echo": lambda s: s, "sleep": None})
    calls: list[tuple[str, list[Any]]] = [("begin-step", ["s", config()]), ("echo", ["x"]), ("sleep", ["s", 1])] * 20
    linker = host.linker(engine, add_fast_func)
    for _ in range(2):  # plans belong to the registered function, not to an instance
        assert len(run_calls_on(engine, component, linker, calls)) == 60
    assert len(built) == 3


def _import_types(engine: wasmtime.Engine, component: cm.Component) -> dict[str, cm.FuncType]:
    imports = component.type.imports(engine)
    funcs = {}
    for interface, names in IMPORTS.items():
        instance_type = imports[interface].ty
        assert isinstance(instance_type, cm.ComponentInstanceType)
        exports = instance_type.exports(engine)
        for name in names:
            fty = exports[name].ty
            assert isinstance(fty, cm.FuncType)
            funcs[name] = fty
    return funcs


def _addr(fty: cm.FuncType) -> int:
    return ctypes.cast(fty.ptr(), ctypes.c_void_p).value or 0


def _count_full_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the compound types compared past the probe (`_same_boxed` calls)."""
    counted: list[int] = []
    same_boxed = fastcall._same_boxed

    def counting(got: int, kind: int, ref: int) -> bool:
        counted.append(kind)
        return same_boxed(got, kind, ref)

    monkeypatch.setattr(fastcall, "_same_boxed", counting)
    return counted


def test_probe_recognises_the_same_type(engine: wasmtime.Engine, component: cm.Component,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same function type, read again, is recognised by its parameter name's address."""
    first, again = _import_types(engine, component), _import_types(engine, component)
    plans = {name: fastcall._find_plan([], _addr(fty), len(fty.params), int(fty.result is not None))
             for name, fty in first.items()}
    assert [name for name, plan in plans.items() if plan.signature.probe is None] == ["idempotency-key", "recorded-steps", "perm"]
    full = _count_full_checks(monkeypatch)
    for name, plan in plans.items():
        fty = again[name]
        assert plan.signature.matches(_addr(fty), len(fty.params), int(fty.result is not None)), name
    assert len(full) == 2  # only perm's flags (in and out) were compared in full


def test_probe_misses_fall_back_to_the_full_check(engine: wasmtime.Engine, component: cm.Component,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Another component (its own ComponentTypes) with the same signatures: the probe misses,
    the full check still finds the plan; a different signature still is none."""
    other = cm.Component.deserialize(engine, component.serialize())
    mine, theirs = _import_types(engine, component), _import_types(engine, other)
    plan = fastcall._find_plan([], _addr(mine["begin-step"]), 2, 1)
    full = _count_full_checks(monkeypatch)
    assert plan.signature.matches(_addr(theirs["begin-step"]), 2, 1)
    assert len(full) == 2  # step-config, step-state
    assert not plan.signature.matches(_addr(theirs["end-attempt"]), 2, 1)
