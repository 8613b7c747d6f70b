"""The ensemble reuses the out-of-fold predictions of the tuning trial that chose each member's parameters
(issue 20): they must be the very predictions refitting the folds would give, and a mismatch must fail."""

import numpy as np
import pytest

from models.base import TREE_THREADED, build_model, fit_threads
from models.ensemble import WeightedSoftVoting, oof_predict_proba
from train.split import PurgedWalkForward
from train.tune import OutOfFold, run_study


def _data(n=700, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = np.where(X[:, 0] + 0.5 * rng.normal(size=n) > 0.5, 2, np.where(X[:, 0] < -0.5, 0, 1))
    return X, y


SMALL = {
    "lightgbm": lambda t: {"n_estimators": t.suggest_int("n_estimators", 5, 20), "num_leaves": 8},
    "random_forest": lambda t: {
        "n_estimators": t.suggest_int("n_estimators", 5, 20),
        "max_depth": 4,
        "class_weight": t.suggest_categorical("class_weight", [None, "balanced"]),
    },
}


@pytest.mark.parametrize("name", list(SMALL))
def test_kept_out_of_fold_predictions_are_those_of_a_refit_of_the_best_trial(name, tmp_path):
    """Two cores: the random forest's trial fits each fold on 2 tree threads, the ensemble's refit on one;
    the predictions are the same to the bit (the forest's trees are seeded before the fit)."""
    X, y = _data()
    cv = PurgedWalkForward(n_splits=3, horizon=2)
    kept: dict[int, OutOfFold] = {}
    study = run_study(
        name,
        X,
        y,
        cv,
        3,
        None,
        f"sqlite:///{tmp_path / 'optuna.db'}",
        "s",
        seed=3,
        n_jobs=2,
        space=SMALL[name],
        keep_oof=kept,
    )
    complete = [t.number for t in study.trials if t.value is not None]
    assert sorted(kept) == complete  # every completed trial's, and only those
    best = study.best_trial
    params = SMALL[name](best)  # the parameters as the trial built its estimator
    index, proba = oof_predict_proba(build_model(name, params, seed=3, n_jobs=1), X, y, cv, n_parallel=1)
    assert np.array_equal(kept[best.number].rows, index)
    assert np.array_equal(kept[best.number].proba, proba)


def _ensemble():
    members = [
        ("a", build_model("lightgbm", {"n_estimators": 10, "num_leaves": 8}, seed=1, n_jobs=1)),
        ("b", build_model("random_forest", {"n_estimators": 10, "max_depth": 3}, seed=1, n_jobs=1)),
    ]
    return WeightedSoftVoting(members, cv=PurgedWalkForward(n_splits=3, horizon=2), n_jobs=1)


def test_ensemble_with_given_out_of_fold_predictions_equals_one_that_fits_them():
    X, y = _data()
    plain = _ensemble().fit(X, y)
    given = {n: (plain.oof_index_, p) for n, p in plain.oof_probas_.items()}
    reused = _ensemble().fit(X, y, oof={"b": given["b"]})
    assert np.array_equal(reused.weights_, plain.weights_)
    for n in ("a", "b"):
        assert np.array_equal(reused.oof_probas_[n], plain.oof_probas_[n])
    assert np.array_equal(reused.predict_proba(X), plain.predict_proba(X))


def test_given_out_of_fold_predictions_are_used_not_refitted():
    """A member given perfect out-of-fold predictions takes all the weight: they were used as given."""
    X, y = _data()
    plain = _ensemble().fit(X, y)
    perfect = np.eye(3)[y[plain.oof_index_]]
    reused = _ensemble().fit(X, y, oof={"a": (plain.oof_index_, perfect)})
    assert reused.named_weights_ == {"a": 1.0, "b": 0.0}
    assert np.array_equal(reused.oof_probas_["a"], perfect)


@pytest.mark.parametrize(
    "oof, message",
    [
        ({"c": None}, "not members"),
        ({"a": "rows"}, "not on the cv's"),  # replaced below by wrong rows
        ({"a": "shape"}, "not on the cv's"),  # and by a wrong number of classes
    ],
)
def test_mismatched_out_of_fold_predictions_are_refused(oof, message):
    X, y = _data()
    plain = _ensemble().fit(X, y)
    index, proba = plain.oof_index_, plain.oof_probas_["a"]
    if oof.get("a") == "rows":
        oof = {"a": (index[::-1], proba)}
    elif oof.get("a") == "shape":
        oof = {"a": (index, proba[:, :2])}
    with pytest.raises(ValueError, match=message):
        _ensemble().fit(X, y, oof=oof)


def test_fit_threads_per_family():
    assert TREE_THREADED == {"random_forest"}
    assert fit_threads("random_forest", 2) == (2, 1)  # one fold at a time on every core
    assert fit_threads("lightgbm", 2) == (1, 2) and fit_threads("xgboost", 4) == (1, 4)
    assert fit_threads("random_forest", 0) == (1, 1) and fit_threads("lightgbm", 0) == (1, 1)


def _fit_weights_one_by_one(probas, y, step=0.05):
    """The weight search as it was before issue 20: scikit-learn's scores for every weight vector."""
    from sklearn.metrics import f1_score, log_loss

    from models.ensemble import simplex_grid

    stack, labels, best, best_w = np.stack(probas), np.arange(3), None, None
    for w in simplex_grid(len(probas), step):
        blend = np.tensordot(w, stack, axes=1)
        f1 = f1_score(y, blend.argmax(axis=1), average="macro", labels=labels, zero_division=0)
        key = (round(f1, 12), -log_loss(y, np.clip(blend, 1e-15, 1), labels=labels))
        if best is None or key > best:
            best, best_w = key, w
    return best_w, best[0]


@pytest.mark.parametrize("case", ["random", "twins", "two_classes", "one_good", "four_models"])
def test_weight_search_chooses_as_scoring_every_blend_with_scikit_learn(case):
    from models.ensemble import fit_weights

    rng = np.random.default_rng(len(case))
    y = rng.integers(0, 3, 2000)
    probas = [rng.dirichlet([1, 1, 1], len(y)) for _ in range(4 if case == "four_models" else 3)]
    if case == "twins":  # ties everywhere: decided by the log loss
        probas[1] = probas[0].copy()
    elif case == "two_classes":  # a class never true: its F1 is 0 (zero_division)
        y = np.where(y == 2, 1, y)
    elif case == "one_good":
        probas[2] = 0.6 * np.eye(3)[y] + 0.4 * probas[2]
    step = 0.1 if case == "four_models" else 0.05
    weights, f1 = fit_weights(probas, y, step)
    expected_w, expected_f1 = _fit_weights_one_by_one(probas, y, step)
    assert np.array_equal(weights, expected_w) and f1 == expected_f1


def test_members_fit_on_their_threads_and_predict_on_one():
    """A forest given two threads fits the same trees and, once fitted, predicts on one thread."""
    X, y = _data()
    cv = PurgedWalkForward(n_splits=3, horizon=2)

    def ensemble(threads):
        forest = build_model("random_forest", {"n_estimators": 12, "max_depth": 4}, seed=2, n_jobs=threads)
        return WeightedSoftVoting([("rf", forest)], cv=cv, n_jobs=2).fit(X, y)

    threaded, single = ensemble(2), ensemble(1)
    assert threaded.named_estimators_["rf"].n_jobs == 1
    assert np.array_equal(threaded.oof_probas_["rf"], single.oof_probas_["rf"])
    assert np.array_equal(threaded.predict_proba(X), single.predict_proba(X))


def test_folds_start_early_first_and_the_last_ones_largest_first_but_come_back_in_order():
    import threading
    import time

    from models.ensemble import map_folds, start_order

    assert start_order(5, 2) == [0, 1, 2, 4, 3]  # five growing folds on two threads: 8 units, not 9
    assert start_order(5, 4) == [0, 4, 3, 2, 1]
    assert start_order(5, 1) == [0, 1, 2, 3, 4] and start_order(3, 8) == [2, 1, 0]
    started, lock = [], threading.Lock()

    def fn(train_idx, test_idx):
        with lock:
            started.append(test_idx)
        time.sleep(0.01 * (test_idx + 1))  # later folds are larger
        return test_idx * 10

    folds = [(None, k) for k in range(5)]
    assert list(map_folds(fn, folds, 2)) == [0, 10, 20, 30, 40]
    assert sorted(started[:2]) == [0, 1] and started[2:] == [2, 4, 3]


def test_a_pruned_trial_starts_no_fold_after_the_result_that_stopped_it():
    """Closing map_folds after two results (the pruner stopped the trial at step 1) leaves only the fold
    started when the first result was taken: no fit starts once the consumer has stopped asking."""
    import threading
    import time

    from models.ensemble import map_folds

    started, finished, lock = [], [], threading.Lock()

    def fn(train_idx, test_idx):
        with lock:
            started.append(test_idx)
        time.sleep(0.02 * (test_idx + 1))
        with lock:
            finished.append(test_idx)
        return test_idx

    results = map_folds(fn, [(None, k) for k in range(5)], 2)
    assert [next(results), next(results)] == [0, 1]
    results.close()  # what the objective's contextlib.closing does when the trial is pruned
    assert sorted(started) == [0, 1, 2] and sorted(finished) == [0, 1, 2]
