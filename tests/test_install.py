"""A non-editable install (wheel into a fresh virtualenv) finds its package data and compiles."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

TINY = """\
from tenantflow_guest import WorkflowEntrypoint


class Tiny(WorkflowEntrypoint):
    name = "tiny"

    def run(self, event, step):
        return step.do("double", lambda: event.payload["n"] * 2)
"""


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}


def run(*args: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_wheel_installs_non_editable_and_compiles(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", wheels, REPO, cwd=tmp_path)
    (wheel,) = wheels.glob("tenantflow-*.whl")

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    # Dependencies come from pip's cache after `make setup`, so this is quick after the first time.
    run(python, "-m", "pip", "install", "--quiet", wheel, cwd=tmp_path)

    probe = textwrap.dedent(
        """\
        import site, tenantflow, tenantflow.resources as r
        print(site.getsitepackages()[0])
        print(tenantflow.__file__)
        print(r.wit_dir())
        print(r.guest_sdk_dir())
        """
    )
    site_packages, package_file, wit, sdk = run(python, "-c", probe, cwd=tmp_path).stdout.splitlines()
    site_dir = Path(site_packages).resolve()
    for path in (package_file, wit, sdk):
        assert Path(path).resolve().is_relative_to(site_dir), f"{path} is not inside {site_dir}"
    assert (Path(wit) / "tenantflow.wit").is_file()
    assert (Path(sdk) / "tenantflow_guest" / "_runtime.py").is_file()
    assert (Path(sdk) / "tenantflow_guest" / "__init__.py").is_file()

    workdir = tmp_path / "tenant"
    workdir.mkdir()
    (workdir / "tiny.py").write_text(TINY)
    proc = run(venv / "bin" / "tenantflow", "compile", "tiny.py", "-o", "tiny.wasm", cwd=workdir)
    assert "workflows: tiny" in proc.stdout
    assert "digest: sha256:" in proc.stdout
    assert (workdir / "tiny.wasm").stat().st_size > 1_000_000
