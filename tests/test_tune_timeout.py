"""``timeout`` bounds a model's tuning: Optuna checks it only between trials, so a slow trial used to run
to its end however long past the limit (552 s against ``timeout=20``); the objective now also checks it
between folds and cuts the trial in flight (pruned, ``cut_by_timeout``, never the best trial)."""

import time
from types import SimpleNamespace

import mlflow
import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient

import train.tune
from models import tracking
from tests.helpers import tiny_config
from train.split import PurgedWalkForward
from train.tune import TuningError, describe_trials, run_study, trial_counts

pytestmark = pytest.mark.slow  # each test waits out real timeouts (3-5 s)

FOLD_SECONDS = 1.5
N_FOLDS = 5


def _data(n=900, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = np.where(X[:, 0] > 0.5, 2, np.where(X[:, 0] < -0.5, 0, 1))
    return X, y


@pytest.fixture
def slow_folds(monkeypatch):
    """Fold fits take FOLD_SECONDS each, except the first ``fast`` ones (set on the returned object)."""
    fit = train.tune.fit_predict_fold
    state = SimpleNamespace(fast=0, calls=0)

    def slow(*args, **kwargs):
        state.calls += 1
        if state.calls > state.fast:
            time.sleep(FOLD_SECONDS)
        return fit(*args, **kwargs)

    monkeypatch.setattr(train.tune, "fit_predict_fold", slow)
    return state


def test_timeout_cuts_the_trial_in_flight_after_its_fold(tmp_path, slow_folds):
    slow_folds.fast = N_FOLDS  # the first trial completes at once, every later fold is slow
    X, y = _data()
    timeout = 4.0
    start = time.monotonic()
    study = run_study(
        "lightgbm",
        X,
        y,
        PurgedWalkForward(n_splits=N_FOLDS, horizon=2),
        n_trials=20,
        timeout=timeout,
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        study_name="s",
        n_jobs=1,
    )
    elapsed = time.monotonic() - start
    first, cut = study.trials
    # Tuning ends within one fold fit of the limit (before: the second trial ran all five slow folds,
    # ~8 s); measured from the first trial's start, the setup of the storage aside.
    assert (cut.datetime_complete - first.datetime_start).total_seconds() <= timeout + FOLD_SECONDS + 0.5
    assert elapsed <= timeout + FOLD_SECONDS + 3.0
    assert first.state == optuna.trial.TrialState.COMPLETE
    assert cut.state == optuna.trial.TrialState.PRUNED and cut.user_attrs["cut_by_timeout"] is True
    assert 1 <= len(cut.user_attrs["fold_macro_f1"]) < N_FOLDS  # its partial scores, kept for the record
    assert study.best_trial.number == first.number  # a partial score is never the best
    counts = trial_counts(study.trials)
    assert counts == {
        "finished": 2,
        "complete": 1,
        "pruned": 1,
        "cut_by_timeout": 1,
        "failed": 0,
        "running": 0,
    }
    assert describe_trials(counts, 20, timeout) == (
        "20 trials requested, 2 finished within timeout 4 s (1 cut short by the timeout after some folds)"
    )


def test_no_trial_completed_within_the_timeout_is_an_error_saying_why(tmp_path, slow_folds):
    X, y = _data()
    start = time.monotonic()
    with pytest.raises(TuningError, match=r"timeout of 2 s cut the first after 2 of 5 folds"):
        run_study(
            "lightgbm",
            X,
            y,
            PurgedWalkForward(n_splits=N_FOLDS, horizon=2),
            n_trials=3,
            timeout=2.0,
            storage=f"sqlite:///{tmp_path / 'optuna.db'}",
            study_name="s",
            n_jobs=1,
        )
    assert time.monotonic() - start <= 2.0 + FOLD_SECONDS + 3.0


def test_pipeline_tune_run_says_the_timeout_cut_n_trials_short(tmp_path, monkeypatch, slow_folds):
    """The tune child run logs how many of the requested trials finished within the timeout and how many
    were cut short; ``tracking.tuning_notes`` (the pipeline summary's ``trials`` line) reports it, and
    the pipeline run is tagged with it: that model depends on the machine's speed."""
    from train.pipeline import tune_models
    from train.stages.timing import Stages

    slow_folds.fast = 3
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        mlflow.set_experiment("timeout")
        X, y = _data()
        data = SimpleNamespace(
            info=SimpleNamespace(
                sha256="0" * 64, source="synthetic", start="2024-01-01", end="2024-02-01", bar="30min"
            ),
            dev=(X, y),
            cv=PurgedWalkForward(n_splits=3, horizon=2),
            trading_costs=lambda cfg: None,
            dev_weights=None,  # unweighted rows (threshold labels)
        )
        cfg = tiny_config("unused.csv", tmp_path, "timeout-model", n_trials=12, timeout=2.5)
        with mlflow.start_run() as parent:
            tuned = tune_models(cfg, data, Stages(), 1)["lightgbm"]
        run = MlflowClient().get_run(tuned.run_id)
        assert tuned.n_trials == run.data.metrics["n_trials_finished"] == 2
        assert run.data.metrics["n_trials_cut_by_timeout"] == 1
        assert run.data.params["n_trials_requested"] == "12" and run.data.params["timeout"] == "2.5"
        note = "12 trials requested, 2 finished within timeout 2.5 s (1 cut short by the timeout after some"
        note += " folds)"
        assert run.data.tags["trials"] == note
        assert tracking.tuning_notes(parent.info.run_id) == {"lightgbm": note}
        tags = MlflowClient().get_run(parent.info.run_id).data.tags
        assert tags["tuning_cut_by_timeout"] == f"lightgbm: {note}"
    finally:
        mlflow.set_tracking_uri(None)
