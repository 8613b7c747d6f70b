"""The ensemble's fast prediction path (models.ensemble: fast_member_proba, forest_predict_proba, members
side by side) gives exactly the numbers of each library's own predict_proba, and the served model's
signals do not change with it. Tiny models on random data; nothing here measures time."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from features.indicators import compute_features
from models.base import build_model
from models.ensemble import (
    FOREST_SINGLE_THREAD_ROWS,
    WeightedSoftVoting,
    as_probabilities,
    fast_member_proba,
    forest_predict_proba,
)
from models.policy import mask_to_side
from models.pyfunc import SignalModel
from tests.helpers import make_candles

N_FEATURES = 15
ROWS = (1, 251, 3000)


def _members(n_jobs: int = 1) -> list:
    return [
        ("lightgbm", build_model("lightgbm", {"n_estimators": 15, "num_leaves": 8}, n_jobs=n_jobs)),
        ("xgboost", build_model("xgboost", {"n_estimators": 15, "max_depth": 4}, n_jobs=n_jobs)),
        ("random_forest", build_model("random_forest", {"n_estimators": 12, "max_depth": 8}, n_jobs=n_jobs)),
    ]


def _data(n: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, N_FEATURES)), columns=[f"f{i}" for i in range(N_FEATURES)])
    y = (X["f0"] + 0.5 * X["f1"] > 0).astype(int) + (X["f2"] > 0.8).astype(int)
    return X, y.to_numpy()


@pytest.fixture(scope="module")
def fitted():
    X, y = _data(600)
    return WeightedSoftVoting(_members(), weights=[0.25, 0.45, 0.3]).fit(X, y)


@pytest.fixture(scope="module")
def rows():
    return _data(max(ROWS), seed=1)[0]


def _library(ens: WeightedSoftVoting, X) -> np.ndarray:
    """The ensemble's probabilities as the libraries compute them (VotingClassifier's soft vote)."""
    return as_probabilities(ens.voter_.predict_proba(X))


@pytest.mark.parametrize("n", ROWS)
def test_every_member_gives_the_librarys_numbers(fitted, rows, n):
    X = rows.iloc[-n:]
    for name, est in fitted.named_estimators_.items():
        expected = est.predict_proba(X)
        got = fast_member_proba(est, X, X.to_numpy())
        assert got.dtype == expected.dtype, name
        np.testing.assert_array_equal(got, expected, err_msg=name)


@pytest.mark.parametrize("side_by_side", [True, False])
@pytest.mark.parametrize("n", ROWS)
def test_the_ensemble_gives_the_librarys_numbers(fitted, rows, n, side_by_side, monkeypatch):
    monkeypatch.setattr(fitted, "side_by_side_predict", side_by_side)
    X = rows.iloc[-n:]
    np.testing.assert_array_equal(fitted.predict_proba(X), _library(fitted, X))
    np.testing.assert_array_equal(fitted.predict(X), fitted.classes_[_library(fitted, X).argmax(axis=1)])


def test_a_numpy_input_gives_the_same_numbers(fitted, rows):
    X = rows.iloc[-251:]
    np.testing.assert_array_equal(fitted.predict_proba(X.to_numpy()), _library(fitted, X))


def test_the_forest_sum_is_scikit_learns(fitted, rows):
    forest = fitted.named_estimators_["random_forest"]
    X32 = rows.to_numpy(dtype=np.float32)
    np.testing.assert_array_equal(forest_predict_proba(forest, X32), forest.predict_proba(rows))


def test_rows_with_nan_go_to_the_library(fitted, rows):
    X = rows.iloc[-251:].copy()
    X.iloc[3, 2] = np.nan  # every family here predicts on NaN (as missing)
    np.testing.assert_array_equal(fitted.predict_proba(X), _library(fitted, X))


def test_columns_in_another_order_are_refused_as_before(fitted, rows):
    X = rows.iloc[-10:]
    shuffled = X[list(X.columns[::-1])]
    with pytest.raises(ValueError) as library:
        _library(fitted, shuffled)
    with pytest.raises(ValueError) as fast:
        fitted.predict_proba(shuffled)
    assert "feature" in str(fast.value) and str(fast.value) == str(library.value)


def test_a_threaded_forest_keeps_its_own_predict_for_big_batches():
    X, y = _data(400)
    ens = WeightedSoftVoting(_members(n_jobs=2), weights=[0.2, 0.3, 0.5]).fit(X, y)
    for n in (251, FOREST_SINGLE_THREAD_ROWS + 1):
        Xb = _data(n, seed=2)[0]
        # A threaded forest may add its trees in another order: equal up to float64 rounding.
        np.testing.assert_allclose(ens.predict_proba(Xb), _library(ens, Xb), rtol=0, atol=1e-12)


def test_meta_labeling_blends_the_masked_members_as_before():
    X, y = _data(500)
    X["primary_side"] = np.where(X["f3"] > 0, 1.0, -1.0)
    ens = WeightedSoftVoting(_members(), weights=[0.3, 0.3, 0.4], side_column="primary_side").fit(X, y)
    Xt = _data(251, seed=3)[0].assign(primary_side=lambda d: np.where(d["f4"] > 0, 1.0, -1.0))
    side = Xt["primary_side"].to_numpy()
    members = [mask_to_side(as_probabilities(e.predict_proba(Xt)), side) for e in ens.voter_.estimators_]
    expected = mask_to_side(np.tensordot(ens.weights_, np.stack(members), axes=1), side)
    np.testing.assert_array_equal(ens.predict_proba(Xt), expected)


def test_pickling_drops_the_kept_state_and_an_old_pickle_still_predicts(fitted, rows):
    X = rows.iloc[-251:]
    fitted.predict_proba(X)  # builds the leaf tables and starts the worker thread
    state = fitted.__getstate__()
    assert "_predict_cache" not in state and "_predict_pool" not in state
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.predict_proba(X), _library(fitted, X))
    # An ensemble pickled before any of this (and before meta-labeling): no side_column, no kept state.
    old_state = {k: v for k, v in state.items() if k != "side_column"}
    old = WeightedSoftVoting.__new__(WeightedSoftVoting)
    old.__setstate__(old_state)
    np.testing.assert_array_equal(old.predict_proba(X), _library(fitted, X))


def test_a_refitted_ensemble_does_not_reuse_the_old_trees(rows):
    X, y = _data(300)
    ens = WeightedSoftVoting(_members(), weights=[0.2, 0.3, 0.5]).fit(X, y)
    ens.predict_proba(rows.iloc[:5])
    X2, y2 = _data(300, seed=5)
    ens.fit(X2, y2)
    np.testing.assert_array_equal(ens.predict_proba(rows), _library(ens, rows))


def test_the_served_signals_do_not_change(monkeypatch):
    candles = make_candles(700, seed=11)
    X = compute_features(candles).dropna()
    y = np.random.default_rng(4).integers(0, 3, len(X))
    ens = WeightedSoftVoting(_members(), weights=[0.3, 0.4, 0.3]).fit(X, y)
    model = SignalModel(ens, "default", pd.Timedelta("30min"))
    frame = candles.reset_index()
    frame["timestamp"] = frame["timestamp"].dt.tz_localize(None)
    outputs = {n: model.predict_candles(frame.iloc[-n:]) for n in (1, 300, 700)}
    # The same through each library's own predict_proba.
    monkeypatch.setattr(WeightedSoftVoting, "predict_proba", lambda self, X: _library(self, X))
    for n, got in outputs.items():
        pd.testing.assert_frame_equal(got, model.predict_candles(frame.iloc[-n:]), check_exact=True)
    assert bool(outputs[300]["ready"].iloc[-1])
