"""Content-addressed storage of deployed components (the built-in loader's bytes)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from .errors import ComponentError


def digest_of(wasm: bytes) -> str:
    return hashlib.sha256(wasm).hexdigest()


class ComponentStore:
    """Blob files named by their sha256; a blob is verified against its name when read."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ComponentError(f"invalid component digest {digest!r}")
        return self.root / f"{digest}.wasm"

    def put(self, wasm: bytes) -> str:
        digest = digest_of(wasm)
        path = self.path(digest)
        if not path.exists():
            tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
            with open(tmp, "wb") as f:
                f.write(wasm)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        return digest

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def get(self, digest: str) -> bytes:
        path = self.path(digest)
        try:
            wasm = path.read_bytes()
        except FileNotFoundError:
            raise ComponentError(f"component {digest[:12]} is not in the registry ({path})") from None
        if digest_of(wasm) != digest:
            raise ComponentError(f"component {digest[:12]} is corrupt: its bytes do not match its digest")
        return wasm
