"""Trading backtest of a buy/sell/hold signal series, and the deflated Sharpe ratio.

Pure numpy/pandas, vectorised, no tracking calls. The one rule that matters most: no same-bar look-ahead.
The signal of bar t is only known at bar t's close, so the position it implies is entered at the *open*
of bar t+1 and held until the open of bar t+2, when the next decision executes::

    r_t = p_t * (open[t+2] / open[t+1] - 1) - cost * |p_t - p_{t-1}|,   cost = (fee_bps + slippage_bps) / 1e4

with p_{-1} = 0 (the first position is entered from flat). Only opens are used, so a gap between close[t]
and open[t+1] is never earned. Neither the strategy nor the benchmark pays for liquidating its final
position: both are marked to market at the last open, so they stay comparable.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from datetime import timedelta
from statistics import NormalDist

import numpy as np
import pandas as pd

from evaluation.nulls import Traded
from models.policy import MODES, NOT_READY, DecisionPolicy, net_returns

HOLDS: tuple[str, ...] = ("flat", "keep")
SIGNAL_CODES: dict[str, int] = {"sell": 0, "hold": 1, "buy": 2}
YEAR = pd.Timedelta(days=365.25)  # crypto trades around the clock, every day of the year
EULER_GAMMA = 0.5772156649015329
# Floor for the PSR variance term; see deflated_sharpe_from_moments for why it is (almost) never hit.
_MIN_VARIANCE_TERM = 1e-12
_NORMAL = NormalDist()

METRIC_KEYS: tuple[str, ...] = (
    "total_return",
    "annual_return",
    "sharpe",
    "sortino",
    "max_drawdown",
    "hit_rate",
    "turnover",
    "exposure",
    "n_periods",
    "n_trades",
)


@dataclass(frozen=True)
class BacktestConfig:
    """How signals become positions, and what a position change costs.

    ``mode``: ``"long_short"`` (sell = short 1) or ``"long_only"`` (sell = flat).
    ``hold``: ``"flat"`` (hold = no position) or ``"keep"`` (hold = keep the previous position; a hold before
    any buy/sell is flat). ``fee_bps`` and ``slippage_bps`` are charged per unit of notional traded.
    """

    mode: str = "long_short"
    hold: str = "flat"
    fee_bps: float = 10.0
    slippage_bps: float = 5.0

    def __post_init__(self) -> None:
        for name, allowed in (("mode", MODES), ("hold", HOLDS)):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"BacktestConfig.{name} must be a str, got {type(value).__name__} {value!r}")
            if value not in allowed:
                raise ValueError(
                    f"BacktestConfig.{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}"
                )
        for name in ("fee_bps", "slippage_bps"):
            value = getattr(self, name)
            # bool is a Real subclass, but fee_bps=True is certainly a bug.
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(
                    f"BacktestConfig.{name} must be a number (basis points), "
                    f"got {type(value).__name__} {value!r}"
                )
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"BacktestConfig.{name} must be a finite number >= 0, got {value!r}")

    @property
    def cost(self) -> float:
        """Cost per unit of notional traded, as a fraction (15 bps -> 0.0015)."""
        return (self.fee_bps + self.slippage_bps) / 1e4


@dataclass
class BacktestResult:
    """Per-period series and metrics of a strategy and its buy-and-hold benchmark.

    ``returns``/``position``/``benchmark_returns`` are indexed by the timestamp of the bar at whose open
    the period starts (bar t+1 for the signal of bar t). ``equity``/``benchmark_equity`` have one more
    point: 1.0 at the first period's open, then the value at the open ending each period.
    """

    returns: pd.Series
    position: pd.Series
    equity: pd.Series
    benchmark_returns: pd.Series
    benchmark_equity: pd.Series
    metrics: dict[str, float]
    benchmark_metrics: dict[str, float]
    n_dropped: int
    bars_per_year: float
    config: BacktestConfig = field(default_factory=BacktestConfig)
    market_returns: pd.Series | None = None  # open-to-open return of each period, before any position

    def traded(self) -> Traded:
        """What the strategy traded, for the gate's nulls (``evaluation.nulls``)."""
        if self.market_returns is None:
            raise ValueError("this backtest has no market returns to judge its positions against")
        return Traded(self.position.to_numpy(), self.market_returns.to_numpy(), self.config.cost)


# --------------------------------------------------------------------------------------------------
# Input checks


