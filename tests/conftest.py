"""Shared fixtures: compiled components (cached by source digest, see components.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from components import build_component


@pytest.fixture(scope="session")
def component_builder() -> Callable[[Path], Path]:
    """`component_builder(source) -> path of the compiled .wasm` (cached across sessions)."""
    return build_component
