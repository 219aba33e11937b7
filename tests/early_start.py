"""What a test file that starts its work right after collection (``start_early``, see ``tests/conftest.py``) reads
about the session: its own selected tests and the fixtures they use."""

from __future__ import annotations

import sys

import pytest


def selected_items(session: pytest.Session, module_name: str) -> list[pytest.Item]:
    """The session's selected tests that belong to the module ``module_name``."""
    module = sys.modules[module_name]
    return [item for item in session.items if getattr(item, "module", None) is module]


def fixtures_used(session: pytest.Session, module_name: str) -> set[str]:
    """Every fixture name a selected test of the module ``module_name`` uses."""
    return {name for item in selected_items(session, module_name) for name in getattr(item, "fixturenames", ())}
