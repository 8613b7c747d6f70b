"""evaluation/economics.py: period returns, choosing the policy's confidence rule, trial statistics, the
bootstrap of beating flat, and the directional-edge check."""

import numpy as np
import pandas as pd
import pytest

from evaluation.economics import (
    TradingCosts,
    directional_edge,
    fit_policy,
    grid_sharpes,
    period_returns,
    policy_result,
)
from features.labels import BUY, HOLD, SELL, make_labels
from models.policy import DecisionPolicy, net_returns, policy_grid, sharpe_per_period
from tests.helpers import make_volatility_regime_candles

# --------------------------------------------------------------------------------------------------
# Period returns


def test_period_returns_by_hand():
    candles = pd.DataFrame({"open": [100.0, 101.0, 99.0, 102.0, 103.0], "close": [9.0] * 5})
    r = period_returns(candles, np.arange(5))
    assert r[:3] == pytest.approx([99 / 101 - 1, 102 / 99 - 1, 103 / 102 - 1])
    assert np.isnan(r[3]) and np.isnan(r[4])  # no open two bars later
    # Any order, any subset of bars; closes are never used.
    assert period_returns(candles, np.array([2, 0])) == pytest.approx([103 / 102 - 1, 99 / 101 - 1])


# --------------------------------------------------------------------------------------------------
# Choosing the confidence rule

STRONG_BUY, STRONG_SELL = [0.10, 0.38, 0.52], [0.52, 0.38, 0.10]  # margin 0.42
WEAK_BUY, WEAK_SELL = [0.25, 0.35, 0.40], [0.40, 0.35, 0.25]  # margin 0.15
NO_CALL = [0.30, 0.40, 0.30]


def _confident_right_weak_wrong(n=600, seed=0):
    """Out-of-fold-like probabilities where confident calls earn and weak calls lose (more).

    Strong calls (p 0.52, margin 0.42) are followed by a move their way of 0.4%, weak ones (p 0.40,
    margin 0.15) by a move against them of 0.6%; noise 0.2% on every period.
    """
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 5, n)  # 0 strong buy, 1 strong sell, 2 weak buy, 3 weak sell, 4 no call
    table = np.array([STRONG_BUY, STRONG_SELL, WEAK_BUY, WEAK_SELL, NO_CALL])
    drift = np.array([0.004, -0.004, -0.006, 0.006, 0.0])
    return table[kind], drift[kind] + 0.002 * rng.standard_normal(n)


def test_fit_policy_picks_the_profitable_rule():
    proba, r = _confident_right_weak_wrong()
    cost = 0.0005
    policy, table = fit_policy(proba, r, cost, "long_short", "flat")
    by_key = {row["policy"]: row for row in table}

    # Rules that trade the weak calls (threshold <= 0.40 and margin <= 0.15) lose money ...
    for key in ("p0.34-m0", "p0.34-m0.1", "p0.4-m0", "p0.4-m0.05"):
        assert by_key[key]["sharpe_per_period"] < 0 and by_key[key]["total_return"] < 0
    # ... those that trade only the strong calls earn; above 0.52 nothing trades at all.
    strong_only = ["p0.34-m0.2", "p0.4-m0.2", "p0.45-m0", "p0.45-m0.2", "p0.5-m0", "p0.5-m0.2"]
    assert all(by_key[k]["sharpe_per_period"] > 0.3 for k in strong_only)
    assert len({by_key[k]["sharpe_per_period"] for k in strong_only}) == 1  # identical trades
    for p in ("0.55", "0.6", "0.7"):
        row = by_key[f"p{p}-m0"]
        assert row["n_trades"] == 0 and row["exposure"] == 0.0 and row["sharpe_per_period"] == 0.0

    # The best Sharpe is shared by every strong-only rule; the tie goes to the strictest of them.
    assert policy == DecisionPolicy("long_short", "flat", 0.5, 0.2)
    chosen = by_key[policy.key]
    assert chosen["sharpe_per_period"] == max(row["sharpe_per_period"] for row in table)

    # The table row is what the rule earns, computed independently here.
    strong = (proba == STRONG_BUY).all(axis=1) | (proba == STRONG_SELL).all(axis=1)
    position = np.where(strong, np.sign(proba[:, 2] - proba[:, 0]), 0.0)
    net = position * r - cost * np.abs(np.diff(position, prepend=0.0))
    assert chosen["sharpe_per_period"] == pytest.approx(net.mean() / net.std(ddof=1))
    assert chosen["total_return"] == pytest.approx(np.prod(1 + net) - 1)
    assert chosen["n_trades"] == np.count_nonzero(np.diff(position, prepend=0.0))
    assert chosen["exposure"] == pytest.approx(strong.mean())


