"""End to end: the pipeline on synthetic candles, against a temporary MLflow store.

A random walk has nothing to learn: its candidate must not reach ``production``. Candles with a planted,
persistent regime are learnable: that candidate must pass the gate, and the registered model must load
as ``models:/<name>@production`` in a fresh process that does not have this repository on its path.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from evaluation.evaluate import main as evaluate_main
from features.data import DataError, candles_sha256, load_candles
from models.predict import main as predict_main
from models.registry import PRODUCTION
from tests.helpers import make_candles, make_regime_candles, mlflow_cli_env, tiny_config, write_csv
from train.config import PipelineConfig
from train.pipeline import main, run_pipeline

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A throwaway tracking store and Optuna storage; artifacts land under tmp_path."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # restored after the test if set meanwhile
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
    mlflow.set_tracking_uri(uri)
    yield tmp_path
    mlflow.set_tracking_uri(None)


def _cfg(data: str, tmp: Path, **kw) -> PipelineConfig:
    return tiny_config(data, tmp, "test-model", **({"n_trials": 3, "models": "lightgbm,random_forest"} | kw))


def _fresh_process_predict(model_uri: str, candles_csv: str, tracking_uri: str, cwd: Path) -> dict:
    """Load the model and predict in a new interpreter whose sys.path lacks this repository."""
    code = textwrap.dedent(f"""
        import json, sys
        import pandas as pd, mlflow
        assert not any(p.rstrip('/') == {str(REPO)!r} for p in sys.path), sys.path
        for mod in ("features", "models", "train"):
            assert mod not in sys.modules
        model = mlflow.pyfunc.load_model({model_uri!r})
        candles = pd.read_csv({candles_csv!r}, parse_dates=["timestamp"])
        candles["timestamp"] = candles["timestamp"].dt.tz_localize(None)
        out = model.predict(candles)
        print(json.dumps({{
            "columns": list(out.columns), "rows": len(out),
            "not_ready": int((~out["ready"]).sum()),
            "first_ready_row": int(out["ready"].to_numpy().argmax()),
            "signals": sorted(out.loc[out["ready"], "signal"].unique().tolist()),
            "unready_signals": sorted(out.loc[~out["ready"], "signal"].unique().tolist()),
            "nan_in_ready": bool(out.loc[out["ready"], ["p_sell", "p_hold", "p_buy"]].isna().any().any()),
            "sum_ok": bool(((out.loc[out["ready"], ["p_sell", "p_hold", "p_buy"]].sum(axis=1) - 1).abs()
                            < 1e-6).all()),
            "metadata": model.metadata.metadata,
        }}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_planted_signal_is_promoted_then_random_walk_is_not(store):
    client = MlflowClient()
    learnable = write_csv(make_regime_candles(3000, seed=11), store / "regime.csv")
    first = run_pipeline(_cfg(learnable, store))
    assert first["gate"]["result"] == "passed", first["gate"]
    assert first["promoted"] and first["model_version"] == "1"
    assert str(client.get_model_version_by_alias("test-model", PRODUCTION).version) == "1"
    assert first["ensemble"]["holdout_macro_f1"] > 0.6

    run = client.get_run(first["run_id"])
    assert run.data.tags["gate"] == "passed" and run.data.tags["model_version"] == "1"
    # every setting is a run param, so runs can be compared side by side in the UI
    assert run.data.params["models"] == "lightgbm,random_forest" and run.data.params["n_trials"] == "3"
    assert set(PipelineConfig.__dataclass_fields__) <= set(run.data.params)
    assert run.data.metrics["holdout_macro_f1"] == pytest.approx(first["ensemble"]["holdout_macro_f1"])
    assert run.data.metrics["baseline_macro_f1"] == pytest.approx(max(first["baselines"].values()))
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    names = sorted(c.data.tags["mlflow.runName"] for c in children)
    assert names == ["ensemble", "tune-lightgbm", "tune-random_forest"]
    for child in children:
        assert "holdout_macro_f1" in child.data.metrics
        if child.data.tags["mlflow.runName"].startswith("tune-"):
            assert "cv_macro_f1_mean" in child.data.metrics
    ensemble_run = next(c for c in children if c.data.tags["mlflow.runName"] == "ensemble")
    artifacts = {a.path for a in client.list_artifacts(ensemble_run.info.run_id)}
    assert {"gate_report.json", "holdout_metrics.json", "backtest.csv", "backtest.json"} <= artifacts
    # one self-contained report per pipeline run, with its plots; the gate report links to it
    assert {"report.html", "plots", "gate_report.json", "config.json", "plan.json", "environment.json"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)
    }
    plots = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {
        "equity.png",
        "confusion_matrix_ensemble.png",
        "reliability.png",
        "feature_importance.png",
        "optuna_history_lightgbm.png",
    } <= plots
    html = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="report.html"))
    page = html.read_text()
    assert "data:image/png;base64," in page and "gain_is_significant" in page and "http://" not in page
    gate_json = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="gate_report.json")
        ).read_text()
    )
    assert gate_json["report"] == f"runs:/{run.info.run_id}/report.html"
    metrics = ensemble_run.data.metrics
    assert {
        "backtest_sharpe",
        "backtest_sortino",
        "backtest_max_drawdown",
        "backtest_turnover",
        "backtest_dsr",
        "buyhold_total_return",
        "buyhold_sharpe",
    } <= set(metrics)
    # the planted regime is tradable: after fees the edge is real, and the deflated Sharpe ratio says so
    assert (
        metrics["backtest_total_return"] > metrics["buyhold_total_return"] and metrics["backtest_dsr"] > 0.95
    )
    assert run.data.metrics["lookahead_changed_values"] == 0
    # the pipeline run carries the backtest figures too, under the same names
    assert {k: run.data.metrics[k] for k in metrics if k.startswith(("backtest_", "buyhold_"))} == {
        k: v for k, v in metrics.items() if k.startswith(("backtest_", "buyhold_"))
    }
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["candles"]
    # the run's artifacts rebuild the exact candles it trained on, whatever happens to the source later
    used, _ = load_candles(learnable)
    original = Path(learnable).read_bytes()
    write_csv(make_candles(3000, seed=99), learnable)  # the source file is overwritten afterwards
    snapshot_uri = f"runs:/{run.info.run_id}/data/candles.parquet"
    assert run.data.tags["data_snapshot"] == snapshot_uri
    rebuilt, rebuilt_info = load_candles(snapshot_uri)
    pd.testing.assert_frame_equal(rebuilt, used)
    assert candles_sha256(rebuilt) == run.data.tags["data_candles_sha256"] == candles_sha256(used)
    assert rebuilt_info.source == snapshot_uri
    Path(learnable).write_bytes(original)  # restore: the model is served and evaluated on it below
    with pytest.raises(DataError, match="Could not download"):
        load_candles(f"runs:/{run.info.run_id}/data/missing.parquet")
    version = client.get_model_version("test-model", "1")
    assert version.tags["gate"] == "passed" and float(version.tags["holdout_macro_f1"]) > 0.6

    served = _fresh_process_predict(
        f"models:/test-model@{PRODUCTION}", learnable, mlflow.get_tracking_uri(), store
    )
    assert served["columns"] == ["timestamp", "signal", "label", "p_sell", "p_hold", "p_buy", "ready"]
    assert served["rows"] == 3000
    assert served["not_ready"] == served["first_ready_row"] == served["metadata"]["min_history_bars"] - 1
    assert set(served["signals"]) <= {"sell", "hold", "buy"} and len(served["signals"]) >= 2
    assert served["unready_signals"] == ["insufficient_history"]
    assert not served["nan_in_ready"] and served["sum_ok"]

    # `evaluate` scores only candles after the model's training window: on the same candles, exactly
    # the pipeline's holdout, so it must reproduce the holdout macro-F1.
    assert evaluate_main(["--model-uri", f"models:/test-model@{PRODUCTION}", "--data", learnable]) == 0
    evaluated = client.search_runs([run.info.experiment_id], "tags.step = 'evaluate'")[0]
    assert evaluated.data.metrics["holdout_macro_f1"] == pytest.approx(first["ensemble"]["holdout_macro_f1"])
    assert evaluated.data.metrics["rows_scored"] == first["plan"]["holdout"]["rows"]
    early = write_csv(make_regime_candles(3000, seed=11).iloc[:2000], store / "early.csv")
    assert evaluate_main(["--model-uri", "models:/test-model/1", "--data", early]) == 1
    assert predict_main(["--data", learnable, "--output", str(store / "signals.parquet")]) == 1  # other name
    assert (
        predict_main(
            [
                "--model-uri",
                "models:/test-model/1",
                "--data",
                learnable,
                "--output",
                str(store / "signals.parquet"),
            ]
        )
        == 0
    )
    signals = pd.read_parquet(store / "signals.parquet")
    assert len(signals) == 3000 and signals["ready"].sum() == 3000 - served["not_ready"]

    # A no-signal candidate, judged against the production version on its own holdout.
    walk = write_csv(make_candles(3000, seed=5, vol=0.004), store / "walk.csv")
    second = run_pipeline(_cfg(walk, store))
    assert second["gate"]["result"] == "failed"
    assert not second["promoted"] and second["model_version"] == "2"
    assert str(client.get_model_version_by_alias("test-model", PRODUCTION).version) == "1"
    assert client.get_model_version("test-model", "2").tags["gate"] == "failed"
    failed = {c["name"] for c in second["gate"]["checks"] if not c["passed"]}
    assert {"beats_best_baseline", "gain_is_significant"} & failed
    champion = next(c for c in second["gate"]["checks"] if c["name"] == "not_worse_than_production")
    assert champion["value"] is not None  # production v1 was re-scored on the random walk's holdout
    assert client.get_run(second["run_id"]).data.tags["gate"] == "failed"
    walk_ensemble = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{second['run_id']}' and tags.step = 'ensemble'"
    )[0]
    # no edge on a random walk: after fees the backtest is not significantly positive
    assert walk_ensemble.data.metrics["backtest_dsr"] < 0.95


