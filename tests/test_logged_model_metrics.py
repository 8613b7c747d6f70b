"""Versions the MLflow UI can compare (issue 18, item 3): each version's LoggedModel carries its holdout
numbers as metrics linked to the holdout dataset, so ``mlflow.search_logged_models`` ranks versions by
after-cost Sharpe without reading tags; a version that passed its gate but was not promoted (production
moved meanwhile) gets the ``challenger`` alias, which only moves forward and leaves the audit alone.

Two tiny pipelines are run once (module fixture) on two planted-flow series, each racing a move of
``production`` made while it was being compared (as ``tests/test_promotion_safety.py`` races the lock).
"""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from models import registry
from models.registry import CHALLENGER, PRODUCTION, history, mark_challenger, promote
from tests.helpers import (
    log_loadable_model,
    make_flow_signal_candles,
    throwaway_store,
    tiny_config,
    write_csv,
)
from train.pipeline import run_pipeline
from train.stages import register as register_stage
from train.stages.assess import Evaluation
from train.stages.register import model_metrics

NAME = "lm-compare"
SHARPE = "backtest_sharpe"  # the after-cost Sharpe ratio of the holdout backtest
ON_MODEL = ("holdout_macro_f1", "backtest_total_return", SHARPE, "backtest_dsr", "backtest_max_drawdown")


def _constant_version(name: str, experiment: str = "elsewhere") -> str:
    """A version of ``name`` that loads (not a pipeline's), logged outside the pipelines' experiment."""
    client = MlflowClient()
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException:
        pass
    exp = mlflow.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else mlflow.create_experiment(experiment)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"version of {name}"):
        uri = log_loadable_model()
    return str(mlflow.register_model(uri, name, tags={"gate": "passed"}).version)


@pytest.fixture(scope="module")
def raced(tmp_path_factory):
    """Two pipeline versions of NAME, each passing its gate while ``production`` moves to another version
    (v1, a constant model) between its comparison and its promotion; production is withdrawn again before
    the second pipeline so that both are compared with no production."""
    tmp = tmp_path_factory.mktemp("logged_model_metrics")
    with throwaway_store(tmp) as (mp, _):
        other = _constant_version(NAME)
        real = register_stage.promote

        def promote_after_a_race(name, version, **kwargs):
            registry.promote(name, other, "moved by someone else while the candidate was compared")
            return real(name, version, **kwargs)

        mp.setattr(register_stage, "promote", promote_after_a_race)
        outs = []
        for seed in (11, 12):
            data = write_csv(make_flow_signal_candles(3000, seed=seed), tmp / f"flow{seed}.csv")
            outs.append(run_pipeline(tiny_config(data, tmp, NAME, horizon=3)))
            if registry.get_production(NAME) is not None:
                registry.withdraw(NAME, "the test clears production for the next pipeline")
        client = MlflowClient()
        versions = [client.get_model_version(NAME, o["model_version"]) for o in outs]
        yield {"other": other, "outs": outs, "versions": versions, "tmp": tmp}


def _ensemble_run(out: dict):
    client = MlflowClient()
    parent = client.get_run(out["run_id"])
    (run,) = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{out['run_id']}' and tags.step = 'ensemble'",
    )
    return client.get_run(run.info.run_id)


def test_search_logged_models_ranks_versions_by_after_cost_sharpe_on_the_holdout(raced):
    outs, versions = raced["outs"], raced["versions"]
    sharpes = [o["backtest"]["sharpe"] for o in outs]
    assert sharpes[0] != sharpes[1], "two versions with the same Sharpe cannot show an order"
    experiment = mlflow.get_experiment_by_name("tests").experiment_id
    # As docs/mlflow-ui.md shows: the gate's decision and the Sharpe ratio, read on the holdout dataset.
    found = mlflow.search_logged_models(
        experiment_ids=[experiment],
        filter_string="metrics.gate_passed >= 0",
        datasets=[{"dataset_name": "holdout"}],
        order_by=[{"field_name": f"metrics.{SHARPE}", "ascending": False, "dataset_name": "holdout"}],
        output_format="list",
    )
    by_sharpe = sorted(versions, key=lambda v: -sharpes[versions.index(v)])
    assert [m.model_id for m in found] == [registry.logged_model_id(v) for v in by_sharpe]
    # and the plain order_by of the issue gives the same order
    plain = mlflow.search_logged_models(
        experiment_ids=[experiment],
        order_by=[{"field_name": f"metrics.{SHARPE}", "ascending": False}],
        output_format="list",
    )
    assert [m.model_id for m in plain] == [registry.logged_model_id(v) for v in by_sharpe]


