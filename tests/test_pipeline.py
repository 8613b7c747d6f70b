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
from evaluation.metrics import macro_f1
from features.data import DataError, candles_sha256, load_candles
from features.labels import make_labels
from models.policy import DecisionPolicy
from models.predict import main as predict_main
from models.pyfunc import as_model_input
from models.registry import PRODUCTION
from tests.helpers import (
    SERVED_COLUMNS,
    make_candles,
    make_flow_signal_candles,
    make_regime_candles,
    make_volatility_regime_candles,
    mlflow_cli_env,
    tiny_config,
    write_csv,
)
from train.config import PipelineConfig
from train.pipeline import main, run_pipeline

REPO = Path(__file__).resolve().parents[1]


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


@pytest.mark.slow
def test_planted_signal_is_promoted_then_random_walk_is_not(store):
    client = MlflowClient()
    # A directional signal that order flow (volume) reveals one bar ahead and prices alone do not: it
    # beats the momentum / reversal / volatility baselines and earns money after costs.
    learnable = write_csv(make_flow_signal_candles(3000, seed=11), store / "flow.csv")
    first = run_pipeline(_cfg(learnable, store, horizon=3))
    assert first["gate"]["result"] == "passed", first["gate"]
    assert first["promoted"] and first["model_version"] == "1"
    assert str(client.get_model_version_by_alias("test-model", PRODUCTION).version) == "1"
    assert first["ensemble"]["holdout_macro_f1"] > 0.45
    assert {"volatility", "momentum", "reversal", "majority", "stratified"} <= set(first["baselines"])
    assert [c["name"] for c in first["gate"]["checks"]] == [
        "macro_f1_floor",
        "macro_f1_vs_baselines",
        "directional_edge",
        "timing_skill",
        "beats_flat_after_costs",
        "beats_baselines_traded",
        "beats_buy_and_hold",
        "deflated_sharpe",
        "not_worse_than_production",
    ]
    gate = first["gate"]
    assert gate["looks"] == 1 and gate["alpha"] == pytest.approx(0.05) and gate["block"] >= 1
    # the informed baselines were traded by the same rules, and the strategy beat each of them
    assert set(first["baseline_backtests"]) == {"volatility", "momentum", "reversal"}
    # the decision policy's holdout backtest made money after costs; the deflated Sharpe ratio is that
    # of the chosen strategy out of fold, where it was chosen, counting every strategy tried there:
    # 3 finished trials in each of 2 studies x the 28 policy rules' effective number x 2 ensemble members
    # x 1 look
    dsr = first["deflated_sharpe"]
    assert first["backtest"]["total_return"] > 0 and dsr["measured"] and dsr["sample"] == "out-of-fold"
    assert 1 <= dsr["effective_rules"] <= 28
    assert dsr["n_trials"] == round(6 * dsr["effective_rules"] * 2)
    assert dsr["counted"].startswith("6 trials x")
    assert dsr["T"] == first["policy_oof"]["n_periods"]
    assert dsr["sharpe_per_period"] == pytest.approx(first["policy_oof"]["sharpe_per_period"])
    assert dsr["sr0"] >= dsr["sr_null_mean"] >= 0.0
    # The rule chosen on the fold models' out-of-fold probabilities means the same on the refitted model:
    # on these stationary candles it trades about as often per 1,000 bars on the holdout (tolerance: a
    # factor of 2; bench/gate_error_rates.py records the spread over 110 runs).
    oof_rate = first["policy_oof"]["n_trades"] / first["policy_oof"]["n_periods"]
    holdout_rate = first["backtest"]["n_trades"] / first["backtest"]["n_periods"]
    assert 0.5 <= holdout_rate / oof_rate <= 2.0, (oof_rate, holdout_rate)

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
    assert "data:image/png;base64," in page and "timing_skill" in page and "http://" not in page
    assert "This holdout has been looked at 1 time" in page and "(information)" in page
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
    assert version.tags["gate"] == "passed" and float(version.tags["holdout_macro_f1"]) > 0.45
    assert json.loads(version.tags["policy"]) == first["policy"]
    assert float(version.tags["backtest_dsr"]) > 0.95

    served = _fresh_process_predict(
        f"models:/test-model@{PRODUCTION}", learnable, mlflow.get_tracking_uri(), store
    )
    assert served["columns"] == SERVED_COLUMNS
    assert served["metadata"]["policy"] == first["policy"]
    # the served model acts through the logged policy exactly as the gate's backtest traded it: its
    # actions on the holdout rows, turned into positions from flat, are the backtest's positions
    out = mlflow.pyfunc.load_model(f"models:/test-model@{PRODUCTION}").predict(
        as_model_input(load_candles(learnable)[0])
    )
    first_row, last_row = (pd.Timestamp(t) for t in served["metadata"]["holdout"])
    actions = out.loc[out["timestamp"].between(first_row, last_row), "action"]
    codes = actions.map({"sell": 0, "hold": 1, "buy": 2}).to_numpy()
    positions = DecisionPolicy.from_dict(served["metadata"]["policy"]).positions_from_actions(codes)
    backtest_csv = mlflow.artifacts.download_artifacts(
        run_id=ensemble_run.info.run_id, artifact_path="backtest.csv"
    )
    traded = pd.read_csv(backtest_csv)["position"].to_numpy()
    assert len(traded) >= len(positions) - 2 and (positions[: len(traded)] == traded).all()
    assert set(actions) <= {"sell", "hold", "buy"} and (actions != "hold").any()
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
    # ... and the pipeline's baselines (fitted on the same development rows) and its policy's backtest
    for name, f1 in first["baselines"].items():
        assert evaluated.data.metrics[f"baseline_{name}_macro_f1"] == pytest.approx(f1), name
    assert evaluated.data.metrics["backtest_total_return"] == pytest.approx(first["backtest"]["total_return"])
    early = write_csv(make_flow_signal_candles(3000, seed=11).iloc[:2000], store / "early.csv")
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
    second = run_pipeline(_cfg(walk, store, horizon=3))
    assert second["gate"]["result"] == "failed"
    assert not second["promoted"] and second["model_version"] == "2"
    assert str(client.get_model_version_by_alias("test-model", PRODUCTION).version) == "1"
    assert client.get_model_version("test-model", "2").tags["gate"] == "failed"
    failed = {c["name"] for c in second["gate"]["checks"] if c["blocking"] and not c["passed"]}
    assert {"timing_skill", "beats_flat_after_costs", "deflated_sharpe"} & failed
    # production v1 was re-scored on the random walk's holdout (same timestamps as its own), all but the
    # first `horizon` rows of which lie after its training window plus its horizon
    assert second["champion"]["version"] == "1" and second["champion"]["comparable"]
    assert second["champion"]["rows"] == second["plan"]["holdout"]["rows"] - 3
    assert second["champion"]["champion_macro_f1"] is not None
    assert client.get_run(second["run_id"]).data.tags["gate"] == "failed"
    walk_ensemble = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{second['run_id']}' and tags.step = 'ensemble'"
    )[0]
    # no edge on a random walk: after fees the backtest is not significantly positive
    assert walk_ensemble.data.metrics["backtest_dsr"] < 0.95


