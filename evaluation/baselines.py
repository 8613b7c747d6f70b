"""Baselines that know what is easy to predict. No tracking calls here.

Beating "always majority" and "stratified random" proves little: with a threshold label, whether a bar
ends as ``hold`` depends mostly on volatility, and volatility is predictable. These baselines take the
easy parts for free, so a candidate has to show more than them:

* ``volatility``: sees only trailing volatility (rolling standard deviations of log returns and the
  average bar range). A multinomial logistic regression on those, fitted on the development rows, says
  how likely ``hold`` is; it calls hold above a probability cut chosen on the development rows, and
  otherwise a direction drawn at random in the proportion its probabilities give (it has no
  directional information beyond what volatility itself carries).
* ``momentum`` / ``reversal``: the last ``horizon`` bars' return, compared with the label's own threshold
  (scaled by a factor chosen on the development rows), predicts that the move repeats / reverses.

Every input at row t uses candles up to t only, and everything fitted sees development rows only.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from evaluation.metrics import LABELS, macro_f1
from features.labels import BUY, HOLD, SELL

THRESHOLD_SCALES: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
HOLD_CUTS = np.linspace(0.02, 0.98, 49)  # quantiles of the development rows' p(hold)


def volatility_features(candles: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """Trailing volatility only (no direction): log std of 1-bar log returns over several windows and the
    log of the mean high/low range over ``horizon`` bars. Row t uses candles up to t."""
    logret = np.log(candles["close"].astype(float)).diff()
    windows = sorted({max(2, horizon), 4 * horizon, 16 * horizon, 96})
    cols = {f"logvol_{w}": logret.rolling(w, min_periods=2).std() for w in windows}
    bar_range = np.log(candles["high"].astype(float) / candles["low"].astype(float))
    cols["logrange"] = bar_range.rolling(max(1, horizon), min_periods=1).mean()
    out = pd.DataFrame(cols, index=candles.index)
    return np.log(out.clip(lower=1e-12)).ffill().fillna(0.0)


def trailing_threshold(close: pd.Series, horizon: int, threshold: float, vol_window: int) -> pd.Series:
    """The label's threshold as known at t (``features.labels.make_labels``' rule, causal by construction)."""
    if vol_window == 0:
        return pd.Series(threshold, index=close.index)
    sigma = np.log(close).diff().rolling(vol_window).std()
    return threshold * sigma * math.sqrt(horizon)


def _momentum_calls(past: np.ndarray, thr: np.ndarray, scale: float, sign: int) -> np.ndarray:
    up, down = past > scale * thr, past < -scale * thr
    if sign < 0:
        up, down = down, up
    return np.where(up, BUY, np.where(down, SELL, HOLD)).astype(np.int64)


def _calibrated_proba(y_dev: np.ndarray, dev_calls: np.ndarray, calls: np.ndarray) -> np.ndarray:
    """P(label | call) on the development rows (add-one smoothed), for each of ``calls``: a baseline's
    probabilities for log loss; its prediction stays the call itself."""
    table = np.ones((len(LABELS), len(LABELS)))
    np.add.at(table, (dev_calls, y_dev), 1.0)
    table /= table.sum(axis=1, keepdims=True)
    return table[calls]


def informed_baselines(
    candles: pd.DataFrame,
    bars: np.ndarray,
    y: np.ndarray,
    dev: np.ndarray,
    evaluate: np.ndarray,
    horizon: int,
    threshold: float,
    vol_window: int,
    seed: int = 0,
) -> dict[str, dict]:
    """Fit the informed baselines on rows ``dev`` and predict rows ``evaluate``.

    ``bars`` maps data set rows to candle positions and ``y`` holds every row's label (only the ``dev``
    ones are read for fitting). Returns ``{name: {"pred": labels, "proba": (rows, 3), "fitted": {...}}}``.
    """
    y = np.asarray(y, dtype=np.int64)
    y_dev = y[dev]
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {}

    # Volatility: p(class | trailing volatility), hold above a cut, otherwise a random direction.
    vol = volatility_features(candles, horizon).to_numpy()[bars]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(vol[dev], y_dev)

    def proba_of(rows: np.ndarray) -> np.ndarray:
        p = np.zeros((len(rows), len(LABELS)))
        p[:, model.classes_] = model.predict_proba(vol[rows])
        return p

    def vol_calls(p: np.ndarray, cut: float, draws: np.ndarray) -> np.ndarray:
        moves = p[:, SELL] + p[:, BUY]
        p_buy = np.divide(p[:, BUY], moves, out=np.full(len(p), 0.5), where=moves > 0)
        direction = np.where(draws < p_buy, BUY, SELL)
        return np.where(p[:, HOLD] >= cut, HOLD, direction).astype(np.int64)

    p_dev = proba_of(dev)
    dev_draws = rng.random(len(dev))
    cuts = np.unique(np.quantile(p_dev[:, HOLD], HOLD_CUTS))
    best_cut = max(cuts, key=lambda c: macro_f1(y_dev, vol_calls(p_dev, c, dev_draws)))
    p_eval = proba_of(evaluate)
    out["volatility"] = {
        "pred": vol_calls(p_eval, best_cut, rng.random(len(evaluate))),
        "proba": p_eval,
        "fitted": {"hold_cut": float(best_cut)},
    }

    # Momentum and reversal of the last `horizon` bars' return against the label's own threshold.
    close = candles["close"].astype(float)
    past = (close / close.shift(horizon) - 1.0).to_numpy()[bars]
    thr = trailing_threshold(close, horizon, threshold, vol_window).to_numpy()[bars]
    past, thr = np.nan_to_num(past, nan=0.0), np.nan_to_num(thr, nan=np.inf)
    for name, sign in (("momentum", 1), ("reversal", -1)):
        dev_f1 = {s: macro_f1(y_dev, _momentum_calls(past[dev], thr[dev], s, sign)) for s in THRESHOLD_SCALES}
        scale = max(THRESHOLD_SCALES, key=lambda s: dev_f1[s])
        dev_calls = _momentum_calls(past[dev], thr[dev], scale, sign)
        calls = _momentum_calls(past[evaluate], thr[evaluate], scale, sign)
        out[name] = {
            "pred": calls,
            "proba": _calibrated_proba(y_dev, dev_calls, calls),
            "fitted": {"threshold_scale": scale},
        }
    return out
