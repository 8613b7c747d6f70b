"""Triple-barrier labels and uniqueness sample weights (issue 17, item 2): values, causality, gaps, wiring."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from xgboost import XGBClassifier

from evaluation.lookahead_analysis import analyse
from features.candles import segment_ids
from features.dataset import build_dataset
from features.labels import (
    BUY,
    HOLD,
    SELL,
    average_uniqueness,
    barrier_width,
    label_function,
    labels_and_ends,
    make_labels,
    resolve_sample_weights,
    triple_barrier_labels,
)
from models.base import BalancedXGBClassifier
from models.ensemble import WeightedSoftVoting, fit_predict_fold
from tests.helpers import make_candles, tiny_config, write_csv
from train.config import PipelineConfig, parse_args
from train.split import PurgedWalkForward

NAN = np.nan


def _arrays(close, horizon, threshold, vol_window=0):
    labels, t1 = triple_barrier_labels(pd.Series(close, dtype=float), horizon, threshold, vol_window)
    return labels.to_numpy(), t1.to_numpy()


# ------------------------------------------------------------------------------ hand-worked labels


def test_hand_worked_example_fixed_barriers():
    # Barriers at +-10% of each row's close, time barrier 3 bars ahead.
    close = [100, 105, 111, 95, 100, 89, 100, 100, 100]
    labels, t1 = _arrays(close, horizon=3, threshold=0.10)
    # row 0: +5%, +11% -> upper at bar 2            row 1: +5.7%, -9.5%, -4.8% -> time barrier (bar 4)
    # row 2: -14.4% at once -> lower at bar 3       row 3: +5.3%, -6.3%, +5.3% -> time barrier (bar 6)
    # row 4: -11% -> lower at bar 5                 row 5: +12.4% -> upper at bar 6
    # rows 6..8: fewer than 3 bars ahead -> no label
    np.testing.assert_array_equal(labels, [BUY, HOLD, SELL, HOLD, SELL, BUY, NAN, NAN, NAN])
    np.testing.assert_array_equal(t1, [2, 4, 3, 6, 5, 6, NAN, NAN, NAN])


@pytest.mark.parametrize(
    ("close", "label", "end"),
    [
        ([100, 112, 100, 85], BUY, 1),  # upper at bar 1, lower at bar 3: the first one counts
        ([100, 88, 100, 115], SELL, 1),  # lower at bar 1, upper at bar 3
        ([100, 105, 112, 85], BUY, 2),
    ],
)
def test_the_first_barrier_touched_sets_the_label_when_both_are_touched(close, label, end):
    labels, t1 = _arrays(close, horizon=3, threshold=0.10)
    assert labels[0] == label and t1[0] == end
    # the threshold label only sees the end: the same path ends below -10%, or above +10%
    assert make_labels(pd.Series(close, dtype=float), 3, 0.10).iloc[0] != label


def test_touching_is_strict_like_the_threshold_label():
    # 0.25 and these prices are exact binary fractions: +25% and -25% are exactly on the barriers.
    labels, t1 = _arrays([100.0, 125.0, 75.0, 100.0], horizon=2, threshold=0.25)
    assert labels[0] == HOLD and t1[0] == 2


def _reference(close: np.ndarray, horizon: int, threshold: float, window: int):
    """Row-by-row loop of the rule in the docstring."""
    n = len(close)
    labels, ends = np.full(n, np.nan), np.full(n, np.nan)
    log_ret = np.diff(np.log(close))
    for t in range(n - horizon):
        if window:
            if t < window:
                continue
            width = threshold * np.std(log_ret[t - window : t], ddof=1) * math.sqrt(horizon)
        else:
            width = threshold
        labels[t], ends[t] = HOLD, t + horizon
        for j in range(1, horizon + 1):
            r = close[t + j] / close[t] - 1
            if r > width or r < -width:
                labels[t], ends[t] = (BUY if r > width else SELL), t + j
                break
    return labels, ends


@pytest.mark.parametrize(("horizon", "threshold", "window"), [(1, 0.004, 0), (6, 0.01, 0), (5, 1.0, 20)])
def test_matches_a_row_by_row_reference(horizon, threshold, window):
    close = make_candles(600, seed=3)["close"]
    labels, t1 = triple_barrier_labels(close, horizon, threshold, window)
    want_labels, want_t1 = _reference(close.to_numpy(), horizon, threshold, window)
    np.testing.assert_array_equal(labels.to_numpy(), want_labels)
    np.testing.assert_array_equal(t1.to_numpy(), want_t1)
    assert set(np.unique(labels.dropna())) == {SELL, HOLD, BUY}
    assert labels.name == "label" and labels.index.equals(close.index)


# ------------------------------------------------------------------------------ causality and edges


@pytest.mark.parametrize("window", [0, 20])
def test_labels_ending_before_a_cut_ignore_every_candle_after_it(window):
    close = make_candles(400, seed=4)["close"]
    horizon, k = 6, 250
    altered = close.copy()
    altered.iloc[k + 1 :] *= np.exp(np.random.default_rng(0).normal(0, 0.05, len(close) - k - 1))
    before, t1_before = triple_barrier_labels(close, horizon, 1.0 if window else 0.01, window)
    after, t1_after = triple_barrier_labels(altered, horizon, 1.0 if window else 0.01, window)
    keep = slice(0, k - horizon + 1)  # rows whose time barrier is at or before bar k
    pd.testing.assert_series_equal(before.iloc[keep], after.iloc[keep])
    pd.testing.assert_series_equal(t1_before.iloc[keep], t1_after.iloc[keep])
    assert not before.equals(after)  # the alteration does change later labels


def test_the_barrier_width_at_t_uses_nothing_after_t():
    close = make_candles(300, seed=5)["close"]
    full = barrier_width(close, 6, 1.0, 20)
    for t in (25, 120, 298):
        changed = close.copy()
        changed.iloc[t + 1 :] *= 1.3
        pd.testing.assert_series_equal(barrier_width(changed, 6, 1.0, 20).iloc[: t + 1], full.iloc[: t + 1])
        # and a truncated history gives the same width at t
        assert barrier_width(close.iloc[: t + 1], 6, 1.0, 20).iloc[-1] == full.iloc[t]


@pytest.mark.parametrize("horizon", [1, 4])
def test_never_looks_past_the_end_of_the_data(horizon):
    close = make_candles(200, seed=6)["close"]
    labels, t1 = triple_barrier_labels(close, horizon, 1.0, 10)
    assert labels.iloc[-horizon:].isna().all() and t1.iloc[-horizon:].isna().all()
    assert labels.iloc[10:-horizon].notna().all()  # defined from the first bar with a sigma
    assert labels.iloc[:10].isna().all()
    assert t1.max() <= len(close) - 1
    span = t1 - np.arange(len(close))
    assert span.min() >= 1 and span.max() <= horizon


def test_lookahead_analysis_passes_for_triple_barrier_labels():
    candles = make_candles(700, seed=8)
    report = analyse(
        candles,
        "default",
        cuts=15,
        horizon=5,
        threshold=1.0,
        vol_window=20,
        labels=label_function("triple_barrier"),
    )
    assert report.passed, report.to_markdown()


def test_a_label_never_spans_a_gap():
    horizon, hole = 6, 1200
    candles = make_candles(2605, seed=5, freq="4h")
    candles = candles.drop(candles.index[hole : hole + 5])  # 5 bars missing: a gap
    ds = build_dataset(candles, "default", horizon, 0.01, label="triple_barrier")
    ids = segment_ids(candles.index, pd.Timedelta("4h"))
    assert ds.gaps == 1
    np.testing.assert_array_equal(ids[ds.bars], ids[ds.ends])  # each label ends where it started
    before = ds.bars[ds.bars < hole]
    assert before[-1] == hole - 1 - horizon  # the rows whose time barrier would cross it are dropped
    # labels in each stretch are what the stretch alone gives
    alone, _ = triple_barrier_labels(candles["close"].iloc[:hole], horizon, 0.01)
    np.testing.assert_array_equal(ds.y.to_numpy()[: len(before)], alone.iloc[before].to_numpy())


# ------------------------------------------------------------------------------ uniqueness weights


def test_uniqueness_on_a_hand_example():
    # A = bars 0..2 and B = bars 2..4 share bar 2 (concurrency 2 there); C = bar 5 alone.
    # A: (1 + 1 + 1/2) / 3 = 5/6, B likewise, C: 1. Two identical spans: 1/2 each.
    np.testing.assert_allclose(average_uniqueness([0, 2, 5], [2, 4, 5]), [5 / 6, 5 / 6, 1.0])
    np.testing.assert_allclose(average_uniqueness([0, 0], [1, 1]), [0.5, 0.5])
    # D = 0..3 covers E = 1..2: concurrency 1, 2, 2, 1 -> D (1 + .5 + .5 + 1) / 4, E 1/2
    np.testing.assert_allclose(average_uniqueness([0, 1], [3, 2]), [0.75, 0.5])


def test_uniqueness_matches_a_loop():
    rng = np.random.default_rng(1)
    start = np.sort(rng.integers(0, 300, 200))
    end = start + rng.integers(0, 12, 200)
    covers = (start[:, None] <= np.arange(end.max() + 1)) & (np.arange(end.max() + 1) <= end[:, None])
    concurrency = covers.sum(axis=0)
    want = [np.mean(1 / concurrency[s : e + 1]) for s, e in zip(start, end, strict=True)]
    np.testing.assert_allclose(average_uniqueness(start, end), want)


def test_uniqueness_refuses_bad_spans():
    with pytest.raises(ValueError, match="start <= end"):
        average_uniqueness([3], [2])


def test_dataset_weights_by_label_kind():
    candles = make_candles(2600, seed=9)
    barrier = build_dataset(candles, horizon=6, threshold=0.01, label="triple_barrier")
    assert barrier.sample_weights == "uniqueness" and barrier.fit_weights is barrier.weights
    assert barrier.weights.mean() == pytest.approx(1.0) and barrier.weights.std() > 0.05
    # threshold labels: unweighted by default (the fit is what it always was)
    plain = build_dataset(candles, horizon=6, threshold=0.01)
    assert plain.sample_weights == "none" and plain.fit_weights is None
    np.testing.assert_array_equal(plain.weights, 1.0)
    np.testing.assert_array_equal(plain.ends - plain.bars, 6)
    # weighted threshold labels all span horizon + 1 bars: equal weights except at the data's edges
    weighted = build_dataset(candles, horizon=6, threshold=0.01, sample_weights="uniqueness")
    inner = weighted.weights[6:-6]
    np.testing.assert_allclose(inner, inner[0])
    assert weighted.weights[0] > inner[0] and weighted.weights.mean() == pytest.approx(1.0)
    # the same labels either way
    pd.testing.assert_series_equal(weighted.y, plain.y)
    # and the triple-barrier span is the label's own
    labels, t1 = labels_and_ends(candles["close"], 6, 0.01, label="triple_barrier")
    np.testing.assert_array_equal(barrier.ends, t1.to_numpy()[barrier.bars])


def test_unknown_label_or_weights_name_the_valid_values():
    candles = make_candles(300, seed=1)
    with pytest.raises(ValueError, match=r"label must be one of \['threshold', 'triple_barrier'\]"):
        build_dataset(candles, label="barrier", min_rows=10)
    with pytest.raises(ValueError, match=r"sample_weights must be one of \['auto', 'uniqueness', 'none'\]"):
        build_dataset(candles, sample_weights="unique", min_rows=10)
    assert resolve_sample_weights("triple_barrier") == "uniqueness"
    assert resolve_sample_weights("threshold") == "none"
    assert resolve_sample_weights("threshold", "uniqueness") == "uniqueness"


# ------------------------------------------------------------------------------ the weights reach every fit


SEEN: dict[str, list] = {}  # spy name -> the sample weights each of its fits received


class SpyClassifier(ClassifierMixin, BaseEstimator):
    """Predicts class frequencies and records the sample weights of each fit in ``SEEN[name]`` (clone
    deep-copies parameters, so a list parameter would not be shared with the clones)."""

    def __init__(self, name: str = "spy"):
        self.name = name

    def fit(self, X, y, sample_weight=None):
        SEEN[self.name].append(None if sample_weight is None else np.asarray(sample_weight).copy())
        self.classes_ = np.unique(y)
        self.prior_ = np.bincount(y, minlength=len(self.classes_)) / len(y)
        return self

    def predict_proba(self, X):
        return np.tile(self.prior_, (len(X), 1))


def _toy(n=300):
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=n)})
    y = np.arange(n) % 3
    return X, y, rng.uniform(0.2, 2.0, n)


def test_fit_predict_fold_passes_the_training_rows_weights():
    X, y, w = _toy()
    seen = SEEN.setdefault("spy", [])
    seen.clear()
    train, test = np.arange(0, 200), np.arange(210, 300)
    fit_predict_fold(SpyClassifier(), X, y, train, test, np.arange(3), sample_weight=w)
    fit_predict_fold(SpyClassifier(), X, y, train, test, np.arange(3))
    np.testing.assert_array_equal(seen[0], w[train])
    assert seen[1] is None


def test_the_ensemble_weighs_its_out_of_fold_fits_and_its_refit():
    X, y, w = _toy()
    seen = SEEN.setdefault("spy", [])
    seen.clear()
    cv = PurgedWalkForward(n_splits=3, horizon=2)
    WeightedSoftVoting([("spy", SpyClassifier())], cv=cv).fit(X, y, sample_weight=w)
    folds = list(cv.split(X, y))
    assert len(seen) == len(folds) + 1
    for (train, _), got in zip(folds, seen, strict=False):
        np.testing.assert_array_equal(got, w[train])
    np.testing.assert_array_equal(seen[-1], w)  # the final refit on every row


def test_tuning_folds_are_weighted(monkeypatch):
    import optuna

    import train.tune as tune

    X, y, w = _toy()
    seen = SEEN.setdefault("spy", [])
    seen.clear()
    monkeypatch.setattr(tune, "build_model", lambda *a, **k: SpyClassifier())
    cv = PurgedWalkForward(n_splits=3, horizon=2)
    objective = tune.make_objective("lightgbm", X, y, cv, n_jobs=1, sample_weight=w)
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=1)
    assert len(seen) == 3
    for (train, _), got in zip(cv.split(X, y), seen, strict=True):
        np.testing.assert_array_equal(got, w[train])


def test_xgboost_class_weights_multiply_given_sample_weights():
    from sklearn.utils.class_weight import compute_sample_weight

    rng = np.random.default_rng(2)
    X = rng.normal(size=(240, 3))
    y = np.where(X[:, 0] > 0.8, 2, np.where(X[:, 0] < -0.3, 0, 1))
    w = rng.uniform(0.1, 3.0, len(y))
    params = dict(n_estimators=20, max_depth=3, n_jobs=1, random_state=0)
    ours = BalancedXGBClassifier(class_weight="balanced", **params).fit(X, y, sample_weight=w)
    plain = XGBClassifier(**params).fit(X, y, sample_weight=w * compute_sample_weight("balanced", y))
    np.testing.assert_allclose(ours.predict_proba(X), plain.predict_proba(X), rtol=1e-6)
    unweighted = BalancedXGBClassifier(class_weight="balanced", **params).fit(X, y)
    assert not np.allclose(ours.predict_proba(X), unweighted.predict_proba(X))


# ------------------------------------------------------------------------------ configuration


def test_config_validates_and_parses_the_options():
    cfg = parse_args(["--label", "triple_barrier", "--sample-weights", "none", "--vol-window", "50"])
    assert (cfg.label, cfg.sample_weights, cfg.weighting) == ("triple_barrier", "none", "none")
    assert PipelineConfig().label == "threshold" and PipelineConfig().sample_weights == "auto"
    with pytest.raises(ValueError, match=r"label must be one of \['threshold', 'triple_barrier'\]; got"):
        PipelineConfig(label="triple")
    with pytest.raises(ValueError, match=r"sample_weights must be one of .*'uniqueness'"):
        PipelineConfig(sample_weights="yes")


def test_the_label_and_the_weighting_name_the_study():
    def fp(**kw):
        return PipelineConfig(**kw).fingerprint("sha", "lightgbm", 2)

    assert fp() == fp(sample_weights="none")  # threshold studies keep their names
    assert fp(label="triple_barrier") == fp(label="triple_barrier", sample_weights="uniqueness")
    assert len({fp(), fp(sample_weights="uniqueness"), fp(label="triple_barrier"),
                fp(label="triple_barrier", sample_weights="none")}) == 4  # fmt: skip


@pytest.mark.slow
def test_a_pipeline_run_with_triple_barrier_labels(store):
    from train.pipeline import run_pipeline

    data = write_csv(make_candles(2600, seed=3, vol=0.004), store / "c.csv")
    cfg = tiny_config(data, store, "tb-model", label="triple_barrier", horizon=4, threshold=0.006)
    out = run_pipeline(cfg)
    assert out["plan"]["label"] == "triple_barrier" and out["plan"]["sample_weights"] == "uniqueness"
    import mlflow

    run = mlflow.get_run(out["run_id"])
    assert run.data.params["label"] == "triple_barrier" and run.data.params["sample_weights"] == "auto"
    model = mlflow.pyfunc.load_model(f"models:/tb-model/{out['model_version']}")
    meta = model.metadata.metadata
    assert meta["label"] == "triple_barrier" and meta["sample_weights"] == "uniqueness"
    # `evaluate` and `monitor` label candles with the model's own label kind
    from evaluation.scoring import prepare_scoring

    candles = make_candles(2600, seed=3, vol=0.004)
    scoring = prepare_scoring(model, candles)
    want = triple_barrier_labels(candles["close"], 4, 0.006)[0]
    np.testing.assert_array_equal(scoring.labels.to_numpy(), want.to_numpy())
