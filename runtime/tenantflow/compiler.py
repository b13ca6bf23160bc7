"""`tenantflow compile`: a tenant's Python workflow module -> a WebAssembly component.

componentize-py does the build: it runs the tenant module once at build time (pre-init)
inside its own CPython-in-Wasm and snapshots the result. Its failures arrive as a guest
traceback wrapped in Rust error text, with the python path entries renamed `/0/`, `/1/`, ...;
this module turns them into errors that name the tenant's own file, line and import.
Syntax errors are found first, on the host, so the common mistake costs no build.

Guests get only the standard library bundled in the component plus the modules in the
workflow's folder: componentize-py would otherwise also bundle the host's site-packages
(from $VIRTUAL_ENV or `python3 -m site`), so it is pointed at an empty virtualenv.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import wasmtime
from wasmtime import component as cm

from .errors import TenantflowError
from .resources import guest_sdk_dir, wit_dir

WORLD = "workflow"
APP_MODULE = "tenantflow_app"
BUILD_TIMEOUT_S = 300.0

# Module names the build itself uses: a tenant module with one of these names would shadow it.
_RESERVED_MODULES = frozenset({APP_MODULE, "tenantflow_guest", "wit_world", "componentize_py_runtime", "poll_loop"})
_RESERVED_PREFIXES = ("componentize_py_",)
_SKIP_DIRS = frozenset({"__pycache__", "node_modules", "site-packages"})

SANDBOX_HINT = (
    "guests get only the Python standard library available in the component and modules in the workflow's folder"
)

# Runs componentize-py's console-script entry point in this interpreter; the package has no
# `__main__`, so `-m componentize_py` does not work. Errors come back as an exception whose
# text is the guest traceback plus Rust context: print it plainly, without our own traceback.
_LAUNCHER = """\
import sys
from componentize_py import script
sys.argv[0] = "componentize-py"
try:
    script()
except Exception as exc:
    sys.stderr.write(str(exc) + "\\n")
    sys.exit(1)
