"""Compiled test components, cached by source digest across tests and sessions.

A component build takes seconds, so each distinct source is built once and kept in
`<repo>/.cache/test-components/<digest>.wasm`. The digest covers everything that goes
into a build: the workflow folder's .py files, the guest SDK, the WIT world, the compiler
and the componentize-py version; a change to any of them rebuilds. A file lock keeps
parallel sessions from building the same component twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterable
from importlib.metadata import version
from pathlib import Path

import tenantflow.compiler
from tenantflow.compiler import compile_workflow
from tenantflow.resources import guest_sdk_dir, wit_dir

REPO = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO / ".cache" / "test-components"
# Precompiled artifacts (written when a component is built and inspected, read by every
# engine the tests open) live in the repo, not in the user's cache.
os.environ["TENANTFLOW_CACHE_DIR"] = str(REPO / ".cache" / "tenantflow")


def _files(root: Path, pattern: str) -> Iterable[Path]:
    return sorted(p for p in root.rglob(pattern) if p.is_file() and "__pycache__" not in p.parts)


def source_digest(source: Path) -> str:
    """sha256 over every input of a build of `source`."""
    source = source.resolve()
    h = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        h.update(f"{label}\0{len(data)}\0".encode())
        h.update(data)

    add("module", source.name.encode())
    for path in _files(source.parent, "*.py"):
        add(f"src:{path.relative_to(source.parent)}", path.read_bytes())
    sdk = guest_sdk_dir() / "tenantflow_guest"
    for path in _files(sdk, "*"):
        add(f"sdk:{path.relative_to(sdk)}", path.read_bytes())
    for path in _files(wit_dir(), "*.wit"):
        add(f"wit:{path.relative_to(wit_dir())}", path.read_bytes())
    add("compiler", Path(tenantflow.compiler.__file__).read_bytes())
    add("componentize-py", version("componentize-py").encode())
    return h.hexdigest()


def build_component(source: Path) -> Path:
    """The compiled component for the workflow module `source` (built on first use)."""
    source = Path(source).resolve()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    digest = source_digest(source)
    target = CACHE_DIR / f"{digest}.wasm"
    if target.is_file():
        return target
    with open(CACHE_DIR / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_file():  # another session may have built it while we waited
            compile_workflow(source, target)
    return target
