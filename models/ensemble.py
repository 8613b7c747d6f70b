"""Weighted soft-voting ensemble whose weights are fitted on out-of-fold predictions.

``WeightedSoftVoting`` is a scikit-learn classifier: ``fit`` computes out-of-fold class probabilities of
each base model with the given (purged, walk-forward) CV splitter, picks the voting weights that
maximise out-of-fold macro-F1, then refits every base model on all rows it was given. It never sees
anything but the rows passed to ``fit``, so fitting it on the development window keeps the holdout clean.

Meta-labeling (``side_column``, the primary side among the features, ``features.primary``): every base
model's probabilities are masked to the side (``models.policy.mask_to_side``) before anything uses them,
out of fold (the weight search, the policy fit) as in ``predict_proba`` (the holdout, the served model),
so the class opposite to the side is exactly impossible everywhere.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from joblib import parallel_config
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.ensemble import VotingClassifier
from sklearn.metrics import f1_score, log_loss
from sklearn.utils.validation import check_is_fitted

from models.policy import mask_to_side


def as_probabilities(proba) -> np.ndarray:
    """Class probabilities as float64 rows that sum to one within float64 rounding.

    XGBoost returns float32 probabilities: their rows sum to one only within float32 rounding (up to
    about 1e-7 off), and once copied into a float64 array (or blended with float64 ones) they fail
    scikit-learn's check for float64 probabilities (tolerance sqrt(eps) = 1.5e-8), which warns "The
    y_prob values do not sum to one" in every log loss of a blend that gives XGBoost weight. Rows
    summing to zero (never from a classifier) are left as they are.
    """
    p = np.asarray(proba, dtype=np.float64)
    total = p.sum(axis=1, keepdims=True)
    return np.divide(p, total, out=p.copy(), where=total > 0)


def _take(X, idx):
    return X.iloc[idx] if hasattr(X, "iloc") else X[idx]


def side_of(X, side_column: str | None) -> np.ndarray | None:
    """The primary side of each row of ``X`` (its ``side_column``), or None without a primary."""
    if side_column is None:
        return None
    if not hasattr(X, "columns") or side_column not in X.columns:
        raise ValueError(f"meta-labeling needs the primary side column {side_column!r} among the features")
    return np.asarray(X[side_column], dtype=float)


def to_side(proba, X, side_column: str | None) -> np.ndarray:
    """``proba`` of the rows of ``X`` masked to their primary side (unchanged without a primary)."""
    side = side_of(X, side_column)
    return proba if side is None else mask_to_side(proba, side)


def fit_predict_fold(
    estimator, X, y, train_idx, test_idx, classes: np.ndarray, sample_weight=None, side_column=None
) -> np.ndarray:
    """Fit a clone on ``train_idx`` and return its class probabilities on ``test_idx``.

    Columns follow ``classes``; a class absent from the training block gets probability 0.
    ``sample_weight`` (one per row of ``X``, or None) weighs the training rows' fit. With a
    ``side_column`` (meta-labeling) the probabilities are masked to each row's primary side.
    """
    y = np.asarray(y)
    y_train = y[train_idx]
    missing = np.setdiff1d(classes, np.unique(y_train))
    if missing.size:
        raise ValueError(
            f"a training block of {len(train_idx)} rows has no example of class(es) {missing.tolist()}; "
            "use more data (days), fewer folds or a smaller label threshold"
        )
    # None leaves the library's unweighted path untouched (not the same as passing ones everywhere).
    weights = {} if sample_weight is None else {"sample_weight": np.asarray(sample_weight)[train_idx]}
    model = clone(estimator).fit(_take(X, train_idx), y_train, **weights)
    proba = as_probabilities(model.predict_proba(_take(X, test_idx)))
    out = np.zeros((len(test_idx), len(classes)))
    out[:, np.searchsorted(classes, model.classes_)] = proba
    return to_side(out, _take(X, test_idx), side_column)


def map_folds(fn: Callable, folds: list, n_parallel: int = 1) -> Generator[Any, None, None]:
    """``fn(train_idx, test_idx)`` for each fold, yielded in fold order, with up to ``n_parallel`` folds
    running at once (threads: the libraries release the GIL while they fit).

    Several single-threaded fits side by side degrade gracefully on a busy machine, where one fit
    spread over every core waits at each synchronisation for the core another process holds. Closing
    the generator early (a pruned trial) cancels the folds not started and waits for those running.
    """
    if n_parallel <= 1:
        for train_idx, test_idx in folds:
            yield fn(train_idx, test_idx)
        return
    pool = ThreadPoolExecutor(max_workers=n_parallel, thread_name_prefix="fold")
    try:
        futures = [pool.submit(fn, train_idx, test_idx) for train_idx, test_idx in folds]
        for future in futures:
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def oof_predict_proba(
    estimator, X, y, cv, n_parallel: int = 1, sample_weight=None, side_column=None
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probabilities over the validation blocks of ``cv``: (row positions, probabilities)."""
    classes = np.unique(np.asarray(y))
    folds = list(cv.split(X, y))

    def fit(train_idx, test_idx):
        return fit_predict_fold(estimator, X, y, train_idx, test_idx, classes, sample_weight, side_column)

    probas = list(map_folds(fit, folds, n_parallel))
    return np.concatenate([test for _, test in folds]), np.vstack(probas)


def simplex_grid(n_models: int, step: float) -> np.ndarray:
    """All weight vectors on the simplex with the given step (rows sum to 1)."""
    if not 0 < step <= 1:
        raise ValueError(f"weight step must be in (0, 1], got {step!r}")
    units = round(1 / step)
    rows = [c for c in itertools.product(range(units + 1), repeat=n_models) if sum(c) == units]
    return np.asarray(rows, dtype=float) / units


