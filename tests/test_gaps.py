"""Gaps in the candles: one rule for training, serving and the look-ahead check.

More than ``GAP_TOLERANCE_BARS`` missing bars is a gap. No indicator window and no label window spans one:
training drops (and counts) the rows that would, the served model marks the rows after a gap not ready
until the indicators have their history again, and a file whose bar size changes is refused.
"""

import numpy as np
import pandas as pd
import pytest

from evaluation.lookahead_analysis import analyse
from features.candles import GAP_TOLERANCE_BARS, segment_ids
from features.context import feature_function, min_history_bars
from features.data import DataError, load_candles
from features.dataset import build_dataset
from features.indicators import compute_features, warmup_bars
from models.base import build_model
from models.ensemble import WeightedSoftVoting
from models.policy import DecisionPolicy
from models.pyfunc import AFTER_GAP, NOT_READY, InvalidCandles, SignalModel
from tests.helpers import make_candles, write_csv

BAR = pd.Timedelta("4h")
HORIZON = 6


def _holed(n: int, start: int, missing: int, freq: str = "4h", seed: int = 5) -> pd.DataFrame:
    """``n`` candles with ``missing`` consecutive bars removed from position ``start`` on."""
    candles = make_candles(n + missing, seed=seed, freq=freq)
    return candles.drop(candles.index[start : start + missing])


def test_a_single_missing_bar_is_tolerated_more_is_a_gap():
    assert GAP_TOLERANCE_BARS == 1
    one = _holed(100, 50, 1)
    two = _holed(100, 50, 2)
    assert segment_ids(one.index, BAR).max() == 0
    assert segment_ids(two.index, BAR).tolist() == [0] * 50 + [1] * 50


@pytest.mark.parametrize("missing", [5, 180])  # 5 bars, and 30 days of 4h bars
def test_training_rows_never_span_a_gap(missing):
    candles = _holed(2600, 1200, missing)
    ds = build_dataset(candles, "default", HORIZON, 0.005)
    hole_end = candles.index[1200]  # first candle after the hole
    rows = ds.X.index
    # no label window reaches across the hole: the last row before it is HORIZON bars before its end
    before = rows[rows < hole_end]
    assert before[-1] == candles.index[1199 - HORIZON]
    # no indicator window spans it: the first row after it has the full warm-up after the hole
    after = rows[rows >= hole_end]
    assert after[0] == candles.index[1200 + warmup_bars("default")]
    assert ds.gaps == 1 and ds.rows_dropped_at_gaps == HORIZON + warmup_bars("default")
    # the features after the hole are what the stretch after it gives on its own
    pd.testing.assert_frame_equal(ds.X.loc[after], compute_features(candles.iloc[1200:]).loc[after])
    # so the first 1-bar return after a month's hole is not a month's move
    assert abs(ds.X.loc[after[0], "close"]) < 0.05
    # and no label is computed from prices on both sides
    future = candles["close"].shift(-HORIZON).loc[before] / candles["close"].loc[before] - 1
    assert (future.index + HORIZON * BAR <= candles.index[1199]).all()
    assert ds.n_rows == len(candles) - warmup_bars("default") - HORIZON - ds.rows_dropped_at_gaps


def test_the_pipeline_plan_reports_rows_dropped_at_gaps(tmp_path):
    from tests.helpers import tiny_config
    from train.prepare import prepare

    path = write_csv(_holed(2600, 1200, 20, freq="30min"), tmp_path / "holed.csv")
    plan = prepare(tiny_config(path, tmp_path, "gaps")).plan
    assert plan["gaps"] == 1 and plan["rows_dropped_at_gaps"] == HORIZON + warmup_bars("default")


