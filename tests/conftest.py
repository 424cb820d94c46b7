"""Test-wide settings: every asyncio test runs on uvloop, the loop the relay runs on."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], Any]]:
    """pytest-asyncio hook: run async tests on uvloop."""
    return {"uvloop": uvloop.new_event_loop}
