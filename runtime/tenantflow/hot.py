"""The hot tier: the few component versions that run most of a host's invocations, on
wasmtime's pooling allocator.

A fresh instance of a componentize-py component starts from a copy-on-write image of a
snapshotted interpreter, and its first pass writes ~330 pages: a page fault each, about a
millisecond of a one-step workflow here. A slot of the pooling allocator keeps the pages
its last instance dirtied and resets them with memcpy, so the next instance of the same
version starts with them private (first pass ~0.3 ms). But a slot that another version
takes next must be imaged again: with a long tail of versions taking turns (tenant churn
in BENCHMARKS.md) everything on the pool ran 3-4x slower, and its slots keep memory.

So only hot versions go there: one that has held at least `share` of the host's last
`window` instantiations for `sustain_seconds` (a tenant's burst of a hundred is not yet
hot) is loaded into the pooled engine, from its precompiled artifact (the same file: the
two engines' settings are compatible), on a thread of its own; its invocations use it from
then on. At most `versions` are hot (least recently used go first); one unused for
`idle_seconds` is let go, and when none is left the pooled engine goes too, with the
memory its slots kept (a new one is made at the next promotion). The tier has a warm pool
of its own (the other's warm instances of a version that became hot are dropped:
`on_promote`). Everything else runs on the isolate cache's engine, as before.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import wasmtime
from wasmtime import component as wc

from .executor import Tier, build_linker
from .exports import ExportCalls
from .sandbox import EpochTicker, SandboxConfig, make_engine
from .warm import WarmPool

log = logging.getLogger("tenantflow.hot")
DEFAULT_VERSIONS = 2
WINDOW = 64
SHARE = 0.25
SUSTAIN_SECONDS = 1.0
IDLE_SECONDS = 20.0


class _Pool:
    """The pooled engine and what is made on it; dropped whole when nothing is hot."""

    def __init__(self, config: SandboxConfig, slots: int, warm_instances: int, on_instantiate: Callable[[float], None]) -> None:
        # Slots enough never to run out (they are address space), few kept warm: those
        # the hot versions' back-to-back instances reuse, with all their pages.
        engine = make_engine(dataclasses.replace(config, pooling=True), slots, warm_slots=warm_instances + 2)
        linker = build_linker(engine)
        warm = WarmPool(engine, linker, max_total=warm_instances, on_instantiate=on_instantiate) if warm_instances > 0 else None
        self.tier = Tier(engine, linker, warm, ExportCalls())
        self.ticker = EpochTicker(engine)

    def retire(self) -> None:
        """Nothing new is made here; what still runs on the engine keeps its epoch ticks
        (deadlines, terminate) until the engine goes with its last store."""
        if self.tier.warm is not None:
            self.tier.warm.close()

    def close(self) -> None:
        self.retire()
        self.ticker.stop()


class HotTier:
    def __init__(
        self,
        config: SandboxConfig,
        artifact_path: Callable[[str], Optional[Path]],
        *,
        slots: int,
        warm_instances: int,
        versions: int = DEFAULT_VERSIONS,
        window: int = WINDOW,
        share: float = SHARE,
        sustain_seconds: float = SUSTAIN_SECONDS,
        idle_seconds: float = IDLE_SECONDS,
        on_instantiate: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self._config, self._slots, self._warm_instances, self._on_instantiate = config, slots, warm_instances, on_instantiate
        self._artifact_path = artifact_path
        self.versions, self.sustain_seconds, self.idle_seconds = versions, sustain_seconds, idle_seconds
        self._threshold = max(2, int(window * share))
        self._recent: deque[str] = deque(maxlen=window)
        self._counts: Counter[str] = Counter()
        self._dominant_since: dict[str, float] = {}  # versions over the threshold, since when
        self._hot: OrderedDict[str, tuple[wc.Component, float]] = OrderedDict()  # digest -> (component, last used)
        self._pool: Optional[_Pool] = None  # while something is hot
        self._loading: set[str] = set()
        self._lock = threading.Lock()
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tenantflow-hot")
        self._idle_check: Optional[threading.Timer] = None
        self._closed = False
        self.on_promote: list[Callable[[str], None]] = []  # hears each version that became hot
        self.promotions = 0
        self.invocations = 0

    @property
    def hot_digests(self) -> list[str]:
        with self._lock:
            return list(self._hot)

    @property
    def tier(self) -> Optional[Tier]:
        pool = self._pool
        return pool.tier if pool is not None else None

    def component(self, digest: str) -> Optional[tuple[Tier, wc.Component]]:
        """Note an invocation of `digest`; where to make its instance if the version is hot
        (one that just became hot is loaded meanwhile: this one gets None)."""
        now = time.monotonic()
        with self._lock:
            self._note(digest, now)
            entry = self._hot.get(digest)
            pool = self._pool
            if entry is not None and pool is not None:
                self._hot[digest] = (entry[0], now)
                self._hot.move_to_end(digest)
                self.invocations += 1
                return pool.tier, entry[0]
            since = self._dominant_since.get(digest)
            if since is not None and now - since >= self.sustain_seconds and digest not in self._loading and not self._closed:
                self._loading.add(digest)
                try:
                    self._loader.submit(self._promote, digest)
                except RuntimeError:  # closed meanwhile
                    self._loading.discard(digest)
        return None

    def _note(self, digest: str, now: float) -> None:
        """(The caller holds the lock.)"""
        if len(self._recent) == self._recent.maxlen:
            oldest = self._recent[0]
            self._counts[oldest] -= 1
            if self._counts[oldest] < self._threshold:
                self._dominant_since.pop(oldest, None)
            if not self._counts[oldest]:
                del self._counts[oldest]
        self._recent.append(digest)
        self._counts[digest] += 1
        if self._counts[digest] >= self._threshold:
            self._dominant_since.setdefault(digest, now)

    def _promote(self, digest: str) -> None:
        with self._lock:
            if self._pool is None and not self._closed:
                self._pool = _Pool(self._config, self._slots, self._warm_instances, self._on_instantiate)
            pool = self._pool
        component: Optional[wc.Component] = None
        path = self._artifact_path(digest)
        try:
            if pool is not None and path is not None and path.exists():
                component = wc.Component.deserialize_file(pool.tier.engine, str(path))
        except wasmtime.WasmtimeError as exc:  # an optimisation: the version runs on, unpooled
            log.warning("could not load hot component %s into the pooled engine: %s", digest[:12], exc)
        with self._lock:
            self._loading.discard(digest)
            dropped = []
            if component is not None and pool is self._pool:
                self._hot[digest] = (component, time.monotonic())
                self.promotions += 1
                while len(self._hot) > self.versions:
                    dropped.append(self._hot.popitem(last=False)[0])
                self._arm_idle_check()
        self._let_go(pool, dropped)
        if component is not None:
            for listener in self.on_promote:
                listener(digest)

    def _arm_idle_check(self) -> None:
        """(The caller holds the lock.)"""
        if self._idle_check is None and not self._closed:
            self._idle_check = threading.Timer(self.idle_seconds / 4, self._check_idle)
            self._idle_check.daemon = True
            self._idle_check.start()

    def _check_idle(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._idle_check = None
            idle = [digest for digest, (_, used) in self._hot.items() if now - used > self.idle_seconds]
            for digest in idle:
                del self._hot[digest]
            pool = self._pool
            retired = not self._hot  # nothing hot: the engine and its slots' memory go too
            if retired:
                self._pool = None
            else:
                self._arm_idle_check()
        if pool is None:
            return
        if retired:
            pool.retire()
        else:
            self._let_go(pool, idle)

    @staticmethod
    def _let_go(pool: Optional[_Pool], digests: list[str]) -> None:
        """Drop what pins a version that is no longer hot (its warm instances and export
        types); its running instances keep it until they end."""
        if pool is None:
            return
        for digest in digests:
            if pool.tier.warm is not None:
                pool.tier.warm.discard(digest)
            pool.tier.exports.forget(digest)

    def clear(self) -> None:
        """Forget every hot version and what was counted: their next invocations run on
        the default engine again (a cold start measured as such, a test's fresh start)."""
        with self._lock:
            self._hot.clear()
            self._recent.clear()
            self._counts.clear()
            self._dominant_since.clear()
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.retire()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            timer, self._idle_check = self._idle_check, None
        if timer is not None:
            timer.cancel()
        self._loader.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            pool, self._pool = self._pool, None
            self._hot.clear()
        if pool is not None:
            pool.close()
