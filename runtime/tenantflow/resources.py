"""Where the files the compiler bundles live: the WIT world and the Python guest SDK.

An installed wheel carries them as package data under `tenantflow/_guest/`; a checkout
(or an editable install, which imports `tenantflow` from `runtime/`) reads them from the
repository's `guest_sdk/`, so edits to the SDK are picked up without reinstalling.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_PACKAGED = _PACKAGE_DIR / "_guest"
_CHECKOUT = _PACKAGE_DIR.parent.parent / "guest_sdk"


def _guest_root() -> Path:
    if (_PACKAGED / "wit").is_dir():
        return _PACKAGED
    if (_CHECKOUT / "wit").is_dir():
        return _CHECKOUT
    raise FileNotFoundError(
        f"tenantflow's guest files are missing: neither {_PACKAGED} (installed package data) "
        f"nor {_CHECKOUT} (source checkout) exists; reinstall tenantflow"
    )


def wit_dir() -> Path:
    """The directory holding the `tenantflow:workflow` WIT package."""
    return _guest_root() / "wit"


def guest_sdk_dir() -> Path:
    """The directory that contains the `tenantflow_guest` package (a python path entry)."""
    return _guest_root() / "python"
