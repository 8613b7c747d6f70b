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


def test_trial_whose_worker_died_before_its_first_heartbeat_is_failed(tmp_path):
    """A worker killed between creating a trial and its first heartbeat leaves a RUNNING trial with no
    heartbeat; Optuna alone would keep it RUNNING for ever. Once older than the grace period it is failed
    when a worker next starts a trial; a younger one (another worker's, still sampling) is left alone."""
    import time

    from train.tune import make_storage

    storage = make_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1, grace_period=3)
    study = optuna.create_study(study_name="s", storage=storage)
    orphan = study.ask()  # created, never beaten: its worker "died" here
    time.sleep(3.5)  # the orphan is now past the grace period; the next trial is 3 s short of it
    young = study.ask()
    optuna.storages.fail_stale_trials(study)
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states == {
        orphan.number: optuna.trial.TrialState.FAIL,
        young.number: optuna.trial.TrialState.RUNNING,
    }
