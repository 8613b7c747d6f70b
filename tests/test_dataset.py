"""Tests for features/dataset.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from features.context import compute_model_features, feature_names
from features.dataset import MIN_ROWS, Dataset, InsufficientDataError, build_dataset
from features.indicators import FEATURE_NAMES, compute_features, warmup_bars
from features.labels import make_labels
from tests.helpers import make_candles


@pytest.mark.parametrize("feature_set", ["default", "seed15"])
@pytest.mark.parametrize("horizon", [1, 6])
def test_row_accounting_and_alignment(candles: pd.DataFrame, feature_set: str, horizon: int) -> None:
    original = candles.copy()
    ds = build_dataset(candles, feature_set=feature_set, horizon=horizon, threshold=0.003, min_rows=100)
    n, w = len(candles), warmup_bars(feature_set)
    assert ds.n_rows == n - w - horizon
    np.testing.assert_array_equal(ds.bars, np.arange(w, n - horizon))
    assert ds.bars.dtype == np.int64
    assert ds.X.index.equals(candles.index[w : n - horizon])
    assert ds.y.index.equals(ds.X.index)
    assert list(ds.X.columns) == list(FEATURE_NAMES)
    assert ds.y.dtype == np.int64
    assert not ds.X.isna().any().any()
    # Rows are the feature/label rows of the same bars, not shifted.
    pd.testing.assert_frame_equal(ds.X, compute_features(candles, feature_set).iloc[w : n - horizon])
    labels = make_labels(candles["close"], horizon, 0.003).iloc[w : n - horizon]
    np.testing.assert_array_equal(ds.y.to_numpy(), labels.to_numpy().astype(np.int64))
    # The candles are passed through untouched.
    assert ds.candles is candles
    pd.testing.assert_frame_equal(candles, original)


def test_context_columns_follow_the_base_ones_and_move_the_head() -> None:
    candles = make_candles(1200, seed=7, freq="15min")
    ds = build_dataset(candles, horizon=6, threshold=0.003, min_rows=100, context_timeframe="1h")
    assert list(ds.X.columns) == feature_names("default", "1h") and len(ds.X.columns) == 30
    # The 1h set's warm-up is 49 hour bars; the 49th is complete at the 15m bar opening 49h45m in.
    first = 49 * 4 + 3
    np.testing.assert_array_equal(ds.bars, np.arange(first, len(candles) - 6))
    pd.testing.assert_frame_equal(ds.X, compute_model_features(candles, "default", "1h").iloc[first:-6])
    with pytest.raises(InsufficientDataError, match=r"202 rows were lost .*context_timeframe='1h'"):
        build_dataset(candles.iloc[:202], context_timeframe="1h")


def test_volatility_window_longer_than_warmup_sets_the_head(candles: pd.DataFrame) -> None:
    ds = build_dataset(candles, horizon=6, threshold=0.5, vol_window=100, min_rows=100)
    assert ds.bars[0] == 100 and ds.bars[-1] == len(candles) - 7
    assert ds.n_rows == len(candles) - 100 - 6


def test_class_counts(candles: pd.DataFrame) -> None:
    ds = build_dataset(candles, threshold=0.003, min_rows=100)
    counts = ds.class_counts
    assert list(counts) == ["sell", "hold", "buy"]
    assert sum(counts.values()) == ds.n_rows
    assert counts["sell"] == int((ds.y == 0).sum())
    assert counts["hold"] == int((ds.y == 1).sum())
    assert counts["buy"] == int((ds.y == 2).sum())
    assert min(counts.values()) > 0


def test_dataset_is_frozen(candles: pd.DataFrame) -> None:
    ds = build_dataset(candles, threshold=0.003, min_rows=100)
    assert isinstance(ds, Dataset)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.y = ds.y  # type: ignore[misc]


def test_nan_in_the_middle_names_feature_and_timestamp(candles: pd.DataFrame) -> None:
    candles.iloc[300, candles.columns.get_loc("volume")] = np.nan
    ts = candles.index[300]
    with pytest.raises(ValueError, match="contiguous") as err:
        build_dataset(candles, threshold=0.003, min_rows=100)
    message = str(err.value)
    assert str(ts) in message and "bar 300" in message
    assert "'volume_ratio'" in message and "'volume'" in message
    assert "'label'" not in message
    assert not isinstance(err.value, InsufficientDataError)


def test_nan_close_in_the_middle_is_first_seen_by_the_label(candles: pd.DataFrame) -> None:
    # close[300] missing makes label[294] (its 6-bar forward return) undefined before any feature is.
    candles.iloc[300, candles.columns.get_loc("close")] = np.nan
    with pytest.raises(ValueError, match=r"\['label'\]") as err:
        build_dataset(candles, horizon=6, threshold=0.003, min_rows=100)
    assert str(candles.index[294]) in str(err.value)


def test_insufficient_data_message(candles: pd.DataFrame) -> None:
    assert MIN_ROWS == 2000
    with pytest.raises(InsufficientDataError) as err:
        build_dataset(candles, horizon=6, threshold=0.003)  # 600 candles < MIN_ROWS
    message = str(err.value)
    usable = len(candles) - warmup_bars("default") - 6
    assert f"only {usable} usable rows from {len(candles)} candles" in message
    assert "need at least 2000" in message
    assert f"{warmup_bars('default')} rows were lost to indicator warm-up" in message
    assert "6 to the label horizon" in message
    for hint in ("`days`", "`timeframe`", "data file"):
        assert hint in message
    assert isinstance(err.value, ValueError)


def test_insufficient_data_when_shorter_than_warmup() -> None:
    with pytest.raises(InsufficientDataError, match=r"only 0 usable rows from 30 candles.*30 rows were lost"):
        build_dataset(make_candles(30), min_rows=1)


def test_min_rows_boundary(candles: pd.DataFrame) -> None:
    usable = len(candles) - warmup_bars("default") - 6
    assert build_dataset(candles, threshold=0.003, min_rows=usable).n_rows == usable
    with pytest.raises(InsufficientDataError):
        build_dataset(candles, threshold=0.003, min_rows=usable + 1)


def test_absent_classes_threshold_too_large(candles: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match=r"\['sell', 'buy'\] have no rows") as err:
        build_dataset(candles, threshold=10.0, min_rows=100)
    message = str(err.value)
    assert f"'hold': {len(candles) - 49 - 6}" in message and "'sell': 0" in message
    assert "smaller threshold" in message
    assert not isinstance(err.value, InsufficientDataError)


def test_absent_hold_suggests_larger_threshold(candles: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match=r"\['hold'\] have no rows.*larger threshold"):
        build_dataset(candles, threshold=1e-12, min_rows=100)


@pytest.mark.parametrize(("min_rows", "exc"), [(0, ValueError), (2.5, TypeError), (True, TypeError)])
def test_min_rows_validation(candles: pd.DataFrame, min_rows: object, exc: type) -> None:
    with pytest.raises(exc, match="min_rows must be an int >= 1"):
        build_dataset(candles, min_rows=min_rows)  # type: ignore[arg-type]
