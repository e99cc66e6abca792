"""Fixtures of the framework-agnostic core suite (run under e3nn 0.4.4 and 0.6)."""

import pytest
from core_helpers import ToyBackbone


@pytest.fixture
def toy_backbone():
    return ToyBackbone()
