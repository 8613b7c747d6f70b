"""Meta-labeling (AFML ch. 3.6, option ``primary``): a primary side known at each row, meta-labels that
say whether acting on it pays, probabilities masked to the side exactly, and bets sized against 1/2."""

import math

import numpy as np
import pandas as pd
import pytest

from evaluation.economics import fit_policy
from evaluation.lookahead_analysis import analyse
from features.context import compute_model_features, feature_function, feature_names, min_history_bars
from features.dataset import build_dataset
from features.indicators import FEATURE_NAMES
from features.labels import BUY, HOLD, SELL, label_function, meta_labels
from features.primary import PRIMARY_COLUMN, primary_side
from models.base import build_model
from models.ensemble import WeightedSoftVoting
from models.policy import SIZE_STEP, DecisionPolicy, mask_to_side
from tests.helpers import make_candles, make_flow_signal_candles, tiny_config, write_csv
from train.split import PurgedWalkForward

NAN = np.nan


def _binary_size_by_hand(p: float) -> float:
    """2 Phi(z) - 1 with z = (p - 1/2) / sqrt(p (1 - p)), in steps of 0.25 (math.erf, not scipy)."""
    if p >= 1.0:
        return 1.0
    z = (p - 0.5) / math.sqrt(p * (1 - p))
    size = max(0.0, 2 * (0.5 * (1 + math.erf(z / math.sqrt(2)))) - 1)
    return round(size / 0.25) * 0.25


def test_meta_labels_by_hand():
    labels = pd.Series([BUY, SELL, HOLD, BUY, SELL, NAN, BUY, SELL, BUY], dtype=float)
    side = pd.Series([1, -1, 1, -1, 1, 1, 0, NAN, 1], dtype=float)
    # buy+long pays, sell+short pays, hold+long does not, buy+short and sell+long do not,
    # no label stays NaN, no side (0 or NaN) is hold whatever happened, buy+long pays
    want = [BUY, SELL, HOLD, HOLD, HOLD, NAN, HOLD, HOLD, BUY]
    np.testing.assert_array_equal(meta_labels(labels, side).to_numpy(), np.array(want, dtype=float))


def test_primary_side_is_the_sign_of_the_trailing_return_and_known_at_the_row():
    candles = make_candles(400, seed=5)
    close = candles["close"].copy()
    close.iloc[200] = close.iloc[194]  # exactly no move over 6 bars: no side
    candles["close"] = close
    side = primary_side(candles["close"], 6)
    assert side.iloc[:6].isna().all() and side.iloc[6:].notna().all()
    expected = np.sign(close / close.shift(6) - 1.0)
    np.testing.assert_array_equal(side.iloc[6:].to_numpy(), expected.iloc[6:].to_numpy())
    assert side.iloc[200] == 0.0 and set(side.iloc[6:].unique()) == {-1.0, 0.0, 1.0}

    full = compute_model_features(candles, "default", primary="momentum", horizon=6)
    assert list(full.columns) == list(FEATURE_NAMES) + [PRIMARY_COLUMN]
    assert list(full.columns) == feature_names("default", primary="momentum")
    for t in (6, 7, 60, 200, 333, 399):
        cut = compute_model_features(candles.iloc[: t + 1], "default", primary="momentum", horizon=6)
        pd.testing.assert_series_equal(cut.iloc[-1], full.iloc[t], check_names=False)
    # The project's look-ahead check covers the column too (features recomputed on truncated histories).
    report = analyse(
        candles,
        ("default",),
        cuts=8,
        horizon=6,
        compute=feature_function(None, pd.Timedelta("30min"), primary="momentum", horizon=6),
    )
    assert report.passed and PRIMARY_COLUMN in report.counts["default"]


def test_primary_warm_up_counts_in_the_minimum_history():
    assert min_history_bars("default", primary="momentum", horizon=6) == min_history_bars("default")
    assert min_history_bars("default", primary="momentum", horizon=80) == 81
    with pytest.raises(ValueError, match="horizon"):
        min_history_bars("default", primary="momentum")


def test_mask_to_side_is_exact():
    proba = np.array(
        [[0.2, 0.3, 0.5], [0.2, 0.3, 0.5], [0.2, 0.3, 0.5], [NAN, NAN, NAN], [0.6, 0.4, 0.0], [0.7, 0.3, 0.0]]
    )
    side = np.array([1, -1, 0, 1, -1, NAN])
    out = mask_to_side(proba, side)
    np.testing.assert_allclose(out[0], [0.0, 0.3 / 0.8, 0.5 / 0.8])
    np.testing.assert_allclose(out[1], [0.2 / 0.5, 0.3 / 0.5, 0.0])
    np.testing.assert_array_equal(out[2], [0.0, 1.0, 0.0])  # no side: hold
    assert np.isnan(out[3]).all()  # not ready stays not ready
    np.testing.assert_array_equal(out[5], [0.0, 1.0, 0.0])  # a NaN side is no side
    ok = ~np.isnan(out).any(axis=1)
    np.testing.assert_allclose(out[ok].sum(axis=1), 1.0)
    assert (out[ok & (side == 1), SELL] == 0).all() and (out[ok & (side == -1), BUY] == 0).all()
    # The input is not modified.
    assert proba[0, SELL] == 0.2


