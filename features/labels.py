"""Buy/sell/hold labels: the forward return over a fixed horizon, or the first of three barriers touched.

Two kinds (``LABELS``):

* ``threshold``: the sign of the ``horizon``-bar forward return beyond +-threshold (``make_labels``);
* ``triple_barrier``: profit-take, stop-loss and time barriers (López de Prado, *Advances in Financial
  Machine Learning*, ch. 3): the first barrier a later close crosses sets the label
  (``triple_barrier_labels``).

A row's label looks ``horizon`` bars ahead (that is the point of a label), but its *barrier width* uses
only data up to the row itself, so it can be reproduced at prediction time. Rows without a full horizon
(the last ``horizon`` rows) are NaN, never defaulted to a class. ``average_uniqueness`` weighs labels
whose spans overlap (AFML ch. 4).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import pandas as pd

SELL, HOLD, BUY = 0, 1, 2
CLASS_NAMES: tuple[str, ...] = ("sell", "hold", "buy")
# Label kinds, and the sample-weight schemes ("auto": uniqueness for triple_barrier, none for threshold).
LABELS: tuple[str, ...] = ("threshold", "triple_barrier")
SAMPLE_WEIGHTS: tuple[str, ...] = ("auto", "uniqueness", "none")


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
    thr_t = barrier_width(close, h, thr, window)

    labels = np.where(fwd > thr_t, BUY, np.where(fwd < -thr_t, SELL, HOLD)).astype("float64")
    out = pd.Series(labels, index=close.index, name="label")
    # Comparisons with NaN are False (-> HOLD above), so undefined rows must be blanked explicitly.
    return out.where(fwd.notna() & thr_t.notna())


def barrier_width(close: pd.Series, horizon: int, threshold: float, vol_window: int = 0) -> pd.Series:
    """Each row's barrier half-width w_t as a fraction of close_t, known at the row (``make_labels``'
    thr_t): ``threshold``, or ``threshold * sigma_t * sqrt(horizon)`` with sigma_t the std of the
    ``vol_window`` 1-bar log returns ending at t. NaN where sigma_t is undefined.
    """
    h, thr = _check_horizon(horizon), _check_threshold(threshold)
    window, close = _check_vol_window(vol_window), _check_close(close)
    if window == 0:
        return pd.Series(thr, index=close.index)
    # Scaling by the recent 1-bar volatility keeps the class balance stable across calm and wild
    # regimes; sqrt(horizon) converts 1-bar sigma to the horizon under a random-walk assumption.
    sigma = np.log(close).diff().rolling(window).std()
    return thr * sigma * math.sqrt(h)


def check_label(label: object) -> str:
    """``label`` if it names a label kind, else ValueError naming the valid ones."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {list(LABELS)}, got {label!r}")
    return str(label)


def check_sample_weights(sample_weights: object) -> str:
    """``sample_weights`` if it names a weighting scheme, else ValueError naming the valid ones."""
    if sample_weights not in SAMPLE_WEIGHTS:
        raise ValueError(f"sample_weights must be one of {list(SAMPLE_WEIGHTS)}, got {sample_weights!r}")
    return str(sample_weights)


def resolve_sample_weights(label: str, sample_weights: str = "auto") -> str:
    """``auto`` resolved: ``uniqueness`` for triple-barrier labels, ``none`` for threshold labels.

    Threshold labels all span ``horizon`` bars, so their uniqueness is the same 1/(horizon+1) everywhere
    but at the edges of the data: weighting them changes almost nothing, and "none" keeps the model a
    threshold run has always fitted. Triple-barrier spans vary with how soon a barrier is touched.
    """
    label, sample_weights = check_label(label), check_sample_weights(sample_weights)
    if sample_weights != "auto":
        return sample_weights
    return "uniqueness" if label == "triple_barrier" else "none"