def test_fit_policy_table_has_one_row_per_rule_in_grid_order():
    proba, r = _confident_right_weak_wrong(n=200, seed=1)
    _, table = fit_policy(proba, r, 0.001, "long_only", "keep")
    grid = policy_grid("long_only", "keep")
    assert [row["policy"] for row in table] == [p.key for p in grid]
    assert [(row["min_proba"], row["min_margin"]) for row in table] == [
        (p.min_proba, p.min_margin) for p in grid
    ]
    for row, p in zip(table, grid, strict=True):
        assert row == policy_result(p, proba, r, 0.001)


@pytest.mark.parametrize("on_hold", ["keep", "flat"])
def test_fit_policy_tie_break_prefers_the_stricter_rule(on_hold):
    rng = np.random.default_rng(4)
    n = 120
    r = 0.003 * rng.standard_normal(n)
    # Every call is so confident (p 0.9, margin 0.85) that all 28 rules make the same trades.
    confident = np.where(rng.random(n)[:, None] < 0.5, [0.05, 0.05, 0.9], [0.9, 0.05, 0.05])
    policy, table = fit_policy(confident, r, 0.001, "long_short", on_hold)
    assert len({row["sharpe_per_period"] for row in table}) == 1
    assert (policy.min_proba, policy.min_margin) == (0.7, 0.2)
    # Nothing ever called: every rule earns exactly 0; again the strictest.
    silent = np.tile(NO_CALL, (n, 1))
    policy, table = fit_policy(silent, r, 0.001, "long_short", on_hold)
    assert all(row["n_trades"] == 0 and row["sharpe_per_period"] == 0.0 for row in table)
    assert (policy.min_proba, policy.min_margin) == (0.7, 0.2)


def test_fit_policy_prefers_a_better_lenient_rule_over_a_worse_strict_one():
    # Weak calls are right too here: trading them adds profit, so the tie-break must not override.
    rng = np.random.default_rng(5)
    n = 600
    kind = rng.integers(0, 5, n)
    proba = np.array([STRONG_BUY, STRONG_SELL, WEAK_BUY, WEAK_SELL, NO_CALL])[kind]
    r = np.array([0.004, -0.004, 0.004, -0.004, 0.0])[kind] + 0.002 * rng.standard_normal(n)
    policy, _ = fit_policy(proba, r, 0.0002, "long_short", "flat")
    assert policy.min_proba <= 0.4 and policy.min_margin <= 0.15


def test_policy_inputs_are_checked():
    proba, r = _confident_right_weak_wrong(n=10)
    with pytest.raises(ValueError, match="rows of probabilities"):
        fit_policy(proba, r[:-1], 0.001, "long_short", "flat")
    with pytest.raises(ValueError, match="at least 3"):
        fit_policy(proba[:2], r[:2], 0.001, "long_short", "flat")
    bad = r.copy()
    bad[-1] = np.nan  # the last rows of the data have no period to trade: they must be dropped first
    with pytest.raises(ValueError, match="finite"):
        fit_policy(proba, bad, 0.001, "long_short", "flat")
    with pytest.raises(ValueError, match="finite"):
        grid_sharpes(proba, bad, 0.001, "long_short", "flat")


def test_grid_sharpes_keys_and_values():
    proba, r = _confident_right_weak_wrong(n=300, seed=2)
    sharpes = grid_sharpes(proba, r, 0.001, "long_short", "keep")
    grid = policy_grid("long_short", "keep")
    assert list(sharpes) == [p.key for p in grid]
    for p in grid:
        assert sharpes[p.key] == sharpe_per_period(net_returns(p.positions(proba), r, 0.001))
    # TradingCosts trades each development row on its own candle: row b earns open[b+2] / open[b+1] - 1.
    g = np.concatenate([np.full(50, 0.1), r, np.full(20, -0.1)])
    opens = 100 * np.concatenate([[1.0, 1.0], np.cumprod(1 + g)])  # opens[b+2] / opens[b+1] - 1 == g[b]
    costs = TradingCosts(opens, np.arange(len(g)), 0.001, "long_short", "keep")
    assert costs.grid_sharpes(np.arange(50, 350), proba) == pytest.approx(sharpes, rel=1e-9)


