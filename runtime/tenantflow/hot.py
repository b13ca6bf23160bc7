"""The hot tier: the few component versions that run most of a host's invocations, on
wasmtime's pooling allocator.

A fresh instance of a componentize-py component starts from a copy-on-write image of a
snapshotted interpreter, and its first pass writes ~330 pages: a page fault each, about a
millisecond of a one-step workflow here. A slot of the pooling allocator keeps the pages
its last instance dirtied and resets them with memcpy, so the next instance of the same
version starts with them private (first pass ~0.3 ms). But a slot that another version
takes next must be imaged again: with a long tail of versions taking turns (tenant churn
in BENCHMARKS.md) everything on the pool ran 3-4x slower. So only hot versions go there:
a version that had at least `share` of the host's last `window` instantiations is loaded
into the pooled engine, from its precompiled artifact (the same file: the two engines'
settings are compatible), on a thread of its own; its invocations use it from then on.
At most `versions` are hot (least recently used go first); one unused for
`idle_seconds` is let go. Everything else runs on the isolate cache's engine, as before.
The tier has a warm pool of its own (the other's warm instances of a version that became
hot are dropped: `on_promote`).
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
IDLE_SECONDS = 60.0


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
        idle_seconds: float = IDLE_SECONDS,
        on_instantiate: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        # Slots enough never to run out (they are address space), few kept warm: those
        # the hot versions' back-to-back instances reuse, with all their pages.
        engine = make_engine(dataclasses.replace(config, pooling=True), slots, warm_slots=warm_instances + 2)
        linker = build_linker(engine)
        warm = WarmPool(engine, linker, max_total=warm_instances, on_instantiate=on_instantiate) if warm_instances > 0 else None
        self.tier = Tier(engine, linker, warm, ExportCalls())
        self._ticker = EpochTicker(engine)
        self._artifact_path = artifact_path
        self.versions, self.idle_seconds = versions, idle_seconds
        self._threshold = max(2, int(window * share))
        self._recent: deque[str] = deque(maxlen=window)
        self._counts: Counter[str] = Counter()
        self._hot: OrderedDict[str, tuple[wc.Component, float]] = OrderedDict()  # digest -> (component, last used)
        self._loading: set[str] = set()
        self._lock = threading.Lock()
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tenantflow-hot-loader")
        self.on_promote: list[Callable[[str], None]] = []  # hears each version that became hot
        self.promotions = 0
        self.invocations = 0

    @property
    def hot_digests(self) -> list[str]:
        with self._lock:
            return list(self._hot)

    def component(self, digest: str) -> Optional[wc.Component]:
        """Note an invocation of `digest`; its pooled component if the version is hot (a
        version that just became hot is loaded meanwhile: this one gets None)."""
        now = time.monotonic()
        with self._lock:
            if len(self._recent) == self._recent.maxlen:
                oldest = self._recent[0]
                self._counts[oldest] -= 1
                if not self._counts[oldest]:
                    del self._counts[oldest]
            self._recent.append(digest)
            self._counts[digest] += 1
            entry = self._hot.get(digest)
            if entry is not None:
                self._hot[digest] = (entry[0], now)
                self._hot.move_to_end(digest)
                self.invocations += 1
                dropped = self._pop_idle(now)
                component: Optional[wc.Component] = entry[0]
            else:
                dropped = self._pop_idle(now)
                component = None
                if self._counts[digest] >= self._threshold and digest not in self._loading:
                    self._loading.add(digest)
                    try:
                        self._loader.submit(self._promote, digest)
                    except RuntimeError:  # closed meanwhile
                        self._loading.discard(digest)
        self._let_go(dropped)
        return component

    def _promote(self, digest: str) -> None:
        component: Optional[wc.Component] = None
        path = self._artifact_path(digest)
        try:
            if path is not None and path.exists():
                component = wc.Component.deserialize_file(self.tier.engine, str(path))
        except wasmtime.WasmtimeError as exc:  # an optimisation: the version runs on, unpooled
            log.warning("could not load hot component %s into the pooled engine: %s", digest[:12], exc)
        with self._lock:
            self._loading.discard(digest)
            dropped = []
            if component is not None:
                self._hot[digest] = (component, time.monotonic())
                self.promotions += 1
                while len(self._hot) > self.versions:
                    dropped.append(self._hot.popitem(last=False)[0])
        self._let_go(dropped)
        if component is not None:
            for listener in self.on_promote:
                listener(digest)

    def _pop_idle(self, now: float) -> list[str]:
        """(The caller holds the lock.)"""
        idle = [digest for digest, (_, used) in self._hot.items() if now - used > self.idle_seconds]
        for digest in idle:
            del self._hot[digest]
        return idle

    def _let_go(self, digests: list[str]) -> None:
        """Drop what pins a version that is no longer hot (its warm instances and export
        types); its running instances keep it until they end."""
        for digest in digests:
            if self.tier.warm is not None:
                self.tier.warm.discard(digest)
            self.tier.exports.forget(digest)

    def close(self) -> None:
        self._loader.shutdown(wait=True, cancel_futures=True)
        if self.tier.warm is not None:
            self.tier.warm.close()
        with self._lock:
            self._hot.clear()
        self._ticker.stop()
