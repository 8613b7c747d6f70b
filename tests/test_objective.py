"""The ``objective`` option: tuning for after-cost Sharpe (``sharpe``) beside macro-F1 (``macro_f1``).

A ``sharpe`` trial reports, after fold k, the after-cost Sharpe ratio of the decision-policy rule that
``fit_policy`` chooses on the pooled out-of-fold predictions of folds 1..k; its value is that number
after the last fold. The study picks its completed trial with the highest value.
"""

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient

from evaluation.economics import TradingCosts
from evaluation.metrics import macro_f1
from models.base import build_model
from models.ensemble import fit_predict_fold
from tests.helpers import make_flow_signal_candles, tiny_config, write_csv
from train.config import PipelineConfig, parse_args
from train.prepare import prepare
from train.split import PurgedWalkForward
from train.tune import SPACE_VERSION, TuningError, make_objective, run_study, study_name_for

PARAMS = {
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


def _data(n=900, seed=0):
    """Features whose first column predicts the label, and prices that move with the label, so a
    policy acting on the predictions has something to earn."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = np.where(X[:, 0] > 0.5, 2, np.where(X[:, 0] < -0.5, 0, 1))
    # row t's period return is open[t+2] / open[t+1] - 1: let it follow row t's label, plus noise
    step = 0.002 * (y - 1) + 0.004 * rng.standard_normal(n)
    opens = 100.0 * np.exp(np.cumsum(np.concatenate([[0.0, 0.0], step])))
    costs = TradingCosts(opens, np.arange(n), 0.0015, "long_short", "keep")
    return X, y, costs


def test_sharpe_trial_reports_the_pooled_out_of_fold_sharpe_of_the_chosen_rule_after_each_fold():
    X, y, costs = _data()
    cv = PurgedWalkForward(n_splits=3, horizon=2)
    study = optuna.create_study(direction="maximize")
    objective = make_objective("lightgbm", X, y, cv, n_jobs=1, costs=costs, objective="sharpe")
    study.enqueue_trial(PARAMS)
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]

    # the definition, recomputed: fit the folds, pool 1..k, the rule fit_policy chooses, its Sharpe
    model = build_model("lightgbm", PARAMS, n_jobs=1)
    rows, probas, expected, f1 = [], [], [], []
    for tr, te in cv.split(X):
        rows.append(te)
        probas.append(fit_predict_fold(model, X, y, tr, te, np.arange(3)))
        f1.append(macro_f1(y[te], probas[-1].argmax(axis=1)))
        policy, table = costs.fit_policy(np.concatenate(rows), np.vstack(probas))
        expected.append(next(r["sharpe_per_period"] for r in table if r["policy"] == policy.key))

    # one value per fold, so the pruner compares trials fold by fold
    assert [trial.intermediate_values[k] for k in range(3)] == pytest.approx(expected)
    assert trial.user_attrs["running_oof_sharpe"] == pytest.approx(expected)
    assert trial.value == pytest.approx(expected[-1]) and expected[-1] > 0
    # the value is the chosen rule's entry of oof_sharpe: the best rule on the pooled predictions
    sharpes = trial.user_attrs["oof_sharpe"]
    assert trial.user_attrs["oof_policy"] == policy.key
    assert trial.value == pytest.approx(sharpes[policy.key]) == pytest.approx(max(sharpes.values()))
    assert trial.user_attrs["cv_sharpe"] == pytest.approx(trial.value)
    # macro-F1 is recorded whatever the objective
    assert trial.user_attrs["fold_macro_f1"] == pytest.approx(f1)
    assert trial.user_attrs["cv_macro_f1_mean"] == pytest.approx(np.mean(f1))


def test_macro_f1_objective_is_unchanged_and_also_records_the_sharpe():
    X, y, costs = _data()
    cv = PurgedWalkForward(n_splits=3, horizon=2)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(PARAMS)
    study.optimize(make_objective("lightgbm", X, y, cv, n_jobs=1, costs=costs), n_trials=1)
    trial = study.trials[0]
    scores = trial.user_attrs["fold_macro_f1"]
    assert (
        trial.value == pytest.approx(np.mean(scores)) == pytest.approx(trial.user_attrs["cv_macro_f1_mean"])
    )
    assert [trial.intermediate_values[k] for k in range(3)] == pytest.approx(
        [np.mean(scores[: k + 1]) for k in range(3)]
    )
    assert "running_oof_sharpe" not in trial.user_attrs
    assert trial.user_attrs["cv_sharpe"] == pytest.approx(max(trial.user_attrs["oof_sharpe"].values()))


def test_a_sharpe_trial_is_pruned_after_a_fold():
    X, y, costs = _data()
    cv = PurgedWalkForward(n_splits=3, horizon=2)

    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return True

    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    study.enqueue_trial(PARAMS)
    study.optimize(
        make_objective("lightgbm", X, y, cv, n_jobs=1, costs=costs, objective="sharpe"), n_trials=1
    )
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [0]  # stopped after the first fold
    assert len(trial.user_attrs["fold_macro_f1"]) == len(trial.user_attrs["running_oof_sharpe"]) == 1


def test_sharpe_objective_needs_costs_and_a_known_name():
    X, y, _ = _data(n=100)
    cv = PurgedWalkForward(n_splits=2, horizon=2)
    with pytest.raises(ValueError, match="needs the trading costs"):
        make_objective("lightgbm", X, y, cv, objective="sharpe")
    with pytest.raises(ValueError, match=r"\['macro_f1', 'sharpe'\]"):
        make_objective("lightgbm", X, y, cv, objective="f1")


def test_a_study_tuned_for_one_objective_is_not_resumed_for_another(tmp_path):
    X, y, costs = _data()
    cv = PurgedWalkForward(n_splits=2, horizon=2)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    kw = dict(n_trials=1, timeout=None, storage=storage, study_name="s", n_jobs=1, costs=costs)
    study = run_study("lightgbm", X, y, cv, **kw)
    assert study.metric_names == ["cv_macro_f1"]
    with pytest.raises(TuningError, match="maximises cv_macro_f1, not cv_sharpe"):
        run_study("lightgbm", X, y, cv, objective="sharpe", **kw)
    sharpe = run_study("lightgbm", X, y, cv, objective="sharpe", **(kw | {"study_name": "t"}))
    assert sharpe.metric_names == ["cv_sharpe"]


def test_config_validates_the_objective():
    assert PipelineConfig().objective == "macro_f1"
    assert parse_args(["--objective", "sharpe"]).objective == "sharpe"
    with pytest.raises(
        ValueError, match=r"objective must be one of \['macro_f1', 'sharpe'\]; got objective='f1'"
    ):
        PipelineConfig(objective="f1")


def test_studies_with_different_objectives_never_share_a_name():
    base = PipelineConfig()
    names = {
        objective: {
            model: study_name_for(
                model, PipelineConfig(objective=objective).fingerprint("a" * 64, model, SPACE_VERSION)
            )
            for model in base.model_list
        }
        for objective in ("macro_f1", "sharpe")
    }
    for model in base.model_list:
        assert names["macro_f1"][model] != names["sharpe"][model]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Development rows, folds and costs of candles with a planted, tradable signal."""
    tmp = tmp_path_factory.mktemp("planted")
    cfg = tiny_config(
        write_csv(make_flow_signal_candles(3000, seed=11), tmp / "flow.csv"), tmp, "m", horizon=3
    )
    return cfg, prepare(cfg)


@pytest.mark.slow
def test_sharpe_study_picks_the_trial_with_the_best_out_of_fold_sharpe(planted, tmp_path):
    """Same sampler seed and budget (5 trials: TPE's random start-up, no pruning before 5 completed
    trials), so both studies evaluate the same parameter sets; the ``sharpe`` study picks the one with
    the highest out-of-fold after-cost Sharpe, which the ``macro_f1`` study's pick need not have."""
    cfg, data = planted
    X, y = data.dev
    studies = {
        objective: run_study(
            "lightgbm",
            X,
            y,
            data.cv,
            n_trials=5,
            timeout=None,
            storage=f"sqlite:///{tmp_path / 'optuna.db'}",
            study_name=objective,
            seed=cfg.seed,
            n_jobs=1,
            costs=data.trading_costs(cfg),
            objective=objective,
        )
        for objective in ("macro_f1", "sharpe")
    }
    f1, sharpe = studies["macro_f1"], studies["sharpe"]
    assert [t.params for t in f1.trials] == [t.params for t in sharpe.trials]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for s in studies.values() for t in s.trials)
    oof = [t.user_attrs["cv_sharpe"] for t in f1.trials]
    assert [t.value for t in sharpe.trials] == pytest.approx(oof)  # the same folds, the same predictions
    assert sharpe.best_value == pytest.approx(max(oof))
    assert sharpe.best_trial.params == f1.trials[int(np.argmax(oof))].params
    assert sharpe.best_trial.user_attrs["cv_sharpe"] >= f1.best_trial.user_attrs["cv_sharpe"]
    assert sharpe.best_value > 0  # the planted signal trades profitably out of fold
    # and the macro_f1 study still picks by macro-F1
    assert f1.best_value == pytest.approx(max(t.user_attrs["cv_macro_f1_mean"] for t in f1.trials))