@pytest.mark.slow
def test_timing_hold_to_calm_markets_is_not_promoted(store):
    """Volatility regimes with i.i.d. direction: `hold` is predictable, direction is not. The old gate
    passed such a model (macro-F1 far above majority and stratified); it has no tradable edge."""
    client = MlflowClient()
    data = write_csv(make_volatility_regime_candles(4000, seed=3), store / "vol.csv")
    out = run_pipeline(_cfg(data, store, models="lightgbm"))
    assert out["gate"]["result"] == "failed" and not out["promoted"]
    assert client.get_registered_model("test-model").aliases == {}
    failed = {c["name"] for c in out["gate"]["checks"] if c["blocking"] and not c["passed"]}
    assert {"timing_skill", "beats_flat_after_costs"} & failed, out["gate"]["checks"]
    # it does beat the trivial baselines by far, but the baseline that sees only volatility comes close
    assert out["ensemble"]["holdout_macro_f1"] > out["baselines"]["stratified"] + 0.1
    assert out["baselines"]["volatility"] > out["ensemble"]["holdout_macro_f1"] - 0.03


@pytest.mark.slow
def test_steady_drift_without_timing_skill_is_not_promoted(store):
    """A market that drifts up, i.i.d. returns: whatever the model holds, its timing is luck. Buy-and-hold
    (and any policy that ends up mostly long) makes money; the gate asks whether the timing did.

    One model's timing check is a test at the 5% level: on i.i.d. returns one model in twenty passes it
    by luck (this one did with space version 3: p = 0.028), and then the deflated Sharpe ratio, which
    counts every rule and trial tried, keeps it out. That the timing check refuses an always-long policy
    on drift is tested exactly in test_gate/test_nulls; how often the gate promotes no-edge models, in
    bench/gate_error_rates.py."""
    client = MlflowClient()
    frame = make_candles(4000, seed=8, vol=0.004, drift=0.0006)
    data = write_csv(frame, store / "drift.csv")
    out = run_pipeline(_cfg(data, store, models="lightgbm", horizon=3))
    assert out["buyhold"]["total_return"] > 0.5  # the holdout rose a lot
    assert not out["promoted"] and client.get_registered_model("test-model").aliases == {}
    checks = {c["name"]: c for c in out["gate"]["checks"]}
    timing = checks["timing_skill"]
    assert timing["blocking"] and "shifted in time" in timing["detail"]
    assert timing["passed"] == (timing["value"] <= timing["threshold"])
    refused = [n for n in ("timing_skill", "deflated_sharpe") if not checks[n]["passed"]]
    assert refused and all(checks[n]["blocking"] for n in refused)


