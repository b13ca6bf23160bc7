"""Per-call cost of host imports: wasmtime-py's `add_func` vs tenantflow's `add_fast_func`.

Builds (once, cached under .cache/test-components/) a componentize-py guest of the
tenantflow world plus a small `bench` interface, has the guest call one import N times
in a loop, and divides the CPU time of that export call by N: the figures include the
guest's bindings, wasmtime's lifting/lowering and the host-side conversion, i.e.
everything one replayed step pays. CPU time (of this thread, which runs the guest too)
rather than wall time keeps other processes on a busy machine out of the figures.

    python bench/fastcall_bench.py [--calls N] [--rounds R]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Dict, List

import wasmtime
from wasmtime import component as cm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runtime"))

from tenantflow import capabilities, children  # noqa: E402
from tenantflow.executor import CAPABILITIES, CHILDREN  # noqa: E402
from tenantflow.fastcall import add_fast_func  # noqa: E402

WIT = ROOT / "guest_sdk" / "wit" / "tenantflow.wit"
CACHE = ROOT / ".cache" / "test-components"
# componentize-py's console script, run by this interpreter (whose venv has it).
COMPONENTIZE_PY = [sys.executable, "-c",
                   "import sys; from componentize_py import script; sys.exit(script())"]

BENCH_WIT = """\
package tenantflow:workflow@0.1.0;

interface bench {
  echo: func(s: string) -> string;
  inc: func(x: u32) -> u32;
}

world bench-workflow {
  include workflow;
  import bench;
}
"""

GUEST = """\
import wit_world
from wit_world.imports import bench, durable, types

CONFIG = types.StepConfig(types.RetryPolicy(3, 1000, types.Backoff.EXPONENTIAL), 60000)


def loop(kind, n):
    if kind == "begin-step":
        for _ in range(n):
            durable.begin_step("step", CONFIG)
    elif kind == "start-step":
        backoff = types.Backoff.EXPONENTIAL
        for _ in range(n):
            durable.start_step("step", 3, 1000, backoff, 60000)
    elif kind == "end-attempt-ok":
        for _ in range(n):
            durable.end_attempt_ok("step", '{"charged": 1250, "currency": "EUR"}')
    elif kind == "echo":
        for _ in range(n):
            bench.echo("some step output")
    elif kind == "inc":
        for i in range(n):
            bench.inc(i)


class WitWorld(wit_world.WitWorld):
    def workflows(self):
        return ["begin-step", "start-step", "end-attempt-ok", "echo", "inc"]

    def run(self, workflow, event):
        loop(workflow, int(event.payload))
        return types.Outcome_Complete("")
