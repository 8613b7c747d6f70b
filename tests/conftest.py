"""Shared fixtures for the features tests."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.helpers import make_candles

pytest_plugins = ["tests.servers", "tests.webhook"]


@pytest.fixture
def candles() -> pd.DataFrame:
    """600 seeded 30-minute BTC-like bars from 2024-01-01 UTC (fresh copy per test)."""
    return make_candles(600, seed=7)