@pytest.mark.parametrize(("p", "expected"), [(0.5, 0.0), (0.6, 0.25), (0.75, 0.5), (0.9, 0.75), (1.0, 1.0)])
def test_binary_sizing_against_one_half(p, expected):
    assert _binary_size_by_hand(p) == expected
    policy = DecisionPolicy(sizing="probability", size_null=0.5)
    proba = np.array([[0.0, 1 - p, p], [p, 1 - p, 0.0]])
    assert policy.sizes(proba).tolist() == [expected, expected]
    # p = 0.75: z = 0.25 / sqrt(0.1875) = 0.577, 2 Phi(z) - 1 = 0.436, rounded to 0.5
    if p == 0.75:
        assert abs(2 * 0.5 * (1 + math.erf(0.57735 / math.sqrt(2))) - 1 - 0.436) < 1e-3
    # the three-class default sizes the same p against 1/3, larger
    assert DecisionPolicy(sizing="probability").sizes(proba[:1])[0] >= expected


def test_size_null_round_trips_and_old_policies_load():
    policy = DecisionPolicy(sizing="probability", size_null=0.5, min_proba=0.55)
    assert DecisionPolicy.from_dict(policy.to_dict()) == policy
    old = {"mode": "long_short", "on_hold": "keep", "min_proba": 0.4, "min_margin": 0.0, "sizing": "full"}
    assert DecisionPolicy.from_dict(old).size_null == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="size_null"):
        DecisionPolicy(size_null=1.0)
    rng = np.random.default_rng(0)
    p_buy = rng.uniform(0.3, 1.0, 300)
    proba = np.column_stack([np.zeros(300), 1 - p_buy, p_buy])
    chosen, table = fit_policy(
        proba, rng.normal(0, 0.01, 300), 0.0015, "long_short", "keep", "probability", 0.5
    )
    assert chosen.size_null == 0.5 and len(table) == 28


def test_config_refuses_an_unknown_primary_and_names_the_valid_ones():
    from train.config import PipelineConfig, parse_args

    with pytest.raises(
        ValueError, match=r"primary must be one of \['none', 'momentum'\]; got primary='trend'"
    ):
        PipelineConfig(primary="trend")
    with pytest.raises(ValueError, match="primary must be one of"):
        parse_args(["--primary", "rsi"])
    cfg = parse_args(["--primary", "momentum"])
    assert cfg.primary == "momentum" and cfg.side_column == PRIMARY_COLUMN and cfg.size_null == 0.5
    assert PipelineConfig().side_column is None and PipelineConfig().size_null == pytest.approx(1 / 3)
    # another study: the labels and the features differ
    assert cfg.fingerprint("x", "lightgbm", 1) != PipelineConfig().fingerprint("x", "lightgbm", 1)


def test_dataset_holds_meta_labels_and_the_side_feature():
    candles = make_candles(3000, seed=2, vol=0.004)
    plain = build_dataset(candles, horizon=4, threshold=0.004, min_rows=100)
    meta = build_dataset(candles, horizon=4, threshold=0.004, min_rows=100, primary="momentum")
    assert meta.X.columns[-1] == PRIMARY_COLUMN and meta.primary == "momentum"
    np.testing.assert_array_equal(meta.bars, plain.bars)
    np.testing.assert_array_equal(meta.ends, plain.ends)
    side = meta.X[PRIMARY_COLUMN]
    want = meta_labels(plain.y.astype(float), side).astype("int64")
    pd.testing.assert_series_equal(meta.y, want, check_names=False)
    # the class opposite to the side never occurs; a label and its underlying label agree where it pays
    assert not ((side == 1) & (meta.y == SELL)).any() and not ((side == -1) & (meta.y == BUY)).any()
    assert (meta.y == HOLD).mean() > (plain.y == HOLD).mean()
    tb = build_dataset(
        candles, horizon=4, threshold=0.004, min_rows=100, label="triple_barrier", primary="momentum"
    )
    tb_plain = label_function("triple_barrier")(candles["close"], 4, 0.004).iloc[tb.bars]
    np.testing.assert_array_equal(tb.y.to_numpy(), meta_labels(tb_plain, tb.X[PRIMARY_COLUMN]).to_numpy())


