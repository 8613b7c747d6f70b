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
from lightgbm import LGBMClassifier
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier, VotingClassifier
from sklearn.metrics import f1_score, log_loss
from sklearn.utils.validation import check_is_fitted
from xgboost import XGBClassifier

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
    model = predict_on_one_thread(clone(estimator).fit(_take(X, train_idx), y_train, **weights))
    proba = as_probabilities(model.predict_proba(_take(X, test_idx)))
    out = np.zeros((len(test_idx), len(classes)))
    out[:, np.searchsorted(classes, model.classes_)] = proba
    return to_side(out, _take(X, test_idx), side_column)


def predict_on_one_thread(model):
    """``model`` (fitted) set to predict on one thread, whatever threads its fit used: a forest's threaded
    ``predict_proba`` adds its trees' probabilities in the order the threads finish, which changes the
    last bits from run to run, and a bot's few rows do not pay for starting threads."""
    if model.get_params().get("n_jobs", 1) != 1:
        model.set_params(n_jobs=1)
    return model


def _own_threads(estimator) -> bool:
    """Whether ``estimator`` fits on several threads itself (then its folds run one at a time)."""
    return estimator.get_params().get("n_jobs", 1) not in (1, None)


def map_folds(fn: Callable, folds: list, n_parallel: int = 1) -> Generator[Any, None, None]:
    """``fn(train_idx, test_idx)`` for each fold, yielded in fold order, with up to ``n_parallel`` folds
    running at once (threads: the libraries release the GIL while they fit).

    Several single-threaded fits side by side degrade gracefully on a busy machine, where one fit
    spread over every core waits at each synchronisation for the core another process holds.

    A fold starts only when fewer than ``n_parallel`` started folds are still waiting to be taken: the
    consumer (the pruner) sees each result before another fit starts in its place, so closing the
    generator early (a pruned trial) waits for at most ``n_parallel`` fits, none of which started after
    the last result it took. The folds start in order, except the last ``n_parallel``, which start
    largest first: a walk-forward's training blocks grow, so the largest fold started last would run
    alone at the end (five folds on two threads: 8 units of time instead of 9).
    """
    if n_parallel <= 1:
        for train_idx, test_idx in folds:
            yield fn(train_idx, test_idx)
        return
    pool = ThreadPoolExecutor(max_workers=n_parallel, thread_name_prefix="fold")
    try:
        order = iter(start_order(len(folds), n_parallel))
        futures = {k: pool.submit(fn, *folds[k]) for k in itertools.islice(order, n_parallel)}
        for k in range(len(folds)):
            result = futures.pop(k).result()
            yield result
            for nxt in itertools.islice(order, 1):  # the consumer took a result: one more may start
                futures[nxt] = pool.submit(fn, *folds[nxt])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def start_order(n_folds: int, n_parallel: int) -> list[int]:
    """The order :func:`map_folds` starts ``n_folds`` folds in: in order, the last ``n_parallel`` reversed."""
    head = max(0, n_folds - n_parallel) if n_parallel > 1 else n_folds
    return list(range(head)) + list(range(n_folds - 1, head - 1, -1))


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
    grid = simplex_grid(len(probas), step)
    # Every weight vector's macro-F1 at once (numpy), then the exact scores of the near-best only: the same
    # choice as scoring each with scikit-learn, without ~230 calls of f1_score and log_loss.
    quick = _macro_f1_per_blend(grid, stack, np.asarray(y))
    best: tuple[float, float] | None = None
    best_w = None
    for w in grid[quick >= quick.max() - 1e-9]:
        blend = np.tensordot(w, stack, axes=1)
        f1 = f1_score(y, blend.argmax(axis=1), average="macro", labels=labels, zero_division=0)
        loss = log_loss(y, np.clip(blend, 1e-15, 1), labels=labels)
        key = (round(f1, 12), -loss)
        if best is None or key > best:
            best, best_w = key, w
    if best is None or best_w is None:
        raise ValueError("fit_weights needs the predictions of at least one model")
    return best_w, float(best[0])


