"""`tenantflow compile` through the real command line: precise errors, and a real build."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tenantflow.compiler import inspect_component

from components import source_digest


def tenantflow_command() -> list[str]:
    script = Path(sys.executable).with_name("tenantflow")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "tenantflow.cli"]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run(
        [*tenantflow_command(), *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


def write(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


def assert_failed(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors, proc.stderr
    assert "Stack backtrace" not in proc.stderr
    assert "Caused by" not in proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr


def test_version(tmp_path: Path) -> None:
    proc = run_cli("--version", cwd=tmp_path)
    assert proc.returncode == 0
    assert re.search(r"tenantflow, version \d+\.\d+", proc.stdout)


def test_missing_source(tmp_path: Path) -> None:
    stderr = assert_failed(run_cli("compile", str(tmp_path / "nope.py"), cwd=tmp_path))
    assert "nope.py: no such file" in stderr


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    wf = tmp_path / "wf"
    write(
        wf,
        "workflow.py",
        """\
        from tenantflow_guest import WorkflowEntrypoint

        class Broken(WorkflowEntrypoint):
            def run(self, event step):
                return 1
        """,
    )
    proc = run_cli("compile", str(wf / "workflow.py"), "-o", str(tmp_path / "out.wasm"), cwd=tmp_path)
    stderr = assert_failed(proc)
    assert f"syntax error in {wf / 'workflow.py'}, line 4" in stderr
    assert "def run(self, event step):" in stderr
    assert "componentize-py" not in stderr  # found before any build started
    assert not (tmp_path / "out.wasm").exists()


def test_syntax_error_in_sibling_module(tmp_path: Path) -> None:
    wf = tmp_path / "wf"
    write(wf, "workflow.py", "import helpers\n")
    write(wf, "helpers.py", "def f(:\n    pass\n")
    stderr = assert_failed(run_cli("compile", str(wf / "workflow.py"), cwd=tmp_path))
    assert f"syntax error in {wf / 'helpers.py'}, line 1" in stderr


def test_module_without_workflows(tmp_path: Path) -> None:
    wf = tmp_path / "wf"
    write(
        wf,
        "workflow.py",
        """\
        from tenantflow_guest import WorkflowEntrypoint

        class NotAWorkflow:
            pass
        """,
    )
    stderr = assert_failed(run_cli("compile", str(wf / "workflow.py"), cwd=tmp_path))
    assert f"error: no WorkflowEntrypoint subclass in {wf / 'workflow.py'}" in stderr
    assert not (wf / "workflow.wasm").exists()


def test_unavailable_import_is_named(tmp_path: Path) -> None:
    # `requests` may well be installed on the host: the sandbox must not see it either way.
    wf = tmp_path / "wf"
    write(
        wf,
        "workflow.py",
        """\
        import json

        import requests
        from tenantflow_guest import WorkflowEntrypoint

        class Fetch(WorkflowEntrypoint):
            def run(self, event, step):
                return requests.get("https://example.com").status_code
        """,
    )
    stderr = assert_failed(run_cli("compile", str(wf / "workflow.py"), cwd=tmp_path))
    assert "import 'requests' cannot be satisfied in the sandbox" in stderr
    assert "standard library" in stderr
    assert f"{wf / 'workflow.py'}, line 3" in stderr


def test_exception_at_import_time_points_at_tenant_code(tmp_path: Path) -> None:
    wf = tmp_path / "wf"
    write(
        wf,
        "workflow.py",
        """\
        from tenantflow_guest import WorkflowEntrypoint

        import settings

        class Uses(WorkflowEntrypoint):
            def run(self, event, step):
                return settings.LIMIT
        """,
    )
    write(
        wf,
        "settings.py",
        """\
        def load():
            raise ValueError("LIMIT must be positive")

        LIMIT = load()
        """,
    )
    stderr = assert_failed(run_cli("compile", str(wf / "workflow.py"), cwd=tmp_path))
    assert "ValueError: LIMIT must be positive" in stderr
    assert f"{wf / 'settings.py'}, line 2" in stderr


VALID = """\
from tenantflow_guest import WorkflowEntrypoint

from greeting import greet


class Hello(WorkflowEntrypoint):
    def run(self, event, step):
        return step.do("greet", lambda: greet(event.payload["name"]))


class Second(WorkflowEntrypoint):
    name = "custom-name"

    def run(self, event, step):
        return 2
"""


def test_compile_valid_workflow_prints_digest_size_and_names(tmp_path: Path) -> None:
    wf = tmp_path / "wf"
    write(wf, "workflow.py", VALID)
    write(wf, "greeting.py", "def greet(name):\n    return f'hello {name}'\n")
    proc = run_cli("compile", str(wf / "workflow.py"), cwd=tmp_path)  # default output
    assert proc.returncode == 0, proc.stderr
    output = wf / "workflow.wasm"
    data = output.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert f"digest: sha256:{digest}" in proc.stdout
    assert re.search(r"size: \d+\.\d MB", proc.stdout)
    assert f"({len(data)} bytes)" in proc.stdout
    assert "workflows: Hello, custom-name" in proc.stdout
    for phase in ("parsing", "building component (componentize-py)...", "inspecting"):
        assert phase in proc.stderr
    assert not [p for p in wf.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("name", ["json.py", "tenantflow_guest.py", "my-flow.py"])
def test_bad_module_names(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, "x = 1\n")
    stderr = assert_failed(run_cli("compile", str(path), cwd=tmp_path))
    assert "rename the file" in stderr


def test_component_builder_reuses_cached_builds(tmp_path: Path, component_builder: Callable[[Path], Path]) -> None:
    wf = tmp_path / "wf"
    source = write(wf, "workflow.py", VALID)
    write(wf, "greeting.py", "def greet(name):\n    return f'hello {name}'\n")
    first = component_builder(source)
    assert first.name == f"{source_digest(source)}.wasm"
    assert inspect_component(first.read_bytes()) == ("Hello", "custom-name")
    built_at = first.stat().st_mtime_ns
    assert component_builder(source) == first
    assert first.stat().st_mtime_ns == built_at

    # Any input of the build changes the key: here a sibling module.
    write(wf, "greeting.py", "def greet(name):\n    return f'hi {name}'\n")
    assert source_digest(source) != first.stem
