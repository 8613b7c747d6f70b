"""The decision policy (models/policy.py): probabilities -> actions -> positions -> after-cost returns.

Every expected value below is worked out by hand from the rule in the module docstring; the last test
proves the gate's backtest trades exactly what the served model's policy does.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest

from evaluation.backtest import BacktestConfig, backtest
from evaluation.economics import period_returns
from models.policy import (
    BUY,
    HOLD,
    MIN_MARGIN_GRID,
    MIN_PROBA_GRID,
    SELL,
    DecisionPolicy,
    net_returns,
    policy_grid,
    sharpe_per_period,
)
from tests.helpers import make_candles

S, H, B = SELL, HOLD, BUY


def _actions(policy, rows):
    return policy.actions(np.array(rows, dtype=float)).tolist()


# --------------------------------------------------------------------------------------------------
# Actions


def test_default_policy_acts_on_any_lean_above_one_third():
    rows = [
        [0.10, 0.30, 0.60],  # clear buy
        [0.60, 0.30, 0.10],  # clear sell
        [0.15, 0.45, 0.40],  # hold is the argmax, but p_buy 0.40 >= 0.34 and > p_sell: buy
        [0.40, 0.45, 0.15],  # the mirror image: sell
        [0.20, 0.47, 0.33],  # p_buy 0.33 < 0.34: hold
        [0.30, 0.40, 0.30],  # p_buy == p_sell: hold
    ]
    assert _actions(DecisionPolicy(), rows) == [B, S, B, S, H, H]


def test_argmax_is_not_required_to_act():
    # p_hold 0.45 is the largest, p_buy 0.40 still acts with min_proba 0.34 ...
    assert _actions(DecisionPolicy(min_proba=0.34), [[0.15, 0.45, 0.40]]) == [B]
    # ... and does not with a threshold above it.
    assert _actions(DecisionPolicy(min_proba=0.45), [[0.15, 0.45, 0.40]]) == [H]


def test_probability_threshold_is_inclusive():
    policy = DecisionPolicy(min_proba=0.5)
    assert _actions(policy, [[0.2, 0.3, 0.5], [0.5, 0.3, 0.2], [0.25, 0.26, 0.49]]) == [B, S, H]


def test_margin_is_inclusive_and_applies_to_both_directions():
    policy = DecisionPolicy(min_proba=0.34, min_margin=0.25)  # 0.25 and 0.5 are exact binary fractions
    rows = [
        [0.25, 0.25, 0.50],  # margin exactly 0.25: buy
        [0.30, 0.20, 0.50],  # margin 0.20 < 0.25: hold even though p_buy is the argmax
        [0.50, 0.25, 0.25],  # margin exactly 0.25: sell
        [0.50, 0.20, 0.30],  # margin 0.20: hold
    ]
    assert _actions(policy, rows) == [B, H, S, H]
    # The same rows without a margin requirement all act.
    assert _actions(DecisionPolicy(min_proba=0.34), rows) == [B, B, S, S]


def test_ties_between_buy_and_sell_are_hold_even_with_no_threshold_and_no_margin():
    policy = DecisionPolicy(min_proba=0.0, min_margin=0.0)
    rows = [[0.5, 0.0, 0.5], [0.0, 1.0, 0.0], [0.4, 0.2, 0.4], [0.0, 0.9, 0.1]]
    # Only the last row leans (strictly) to a direction.
    assert _actions(policy, rows) == [H, H, H, B]


def test_long_only_does_not_change_actions():
    rows = [[0.6, 0.3, 0.1], [0.1, 0.3, 0.6], [0.3, 0.4, 0.3]]
    assert _actions(DecisionPolicy(mode="long_only"), rows) == [S, B, H]


def test_actions_are_int_codes_and_need_three_columns():
    out = DecisionPolicy().actions(np.array([[0.1, 0.3, 0.6]]))
    assert out.dtype == np.int64
    with pytest.raises(ValueError, match="shape"):
        DecisionPolicy().actions(np.array([0.1, 0.3, 0.6]))
    with pytest.raises(ValueError, match="shape"):
        DecisionPolicy().actions(np.zeros((4, 2)))


# --------------------------------------------------------------------------------------------------
# Positions

ACTIONS = np.array([H, B, H, H, S, H, B, B, S, H])


@pytest.mark.parametrize(
    ("mode", "on_hold", "expected"),
    [
        ("long_short", "keep", [0, 1, 1, 1, -1, -1, 1, 1, -1, -1]),
        ("long_short", "flat", [0, 1, 0, 0, -1, 0, 1, 1, -1, 0]),
        ("long_only", "keep", [0, 1, 1, 1, 0, 0, 1, 1, 0, 0]),
        ("long_only", "flat", [0, 1, 0, 0, 0, 0, 1, 1, 0, 0]),
    ],
)
def test_positions_from_actions(mode, on_hold, expected):
    # The first row is a hold before any signal: flat in every combination. "keep" carries the last
    # buy/sell; long_only turns a sell into flat (and a later hold keeps that flat).
    pos = DecisionPolicy(mode=mode, on_hold=on_hold).positions_from_actions(ACTIONS)
    assert pos.tolist() == expected


def test_keep_starts_flat_until_the_first_signal():
    pos = DecisionPolicy(on_hold="keep").positions_from_actions(np.array([H, H, H, S, H]))
    assert pos.tolist() == [0, 0, 0, -1, -1]


def test_positions_of_probabilities_equal_positions_of_their_actions():
    rng = np.random.default_rng(3)
    proba = rng.dirichlet([1, 1, 1], size=200)
    for policy in (DecisionPolicy(), DecisionPolicy("long_only", "flat", 0.45, 0.1)):
        assert np.array_equal(policy.positions(proba), policy.positions_from_actions(policy.actions(proba)))


# --------------------------------------------------------------------------------------------------
# Returns and Sharpe


def test_net_returns_by_hand():
    position = np.array([1.0, 1.0, -1.0, 0.0, 0.0])
    r = np.array([0.01, -0.02, 0.03, 0.05, -0.01])
    cost = 0.001
    expected = [
        0.01 - 0.001,  # enter long from flat: 1 unit traded
        -0.02,  # keep long: no cost
        -0.03 - 0.002,  # flip long -> short: 2 units traded
        -0.001,  # close the short: 1 unit, nothing earned
        0.0,  # stay flat
    ]
    assert net_returns(position, r, cost) == pytest.approx(expected, abs=1e-15)


def test_net_returns_first_short_pays_once_and_zero_cost_is_gross():
    r = np.array([0.02, -0.01])
    assert net_returns(np.array([-1.0, -1.0]), r, 0.005) == pytest.approx([-0.025, 0.01])
    assert net_returns(np.array([-1.0, 1.0]), r, 0.0) == pytest.approx([-0.02, -0.01])


def test_sharpe_per_period_by_hand():
    assert sharpe_per_period(np.array([1.0, 2.0, 3.0])) == pytest.approx(2.0)  # mean 2, std(ddof=1) 1
    assert sharpe_per_period(np.array([-1.0, -2.0, -3.0])) == pytest.approx(-2.0)
    assert sharpe_per_period(np.array([0.01, -0.01])) == 0.0
    # ddof=1, not 0: [0, 2] has mean 1 and sample std sqrt(2)
    assert sharpe_per_period(np.array([0.0, 2.0])) == pytest.approx(1 / math.sqrt(2))


def test_sharpe_per_period_is_zero_when_undefined():
    assert sharpe_per_period(np.array([])) == 0.0
    assert sharpe_per_period(np.array([0.3])) == 0.0
    assert sharpe_per_period(np.zeros(10)) == 0.0  # never trades
    # A constant series whose std comes out as rounding noise (~1.7e-17) instead of 0: a naive
    # mean / std would be ~6e15 here.
    constant = np.array([0.1, 0.1, 0.1])
    assert constant.std(ddof=1) != 0.0
    assert sharpe_per_period(constant) == 0.0


# --------------------------------------------------------------------------------------------------
# Validation, serialisation, grid


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"mode": "short_only"}, ValueError, "mode"),
        ({"mode": "LONG_SHORT"}, ValueError, "mode"),
        ({"on_hold": "close"}, ValueError, "on_hold"),
        ({"min_proba": -0.01}, ValueError, "min_proba"),
        ({"min_proba": 1.01}, ValueError, "min_proba"),
        ({"min_margin": -0.1}, ValueError, "min_margin"),
        ({"min_margin": 1.5}, ValueError, "min_margin"),
        ({"min_proba": True}, TypeError, "min_proba"),
        ({"min_margin": False}, TypeError, "min_margin"),
        ({"min_proba": float("nan")}, TypeError, "min_proba"),
        ({"min_margin": float("inf")}, TypeError, "min_margin"),
        ({"min_proba": "0.5"}, TypeError, "min_proba"),
        ({"min_proba": None}, TypeError, "min_proba"),
    ],
)
def test_policy_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        DecisionPolicy(**kwargs)


def test_policy_accepts_the_boundaries_and_numpy_numbers():
    for p in (0, 0.0, 1, 1.0, np.float64(0.5)):
        assert DecisionPolicy(min_proba=p).min_proba == p
    assert DecisionPolicy(min_margin=1.0).min_margin == 1.0


def test_to_dict_from_dict_round_trip():
    policy = DecisionPolicy(mode="long_only", on_hold="flat", min_proba=0.55, min_margin=0.05)
    values = policy.to_dict()
    assert values == {
        "mode": "long_only",
        "on_hold": "flat",
        "min_proba": 0.55,
        "min_margin": 0.05,
        "sizing": "full",
        "size_null": 1 / 3,  # what probability sizing sizes against (0.5 with a primary side)
    }
    # It survives JSON (how it is logged with the model) and comes back equal.
    assert DecisionPolicy.from_dict(json.loads(json.dumps(values))) == policy
    # Unknown keys are ignored, missing ones take the defaults, bad values are refused on load.
    assert DecisionPolicy.from_dict({**values, "extra": 1}) == policy
    assert DecisionPolicy.from_dict({"mode": "long_only"}) == DecisionPolicy(mode="long_only")
    with pytest.raises(ValueError, match="min_proba"):
        DecisionPolicy.from_dict({**values, "min_proba": 2.0})


def test_key_names_the_confidence_rule_only():
    assert DecisionPolicy(min_proba=0.45, min_margin=0.1).key == "p0.45-m0.1"
    assert DecisionPolicy().key == "p0.34-m0"
    assert DecisionPolicy("long_only", "flat", 0.45, 0.1).key == "p0.45-m0.1"


def test_policy_grid_order_and_size():
    grid = policy_grid("long_only", "flat")
    assert len(grid) == len(MIN_PROBA_GRID) * len(MIN_MARGIN_GRID) == 28
    assert all(p.mode == "long_only" and p.on_hold == "flat" for p in grid)
    # Probability threshold outer, margin inner, both ascending.
    assert [(p.min_proba, p.min_margin) for p in grid] == [
        (p, m) for p in MIN_PROBA_GRID for m in MIN_MARGIN_GRID
    ]
    assert grid[0].key == "p0.34-m0" and grid[1].key == "p0.34-m0.05" and grid[-1].key == "p0.7-m0.2"
    assert len({p.key for p in grid}) == len(grid)  # keys identify the rules
    assert list(MIN_PROBA_GRID) == sorted(MIN_PROBA_GRID) and list(MIN_MARGIN_GRID) == sorted(MIN_MARGIN_GRID)
    with pytest.raises(ValueError, match="mode"):
        policy_grid("short", "flat")


# --------------------------------------------------------------------------------------------------
# The backtest trades what the policy says


@pytest.mark.parametrize("mode", ["long_short", "long_only"])
@pytest.mark.parametrize("on_hold", ["keep", "flat"])
@pytest.mark.parametrize(("min_proba", "min_margin"), [(0.34, 0.0), (0.45, 0.1)])
def test_backtest_of_policy_actions_equals_policy_net_returns(mode, on_hold, min_proba, min_margin):
    candles = make_candles(80, seed=5)
    rng = np.random.default_rng(9)
    first, last = 10, 70  # consecutive candle rows, all with an open two bars later
    bars = np.arange(first, last)
    proba = rng.dirichlet([1.0, 1.2, 1.0], size=len(bars))
    policy = DecisionPolicy(mode, on_hold, min_proba, min_margin)
    config = BacktestConfig(mode=mode, hold=on_hold, fee_bps=10.0, slippage_bps=5.0)

    bt = backtest(candles, pd.Series(policy.actions(proba), index=candles.index[bars]), config)
    expected = net_returns(policy.positions(proba), period_returns(candles, bars), config.cost)

    assert bt.n_dropped == 0 and len(bt.returns) == len(bars)
    assert np.allclose(bt.returns.to_numpy(), expected, rtol=0, atol=1e-15)
    assert np.array_equal(bt.position.to_numpy(), policy.positions(proba))
    # Not a vacuous agreement: the policy trades, and costs are charged.
    changes = np.count_nonzero(np.diff(policy.positions(proba), prepend=0.0))
    assert changes > 3 and bt.metrics["n_trades"] == changes


def test_backtest_drops_the_tail_without_changing_the_policy_positions():
    candles = make_candles(40, seed=6)
    rng = np.random.default_rng(2)
    bars = np.arange(20, 40)  # up to the last candle: the last 2 rows have no open two bars later
    proba = rng.dirichlet([1, 1, 1], size=len(bars))
    policy = DecisionPolicy("long_short", "keep")
    bt = backtest(
        candles, pd.Series(policy.actions(proba), index=candles.index[bars]), BacktestConfig(hold="keep")
    )
    r = period_returns(candles, bars)
    assert np.isnan(r[-2:]).all() and np.isfinite(r[:-2]).all()
    expected = net_returns(policy.positions(proba), r, BacktestConfig().cost)[:-2]
    assert bt.n_dropped == 2
    assert np.allclose(bt.returns.to_numpy(), expected, rtol=0, atol=1e-15)
