"""Time as a dependency of the engine, so tests and local runs can skip through sleeps."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    # Whether time passes by itself (a worker may wait for it: sleeps served in place).
    real_time: bool

    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""

    async def sleep_until(self, deadline_ms: int, wake: asyncio.Event) -> None:
        """Return at `deadline_ms` or as soon as `wake` is set, whichever is first."""


class SystemClock:
    real_time = True

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    async def sleep_until(self, deadline_ms: int, wake: asyncio.Event) -> None:
        delay = (deadline_ms - self.now_ms()) / 1000
        if delay <= 0:
            return
        try:
            await asyncio.wait_for(wake.wait(), timeout=delay)
        except asyncio.TimeoutError:
            pass


class ManualClock:
    """A clock that moves only when told to (tests), or jumps to the next timer when the
    scheduler is idle (`fast_forward`, used by `tenantflow run --fast-forward`)."""

    real_time = False

    def __init__(self, start_ms: int | None = None, *, fast_forward: bool = False) -> None:
        self._now = time.time_ns() // 1_000_000 if start_ms is None else start_ms
        self.fast_forward = fast_forward
        self._changed = asyncio.Event()

    def now_ms(self) -> int:
        return self._now

    def advance(self, seconds: float) -> None:
        self.set(self._now + int(seconds * 1000))

    def set(self, now_ms: int) -> None:
        if now_ms > self._now:
            self._now = now_ms
            self._changed.set()

    async def sleep_until(self, deadline_ms: int, wake: asyncio.Event) -> None:
        while self._now < deadline_ms and not wake.is_set():
            self._changed.clear()
            waiter = asyncio.ensure_future(self._changed.wait())
            woken = asyncio.ensure_future(wake.wait())
            try:
                await asyncio.wait({waiter, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                woken.cancel()


class FastForwardClock(SystemClock):
    """Real time, except that it jumps ahead to the next timer whenever the scheduler is
    idle (`tenantflow run --fast-forward`): step durations stay real, sleeps take no time."""

    fast_forward = True
    real_time = False  # skips ahead when idle: nothing may wait for it on a worker

    def __init__(self) -> None:
        self._offset = 0
        self._changed = asyncio.Event()

    def now_ms(self) -> int:
        return super().now_ms() + self._offset

    def set(self, now_ms: int) -> None:
        ahead = now_ms - self.now_ms()
        if ahead > 0:
            self._offset += ahead
            self._changed.set()

    async def sleep_until(self, deadline_ms: int, wake: asyncio.Event) -> None:
        self._changed.clear()
        delay = (deadline_ms - self.now_ms()) / 1000
        if delay <= 0:
            return
        waiters = {asyncio.ensure_future(wake.wait()), asyncio.ensure_future(self._changed.wait())}
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
