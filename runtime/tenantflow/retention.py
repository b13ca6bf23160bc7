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
from .limits import DAY_MS

log = logging.getLogger("tenantflow.retention")
SWEEP_EVERY_S = 600.0  # how often the engine looks for instances past their retention
SWEEP_BATCH = 500  # instances deleted per transaction: the writer serves other work between


class RetentionSweeper:
    """Deletes instances that finished more than their retention period ago, a batch per
    write: the engine's `retention_ms` (None: kept) for every tenant but those whose policy
    sets a period of their own (`overrides()`: tenant -> ms, read on every sweep, since a
    manifest may change it while the engine runs)."""

    def __init__(
        self, write: Callable[[jn.WriteOp[int]], Awaitable[int]], clock: Clock, retention_ms: Optional[int],
        overrides: Callable[[], dict[str, int]] = dict, every_s: float = SWEEP_EVERY_S,
    ) -> None:
        if retention_ms is not None and retention_ms <= 0:
            raise ValueError(f"a retention period must be positive, got {retention_ms} ms")
        self._write, self._clock, self.retention_ms, self._every_s = write, clock, retention_ms, every_s
        self._overrides = overrides
        self._task: Optional[asyncio.Task[Any]] = None
        self.deleted = 0  # instances deleted since the engine opened (`/metrics`)

    async def sweep(self) -> int:
        """Delete every instance past its retention now; how many went."""
        now, overrides = self._clock.now_ms(), self._overrides()
        total = 0
        if self.retention_ms is not None:
            others = jn.delete_finished_before(now - self.retention_ms, SWEEP_BATCH, except_tenants=sorted(overrides))
            total += await self._sweep(others, "", self.retention_ms)
        for tenant, ms in sorted(overrides.items()):
            total += await self._sweep(jn.delete_finished_before(now - ms, SWEEP_BATCH, tenant=tenant), f"tenant {tenant}: ", ms)
        return total

    async def _sweep(self, batch: jn.WriteOp[int], who: str, retention_ms: int) -> int:
        """Run `batch` (one transaction) until it deletes fewer than a whole batch."""
        total = 0
        while True:
            deleted = await self._write(batch)
            total += deleted
            self.deleted += deleted
            if deleted < SWEEP_BATCH:
                break
        if total:
            log.info("%sdeleted %d instances that finished over %.3g days ago", who, total, retention_ms / DAY_MS)
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
