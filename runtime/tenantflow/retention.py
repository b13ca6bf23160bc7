"""Finished instances deleted once they are older than a retention period, like Cloudflare
Workflows' retention of completed instance state (3 to 30 days there). Off unless asked for:
deleting history is the platform's decision."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Awaitable, Callable, Optional

from . import journal as jn
from .clock import Clock

log = logging.getLogger("tenantflow.retention")
SWEEP_EVERY_S = 600.0  # how often the engine looks for instances past their retention
SWEEP_BATCH = 500  # instances deleted per transaction: the writer serves other work between


class RetentionSweeper:
    """Deletes instances that finished more than `retention_ms` ago, a batch per write."""

    def __init__(self, write: Callable[[jn.WriteOp[int]], Awaitable[int]], clock: Clock, retention_ms: int, every_s: float = SWEEP_EVERY_S) -> None:
        if retention_ms <= 0:
            raise ValueError(f"a retention period must be positive, got {retention_ms} ms")
        self._write, self._clock, self.retention_ms, self._every_s = write, clock, retention_ms, every_s
        self._task: Optional[asyncio.Task[Any]] = None
        self.deleted = 0  # instances deleted since the engine opened (`/metrics`)

    async def sweep(self) -> int:
        """Delete every instance past its retention now; how many went."""
        cutoff = self._clock.now_ms() - self.retention_ms
        total = 0
        while True:
            deleted = await self._write(jn.delete_finished_before(cutoff, SWEEP_BATCH))
            total += deleted
            self.deleted += deleted
            if deleted < SWEEP_BATCH:
                break
        if total:
            log.info("deleted %d instances that finished over %.3g days ago", total, self.retention_ms / 86_400_000)
        return total

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tenantflow-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # noqa: BLE001 - a failed sweep (a full disk) is tried again later
                log.exception("retention sweep failed; trying again in %.0f s", self._every_s)
            await asyncio.sleep(self._every_s)
