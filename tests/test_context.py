"""Higher-timeframe context features (features/context.py): alignment, no look-ahead, serving, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evaluation.lookahead_analysis import analyse
from features.context import (
    align_to_base,
    check_context,
    compute_model_features,
    context_names,
    feature_function,
    feature_names,
    min_history_bars,
    resample_context,
)
from features.data import DataError
from features.indicators import FEATURE_NAMES, FEATURE_SETS, compute_features, warmup_bars
from features.labels import make_labels
from models.base import build_model
from models.ensemble import WeightedSoftVoting
from models.pyfunc import NOT_READY, SignalModel, as_model_input
from tests.helpers import make_candles, make_regime_candles

BAR = pd.Timedelta("15min")
CTX = "1h"
M = 4  # 15m candles per 1h bin
NAMES = context_names(CTX)


def hourly_by_hand(candles: pd.DataFrame) -> pd.DataFrame:
    """1h candles from 15m ones by grouping on the hour, independently of features.data._resample."""
    groups = candles.groupby(candles.index.floor("h"))
    hourly = pd.DataFrame(
        {
            "open": groups["open"].first(),
            "high": groups["high"].max(),
            "low": groups["low"].min(),
            "close": groups["close"].last(),
            "volume": groups["volume"].sum(),
        }
    )
    return hourly[groups.size() == M]  # complete hours only (the data here has no gaps)


# --------------------------------------------------------------------------------------------------
# Names and warm-up


def test_names_say_what_the_columns_are():
    assert NAMES == [f"ctx_1h_{n}" for n in FEATURE_NAMES]
    assert context_names("240min") == context_names("4h") == context_names("4 hours")
    assert context_names("4h")[2] == "ctx_4h_rsi_14"
    assert feature_names("default") == list(FEATURE_NAMES)
    assert feature_names("seed15", CTX) == list(FEATURE_NAMES) + NAMES
    assert context_names("") == context_names(None) == []


def test_without_context_nothing_changes():
    candles = make_candles(300, seed=1)
    pd.testing.assert_frame_equal(compute_model_features(candles, "default"), compute_features(candles))
    pd.testing.assert_frame_equal(
        compute_model_features(candles, "seed15", ""), compute_features(candles, "seed15")
    )
    assert min_history_bars("default") == warmup_bars("default") + 1
    assert feature_function(None, None) is compute_features
    # with the bar known, the same gap rule as training and serving; without gaps, the same values
    pd.testing.assert_frame_equal(feature_function(None, BAR)(candles, "default"), compute_features(candles))


def test_extended_adds_its_own_columns_and_the_default_context():
    """extended + context: its 29 base columns, then the 15 default indicators on the coarser bars."""
    from features.context import context_feature_set
    from features.indicators import EXTENDED_NAMES

    candles = make_candles(24 * M * 4, seed=4, freq="15min")
    got = compute_model_features(candles, "extended", CTX)
    assert list(got.columns) == feature_names("extended", CTX) == list(FEATURE_NAMES + EXTENDED_NAMES) + NAMES
    assert context_feature_set("extended") == "default" and context_feature_set("seed15") == "seed15"
    pd.testing.assert_frame_equal(got[NAMES], compute_model_features(candles, "default", CTX)[NAMES])
    pd.testing.assert_frame_equal(got.iloc[:, :29], compute_features(candles, "extended"))
    assert min_history_bars("extended", CTX, BAR) == min_history_bars("default", CTX, BAR)


@pytest.mark.parametrize("feature_set", FEATURE_SETS)
@pytest.mark.parametrize("offset", range(M))
def test_min_history_is_enough_wherever_the_window_starts_and_not_more(feature_set: str, offset: int):
    """(warmup + 2) * m - 1 candles: tight for a window starting one bar after a bin boundary."""
    need = min_history_bars(feature_set, CTX, BAR)
    assert need == (warmup_bars(feature_set) + 2) * M - 1
    candles = make_candles(need + M, seed=2, freq="15min", start="2024-03-01")
    window = candles.iloc[offset : offset + need]
    assert compute_model_features(window, feature_set, CTX).iloc[-1].notna().all()
    shorter = compute_model_features(window.iloc[1:], feature_set, CTX)
    assert shorter.iloc[-1].notna().all() == (offset != 0)  # offset 0: the window starts at 00:15


# --------------------------------------------------------------------------------------------------
# Alignment, checked by hand


def test_row_sees_the_previous_hour_until_its_last_quarter_closes():
    candles = make_candles(24 * M * 6, seed=5, freq="15min", start="2024-01-01")
    got = compute_model_features(candles, "default", CTX)
    hourly = compute_features(hourly_by_hand(candles), "default")
    hourly.columns = NAMES

    # One hour spelled out: 10:00, 10:15, 10:30 still see the 09:00 bar; 10:45 (closing 11:00) sees 10:00.
    day = pd.Timestamp("2024-01-04", tz="UTC")
    for minute, hour in ((0, 9), (15, 9), (30, 9), (45, 10)):
        row = got.loc[day + pd.Timedelta(hours=10, minutes=minute), NAMES]
        expected = hourly.loc[day + pd.Timedelta(hours=hour)]
        np.testing.assert_allclose(row.to_numpy(), expected.to_numpy(), rtol=1e-12, err_msg=f"10:{minute}")

    # Every row: the hour bar that closed at or before the row's own close, i.e. floor(t + 15m) - 1h.
    source = (candles.index + BAR).floor("h") - pd.Timedelta("1h")
    expected = hourly.reindex(source).set_axis(candles.index)
    np.testing.assert_allclose(got[NAMES].to_numpy(), expected.to_numpy(), rtol=1e-12, equal_nan=True)
    # The base columns are untouched and come first.
    pd.testing.assert_frame_equal(got[list(FEATURE_NAMES)], compute_features(candles))
    # The first complete row: hour 49 (the context warm-up) is visible at its 45th minute.
    first = int(np.argmax(got.notna().all(axis=1).to_numpy()))
    assert candles.index[first] == candles.index[0] + warmup_bars("default") * pd.Timedelta("1h") + 3 * BAR


def test_a_partial_first_hour_is_dropped_not_used():
    """Data (or a bot's window) starting at 00:15 has 3 of the 4 candles of its first hour: dropped."""
    full = make_candles(24 * M * 4, seed=6, freq="15min", start="2024-01-01")
    late = full.iloc[1:]
    bins = resample_context(late, CTX, BAR)
    assert bins.index[0] == pd.Timestamp("2024-01-01 01:00", tz="UTC")
    pd.testing.assert_frame_equal(bins, resample_context(full, CTX, BAR).iloc[1:])
    got = compute_model_features(late, "seed15", CTX)
    assert got[NAMES].iloc[: M + 2].isna().all().all()  # nothing before 01:45, when the 01:00 bar closes
    assert got.index[M + 2] == pd.Timestamp("2024-01-01 01:45", tz="UTC")
    assert got["ctx_1h_close"].iloc[M + 2] == full["close"].iloc[7]  # seed15 close: the 01:00 bar's close
    hourly = compute_features(hourly_by_hand(full).iloc[1:], "seed15")
    np.testing.assert_allclose(got.loc["2024-01-03 10:45", NAMES].to_numpy(), hourly.loc["2024-01-03 10:00"])


def test_across_a_tolerated_hole_a_row_sees_the_last_complete_bar_before_it():
    """A single missing candle is tolerated (GAP_TOLERANCE_BARS): the short interior bin is kept (it
    holds real trades) and nothing later is used."""
    candles = make_candles(24 * M * 4, seed=8, freq="15min", start="2024-01-01")
    holed = candles[candles.index != pd.Timestamp("2024-01-03 10:30", tz="UTC")]
    got = compute_model_features(holed, "seed15", CTX)
    bins = resample_context(holed, CTX, BAR)
    assert pd.Timestamp("2024-01-03 10:00", tz="UTC") in bins.index  # 3 candles, kept
    hourly = compute_features(bins, "seed15")
    # 10:15 still sees 09:00; 10:45 closes the 10:00 bin and sees it, 11:00 too.
    for row, hour in (("10:15", "09:00"), ("10:45", "10:00"), ("11:00", "10:00")):
        np.testing.assert_allclose(
            got.loc[f"2024-01-03 {row}", NAMES].to_numpy(), hourly.loc[f"2024-01-03 {hour}"].to_numpy()
        )


def test_after_a_gap_the_context_starts_its_warm_up_again():
    """Two hours missing is a gap: no context (or base) indicator window spans it, so the rows after it
    have no features until the warm-up is complete again, and rows before it are unchanged."""
    candles = make_candles(24 * M * 8, seed=8, freq="15min", start="2024-01-01")
    gap = (candles.index >= "2024-01-03 10:30") & (candles.index < "2024-01-03 12:30")
    holed = candles[~gap]
    got = compute_model_features(holed, "seed15", CTX)
    before = holed.index < "2024-01-03 10:30"
    pd.testing.assert_frame_equal(got[before], compute_model_features(holed[before], "seed15", CTX))
    after = holed[~before]
    pd.testing.assert_frame_equal(got[~before], compute_model_features(after, "seed15", CTX))
    warm = min_history_bars("seed15", CTX, BAR) - 1
    assert got[~before].iloc[: warm - M].isna().any(axis=1).all()
    assert got[~before].iloc[warm:].notna().all().all()


# --------------------------------------------------------------------------------------------------
# No look-ahead: changing or removing candles after t changes nothing at or before t


# Bin starts, middles and ends, around the context warm-up (first complete row ~199) and later.
_CUTS = (0, 3, 50, 196, 198, 199, 200, 202, 203, 250, 401, 598)


@pytest.fixture(scope="module")
def lookahead_runs() -> dict[tuple[str, int], tuple[pd.DataFrame, pd.DataFrame]]:
    base = make_candles(900, seed=7, freq="15min")
    other = make_candles(900, seed=1234, vol=0.03, freq="15min")
    runs = {}
    for cut in _CUTS:
        changed = base.copy()
        # Different path, price level and volume after the cut, so any peek ahead changes the value.
        changed.iloc[cut + 1 :] = other.iloc[cut + 1 :].to_numpy() * np.array([1.7, 1.7, 1.7, 1.7, 5.0])
        for fs in FEATURE_SETS:
            runs[(fs, cut)] = (
                compute_model_features(base, fs, CTX),
                compute_model_features(changed, fs, CTX, bar=BAR),
            )
    return runs


@pytest.mark.parametrize("feature_set", FEATURE_SETS)
@pytest.mark.parametrize("name", NAMES)
def test_no_lookahead_in_any_context_feature(lookahead_runs, feature_set: str, name: str) -> None:
    for cut in _CUTS:
        before, after = lookahead_runs[(feature_set, cut)]
        # Exact equality, NaN positions included: the computation for rows <= cut must be identical.
        np.testing.assert_array_equal(
            before[name].iloc[: cut + 1].to_numpy(), after[name].iloc[: cut + 1].to_numpy(), err_msg=f"{cut}"
        )
        # The perturbation must be visible later (from the first bar closing after the cut on), or the
        # check above proves nothing.
        tail_b, tail_a = before[name].iloc[cut + 2 * M :], after[name].iloc[cut + 2 * M :]
        assert not np.allclose(tail_b.to_numpy(), tail_a.to_numpy(), equal_nan=True), cut


@pytest.mark.slow
@pytest.mark.parametrize(
    ("bar", "ctx", "start"), [("15min", "1h", "2024-01-01"), ("30min", "4h", "2024-01-01 01:30")]
)
def test_lookahead_analysis_passes_with_context(bar: str, ctx: str, start: str):
    """Truncation at 60 cuts (the analysis' own choice, incl. the first complete context row)."""
    candles = make_candles(1800, seed=9, freq=bar, start=start)
    report = analyse(candles, cuts=60, compute=feature_function(ctx, pd.Timedelta(bar)))
    assert report.passed, report.to_markdown()
    first = int(np.argmax(compute_model_features(candles, "default", ctx).notna().all(axis=1).to_numpy()))
    assert first > warmup_bars("default") and first in report.cut_positions
    for fs in FEATURE_SETS:
        assert list(report.counts[fs]) == feature_names(fs, ctx)
        assert all(
            c.rows_checked == report.rows_checked and c.changed == 0 for c in report.counts[fs].values()
        )


def misaligned(early_by: pd.Timedelta):
    """Context features made visible ``early_by`` before the bar is complete (a planted leak)."""

    def compute(candles: pd.DataFrame, feature_set: str) -> pd.DataFrame:
        bins = resample_context(candles, CTX, BAR)
        values = compute_features(bins, feature_set).set_axis(NAMES, axis=1)
        available_at = bins.index + pd.Timedelta(CTX) - BAR - early_by
        return pd.concat(
            [compute_features(candles, feature_set), align_to_base(values, available_at, candles.index)],
            axis=1,
        )

    return compute


@pytest.mark.slow
@pytest.mark.parametrize("early_by", [pd.Timedelta(CTX) - BAR, BAR], ids=["at_open", "one_bar_early"])
def test_a_leaking_alignment_is_caught(early_by: pd.Timedelta):
    candles = make_candles(1200, seed=10, freq="15min")
    report = analyse(candles, feature_sets="default", cuts=40, compute=misaligned(early_by))
    assert not report.passed
    leaking = report.leaking_columns()
    assert leaking == {"default": NAMES}  # every context column, and no base column
    for f in report.findings:  # the truncated history lacks the bin the full history already showed
        cut, row = candles.index.get_loc(f.cut), candles.index.get_loc(f.row)
        assert cut - row < M and (row + 1) % M != 0
    # The real alignment passes on the same data and cuts.
    assert analyse(candles, feature_sets="default", cuts=40, compute=feature_function(CTX, BAR)).passed


# --------------------------------------------------------------------------------------------------
# Bad context timeframes


@pytest.mark.parametrize(
    ("ctx", "message"),
    [
        ("50min", r"'50min' \(50min\) is not a whole multiple of the candles' 15min bars"),
        ("15min", r"'15min' \(15min\) is not coarser than the candles' 15min bars"),
        ("5min", r"'5min' \(5min\) is not coarser than the candles' 15min bars"),
        ("1h", None),
        ("2M", "Ambiguous timeframe"),
        ("abc", "Invalid timeframe 'abc'"),
        ("1W", "no fixed length"),
    ],
)
def test_bad_context_timeframes_are_refused_with_the_fix(ctx: str, message: str | None):
    candles = make_candles(200, seed=1, freq="15min")
    if message is None:
        assert check_context(ctx, BAR) == M
        return
    with pytest.raises(DataError, match=message) as err:
        compute_model_features(candles, "default", ctx)
    assert "context_timeframe" in str(err.value)
    if "bars" in message:
        assert "e.g. 30min or 2h" in str(err.value) and "leave context_timeframe empty" in str(err.value)


def test_bad_context_is_refused_by_the_config_the_model_and_the_commands(tmp_path, capsys):
    from evaluation import lookahead
    from tests.helpers import write_csv
    from train.config import PipelineConfig
    from train.pipeline import main

    with pytest.raises(ValueError, match="context_timeframe: Invalid timeframe '7x'"):
        PipelineConfig(context_timeframe="7x")
    assert PipelineConfig(context_timeframe="4h").context_timeframe == "4h"
    with pytest.raises(DataError, match="not a whole multiple"):
        SignalModel(None, "default", pd.Timedelta("30min"), context_timeframe="45min")
    csv = write_csv(make_candles(2600, seed=2, vol=0.004), tmp_path / "c.csv")  # 30-minute candles
    assert main(["--data", csv, "--context-timeframe", "45min", "--dry-run", "true"]) == 1
    err = capsys.readouterr().err
    assert "'45min' (45min) is not a whole multiple of the candles' 30min bars" in err
    assert lookahead.main(["--data", csv, "--context-timeframe", "30min", "--cuts", "2"]) == 1
    assert "not coarser than the candles' 30min bars" in capsys.readouterr().err


def test_study_fingerprint_separates_feature_sets_but_not_spellings():
    from train.config import PipelineConfig

    plain, four, minutes, hourly = (
        PipelineConfig(context_timeframe=c).fingerprint("sha", "lightgbm", 1)
        for c in ("", "4h", "240min", "1h")
    )
    assert len({plain, four, hourly}) == 3 and four == minutes


# --------------------------------------------------------------------------------------------------
# The served model


@pytest.fixture(scope="module")
def served():
    """A model trained on context features of candles with a planted, learnable regime."""
    candles = make_regime_candles(1800, seed=3, freq="15min")
    X = compute_model_features(candles, "default", CTX)
    y = make_labels(candles["close"], 6, 0.003)
    ok = X.notna().all(axis=1) & y.notna()
    ens = WeightedSoftVoting(
        [("lgbm", build_model("lightgbm", {"n_estimators": 20}, n_jobs=1))], weights=[1.0]
    ).fit(X[ok], y[ok].astype("int64"))
    return SignalModel(ens, "default", BAR, context_timeframe=CTX), candles, ens


def test_model_feeds_the_ensemble_the_training_columns(served):
    model, candles, ens = served
    assert model.feature_names == list(FEATURE_NAMES) + NAMES
    assert model.min_history == min_history_bars("default", CTX, BAR) == 203
    out = model.predict(None, as_model_input(candles))
    X = compute_model_features(candles, "default", CTX)
    ready = out["ready"].to_numpy()
    np.testing.assert_array_equal(ready, X.notna().all(axis=1).to_numpy())
    # Rows whose 15 base features exist but whose context does not yet are not ready: marked, not guessed.
    assert compute_features(candles).iloc[warmup_bars("default") :].notna().all().all()
    assert not ready[: min_history_bars("default", CTX, BAR) - M].any()
    proba = out[["p_sell", "p_hold", "p_buy"]].to_numpy()
    assert (out.loc[~ready, "signal"] == NOT_READY).all() and np.isnan(proba[~ready]).all()
    np.testing.assert_allclose(proba[ready], ens.predict_proba(X[ready]))


def test_a_min_history_window_gives_the_full_history_signal(served):
    """What a bot does each cycle: send the last ``min_history`` candles and read the last row.

    Windows end at each of the last 24 rows, so they start at every phase of the hour. Context bins and
    their alignment are identical to training: the window-based context columns match the full history
    exactly. The recursive ones (EMA, MACD, Wilder RSI/ATR/DI/ADX) start from a shorter history, as the
    base ones do, so they only approach it; the signals are the same.
    """
    model, candles, _ = served
    full = model.predict(None, as_model_input(candles))
    full_x = compute_model_features(candles, "default", CTX)
    exact = [f"ctx_1h_{n}" for n in ("close", "volume", "bb_position", "volume_ratio", "donchian_high_20",
                                     "donchian_low_20", "channel_position")]  # fmt: skip
    n = model.min_history
    for end in range(len(candles) - 24, len(candles)):
        window = candles.iloc[end - n + 1 : end + 1]
        out = model.predict(None, as_model_input(window))
        assert out["ready"].iloc[-1], end
        assert out["signal"].iloc[-1] == full["signal"].iloc[end], end
        last = compute_model_features(window, "default", CTX).iloc[-1]
        np.testing.assert_allclose(last[exact], full_x[exact].iloc[end], rtol=1e-9, err_msg=str(end))
    # One candle fewer, starting one bar after an hour boundary: the last row lacks context history.
    start = next(i for i in range(len(candles) - n, len(candles)) if candles.index[i].minute == 15)
    short = model.predict(None, as_model_input(candles.iloc[start : start + n - 1]))
    assert not short["ready"].iloc[-1] and short["signal"].iloc[-1] == NOT_READY


def test_a_model_pickled_before_context_existed_still_serves():
    candles = make_candles(300, seed=4)
    X = compute_features(candles).dropna()
    ens = WeightedSoftVoting(
        [("lgbm", build_model("lightgbm", {"n_estimators": 5}, n_jobs=1))], weights=[1.0]
    )
    ens.fit(X, np.random.default_rng(0).integers(0, 3, len(X)))
    model = SignalModel(ens, "default", pd.Timedelta("30min"))
    del model.context_timeframe  # what unpickling an older SignalModel gives
    assert model.feature_names == list(FEATURE_NAMES) and model.min_history == warmup_bars("default") + 1
    out = model.predict(None, as_model_input(candles))
    assert out["ready"].sum() == len(X)


# --------------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow
def test_pipeline_with_context_logs_a_model_with_ctx_features(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from tests.helpers import tiny_config, write_csv
    from train.pipeline import run_pipeline

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "context")
    mlflow.set_tracking_uri(uri)
    try:
        candles = make_regime_candles(2700, seed=11, freq="15min")
        data = write_csv(candles, tmp_path / "regime15.csv")
        summary = run_pipeline(tiny_config(data, tmp_path, "ctx-model", context_timeframe="60min"))
        client = MlflowClient()
        run = client.get_run(summary["run_id"])
        config = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/config.json")
        assert config["context_timeframe"] == "60min"
        assert run.data.metrics["lookahead_changed_values"] == 0
        version = client.get_model_version("ctx-model", summary["model_version"])
        assert version.tags["context_timeframe"] == "1h"

        model = mlflow.pyfunc.load_model(f"models:/ctx-model/{summary['model_version']}")
        meta = model.metadata.metadata
        assert meta["feature_names"] == list(FEATURE_NAMES) + NAMES
        assert meta["context_timeframe"] == "1h" and meta["min_history_bars"] == 203
        signal_model = model.unwrap_python_model()
        assert signal_model.feature_names == meta["feature_names"]
        fitted = signal_model.ensemble.named_estimators_["lightgbm"]
        assert list(fitted.feature_name_) == meta["feature_names"]
        out = model.predict(as_model_input(candles.iloc[-300:]))
        assert out["ready"].iloc[-1] and out["ready"].sum() >= 300 - 203 + 1
        assert summary["plan"]["rows_after_features_and_labels"] == len(candles) - 199 - 6
    finally:
        mlflow.set_tracking_uri(None)


def test_mlproject_passes_context_timeframe_to_pipeline_tune_and_lookahead():
    import shlex
    from pathlib import Path

    from mlflow.projects._project_spec import load_project

    from train.config import parse_args

    project = load_project(str(Path(__file__).resolve().parents[1]))
    for name in ("main", "tune", "lookahead"):
        entry = project.get_entry_point(name)
        assert entry.parameters["context_timeframe"].default == ""
        params = {"context_timeframe": "4h"} | ({"model": "lightgbm"} if name == "tune" else {})
        argv = shlex.split(entry.compute_command(params, None))
        assert argv[argv.index("--context-timeframe") + 1] == "4h"
    argv = shlex.split(project.get_entry_point("main").compute_command({"context_timeframe": "4h"}, None))
    assert parse_args(argv[3:]).context_timeframe == "4h"
    assert parse_args([]).context_timeframe == ""
