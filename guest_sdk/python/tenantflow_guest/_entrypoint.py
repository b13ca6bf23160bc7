"""The base class tenant workflows extend."""

from __future__ import annotations

from typing import Any


class WorkflowEntrypoint:
    """Subclass and implement `run(self, event, step)` (plain or `async def`).

    The workflow is named by the class name, or by a `name` class attribute.
    """

    name: str = ""

    def run(self, event: Any, step: Any) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError(f"{type(self).__name__}.run is not implemented")


def workflow_name(cls: type[WorkflowEntrypoint]) -> str:
    declared = cls.__dict__.get("name")
    return declared if isinstance(declared, str) and declared else cls.__name__
