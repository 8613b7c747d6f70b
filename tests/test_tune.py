import numpy as np
import optuna
import pytest

from evaluation.metrics import macro_f1
from models.base import build_model
from models.ensemble import fit_predict_fold
from train.split import PurgedWalkForward
from train.tune import make_objective, run_study


def _data(n=900, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = np.where(X[:, 0] > 0.5, 2, np.where(X[:, 0] < -0.5, 0, 1))
    return X, y


def test_objective_is_mean_fold_macro_f1_and_reports_running_mean():
    X, y = _data()
    cv = PurgedWalkForward(n_splits=3, horizon=2)
    params = {
        "n_estimators": 30,
        "num_leaves": 20,
        "learning_rate": 0.1,
        "max_depth": 5,
        "min_child_samples": 10,
        "min_child_weight": 1e-3,
        "subsample": 1.0,
        "colsample_bytree": 1.0,
        "reg_alpha": 1e-8,
        "reg_lambda": 1e-8,
        "class_weight": None,
    }
    value = make_objective("lightgbm", X, y, cv, n_jobs=1)(optuna.trial.FixedTrial(params))
    model = build_model("lightgbm", params, n_jobs=1)
    folds = [
        macro_f1(y[te], fit_predict_fold(model, X, y, tr, te, np.arange(3)).argmax(axis=1))
        for tr, te in cv.split(X)
    ]
    assert value == pytest.approx(np.mean(folds))

    study = optuna.create_study(direction="maximize")
    study.optimize(make_objective("lightgbm", X, y, cv, n_jobs=1), n_trials=1)
    trial = study.trials[0]
    scores = trial.user_attrs["fold_macro_f1"]
    assert len(scores) == 3
    # the pruner sees the running mean after each fold
    assert [trial.intermediate_values[k] for k in range(3)] == pytest.approx(
        [np.mean(scores[: k + 1]) for k in range(3)]
    )


@pytest.mark.slow
def test_study_resumes_up_to_n_trials(tmp_path):
    X, y = _data()
    cv = PurgedWalkForward(n_splits=2, horizon=2)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = run_study(
        "random_forest", X, y, cv, n_trials=2, timeout=None, storage=storage, study_name="s", n_jobs=1
    )
    assert len(first.trials) == 2
    again = run_study(
        "random_forest", X, y, cv, n_trials=2, timeout=None, storage=storage, study_name="s", n_jobs=1
    )
    assert len(again.trials) == 2  # already complete: nothing rerun
    more = run_study(
        "random_forest", X, y, cv, n_trials=3, timeout=None, storage=storage, study_name="s", n_jobs=1
    )
    assert len(more.trials) == 3
    # the resumed sampler does not replay the first run's draws
    assert more.trials[2].params != more.trials[0].params


def test_pruned_trials_stop_early():
    X, y = _data()
    cv = PurgedWalkForward(n_splits=3, horizon=2)

    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return True

    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    study.optimize(make_objective("lightgbm", X, y, cv, n_jobs=1), n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [0]  # stopped after the first fold


def test_fold_without_a_class_fails_loudly():
    X, y = _data()
    y = y.copy()
    y[:400] = 1  # the first training block has only 'hold'
    cv = PurgedWalkForward(n_splits=3, horizon=2)
    study = optuna.create_study(direction="maximize")
    with pytest.raises(ValueError, match="no example of class"):
        study.optimize(make_objective("xgboost", X, y, cv, n_jobs=1), n_trials=1, catch=())


@pytest.mark.slow
def test_trial_whose_worker_died_before_running_it_is_failed(tmp_path):
    """A worker killed between creating a trial and running it (while the sampler drew its parameters)
    leaves a RUNNING trial with no owner and no heartbeat; Optuna alone would keep it RUNNING for ever.
    Once older than the grace period it is failed (and queued once more, by Optuna's retry callback); a
    younger one (another worker's, still sampling) is left alone."""
    import time

    from train.tune import fail_stale_trials, make_storage

    storage = make_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1, grace_period=3)
    study = optuna.create_study(study_name="s", storage=storage)
    orphan = study.ask()  # created, never run: its worker "died" here
    time.sleep(3.5)  # the orphan is now past the grace period; the next trial is 3 s short of it
    young = study.ask()
    optuna.storages.fail_stale_trials(study)  # Optuna's own: the orphan never beat, so it stays
    assert study.trials[orphan.number].state == optuna.trial.TrialState.RUNNING
    assert fail_stale_trials(study, storage) == [orphan.number]
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    retry = max(states)
    assert states == {
        orphan.number: optuna.trial.TrialState.FAIL,
        young.number: optuna.trial.TrialState.RUNNING,
        retry: optuna.trial.TrialState.WAITING,
    }
    retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(study.trials[retry])
    assert retried == orphan.number
    assert fail_stale_trials(study, storage) == []  # a second look changes nothing


# A worker process: one trial that records its owner (as run_study's objective does), draws a parameter
# and hangs until killed. argv: storage URL, owner ("me" or "elsewhere"), heartbeat, grace period.
HANGING_WORKER = """
import sys, time
import optuna
from train.tune import OWNER, make_storage, record_owner
storage = make_storage(sys.argv[1], heartbeat_interval=int(sys.argv[3]), grace_period=int(sys.argv[4]))
study = optuna.create_study(study_name="s", storage=storage, load_if_exists=True)
def objective(trial):
    record_owner(storage, study, trial)
    if sys.argv[2] == "elsewhere":  # as if on another host: only its heartbeat can tell it died
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name("s"), trial.number
        )
        storage.set_trial_system_attr(trial_id, OWNER, {"host": "another-host", "pid": "1", "pid_start": "x"})
    trial.suggest_float("x", 0.0, 1.0)
    print("running", flush=True)
    time.sleep(600)
study.optimize(objective, n_trials=1)
"""


def _killed_worker(tmp_path, owner: str, heartbeat: int, grace: int):
    """Start a worker, wait until its trial runs, SIGKILL it; the storage and study as a rerun opens them."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from train.tune import make_storage

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", HANGING_WORKER, url, owner, str(heartbeat), str(grace)],
        cwd=repo,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "running"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    storage = make_storage(url, heartbeat_interval=heartbeat, grace_period=grace)
    return storage, optuna.load_study(study_name="s", storage=storage)


def _rerun_retries(study, killed):
    """The next trial a worker runs is the killed one again, with its parameters (Optuna's retry)."""
    study.optimize(lambda trial: trial.suggest_float("x", 0.0, 1.0), n_trials=1)
    done = study.trials[-1]
    assert done.state == optuna.trial.TrialState.COMPLETE
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(done) == killed.number
    assert done.params == killed.params
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.FAIL) == 1


@pytest.mark.slow
def test_killed_worker_on_this_host_is_failed_at_once_and_its_trial_rerun(tmp_path):
    """Its process is gone (pid and start time): failed without waiting for the 60 s grace period."""
    from train.tune import fail_stale_trials

    storage, study = _killed_worker(tmp_path, "me", heartbeat=30, grace=60)
    (killed,) = study.trials
    assert killed.state == optuna.trial.TrialState.RUNNING and "x" in killed.params
    assert fail_stale_trials(study, storage) == [killed.number]
    _rerun_retries(study, killed)


@pytest.mark.slow
def test_killed_worker_elsewhere_is_failed_by_optuna_heartbeat_and_its_trial_rerun(tmp_path):
    """A worker of another host is judged by Optuna's public heartbeat alone: RUNNING within the grace
    period, failed after it by ``optuna.storages.fail_stale_trials`` (which Optuna also runs before each
    trial) and retried by the storage's RetryHeartbeatStaleTrialCallback."""
    import time

    from train.tune import fail_stale_trials

    storage, study = _killed_worker(tmp_path, "elsewhere", heartbeat=1, grace=2)
    (killed,) = study.trials
    assert fail_stale_trials(study, storage) == []  # its heartbeat is fresh: it may be alive
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING
    time.sleep(3)  # past the grace period
    optuna.storages.fail_stale_trials(study)  # the public mechanism alone
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    _rerun_retries(study, killed)
