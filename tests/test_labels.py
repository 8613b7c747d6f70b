"""Tests for features/labels.py."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from features.labels import BUY, CLASS_NAMES, HOLD, SELL, forward_return, make_labels
from tests.helpers import make_candles


def test_constants() -> None:
    assert (SELL, HOLD, BUY) == (0, 1, 2)
    assert CLASS_NAMES == ("sell", "hold", "buy")


def test_forward_return_values_and_tail() -> None:
    close = pd.Series([100.0, 110.0, 121.0, 99.0, 50.0])
    fwd = forward_return(close, 2)
    np.testing.assert_allclose(fwd.iloc[:3], [0.21, 99 / 110 - 1, 50 / 121 - 1])
    assert fwd.iloc[3:].isna().all()


def test_boundaries_are_strict() -> None:
    # 0.25 and the prices are exact binary fractions, so fwd == +-threshold exactly on the boundary rows.
    close = pd.Series([100.0, 125.0, 100.0, 75.0, 100.0, 125.01, 100.0, 74.99, 100.0])
    labels = make_labels(close, horizon=1, threshold=0.25)
    # Forward returns: +0.25 (= thr), -0.2, -0.25 (= -thr), +0.33, +0.2501, -0.2, -0.2501, +0.33, none.
    expected = [HOLD, HOLD, HOLD, BUY, BUY, HOLD, SELL, BUY, np.nan]
    np.testing.assert_array_equal(labels.to_numpy(), np.array(expected, dtype=float))
    assert labels.dtype == np.float64
    assert labels.name == "label"


@pytest.mark.parametrize("horizon", [1, 3, 7])
@pytest.mark.parametrize("vol_window", [0, 20])
def test_nan_tail_is_exactly_horizon(candles: pd.DataFrame, horizon: int, vol_window: int) -> None:
    labels = make_labels(candles["close"], horizon, 0.3 if vol_window else 0.002, vol_window)
    assert labels.iloc[len(labels) - horizon :].isna().all()
    body = labels.iloc[vol_window : len(labels) - horizon]
    assert body.notna().all()
    assert set(np.unique(body)) == {SELL, HOLD, BUY}
    assert labels.index.equals(candles.index)


def _reference_vol_labels(close: np.ndarray, horizon: int, threshold: float, window: int) -> np.ndarray:
    """Loop reference: sigma_t from the `window` log returns ending at t (ddof=1)."""
    out = np.full(len(close), np.nan)
    log_ret = np.diff(np.log(close))  # log_ret[k] is the return from bar k to bar k+1
    for t in range(window, len(close) - horizon):
        sigma = np.std(log_ret[t - window : t], ddof=1)  # returns ending at bar t
        thr = threshold * sigma * math.sqrt(horizon)
        fwd = close[t + horizon] / close[t] - 1
        out[t] = BUY if fwd > thr else SELL if fwd < -thr else HOLD
    return out


def test_volatility_mode_matches_reference(candles: pd.DataFrame) -> None:
    close = candles["close"]
    labels = make_labels(close, horizon=4, threshold=0.5, vol_window=12)
    expected = _reference_vol_labels(close.to_numpy(), 4, 0.5, 12)
    np.testing.assert_array_equal(labels.to_numpy(), expected)
    assert labels.iloc[:12].isna().all() and labels.iloc[12:-4].notna().all()
    # It is a different rule from the fixed threshold (otherwise this test could not tell them apart).
    assert not np.array_equal(labels.to_numpy(), make_labels(close, 4, 0.5).to_numpy(), equal_nan=True)


def test_volatility_threshold_uses_only_past() -> None:
    """Changing bars strictly between t and t+h (and after t+h) must not change label t."""
    base = make_candles(300, seed=5)["close"]
    horizon, window = 5, 10
    ref = make_labels(base, horizon, 0.8, window)
    rng = np.random.default_rng(0)
    cuts = range(12, 290, 9)
    # Rows that are BUY/SELL are the ones a peeking (wider) threshold would flip, so there must be some.
    assert {BUY, SELL} <= set(ref.iloc[list(cuts)])
    for t in cuts:
        changed = base.copy()
        keep = changed.iloc[t + horizon]
        # Wild swings right after t: a threshold that peeked at them would widen a lot.
        changed.iloc[t + 1 :] = base.iloc[t] * np.exp(rng.normal(0, 0.2, len(base) - t - 1))
        changed.iloc[t + horizon] = keep  # same forward return for row t
        new = make_labels(changed, horizon, 0.8, window)
        np.testing.assert_array_equal(new.iloc[: t + 1 - horizon].to_numpy(), ref.iloc[: t + 1 - horizon])
        assert new.iloc[t] == ref.iloc[t]
        assert not np.array_equal(new.iloc[t + 1 :].to_numpy(), ref.iloc[t + 1 :].to_numpy(), equal_nan=True)


def test_rows_without_horizon_are_nan_not_hold() -> None:
    close = pd.Series([100.0] * 5)
    labels = make_labels(close, horizon=2, threshold=0.01)
    np.testing.assert_array_equal(labels.to_numpy(), [HOLD, HOLD, HOLD, np.nan, np.nan])


def test_accepts_numpy_ints() -> None:
    close = pd.Series(np.linspace(100, 120, 30))
    a = make_labels(close, np.int64(3), np.float64(0.001), np.int64(5))
    b = make_labels(close, 3, 0.001, 5)
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())


_CLOSE = pd.Series(np.linspace(100, 110, 50))


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        ({"horizon": 0}, ValueError, r"horizon must be an int >= 1, got 0"),
        ({"horizon": -3}, ValueError, r"horizon must be an int >= 1, got -3"),
        ({"horizon": 2.0}, TypeError, r"horizon must be an int.*got 2\.0 of type float"),
        ({"horizon": True}, TypeError, r"horizon must be an int.*got True of type bool"),
        ({"threshold": 0.0}, ValueError, r"threshold must be a finite number > 0, got 0\.0"),
        ({"threshold": -0.01}, ValueError, r"threshold must be a finite number > 0, got -0\.01"),
        ({"threshold": float("nan")}, ValueError, r"threshold must be a finite number > 0, got nan"),
        ({"threshold": float("inf")}, ValueError, r"threshold must be a finite number > 0, got inf"),
        ({"threshold": "0.01"}, TypeError, r"threshold must be a finite number > 0, got '0\.01' of type str"),
        ({"vol_window": 1}, ValueError, r"vol_window must be .*0 .* or >= 2 .*got 1"),
        ({"vol_window": -5}, ValueError, r"vol_window must be .*got -5"),
        ({"vol_window": 10.0}, TypeError, r"vol_window must be an int.*got 10\.0 of type float"),
    ],
)
def test_parameter_validation(kwargs: dict, exc: type, pattern: str) -> None:
    params = {"horizon": 3, "threshold": 0.01, "vol_window": 0, **kwargs}
    with pytest.raises(exc, match=pattern):
        make_labels(_CLOSE, **params)


def test_forward_return_validates_horizon() -> None:
    with pytest.raises(ValueError, match="horizon"):
        forward_return(_CLOSE, 0)
    with pytest.raises(TypeError, match="close must be a pandas Series"):
        forward_return(_CLOSE.to_numpy(), 1)  # type: ignore[arg-type]