def _signal_codes(signals: pd.Series) -> np.ndarray:
    """Signals as int codes 0/1/2; anything but 0/1/2 or "sell"/"hold"/"buy" raises ValueError."""
    if pd.api.types.is_bool_dtype(signals.dtype):
        raise ValueError("signals are booleans; expected 0 (sell), 1 (hold), 2 (buy) or 'sell'/'hold'/'buy'")
    if pd.api.types.is_numeric_dtype(signals.dtype):
        values = signals.to_numpy(dtype=float, na_value=np.nan)
        bad = ~np.isin(values, (0.0, 1.0, 2.0))  # NaN is never in the set, so it is caught here too
    else:
        # Object/string column: map names and integers; a bool hidden in an object column is refused
        # explicitly because True == 1 would silently pass as "hold".
        mapping: dict[object, int] = {0: 0, 1: 1, 2: 2}
        mapping.update((name, code) for name, code in SIGNAL_CODES.items())
        is_bool = signals.map(lambda v: isinstance(v, bool | np.bool_)).to_numpy(dtype=bool)
        mapped = signals.map(lambda v: mapping.get(v, -1) if isinstance(v, str | numbers.Real) else -1)
        values = mapped.to_numpy(dtype=float)
        bad = is_bool | (values < 0)
    if bad.any():
        rows = np.flatnonzero(bad)
        shown = ", ".join(f"{signals.index[i]}: {signals.iloc[i]!r}" for i in rows[:3])
        raise ValueError(
            f"signals must be 0 (sell), 1 (hold), 2 (buy) or 'sell'/'hold'/'buy'; "
            f"{len(rows)} invalid value(s), e.g. {shown}"
        )
    return values.astype(np.int64)


def _check_inputs(candles: pd.DataFrame, signals: pd.Series, config: BacktestConfig) -> np.ndarray:
    """Validate the inputs; return the candle row position of every signal."""
    if not isinstance(candles, pd.DataFrame):
        raise TypeError(f"candles must be a pandas DataFrame, got {type(candles).__name__}")
    if not isinstance(signals, pd.Series):
        raise TypeError(f"signals must be a pandas Series, got {type(signals).__name__}")
    if not isinstance(config, BacktestConfig):
        raise TypeError(f"config must be a BacktestConfig, got {type(config).__name__}")
    if "open" not in candles.columns:
        raise ValueError(
            f"candles need an 'open' column (trades execute at the open); got {list(candles.columns)}"
        )
    for name, index in (("candles", candles.index), ("signals", signals.index)):
        if not isinstance(index, pd.DatetimeIndex):
            raise ValueError(f"{name} must be indexed by a DatetimeIndex, got {type(index).__name__}")
        if not (index.is_unique and index.is_monotonic_increasing):
            raise ValueError(
                f"{name} timestamps must be unique and strictly increasing (they are never re-sorted)"
            )
    if (candles.index.tz is None) != (signals.index.tz is None):
        raise ValueError(
            f"candles and signals disagree on time zones (candles tz={candles.index.tz}, "
            f"signals tz={signals.index.tz}); use tz-aware UTC timestamps for both"
        )
    if len(signals) == 0:
        raise ValueError("signals is empty; nothing to backtest")
    rows = candles.index.get_indexer(signals.index)
    if (rows < 0).any():
        missing = signals.index[rows < 0]
        raise ValueError(
            f"{len(missing)} signal timestamp(s) are not candle timestamps, e.g. {list(missing[:3])}; "
            "signals must be indexed by a subset of the candle index"
        )
    return rows


def _bars_per_year(candles: pd.DataFrame, bar: pd.Timedelta | None) -> float:
    """365.25 days / bar; ``bar`` defaults to the median spacing of the candles."""
    if bar is None:
        if len(candles) < 2:
            raise ValueError("cannot infer the bar size from fewer than 2 candles; pass bar=")
        bar = pd.Series(candles.index).diff().median()
    elif isinstance(bar, timedelta) or isinstance(bar, np.timedelta64):
        bar = pd.Timedelta(bar)
    else:
        raise TypeError(f"bar must be a pandas Timedelta or None, got {type(bar).__name__} {bar!r}")
    if not bar > pd.Timedelta(0):
        raise ValueError(f"bar must be positive, got {bar}")
    return float(YEAR / bar)


# --------------------------------------------------------------------------------------------------
# Positions, returns, metrics


def _positions(codes: np.ndarray, config: BacktestConfig, sizes: np.ndarray | None = None) -> np.ndarray:
    """Signal codes -> positions under the configured mode and hold rule: +-1, or +-size with ``sizes``
    (a bet-sized policy, ``models.policy``)."""
    return DecisionPolicy(mode=config.mode, on_hold=config.hold).positions_from_actions(codes, sizes)