@pytest.mark.slow
def test_a_rerun_on_the_same_holdout_counts_as_another_look(store):
    """Scoring the same holdout again (another seed, hoping for a pass) is one more test of the same rows:
    the look count grows, every test's level is divided by it, and the deflated Sharpe ratio counts it."""
    client = MlflowClient()
    data = write_csv(make_flow_signal_candles(3000, seed=12), store / "flow.csv")
    first = run_pipeline(_cfg(data, store, horizon=3, models="lightgbm", n_trials=2))
    second = run_pipeline(_cfg(data, store, horizon=3, models="lightgbm", n_trials=2, seed=7))
    assert (first["gate"]["looks"], second["gate"]["looks"]) == (1, 2)
    assert second["gate"]["alpha"] == pytest.approx(first["gate"]["alpha"] / 2)
    for check in second["gate"]["checks"]:
        if check["name"] in ("timing_skill", "beats_flat_after_costs", "beats_baselines_traded"):
            assert check["threshold"] == pytest.approx(0.025), check
    for run, looks in ((first, 1), (second, 2)):  # 2 trials x the rules' effective number x 1 member x looks
        dsr = run["deflated_sharpe"]
        assert dsr["looks"] == looks and dsr["n_trials"] == round(2 * dsr["effective_rules"] * looks)
    assert second["deflated_sharpe"]["counted"].endswith("x 2 runs on this data")
    ensemble = client.search_runs(
        [client.get_run(second["run_id"]).info.experiment_id],
        f"tags.mlflow.parentRunId = '{second['run_id']}' and tags.step = 'ensemble'",
    )[0]
    assert ensemble.data.metrics["holdout_looks"] == 2
    assert ensemble.data.tags["holdout_start"] == first["plan"]["holdout"]["time"][0].replace(" ", "T")
    # Other candles (another source) are another holdout: one look.
    other = write_csv(make_flow_signal_candles(3000, seed=13), store / "other.csv")
    third = run_pipeline(_cfg(other, store, horizon=3, models="lightgbm", n_trials=2))
    assert third["gate"]["looks"] == 1


@pytest.mark.slow
def test_champion_is_scored_only_on_rows_it_never_trained_on(store):
    """Production v1 trained on candles that reach into the next candidate's holdout (which is larger):
    only the holdout rows after v1's trained_until plus its horizon may score it; on the rest it was fit."""
    data = write_csv(make_flow_signal_candles(3000, seed=21), store / "flow.csv")
    first = run_pipeline(_cfg(data, store, horizon=3, models="lightgbm", n_trials=2))
    assert first["promoted"], first["gate"]
    meta = mlflow.pyfunc.load_model(f"models:/test-model@{PRODUCTION}").metadata.metadata
    second = run_pipeline(_cfg(data, store, horizon=3, models="lightgbm", n_trials=2, holdout_frac=0.35))
    champion = second["champion"]
    assert champion["version"] == "1" and champion["comparable"]
    candles = load_candles(data)[0]
    holdout = pd.date_range(*(pd.Timestamp(t) for t in second["plan"]["holdout"]["time"]), freq="30min")
    unseen = holdout.tz_localize(None) > pd.Timestamp(meta["trained_until"]) + 3 * pd.Timedelta("30min")
    assert 100 <= unseen.sum() < len(holdout) - 300  # v1 trained on a large part of this holdout
    assert champion["rows"] == unseen.sum()
    # and its score is exactly its macro-F1 on those rows
    out = mlflow.pyfunc.load_model("models:/test-model/1").predict(as_model_input(candles))
    labels = make_labels(candles["close"], 3, 0.005).dropna()
    scored = out.set_index("timestamp").loc[holdout.tz_localize(None)[unseen]]
    y = labels.loc[holdout[unseen]].to_numpy().astype(int)
    assert champion["champion_macro_f1"] == pytest.approx(macro_f1(y, scored["label"].to_numpy()))


@pytest.mark.no_store_file
def test_dry_run_writes_nothing(store, capsys):
    data = write_csv(make_candles(2600, seed=2, vol=0.004), store / "c.csv")
    assert main(["--data", data, "--dry-run", "true"]) == 0
    out = capsys.readouterr().out
    assert "holdout" in out and "fold 4" in out and "dry run" in out
    assert not (store / "mlflow.db").exists() and not (store / "optuna.db").exists()


@pytest.mark.no_store_file
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


@pytest.mark.slow
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
