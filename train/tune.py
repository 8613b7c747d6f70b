"""Hyperparameter search: one Optuna study per base model, scored by purged walk-forward macro-F1.

The search spaces are pure functions ``space(trial) -> dict`` whose keys are the estimator's own
constructor arguments (``tests/test_params.py`` proves each reaches the fitted model). The objective
comes from ``make_objective``; it reports the running mean macro-F1 after every fold so the pruner can
stop a bad trial early. No tracking calls here: the pipeline logs what the study returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna

from evaluation.metrics import macro_f1
from models.base import build_model
from models.ensemble import fit_predict_fold

# Bump when a search space changes, so a resumed study never mixes two spaces.
SPACE_VERSION = 1
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def space_lightgbm(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
        "n_estimators": trial.suggest_int("n_estimators", 50, 300),
        "num_leaves": trial.suggest_int("num_leaves", 20, 100),
        "max_depth": trial.suggest_int("max_depth", 3, 15),
        "min_child_samples": trial.suggest_int("min_child_samples", 5, 200, log=True),
        "min_child_weight": trial.suggest_float("min_child_weight", 1e-3, 10.0, log=True),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
        "reg_alpha": trial.suggest_float("reg_alpha", 1e-8, 10.0, log=True),
        "reg_lambda": trial.suggest_float("reg_lambda", 1e-8, 10.0, log=True),
        "class_weight": trial.suggest_categorical("class_weight", [None, "balanced"]),
    }


def space_xgboost(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
        "n_estimators": trial.suggest_int("n_estimators", 50, 300),
        "max_depth": trial.suggest_int("max_depth", 3, 15),
        "min_child_weight": trial.suggest_float("min_child_weight", 1.0, 10.0),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
        "gamma": trial.suggest_float("gamma", 1e-8, 5.0, log=True),
        "reg_alpha": trial.suggest_float("reg_alpha", 1e-8, 10.0, log=True),
        "reg_lambda": trial.suggest_float("reg_lambda", 1e-8, 10.0, log=True),
        "class_weight": trial.suggest_categorical("class_weight", [None, "balanced"]),
    }


def space_random_forest(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "n_estimators": trial.suggest_int("n_estimators", 50, 300),
        "max_depth": trial.suggest_int("max_depth", 3, 15),
        "min_samples_split": trial.suggest_int("min_samples_split", 2, 20),
        "min_samples_leaf": trial.suggest_int("min_samples_leaf", 1, 100, log=True),
        "max_features": trial.suggest_float("max_features", 0.2, 1.0),
        # Fewer rows per tree: regularises and keeps 300 deep trees affordable on 2 cores.
        "max_samples": trial.suggest_float("max_samples", 0.1, 1.0),
        "class_weight": trial.suggest_categorical("class_weight", [None, "balanced", "balanced_subsample"]),
    }


SPACES: dict[str, Callable[[optuna.Trial], dict[str, Any]]] = {
    "lightgbm": space_lightgbm,
    "xgboost": space_xgboost,
    "random_forest": space_random_forest,
}


def make_objective(name: str, X, y, cv, seed: int = 0, n_jobs: int | None = None):
    """Objective: mean macro-F1 over the purged folds; the running mean is reported after each fold."""
    y = np.asarray(y)
    classes = np.unique(y)
    space = SPACES[name]

    def objective(trial: optuna.Trial) -> float:
        estimator = build_model(name, space(trial), seed=seed, n_jobs=n_jobs)
        scores: list[float] = []
        for step, (train_idx, test_idx) in enumerate(cv.split(X, y)):
            proba = fit_predict_fold(estimator, X, y, train_idx, test_idx, classes)
            scores.append(macro_f1(y[test_idx], classes[proba.argmax(axis=1)]))
            trial.report(float(np.mean(scores)), step)
            if trial.should_prune():
                trial.set_user_attr("fold_macro_f1", scores)
                raise optuna.TrialPruned()
        trial.set_user_attr("fold_macro_f1", scores)
        trial.set_user_attr("cv_macro_f1_std", float(np.std(scores)))
        return float(np.mean(scores))

    return objective


def run_study(
    name: str,
    X,
    y,
    cv,
    n_trials: int,
    timeout: float | None,
    storage: str,
    study_name: str,
    seed: int = 0,
    n_jobs: int | None = None,
) -> optuna.Study:
    """Create or resume the study and run it until it holds ``n_trials`` finished trials (or times out).

    Trials finished by an earlier, interrupted run count towards ``n_trials``, so rerunning the same
    command resumes rather than restarts.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        # Seed offset by the trials already present: a resumed sampler must not replay the same draws.
        sampler=optuna.samplers.TPESampler(
            seed=seed + len(_load_trials(storage, study_name)), multivariate=True
        ),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
    )
    study.set_user_attr("model", name)
    study.set_user_attr("space_version", SPACE_VERSION)
    done = sum(t.state in FINISHED for t in study.trials)
    remaining = n_trials - done
    if remaining > 0:
        study.optimize(
            make_objective(name, X, y, cv, seed=seed, n_jobs=n_jobs),
            n_trials=remaining,
            timeout=timeout,
            catch=(),
        )
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        raise RuntimeError(
            f"study '{study_name}' has no completed trial (timeout {timeout}s too short, or every trial "
            "was pruned); raise --timeout or --n-trials"
        )
    logging.getLogger(__name__).info("study %s: best %.4f", study_name, study.best_value)
    return study


def _load_trials(storage: str, study_name: str) -> list:
    try:
        return optuna.load_study(study_name=study_name, storage=storage).trials
    except KeyError:  # no such study yet
        return []
