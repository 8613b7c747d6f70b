"""Informed baselines (evaluation/baselines.py): they take the easy, predictable parts for free, are fitted
on development rows only and use only past candles."""

import numpy as np
import pytest

from evaluation.baselines import informed_baselines, trailing_threshold, volatility_features
from evaluation.economics import directional_edge
from evaluation.metrics import baseline_predictions, macro_f1
from features.dataset import build_dataset
from tests.helpers import make_candles, make_regime_candles, make_volatility_regime_candles
from train.split import holdout_split

HORIZON, THRESHOLD = 6, 0.005
NAMES = ("volatility", "momentum", "reversal")


def _prepare(candles, vol_window=0):
    ds = build_dataset(candles, "default", HORIZON, THRESHOLD, vol_window)
    split = holdout_split(ds.n_rows, HORIZON)
    return ds, split, ds.y.to_numpy()


def _fit(candles, ds, split, y, vol_window=0, seed=0):
    return informed_baselines(
        candles, ds.bars, y, split.dev, split.holdout, HORIZON, THRESHOLD, vol_window, seed=seed
    )


def _scores(candles, seed=0):
    """Holdout macro-F1 of the informed baselines and of the stratified baseline."""
    ds, split, y = _prepare(candles)
    out = _fit(candles, ds, split, y, seed=seed)
    y_hold = y[split.holdout]
    stratified = baseline_predictions(y[split.dev], len(y_hold), seed)["stratified"].argmax(axis=1)
    scores = {k: macro_f1(y_hold, b["pred"]) for k, b in out.items()}
    return scores, macro_f1(y_hold, stratified), out, y_hold


@pytest.fixture(scope="module")
def volatility_regimes():
    return make_volatility_regime_candles(5000, seed=13)


@pytest.fixture(scope="module")
def trend_regimes():
    return make_regime_candles(5000, seed=11)


def test_volatility_baseline_captures_the_predictable_hold_move_part(volatility_regimes):
    scores, stratified, out, y_hold = _scores(volatility_regimes)
    assert scores["volatility"] > stratified + 0.08  # about 0.49 vs 0.34
    # ... without knowing the direction: on rows that moved, its buy/sell calls are no better than
    # the base rates (what the gate's directional check must see through).
    edge = directional_edge(y_hold, out["volatility"]["pred"], block=10 * HORIZON, n_boot=300)
    assert edge.n_called_moves > 100
    assert edge.p_positive < 0.95 and edge.precision < edge.base_rate + 0.05


def test_volatility_baseline_is_near_stratified_on_a_random_walk():
    # vol 0.3% per bar: the 6-bar move is ~0.7%, so labels are roughly 1/4 sell, 1/2 hold, 1/4 buy.
    scores, stratified, _, y_hold = _scores(make_candles(5000, seed=7, vol=0.003))
    assert 0.35 < np.mean(y_hold == 1) < 0.65
    assert abs(scores["volatility"] - stratified) < 0.06
    assert scores["volatility"] < 0.40


def test_momentum_beats_stratified_and_reversal_on_trending_regimes(trend_regimes):
    scores, stratified, out, _ = _scores(trend_regimes)
    assert scores["momentum"] > stratified + 0.2  # about 0.79 vs 0.34
    assert scores["reversal"] < scores["momentum"] - 0.2
    assert out["momentum"]["fitted"]["threshold_scale"] > 0


def test_baseline_outputs_have_the_expected_shape(trend_regimes):
    ds, split, y = _prepare(trend_regimes)
    out = _fit(trend_regimes, ds, split, y)
    assert set(out) == set(NAMES)
    for b in out.values():
        assert b["pred"].shape == (len(split.holdout),) and set(np.unique(b["pred"])) <= {0, 1, 2}
        assert b["proba"].shape == (len(split.holdout), 3)
        assert np.allclose(b["proba"].sum(axis=1), 1.0) and (b["proba"] >= 0).all()


