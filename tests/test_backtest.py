"""Backtest execution timing, costs, metrics and the deflated Sharpe ratio, on hand-made price paths."""

from __future__ import annotations

import math
import statistics
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from evaluation.backtest import (
    METRIC_KEYS,
    BacktestConfig,
    backtest,
    deflated_sharpe,
    deflated_sharpe_from_moments,
)

SELL, HOLD, BUY = 0, 1, 2
NO_COST = BacktestConfig(fee_bps=0.0, slippage_bps=0.0)
EULER_GAMMA = 0.5772156649015329


def candles_from_opens(opens, closes=None, freq: str = "1D") -> pd.DataFrame:
    """Candles with the given opens; close defaults to the next open (no gaps), the last close to its open."""
    opens = np.asarray(opens, dtype=float)
    if closes is None:
        closes = np.append(opens[1:], opens[-1])
    closes = np.asarray(closes, dtype=float)
    index = pd.date_range("2024-01-01", periods=len(opens), freq=freq, tz="UTC", name="timestamp")
    return pd.DataFrame(
        {
            "open": opens,
            "high": np.maximum(opens, closes) * 1.01,
            "low": np.minimum(opens, closes) * 0.99,
            "close": closes,
            "volume": 1.0,
        },
        index=index,
    )


def signals_on(candles: pd.DataFrame, values, start: int = 0) -> pd.Series:
    """A signal series on consecutive candle rows from row ``start``."""
    return pd.Series(values, index=candles.index[start : start + len(values)])


def random_walk(n: int, seed: int, vol: float = 0.01) -> pd.DataFrame:
    """Geometric random walk (no drift) as 30-minute candles: close[t] = open[t+1]."""
    rng = np.random.default_rng(seed)
    opens = 100.0 * np.exp(np.cumsum(vol * rng.standard_normal(n)))
    return candles_from_opens(opens, freq="30min")


# --------------------------------------------------------------------------------------------------
# Execution timing


def test_gap_after_the_signal_bar_is_not_earned_but_the_next_open_to_open_move_is():
    # Bar 1 closes at 100, bar 2 gaps up to open at 120, then the price rises 10% to open[3] = 132.
    opens = [100, 100, 120, 132, 132, 132]
    closes = [100, 100, 132, 132, 132, 132]
    candles = candles_from_opens(opens, closes)
    signals = signals_on(candles, [HOLD, BUY, HOLD, HOLD])
    result = backtest(candles, signals, NO_COST)

    # The buy of bar 1 is entered at open[2] = 120 (after the gap) and earns open[3]/open[2] - 1 = 10%,
    # not the 20% gap and not the 32% close-to-close move.
    assert result.returns[candles.index[2]] == pytest.approx(0.10)
    assert result.position.tolist() == [0.0, 1.0, 0.0, 0.0]
    np.testing.assert_allclose(result.returns.to_numpy(), [0.0, 0.10, 0.0, 0.0], atol=1e-15)
    assert result.equity.iloc[-1] == pytest.approx(1.10)
    # Periods start at the open after each signal bar; equity is marked at every period boundary.
    assert list(result.returns.index) == list(candles.index[1:5])
    assert list(result.equity.index) == list(candles.index[1:6])
    assert result.equity.iloc[0] == 1.0


def test_signal_change_at_t_only_changes_the_period_starting_at_open_t_plus_1():
    candles = random_walk(40, seed=3)
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 3, size=30)
    base = backtest(candles, signals_on(candles, codes), NO_COST)
    k = 12
    changed = codes.copy()
    changed[k] = (codes[k] + 1) % 3
    other = backtest(candles, signals_on(candles, changed), NO_COST)

    differs = base.returns.to_numpy() != other.returns.to_numpy()
    assert differs.sum() == 1
    assert base.returns.index[differs][0] == candles.index[k + 1]

    # With costs, the change also moves the cost of the *next* trade, and nothing else.
    cfg = BacktestConfig()
    base_c = backtest(candles, signals_on(candles, codes), cfg).returns.to_numpy()
    other_c = backtest(candles, signals_on(candles, changed), cfg).returns.to_numpy()
    assert set(np.flatnonzero(base_c != other_c)) <= {k, k + 1}