def _macro_f1_per_blend(grid: np.ndarray, stack: np.ndarray, y: np.ndarray, chunk: int = 32) -> np.ndarray:
    """Macro-F1 (labels 0..k-1, a class with no true or predicted row scoring 0) of the argmax of each
    blend ``grid[i] @ stack``, from per-blend confusion counts; ``y`` holds the class positions."""
    n_classes = stack.shape[2]
    out = np.empty(len(grid))
    for start in range(0, len(grid), chunk):
        weights = grid[start : start + chunk]
        pred = np.tensordot(weights, stack, axes=1).argmax(axis=2)  # (blends, rows)
        cells = (np.arange(len(weights))[:, None] * n_classes + pred) * n_classes + y[None, :]
        counts = np.bincount(cells.ravel(), minlength=len(weights) * n_classes * n_classes)
        confusion = counts.reshape(len(weights), n_classes, n_classes)  # [blend, predicted, true]
        tp = np.diagonal(confusion, axis1=1, axis2=2)
        denominator = confusion.sum(axis=2) + confusion.sum(axis=1)  # 2 tp + fp + fn
        f1 = np.divide(2 * tp, denominator, out=np.zeros(tp.shape), where=denominator > 0)
        out[start : start + len(weights)] = f1.mean(axis=1)
    return out


# Fast prediction (a bot's cycle: a few hundred rows, one call per candle close). Each library's own
# predict_proba spends most of a small batch on per-call work around the trees: scikit-learn's forest
# dispatches every tree through joblib, LightGBM re-validates a DataFrame and re-processes its parameters.
# The functions below ask the same fitted trees, through public APIs, for the very same numbers (tests:
# tests/test_fast_predict.py proves them equal to each library's predict_proba); anything they do not
# cover exactly goes to the library's own predict_proba.

# A forest predicting more rows than this with n_jobs > 1 keeps its own (threaded) predict_proba.
FOREST_SINGLE_THREAD_ROWS = 2000


def forest_leaf_values(forest) -> list[np.ndarray]:
    """Each tree's class probabilities per node, as its ``predict_proba`` returns them for a row ending in
    that leaf: ``tree_.value[:, 0, :n_classes_]`` (the fraction of the leaf's weighted samples per class)."""
    return [tree.tree_.value[:, 0, : tree.n_classes_] for tree in forest.estimators_]


def forest_predict_proba(forest, X32: np.ndarray, leaf_values: list[np.ndarray] | None = None) -> np.ndarray:
    """``forest.predict_proba`` on finite float32 rows ``X32``, in this thread, with no joblib dispatch.

    Exactly scikit-learn's sum: zeros, plus every tree's leaf probabilities in tree order, divided by the
    number of trees (its threads may add the trees in another order, which can move the last bit).
    """
    values = forest_leaf_values(forest) if leaf_values is None else leaf_values
    out = np.zeros((X32.shape[0], forest.n_classes_), dtype=np.float64)
    for tree, value in zip(forest.estimators_, values, strict=True):
        out += value[tree.apply(X32, check_input=False)]
    out /= len(forest.estimators_)
    return out


def _is_forest(est) -> bool:
    # Exactly these classes (a subclass may predict otherwise), one output column block.
    return type(est) in (RandomForestClassifier, ExtraTreesClassifier) and est.n_outputs_ == 1


def _fast_forest(est, n_rows: int) -> bool:
    return _is_forest(est) and (est.n_jobs in (None, 1) or n_rows <= FOREST_SINGLE_THREAD_ROWS)


def _fast_lightgbm(est) -> bool:
    # Multi-class with a built-in objective: predict_proba is the booster's output as it is.
    n_jobs = est.n_jobs
    return (
        type(est) is LGBMClassifier
        and not callable(est.objective)
        and len(est.classes_) > 2
        and isinstance(n_jobs, int)
        and n_jobs >= 1
    )