def _assert_same(a: dict, b: dict):
    for name in NAMES:
        assert np.array_equal(a[name]["pred"], b[name]["pred"]), name
        assert np.allclose(a[name]["proba"], b[name]["proba"], rtol=0, atol=0), name
        assert a[name]["fitted"] == b[name]["fitted"], name


@pytest.mark.parametrize("vol_window", [0, 48])
def test_baselines_read_development_labels_only(volatility_regimes, vol_window):
    candles = volatility_regimes
    ds, split, y = _prepare(candles, vol_window)
    reference = _fit(candles, ds, split, y, vol_window)

    # Every label outside the development rows (the purge gap and the holdout) replaced.
    outside = np.setdiff1d(np.arange(len(y)), split.dev)
    assert len(outside) > len(split.holdout)  # the gap is included
    changed = y.copy()
    changed[outside] = (changed[outside] + 1) % 3
    _assert_same(reference, _fit(candles, ds, split, changed, vol_window))

    # Not vacuous: the development labels do matter.
    shuffled = y.copy()
    shuffled[split.dev] = np.random.default_rng(0).permutation(y[split.dev])
    other = _fit(candles, ds, split, shuffled, vol_window)
    assert any(not np.array_equal(reference[k]["pred"], other[k]["pred"]) for k in NAMES) or any(
        not np.allclose(reference[k]["proba"], other[k]["proba"]) for k in NAMES
    )


def _scramble_after(candles, t, seed=0):
    """The same candles up to position t; every later bar's prices multiplied by random factors."""
    out = candles.copy()
    rng = np.random.default_rng(seed)
    n_after = len(out) - t - 1
    factor = np.exp(np.cumsum(0.02 * rng.standard_normal(n_after)))
    for col in ("open", "high", "low", "close"):
        out.iloc[t + 1 :, out.columns.get_loc(col)] *= factor
    out.iloc[t + 1 :, out.columns.get_loc("volume")] *= 3.0
    return out


def test_volatility_features_are_causal(volatility_regimes):
    candles = volatility_regimes.iloc[:1500]
    for t in (100, 700, 1400):
        original = volatility_features(candles, HORIZON)
        scrambled = volatility_features(_scramble_after(candles, t), HORIZON)
        assert original.iloc[: t + 1].equals(scrambled.iloc[: t + 1]), t
        assert not np.allclose(original.iloc[t + 2 :], scrambled.iloc[t + 2 :]), t  # not vacuous


def test_trailing_threshold_is_causal(volatility_regimes):
    close = volatility_regimes["close"].iloc[:1500]
    t = 800
    scrambled = _scramble_after(volatility_regimes.iloc[:1500], t)["close"]
    a = trailing_threshold(close, HORIZON, THRESHOLD, 48)
    b = trailing_threshold(scrambled, HORIZON, THRESHOLD, 48)
    assert a.iloc[: t + 1].equals(b.iloc[: t + 1])
    assert not np.allclose(a.iloc[t + 2 :], b.iloc[t + 2 :])
    assert (trailing_threshold(close, HORIZON, THRESHOLD, 0) == THRESHOLD).all()


@pytest.mark.parametrize("vol_window", [0, 48])
def test_baseline_predictions_do_not_see_later_candles(volatility_regimes, vol_window):
    candles = volatility_regimes
    ds, split, y = _prepare(candles, vol_window)
    k = len(split.holdout) // 2
    t = int(ds.bars[split.holdout[k]])  # a candle in the middle of the holdout
    reference = _fit(candles, ds, split, y, vol_window)
    later_changed = _fit(_scramble_after(candles, t), ds, split, y, vol_window)
    for name in NAMES:
        assert np.array_equal(reference[name]["pred"][: k + 1], later_changed[name]["pred"][: k + 1]), name
        assert np.array_equal(reference[name]["proba"][: k + 1], later_changed[name]["proba"][: k + 1]), name
    # The later predictions do react to the changed candles.
    assert any(
        not np.array_equal(reference[n]["pred"][k + 1 :], later_changed[n]["pred"][k + 1 :]) for n in NAMES
    )
