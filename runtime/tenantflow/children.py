"""Host side of the `children` interface: child workflows bound to the parent's tenant.

Placeholder until child workflows land: every call fails with a clear error.
"""

from __future__ import annotations

from typing import Any, Callable

from .executor import err


def _unavailable(tagged: bool) -> Callable[..., Any]:
    def call(_: Any, *args: Any) -> Any:
        return err("NotImplemented", "child workflows are not available yet", tagged=tagged)

    return call


HOST_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "start": _unavailable(False),
    "join": _unavailable(False),
    "status": _unavailable(True),
    "send-event": _unavailable(False),
}
