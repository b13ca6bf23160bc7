"""Where component bytes come from on an isolate-cache miss.

The embedding platform implements `Loader` (an async protocol) to fetch a tenant's code
from wherever it keeps it; the engine verifies the bytes against the digest pinned in the
instance's envelope before compiling them. The built-in `RegistryLoader` serves the
content-addressed blobs of `engine.deploy`.
"""

from __future__ import annotations

import asyncio
from typing import Optional, Protocol

from .errors import ComponentError
from .registry import ComponentStore, digest_of


class LoaderError(ComponentError):
    """The loader could not provide the component now (unavailable, wrong bytes). The
    instance waits and retries; it is not failed."""

    code = "loader_error"


class Loader(Protocol):
    async def load(self, tenant: str, workflow: str, digest: str) -> bytes:
        """The component bytes whose sha256 is `digest` (raise if unavailable)."""
        ...


class RegistryLoader:
    """Serves components stored by `engine.deploy` (the default loader)."""

    def __init__(self, store: ComponentStore) -> None:
        self.store = store

    async def load(self, tenant: str, workflow: str, digest: str) -> bytes:
        return await asyncio.to_thread(self.store.get, digest)


def load_verified(loader: Loader, loop: Optional[asyncio.AbstractEventLoop], tenant: str, workflow: str, digest: str, timeout: float = 60.0) -> bytes:
    """Call the async loader from a worker thread and check the digest of what it returns."""
    if loop is None:
        raise LoaderError("the engine is not running")
    try:
        wasm = asyncio.run_coroutine_threadsafe(loader.load(tenant, workflow, digest), loop).result(timeout)
    except Exception as exc:  # noqa: BLE001 - any loader failure is reported, the instance retries
        raise LoaderError(f"the loader could not provide component {digest[:12]} for {tenant}/{workflow}: {type(exc).__name__}: {exc}") from None
    if not isinstance(wasm, (bytes, bytearray)):
        raise LoaderError(f"the loader returned {type(wasm).__name__}, not bytes, for component {digest[:12]}")
    actual = digest_of(bytes(wasm))
    if actual != digest:
        raise LoaderError(f"the loader returned bytes with digest {actual[:12]} for component {digest[:12]}; refusing them")
    return bytes(wasm)
