"""Host side of the `capabilities` interface: outbound HTTP and secrets, per tenant policy.

Placeholder until capabilities land: every call is denied with a clear error.
"""

from __future__ import annotations

from typing import Any, Callable

from .executor import err


def _fetch(_: Any, request: Any) -> Any:
    return err("CapabilityDenied", "outbound HTTP is not available to this tenant", tagged=True)


def _secret(_: Any, name: str) -> Any:
    return err("CapabilityDenied", f"secret {name!r} is not granted to this tenant", tagged=False)


HOST_FUNCTIONS: dict[str, Callable[..., Any]] = {"fetch": _fetch, "secret": _secret}