def compute_metrics(returns: np.ndarray, position: np.ndarray, bars_per_year: float) -> dict[str, float]:
    """Performance metrics of net per-period returns and the positions that produced them.

    The first position is traded from flat. Undefined ratios (no variance, no downside, never in the
    market) are reported as 0.0 so the dict stays finite for logging.
    """
    r = np.asarray(returns, dtype=float)
    p = np.asarray(position, dtype=float)
    n = len(r)
    if n == 0 or len(p) != n:
        raise ValueError(f"need matching, non-empty returns and positions, got {n} and {len(p)}")
    equity = np.concatenate(([1.0], np.cumprod(1.0 + r)))
    total = float(equity[-1] - 1.0)
    # A total loss (equity <= 0) cannot be annualised geometrically; it is -100% per year too.
    annual = float(equity[-1] ** (bars_per_year / n) - 1.0) if equity[-1] > 0 else -1.0
    mean = float(r.mean())
    std = float(r.std(ddof=1)) if n > 1 else 0.0
    # np.ptp == 0 catches a constant series whose std comes out as rounding noise instead of 0.
    sharpe = mean / std * math.sqrt(bars_per_year) if std > 0 and np.ptp(r) > 0 else 0.0
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))  # over all periods, target 0
    sortino = mean / downside * math.sqrt(bars_per_year) if downside > 0 else 0.0
    drawdown = equity / np.maximum.accumulate(equity) - 1.0
    in_market = p != 0
    changes = np.abs(np.diff(p, prepend=0.0))
    return {
        "total_return": total,
        "annual_return": annual,
        "sharpe": float(sharpe),
        "sortino": float(sortino),
        "max_drawdown": float(drawdown.min()),
        "hit_rate": float((r[in_market] > 0).mean()) if in_market.any() else 0.0,
        "turnover": float(changes.sum() * bars_per_year / n),
        "exposure": float(in_market.mean()),
        "n_periods": n,
        "n_trades": int(np.count_nonzero(changes)),
    }


def backtest(
    candles: pd.DataFrame,
    signals: pd.Series,
    config: BacktestConfig,
    bar: pd.Timedelta | None = None,
    sizes: pd.Series | np.ndarray | None = None,
) -> BacktestResult:
    """Backtest ``signals`` (0/1/2 or "sell"/"hold"/"buy", indexed by candle timestamps) on ``candles``.

    The signal of bar t trades at open[t+1] and earns open[t+2] / open[t+1] - 1; signals without an
    open[t+2] are dropped (``n_dropped``). Candle rows between the first and the last signal that have
    none (rows dropped next to a gap) are flat, and a hold after them stays flat. The benchmark is long 1
    over exactly the same periods and pays the entry cost once.

    ``sizes`` (one per signal, in [0, 1]; default 1) is the size a buy or sell is held at: a bet-sized
    policy's fractional positions. Every change of position, a resize included, pays the cost on the
    notional traded.
    """
    rows = _check_inputs(candles, signals, config)
    bars_per_year = _bars_per_year(candles, bar)
    codes = _signal_codes(signals)
    if sizes is not None:
        sizes = np.asarray(sizes, dtype=float)
        if len(sizes) != len(codes) or not (np.isfinite(sizes) & (sizes >= 0) & (sizes <= 1)).all():
            raise ValueError(f"sizes must be {len(codes)} numbers in [0, 1], one per signal")
    # Candle rows without a signal between the first and the last (rows dropped next to a gap, whose
    # indicators or label would span it) are flat: the bot had nothing it could act on there.
    span = np.arange(rows[0], rows[-1] + 1)
    if len(span) > len(rows):
        filled = np.full(len(span), NOT_READY, dtype=np.int64)
        filled[rows - rows[0]] = codes
        if sizes is not None:
            full = np.zeros(len(span))
            full[rows - rows[0]] = sizes
            sizes = full
        rows, codes = span, filled
    # Positions are computed on all signals (hold="keep" carries forward), then the tail that cannot be
    # held to an open[t+2] is dropped; dropping only ever removes the last signals.
    position_all = _positions(codes, config, sizes)
    usable = rows + 2 < len(candles)
    n_dropped = int(np.count_nonzero(~usable))
    if not usable.any():
        raise ValueError(
            f"no signal has an open two bars later (all {n_dropped} dropped); "
            "the candles must extend at least two bars past the first signal"
        )
    rows, position = rows[usable], position_all[usable]
    opens = candles["open"].to_numpy(dtype=float)
    entry, exit_ = opens[rows + 1], opens[rows + 2]
    bad = ~(np.isfinite(entry) & np.isfinite(exit_) & (entry > 0) & (exit_ > 0))
    if bad.any():
        raise ValueError(
            f"open prices must be finite and > 0 where trades execute; {int(bad.sum())} period(s) are not, "
            f"e.g. the one starting {candles.index[rows[bad][0] + 1]}"
        )
    period_return = exit_ / entry - 1.0
    cost = config.cost
    returns_arr = net_returns(position, period_return, cost)
    bench_arr = period_return.copy()
    bench_arr[0] -= cost  # the benchmark buys once, at the first period's open

    start = candles.index[rows + 1]
    marks = candles.index[np.concatenate(([rows[0] + 1], rows + 2))]
    returns = pd.Series(returns_arr, index=start, name="strategy")
    bench = pd.Series(bench_arr, index=start, name="benchmark")
    return BacktestResult(
        returns=returns,
        position=pd.Series(position, index=start, name="position"),
        equity=pd.Series(np.concatenate(([1.0], np.cumprod(1.0 + returns_arr))), index=marks, name="equity"),
        benchmark_returns=bench,
        benchmark_equity=pd.Series(
            np.concatenate(([1.0], np.cumprod(1.0 + bench_arr))), index=marks, name="benchmark_equity"
        ),
        metrics=compute_metrics(returns_arr, position, bars_per_year),
        benchmark_metrics=compute_metrics(bench_arr, np.ones_like(bench_arr), bars_per_year),
        n_dropped=n_dropped,
        bars_per_year=bars_per_year,
        config=config,
        market_returns=pd.Series(period_return, index=start, name="market"),
    )