def test_dry_run_writes_nothing(store, capsys):
    data = write_csv(make_candles(2600, seed=2, vol=0.004), store / "c.csv")
    assert main(["--data", data, "--dry-run", "true"]) == 0
    out = capsys.readouterr().out
    assert "holdout" in out and "fold 4" in out and "dry run" in out
    assert not (store / "mlflow.db").exists() and not (store / "optuna.db").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--data", "nope.csv"], "nope.csv"),
        (["--models", "lightgbm,catboost"], "catboost"),
        (["--features", "fancy"], "features must be one of"),
        (["--days", "3", "--dry-run", "true"], "usable rows"),
    ],
)
def test_bad_input_fails_loudly_and_registers_nothing(store, capsys, argv, message):
    assert main(argv) == 1
    assert message in capsys.readouterr().err
    assert not (store / "mlflow.db").exists()


def test_wrong_parameter_type_is_refused(store, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--horizon", "six"])
    assert exc.value.code == 2 and "--horizon" in capsys.readouterr().err


def test_unreachable_tracking_server_fails_before_training(store, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    mlflow.set_tracking_uri("http://127.0.0.1:9")
    data = write_csv(make_candles(2600, seed=2, vol=0.004), store / "c.csv")
    assert main(["--data", data, "--n-trials", "1", "--models", "lightgbm"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the MLflow tracking store" in err and "127.0.0.1:9" in err
    assert not (store / "optuna.db").exists()  # nothing was tuned


def test_mlflow_run_smoke(store):
    """`mlflow run . --env-manager local` with tiny parameters, as a user would run it."""
    client = MlflowClient()
    client.create_experiment("smoke", artifact_location=(store / "artifacts").as_uri())
    data = write_csv(make_regime_candles(2600, seed=4), store / "smoke.csv")
    env = mlflow_cli_env()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "run",
        str(REPO),
        "--env-manager",
        "local",
        "--experiment-name",
        "smoke",
        "-P",
        f"data={data}",
        "-P",
        "n_trials=1",
        "-P",
        "models=lightgbm",
        "-P",
        "n_folds=3",
        "-P",
        "model_name=smoke-model",
        "-P",
        f"optuna_storage=sqlite:///{store / 'optuna.db'}",
    ]
    out = subprocess.run(cmd, cwd=store, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "== summary" in out.stdout and "registry  smoke-model v1" in out.stdout
    runs = client.search_runs(
        [client.get_experiment_by_name("smoke").experiment_id], "tags.step = 'pipeline'"
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["model_version"] == "1" and runs[0].data.tags["gate"] in ("passed", "failed")