def test_trading_costs_are_flat_on_candles_whose_rows_were_dropped_next_to_a_gap():
    proba, r = _confident_right_weak_wrong(n=300, seed=3)
    opens = 100 * np.concatenate([[1.0, 1.0], np.cumprod(1 + r)])
    # development rows 100..109 were dropped (their label or indicators would span a gap)
    bars = np.r_[0:100, 110:300]
    costs = TradingCosts(opens, bars, 0.001, "long_short", "keep")
    kept = np.r_[0:100, 110:300]
    full, returns = costs.span(np.arange(len(bars)), proba[kept])
    assert len(full) == len(returns) == 300 and np.allclose(returns, r)
    assert np.isnan(full[100:110]).all() and np.array_equal(full[kept], proba[kept])
    # the policy is flat on those candles, and a hold right after them does not bring back the old position
    policy = DecisionPolicy(on_hold="keep")
    positions = policy.positions(full)
    assert (positions[100:110] == 0).all()
    first_action = 110 + int(np.argmax(policy.actions(full[110:]) != 1))
    assert (positions[110:first_action] == 0).all()


# --------------------------------------------------------------------------------------------------
# Directional edge

HORIZON = 6


@pytest.fixture(scope="module")
def volatility_only():
    """Labels on candles whose volatility is predictable (calm/stormy regimes) and direction is not,
    and a causal "stormy" flag from trailing volatility."""
    candles = make_volatility_regime_candles(6000, seed=13)
    y = make_labels(candles["close"], HORIZON, 0.005).to_numpy()
    trailing_vol = np.log(candles["close"]).diff().rolling(24).std().to_numpy()
    ok = np.isfinite(y) & np.isfinite(trailing_vol)
    y, trailing_vol = y[ok].astype(np.int64), trailing_vol[ok]
    return y, trailing_vol > np.median(trailing_vol)


def test_volatility_timing_is_not_a_directional_edge(volatility_only):
    y, stormy = volatility_only
    move = (y == BUY) | (y == SELL)
    assert move[stormy].mean() > 0.6 > 0.3 > move[~stormy].mean()  # the data does what it says

    # Random buy/sell on stormy rows, hold on calm ones: a pure volatility timer.
    rng = np.random.default_rng(0)
    pred = np.where(stormy, rng.choice([SELL, BUY], len(y)), HOLD)
    plain_buy_precision = np.mean(y[pred == BUY] == BUY)
    unconditional_buy_rate = np.mean(y == BUY)
    # The naive comparison flatters it: its buy calls are right far more often than buy labels occur
    # (about 0.37 vs 0.24), only because stormy rows move more often.
    assert plain_buy_precision > unconditional_buy_rate + 0.08

    edge = directional_edge(y, pred, block=10 * HORIZON, n_boot=500, seed=0)
    # Scored on rows that moved, it picks the right direction only as often as the base rates say.
    assert edge.n_calls == np.count_nonzero(pred != HOLD)
    assert edge.n_called_moves == np.count_nonzero((pred != HOLD) & move)
    assert edge.precision == pytest.approx(np.mean(y[(pred != HOLD) & move] == pred[(pred != HOLD) & move]))
    assert abs(edge.precision - edge.base_rate) < 0.03
    assert edge.buy_base_rate == pytest.approx(np.mean(y[move] == BUY))
    assert edge.buy_precision == pytest.approx(np.mean(y[move & (pred == BUY)] == BUY))
    assert edge.p_positive < 0.9

    # Over several random timers the check passes about as rarely as the confidence level allows.
    ps = [
        directional_edge(
            y,
            np.where(stormy, np.random.default_rng(s).choice([SELL, BUY], len(y)), HOLD),
            block=10 * HORIZON,
            n_boot=200,
            seed=s,
        ).p_positive
        for s in range(1, 11)
    ]
    assert np.mean(ps) < 0.8 and sum(p >= 0.95 for p in ps) <= 2


def test_right_direction_on_most_moves_is_an_edge(volatility_only):
    y, _ = volatility_only
    move = (y == BUY) | (y == SELL)
    rng = np.random.default_rng(1)
    right = rng.random(len(y)) < 0.8
    pred = np.where(move, np.where(right, y, 2 - y), HOLD)  # 2 - y swaps buy and sell
    edge = directional_edge(y, pred, block=10 * HORIZON, n_boot=500, seed=0)
    assert edge.precision == pytest.approx(0.8, abs=0.03)
    assert edge.base_rate == pytest.approx(0.5, abs=0.05)
    assert edge.excess > 0.25
    assert edge.p_positive >= 0.95