def test_only_opens_matter_so_closes_and_wicks_cannot_leak_the_future():
    candles = random_walk(60, seed=5)
    signals = signals_on(candles, np.random.default_rng(6).integers(0, 3, size=50))
    base = backtest(candles, signals, BacktestConfig())
    scrambled = candles.copy()
    rng = np.random.default_rng(7)
    for col in ("high", "low", "close"):
        scrambled[col] = scrambled[col] * np.exp(0.05 * rng.standard_normal(len(scrambled)))
    other = backtest(scrambled, signals, BacktestConfig())
    pd.testing.assert_series_equal(base.returns, other.returns)


def test_signals_without_an_open_two_bars_later_are_dropped():
    candles = candles_from_opens([100, 101, 102, 103, 104, 105])
    full = backtest(candles, signals_on(candles, [BUY] * 6), NO_COST)
    assert full.n_dropped == 2 and len(full.returns) == 4
    assert full.metrics["n_periods"] == 4
    inner = backtest(candles, signals_on(candles, [BUY] * 3, start=1), NO_COST)
    assert inner.n_dropped == 0 and len(inner.returns) == 3
    # Buy all the time with no costs is the benchmark, period by period.
    np.testing.assert_allclose(inner.returns.to_numpy(), inner.benchmark_returns.to_numpy())
    assert inner.equity.iloc[-1] == pytest.approx(105 / 102)


def test_string_signals_equal_integer_codes():
    candles = random_walk(30, seed=8)
    codes = np.random.default_rng(9).integers(0, 3, size=25)
    names = np.array(["sell", "hold", "buy"])[codes]
    a = backtest(candles, signals_on(candles, codes), BacktestConfig())
    b = backtest(candles, signals_on(candles, list(names)), BacktestConfig())
    pd.testing.assert_series_equal(a.returns, b.returns)
    assert a.metrics == b.metrics


# --------------------------------------------------------------------------------------------------
# Costs on a flat price path (every return is pure cost)


@pytest.fixture
def flat() -> pd.DataFrame:
    return candles_from_opens([100.0] * 10)


def test_long_short_flip_costs_two_units_and_first_entry_one(flat):
    cfg = BacktestConfig(mode="long_short", fee_bps=10.0, slippage_bps=5.0)
    c = 15.0 / 1e4
    result = backtest(flat, signals_on(flat, [BUY, SELL, BUY, SELL, BUY, SELL]), cfg)
    assert result.position.tolist() == [1, -1, 1, -1, 1, -1]
    np.testing.assert_allclose(result.returns.to_numpy(), [-c, -2 * c, -2 * c, -2 * c, -2 * c, -2 * c])
    assert result.metrics["n_trades"] == 6
    assert result.metrics["turnover"] == pytest.approx(11 * result.bars_per_year / 6)
    assert result.metrics["total_return"] == pytest.approx((1 - c) * (1 - 2 * c) ** 5 - 1)
    # Equity only falls from its 1.0 start, so the drawdown (measured from the start) is the whole loss.
    assert result.metrics["max_drawdown"] == pytest.approx(result.metrics["total_return"])


def test_long_only_sell_means_flat(flat):
    cfg = BacktestConfig(mode="long_only", fee_bps=7.0, slippage_bps=3.0)
    c = 10.0 / 1e4
    result = backtest(flat, signals_on(flat, [BUY, SELL, BUY, SELL, SELL, HOLD]), cfg)
    assert result.position.tolist() == [1, 0, 1, 0, 0, 0]
    np.testing.assert_allclose(result.returns.to_numpy(), [-c, -c, -c, -c, 0, 0], atol=1e-15)
    assert result.metrics["exposure"] == pytest.approx(2 / 6)


def test_hold_keep_versus_flat(flat):
    c = 15.0 / 1e4
    codes = [HOLD, BUY, HOLD, HOLD, SELL, HOLD]
    keep = backtest(flat, signals_on(flat, codes), BacktestConfig(hold="keep"))
    # A hold before any decision is flat; afterwards it keeps the last position.
    assert keep.position.tolist() == [0, 1, 1, 1, -1, -1]
    np.testing.assert_allclose(keep.returns.to_numpy(), [0, -c, 0, 0, -2 * c, 0], atol=1e-15)
    flat_hold = backtest(flat, signals_on(flat, codes), BacktestConfig(hold="flat"))
    assert flat_hold.position.tolist() == [0, 1, 0, 0, -1, 0]
    np.testing.assert_allclose(flat_hold.returns.to_numpy(), [0, -c, -c, 0, -c, -c], atol=1e-15)


