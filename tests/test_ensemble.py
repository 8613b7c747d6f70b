import numpy as np
import pytest
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import check_estimators_unfitted

from models.base import build_model
from models.ensemble import WeightedSoftVoting, fit_weights, simplex_grid
from train.split import PurgedWalkForward


def _data(n=900, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = np.where(X[:, 0] + 0.3 * rng.normal(size=n) > 0.6, 2, np.where(X[:, 0] < -0.6, 0, 1))
    return X, y


def _ensemble(**kw):
    return WeightedSoftVoting(
        [
            ("lr", LogisticRegression(max_iter=500)),
            ("lgbm", build_model("lightgbm", {"n_estimators": 20, "num_leaves": 8}, n_jobs=1)),
        ],
        cv=PurgedWalkForward(n_splits=3, horizon=2),
        **kw,
    )


def test_estimator_contract():
    X, y = _data()
    est = _ensemble()
    with pytest.raises(NotFittedError):
        est.predict(X)
    check_estimators_unfitted("WeightedSoftVoting", est)
    assert est.fit(X, y) is est
    assert list(est.classes_) == [0, 1, 2]
    proba = est.predict_proba(X)
    assert proba.shape == (len(X), 3) and np.allclose(proba.sum(axis=1), 1)
    assert np.array_equal(est.predict(X), est.classes_[proba.argmax(axis=1)])
    assert est.weights_.sum() == pytest.approx(1) and (est.weights_ >= 0).all()
    cloned = clone(est)
    assert not hasattr(cloned, "weights_") and cloned.get_params()["cv"].n_splits == 3
    assert est.score(X, y) > 0.6


def test_blend_is_weighted_average_of_members():
    X, y = _data()
    est = _ensemble(weights=[0.25, 0.75]).fit(X, y)
    members = est.named_estimators_
    expected = 0.25 * members["lr"].predict_proba(X) + 0.75 * members["lgbm"].predict_proba(X)
    assert np.allclose(est.predict_proba(X), expected)


def test_weights_fitted_out_of_fold_prefer_the_informative_model():
    X, y = _data()
    noise = np.random.default_rng(5).normal(size=(len(X), 4))
    Xn = np.hstack([X[:, :1], noise])  # column 0 carries the signal
    blind = make_pipeline(  # this member sees only the noise columns
        ColumnTransformer([("noise", "passthrough", [1, 2, 3, 4])]),
        build_model("lightgbm", {"n_estimators": 10}, n_jobs=1),
    )
    est = WeightedSoftVoting(
        [("informed", LogisticRegression(max_iter=500)), ("blind", blind)],
        cv=PurgedWalkForward(n_splits=3, horizon=2),
    ).fit(Xn, y)
    assert est.named_weights_["informed"] > est.named_weights_["blind"]
    # out-of-fold rows are validation rows of the purged folds only, never the first training block
    assert est.oof_index_.min() > 0 and len(np.unique(est.oof_index_)) == len(est.oof_index_)


def test_fit_weights_finds_the_planted_best_blend():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    good = np.eye(3)[y] * 0.6 + 0.4 / 3
    bad = rng.dirichlet(np.ones(3), size=600)
    w, f1 = fit_weights([bad, good], y, step=0.1)
    assert w[1] > 0.5 and f1 == pytest.approx(1.0)


def test_simplex_grid():
    grid = simplex_grid(3, 0.25)
    assert np.allclose(grid.sum(axis=1), 1) and len(grid) == 15
    with pytest.raises(ValueError):
        simplex_grid(2, 0)


def test_bad_weights_and_missing_cv_are_refused():
    X, y = _data()
    with pytest.raises(ValueError, match="weights"):
        _ensemble(weights=[1.0]).fit(X, y)
    with pytest.raises(ValueError, match="cv splitter"):
        WeightedSoftVoting([("lr", LogisticRegression())]).fit(X, y)