def triple_barrier_labels(
    close: pd.Series, horizon: int, multiplier: float, vol_window: int = 0
) -> tuple[pd.Series, pd.Series]:
    """Triple-barrier labels (AFML ch. 3) and the position of the bar that decided each.

    At row t the barriers are close_t * (1 + w_t) (profit-take) and close_t * (1 - w_t) (stop-loss), and
    bar t + horizon (time). w_t is ``make_labels``' threshold: ``multiplier`` itself when
    ``vol_window == 0``, else ``multiplier * sigma_t * sqrt(horizon)``, sigma_t the std of the
    ``vol_window`` 1-bar log returns ending at t (known at t; per-horizon, as the threshold label
    scales it, so the same ``multiplier`` gives barriers as wide as the threshold label's band).

    Label: BUY if a close at t+1 .. t+horizon rises above the upper barrier before any falls below the
    lower one, SELL in the opposite case, HOLD if neither is crossed by t + horizon (the time barrier).
    AFML labels a time-barrier exit by the sign of its return; HOLD keeps the third class meaning "no
    move worth trading within the horizon", as the threshold label does. Crossing is strict, like the
    threshold label's: a return of exactly +-w_t is not a touch.

    Only closes are compared, never highs and lows: with intrabar extremes both barriers can be touched
    inside one bar and which came first is unknowable from OHLC; a close is also a price a bot acting on
    bar closes can trade at. (So a wick through a barrier that closes back inside is not a touch.)

    Returns ``(labels, t1)``: float64 labels named "label" (NaN where the horizon is incomplete, sigma_t
    is undefined, or a close in [t, t+horizon] is NaN) and float64 ``t1``, the row position (0-based, in
    ``close``) of the deciding bar: the first touch, or t + horizon; NaN where the label is.
    """
    h = _check_horizon(horizon)
    thr = _check_threshold(multiplier)
    window = _check_vol_window(vol_window)
    close = _check_close(close)

    c = close.to_numpy()
    n = len(c)
    width = barrier_width(close, h, thr, window).to_numpy()
    never = h + 1  # "no touch within the horizon"
    first_up = np.full(n, never)
    first_down = np.full(n, never)
    complete = np.isfinite(c) & np.isfinite(width)
    # One pass per offset j (not per row): r_j[t] = close[t+j] / close[t] - 1.
    for j in range(1, h + 1):
        ahead = np.full(n, np.nan)
        ahead[: n - j] = c[j:]
        with np.errstate(invalid="ignore"):
            r = ahead / c - 1.0
            first_up = np.where((first_up == never) & (r > width), j, first_up)
            first_down = np.where((first_down == never) & (r < -width), j, first_down)
        complete &= np.isfinite(ahead)
    # With closes only, one bar cannot cross both barriers (w_t > 0), so first_up == first_down only
    # when neither was touched.
    labels = np.where(first_up < first_down, BUY, np.where(first_down < first_up, SELL, HOLD)).astype(
        "float64"
    )
    t1 = (np.arange(n) + np.minimum(np.minimum(first_up, first_down), h)).astype("float64")
    labels[~complete] = np.nan
    t1[~complete] = np.nan
    return (
        pd.Series(labels, index=close.index, name="label"),
        pd.Series(t1, index=close.index, name="t1"),
    )


def labels_and_ends(
    close: pd.Series, horizon: int, threshold: float, vol_window: int = 0, label: str = "threshold"
) -> tuple[pd.Series, pd.Series]:
    """Labels of kind ``label`` and each label's end position t1 (threshold labels: t + horizon)."""
    if check_label(label) == "triple_barrier":
        return triple_barrier_labels(close, horizon, threshold, vol_window)
    labels = make_labels(close, horizon, threshold, vol_window)
    t1 = pd.Series(np.arange(len(labels), dtype="float64") + _check_horizon(horizon), index=labels.index)
    return labels, t1.where(labels.notna()).rename("t1")


def label_function(label: str = "threshold"):
    """``labels(close, horizon, threshold, vol_window) -> Series`` of kind ``label`` (the look-ahead
    check's and the evaluation's signature)."""
    check_label(label)

    def labels(close: pd.Series, horizon: int, threshold: float, vol_window: int = 0) -> pd.Series:
        return labels_and_ends(close, horizon, threshold, vol_window, label)[0]

    labels.__name__ = f"{label}_labels"
    return labels


def average_uniqueness(start: np.ndarray, end: np.ndarray, n_bars: int | None = None) -> np.ndarray:
    """Average uniqueness of each label over its span (AFML ch. 4), from integer bar positions.

    Label i spans bars ``start[i] .. end[i]`` (both included). The concurrency c_u of bar u is how many
    labels span it; label i's uniqueness is the mean of 1 / c_u over its span: 1 for a label no other
    overlaps, 1/k for k labels with the same span. Cumulative sums, no loop over rows. Nothing else
    (no return attribution, no time decay) enters the weight.
    """
    start = np.asarray(start, dtype=np.int64)
    end = np.asarray(end, dtype=np.int64)
    if start.shape != end.shape or start.ndim != 1:
        raise ValueError("start and end must be 1-d arrays of the same length")
    if len(start) == 0:
        return np.zeros(0)
    if (start < 0).any() or (end < start).any():
        raise ValueError("each span needs 0 <= start <= end")
    n = int(end.max()) + 1 if n_bars is None else int(n_bars)
    delta = np.zeros(n + 1)
    np.add.at(delta, start, 1.0)
    np.add.at(delta, end + 1, -1.0)
    concurrency = np.cumsum(delta)[:n]
    inverse = np.divide(1.0, concurrency, out=np.zeros(n), where=concurrency > 0)
    total = np.concatenate([[0.0], np.cumsum(inverse)])  # total[k] = sum of inverse[:k]
    return (total[end + 1] - total[start]) / (end - start + 1)


def meta_labels(labels: pd.Series, side: pd.Series) -> pd.Series:
    """Meta-labels (AFML ch. 3.6): whether acting on the primary ``side`` pays, in the three classes.

    BUY where the side is +1 and the label is BUY, SELL where the side is -1 and the label is SELL, HOLD
    otherwise (the primary's bet would not pay, or there is no side: 0 or NaN); NaN where ``labels`` is
    NaN. ``labels`` are the run's labels of either kind; their spans (t1) and weights are unchanged.
    """
    lab = labels.to_numpy(dtype="float64")
    s = pd.Series(side, index=labels.index).to_numpy(dtype="float64")
    out = np.where((s == 1) & (lab == BUY), BUY, np.where((s == -1) & (lab == SELL), SELL, HOLD))
    out = np.where(np.isnan(lab), np.nan, out).astype("float64")
    return pd.Series(out, index=labels.index, name="label")