"""


class CompileError(TenantflowError):
    """The workflow could not be compiled; the message says where and why."""

    code = "compile_error"


@dataclass(frozen=True)
class CompileResult:
    output: Path
    size_bytes: int
    digest: str
    workflows: tuple[str, ...]


def component_digest(data: bytes) -> str:
    """The code digest instances pin: sha256 hex of the component bytes."""
    return hashlib.sha256(data).hexdigest()


def compile_workflow(
    source: Path,
    output: Path,
    *,
    progress: Callable[[str], None] | None = None,
    timeout: float = BUILD_TIMEOUT_S,
) -> CompileResult:
    """Build `source` (a tenant workflow module) into the component `output`.

    Sibling modules and packages in the source's folder are importable by the workflow and
    bundled when imported. Raises CompileError with a message fit for the user.
    """
    started = time.monotonic()

    def report(message: str) -> None:
        if progress is not None:
            progress(f"[{time.monotonic() - started:5.1f}s] {message}")

    source = Path(source).resolve()
    output = Path(output).resolve()
    module = _check_source(source)

    report("parsing")
    check_syntax(source.parent)

    sdk = guest_sdk_dir()
    wit = wit_dir()
    output.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a failed build never replaces a good component.
    fd, partial_name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".partial")
    os.close(fd)
    partial = Path(partial_name)
    try:
        with tempfile.TemporaryDirectory(prefix="tenantflow-compile-") as tmp_name:
            tmp = Path(tmp_name)
            app_dir = tmp / "app"
            app_dir.mkdir()
            (app_dir / f"{APP_MODULE}.py").write_text(_app_module_source(module), encoding="utf-8")
            python_path = [app_dir, sdk, source.parent]
            report("building component (componentize-py)...")
            _run_componentize(source, wit, python_path, partial, tmp, timeout)

        data = partial.read_bytes()
        report("inspecting")
        names = inspect_component(data)
        partial.chmod(0o644)  # mkstemp made it private; a component is not a secret
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)

    report("done")
    return CompileResult(output=output, size_bytes=len(data), digest=component_digest(data), workflows=names)


def _check_source(source: Path) -> str:
    if not source.exists():
        raise CompileError(f"{source}: no such file")
    if not source.is_file():
        raise CompileError(f"{source}: not a file (expected the workflow's .py module)")
    if source.suffix != ".py":
        raise CompileError(f"{source}: expected a Python module (.py)")
    module = source.stem
    if not module.isidentifier():
        raise CompileError(f"{source}: {module!r} is not a valid Python module name; rename the file")
    if module in _RESERVED_MODULES or module.startswith(_RESERVED_PREFIXES):
        raise CompileError(f"{source}: the module name {module!r} is reserved by tenantflow; rename the file")
    if module in sys.stdlib_module_names:
        raise CompileError(
            f"{source}: the module name {module!r} shadows the standard library module of that name; rename the file"
        )
    return module


def _python_files(folder: Path) -> Iterator[Path]:
    """The modules importable from `folder`: its .py files and (recursively) its packages."""
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix == ".py":
            yield path
        elif (
            path.is_dir()
            and path.name not in _SKIP_DIRS
            and not path.name.startswith(".")
            and (path / "__init__.py").is_file()
        ):
            yield from _python_files(path)


def check_syntax(folder: Path) -> None:
    """Compile every module in `folder` on the host, so a syntax error names file and line."""
    for path in _python_files(folder):
        try:
            compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
        except SyntaxError as exc:
            raise CompileError(_format_syntax_error(path, exc)) from None
        except (ValueError, UnicodeDecodeError) as exc:  # null bytes, undecodable source
            raise CompileError(f"{path}: cannot be compiled: {exc}") from None


def _format_syntax_error(path: Path, exc: SyntaxError) -> str:
    where = f"{path}, line {exc.lineno}" if exc.lineno else str(path)
    if exc.lineno and exc.offset:
        where += f", column {exc.offset}"
    message = f"syntax error in {where}: {exc.msg}"
    if exc.text and exc.text.strip():
        line = exc.text.rstrip("\n")
        stripped = line.lstrip()
        message += f"\n    {stripped}"
        if exc.offset and exc.offset > 0:
            caret = max(exc.offset - 1 - (len(line) - len(stripped)), 0)
            message += "\n    " + " " * caret + "^"
    return message


def _app_module_source(module: str) -> str:
    return (
        "# Generated by `tenantflow compile`: the component's entry module.\n"
        "import tenantflow_guest._runtime as _tenantflow_runtime\n"
        f"import {module} as _tenant_module\n"
        "\n"
        "WitWorld = _tenantflow_runtime.build_world(_tenant_module)\n"
    )


def _componentize_command() -> list[str]:
    if importlib.util.find_spec("componentize_py") is not None:
        return [sys.executable, "-c", _LAUNCHER]
    script = Path(sys.executable).with_name("componentize-py")
    found = str(script) if script.is_file() else shutil.which("componentize-py")
    if found is None:
        raise CompileError("componentize-py is not installed; install tenantflow with its dependencies")
    return [found]


def _run_componentize(
    source: Path, wit: Path, python_path: list[Path], output: Path, tmp: Path, timeout: float
) -> None:
    empty_venv = tmp / "no-site-packages"
    (empty_venv / "lib" / "site-packages").mkdir(parents=True)
    env = dict(os.environ)
    env.update(
        {
            "VIRTUAL_ENV": str(empty_venv),
            "RUST_BACKTRACE": "0",
            "RUST_LIB_BACKTRACE": "0",
        }
    )
    command = [*_componentize_command(), "-d", str(wit), "-w", WORLD, "componentize"]
    for entry in python_path:
        command += ["-p", str(entry)]
    command += [APP_MODULE, "-o", str(output)]
    try:
        proc = subprocess.run(
            command,
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise CompileError(
            f"building {source.name} took longer than {timeout:.0f}s "
            "(does the module run an endless loop at import time?)"
        ) from None
    if proc.returncode != 0 or not output.is_file() or output.stat().st_size == 0:
        raise CompileError(explain_build_failure(proc.stderr + proc.stdout, source, python_path))


# --- turning componentize-py's output into a message about the tenant's code ---------------

_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line (?P<line>\d+)')
_GUEST_PATH = re.compile(r"^/(\d+)/(.*)$")
_MISSING_MODULE = re.compile(r"^ModuleNotFoundError: No module named '([^']+)'")


@dataclass(frozen=True)
class _Frame:
    file: str
    line: int
    code: str


def _strip_backtrace(text: str) -> str:
    match = re.search(r"^\s*Stack backtrace:", text, re.M)
    return text[: match.start()] if match else text


def _host_path(guest_file: str, python_path: list[Path]) -> str:
    match = _GUEST_PATH.match(guest_file)
    if match and int(match.group(1)) < len(python_path):
        return str(python_path[int(match.group(1))] / match.group(2))
    return guest_file


def _parse_traceback(text: str, python_path: list[Path]) -> tuple[list[_Frame], str] | None:
    """The frames (host paths) and exception line of the last Python traceback in `text`."""
    start = text.rfind("Traceback (most recent call last):")
    if start < 0:
        return None
    block = text[start:].split("\n\nCaused by:", 1)[0]
    lines = block.splitlines()[1:]
    frames: list[_Frame] = []
    exception: list[str] = []
    i = 0
    while i < len(lines):
        match = _FRAME.match(lines[i])
        if match:
            code = ""
            i += 1
            if i < len(lines) and lines[i].startswith("    ") and not _FRAME.match(lines[i]):
                code = lines[i].strip()
            while i < len(lines) and lines[i].startswith("    ") and not _FRAME.match(lines[i]):
                i += 1
            frames.append(_Frame(_host_path(match.group("file"), python_path), int(match.group("line")), code))
            exception = []
            continue
        if lines[i].strip():
            exception.append(lines[i].rstrip())
        i += 1
    exception = [line for line in exception if not line.startswith(("    ", "During handling", "The above exception"))]
    if not exception:
        return None
    return frames, exception[-1]


def explain_build_failure(output: str, source: Path, python_path: list[Path]) -> str:
    """A user-facing message for a failed componentize-py run (`output`: its stderr/stdout)."""
    text = _strip_backtrace(output).strip()
    parsed = _parse_traceback(text, python_path)
    if parsed is None:
        cleaned = "\n".join(line for line in text.splitlines() if line.strip()) or "no output"
        return f"building the component failed: {cleaned}"
    frames, exception = parsed
    tenant_dir = str(source.parent) + os.sep
    tenant_frames = [frame for frame in frames if frame.file.startswith(tenant_dir)]
    where = ""
    if tenant_frames:
        frame = tenant_frames[-1]
        where = f"\n  at {frame.file}, line {frame.line}" + (f": {frame.code}" if frame.code else "")

    qualified, sep, detail = exception.partition(":")
    exc_name = qualified.rsplit(".", 1)[-1]
    if qualified.startswith("tenantflow_guest."):  # the SDK's own errors: the class name says it all
        exception = f"{exc_name}{sep}{detail}"
    if exc_name == "NoWorkflowsError":
        return f"no WorkflowEntrypoint subclass in {source}"
    missing = _MISSING_MODULE.match(exception)
    if missing:
        return f"import '{missing.group(1)}' cannot be satisfied in the sandbox ({SANDBOX_HINT}){where}"
    return f"loading {source.name} failed: {exception}{where}"


# --- inspecting the built component ----------------------------------------------------------

INSPECT_SECONDS = 60.0
INSPECT_MEMORY = 512 * 1024 * 1024


def _trap(name: str) -> Callable[..., object]:
    def trap(*_args: object) -> object:
        raise RuntimeError(f"host import {name!r} is not available while inspecting a component")

    return trap


def inspect_component(data: bytes, artifact_dir: Path | None = None) -> tuple[str, ...]:
    """Instantiate the component in a bare sandbox and return what its `workflows()` says.

    It is compiled with the engine's own wasmtime configuration into the engine's artifact
    cache (`artifact_dir`, default: the machine-wide one), so the first run or deploy of
    what was just built loads it in milliseconds instead of compiling it again.
    Every non-WASI import traps and WASI grants nothing. (`define_unknown_imports_as_traps`
    is not used: it shadows the linker's semver matching of newer `wasi:*@0.2.x` imports.)
    """
    from .engine import default_artifact_dir
    from .errors import ComponentError
    from .isolates import IsolateCache
    from .registry import digest_of
    from .sandbox import EpochTicker, SandboxConfig, make_engine, watch_store

    config = SandboxConfig()
    engine = make_engine(config, pool_slots=2)
    ticker = EpochTicker(engine)
    try:
        cache = IsolateCache(engine, config, artifact_dir or default_artifact_dir())
        component = cache.get(digest_of(data), lambda: data)
        linker = cm.Linker(engine)
        linker.add_wasip2()
        with linker.root() as root:
            for name, item in component.type.imports(engine).items():
                ty = item.ty
                if name.startswith("wasi:") or not isinstance(ty, cm.ComponentInstanceType):
                    continue
                with root.add_instance(name) as instance:
                    for func_name, export in ty.exports(engine).items():
                        if isinstance(export.ty, cm.FuncType):
                            instance.add_func(func_name, _trap(f"{name}#{func_name}"))
        store = wasmtime.Store(engine)
        store.set_wasi(wasmtime.WasiConfig())
        until = time.monotonic() + INSPECT_SECONDS
        watch_store(store, lambda: "inspection took too long" if time.monotonic() > until else None)
        store.set_limits(memory_size=INSPECT_MEMORY)
        instance = linker.instantiate(store, component)
        workflows = instance.get_func(store, "workflows")
        if workflows is None:
            raise CompileError("the built component does not export `workflows`")
        names = workflows(store)
        workflows.post_return(store)
    except (wasmtime.WasmtimeError, wasmtime.Trap, RuntimeError, ComponentError) as exc:
        detail = str(exc).strip().splitlines()
        raise CompileError(f"the built component failed inspection: {detail[0] if detail else exc!r}") from None
    finally:
        ticker.stop()
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CompileError(f"the built component's workflows() returned {names!r}, not a list of names")
    if not names:
        raise CompileError("the built component defines no workflows")
    return tuple(names)