def _fast_xgboost(est) -> bool:
    # XGBoost's own predict_proba (BalancedXGBClassifier only adds class weights to fit), given an array.
    return isinstance(est, XGBClassifier) and type(est).predict_proba is XGBClassifier.predict_proba


def fast_member_proba(
    est, X, Xn: np.ndarray | None, leaf_values: list[np.ndarray] | None = None
) -> np.ndarray:
    """``est.predict_proba(X)``, the same numbers, with less per-call work for the families above.

    ``Xn`` is ``X`` as a float64 array (its columns in the fitted order), or None to use the library's own
    predict_proba on ``X``; ``leaf_values`` are a forest's :func:`forest_leaf_values`, if kept.
    """
    if Xn is None:
        return est.predict_proba(X)
    if _fast_forest(est, len(Xn)):
        X32 = np.ascontiguousarray(Xn, dtype=np.float32)  # the forest's own conversion
        if np.isfinite(X32).all():  # NaN or a value beyond float32: the library decides (or refuses)
            return forest_predict_proba(est, X32, leaf_values)
        return est.predict_proba(X)
    if _fast_xgboost(est):
        # The same inplace prediction on the same float64 values, without converting a DataFrame.
        return est.predict_proba(Xn)
    if _fast_lightgbm(est):
        proba = est.booster_.predict(Xn, num_threads=est.n_jobs)
        if isinstance(proba, np.ndarray) and proba.shape == (len(Xn), len(est.classes_)):
            return proba
    return est.predict_proba(X)