def test_logged_model_metrics_are_the_holdout_numbers_the_run_logged(raced):
    for out, version in zip(raced["outs"], raced["versions"], strict=True):
        model = mlflow.get_logged_model(registry.logged_model_id(version))
        run = _ensemble_run(out)
        assert model.source_run_id == run.info.run_id
        (holdout,) = [i.dataset for i in run.inputs.dataset_inputs if i.dataset.name == "holdout"]
        linked = {m.key: m for m in model.metrics if m.dataset_name == "holdout"}
        assert set(linked) == {*ON_MODEL, "gate_passed"}
        assert {m.dataset_digest for m in linked.values()} == {holdout.digest}
        for key in ON_MODEL:  # the same numbers as the ensemble run's metrics of the same name
            assert linked[key].value == pytest.approx(run.data.metrics[key], rel=1e-12), key
        assert linked["holdout_macro_f1"].value == pytest.approx(out["ensemble"]["holdout_macro_f1"])
        assert linked[SHARPE].value == pytest.approx(out["backtest"]["sharpe"])
        assert linked["backtest_total_return"].value == pytest.approx(out["backtest"]["total_return"])
        assert linked["backtest_max_drawdown"].value == pytest.approx(out["backtest"]["max_drawdown"])
        assert linked["backtest_dsr"].value == pytest.approx(out["deflated_sharpe"]["dsr"])
        assert linked["gate_passed"].value == (1.0 if out["gate"]["result"] == "passed" else 0.0)
        # the tags a bot reads are still there
        assert version.tags["gate"] == out["gate"]["result"]
        assert float(version.tags["backtest_sharpe"]) == pytest.approx(out["backtest"]["sharpe"], abs=1e-4)


def test_a_passing_version_not_promoted_becomes_the_challenger_and_the_audit_is_unchanged(raced):
    outs, versions, other = raced["outs"], raced["versions"], raced["other"]
    for out in outs:
        assert out["gate"]["result"] == "passed", out["gate"]["checks"]
        assert not out["promoted"] and "moved to v" in out["promotion_refused"]
    client = MlflowClient()
    # the newest not-promoted version holds it; the older one keeps the reason in a tag
    assert str(client.get_model_version_by_alias(NAME, CHALLENGER).version) == str(versions[-1].version)
    assert "after version" in client.get_model_version(NAME, versions[0].version).tags["not_promoted"]
    assert registry.get_production(NAME) is None  # withdrawn by the fixture after the second race
    # the alias is no move of production: the history holds only the races and the withdrawals
    assert [(m.action, m.to_version) for m in history(NAME)] == [
        ("promote", other),
        ("withdraw", ""),
        ("promote", other),
        ("withdraw", ""),
    ]
    assert registry.status(NAME)["unrecorded"] == []


def test_challenger_moves_only_forward_and_is_removed_when_promoted(store):
    client = MlflowClient()
    v1, v2, v3 = (_constant_version("lm-ch") for _ in range(3))
    promote("lm-ch", v1, "first")
    assert mark_challenger("lm-ch", v3, "production moved meanwhile")
    # a pipeline that finishes later with an older version does not move it back
    assert not mark_challenger("lm-ch", v2, "the lock stayed busy")
    assert str(client.get_model_version_by_alias("lm-ch", CHALLENGER).version) == v3
    assert client.get_model_version("lm-ch", v2).tags["not_promoted"] == "the lock stayed busy"
    # production's lifecycle reads past it: no outside move, rollback and status as before
    assert registry.unrecorded_moves("lm-ch", client) == []
    assert registry.status("lm-ch")["production"]["version"] == v1
    promote("lm-ch", v3, "the challenger after all")
    assert CHALLENGER not in client.get_registered_model("lm-ch").aliases
    assert {k: str(v) for k, v in client.get_registered_model("lm-ch").aliases.items()} == {PRODUCTION: v3}
    assert [(m.action, m.to_version) for m in history("lm-ch")] == [("promote", v1), ("promote", v3)]


def test_model_metrics_names_the_gate_decision_as_0_or_1():
    """The six numbers as the LoggedModel gets them (no store): the gate's decision is a number."""

    class Gate:
        passed = False

    class Backtest:
        metrics = {"total_return": 0.1, "sharpe": 1.5, "max_drawdown": -0.2, "n_trades": 3}

    ev = Evaluation({"ensemble": {"macro_f1": 0.4}}, {}, Gate(), None, None, Backtest(), {"dsr": 0.9}, {})
    assert model_metrics(ev) == {
        "holdout_macro_f1": 0.4,
        "backtest_total_return": 0.1,
        "backtest_sharpe": 1.5,
        "backtest_dsr": 0.9,
        "backtest_max_drawdown": -0.2,
        "gate_passed": 0.0,
    }