def test_a_file_whose_bar_size_changes_is_refused_naming_the_ranges(tmp_path):
    """A file that switches from 30-minute to hourly bars: `horizon` would mean two durations."""
    half = pd.date_range("2024-01-01", periods=2000, freq="30min", tz="UTC", name="timestamp")
    rest = pd.date_range(half[-1] + pd.Timedelta("1h"), periods=1000, freq="1h", tz="UTC", name="timestamp")
    candles = make_candles(3000, seed=2)
    candles.index = half.append(rest)
    with pytest.raises(DataError, match="Mixed bar sizes") as exc:
        load_candles(write_csv(candles, tmp_path / "mixed.csv"))
    assert "mostly 30min bars" in str(exc.value) and "are 1h apart" in str(exc.value)
    assert str(rest[0].date()) in str(exc.value)
    # mostly hourly with a 30-minute stretch: the shorter spacings are named
    candles = candles.iloc[:2000].copy()
    hourly = pd.date_range(half[499] + pd.Timedelta("1h"), periods=1500, freq="1h", tz="UTC")
    candles.index = half[:500].append(hourly).rename("timestamp")
    with pytest.raises(DataError, match="mostly 1h bars, but 499 spacing"):
        load_candles(write_csv(candles, tmp_path / "mixed2.csv"))


def test_spacings_shorter_than_the_bar_are_refused(tmp_path):
    candles = make_candles(400, seed=2)
    index = candles.index.tolist()
    index[100] = index[99] + pd.Timedelta("10min")  # an off-grid candle
    candles.index = pd.DatetimeIndex(index, name="timestamp")
    with pytest.raises(DataError, match="mostly 30min bars, but 1 spacing.* 01:30:00 UTC and .* 01:40:00"):
        load_candles(write_csv(candles, tmp_path / "odd.csv"))


@pytest.fixture(scope="module")
def model():
    candles = make_candles(900, seed=3, freq="4h")
    X = compute_features(candles).dropna()
    y = np.random.default_rng(0).integers(0, 3, len(X))
    ens = WeightedSoftVoting(
        [("lgbm", build_model("lightgbm", {"n_estimators": 10}, n_jobs=1))], weights=[1.0]
    )
    return SignalModel(ens.fit(X, y), "default", BAR, policy=DecisionPolicy(min_proba=0.34))


def _bot_frame(candles):
    frame = candles.reset_index()
    frame["timestamp"] = frame["timestamp"].dt.tz_localize(None)
    return frame


@pytest.mark.parametrize("missing", [5, 180])
def test_served_rows_after_a_gap_are_not_ready_until_the_warm_up_is_back(model, missing):
    """What a bot coming back from an outage sends: 520 candles with a hole in them."""
    candles = _holed(520, 400, missing, seed=9)
    out = model.predict(None, _bot_frame(candles))
    after = out.iloc[400:]
    need = model.min_history - 1
    assert not after["ready"].iloc[:need].any() and after["ready"].iloc[need:].all()
    assert (after["signal"].iloc[:need] == AFTER_GAP).all() and (
        after["action"].iloc[:need] == AFTER_GAP
    ).all()
    assert (after["position"].iloc[:need] == 0).all() and after[["p_buy"]].iloc[:need].isna().all().all()
    assert (out["signal"].iloc[:need] == NOT_READY).all()  # the window's own start: plain lack of history
    assert out["ready"].iloc[need:400].all()  # rows before the hole are served as usual
    # the rows after the gap get exactly what a window starting after the gap gives
    fresh = model.predict(None, _bot_frame(candles.iloc[400:]))
    np.testing.assert_allclose(after["p_buy"].to_numpy(), fresh["p_buy"].to_numpy(), equal_nan=True)


def test_served_model_refuses_candles_whose_bar_size_changes(model):
    candles = make_candles(300, seed=4, freq="4h")
    hourly = make_candles(40, seed=4, freq="8h", start=str(candles.index[-1] + pd.Timedelta("8h")))
    with pytest.raises(InvalidCandles, match="Mixed bar sizes"):
        model.predict(None, _bot_frame(pd.concat([candles, hourly])))


def test_lookahead_check_passes_on_candles_with_gaps():
    candles = _holed(1500, 700, 12, freq="30min")
    report = analyse(
        candles,
        feature_sets="default",
        cuts=30,
        compute=feature_function(None, pd.Timedelta("30min")),
    )
    assert report.passed, report.to_markdown()
    assert min_history_bars("default") == warmup_bars("default") + 1
