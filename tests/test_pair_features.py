"""Features of a second instrument (``pair_data``): names, alignment without look-ahead, the staleness
rule, the served model's extra columns, and one small pipeline run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evaluation.lookahead_analysis import analyse
from features.context import compute_model_features, feature_function, feature_names, min_history_bars
from features.data import DataError
from features.dataset import build_dataset
from features.indicators import FEATURE_NAMES, set_feature_names
from features.labels import make_labels
from features.pair import PAIR_FEATURE_NAMES, PAIR_INPUT_COLUMNS, align_pair, load_pair
from models.base import build_model
from models.ensemble import WeightedSoftVoting
from models.pyfunc import NOT_READY, InvalidCandles, SignalModel, as_model_input, input_schema
from tests.helpers import make_candles, make_regime_candles, write_csv

BAR = pd.Timedelta("30min")


def _pair_frame(n: int = 600, base_seed: int = 7, pair_seed: int = 8) -> pd.DataFrame:
    base = make_candles(n, seed=base_seed)
    return align_pair(base, make_candles(n, seed=pair_seed), BAR)


def test_names_and_count_of_the_pair_columns():
    assert len(PAIR_FEATURE_NAMES) == 7 and all(n.startswith("pair_") for n in PAIR_FEATURE_NAMES)
    assert feature_names("default", pair=True) == list(FEATURE_NAMES) + list(PAIR_FEATURE_NAMES)
    assert feature_names("default") == list(FEATURE_NAMES)
    # After the base set and the context columns, in that order.
    names = feature_names("extended", "2h", pair=True)
    assert names[-7:] == list(PAIR_FEATURE_NAMES) and names[:29] == list(set_feature_names("extended"))
    X = compute_model_features(_pair_frame(), "default", pair=True)
    assert list(X.columns) == feature_names("default", pair=True)
    # The pair warm-up (48 bars) is shorter than the default set's: every row from there on is complete.
    assert X.iloc[min_history_bars("default", pair=True) - 1 :].notna().all().all()
    assert min_history_bars("default", pair=True) == min_history_bars("default")


def test_values_follow_their_definitions():
    frame = _pair_frame()
    X = compute_model_features(frame, "default", pair=True)
    lp, lb = np.log(frame["pair_close"]), np.log(frame["close"])
    np.testing.assert_allclose(X["pair_ret_6"].iloc[100], lp.iloc[100] - lp.iloc[94])
    np.testing.assert_allclose(
        X["pair_rel_strength_6"].iloc[100], (lb.iloc[100] - lb.iloc[94]) - (lp.iloc[100] - lp.iloc[94])
    )
    r_p, r_b = lp.diff().iloc[53:101], lb.diff().iloc[53:101]
    np.testing.assert_allclose(X["pair_corr_48"].iloc[100], np.corrcoef(r_p, r_b)[0, 1], rtol=1e-7)
    v = frame["pair_volume"].iloc[53:101]
    np.testing.assert_allclose(X["pair_volume_rel_48"].iloc[100], np.log1p(v.iloc[-1] / v.median()))


def test_a_row_only_sees_pair_candles_opened_at_or_before_it():
    base = make_candles(120, seed=1)
    # The pair's candles open 10 minutes into each base bar: row t takes the one opened at t - 20min.
    pair = make_candles(121, seed=2, start="2023-12-31 23:40")
    aligned = align_pair(base, pair, BAR)
    np.testing.assert_array_equal(aligned["pair_close"].to_numpy(), pair["close"].iloc[:120].to_numpy())
    # Never a later one: a pair shifted 10 minutes late leaves the first row without a candle.
    late = make_candles(120, seed=2, start="2024-01-01 00:10")
    assert np.isnan(align_pair(base, late, BAR)["pair_close"].iloc[0])
    np.testing.assert_array_equal(
        align_pair(base, late, BAR)["pair_close"].iloc[1:].to_numpy(), late["close"].iloc[:-1].to_numpy()
    )


@pytest.mark.parametrize("t", [60, 200, 377, 598])
def test_perturbing_the_pair_after_t_does_not_change_row_t(t):
    base, pair = make_candles(600, seed=7), make_candles(600, seed=8)
    full = compute_model_features(align_pair(base, pair, BAR), "default", pair=True)
    changed = pair.copy()
    after = changed.index > base.index[t]
    changed.loc[after, ["open", "high", "low", "close"]] *= 1.5
    changed.loc[after, "volume"] *= 10
    perturbed = compute_model_features(align_pair(base, changed, BAR), "default", pair=True)
    pd.testing.assert_frame_equal(perturbed.iloc[: t + 1], full.iloc[: t + 1])
    # ... and the perturbation does reach the later rows (the check could fail).
    if t + 1 < len(base):
        assert not np.allclose(perturbed["pair_ret_1"].iloc[t + 1], full["pair_ret_1"].iloc[t + 1])


def test_lookahead_analysis_truncates_both_instruments_and_catches_a_leak():
    frame = _pair_frame(400)
    compute = feature_function(None, BAR, pair=True)
    report = analyse(frame, ("default",), cuts=25, compute=compute, seed=1)
    assert report.passed
    assert all(report.counts["default"][n].rows_checked > 0 for n in PAIR_FEATURE_NAMES)

    def leaking(candles, feature_set):  # the pair's next return on this row: look-ahead
        out = compute(candles, feature_set)
        out["pair_ret_1"] = out["pair_ret_1"].shift(-1)
        return out

    leaked = analyse(frame, ("default",), cuts=25, compute=leaking, seed=1)
    assert leaked.leaking_columns() == {"default": ["pair_ret_1"]}


def test_one_missing_pair_candle_is_bridged_two_make_the_row_and_its_windows_nan():
    base, pair = make_candles(400, seed=3), make_candles(400, seed=4)
    one = align_pair(base, pair.drop(pair.index[200]), BAR)
    X1 = compute_model_features(one, "default", pair=True)
    assert np.isnan(one["pair_close"].iloc[200])  # the alignment itself never fills
    assert X1["pair_ret_1"].iloc[200] == 0.0 and X1.iloc[60:].notna().all().all()

    two = align_pair(base, pair.drop(pair.index[[200, 201]]), BAR)
    X2 = compute_model_features(two, "default", pair=True)
    assert X2.loc[X2.index[200], list(PAIR_FEATURE_NAMES)].notna().all()  # bridged
    nan_rows = np.flatnonzero(X2[list(PAIR_FEATURE_NAMES)].isna().any(axis=1).to_numpy()[60:]) + 60
    # Stale from 201; the 48-bar windows hold row 201 until row 248 (the 6-bar ones until 207).
    assert nan_rows[0] == 201 and nan_rows[-1] == 201 + 48 and X2["pair_corr_48"].iloc[201:250].isna().all()
    assert X2.iloc[250:].notna().all().all()
    # The base features never notice.
    pd.testing.assert_frame_equal(X2[list(FEATURE_NAMES)], X1[list(FEATURE_NAMES)])


def test_training_drops_the_stale_rows_instead_of_failing():
    base, pair = make_regime_candles(2600, seed=5), make_regime_candles(2600, seed=6)
    frame = align_pair(base, pair.drop(pair.index[1000:1003]), BAR)
    ds = build_dataset(frame, "default", 6, 0.003, pair=True)
    assert list(ds.X.columns) == feature_names("default", pair=True)
    assert ds.X.notna().all().all()
    stamps = set(ds.X.index)
    assert base.index[1001] not in stamps and base.index[1000] in stamps  # 1000 is bridged
    assert ds.rows_dropped_at_gaps == 2 + 48  # rows 1001 .. 1050


def test_pair_data_errors_name_pair_data_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"pair_data .*could not be loaded.*leave it empty"):
        load_pair(str(tmp_path / "nope.csv"), None, BAR)
    hourly = write_csv(make_candles(300, seed=2, freq="1h"), tmp_path / "eth_1h.csv")
    with pytest.raises(DataError, match=r"1h bars but the base data has 30min bars.*same bar size"):
        load_pair(hourly, None, BAR)
    # With a timeframe the pair is resampled like the base data: then the sizes agree.
    assert (
        load_pair(write_csv(make_candles(300, seed=2), tmp_path / "eth.csv"), "1h", pd.Timedelta("1h"))[
            "close"
        ]
        .notna()
        .all()
    )
    with pytest.raises(DataError, match="same bar size"):
        align_pair(make_candles(100), make_candles(100, freq="15min"), BAR)
    with pytest.raises(DataError, match="no candle within the base data's time range"):
        align_pair(make_candles(100), make_candles(100, start="2025-01-01"), BAR)


# --------------------------------------------------------------------------------------------------
# The served model


@pytest.fixture(scope="module")
def served():
    base, pair = make_regime_candles(1500, seed=3), make_regime_candles(1500, seed=9)
    frame = align_pair(base, pair, BAR)
    X = compute_model_features(frame, "default", pair=True)
    y = make_labels(frame["close"], 6, 0.003)
    ok = X.notna().all(axis=1) & y.notna()
    ens = WeightedSoftVoting(
        [("lgbm", build_model("lightgbm", {"n_estimators": 20}, n_jobs=1))], weights=[1.0]
    ).fit(X[ok], y[ok].astype("int64"))
    return SignalModel(ens, "default", BAR, pair="eth_btc.csv"), frame, ens


def test_served_model_reads_the_pair_columns(served):
    model, frame, ens = served
    assert model.feature_names == feature_names("default", pair=True)
    out = model.predict(None, as_model_input(frame))
    X = compute_model_features(frame, "default", pair=True)
    ready = out["ready"].to_numpy()
    np.testing.assert_array_equal(ready, X.notna().all(axis=1).to_numpy())
    np.testing.assert_allclose(
        out.loc[ready, ["p_sell", "p_hold", "p_buy"]].to_numpy(), ens.predict_proba(X[ready])
    )
    # A window of min_history candles gets the full history's signal on its last row.
    n = model.min_history
    window = model.predict(None, as_model_input(frame.iloc[-n:]))
    assert window["ready"].iloc[-1] and window["signal"].iloc[-1] == out["signal"].iloc[-1]
    # NaN where the bot has no pair candle: bridged once, then not ready.
    holes = as_model_input(frame.iloc[-200:])
    holes.loc[holes.index[-3:], list(PAIR_INPUT_COLUMNS)] = np.nan
    marked = model.predict(None, holes)
    assert marked["ready"].iloc[-3] and not marked["ready"].iloc[-2:].any()
    assert (marked["signal"].iloc[-2:] == NOT_READY).all()


def test_missing_pair_columns_are_refused_in_one_line(served):
    model, frame, _ = served
    inputs = as_model_input(frame.iloc[-100:])
    # What MLflow hands predict when the bot sent only the base candles.
    with pytest.raises(InvalidCandles, match=r"Missing column\(s\): pair_open, pair_high") as info:
        model.predict(None, inputs.drop(columns=list(PAIR_INPUT_COLUMNS)))
    assert "\n" not in str(info.value)
    with pytest.raises(InvalidCandles, match=r"Missing column\(s\): pair_volume"):
        model.predict(None, inputs.drop(columns=["pair_volume"]))
    bad = inputs.copy()
    bad["pair_close"] = bad["pair_close"].astype(object)
    bad.loc[bad.index[5], "pair_close"] = "n/a"
    with pytest.raises(InvalidCandles, match="'pair_close'.*not numbers"):
        model.predict(None, bad)
    assert [c.name for c in input_schema(pair=True).inputs][-5:] == list(PAIR_INPUT_COLUMNS)
    assert [c.name for c in input_schema().inputs] == ["timestamp", "open", "high", "low", "close", "volume"]


def test_a_model_pickled_before_pair_features_existed_still_serves():
    candles = make_candles(300, seed=4)
    X = compute_model_features(candles, "default").dropna()
    ens = WeightedSoftVoting(
        [("lgbm", build_model("lightgbm", {"n_estimators": 5}, n_jobs=1))], weights=[1.0]
    ).fit(X, np.random.default_rng(0).integers(0, 3, len(X)))
    model = SignalModel(ens, "default", BAR)
    del model.pair  # what unpickling an older SignalModel gives
    assert model.feature_names == list(FEATURE_NAMES)
    assert model.predict(None, as_model_input(candles))["ready"].sum() == len(X)


# --------------------------------------------------------------------------------------------------
# Configuration and end to end


def test_mlproject_and_config_pass_pair_data():
    import shlex
    from pathlib import Path

    from mlflow.projects._project_spec import load_project

    from train.config import PipelineConfig, parse_args

    project = load_project(str(Path(__file__).resolve().parents[1]))
    for name in ("main", "tune", "lookahead", "walkforward", "retrain"):
        entry = project.get_entry_point(name)
        assert entry.parameters["pair_data"].default == ""
        params = {"pair_data": "eth.csv"} | ({"model": "lightgbm"} if name == "tune" else {})
        argv = shlex.split(entry.compute_command(params, None))
        assert argv[argv.index("--pair-data") + 1] == "eth.csv"
    assert parse_args(["--pair-data", "eth.csv"]).pair_data == "eth.csv" and parse_args([]).pair_data == ""
    # A study with pair features is another study; without, names do not change.
    plain = PipelineConfig().fingerprint("sha", "lightgbm", 1)
    assert PipelineConfig(pair_data="eth.csv").fingerprint("sha", "lightgbm", 1) != plain


@pytest.mark.slow
def test_pipeline_with_pair_data_serves_from_pair_columns(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from tests.helpers import tiny_config
    from train.pipeline import run_pipeline

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "pair")
    mlflow.set_tracking_uri(uri)
    try:
        base, pair = make_regime_candles(2700, seed=11), make_regime_candles(2700, seed=12)
        data = write_csv(base, tmp_path / "btc.csv")
        pair_csv = write_csv(pair.drop(pair.index[1500:1502]), tmp_path / "eth.csv")
        summary = run_pipeline(tiny_config(data, tmp_path, "pair-model", pair_data=pair_csv))
        client = MlflowClient()
        run = client.get_run(summary["run_id"])
        assert run.data.metrics["lookahead_changed_values"] == 0
        version = client.get_model_version("pair-model", summary["model_version"])
        assert version.tags["pair_data"] == pair_csv

        model = mlflow.pyfunc.load_model(f"models:/pair-model/{summary['model_version']}")
        meta = model.metadata.metadata
        names = feature_names("default", pair=True)
        assert meta["feature_names"] == names and meta["pair_data"] == pair_csv
        fitted = model.unwrap_python_model().ensemble.named_estimators_["lightgbm"]
        assert list(fitted.feature_name_) == names
        assert [c.name for c in model.metadata.get_input_schema().inputs][-5:] == list(PAIR_INPUT_COLUMNS)
        frame = align_pair(base, pair, BAR).iloc[-300:]
        out = model.predict(as_model_input(frame))  # through MLflow's schema enforcement
        assert out["ready"].iloc[-1] and out["ready"].sum() >= 300 - meta["min_history_bars"] + 1
        with pytest.raises(Exception, match="pair_open"):
            model.predict(as_model_input(base.iloc[-300:]))
    finally:
        mlflow.set_tracking_uri(None)