def test_benchmark_pays_entry_once(flat):
    c = 15.0 / 1e4
    result = backtest(flat, signals_on(flat, [SELL, BUY, HOLD, SELL, BUY]), BacktestConfig())
    np.testing.assert_allclose(result.benchmark_returns.to_numpy(), [-c, 0, 0, 0, 0], atol=1e-15)
    assert result.benchmark_equity.iloc[-1] == pytest.approx(1 - c)
    assert result.benchmark_metrics["n_trades"] == 1
    assert result.benchmark_metrics["exposure"] == 1.0
    assert list(result.benchmark_returns.index) == list(result.returns.index)


# --------------------------------------------------------------------------------------------------
# Metrics by hand


def test_metrics_by_hand():
    # Open-to-open moves +10%, -20%, +5%, +10%, +25% with positions +1, +1, 0, -1, +1 and no costs:
    # net returns +0.10, -0.20, 0, -0.10, +0.25.
    opens = [100.0, 100.0, 110.0, 88.0, 92.4, 101.64, 127.05]
    candles = candles_from_opens(opens)  # daily bars -> 365.25 bars per year
    result = backtest(candles, signals_on(candles, [BUY, BUY, HOLD, SELL, BUY]), NO_COST)
    r = [0.10, -0.20, 0.0, -0.10, 0.25]
    np.testing.assert_allclose(result.returns.to_numpy(), r, atol=1e-12)
    np.testing.assert_allclose(result.equity.to_numpy(), [1.0, 1.1, 0.88, 0.88, 0.792, 0.99], atol=1e-12)
    m = result.metrics
    assert set(m) == set(METRIC_KEYS) == set(result.benchmark_metrics)
    assert result.bars_per_year == pytest.approx(365.25)
    assert m["total_return"] == pytest.approx(-0.01)
    assert m["annual_return"] == pytest.approx(0.99 ** (365.25 / 5) - 1)
    assert m["max_drawdown"] == pytest.approx(0.792 / 1.1 - 1)  # peak 1.1, trough 0.792: -28%
    assert m["hit_rate"] == pytest.approx(2 / 4)  # in the market 4 periods, 2 of them positive
    assert m["exposure"] == pytest.approx(4 / 5)
    assert m["n_trades"] == 4  # 0->1, 1->0, 0->-1, -1->1
    assert m["n_periods"] == 5
    assert m["turnover"] == pytest.approx((1 + 0 + 1 + 1 + 2) * 365.25 / 5)
    assert m["sharpe"] == pytest.approx(statistics.mean(r) / statistics.stdev(r) * math.sqrt(365.25))
    downside = math.sqrt(sum(min(x, 0.0) ** 2 for x in r) / len(r))
    assert m["sortino"] == pytest.approx(statistics.mean(r) / downside * math.sqrt(365.25))
    # Benchmark: long all five periods, 127.05 / 100 overall.
    assert result.benchmark_metrics["total_return"] == pytest.approx(0.2705)
    assert result.benchmark_metrics["max_drawdown"] == pytest.approx(-0.20)


def test_bar_defaults_to_median_spacing_and_can_be_given():
    candles = random_walk(50, seed=10)  # 30-minute bars
    signals = signals_on(candles, np.full(40, BUY))
    assert backtest(candles, signals, NO_COST).bars_per_year == pytest.approx(365.25 * 48)
    given = backtest(candles, signals, NO_COST, bar=pd.Timedelta(hours=1))
    assert given.bars_per_year == pytest.approx(365.25 * 24)


def test_never_trading_has_zero_ratios():
    candles = random_walk(20, seed=11)
    result = backtest(candles, signals_on(candles, [HOLD] * 15), BacktestConfig())
    m = result.metrics
    assert (m["total_return"], m["sharpe"], m["sortino"], m["max_drawdown"]) == (0.0, 0.0, 0.0, 0.0)
    assert (m["hit_rate"], m["exposure"], m["turnover"], m["n_trades"]) == (0.0, 0.0, 0.0, 0)


# --------------------------------------------------------------------------------------------------
# Deflated Sharpe ratio