def test_the_ensemble_masks_to_the_side_out_of_fold_and_when_predicting():
    ds = build_dataset(make_candles(2400, seed=4, vol=0.004), horizon=4, threshold=0.004, min_rows=100,
                       primary="momentum")  # fmt: skip
    X, y = ds.X, ds.y
    est = [("lightgbm", build_model("lightgbm", {"n_estimators": 20}, seed=0, n_jobs=1))]
    cv = PurgedWalkForward(n_splits=3, horizon=4)
    ens = WeightedSoftVoting(est, cv=cv, side_column=PRIMARY_COLUMN).fit(X, y)
    side = X[PRIMARY_COLUMN].to_numpy()
    proba = ens.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert (proba[side == 1, SELL] == 0).all() and (proba[side == -1, BUY] == 0).all()
    np.testing.assert_array_equal(proba[side == 0], np.tile([0.0, 1.0, 0.0], ((side == 0).sum(), 1)))
    np.testing.assert_allclose(proba, mask_to_side(ens.member_proba("lightgbm", X), side))
    oof, oof_side = ens.oof_proba_, side[ens.oof_index_]
    assert (oof[oof_side == 1, SELL] == 0).all() and (oof[oof_side == -1, BUY] == 0).all()
    # without a side column nothing is masked: the raw model does give the impossible class some mass
    raw = WeightedSoftVoting(est, cv=cv).fit(X, y).predict_proba(X)
    assert (raw[side == 1, SELL] > 0).any()
    with pytest.raises(ValueError, match="primary side column"):
        WeightedSoftVoting(est, cv=cv, side_column=PRIMARY_COLUMN).fit(X.drop(columns=PRIMARY_COLUMN), y)


@pytest.mark.slow
def test_a_pipeline_with_a_momentum_primary_serves_positions_on_the_side_only(store):
    import mlflow

    from features.data import load_candles
    from models.pyfunc import as_model_input
    from train.pipeline import run_pipeline

    data = write_csv(make_flow_signal_candles(3000, seed=11), store / "flow.csv")
    # on_hold left at auto: flat with a primary, so every position is the call of its own row (keep
    # would carry one past a flip of side)
    cfg = tiny_config(data, store, "meta", horizon=3, sizing="probability", primary="momentum")
    assert cfg.on_hold == "auto" and cfg.hold == "flat"
    out = run_pipeline(cfg)
    assert out["plan"]["primary"] == "momentum"
    assert out["policy"]["size_null"] == 0.5 and out["policy"]["sizing"] == "probability"
    assert out["policy"]["on_hold"] == "flat"
    model = mlflow.pyfunc.load_model(f"models:/meta/{out['model_version']}")
    meta = model.metadata.metadata
    assert meta["primary"] == "momentum" and meta["feature_names"][-1] == PRIMARY_COLUMN
    candles = load_candles(data)[0].iloc[-500:]
    served = model.predict(as_model_input(candles))
    ready = served["ready"].to_numpy()
    assert ready.sum() > 300
    trailing = np.sign(candles["close"] / candles["close"].shift(3) - 1.0).to_numpy()
    position = served["position"].to_numpy()
    # never against the primary's side, and flat where there is none
    assert (np.sign(position) * np.nan_to_num(trailing) >= 0).all()
    assert (position[np.nan_to_num(trailing) == 0] == 0).all()
    assert served["action"].isin(["buy", "sell"]).any() and (position != 0).any()
    p = served.loc[ready, ["p_sell", "p_hold", "p_buy"]].to_numpy()
    side = trailing[ready]
    assert (p[side == 1, 0] == 0).all() and (p[side == -1, 2] == 0).all()
    assert np.allclose(position / SIZE_STEP, np.round(position / SIZE_STEP)) and (np.abs(position) <= 1).all()
    # `evaluate` scores it on its own meta-labels, `monitor` computes its side feature
    from evaluation.monitoring import model_features
    from evaluation.scoring import prepare_scoring

    scoring = prepare_scoring(model, candles)
    plain = label_function("threshold")(candles["close"], 3, 0.005)
    want = meta_labels(plain, primary_side(candles["close"], 3))
    np.testing.assert_array_equal(scoring.labels.to_numpy(), want.to_numpy())
    assert model_features(meta, candles).columns[-1] == PRIMARY_COLUMN


def test_the_lookahead_command_checks_the_primary_side(tmp_path, capsys):
    from evaluation import lookahead

    data = write_csv(make_candles(600, seed=9), tmp_path / "c.csv")
    argv = ["--data", data, "--features", "default", "--cuts", "5", "--primary", "momentum"]
    assert lookahead.main(argv) == 0
    assert PRIMARY_COLUMN in capsys.readouterr().out
    with pytest.raises(SystemExit):
        lookahead.main(["--data", data, "--primary", "trend"])


@pytest.mark.parametrize(
    ("primary", "on_hold", "hold"),
    [
        ("none", "auto", "keep"),
        ("momentum", "auto", "flat"),
        ("momentum", "keep", "keep"),
        ("none", "flat", "flat"),
    ],
)
def test_on_hold_auto_is_flat_with_a_primary_and_keep_without(primary, on_hold, hold):
    from train.config import PipelineConfig

    cfg = PipelineConfig(primary=primary, on_hold=on_hold)
    assert cfg.hold == hold
    # "auto" and the value it resolves to are one study
    same = PipelineConfig(primary=primary, on_hold=hold)
    assert cfg.fingerprint("sha", "lightgbm", 1) == same.fingerprint("sha", "lightgbm", 1)
    with pytest.raises(ValueError, match="on_hold must be one of"):
        PipelineConfig(on_hold="close")
