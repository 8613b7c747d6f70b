"""Tidy tracking (issue 12): read-only lifecycle commands open no run, moves are named for what they
did, every pipeline run describes itself (note and holdout predictions table), and studies carry the
fingerprint they were named from."""

from __future__ import annotations

import mlflow
import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient
from sklearn.metrics import f1_score

from features.labels import CLASS_NAMES
from models.lifecycle import main as lifecycle_main
from tests.helpers import use_store
from tests.test_lifecycle import _versions


def _all_runs(client: MlflowClient) -> list:
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, max_results=1000)


def test_read_only_lifecycle_commands_open_no_run_and_moves_are_named(tracking_backend, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)  # the default experiment
    client = MlflowClient()
    v1, v2, v3 = _versions(client, "tidy-a", ["passed", "passed", "failed"])
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # which mlflow.set_experiment just set
    before = {r.info.run_id for r in _all_runs(client)}
    for argv in (["status"], ["history"], ["status", "--json", "true"], ["history", "--json", "true"]):
        assert lifecycle_main([*argv, "--model-name", "tidy-a"]) == 0
    assert {r.info.run_id for r in _all_runs(client)} == before  # no run, in any experiment

    assert lifecycle_main(["promote", "--model-name", "tidy-a", "--version", v1, "--reason", "a"]) == 0
    assert lifecycle_main(["promote", "--model-name", "tidy-a", "--version", v2, "--reason", "b"]) == 0
    assert lifecycle_main(["promote", "--model-name", "tidy-a", "--version", v3]) == 1  # failed its gate
    assert lifecycle_main(["rollback", "--model-name", "tidy-a", "--reason", "c"]) == 0
    capsys.readouterr()
    new = sorted(
        (r for r in _all_runs(client) if r.info.run_id not in before), key=lambda r: r.info.start_time
    )
    assert [(r.info.run_name, r.info.status, r.data.tags["step"]) for r in new] == [
        (f"promote v{v1} -> production", "FINISHED", "promote"),
        (f"promote v{v2} -> production", "FINISHED", "promote"),
        (f"refused promote v{v3}", "FAILED", "promote"),
        (f"rollback v{v2} -> v{v1}", "FINISHED", "rollback"),
    ]
    assert "did not pass its gate" in new[2].data.tags["refused"]
    assert {mlflow.get_experiment(r.info.experiment_id).name for r in new} == {"crypto-signals"}


@pytest.fixture(scope="module")
def tiny_run(tiny_promoted, tmp_path_factory):
    """One tiny pipeline run in its own store (conftest's shared ``tiny_promoted``), set for the module."""
    tmp = tmp_path_factory.mktemp("tidy")
    with use_store(tiny_promoted.uri, tmp, tiny_promoted.experiment):
        yield tiny_promoted.config, tiny_promoted.summary, tmp


def test_pipeline_run_describes_itself_and_logs_its_holdout_rows(tiny_run):
    cfg, summary, _ = tiny_run
    client = MlflowClient()
    parent = client.get_run(summary["run_id"])
    note = parent.data.tags["mlflow.note.content"]
    gate = summary["gate"]
    assert f"gate {gate['result']}" in note and f"v{summary['model_version']}" in note
    assert f"{summary['ensemble']['holdout_macro_f1']:.4f}" in note
    assert f"{summary['backtest']['total_return']:+.2%}" in note and "buy-and-hold" in note
    assert ("production" in note) and (("not production" in note) != summary["promoted"])

    (ensemble,) = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.step = 'ensemble'",
    )
    table = client.load_table(parent.info.experiment_id, "holdout_predictions.json", [ensemble.info.run_id])
    assert list(table.columns) == [
        "timestamp",
        "label",
        "p_sell",
        "p_hold",
        "p_buy",
        "predicted",
        "action",
        "position",
    ]
    assert len(table) == summary["plan"]["holdout"]["rows"]
    proba = table[["p_sell", "p_hold", "p_buy"]].to_numpy()
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert (table["predicted"] == np.asarray(CLASS_NAMES, dtype=object)[proba.argmax(axis=1)]).all()
    recomputed = f1_score(table["label"], table["predicted"], labels=list(CLASS_NAMES), average="macro")
    assert recomputed == pytest.approx(ensemble.data.metrics["holdout_macro_f1"], abs=1e-9)
    assert recomputed == pytest.approx(parent.data.metrics["holdout_macro_f1"], abs=1e-9)
    assert set(table["action"]) <= set(CLASS_NAMES)
    assert set(table["position"].dropna()) <= {-1.0, 0.0, 1.0}
    assert table["position"].notna().sum() == summary["backtest"]["n_periods"]


def test_studies_carry_their_fingerprint(tiny_run):
    cfg, summary, _ = tiny_run
    study_name = (
        MlflowClient()
        .search_runs([MlflowClient().get_run(summary["run_id"]).info.experiment_id], "tags.step = 'tune'")[0]
        .data.tags["optuna_study"]
    )
    study = optuna.load_study(study_name=study_name, storage=cfg.optuna_storage)
    attrs = study.user_attrs
    expected = {
        "model",
        "data",
        "data_source",
        "data_start",
        "data_end",
        "data_sha256",
        "features",
        "context_timeframe",
        "label_horizon",
        "label_threshold",
        "label_vol_window",
        "n_folds",
        "holdout_frac",
        "seed",
        "space_version",
        "backtest_mode",
        "on_hold",
        "fee_bps",
        "slippage_bps",
    }
    assert expected <= set(attrs), expected - set(attrs)
    assert attrs["label_horizon"] == 3 and attrs["model"] == "lightgbm" and attrs["seed"] == cfg.seed
    assert attrs["data_start"] < attrs["data_end"] and len(attrs["data_sha256"]) == 64
    assert study.metric_names == ["cv_macro_f1"]