def fit_weights(probas: list[np.ndarray], y: np.ndarray, step: float = 0.05) -> tuple[np.ndarray, float]:
    """Voting weights that maximise macro-F1 of the blended probabilities (ties: lower log loss).

    ``probas`` are out-of-fold predictions of each model on the same rows ``y``. Returns the weights and
    the macro-F1 they reach.
    """
    stack = np.stack(probas)  # (models, rows, classes)
    labels = np.arange(stack.shape[2])
    best: tuple[float, float] | None = None
    best_w = None
    for w in simplex_grid(len(probas), step):
        blend = np.tensordot(w, stack, axes=1)
        f1 = f1_score(y, blend.argmax(axis=1), average="macro", labels=labels, zero_division=0)
        loss = log_loss(y, np.clip(blend, 1e-15, 1), labels=labels)
        key = (round(f1, 12), -loss)
        if best is None or key > best:
            best, best_w = key, w
    if best is None or best_w is None:
        raise ValueError("fit_weights needs the predictions of at least one model")
    return best_w, float(best[0])


class WeightedSoftVoting(ClassifierMixin, BaseEstimator):
    """Soft voting over ``estimators`` (a list of ``(name, estimator)``) with weights fitted out of fold.

    Parameters
    ----------
    estimators: list of (name, unfitted classifier)
    cv: splitter used to produce out-of-fold predictions for the weights (required unless ``weights``)
    weights: fixed weights; when given, no out-of-fold fitting is done
    weight_step: grid resolution of the weight search on the simplex
    n_jobs: out-of-fold fits run at once (threads; give the estimators one thread each)
    side_column: the primary side's feature column under meta-labeling (None: no primary); every base
        model's probabilities are then masked to it (``models.policy.mask_to_side``) before blending
    """

    def __init__(
        self,
        estimators: list[tuple[str, Any]],
        cv=None,
        weights=None,
        weight_step: float = 0.05,
        n_jobs: int = 1,
        side_column: str | None = None,
    ):
        self.estimators = estimators
        self.cv = cv
        self.weights = weights
        self.weight_step = weight_step
        self.n_jobs = n_jobs
        self.side_column = side_column

    def fit(self, X, y, sample_weight=None):
        """Out-of-fold weights (unless fixed), then every base model refitted on all rows; ``sample_weight``
        weighs the rows in every one of those fits (the weight search itself scores rows equally)."""
        names = [name for name, _ in self.estimators]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"estimators need unique names, got {names}")
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        side_of(X, self.side_column)  # a missing side column fails before any fit
        if self.weights is not None:
            weights = np.asarray(self.weights, dtype=float)
            if weights.shape != (len(names),) or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError(
                    f"weights must be {len(names)} non-negative numbers, not all 0: {self.weights}"
                )
            self.weights_ = weights / weights.sum()
            self.oof_macro_f1_ = None
        else:
            if self.cv is None:
                raise ValueError("either fixed weights or a cv splitter is needed to fit the weights")
            oof = [
                oof_predict_proba(est, X, y, self.cv, self.n_jobs, sample_weight, self.side_column)
                for _, est in self.estimators
            ]
            idx = oof[0][0]
            self.oof_index_ = idx
            self.oof_probas_ = {name: p for name, (_, p) in zip(names, oof, strict=True)}
            self.weights_, self.oof_macro_f1_ = fit_weights([p for _, p in oof], y[idx], self.weight_step)
        voter = VotingClassifier(
            [(name, clone(est)) for name, est in self.estimators],
            voting="soft",
            weights=list(self.weights_),
            n_jobs=self.n_jobs,
        )
        with parallel_config(backend="threading"):  # the refits side by side, in this process
            if sample_weight is None:
                self.voter_ = voter.fit(X, y)
            else:
                self.voter_ = voter.fit(X, y, sample_weight=np.asarray(sample_weight))
        if hasattr(X, "columns"):
            self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.n_features_in_ = X.shape[1]
        return self

    @property
    def oof_proba_(self) -> np.ndarray:
        """The blended out-of-fold class probabilities on rows ``oof_index_`` (what the weights saw)."""
        check_is_fitted(self, "oof_probas_")
        return np.tensordot(self.weights_, np.stack(list(self.oof_probas_.values())), axes=1)

    @property
    def named_weights_(self) -> dict[str, float]:
        check_is_fitted(self)
        return {name: float(w) for (name, _), w in zip(self.estimators, self.weights_, strict=True)}

    @property
    def named_estimators_(self) -> dict[str, Any]:
        check_is_fitted(self)
        return dict(self.voter_.named_estimators_)

    def member_proba(self, name: str, X) -> np.ndarray:
        """One base model's class probabilities (masked to the primary side under meta-labeling)."""
        check_is_fitted(self)
        proba = as_probabilities(self.named_estimators_[name].predict_proba(X))
        return to_side(proba, X, self._side_column)

    @property
    def _side_column(self) -> str | None:
        return getattr(self, "side_column", None)  # an ensemble pickled before meta-labeling: none

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        if self._side_column is None:
            # The weighted average carries a float32 model's rounding (see as_probabilities): renormalise.
            return as_probabilities(self.voter_.predict_proba(X))
        # The blend of the members' masked probabilities, as the weights were chosen out of fold.
        side = side_of(X, self._side_column)
        assert side is not None  # a side column was set, and side_of refuses X without it
        members = [mask_to_side(as_probabilities(e.predict_proba(X)), side) for e in self.voter_.estimators_]
        return mask_to_side(np.tensordot(self.weights_, np.stack(members), axes=1), side)

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
