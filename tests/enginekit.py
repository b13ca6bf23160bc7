"""Helpers for engine tests: an engine on a real SQLite file with a manual clock."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from tenantflow.clock import Clock, ManualClock, SystemClock
from tenantflow.engine import Engine, TenantBinding
from tenantflow.limits import Limits

from components import build_component

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "tests" / "workflows"
# Precompiled artifacts are keyed by digest and engine config: safe to share across tests.
ARTIFACTS = REPO / ".cache" / "tenantflow" / "artifacts"  # = default_artifact_dir() under the tests (components.py)


def cli(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """`tenantflow ARGS` through the real console entry point, with the shared artifact cache
    and none of the caller's TENANTFLOW_* settings (a TENANTFLOW_URL would redirect it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")}
    env["TENANTFLOW_CACHE_DIR"] = str(ARTIFACTS.parent)
    done = subprocess.run([sys.executable, "-m", "tenantflow.cli", *args], input=input, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"tenantflow {' '.join(args)}: exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    return done


def component(name: str) -> Path:
    return build_component(WORKFLOWS / name / "workflow.py")


@contextlib.asynccontextmanager
async def open_engine(
    db: Path,
    *,
    clock: Clock | None = None,
    limits: Limits | None = None,
    workers: int = 4,
    per_tenant: int | None = None,
    deploy: dict[str, str] | None = None,
    processes: int = 0,
    **options: Any,
) -> AsyncIterator[Engine]:
    """An open engine (on a ManualClock unless told otherwise; runner processes need the
    system clock); `deploy` maps tenant -> test workflow folder to deploy for it; `options`
    go to the Engine as they are."""
    engine = Engine(
        db,
        clock=clock or (SystemClock() if processes else ManualClock()),
        limits=limits,
        workers=workers,
        per_tenant_concurrency=per_tenant,
        processes=processes,
        **{"artifact_dir": ARTIFACTS, **options},
    )
    async with engine:
        for tenant, folder in (deploy or {}).items():
            await engine.deploy(tenant, component(folder).read_bytes())
        yield engine


async def settle(binding: TenantBinding, instance_id: str, *statuses: str, timeout: float = 60.0) -> str:
    """Wait for one of `statuses` (default: any resting state) and return it."""
    wanted = frozenset(statuses or ("complete", "errored", "terminated", "paused", "waiting"))
    status = await binding.wait(instance_id, timeout=timeout, statuses=wanted)
    return status.status


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, poll: float = 0.01) -> bool:
    """Poll `condition` (from a thread or synchronous test) until true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return condition()
