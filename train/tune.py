"""Hyperparameter search: one Optuna study per base model, scored on purged walk-forward folds.

The search spaces are pure functions ``space(trial) -> dict`` whose keys are the estimator's own
constructor arguments (``tests/test_params.py`` proves each reaches the fitted model). The objective
comes from ``make_objective``: mean macro-F1 (``macro_f1``) or the after-cost Sharpe ratio of the
decision policy on the out-of-fold predictions (``sharpe``); either is reported after every fold so the
pruner can stop a bad trial early. No tracking calls here: the pipeline logs what the study returns.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import numpy as np
import optuna

from evaluation.economics import TradingCosts
from evaluation.metrics import macro_f1
from models import cli
from models.base import build_model, default_n_jobs, fit_threads
from models.ensemble import fit_predict_fold, map_folds
from models.redaction import redact
from models.tracking import new_sqlite_file, one_line

# Bump when a search space or what a trial records changes, so a resumed study never mixes two.
# 2: trials record the after-cost Sharpe ratios of the decision-policy rules (oof_sharpe).
# 3: cheaper shapes (issue 20): XGBoost max_depth 2-8 (was 3-15), LightGBM num_leaves 8-64 on a log scale
#    and max_depth 3-12 (was 20-100, 3-15), random forest max_samples 0.05-0.5 and n_estimators 50-200
#    (was 0.1-1.0, 50-300). On the default data each study's best CV macro-F1 moved by at most 0.002 (two
#    up, one down) while its CPU time fell to 85% (LightGBM), 53% (XGBoost), 38% (forest): docs/benchmarks.md.
SPACE_VERSION = 3
# What a study maximises (the ``objective`` option) -> the study's metric name (``set_metric_names``).
# A study tuned for one is never resumed for another: the objective is part of the study's name
# (train.config.PipelineConfig.fingerprint), and run_study refuses a study whose metric name differs.
OBJECTIVES: dict[str, str] = {"macro_f1": "cv_macro_f1", "sharpe": "cv_sharpe"}
# How a trial's value reads in the log lines.
OBJECTIVE_LABELS: dict[str, str] = {"macro_f1": "macro-F1", "sharpe": "out-of-fold Sharpe"}
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
# User attribute of a trial the timeout stopped between two folds (a pruned trial, never the best).
CUT_BY_TIMEOUT = "cut_by_timeout"
# System attribute of a trial: the process running it (models.tracking.owner_tags: host, pid, pid_start).
OWNER = "owner"


def space_lightgbm(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
        "n_estimators": trial.suggest_int("n_estimators", 50, 300),
        # Leaves grow best-first: LightGBM's default 31 sits mid-range; more leaves than 2**max_depth
        # cannot grow, and on noisy candles deep, leafy trees fit noise at a high cost.
        "num_leaves": trial.suggest_int("num_leaves", 8, 64, log=True),
        "max_depth": trial.suggest_int("max_depth", 3, 12),
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
        # Level-wise trees: each level costs a pass over the rows; XGBoost's default depth is 6.
        "max_depth": trial.suggest_int("max_depth", 2, 8),
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
        "n_estimators": trial.suggest_int("n_estimators", 50, 200),
        "max_depth": trial.suggest_int("max_depth", 3, 15),
        "min_samples_split": trial.suggest_int("min_samples_split", 2, 20),
        "min_samples_leaf": trial.suggest_int("min_samples_leaf", 1, 100, log=True),
        "max_features": trial.suggest_float("max_features", 0.2, 1.0),
        # Rows per tree at most half: labels that look `horizon` bars ahead overlap, so a bootstrap of every
        # row mostly repeats itself (each label's average uniqueness is about 1/horizon); fewer rows
        # decorrelate the trees and keep deep ones affordable on 2 cores.
        "max_samples": trial.suggest_float("max_samples", 0.05, 0.5),
        "class_weight": trial.suggest_categorical("class_weight", [None, "balanced", "balanced_subsample"]),
    }


SPACES: dict[str, Callable[[optuna.Trial], dict[str, Any]]] = {
    "lightgbm": space_lightgbm,
    "xgboost": space_xgboost,
    "random_forest": space_random_forest,
}


def make_objective(
    name: str,
    X,
    y,
    cv,
    seed: int = 0,
    n_jobs: int | None = None,
    costs: TradingCosts | None = None,
    deadline: float | None = None,
    objective: str = "macro_f1",
    sample_weight=None,
    side_column: str | None = None,
    space: Callable[[optuna.Trial], dict[str, Any]] | None = None,
    keep_oof: dict[int, OutOfFold] | None = None,
):
    """The trial's score over the purged folds, reported after each fold so the pruner can stop it.

    ``objective="macro_f1"`` (default): the value is the mean macro-F1 over the folds; after fold k the
    mean of folds 1..k is reported.

    ``objective="sharpe"`` (needs ``costs``): after fold k, the out-of-fold predictions of folds 1..k are
    pooled (the validation blocks follow each other in time) and the decision-policy rule that
    ``evaluation.economics.fit_policy`` chooses on them (best after-cost Sharpe of the 28 rules, ties to
    the stricter) is scored by its after-cost Sharpe ratio per period on those pooled rows; that is
    what is reported. The value is the number after the last fold: the after-cost Sharpe ratio of the
    rule chosen on all the trial's out-of-fold predictions, the same choice the pipeline makes for the
    ensemble's policy and the quantity the gate's deflated Sharpe ratio judges (which counts the rules
    and trials tried). One rule for the pooled rows, never the best rule per fold, which would score
    the luckiest of 28 rules on every fold.

    Every trial records ``fold_macro_f1`` (also when pruned or cut), and once complete
    ``cv_macro_f1_mean`` and ``cv_macro_f1_std``, whatever the objective. With ``costs``, a completed
    trial also records ``oof_sharpe`` (the after-cost Sharpe ratio of every rule on its out-of-fold
    predictions), ``oof_policy`` (the rule fit_policy chooses) and ``cv_sharpe`` (that rule's Sharpe: the
    ``sharpe`` objective's value). With ``objective="sharpe"``, ``running_oof_sharpe`` lists the numbers
    reported after each fold.

    ``deadline`` (a ``time.monotonic()`` value) is the end of the tuning time: a trial still running
    then stops after the fold in flight, as a pruned trial with the user attribute ``cut_by_timeout``.
    Pruned, it is never the best trial and the median pruner ignores it (it compares completed trials).

    ``sample_weight`` (one per row of ``X``, or None) weighs each fold's training rows in the fit; the
    scores count validation rows equally.

    ``side_column`` (meta-labeling: the primary side's feature column) masks every fold's probabilities
    to the side (``models.policy.mask_to_side``), as the ensemble and the served model do.

    ``space`` replaces the model family's search space (:data:`SPACES`), e.g. for a benchmark; ``keep_oof``
    (a dict, filled here) receives each completed trial's out-of-fold predictions by trial number
    (:class:`OutOfFold`), which the ensemble reuses instead of fitting the same folds again.
    """
    _check_objective(objective, costs)
    y = np.asarray(y)
    classes = np.unique(y)
    space = space or SPACES[name]
    threads, folds_at_once = fit_threads(name, n_jobs or default_n_jobs())

    def objective_fn(trial: optuna.Trial) -> float:
        # Threads per fit and folds at once by family (models.base.fit_threads: kind to a busy machine).
        estimator = build_model(name, space(trial), seed=seed, n_jobs=threads)
        folds = list(cv.split(X, y))
        scores = _FoldScores(trial, y, classes, objective, costs)

        def fit(train_idx, test_idx):
            return fit_predict_fold(estimator, X, y, train_idx, test_idx, classes, sample_weight, side_column)

        with contextlib.closing(map_folds(fit, folds, folds_at_once)) as results:
            for step, ((_, test_idx), proba) in enumerate(zip(folds, results, strict=True)):
                # A dropped database connection is retried here: the folds already fitted are kept.
                with_retries(trial.report, scores.add(test_idx, proba), step)
                if with_retries(trial.should_prune):
                    scores.record_partial()
                    raise optuna.TrialPruned()
                if deadline is not None and step < len(folds) - 1 and time.monotonic() >= deadline:
                    scores.record_partial()
                    with_retries(trial.set_user_attr, CUT_BY_TIMEOUT, True)
                    raise optuna.TrialPruned(f"cut by the timeout after {step + 1} of {len(folds)} folds")
        return scores.finish(keep_oof)

    return objective_fn


class OutOfFold(NamedTuple):
    """A completed trial's out-of-fold class probabilities: ``proba[i]`` is row ``rows[i]``'s (the
    validation blocks of the folds, in order), from the same fits the trial was scored on."""

    rows: np.ndarray
    proba: np.ndarray


def _check_objective(objective: str, costs: TradingCosts | None) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    if objective == "sharpe" and costs is None:
        raise ValueError("objective 'sharpe' needs the trading costs (costs=TradingCosts(...))")


class _FoldScores:
    """A trial's scores, fold by fold (see :func:`make_objective`), and the user attributes recording
    them on the trial."""

    def __init__(self, trial: optuna.Trial, y, classes, objective: str, costs: TradingCosts | None):
        self.trial, self.y, self.classes, self.objective, self.costs = trial, y, classes, objective, costs
        self.scores: list[float] = []  # macro-F1 per fold
        self.running: list[float] = []  # objective "sharpe": pooled out-of-fold Sharpe after each fold
        self.rows: list[np.ndarray] = []  # each fold's validation rows
        self.probas: list[np.ndarray] = []  # and its class probabilities

    def add(self, test_idx, proba) -> float:
        """Score one more fold (its validation rows and class probabilities); returns the value to report."""
        self.rows.append(test_idx)
        self.probas.append(proba)
        self.scores.append(macro_f1(self.y[test_idx], self.classes[proba.argmax(axis=1)]))
        if self.objective == "sharpe":
            if self.costs is None:  # make_objective refuses it first (_check_objective)
                raise ValueError("objective 'sharpe' needs the trading costs (costs=TradingCosts(...))")
            pooled = self.costs.chosen_sharpe(np.concatenate(self.rows), np.vstack(self.probas))
            self.running.append(pooled[1])
            return self.running[-1]
        return float(np.mean(self.scores))

    def record_partial(self) -> None:
        """What a trial records also when it is pruned or cut."""
        with_retries(self.trial.set_user_attr, "fold_macro_f1", self.scores)
        if self.running:
            with_retries(self.trial.set_user_attr, "running_oof_sharpe", self.running)

    def finish(self, keep_oof: dict[int, OutOfFold] | None = None) -> float:
        """Record the completed trial's numbers (its out-of-fold predictions in ``keep_oof``, if given);
        returns its value."""
        if keep_oof is not None:
            keep_oof[self.trial.number] = OutOfFold(np.concatenate(self.rows), np.vstack(self.probas))
        self.record_partial()
        with_retries(self.trial.set_user_attr, "cv_macro_f1_mean", float(np.mean(self.scores)))
        with_retries(self.trial.set_user_attr, "cv_macro_f1_std", float(np.std(self.scores)))
        if self.costs is not None:
            rule, sharpe, sharpes = self.costs.chosen_sharpe(
                np.concatenate(self.rows), np.vstack(self.probas)
            )
            with_retries(self.trial.set_user_attr, "oof_sharpe", sharpes)
            with_retries(self.trial.set_user_attr, "oof_policy", rule)
            with_retries(self.trial.set_user_attr, "cv_sharpe", sharpe)
            if self.objective == "sharpe":
                return sharpe  # == running[-1]: the same pooled rows
        return float(np.mean(self.scores))


def study_objective(study: optuna.Study) -> str:
    """The objective a study maximises, from its metric name (``macro_f1`` for a study without one)."""
    names = study.metric_names or [OBJECTIVES["macro_f1"]]
    return next((k for k, metric in OBJECTIVES.items() if metric == names[0]), "macro_f1")


def trial_macro_f1(trial: optuna.trial.FrozenTrial) -> float:
    """A completed trial's mean macro-F1 over the folds, whatever its study's objective."""
    if "cv_macro_f1_mean" in trial.user_attrs:
        return float(trial.user_attrs["cv_macro_f1_mean"])
    return float(np.mean(trial.user_attrs["fold_macro_f1"]))  # trials recorded before cv_macro_f1_mean


class TuningError(RuntimeError):
    """A study that produced nothing usable; the message says what to change."""


class StorageUnavailable(TuningError):
    """The Optuna storage cannot be opened or written; the message names the URL and the fix."""


def _shown(url: str) -> str:
    """The storage URL as printed: without its password."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:  # not a URL SQLAlchemy can parse: show it as given
        return url
    return url if parsed.password is None else parsed.render_as_string(hide_password=True)


def _storage_error(url: str, exc: BaseException) -> StorageUnavailable:
    # Optuna reports a refused write as "invalid data in the commit"; the database's own reason is the cause.
    while isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return StorageUnavailable(
        f"cannot open the Optuna storage {_shown(url)!r}: {type(exc).__name__}: {one_line(exc)}. Fix "
        "--optuna-storage (MLproject: optuna_storage): a sqlite:///<file> in an existing, writable "
        "directory, or a running database server you can write to, e.g. postgresql://user@host/db."
    )


# A transient database error (a dropped, refused or timed-out connection) is retried after each of these
# pauses, in seconds: five attempts within about 8 s (plus the connection timeouts), then one line.
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
# Seconds a new PostgreSQL or MySQL connection may take before it counts as failed (and is retried).
CONNECT_TIMEOUT = 5


def transient(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an error it was raised from or while handling, is a lost, refused or timed-out
    database connection (SQLAlchemy's OperationalError, DisconnectionError or InterfaceError, or an error
    that invalidated its connection), which a retry on a new connection may get past. Optuna reports
    these as ``StorageInternalError`` raised from them."""
    import sqlalchemy.exc

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
            return True
        if isinstance(
            exc,
            (
                sqlalchemy.exc.OperationalError,
                sqlalchemy.exc.DisconnectionError,
                sqlalchemy.exc.InterfaceError,
            ),
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _database_error(exc: BaseException) -> BaseException:
    """The database's own error behind Optuna's ``StorageInternalError`` (or ``exc`` itself)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if not isinstance(exc, optuna.exceptions.StorageInternalError | UnboundLocalError):
            return exc
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            return exc
        exc = nxt
    return exc


def _reason(exc: BaseException) -> str:
    cause = _database_error(exc)
    return redact(f"{type(cause).__name__}: {one_line(cause)}")


def storage_lost(url: str, exc: BaseException, seconds: float) -> StorageUnavailable:
    """The one-line error after the retries of a transient error ran out."""
    return StorageUnavailable(
        f"lost the connection to the Optuna storage {redact(url)!r} and could not reconnect within "
        f"{seconds:.0f} s ({len(RETRY_DELAYS) + 1} attempts): {_reason(exc)}. Finished trials are kept: "
        "once the database answers again, rerun the same command to resume the study (or fix "
        "--optuna-storage)."
    )


def with_retries(fn: Callable[..., Any], *args: Any, url: str | None = None, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, called again after each pause of :data:`RETRY_DELAYS` while it fails with a
    :func:`transient` database error. When the pauses run out: :class:`StorageUnavailable` naming
    ``url``, or (no ``url``) the last error itself. Only for calls that may safely run twice."""
    started = time.monotonic()
    for delay in (*RETRY_DELAYS, None):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not transient(exc):
                raise
            if delay is None:
                if url is None:
                    raise
                raise storage_lost(url, exc, time.monotonic() - started) from exc
            log.warning(
                "the Optuna storage%s did not answer (%s); retrying in %.1f s",
                f" {redact(url)}" if url else "",
                _reason(exc),
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


class _ShortTransientTracebacks(logging.Filter):
    """Optuna logs a trial that failed with its full traceback (~100 lines of SQLAlchemy frames for a
    dropped connection); for a transient database error, which the tuning retries and then reports in
    one line, the record keeps its one-line message only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and transient(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_transient_tracebacks() -> None:
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _ShortTransientTracebacks) for f in handler.filters):
            handler.addFilter(_ShortTransientTracebacks())


def engine_options(url: str) -> dict:
    """SQLAlchemy engine options for an Optuna database server: a pooled connection the server dropped
    is replaced before use (``pool_pre_ping``), connections are renewed after 30 minutes (before
    server or proxy idle timeouts), and a new PostgreSQL or MySQL connection gives up after
    :data:`CONNECT_TIMEOUT` seconds instead of the OS's minutes. None for SQLite."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # not a URL: RDBStorage reports it
        return {}
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return {}
    options: dict[str, Any] = {"pool_pre_ping": True, "pool_recycle": 1800}
    driver = parsed.drivername.partition("+")[2]
    if backend == "postgresql" and driver in ("", "psycopg2", "psycopg"):
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
    elif backend in ("mysql", "mariadb") and driver in ("", "mysqldb", "pymysql"):
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
    return options


def storage_url(url: str) -> str:
    """The storage URL with an explicit PostgreSQL driver.

    SQLAlchemy 2 reads a bare ``postgresql://`` as psycopg 3, which is not installed; the pinned driver
    is psycopg2, so ``postgresql://`` means ``postgresql+psycopg2://`` here.
    """
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


class HeartbeatStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage with its public heartbeat; a heartbeat lost to a dropped connection is logged
    in one line instead of ending Optuna's heartbeat thread."""

    shown_url: str  # the URL as given (set by make_storage): what run_study names in its errors

    def record_heartbeat(self, trial_id: int) -> None:
        # Optuna's heartbeat thread ends at its first error, printing a traceback. A beat lost to a
        # dropped connection is logged in one line; the next beat, on a new connection, catches up.
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:
            if not transient(exc):
                raise
            log.warning(
                "heartbeat of trial %d not recorded (%s); next try in %ss",
                trial_id,
                _reason(exc),
                self.heartbeat_interval,
            )


# A trial failed as stale (its worker died) is run again once with the same parameters, as a new trial
# (Optuna's RetryHeartbeatStaleTrialCallback): the sampler's proposal is not lost with the worker. The
# retry counts towards n_trials like any trial; a second death of the same parameters is not retried.
MAX_RETRY = 1


def record_owner(storage: optuna.storages.BaseStorage, study: optuna.Study, trial: optuna.Trial) -> None:
    """Record which process runs ``trial`` (system attribute :data:`OWNER`: host, pid and the process's
    start time, so a reused pid is not mistaken for it): :func:`fail_stale_trials` fails the trial at once
    when that process is gone. Called first thing in every trial, when Optuna's heartbeat also starts."""
    from models.tracking import owner_tags

    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    storage.set_trial_system_attr(trial_id, OWNER, owner_tags())


def _owner(trial: optuna.trial.FrozenTrial) -> dict:
    return trial.system_attrs.get(OWNER) or {}


def fail_stale_trials(study: optuna.Study, storage: optuna.storages.BaseStorage) -> list[int]:
    """Fail the RUNNING trials of ``study`` whose worker is dead, and hand each to the storage's stale-trial
    callback (the retry of :func:`make_storage`); returns their numbers.

    Optuna's own :func:`optuna.storages.fail_stale_trials` (run first) fails a trial whose last heartbeat
    is older than the grace period. Two more kinds of RUNNING trial are stale here:

    * a trial whose process ran on this machine and is gone (its :data:`OWNER`, :func:`record_owner`): a
      pipeline killed and rerun at once fails its killed trial at once, instead of leaving it RUNNING for
      the grace period, or for good if the rerun finds the study full (Optuna fails stale trials only
      before starting one);
    * a trial with no owner that started longer than the grace period ago: its worker was killed after
      creating it and before running it (while the sampler drew its parameters); Optuna never fails it, as
      it has no heartbeat. The start time is the creating worker's clock, as Optuna writes it.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    from models.tracking import owner_alive

    if not isinstance(storage, optuna.storages.RDBStorage):  # no heartbeat (an in-memory study)
        return []
    interval = storage.get_heartbeat_interval()
    if interval is None:  # no heartbeat: no grace period to judge by
        return []
    grace = storage.grace_period if storage.grace_period is not None else 2 * interval
    # Optuna stores start times in UTC and reads them back in this machine's local time, as now() is.
    cutoff = datetime.now() - timedelta(seconds=grace)
    study_id = storage.get_study_id_from_name(study.study_name)
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = _owner(trial)
        never_ran = not owner and trial.datetime_start is not None and trial.datetime_start < cutoff
        if not never_ran and owner_alive(owner) is not False:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            if storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
                failed.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed (or finished) it first
            pass
    callback = storage.get_heartbeat_stale_trial_callback()
    for trial_id in failed:  # only the trials this call failed: a retry is never enqueued twice
        if callback is not None:
            callback(study, storage.get_trial(trial_id))
    return [storage.get_trial(t).number for t in failed]


def make_storage(
    url: str, heartbeat_interval: int = 30, grace_period: int | None = None, engine_kwargs: dict | None = None
):
    """An Optuna RDB storage with heartbeats: a trial whose worker died (even by SIGKILL) stops counting
    as running after ``grace_period`` seconds and is marked FAILED when any worker next starts, so a
    rerun resumes and loses at most the trial that was in flight. A storage that cannot be opened raises
    :class:`StorageUnavailable` naming the URL. Database servers get :func:`engine_options` (updated by
    ``engine_kwargs``), so a dropped connection is replaced rather than fatal."""
    import sqlalchemy.exc

    options = engine_options(storage_url(url)) | (engine_kwargs or {})
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
                storage = HeartbeatStorage(
                    storage_url(url),
                    engine_kwargs=options or None,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period or 4 * heartbeat_interval,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                        max_retry=MAX_RETRY
                    ),
                )
                storage.shown_url = url  # what run_study names in its errors (redacted there)
                return storage
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            # Workers starting together on an empty database race to create Optuna's schema; the
            # loser finds it made by the winner on the next attempt.
            if attempt == 4:
                raise _storage_error(url, exc) from exc
            time.sleep(0.5 + random.random())
        except Exception as exc:  # bad URL, missing driver, no server, not a database, old schema ...
            raise _storage_error(url, exc) from exc


def check_storage(url: str) -> None:
    """Fail fast, before any data is read or any run is created, if the Optuna storage cannot be opened
    and written: a study is created and deleted again. A ``sqlite:///`` file that does not exist yet is
    not created here (only its directory is checked); the first study creates it."""
    import os
    import uuid

    new = new_sqlite_file(url)
    if new is not None:
        if not new.parent.is_dir() or not os.access(new.parent, os.W_OK | os.X_OK):
            raise _storage_error(
                url, FileNotFoundError(f"no writable directory {str(new.parent)!r} for the database file")
            )
        return
    # A server that drops packets would otherwise hold the connection attempt for minutes: make_storage
    # sets a connection timeout (engine_options).
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created" for the check
    storage = make_storage(url)
    try:
        study_id = storage.create_new_study(
            [optuna.study.StudyDirection.MAXIMIZE], f"storage-check-{uuid.uuid4().hex}"
        )
        storage.delete_study(study_id)
    except Exception as exc:  # read-only file or role, full disk, locked database ...
        raise _storage_error(url, exc) from exc
    finally:
        storage.remove_session()
        storage.engine.dispose()


log = logging.getLogger(__name__)


class TrialProgress:
    """Optuna callback: one INFO line per trial this process ends, e.g.
    ``trial     lightgbm 3/12: macro-F1 0.3512 (41s); best 0.3530; 38s of the 90s timeout left``
    (``out-of-fold Sharpe ...`` when the study maximises the ``sharpe`` objective).

    ``k`` counts the study's finished trials (complete or pruned, as ``n_trials`` does), whoever ran
    them; ``best`` is the best completed trial of the study so far.
    """

    def __init__(self, name: str, n_trials: int, timeout: float | None, objective: str = "macro_f1"):
        self.name, self.n_trials, self.timeout = name, n_trials, timeout
        self.label = OBJECTIVE_LABELS[objective]
        self.start = time.monotonic()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        state = optuna.trial.TrialState
        trials = study.get_trials(deepcopy=False)
        k = sum(t.state in FINISHED for t in trials)
        folds = len(trial.user_attrs.get("fold_macro_f1", []))
        if trial.state == state.COMPLETE:
            outcome = f"{self.label} {trial.value:.4f}"
        elif trial.state == state.PRUNED and trial.user_attrs.get(CUT_BY_TIMEOUT):
            outcome = f"cut by the timeout after {folds} fold(s)"
        elif trial.state == state.PRUNED:
            outcome = f"pruned after {folds} fold(s)"
        else:
            outcome = trial.state.name.lower()
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        values = [t.value for t in trials if t.state == state.COMPLETE and t.value is not None]
        best = f"best {max(values):.4f}" if values else "no completed trial yet"
        left = ""
        if self.timeout:
            remaining = max(0.0, self.timeout - (time.monotonic() - self.start))
            left = f"; {remaining:.0f}s of the {self.timeout:g}s timeout left"
        log.info(
            "trial     %s %d/%d: %s (%.0fs); %s%s", self.name, k, self.n_trials, outcome, seconds, best, left
        )


def study_name_for(model: str, fingerprint: str) -> str:
    """The study a model's trials go to; the pipeline and every `tune` worker derive the same name."""
    return f"{model}-{fingerprint}"


def run_study(
    name: str,
    X,
    y,
    cv,
    n_trials: int,
    timeout: float | None,
    storage,
    study_name: str,
    seed: int = 0,
    n_jobs: int | None = None,
    worker_id: int = 0,
    costs: TradingCosts | None = None,
    description: dict | None = None,
    warm_start: list[dict] | None = None,
    objective: str = "macro_f1",
    sample_weight=None,
    side_column: str | None = None,
    space: Callable[[optuna.Trial], dict[str, Any]] | None = None,
    keep_oof: dict[int, OutOfFold] | None = None,
) -> optuna.Study:
    """Create or join the study and run trials until it holds ``n_trials`` finished trials (or times out).

    Trials are scored by ``objective`` (see :func:`make_objective`; ``sharpe`` needs ``costs``), whose
    metric name (:data:`OBJECTIVES`) the study carries; a study already tuned for another objective is
    refused (:class:`TuningError`). The trial the pipeline uses is ``study.best_trial``: the completed
    trial with the highest value (pruned trials, and those cut by the timeout, never count).

    Trials finished earlier (by an interrupted run, or by other workers on this or other machines that
    share ``storage``) count towards ``n_trials``: rerunning resumes, and any number of workers fill one
    study together. ``storage`` is a URL or an Optuna storage object. ``description`` (see
    :func:`study_description`) becomes the study's user attrs, so optuna-dashboard shows what it measured.
    ``warm_start``: parameter sets (e.g. an earlier study's best trials) a new study tries first; they
    count towards ``n_trials`` like any trial. A study that already has trials ignores them. ``space``
    and ``keep_oof`` (the out-of-fold predictions of the trials this process completes): see
    :func:`make_objective`.
    """
    _check_objective(objective, costs)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _quiet_transient_tracebacks()
    url = storage if isinstance(storage, str) else getattr(storage, "shown_url", "") or "(storage object)"
    # (check_storage, run first by the commands, fails at once on a storage that cannot be opened.)
    storage = with_retries(make_storage, storage) if isinstance(storage, str) else storage
    opener = _StudyOpener(
        storage, study_name, name, objective, seed, worker_id, description, warm_start, n_trials
    )
    study = with_retries(opener, url=url)
    done = sum(t.state in FINISHED for t in study.trials)
    remaining = n_trials - done
    log.info(
        "tuning    %s: %d of %d trials to run%s%s",
        name,
        max(remaining, 0),
        n_trials,
        f" ({done} finished earlier)" if done else "",
        f", timeout {timeout:g}s" if timeout else "",
    )
    if remaining > 0:
        # Optuna checks its timeout only between trials; the objective also checks it between folds.
        deadline = time.monotonic() + timeout if timeout else None
        score = make_objective(
            name,
            X,
            y,
            cv,
            seed=seed,
            n_jobs=n_jobs,
            costs=costs,
            deadline=deadline,
            objective=objective,
            sample_weight=sample_weight,
            side_column=side_column,
            space=space,
            keep_oof=keep_oof,
        )
        progress = TrialProgress(name, n_trials, timeout, objective)
        study = _fill(study, opener, url, score, n_trials, done, deadline, progress)
    _check_completed(study, timeout, lambda: cv.get_n_splits(X, y))
    log.debug("study %s: best %.4f", study_name, study.best_value)
    return study


@dataclass(frozen=True)
class _StudyOpener:
    """Opens (creates, resumes or joins) a study; called again, on a new connection, after a lost one."""

    storage: Any
    study_name: str
    model: str
    objective: str
    seed: int
    worker_id: int
    description: dict | None
    warm_start: list[dict] | None
    n_trials: int

    def __call__(self) -> optuna.Study:
        storage, study_name, metric = self.storage, self.study_name, OBJECTIVES[self.objective]
        existing = _load_trials(storage, study_name)
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            direction="maximize",
            load_if_exists=True,
            # Seed offset by the trials already there and by the worker: a resumed or parallel sampler
            # must not replay another's draws. The constant liar keeps parallel workers apart while
            # trials run.
            sampler=optuna.samplers.TPESampler(
                seed=self.seed + len(existing) + 7919 * self.worker_id, multivariate=True, constant_liar=True
            ),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
        )
        if study.metric_names not in (None, [metric]):
            raise TuningError(
                f"study '{study_name}' maximises {study.metric_names[0]}, not {metric} (objective "
                f"{self.objective!r}): give another --study-name, or the objective it was tuned for"
            )
        study.set_user_attr("model", self.model)
        study.set_user_attr("space_version", SPACE_VERSION)
        for key, value in (self.description or {}).items():
            study.set_user_attr(key, value)
        # Trials a dead worker left RUNNING are failed before counting (Optuna does it only when a trial
        # starts, which a full study never does): failed trials never count towards n_trials. So is a
        # trial of this process that a dropped connection interrupted (when the study is re-opened).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([metric])
        fail_stale_trials(study, storage)
        _fail_own_running_trials(study)
        if self.warm_start and not study.trials:
            for params in self.warm_start[: self.n_trials]:
                study.enqueue_trial(params, user_attrs={"warm_start": True}, skip_if_exists=True)
        return study


def _fill(
    study: optuna.Study,
    opener: _StudyOpener,
    url: str,
    score: Callable[[optuna.Trial], float],
    n_trials: int,
    done: int,
    deadline: float | None,
    progress: TrialProgress,
) -> optuna.Study:
    """Run trials until the study (``done`` finished trials so far) holds ``n_trials`` finished ones
    (whoever ran them) or ``deadline`` passes. A connection dropped between or during trials re-opens the
    study (on a new connection) and carries on; the interrupted trial is failed and does not count.
    Returns the study as last opened."""
    storage, name = opener.storage, opener.model

    def owned_score(trial: optuna.Trial) -> float:
        record_owner(storage, study, trial)  # a worker that dies from here on is known dead at once
        return score(trial)

    def fail_dead_workers_trials(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        fail_stale_trials(study, storage)  # between trials, as Optuna fails heartbeat-stale ones

    remaining = n_trials - done
    failures, lost_since = 0, 0.0
    while remaining > 0:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        try:
            study.optimize(
                owned_score,
                n_trials=remaining,
                timeout=left,
                catch=(),
                # other workers' trials count too: stop once the study as a whole is full
                callbacks=[
                    optuna.study.MaxTrialsCallback(n_trials, states=FINISHED),
                    progress,
                    fail_dead_workers_trials,
                ],
            )
            break
        except Exception as exc:
            if not transient(exc):
                raise
            lost_since = lost_since or time.monotonic()
            if failures == len(RETRY_DELAYS):
                raise storage_lost(url, exc, time.monotonic() - lost_since) from exc
            log.warning(
                "tuning    %s: lost the Optuna storage %s (%s); re-opening the study in %.1f s",
                name,
                redact(url),
                _reason(exc),
                RETRY_DELAYS[failures],
            )
            time.sleep(RETRY_DELAYS[failures])
            failures += 1
            study = with_retries(opener, url=url)
            now_done = sum(t.state in FINISHED for t in study.trials)
            if now_done > done:  # progress since the last loss: the next loss starts a new count
                failures, lost_since = 0, 0.0
            done, remaining = now_done, n_trials - now_done
    return study


def _check_completed(study: optuna.Study, timeout: float | None, n_folds: Callable[[], int]) -> None:
    """:class:`TuningError` saying what to change when the study has no completed trial."""
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        return
    # (trial, duration) of the trials the timeout cut (finished: pruned, so their duration is known)
    cut = [(t, d) for t in study.trials if t.user_attrs.get(CUT_BY_TIMEOUT) and (d := t.duration) is not None]
    if cut:
        folds, seconds = len(cut[0][0].user_attrs["fold_macro_f1"]), cut[0][1].total_seconds()
        n = n_folds()
        raise TuningError(
            f"study '{study.study_name}' has no completed trial: the timeout of {timeout:g} s cut the first "
            f"after {folds} of {n} folds ({seconds:.0f} s; a whole trial takes about "
            f"{seconds / folds * n:.0f} s here); raise --timeout, or set it to 0 for no limit"
        )
    raise TuningError(
        f"study '{study.study_name}' has no completed trial (timeout {timeout}s too short, or every trial "
        "was pruned); raise --timeout or --n-trials"
    )


def _fail_own_running_trials(study: optuna.Study) -> None:
    """Fail the trials this process left RUNNING (one a dropped connection interrupted): this process
    runs one trial of a study at a time, and none while the study is being opened."""
    from models.tracking import owner_tags

    me = owner_tags()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.system_attrs.get(OWNER) == me:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)


def trial_counts(trials) -> dict[str, int]:
    """How a study's trials ended: ``finished`` (complete or pruned: what counts towards n_trials) and
    ``complete``, ``pruned`` (of which ``cut_by_timeout``), ``failed``, ``running``."""
    state = optuna.trial.TrialState
    return {
        "finished": sum(t.state in FINISHED for t in trials),
        "complete": sum(t.state == state.COMPLETE for t in trials),
        "pruned": sum(t.state == state.PRUNED for t in trials),
        "cut_by_timeout": sum(
            t.state == state.PRUNED and bool(t.user_attrs.get(CUT_BY_TIMEOUT)) for t in trials
        ),
        "failed": sum(t.state == state.FAIL for t in trials),
        "running": sum(t.state == state.RUNNING for t in trials),
    }


def describe_trials(counts: dict[str, int], n_trials: int, timeout: float | None) -> str:
    """One line: e.g. "12 trials requested, 5 finished within timeout 90 s (1 cut short by it)"."""
    finished = counts["finished"]
    if finished >= n_trials:
        text = f"{finished} trials finished"
    else:
        limit = f" within timeout {timeout:g} s" if timeout else ""
        text = f"{n_trials} trials requested, {finished} finished{limit}"
    notes = []
    if counts["cut_by_timeout"]:
        notes.append(f"{counts['cut_by_timeout']} cut short by the timeout after some folds")
    if counts["failed"]:
        notes.append(f"{counts['failed']} failed, not counted")
    if counts["running"]:
        notes.append(f"{counts['running']} still running elsewhere")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def _load_trials(storage, study_name: str) -> list:
    try:
        return optuna.load_study(study_name=study_name, storage=storage).trials
    except KeyError:  # no such study yet
        return []


def study_description(cfg, info, model: str) -> dict:
    """Everything in the study's name (``cfg.fingerprint``) in readable form, for its user attrs: the
    data (source, range, checksum), features, label, folds, seed, search space and backtest rules."""
    from features.context import context_label

    return {
        "model": model,
        "data": cfg.data,
        "data_source": info.source,
        "data_start": str(info.start),
        "data_end": str(info.end),
        "data_sha256": info.sha256,
        "bar": str(info.bar),
        "timeframe": cfg.timeframe,
        "days": cfg.days,
        "features": cfg.features,
        "context_timeframe": context_label(cfg.context_timeframe),
        "label_horizon": cfg.horizon,
        "label_threshold": cfg.threshold,
        "label_vol_window": cfg.vol_window,
        "label": cfg.label,
        "sample_weights": cfg.sample_weights,
        "primary": getattr(cfg, "primary", "none"),
        "n_folds": cfg.n_folds,
        "holdout_frac": cfg.holdout_frac,
        "seed": cfg.seed,
        "space_version": SPACE_VERSION,
        "backtest_mode": cfg.backtest_mode,
        "on_hold": cfg.hold,
        "fee_bps": cfg.fee_bps,
        "slippage_bps": cfg.slippage_bps,
        "objective": OBJECTIVE_TEXT[cfg.objective],
    }


# What each objective measures, in the study's user attrs (optuna-dashboard shows them).
OBJECTIVE_TEXT: dict[str, str] = {
    "macro_f1": "mean macro-F1 over the purged walk-forward folds of the development rows",
    "sharpe": "after-cost Sharpe ratio per period, on the pooled out-of-fold predictions of the purged "
    "walk-forward folds of the development rows, of the decision-policy rule chosen on them (fit_policy)",
}


def tune_worker(
    cfg, model: str, worker_id: int = 0, study_name: str | None = None, heartbeat: int = 30
) -> optuna.Study:
    """One worker of the study the pipeline will use for ``model``: same data, folds and study name (the
    pipeline's own data preparation and stage `tune`, ``train.stages.tune.study_for``)."""
    from train.prepare import prepare
    from train.stages.tune import study_for

    data = prepare(cfg)
    return study_for(
        cfg,
        data,
        model,
        cfg.n_jobs or None,
        storage=with_retries(make_storage, cfg.optuna_storage, heartbeat_interval=heartbeat),
        study_name=study_name,
        worker_id=worker_id,
    )


def _worker(args: tuple) -> tuple[int, int]:
    cfg, model, worker_id, study_name, heartbeat, log_level = args
    from train.config import configure_logging

    configure_logging(log_level)  # a spawned worker process starts with logging unconfigured
    study = tune_worker(cfg, model, worker_id, study_name, heartbeat)
    return worker_id, sum(t.state in FINISHED for t in study.trials)


def build_parser() -> cli.Parser:
    """The pipeline's options (``train.config``; no time limit by default: each worker fills its share of
    the trials) and the tune command's own."""
    from train.config import pipeline_parser  # train.config imports this module

    doc = (main.__doc__ or "").split("\n\n")
    parser = pipeline_parser("python -m train.tune", doc[0].strip(), timeout=0.0)
    parser.epilog = " ".join(doc[1].split())
    parser.add_argument("--model", required=True, choices=list(SPACES), help="model family to tune")
    parser.add_argument("--processes", type=cli.parse_int, default=1, help="worker processes on this machine")
    parser.add_argument(
        "--worker-id", type=cli.parse_int, default=0, help="distinct per machine: seeds its samplers"
    )
    parser.add_argument("--study-name", default="", help="override the derived study name ('' = derived)")
    parser.add_argument(
        "--heartbeat",
        type=cli.parse_int,
        default=30,
        help="seconds between heartbeats; a dead worker's trial fails after 4",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """`tune`: join (or create) a model's study and fill it, with one or more local worker processes.

    Run the same command on several machines with a shared ``--optuna-storage postgresql://...`` (give
    each machine its own ``--worker-id``) and they fill one study; the pipeline, run afterwards with
    the same data, label and fold options, finds the study full and uses it.
    """
    from train.config import ERRORS

    return cli.main(build_parser(), argv, fill_study, (*ERRORS, argparse.ArgumentTypeError))


def fill_study(args: argparse.Namespace) -> int:
    """The tune command's work: check the stores, then run the worker processes."""
    import dataclasses
    import multiprocessing
    import os

    from features.data import SNAPSHOT_PREFIXES
    from models.tracking import check_reachable
    from train.config import pipeline_config

    cfg = pipeline_config(args)
    if args.processes < 1:
        raise ValueError(f"--processes must be >= 1, got {args.processes}")
    try:
        # Before any data is read: the storage every trial is written to, and the tracking store only
        # when the candles are a logged snapshot (runs:/...) to download from it.
        if cfg.data.startswith(SNAPSHOT_PREFIXES):
            check_reachable()
        check_storage(cfg.optuna_storage)
        # Threads per fit: the cores of this machine shared by its worker processes (no oversubscription).
        n_jobs = cfg.n_jobs or max(1, (os.cpu_count() or 1) // args.processes)
        cfg = dataclasses.replace(cfg, n_jobs=n_jobs, optuna_storage=storage_url(cfg.optuna_storage))
        study_name = args.study_name or None
        jobs = [
            (cfg, args.model, args.worker_id * 1000 + k, study_name, args.heartbeat, args.log_level)
            for k in range(args.processes)
        ]
        if len(jobs) == 1:
            results = [_worker(jobs[0])]
        else:
            with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
                results = pool.map(_worker, jobs)
    except KeyboardInterrupt:
        log.warning("interrupted: finished trials are kept; rerun the same command to resume")
        return cli.EXIT_INTERRUPTED
    log.info(
        f"study for {args.model}: {max(n for _, n in results)} finished trials "
        f"({len(results)} worker process(es), {cfg.n_jobs} thread(s) each) in {cfg.optuna_storage}"
    )
    return 0


if __name__ == "__main__":
    cli.run(main)