class WeightedSoftVoting(ClassifierMixin, BaseEstimator):
    """Soft voting over ``estimators`` (a list of ``(name, estimator)``) with weights fitted out of fold.

    Parameters
    ----------
    estimators: list of (name, unfitted classifier)
    cv: splitter used to produce out-of-fold predictions for the weights (required unless ``weights``)
    weights: fixed weights; when given, no out-of-fold fitting is done
    weight_step: grid resolution of the weight search on the simplex
    n_jobs: out-of-fold fits run at once (threads), for members that fit on one thread; a member that
        threads its own fit (``n_jobs`` other than 1) gets its folds one at a time. Fitted members
        predict on one thread (:func:`predict_on_one_thread`)
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

    def fit(self, X, y, sample_weight=None, oof=None):
        """Out-of-fold weights (unless fixed), then every base model refitted on all rows; ``sample_weight``
        weighs the rows in every one of those fits (the weight search itself scores rows equally).

        ``oof`` (``{name: (row positions, probabilities)}``, optional): out-of-fold predictions a member
        already has from the same estimator, ``cv``, rows and weights (the tuning trial that chose its
        parameters scored the same fits), so its folds are not fitted again. They must cover the
        validation rows of ``cv`` in fold order (checked)."""
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
            given = self._given_oof(oof, names, X, y)
            oof = [
                given[name]
                if name in given
                else oof_predict_proba(
                    est,
                    X,
                    y,
                    self.cv,
                    1 if _own_threads(est) else self.n_jobs,
                    sample_weight,
                    self.side_column,
                )
                for name, est in self.estimators
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
        for member in self.voter_.estimators_:
            predict_on_one_thread(member)
        if hasattr(X, "columns"):
            self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.n_features_in_ = X.shape[1]
        return self

    def _given_oof(self, oof, names: list[str], X, y) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``fit``'s ``oof`` checked: known members, on the validation rows of ``cv`` in fold order, one
        probability per class."""
        if not oof:
            return {}
        unknown = sorted(set(oof) - set(names))
        if unknown:
            raise ValueError(f"out-of-fold predictions given for {unknown}, which are not members {names}")
        rows = np.concatenate([test for _, test in self.cv.split(X, y)])
        checked = {}
        for name, (index, proba) in oof.items():
            index, proba = np.asarray(index), np.asarray(proba, dtype=float)
            if not np.array_equal(index, rows) or proba.shape != (len(rows), len(self.classes_)):
                raise ValueError(
                    f"the out-of-fold predictions given for {name!r} (shape {proba.shape}) are not on "
                    f"the cv's {len(rows)} validation rows x {len(self.classes_)} classes in fold order; "
                    "leave them out to fit the folds here"
                )
            checked[name] = (index, proba)
        return checked

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

    # XGBoost members predict in a second thread while the others predict in the calling one (the same
    # numbers, sooner on a machine with a core to spare): its C++ predictor releases the GIL for the whole
    # call, and a small batch spends most of its time there. False: every member in the calling thread.
    side_by_side_predict = True

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_predict_cache", None)  # rebuilt on the first predict after loading
        state.pop("_predict_pool", None)  # a thread is not pickled: started again when needed
        return state

    def _pool(self) -> ThreadPoolExecutor:
        pool = getattr(self, "_predict_pool", None)
        if pool is None:
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ensemble-predict")
            self._predict_pool = pool
        return pool

    def _fast_input(self, X) -> np.ndarray | None:
        """``X`` as a float64 array in the fitted column order, or None when only the members' own
        predict_proba may judge it (other columns or column order, non-numeric values, not 2-D)."""
        columns = getattr(X, "columns", None)
        names = getattr(self, "feature_names_in_", None)
        if columns is not None and (names is None or list(columns) != list(names)):
            return None
        try:
            Xn = np.asarray(X, dtype=np.float64)
        except (TypeError, ValueError):
            return None
        return Xn if Xn.ndim == 2 and Xn.shape[1] == self.n_features_in_ else None

    def _leaf_values(self) -> list:
        """Per member, a forest's leaf probabilities (``forest_leaf_values``) or None; built on the first
        predict and kept with the fitted members they belong to (never pickled)."""
        cache = getattr(self, "_predict_cache", None)
        if cache is None or cache[0] is not self.voter_:
            values = [forest_leaf_values(e) if _is_forest(e) else None for e in self.voter_.estimators_]
            cache = (self.voter_, values)
            self._predict_cache = cache
        return cache[1]

    def _member_probas(self, X) -> list[np.ndarray]:
        """Every member's ``predict_proba(X)`` (in ``voter_.estimators_`` order), through
        :func:`fast_member_proba`: the same numbers with less per-call work."""
        Xn = self._fast_input(X)
        members = list(zip(self.voter_.estimators_, self._leaf_values(), strict=True))
        aside = [i for i, (e, _) in enumerate(members) if _fast_xgboost(e)] if Xn is not None else []
        if not getattr(self, "side_by_side_predict", True) or not aside or len(aside) == len(members):
            return [fast_member_proba(e, X, Xn, values) for e, values in members]
        pool = self._pool()
        futures = {i: pool.submit(fast_member_proba, members[i][0], X, Xn) for i in aside}
        try:
            here = {
                i: fast_member_proba(e, X, Xn, values)
                for i, (e, values) in enumerate(members)
                if i not in futures
            }
        finally:
            done = {i: future.result() for i, future in futures.items()}  # waits, raises a worker's error
        return [done[i] if i in done else here[i] for i in range(len(members))]

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        probas = self._member_probas(X)
        if self._side_column is None:
            # VotingClassifier's soft vote (its predict_proba), on the members' probabilities: the weighted
            # average carries a float32 model's rounding (see as_probabilities): renormalise.
            voter = self.voter_
            weights = (
                None
                if voter.weights is None
                else [w for (_, est), w in zip(voter.estimators, voter.weights, strict=True) if est != "drop"]
            )
            return as_probabilities(np.average(np.asarray(probas), axis=0, weights=weights))
        # The blend of the members' masked probabilities, as the weights were chosen out of fold.
        side = side_of(X, self._side_column)
        assert side is not None  # a side column was set, and side_of refuses X without it
        members = [mask_to_side(as_probabilities(p), side) for p in probas]
        return mask_to_side(np.tensordot(self.weights_, np.stack(members), axes=1), side)

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