def by_hand(returns: list[float], n_trials: int) -> tuple[float, float]:
    """DSR and PSR written out with the standard library, independent of the module."""
    t = len(returns)
    mean = sum(returns) / t
    sr = mean / statistics.stdev(returns)
    m2 = sum((x - mean) ** 2 for x in returns) / t
    skew = sum((x - mean) ** 3 for x in returns) / t / m2**1.5
    kurt = sum((x - mean) ** 4 for x in returns) / t / m2**2
    nd = NormalDist()
    sr0 = 0.0
    if n_trials > 1:
        sr0 = math.sqrt(1 / (t - 1)) * (
            (1 - EULER_GAMMA) * nd.inv_cdf(1 - 1 / n_trials)
            + EULER_GAMMA * nd.inv_cdf(1 - 1 / (n_trials * math.e))
        )
    denom = math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2)
    return nd.cdf((sr - sr0) * math.sqrt(t - 1) / denom), nd.cdf(sr * math.sqrt(t - 1) / denom)


SMALL = [0.012, -0.004, 0.021, 0.007, -0.015, 0.018, 0.003, 0.009, -0.002, 0.011]


def test_deflated_sharpe_matches_hand_computation():
    out = deflated_sharpe(np.array(SMALL), n_trials=10)
    dsr, psr = by_hand(SMALL, 10)
    assert out["dsr"] == pytest.approx(dsr, rel=1e-12)
    assert out["psr"] == pytest.approx(psr, rel=1e-12)
    assert out["T"] == 10 and out["n_trials"] == 10
    assert out["sharpe_per_period"] == pytest.approx(statistics.mean(SMALL) / statistics.stdev(SMALL))
    assert 0 < out["dsr"] < out["psr"] < 1


def test_deflated_sharpe_reproduces_the_paper_example():
    # Bailey & López de Prado (2014), numerical example: annualised SR 2.5 over 5 years of daily returns
    # (T = 1250), skew -3, kurtosis 10, N = 100 trials with annualised V[SR] = 1/2 -> DSR ≈ 0.9004.
    out = deflated_sharpe_from_moments(2.5 / math.sqrt(250), -3.0, 10.0, 1250, 100, sr_variance=0.5 / 250)
    assert out["dsr"] == pytest.approx(0.9004, abs=1e-4)
    assert out["sr0"] * math.sqrt(250) == pytest.approx(1.789, abs=1e-3)


def test_dsr_decreases_with_trials_and_equals_psr_for_one_trial():
    returns = pd.Series(SMALL)
    dsr = [deflated_sharpe(returns, n)["dsr"] for n in (1, 2, 5, 10, 50, 100, 1000)]
    assert all(a > b for a, b in zip(dsr, dsr[1:], strict=False))
    one = deflated_sharpe(returns, 1)
    assert one["sr0"] == 0.0
    assert one["dsr"] == one["psr"] == pytest.approx(by_hand(SMALL, 1)[1], rel=1e-12)
    # A given sr_variance scales SR0 by sqrt(V / (1 / (T - 1))) and is ignored for N = 1.
    base = deflated_sharpe(returns, 20)
    wide = deflated_sharpe(returns, 20, sr_variance=4 / 9)
    assert wide["sr0"] == pytest.approx(base["sr0"] * math.sqrt((4 / 9) * 9))
    assert deflated_sharpe(returns, 1, sr_variance=4 / 9)["sr0"] == 0.0


def test_deflated_sharpe_degenerate_inputs():
    flat = deflated_sharpe(np.zeros(20), n_trials=5)
    assert math.isnan(flat["dsr"]) and math.isnan(flat["psr"]) and math.isnan(flat["sharpe_per_period"])
    assert not flat["dsr"] > 0.95
    # Moments violating Pearson's inequality would make the variance term negative: the clip keeps it finite.
    clipped = deflated_sharpe_from_moments(0.5, 3.0, 1.0, 100, 10)
    assert 0.0 <= clipped["dsr"] <= 1.0 and math.isfinite(clipped["dsr"])


# --------------------------------------------------------------------------------------------------
# No edge on a random walk; a planted edge is detected


def momentum_signals(candles: pd.DataFrame, lookback: int = 5, band: float = 0.002) -> pd.Series:
    """Buy after a rise of more than ``band`` over ``lookback`` bars, sell after a fall, else hold."""
    past = np.log(candles["close"]).diff(lookback)
    codes = np.select([past > band, past < -band], [BUY, SELL], default=HOLD)
    return pd.Series(codes, index=candles.index).iloc[lookback:]


