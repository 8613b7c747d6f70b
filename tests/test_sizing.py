"""Bet sizing (issue 17): a probability-sized decision policy holds fractional positions, and the policy,
the backtest, the served model and the gate's traded object all trade them at the cost the formula says."""

import math

import numpy as np
import pandas as pd
import pytest

from evaluation.backtest import BacktestConfig, backtest
from evaluation.economics import fit_policy, grid_sharpes
from evaluation.nulls import Traded, timing_null
from features.indicators import compute_features
from models.base import build_model
from models.ensemble import WeightedSoftVoting
from models.policy import SIZE_STEP, DecisionPolicy, net_returns
from models.pyfunc import SignalModel
from tests.helpers import make_candles, make_regime_candles


def _size_by_hand(p: float) -> float:
    """2 Phi(z) - 1 with z = (p - 1/3) / sqrt(p (1 - p)), rounded to steps of 0.25 (math.erf, not scipy)."""
    if p >= 1.0:
        return 1.0
    z = (p - 1 / 3) / math.sqrt(p * (1 - p))
    size = max(0.0, 2 * (0.5 * (1 + math.erf(z / math.sqrt(2)))) - 1)
    return round(size / 0.25) * 0.25


@pytest.mark.parametrize(("p", "expected"), [(0.4, 0.0), (0.5, 0.25), (0.6, 0.5), (0.8, 0.75), (1.0, 1.0)])
def test_sizes_follow_the_formula(p, expected):
    policy = DecisionPolicy(sizing="probability")
    proba = np.array([[0.0, 1 - p, p], [p, 1 - p, 0.0]])
    assert _size_by_hand(p) == expected
    assert policy.sizes(proba).tolist() == [expected, expected]
    # buy holds +size, sell -size; long_only sells are flat
    assert policy.positions(proba[:1]).tolist() == [expected]
    assert DecisionPolicy(sizing="probability", on_hold="flat").positions(proba[1:]).tolist() == [-expected]
    long_only = DecisionPolicy(mode="long_only", sizing="probability", on_hold="flat")
    assert long_only.positions(proba[1:]).tolist() == [0.0]


def test_full_sizing_is_unchanged_and_hold_keeps_the_sized_position():
    proba = np.array([[0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.8, 0.1, 0.1], [np.nan] * 3, [0.3, 0.4, 0.3]])
    assert DecisionPolicy().positions(proba).tolist() == [1.0, 1.0, -1.0, 0.0, 0.0]
    sized = DecisionPolicy(sizing="probability", min_proba=0.4).positions(proba)
    assert sized.tolist() == [0.5, 0.5, -0.75, 0.0, 0.0]  # hold keeps 0.5; not ready is flat
    assert DecisionPolicy.from_dict(DecisionPolicy(sizing="probability").to_dict()).sizing == "probability"
    with pytest.raises(ValueError, match="sizing must be one of"):
        DecisionPolicy(sizing="kelly")


def test_fractional_positions_cost_what_the_formula_says():
    """Net return of a period = position * return - cost * |change of position|, a resize included."""
    candles = make_candles(30, seed=1)
    signals = pd.Series([2, 2, 1, 0, 2, 1, 1, 0], index=candles.index[5:13])
    sizes = [0.25, 0.75, 1.0, 0.5, 1.0, 0.0, 0.0, 0.25]
    config = BacktestConfig(mode="long_short", hold="keep", fee_bps=10, slippage_bps=5)
    bt = backtest(candles, signals, config, sizes=sizes)
    expected_pos = np.array([0.25, 0.75, 0.75, -0.5, 1.0, 1.0, 1.0, -0.25])
    assert np.allclose(bt.position.to_numpy(), expected_pos)
    opens = candles["open"].to_numpy()
    rows = np.arange(5, 13)
    r = opens[rows + 2] / opens[rows + 1] - 1
    changes = np.abs(np.diff(expected_pos, prepend=0.0))
    assert np.allclose(bt.returns.to_numpy(), expected_pos * r - 0.0015 * changes)
    assert np.allclose(bt.returns.to_numpy(), net_returns(expected_pos, r, 0.0015))
    with pytest.raises(ValueError, match="sizes must be 8 numbers in"):
        backtest(candles, signals, config, sizes=[2.0] * 8)


def test_the_policy_fit_and_grid_trade_sized_positions():
    rng = np.random.default_rng(0)
    proba = rng.dirichlet([1, 1, 1], 400)
    r = rng.normal(0, 0.01, 400)
    policy, table = fit_policy(proba, r, 0.001, "long_short", "keep", "probability")
    assert policy.sizing == "probability"
    sharpes = grid_sharpes(proba, r, 0.001, "long_short", "keep", "probability")
    full = grid_sharpes(proba, r, 0.001, "long_short", "keep")
    assert sharpes != full and set(sharpes) == set(full)
    positions = policy.positions(proba)
    assert np.allclose(positions / SIZE_STEP, np.round(positions / SIZE_STEP))
    assert (np.abs(positions) < 1).any() and (positions != 0).any()
    # the gate's traded object and its timing null take them as they are
    traded = Traded(positions, r, 0.001)
    assert np.allclose(traded.net, net_returns(positions, r, 0.001))
    assert 0.0 < timing_null(traded).p_value <= 1.0


def test_the_served_model_holds_sized_positions():
    candles = make_regime_candles(600, seed=3)
    X = compute_features(candles).dropna()
    y = np.random.default_rng(0).integers(0, 3, len(X))
    lgbm = build_model("lightgbm", {"n_estimators": 10}, n_jobs=1)
    ens = WeightedSoftVoting([("lgbm", lgbm)], weights=[1.0]).fit(X, y)
    policy = DecisionPolicy(sizing="probability", min_proba=0.34)
    model = SignalModel(ens, "default", pd.Timedelta("30min"), policy=policy)
    frame = candles.reset_index()
    frame["timestamp"] = frame["timestamp"].dt.tz_localize(None)
    out = model.predict(None, frame)
    ready = out["ready"].to_numpy()
    proba = out.loc[ready, ["p_sell", "p_hold", "p_buy"]].to_numpy()
    assert out["position"].dtype == np.float64
    assert np.allclose(out.loc[ready, "position"].to_numpy(), policy.positions(proba))
    assert set(np.abs(out["position"]).round(6)) <= {0.0, 0.25, 0.5, 0.75, 1.0}


@pytest.mark.slow
def test_a_pipeline_with_probability_sizing_serves_and_judges_sized_positions(store):
    import mlflow

    from features.data import load_candles
    from models.pyfunc import as_model_input
    from tests.helpers import make_flow_signal_candles, tiny_config, write_csv
    from train.pipeline import run_pipeline

    data = write_csv(make_flow_signal_candles(3000, seed=11), store / "flow.csv")
    out = run_pipeline(tiny_config(data, store, "sized", horizon=3, sizing="probability"))
    assert out["policy"]["sizing"] == "probability"
    assert {c["name"] for c in out["gate"]["checks"]} >= {"timing_skill", "beats_flat_after_costs"}
    model = mlflow.pyfunc.load_model(f"models:/sized/{out['model_version']}")
    assert model.metadata.metadata["policy"]["sizing"] == "probability"
    served = model.predict(as_model_input(load_candles(data)[0].iloc[-400:]))
    positions = served["position"].to_numpy()
    assert (
        np.allclose(positions / SIZE_STEP, np.round(positions / SIZE_STEP)) and (np.abs(positions) <= 1).all()
    )