@pytest.mark.slow
def test_pipeline_tuned_for_sharpe_says_so(store):
    data = write_csv(make_flow_signal_candles(3000, seed=11), store / "flow.csv")
    from train.pipeline import run_pipeline

    cfg = tiny_config(data, store, "objective-model", horizon=3, objective="sharpe")
    summary = run_pipeline(cfg)
    assert summary["objective"] == "sharpe"
    m = summary["models"]["lightgbm"]
    assert m["cv_objective"] == pytest.approx(m["cv_sharpe"])
    assert 0 <= m["cv_macro_f1_mean"] <= 1  # still macro-F1, read from the trial's user attrs
    client = MlflowClient()
    experiment = client.get_run(summary["run_id"]).info.experiment_id
    child = client.search_runs([experiment], "tags.step = 'tune'")[0]
    assert child.data.tags["objective"] == "sharpe"
    assert child.data.metrics["cv_sharpe"] == pytest.approx(m["cv_sharpe"])
    assert child.data.metrics["cv_macro_f1_mean"] == pytest.approx(m["cv_macro_f1_mean"])
    study = optuna.load_study(study_name=child.data.tags["optuna_study"], storage=cfg.optuna_storage)
    assert study.metric_names == ["cv_sharpe"]
    assert study.user_attrs["objective"].startswith("after-cost Sharpe")