@pytest.mark.parametrize("config", [BacktestConfig(), NO_COST], ids=["after_fees", "no_fees"])
def test_random_walk_has_no_significant_edge(config):
    candles = random_walk(5000, seed=21)
    rng = np.random.default_rng(22)
    for signals in (signals_on(candles, rng.integers(0, 3, size=5000)), momentum_signals(candles)):
        result = backtest(candles, signals, config)
        stats = deflated_sharpe(result.returns, n_trials=50)
        assert stats["dsr"] < 0.95 and stats["psr"] < 0.95, (config, stats)
        if config == BacktestConfig():
            assert result.metrics["total_return"] < 0


def test_momentum_would_look_brilliant_with_same_bar_look_ahead():
    # Power check for the previous test: scoring 1-bar momentum on the return of the bar that produced the
    # signal (the look-ahead the backtest forbids), even after the same costs, yields an overwhelming PSR.
    candles = random_walk(5000, seed=21)
    signals = momentum_signals(candles, lookback=1, band=0.0)
    position = signals.map({BUY: 1.0, SELL: -1.0, HOLD: 0.0})
    cost = BacktestConfig().cost * position.diff().abs().fillna(position.abs())
    leaked = position * candles["close"].pct_change().loc[signals.index] - cost
    assert deflated_sharpe(leaked.to_numpy(), n_trials=50)["psr"] > 0.99
    honest = backtest(candles, signals, BacktestConfig()).returns
    assert deflated_sharpe(honest, n_trials=50)["psr"] < 0.95


def test_psr_is_calibrated_on_random_walks_without_fees():
    # Under the null (no edge, no costs) the PSR is ~uniform, so PSR > 0.95 should happen in ~5% of
    # independent random walks: far more means leakage or an inflated SR (e.g. annualised), far fewer a
    # statistic that can never reject.
    psr = np.array(
        [
            deflated_sharpe(backtest(c, momentum_signals(c, lookback=1, band=0.0), NO_COST).returns, 1)["psr"]
            for c in (random_walk(2000, seed=seed) for seed in range(200))
        ]
    )
    assert 0.01 <= (psr > 0.95).mean() <= 0.10
    assert 0.35 <= np.median(psr) <= 0.65


def test_planted_edge_is_detected_after_fees():
    # Signals first; then each open-to-open move after the signal drifts 0.3% in the signal's direction
    # (noise 1%), so position_t * (open[t+2] / open[t+1] - 1) has a known positive mean.
    n = 5000
    rng = np.random.default_rng(31)
    codes = rng.integers(0, 3, size=n)
    direction = np.select([codes == BUY, codes == SELL], [1.0, -1.0], default=0.0)
    log_moves = 0.003 * direction + 0.01 * rng.standard_normal(n)
    # open[t+2] / open[t+1] = exp(log_moves[t]); open[0] and open[1] are both 100.
    opens = 100.0 * np.exp(np.concatenate(([0.0, 0.0], np.cumsum(log_moves))))
    candles = candles_from_opens(opens, freq="30min")
    result = backtest(candles, signals_on(candles, codes), BacktestConfig())
    stats = deflated_sharpe(result.returns, n_trials=50)
    assert stats["psr"] > 0.99 and stats["dsr"] > 0.95, stats
    assert result.metrics["total_return"] > result.benchmark_metrics["total_return"]


# --------------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"mode": "short_only"}, ValueError, "mode must be one of 'long_short', 'long_only'"),
        ({"hold": "close"}, ValueError, "hold must be one of 'flat', 'keep'"),
        ({"fee_bps": -1.0}, ValueError, "fee_bps must be a finite number >= 0"),
        ({"slippage_bps": -0.5}, ValueError, "slippage_bps must be a finite number >= 0"),
        ({"fee_bps": float("nan")}, ValueError, "fee_bps"),
        ({"fee_bps": "10"}, TypeError, "fee_bps must be a number"),
        ({"slippage_bps": True}, TypeError, "slippage_bps must be a number"),
        ({"mode": 1}, TypeError, "mode must be a str"),
        ({"hold": None}, TypeError, "hold must be a str"),
    ],
)
def test_config_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        BacktestConfig(**kwargs)


def test_config_accepts_int_costs():
    assert BacktestConfig(fee_bps=0, slippage_bps=2).cost == pytest.approx(2e-4)


