"""The `monitor` step: live performance on matured candles, feature drift, verdict, tags, run and alert.

One tiny model is trained (module fixture) on the first 2,200 candles of a planted-signal series. The
monitor then sees the whole series (a continuation of the same generator: ``ok``), or the same series
with volatility ×4 and a noisier, 10× larger volume after the training window (``drifted``).
"""

from __future__ import annotations

import json
from datetime import datetime

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from evaluation import monitor as mon
from evaluation import monitoring
from evaluation.drift import DriftConfig, DriftReport, feature_drift, psi
from evaluation.metrics import macro_f1
from evaluation.scoring import MIN_SCORED_ROWS, prepare_scoring
from features.labels import make_labels
from tests.helpers import make_flow_signal_candles, throwaway_store, tiny_config, write_csv
from tests.webhook import Hook
from train.pipeline import run_pipeline

MODEL_NAME = "monitor-model"
N_ALL, N_TRAIN, HORIZON = 3200, 2200, 3


def _planted_drift(candles: pd.DataFrame, cut: int, seed: int = 0) -> pd.DataFrame:
    """Candles whose log returns (and wicks) are 4× larger and whose volume is 10× larger and far noisier
    from row ``cut`` on; the rows before are unchanged."""
    out = candles.copy()
    r = np.log(out["close"]).diff().fillna(0.0).to_numpy().copy()
    r[cut:] *= 4.0
    close = out["close"].iloc[0] * np.exp(np.cumsum(r) - r[0])
    open_ = np.concatenate([[out["open"].iloc[0]], close[:-1]])
    up = (out["high"] / np.maximum(out["open"], out["close"])).to_numpy() ** 4
    down = (out["low"] / np.minimum(out["open"], out["close"])).to_numpy() ** 4
    volume = out["volume"].to_numpy().copy()
    noise = np.random.default_rng(seed).standard_normal(len(volume) - cut)
    volume[cut:] *= 10.0 * np.exp(1.5 * noise)
    out["open"], out["close"], out["volume"] = open_, close, volume
    out["high"], out["low"] = np.maximum(open_, close) * up, np.minimum(open_, close) * down
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train (and, if the gate passes, promote) one tiny model; write the candle files the tests use."""
    tmp = tmp_path_factory.mktemp("monitor")
    with throwaway_store(tmp) as (mp, uri):
        candles = make_flow_signal_candles(N_ALL, seed=11)
        train = write_csv(candles.iloc[:N_TRAIN], tmp / "train.csv")
        result = run_pipeline(tiny_config(train, tmp, MODEL_NAME, horizon=HORIZON))
        version = result["model_version"]
        model_uri = f"models:/{MODEL_NAME}/{version}"
        model = mlflow.pyfunc.load_model(model_uri)
        trained_until = pd.Timestamp(model.metadata.metadata["trained_until"], tz="UTC")
        cut = int(np.searchsorted(candles.index, trained_until, side="right"))
        yield {
            "tmp": tmp,
            "candles": candles,
            "version": version,
            "model_uri": model_uri,
            "model": model,
            "cut": cut,
            "matching": write_csv(candles, tmp / "matching.csv"),
            "drifted": write_csv(_planted_drift(candles, cut), tmp / "drifted.csv"),
        }


def _tags(trained) -> dict:
    return MlflowClient().get_model_version(MODEL_NAME, trained["version"]).tags


def _monitor_runs() -> list:
    return mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.step = 'monitor'", output_format="list"
    )


def test_matching_candles_are_ok_exit_0_tag_the_version_and_log_one_run(trained, hook: Hook, capsys):
    before = len(_monitor_runs())
    assert mon.main(["--model-uri", trained["model_uri"], "--data", trained["matching"]]) == 0
    out = capsys.readouterr().out
    assert "verdict OK" in out and "vs holdout" in out

    tags = _tags(trained)
    assert tags["monitor_verdict"] == "ok"
    assert datetime.fromisoformat(tags["last_monitored"]).tzinfo is not None
    runs = _monitor_runs()
    assert len(runs) == before + 1
    run = mlflow.get_run(tags["monitor_run_id"])
    assert run.data.tags["step"] == "monitor" and run.data.tags["monitor_verdict"] == "ok"
    assert run.info.run_name.startswith(f"monitor {MODEL_NAME} v{trained['version']} ")
    assert "ok" in run.data.tags["mlflow.note.content"].lower()
    metrics = run.data.metrics
    for key in (
        "live_macro_f1",
        "live_macro_f1_ci_low",
        "live_macro_f1_ci_high",
        "live_return",
        "live_sharpe",
    ):
        assert key in metrics, key
    assert metrics["live_macro_f1_ci_low"] <= metrics["live_macro_f1"] <= metrics["live_macro_f1_ci_high"]
    assert metrics["rows_scored"] >= MIN_SCORED_ROWS and metrics["share_drifted"] < 0.3
    assert "psi_atr_14" in metrics and "promoted_holdout_macro_f1" in metrics
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    plots = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert "monitor.json" in artifacts
    assert {"plots/monitor_psi.png", "plots/monitor_histograms.png", "plots/monitor_equity.png"} <= plots
    report = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/monitor.json")
    assert report["verdict"] == "ok" and report["live"]["enough"]
    assert hook.requests == []  # no alert when ok


def test_planted_distribution_change_is_drifted_exit_4_and_alerts(trained, hook: Hook, capsys):
    code = mon.main(["--model-uri", trained["model_uri"], "--data", trained["drifted"]])
    assert code == monitoring.EXIT_DRIFTED == 4
    out = capsys.readouterr().out
    assert "verdict DRIFTED" in out and "features drifted" in out
    tags = _tags(trained)
    assert tags["monitor_verdict"] == "drifted"
    run = mlflow.get_run(tags["monitor_run_id"])
    assert run.data.metrics["share_drifted"] >= 0.3
    assert run.data.metrics["psi_atr_14"] > 0.25
    assert len(hook.requests) == 1
    body = json.loads(hook.requests[0]["body"])
    assert body["event"] == "monitor_drifted"
    assert f"{MODEL_NAME} v{trained['version']}" in body["content"]
    assert body["fields"]["run_id"] == tags["monitor_run_id"]


def test_labels_that_have_not_matured_are_never_scored(trained):
    """Candles ending 400 bars after the training cut: the last HORIZON have no label yet; the scored rows
    are exactly the matured ones, and their labels equal those the full series gives them later."""
    candles, cut = trained["candles"], trained["cut"]
    end = cut + 400
    window = candles.iloc[:end]
    scoring = prepare_scoring(trained["model"], window)
    rows = np.flatnonzero(scoring.scored)
    assert rows[0] >= cut and rows[-1] == end - 1 - HORIZON
    assert scoring.labels.iloc[-HORIZON:].isna().all()

    meta = trained["model"].metadata.metadata
    later = make_labels(candles["close"], HORIZON, float(meta["threshold"]), int(meta["vol_window"]))
    np.testing.assert_array_equal(scoring.y, later.to_numpy()[rows].astype(int))
    live = monitoring.live_performance(scoring, window, monitoring.MonitorConfig(n_boot=200))
    calls = scoring.proba.argmax(axis=1)
    assert live["rows_scored"] == len(rows)
    assert live["macro_f1"] == pytest.approx(macro_f1(later.to_numpy()[rows].astype(int), calls))
    assert pd.Timestamp(live["window"][1]) == window.index[end - 1 - HORIZON].tz_localize(None)


def test_too_few_matured_candles_is_not_an_error_and_not_degraded(trained, capsys):
    tmp, cut = trained["tmp"], trained["cut"]
    short = write_csv(trained["candles"].iloc[: cut + 40], tmp / "short.csv")
    assert mon.main(["--model-uri", trained["model_uri"], "--data", short]) in (0, monitoring.EXIT_DRIFTED)
    out = capsys.readouterr().out
    assert f"not enough matured candles yet ({40 - HORIZON}, need {MIN_SCORED_ROWS})" in out
    assert "degraded" not in out.lower()


def test_unknown_model_uri_exits_1_with_a_clear_message_and_tags_nothing(trained, capsys):
    before = len(_monitor_runs())
    tags = _tags(trained)
    assert mon.main(["--model-uri", "models:/no-such-model/1", "--data", trained["matching"]]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no registered model 'no-such-model' with version 1") and "\n" not in err
    assert mon.main(["--model-uri", f"models:/{MODEL_NAME}@nope", "--data", trained["matching"]]) == 1
    assert "alias 'nope'" in capsys.readouterr().err
    assert mon.main(["--model-uri", "runs:/abc/model", "--data", trained["matching"]]) == 1
    assert "is not models:/<name>/<version>" in capsys.readouterr().err
    assert len(_monitor_runs()) == before and _tags(trained) == tags


def test_missing_training_snapshot_exits_1_and_tags_nothing(trained, capsys):
    client = MlflowClient()
    source = client.get_model_version(MODEL_NAME, trained["version"])
    with mlflow.start_run(run_name="no snapshot") as empty:  # a pipeline run that logged no candles
        pass
    tags = dict(source.tags) | {"pipeline_run_id": empty.info.run_id}
    tags = {k: v for k, v in tags.items() if not k.startswith("monitor") and k != "last_monitored"}
    orphan = client.create_model_version(MODEL_NAME, source.source, tags=tags, model_id=source.model_id)
    before = len(_monitor_runs())
    code = mon.main(["--model-uri", f"models:/{MODEL_NAME}/{orphan.version}", "--data", trained["matching"]])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"error: cannot load the training candles of model '{MODEL_NAME}' version {orphan.version}"
    )
    assert "\n" not in err
    after = client.get_model_version(MODEL_NAME, orphan.version).tags
    assert not {"monitor_verdict", "last_monitored", "monitor_run_id"} & set(after)
    assert len(_monitor_runs()) == before


# ------------------------------------------------------------------------------ statistics, no model
def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(5000)
    assert psi(a, rng.standard_normal(5000)) < 0.02
    assert psi(a, rng.standard_normal(5000) * 4) > 0.25
    assert psi(a, a + 10) > 1  # everything in the top bin: finite thanks to the epsilon
    assert np.isfinite(psi(np.ones(100), np.ones(50) * 2))  # a constant feature has one edge


def test_a_feature_drifts_only_when_psi_and_ks_agree():
    """With many rows KS rejects a tiny shift; PSI says it is small, so the feature does not count."""
    rng = np.random.default_rng(1)
    train = pd.DataFrame({"tiny_shift": rng.standard_normal(20000), "wide": rng.standard_normal(20000)})
    recent = pd.DataFrame(
        {"tiny_shift": rng.standard_normal(20000) + 0.08, "wide": rng.standard_normal(20000) * 3}
    )
    report = feature_drift(train, recent, DriftConfig())
    by_name = {f.feature: f for f in report.features}
    assert by_name["tiny_shift"].ks_pvalue < report.ks_alpha_per_feature  # KS alone would flag it
    assert by_name["tiny_shift"].psi < 0.25 and not by_name["tiny_shift"].drifted
    assert by_name["wide"].drifted
    assert report.share_drifted == 0.5 and report.drifted  # 0.5 >= 0.3
    few = feature_drift(train, recent.iloc[:50], DriftConfig())
    assert not few.judged and not few.drifted and "not enough recent candles" in few.note


def _live(f1_ci=(0.50, 0.56), return_ci=(0.01, 0.05), enough=True) -> dict:
    if not enough:
        return {"enough": False, "rows_scored": 10, "note": "not enough matured candles yet (10)"}
    mid = sum(f1_ci) / 2, sum(return_ci) / 2
    return {
        "enough": True,
        "macro_f1": mid[0],
        "macro_f1_ci": list(f1_ci),
        "return": mid[1],
        "return_ci": list(return_ci),
    }


def _drift(drifted: bool) -> DriftReport:
    return DriftReport([], 1000, 1000, 0.5 if drifted else 0.0, drifted, True, 0.01, DriftConfig())


@pytest.mark.parametrize(
    ("live", "drifted", "verdict"),
    [
        (_live(), False, "ok"),
        (_live(f1_ci=(0.40, 0.47)), False, "degraded"),  # upper bound 0.47 < 0.52 - 0.02
        (_live(f1_ci=(0.40, 0.51)), False, "ok"),  # 0.51 >= 0.52 - 0.02: within the tolerance
        (_live(return_ci=(-0.09, -0.01)), False, "degraded"),  # lost money beyond luck
        (_live(return_ci=(-0.09, 0.01)), False, "ok"),
        (_live(f1_ci=(0.30, 0.35)), True, "drifted"),  # drifted wins over degraded
        (_live(enough=False), False, "ok"),  # too few matured candles do not count against it
    ],
)
def test_verdict_rule(live, drifted, verdict):
    promise = {"holdout_macro_f1": 0.52, "baseline_macro_f1": 0.41}
    got, reasons = monitoring.decide(live, _drift(drifted), promise, monitoring.MonitorConfig())
    assert got == verdict
    assert bool(reasons) == (verdict != "ok")


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        mon.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "3 degraded" in text and "4 drifted" in text and "1 error" in text