# --------------------------------------------------------------------------------------------------
# Deflated Sharpe ratio


def expected_max_sharpe(n_trials: int, sr_variance: float) -> float:
    """SR0: the expected maximum of ``n_trials`` null Sharpe estimates with variance ``sr_variance``.

    SR0 = sqrt(V) * ((1 - γ) Φ⁻¹(1 - 1/N) + γ Φ⁻¹(1 - 1/(N e))), γ = Euler–Mascheroni; 0 for N = 1.
    """
    if n_trials == 1:
        return 0.0  # one trial, no selection: the formula's Φ⁻¹(0) = -inf is replaced by the plain null
    z1 = _NORMAL.inv_cdf(1.0 - 1.0 / n_trials)
    z2 = _NORMAL.inv_cdf(1.0 - 1.0 / (n_trials * math.e))
    return math.sqrt(sr_variance) * ((1.0 - EULER_GAMMA) * z1 + EULER_GAMMA * z2)


def _psr(sr: float, benchmark: float, skew: float, kurtosis: float, n_obs: int) -> float:
    """Probabilistic Sharpe ratio Φ((SR - SR*) sqrt(T - 1) / sqrt(1 - γ3 SR + (γ4 - 1)/4 SR²))."""
    variance_term = 1.0 - skew * sr + (kurtosis - 1.0) / 4.0 * sr**2
    z = (sr - benchmark) * math.sqrt(n_obs - 1) / math.sqrt(max(variance_term, _MIN_VARIANCE_TERM))
    return _NORMAL.cdf(z)