@pytest.mark.parametrize(
    "values",
    [
        [BUY, 3, HOLD],
        [BUY, np.nan, HOLD],
        [BUY, -1, SELL],
        [1.5, 1, 1],
        ["buy", "long", "sell"],
        ["buy", True, 2],
    ],
)
def test_invalid_signal_values_are_refused(values):
    candles = candles_from_opens([100.0] * 6)
    with pytest.raises(ValueError, match="signals must be 0 \\(sell\\), 1 \\(hold\\), 2 \\(buy\\)"):
        backtest(candles, signals_on(candles, values), BacktestConfig())


def test_boolean_signals_are_refused():
    candles = candles_from_opens([100.0] * 6)
    with pytest.raises(ValueError, match="booleans"):
        backtest(candles, signals_on(candles, [True, False, True]), BacktestConfig())


@pytest.mark.parametrize("hold", ["keep", "flat"])
def test_candles_without_a_signal_between_signals_are_flat(hold):
    """Rows dropped next to a gap have no signal: the bot is flat there, and a hold right after them
    does not bring back the position it had before."""
    candles = candles_from_opens([100.0, 101.0, 103.0, 102.0, 104.0, 106.0, 105.0, 107.0])
    skipping = pd.Series([BUY, BUY, HOLD, SELL], index=candles.index[[0, 1, 4, 5]])
    bt = backtest(candles, skipping, BacktestConfig(hold=hold, fee_bps=10, slippage_bps=0))
    # periods start at rows 1..6: long, long, flat, flat, flat (hold after the missing rows), short
    assert bt.position.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    opens = candles["open"].to_numpy()
    gross = [opens[t + 2] / opens[t + 1] - 1 for t in range(6)]
    cost = 10 / 1e4
    expected = [gross[0] - cost, gross[1], -cost, 0.0, 0.0, -gross[5] - cost]
    np.testing.assert_allclose(bt.returns.to_numpy(), expected)


def test_signal_index_problems_are_refused():
    candles = candles_from_opens([100.0] * 8)
    cfg = BacktestConfig()
    outside = pd.Series([BUY], index=[pd.Timestamp("2030-01-01", tz="UTC")])
    with pytest.raises(ValueError, match="not candle timestamps"):
        backtest(candles, outside, cfg)
    naive = pd.Series([BUY, BUY], index=candles.index[:2].tz_localize(None))
    with pytest.raises(ValueError, match="time zones"):
        backtest(candles, naive, cfg)
    with pytest.raises(ValueError, match="no signal has an open two bars later"):
        backtest(candles, signals_on(candles, [BUY, BUY], start=6), cfg)
    with pytest.raises(ValueError, match="empty"):
        backtest(candles, pd.Series([], index=candles.index[:0], dtype=int), cfg)
    with pytest.raises(ValueError, match="unique and strictly increasing"):
        backtest(candles, pd.Series([BUY, BUY], index=candles.index[[2, 1]]), cfg)


def test_bad_argument_types_are_refused():
    candles = candles_from_opens([100.0] * 8)
    signals = signals_on(candles, [BUY] * 4)
    with pytest.raises(TypeError, match="config must be a BacktestConfig"):
        backtest(candles, signals, {"mode": "long_only"})
    with pytest.raises(TypeError, match="bar must be a pandas Timedelta"):
        backtest(candles, signals, BacktestConfig(), bar="1h")
    with pytest.raises(ValueError, match="bar must be positive"):
        backtest(candles, signals, BacktestConfig(), bar=pd.Timedelta(0))
    with pytest.raises(ValueError, match="'open' column"):
        backtest(candles.drop(columns="open"), signals, BacktestConfig())
    bad_open = candles.copy()
    bad_open.iloc[2, bad_open.columns.get_loc("open")] = 0.0
    with pytest.raises(ValueError, match="open prices must be finite and > 0"):
        backtest(bad_open, signals, BacktestConfig())


def test_deflated_sharpe_validation():
    with pytest.raises(ValueError, match="at least T = 3"):
        deflated_sharpe([0.01, 0.02], n_trials=1)
    with pytest.raises(ValueError, match="n_trials must be >= 1"):
        deflated_sharpe(SMALL, n_trials=0)
    with pytest.raises(TypeError, match="n_trials must be an int"):
        deflated_sharpe(SMALL, n_trials=2.5)
    with pytest.raises(ValueError, match="sr_variance must be a finite number > 0"):
        deflated_sharpe(SMALL, n_trials=5, sr_variance=0.0)
    with pytest.raises(ValueError, match="finite"):
        deflated_sharpe([0.01, np.nan, 0.02, 0.03], n_trials=5)
