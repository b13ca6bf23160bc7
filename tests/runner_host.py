"""A host process with one runner for test_runners: starts a long instance, prints the
runner pids once it runs, then waits to be killed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tenantflow.engine import Engine


async def main(db: Path, wasm: Path, artifacts: Path) -> None:
    async with Engine(db, artifact_dir=artifacts, processes=1, workers=2) as engine:
        await engine.deploy("t", wasm.read_bytes())
        t = engine.tenant("t")
        await t.create("Busy", {"ms": 3000, "sleep": 0}, id="long")
        while not engine.scheduler.running_count:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # inside its first step
        assert engine.runners is not None
        print("running", *engine.runners.pids, flush=True)
        await asyncio.sleep(600)


if __name__ == "__main__":
    asyncio.run(main(*map(Path, sys.argv[1:4])))