def test_no_calls_is_no_edge(volatility_only):
    y, _ = volatility_only
    edge = directional_edge(y, np.full(len(y), HOLD), block=10 * HORIZON, n_boot=100)
    assert edge.n_calls == 0 and edge.n_called_moves == 0
    assert edge.p_positive == 0.0 and edge.precision == 0.0


def test_directional_edge_by_hand():
    y = np.array([BUY, BUY, BUY, SELL, HOLD, HOLD])
    pred = np.array([BUY, BUY, SELL, BUY, BUY, HOLD])
    edge = directional_edge(y, pred, block=1, n_boot=50)
    # 5 calls, 4 on rows that moved: buy right twice, sell wrong, buy wrong -> precision 2/4.
    assert (edge.n_calls, edge.n_called_moves) == (5, 4)
    assert edge.precision == pytest.approx(0.5)
    # Base rates among moves: buy 3/4, sell 1/4. Called on moves: 3 buys, 1 sell -> (3*3/4 + 1/4) / 4.
    assert edge.buy_base_rate == pytest.approx(0.75) and edge.sell_base_rate == pytest.approx(0.25)
    assert edge.base_rate == pytest.approx((3 * 0.75 + 0.25) / 4)
    assert edge.buy_precision == pytest.approx(2 / 3) and edge.sell_precision == 0.0
    assert edge.excess == pytest.approx(0.5 - 0.625)


# --------------------------------------------------------------------------------------------------
# The deflated Sharpe ratio of the choice made out of fold


def test_deflated_sharpe_of_choice_counts_rules_members_and_looks():
    from evaluation.economics import deflated_sharpe_of_choice
    from evaluation.nulls import Traded

    rng = np.random.default_rng(0)
    market = 0.004 * rng.standard_normal(3000)
    view = market + 0.03 * rng.standard_normal(3000)
    chosen = Traded(np.sign(view), market, 0.0001)  # real timing skill
    same_rules = [chosen.position] * 28  # 28 rules that trade alike: one strategy
    one = deflated_sharpe_of_choice(chosen, same_rules, n_trials=3, n_members=1, looks=1)
    assert one["effective_rules"] == pytest.approx(1.0) and one["n_trials"] == 3
    assert one["sample"] == "out-of-fold" and one["measured"] and one["dsr"] > 0.95
    assert one["counted"] == "3 trials x 1.0 effective policy rules (of 28) x 1 ensemble members x 1 run"
    # Independent rules, more members and earlier looks all raise the bar the same Sharpe ratio must clear.
    rules = [np.sign(market + 0.03 * rng.standard_normal(3000)) for _ in range(5)]
    many = deflated_sharpe_of_choice(chosen, rules, n_trials=3, n_members=2, looks=4)
    assert many["effective_rules"] > 4 and many["n_trials"] == round(3 * many["effective_rules"] * 2 * 4)
    assert many["sr0"] > one["sr0"] and many["dsr"] < one["dsr"]
    assert many["sharpe_per_period"] == one["sharpe_per_period"]


def test_deflated_sharpe_of_choice_centres_on_what_drift_pays_the_same_exposure():
    from evaluation.economics import deflated_sharpe_of_choice
    from evaluation.nulls import Traded

    rng = np.random.default_rng(1)
    market = 0.001 + 0.004 * rng.standard_normal(3000)  # drifts up
    long = Traded(np.ones(3000), market, 0.0)
    out = deflated_sharpe_of_choice(long, [long.position], n_trials=1, n_members=1, looks=1)
    # Every shifted copy of "always long" earns the same: no spread to measure, so the plain 1/(T-1)
    # is assumed and the centre stays at 0; a mostly-long path with some changes has its drift centre.
    assert not out["measured"] and out["sr_null_mean"] == 0.0
    mostly_long = Traded(np.where(rng.random(3000) < 0.9, 1.0, 0.0), market, 0.0)
    centred = deflated_sharpe_of_choice(mostly_long, [mostly_long.position], n_trials=1, n_members=1, looks=1)
    assert centred["measured"] and centred["sr_null_mean"] > 0.1  # drift pays a Sharpe of ~0.2 a period
    assert centred["dsr"] < 0.95  # and that is not skill
