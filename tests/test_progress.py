"""What a user sees while a run works: progress lines, the log level, and no library warning noise.

Also the cause of the "y_prob values do not sum to one" warnings (issue 12): XGBoost's float32
probabilities, off by up to ~1e-7 per row, checked by scikit-learn against float64's tolerance.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from evaluation.metrics import classification_metrics
from models.base import build_model
from models.ensemble import WeightedSoftVoting, as_probabilities, fit_predict_fold, fit_weights

# ---------------------------------------------------------------------------------------------------
# Probabilities sum to one in float64


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1500, 8))
    y = rng.integers(0, 3, 1500)
    return X, y


def _xgboost(seed=0):
    return build_model("xgboost", {"n_estimators": 30}, seed=seed, n_jobs=1)


def test_xgboost_float32_rows_are_what_breaks_the_sum(xy):
    X, y = xy
    raw = _xgboost().fit(X, y).predict_proba(X)
    assert raw.dtype == np.float32  # the cause: if XGBoost ever returns float64, this test can go
    fixed = as_probabilities(raw)
    assert fixed.dtype == np.float64
    assert np.abs(fixed.sum(axis=1) - 1).max() < 1e-12
    assert np.abs(fixed - raw).max() < 1e-6  # only rounding moved


def test_no_sum_warning_from_metrics_folds_weights_or_ensemble(xy):
    X, y = xy
    train, test = np.arange(1000), np.arange(1000, 1500)
    classes = np.arange(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        xgb = _xgboost().fit(X[train], y[train])
        metrics = classification_metrics(y[test], xgb.predict_proba(X[test]))
        oof_x = fit_predict_fold(_xgboost(), X, y, train, test, classes)
        oof_l = fit_predict_fold(
            build_model("lightgbm", {"n_estimators": 30}, n_jobs=1), X, y, train, test, classes
        )
        fit_weights([oof_x, oof_l], y[test], step=0.1)
        ens = WeightedSoftVoting(
            [("xgboost", _xgboost()), ("lightgbm", build_model("lightgbm", {"n_estimators": 30}, n_jobs=1))],
            weights=[0.7, 0.3],
        ).fit(X[train], y[train])
        proba = ens.predict_proba(X[test])
        classification_metrics(y[test], proba)
    sums = [str(w.message) for w in caught if "sum to one" in str(w.message)]
    assert sums == []
    assert np.isfinite(metrics["log_loss"])
    for p in (oof_x, proba):
        assert p.dtype == np.float64
        assert np.abs(p.sum(axis=1) - 1).max() < 1e-12


def test_metrics_clip_keeps_rows_summing_to_one():
    proba = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]], dtype=np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = classification_metrics([0, 1], proba)
    assert not [w for w in caught if "sum to one" in str(w.message)]
    assert m["log_loss"] == pytest.approx(np.log(2) / 2, abs=1e-12)