def _check_trials(n_obs: int, n_trials: int, sr_variance: float | None) -> None:
    for name, value in (("T", n_obs), ("n_trials", n_trials)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if n_obs < 3:
        raise ValueError(f"need at least T = 3 returns for skewness and kurtosis, got T = {n_obs}")
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1 (the number of strategies tried), got {n_trials}")
    if sr_variance is not None:
        if isinstance(sr_variance, bool) or not isinstance(sr_variance, numbers.Real):
            raise TypeError(f"sr_variance must be a number or None, got {type(sr_variance).__name__}")
        if not (math.isfinite(sr_variance) and sr_variance > 0):
            raise ValueError(f"sr_variance must be a finite number > 0, got {sr_variance!r}")


def deflated_sharpe_from_moments(
    sharpe_per_period: float,
    skew: float,
    kurtosis: float,
    n_obs: int,
    n_trials: int,
    sr_variance: float | None = None,
    sr_null_mean: float = 0.0,
) -> dict[str, float]:
    """Deflated Sharpe ratio from a per-period (not annualised) SR and the returns' moments.

    ``kurtosis`` is the plain (non-excess) kurtosis, 3 for a normal. Formulas and defaults as in
    :func:`deflated_sharpe`. The variance term 1 - γ3 SR + (γ4 - 1)/4 SR² is clipped at 1e-12: with
    sample moments γ4 >= 1 + γ3² (Pearson's inequality), so the term is >= 1 - γ3²/(γ4 - 1) >= 0 for every
    SR, and it reaches 0 only for a two-valued series (or through rounding); the clip keeps the square
    root defined there instead of raising.
    """
    _check_trials(n_obs, n_trials, sr_variance)
    variance = 1.0 / (n_obs - 1) if sr_variance is None else float(sr_variance)
    if not math.isfinite(sr_null_mean):
        raise ValueError(f"sr_null_mean must be finite, got {sr_null_mean!r}")
    sr0 = sr_null_mean + expected_max_sharpe(int(n_trials), variance)
    return {
        "sharpe_per_period": float(sharpe_per_period),
        "sr0": float(sr0),
        "dsr": float(_psr(sharpe_per_period, sr0, skew, kurtosis, n_obs)),
        "psr": float(_psr(sharpe_per_period, 0.0, skew, kurtosis, n_obs)),
        "n_trials": int(n_trials),
        "T": int(n_obs),
        "skew": float(skew),
        "kurtosis": float(kurtosis),
        "sr_variance": variance,
        "sr_null_mean": float(sr_null_mean),
    }


def deflated_sharpe(
    returns: np.ndarray | pd.Series,
    n_trials: int,
    sr_variance: float | None = None,
    sr_null_mean: float = 0.0,
) -> dict[str, float]:
    """Deflated Sharpe ratio (Bailey & López de Prado, 2014) of per-period net returns.

    D. H. Bailey and M. López de Prado, "The Deflated Sharpe Ratio: Correcting for Selection Bias,
    Backtest Overfitting and Non-Normality", Journal of Portfolio Management 40(5), 2014, pp. 94-107.

    SR = mean / std (ddof=1, per period, not annualised); γ3, γ4 = skewness and non-excess kurtosis from
    population central moments; T = number of returns. The benchmark is the expected maximum SR of
    ``n_trials`` skill-less trials, SR0 = sqrt(V) ((1 - γ) Φ⁻¹(1 - 1/N) + γ Φ⁻¹(1 - 1/(N e))), and

        DSR = Φ((SR - SR0) sqrt(T - 1) / sqrt(1 - γ3 SR + (γ4 - 1)/4 SR²)).

    V is ``sr_variance`` (the variance of the Sharpe ratios across the trials actually run, per period) if
    given. Otherwise V = 1/(T - 1), the variance of the SR estimator under the null of zero skill with
    normal returns: the right spread when the trials are skill-less strategies on the same T periods, and
    the same scale as the test statistic's sqrt(T - 1). For N = 1, SR0 = 0 and DSR equals the PSR.
    ``sr_null_mean`` moves the no-skill centre from 0 (e.g. to the mean Sharpe ratio of the strategy's
    own positions shifted in time, which keeps what drift pays for its exposure): SR0 = centre + the
    expected maximum above. ``psr`` is always the PSR against SR* = 0.

    A constant series (e.g. a strategy that never trades) has no Sharpe ratio: sharpe_per_period, skew,
    kurtosis, dsr and psr are then NaN, so a check like ``dsr > 0.95`` fails instead of passing.
    Raises ValueError for T < 3, n_trials < 1 or non-finite returns.
    """
    r = np.asarray(returns, dtype=float)
    if r.ndim != 1:
        raise ValueError(f"returns must be one-dimensional, got shape {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError(f"returns must be finite; {int((~np.isfinite(r)).sum())} are NaN or infinite")
    _check_trials(len(r), n_trials, sr_variance)
    centred = r - r.mean()
    m2 = float(np.mean(centred**2))
    if np.ptp(r) == 0 or m2 == 0:
        out = deflated_sharpe_from_moments(0.0, 0.0, 3.0, len(r), n_trials, sr_variance, sr_null_mean)
        nan = float("nan")
        return {**out, "sharpe_per_period": nan, "dsr": nan, "psr": nan, "skew": nan, "kurtosis": nan}
    sr = float(r.mean() / r.std(ddof=1))
    skew = float(np.mean(centred**3)) / m2**1.5
    kurtosis = float(np.mean(centred**4)) / m2**2
    return deflated_sharpe_from_moments(sr, skew, kurtosis, len(r), n_trials, sr_variance, sr_null_mean)
