"""Buy/sell/hold labels from the forward return over a fixed horizon.

A row's label looks ``horizon`` bars ahead (that is the point of a label), but its *threshold* uses only
data up to the row itself, so the threshold can be reproduced at prediction time. Rows without a full
horizon (the last ``horizon`` rows) are NaN, never defaulted to a class.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import pandas as pd

SELL, HOLD, BUY = 0, 1, 2
CLASS_NAMES: tuple[str, ...] = ("sell", "hold", "buy")


def _check_int(name: str, value: object, allowed: str, ok: bool | None = None) -> int:
    # bool is an int subclass, but horizon=True is certainly a bug.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int ({allowed}), got {value!r} of type {type(value).__name__}")
    if ok is not None and not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def _check_horizon(horizon: object) -> int:
    value = _check_int("horizon", horizon, "an int >= 1")
    return _check_int("horizon", horizon, "an int >= 1", ok=value >= 1)


def _check_threshold(threshold: object) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(
            f"threshold must be a finite number > 0, got {threshold!r} of type {type(threshold).__name__}"
        )
    value = float(threshold)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"threshold must be a finite number > 0, got {threshold!r}")
    return value


def _check_vol_window(vol_window: object) -> int:
    allowed = "an int, 0 (fixed threshold) or >= 2 (volatility-scaled threshold)"
    value = _check_int("vol_window", vol_window, allowed)
    # A 1-bar window has no sample std (ddof=1), so it would silently make every label NaN.
    return _check_int("vol_window", vol_window, allowed, ok=value == 0 or value >= 2)


def _check_close(close: object) -> pd.Series:
    if not isinstance(close, pd.Series):
        raise TypeError(f"close must be a pandas Series, got {type(close).__name__}")
    return close.astype("float64")


def forward_return(close: pd.Series, horizon: int) -> pd.Series:
    """close[t + horizon] / close[t] - 1; NaN for the last ``horizon`` rows."""
    h = _check_horizon(horizon)
    close = _check_close(close)
    return (close.shift(-h) / close - 1.0).rename("forward_return")


def make_labels(close: pd.Series, horizon: int, threshold: float, vol_window: int = 0) -> pd.Series:
    """Label each row SELL (0) / HOLD (1) / BUY (2) from its ``horizon``-bar forward return.

    BUY if fwd > thr_t, SELL if fwd < -thr_t, else HOLD (the boundaries themselves are HOLD).
    Fixed mode (``vol_window == 0``): thr_t = threshold. Volatility mode: thr_t = threshold * sigma_t *
    sqrt(horizon), sigma_t the std of 1-bar log returns over the ``vol_window`` bars ending at t.
    Returns float64 named "label", NaN where the horizon is incomplete or sigma_t is undefined.
    """
    h = _check_horizon(horizon)
    thr = _check_threshold(threshold)
    window = _check_vol_window(vol_window)
    close = _check_close(close)

    fwd = forward_return(close, h)
    if window == 0:
        thr_t = pd.Series(thr, index=close.index)
    else:
        # Scaling by the recent 1-bar volatility keeps the class balance stable across calm and wild
        # regimes; sqrt(horizon) converts 1-bar sigma to the horizon under a random-walk assumption.
        sigma = np.log(close).diff().rolling(window).std()
        thr_t = thr * sigma * math.sqrt(h)

    labels = np.where(fwd > thr_t, BUY, np.where(fwd < -thr_t, SELL, HOLD)).astype("float64")
    out = pd.Series(labels, index=close.index, name="label")
    # Comparisons with NaN are False (-> HOLD above), so undefined rows must be blanked explicitly.
    return out.where(fwd.notna() & thr_t.notna())
