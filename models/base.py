"""Base-model factories: one scikit-learn-compatible classifier per supported family.

Every parameter passed here reaches the library under a name the library honours; the test
``tests/test_params.py`` proves it against each library's own view of its configuration.
"""

from __future__ import annotations

import os
from typing import Any

from lightgbm import LGBMClassifier
from sklearn.ensemble import RandomForestClassifier
from sklearn.utils.class_weight import compute_sample_weight
from xgboost import XGBClassifier

MODEL_NAMES: tuple[str, ...] = ("lightgbm", "xgboost", "random_forest")


class BalancedXGBClassifier(XGBClassifier):
    """``XGBClassifier`` with a ``class_weight`` parameter, like LightGBM's and scikit-learn's.

    XGBoost has no class weights for multi-class problems; the standard way is per-row sample weights,
    computed here in ``fit`` so that cloning, CV and the ensemble treat all three families alike.
    """

    def __init__(self, *, class_weight: str | None = None, **kwargs: Any):
        self.class_weight = class_weight
        super().__init__(**kwargs)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        params = super().get_params(deep=deep)
        params["class_weight"] = self.class_weight
        return params

    def fit(self, X, y, *, sample_weight=None, **kwargs):
        if self.class_weight is not None:
            # Multiplied into any given weights, as LightGBM and scikit-learn do with theirs.
            class_weights = compute_sample_weight(self.class_weight, y)
            sample_weight = class_weights if sample_weight is None else sample_weight * class_weights
        return super().fit(X, y, sample_weight=sample_weight, **kwargs)


def default_n_jobs() -> int:
    """Cores to use: as many single-threaded fold fits at once as the machine has cores."""
    return max(1, os.cpu_count() or 1)


# Families whose fit spreads its trees over threads with no barrier between them (scikit-learn's forest:
# one task per tree), so a core another process holds delays only the trees it runs. The others
# (LightGBM, XGBoost) synchronise their OpenMP threads at every split and wait for the slowest.
TREE_THREADED: frozenset[str] = frozenset({"random_forest"})


def fit_threads(name: str, n_jobs: int) -> tuple[int, int]:
    """(threads per fit, folds fitted at once) for model family ``name`` given ``n_jobs`` cores.

    A tree-threaded family (:data:`TREE_THREADED`) fits one fold at a time on every core: the folds of a
    purged walk-forward grow, so side by side the largest one would finish alone. Its result does not
    depend on the thread count (each tree's seed is drawn from ``random_state`` before the fit). The
    others fit with one thread each, ``n_jobs`` folds at once (see ``models.ensemble.map_folds``).
    """
    n_jobs = max(1, n_jobs)
    return (n_jobs, 1) if name in TREE_THREADED else (1, n_jobs)


def check_model_names(names: list[str] | tuple[str, ...]) -> list[str]:
    """Validate a list of model names, returning it; unknown or duplicate names raise ValueError."""
    names = list(names)
    unknown = [n for n in names if n not in MODEL_NAMES]
    if unknown:
        raise ValueError(
            f"unknown model name(s) {unknown}; choose from {list(MODEL_NAMES)} (comma-separated)"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"model names repeat in {names}; list each model once")
    if not names:
        raise ValueError(f"no models given; choose from {list(MODEL_NAMES)}")
    return names


def build_model(name: str, params: dict[str, Any], seed: int = 0, n_jobs: int | None = None):
    """An unfitted classifier of family ``name`` with the tuned ``params``."""
    check_model_names([name])
    n_jobs = default_n_jobs() if n_jobs is None else n_jobs
    params = dict(params)
    if name == "lightgbm":
        # bagging is only active with a positive frequency: without subsample_freq, `subsample` is ignored.
        return LGBMClassifier(
            objective="multiclass", subsample_freq=1, random_state=seed, n_jobs=n_jobs, verbose=-1, **params
        )
    if name == "xgboost":
        return BalancedXGBClassifier(
            objective="multi:softprob",
            tree_method="hist",
            random_state=seed,
            n_jobs=n_jobs,
            verbosity=0,
            **params,
        )
    return RandomForestClassifier(random_state=seed, n_jobs=n_jobs, **params)