"""


def build_component() -> Path:
    """componentize-py the bench guest, reusing a cached build of the same inputs."""
    inputs = GUEST + BENCH_WIT + WIT.read_text() + version("componentize-py")
    key = hashlib.sha256(inputs.encode()).hexdigest()
    out = CACHE / f"{key}.wasm"
    if out.exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wit_dir = Path(tmp, "wit")
        wit_dir.mkdir()
        shutil.copy(WIT, wit_dir / "tenantflow.wit")
        (wit_dir / "bench.wit").write_text(BENCH_WIT)
        app_dir = Path(tmp, "app")
        app_dir.mkdir()
        (app_dir / "app.py").write_text(GUEST)
        built = Path(tmp, "app.wasm")
        subprocess.run(
            [*COMPONENTIZE_PY, "-d", str(wit_dir), "-w", "bench-workflow", "componentize",
             "-p", str(app_dir), "app", "-o", str(built)],
            check=True, stdout=subprocess.DEVNULL,
        )
        shutil.move(str(built), out)
    return out


def record(**fields: Any) -> cm.Record:
    rec = cm.Record()
    for name, value in fields.items():
        setattr(rec, name.replace("_", "-"), value)
    return rec


RESULT = '{"charged": 1250, "currency": "EUR"}'
# What each step import answers, per case: the first protocol's tagged step-state (records),
# and start-step's untagged step-start (bare payloads); end-attempt-ok's none.
ANSWERS: Dict[str, Dict[str, Any]] = {
    "done": {"begin-step": cm.Variant("done", RESULT), "start-step": RESULT, "end-attempt-ok": None},
    "execute": {"begin-step": cm.Variant("execute", record(attempt=1, idempotency_key="0123456789abcdef" * 2)), "start-step": 1},
}
STEP_IMPORTS = ["begin-step", "start-step", "end-attempt-ok"]
UNTIMED = ["end-attempt", "idempotency-key", "sleep", "sleep-until", "wait-for-event", "log", "recorded-steps", "replayed"]


def answering(answer: Any) -> Callable[..., Any]:
    return lambda _store, *_args: answer


def untimed(_store: Any, *_args: Any) -> None:
    raise RuntimeError("not part of the benchmark")


def make_linker(engine: wasmtime.Engine, add: Callable[..., None], state: str) -> cm.Linker:
    answers = ANSWERS[state]
    linker = cm.Linker(engine)
    linker.add_wasip2()
    with linker.root() as root:
        with root.add_instance("tenantflow:workflow/durable@0.1.0") as durable:
            for name in STEP_IMPORTS:
                add(durable, name, answering(answers.get(name)))
            for name in UNTIMED:
                add(durable, name, untimed)
        with root.add_instance("tenantflow:workflow/bench@0.1.0") as bench:
            add(bench, "echo", lambda _store, s: s)
            add(bench, "inc", lambda _store, x: x + 1)
        for interface, functions in ((CHILDREN, children.HOST_FUNCTIONS), (CAPABILITIES, capabilities.HOST_FUNCTIONS)):
            with root.add_instance(interface) as other:  # imported by the world, never called here
                for name in functions:
                    add(other, name, untimed)
    return linker


class Instance:
    """One instance of the guest, linked by one linker."""

    def __init__(self, engine: wasmtime.Engine, component: cm.Component,
                 linker: cm.Linker) -> None:
        self.store = wasmtime.Store(engine)
        self.store.set_wasi(wasmtime.WasiConfig())
        run = linker.instantiate(self.store, component).get_func(self.store, "run")
        assert run is not None
        self.run = run

    def per_call_us(self, kind: str, calls: int) -> float:
        event = record(payload=str(calls), instance_id="bench", workflow=kind, created_at=0)
        start = time.thread_time()
        self.run(self.store, kind, event)
        elapsed = time.thread_time() - start
        self.run.post_return(self.store)
        return elapsed / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="import calls per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per case (median shown)")
    args = parser.parse_args()

    engine = wasmtime.Engine()
    component = cm.Component.from_file(engine, str(build_component()))
    adders: Dict[str, Callable[..., None]] = {
        "add_func": cm.LinkerInstance.add_func,
        "add_fast_func": add_fast_func,
    }
    cases = [
        ("begin-step -> done(string)", "begin-step", "done"),
        ("begin-step -> execute(record)", "begin-step", "execute"),
        ("start-step -> done(string)", "start-step", "done"),
        ("start-step -> execute(u32)", "start-step", "execute"),
        ("end-attempt-ok -> none", "end-attempt-ok", "done"),
        ("echo: string -> string", "echo", "done"),
        ("inc: u32 -> u32", "inc", "done"),
    ]
    print(f"per-call microseconds, median of {args.rounds} rounds x {args.calls} calls")
    print(f"{'import':32} {'add_func':>10} {'add_fast_func':>14} {'speed-up':>9}")
    for label, kind, state in cases:
        instances = {name: Instance(engine, component, make_linker(engine, add, state))
                     for name, add in adders.items()}
        for instance in instances.values():
            instance.per_call_us(kind, 10)  # warm up (the fast path builds its plan)
        samples: Dict[str, List[float]] = {name: [] for name in adders}
        for _ in range(args.rounds):  # interleaved, so drift hits both alike
            for name, instance in instances.items():
                samples[name].append(instance.per_call_us(kind, args.calls))
        stock = statistics.median(samples["add_func"])
        fast = statistics.median(samples["add_fast_func"])
        print(f"{label:32} {stock:10.1f} {fast:14.1f} {stock / fast:8.1f}x")


if __name__ == "__main__":
    main()
