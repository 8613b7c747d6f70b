"""Nulls a trader would accept for what the bot traded: the statistics behind the gate's economic checks.

Everything here looks at one traded object, :class:`Traded`: the decision policy's position in each holdout
period, the market's return over that period (open to open, ``evaluation.backtest``) and the cost per unit
of notional traded. Three nulls keep what is not skill:

* **timing** (:func:`timing_null`): the same position path shifted in time against the returns,
  circularly, by every offset. Every shifted path has the strategy's exposure, long/short balance,
  holding times and turnover, so the market's drift (and "always long") earns the same in all of them;
  only the timing of the positions is taken away.
* **alternatives** (:func:`paired_bootstrap`): the period-return differences against other traded
  series (flat, the informed baselines traded by the same policy rules, buy-and-hold), resampled
  together with a stationary bootstrap (Politis and Romano, 1994) from ``arch``.
* **block length** (:func:`block_length`): measured from the data with Politis and White's automatic
  rule (``arch.bootstrap.optimal_block_length``) on the strategy's returns and on its positions (how long
  they persist), never the label horizon alone.

Pure numpy (and ``arch``); no tracking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from arch.bootstrap import StationaryBootstrap, optimal_block_length

from models.policy import net_returns

# Fewer shifted paths than this cannot show significance at the usual levels (1 / (1 + K) is the
# smallest p-value K offsets can give).
MIN_OFFSETS = 19


@dataclass(frozen=True, eq=False)
class Traded:
    """What a strategy traded over consecutive periods: its position, the market's return, the cost.

    ``position[t]`` is held over period t, which earns ``market[t]``; every change of position (the first
    one from flat) pays ``cost`` per unit of notional. Fractional positions are fine.
    """

    position: np.ndarray
    market: np.ndarray
    cost: float

    def __post_init__(self) -> None:
        p, r = np.asarray(self.position, dtype=float), np.asarray(self.market, dtype=float)
        if p.shape != r.shape or p.ndim != 1:
            raise ValueError(f"positions {p.shape} and market returns {r.shape} must be 1-d and match")
        if not (np.isfinite(p).all() and np.isfinite(r).all()):
            raise ValueError("positions and market returns must be finite")
        object.__setattr__(self, "position", p)
        object.__setattr__(self, "market", r)

    @property
    def net(self) -> np.ndarray:
        """After-cost return per period."""
        return net_returns(self.position, self.market, self.cost)

    def with_position(self, position) -> Traded:
        """The same market and costs, another position path (a baseline traded the same way)."""
        return Traded(np.asarray(position, dtype=float), self.market, self.cost)

    def __len__(self) -> int:
        return len(self.position)


def holding_period(position: np.ndarray) -> float:
    """Mean length, in periods, of the runs of one unchanged non-zero position; 0 when never in the market."""
    p = np.asarray(position, dtype=float)
    if not (p != 0).any():
        return 0.0
    starts = np.flatnonzero(np.diff(p, prepend=np.nan) != 0)
    lengths = np.diff(np.append(starts, len(p)))
    held = p[starts] != 0
    return float(lengths[held].mean())


def politis_white(x: np.ndarray) -> float:
    """Politis-White optimal stationary-bootstrap block length; 1 for a series too flat to measure."""
    x = np.asarray(x, dtype=float)
    if len(x) < 10 or np.ptp(x) == 0:
        return 1.0
    with np.errstate(all="ignore"):
        value = float(optimal_block_length(x)["stationary"].iloc[0])
    return value if math.isfinite(value) and value > 0 else 1.0


def block_length(traded: Traded) -> int:
    """Mean block length for resampling ``traded``'s periods: the larger of Politis and White's
    automatic choice on the strategy's after-cost returns and on its positions (so blocks span how long
    positions persist), at least 1 and at most a quarter of the periods (at least 4 blocks a resample)."""
    n = len(traded)
    measured = max(politis_white(traded.net), politis_white(traded.position))
    return int(min(max(1, math.ceil(measured)), max(1, n // 4)))


@dataclass(frozen=True)
class TimingNull:
    """The strategy against its own position path shifted in time (see :func:`timing_null`)."""

    p_value: float  # share of shifted paths (and the actual one) earning at least the actual mean
    mean_return: float  # actual after-cost mean return per period
    null_median: float  # median after-cost mean return per period of the shifted paths
    null_p95: float  # 95th percentile of the same
    percentile: float  # share of shifted paths the strategy beat (strictly)
    n_offsets: int
    min_offset: int  # shifts are min_offset .. n - min_offset periods (1: every circular shift)
    holding_period: float


def _shifted_means(traded: Traded) -> np.ndarray:
    """After-cost mean return per period of the position path circularly shifted by every k in 0..n-1.

    Shift k holds ``q_t = p[(t - k) mod n]``. Its gross return is the circular cross-correlation of the
    positions with the market returns (FFT, O(n log n)); its cost is the circular path's total variation,
    shift-invariant, less the jump at the wrap plus the first entry from flat.
    """
    p, r, n = traded.position, traded.market, len(traded)
    gross = _xcorr(p, r)  # gross[k] = sum_t p[t] r[t + k]
    k = np.arange(n)
    first, last = p[(-k) % n], p[(-k - 1) % n]
    turnover = np.abs(np.diff(p, append=p[0])).sum() - np.abs(first - last) + np.abs(first)
    return (gross - traded.cost * turnover) / n


def _xcorr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Circular cross-correlation: out[k] = sum_t a[t] b[t + k] (FFT)."""
    return np.fft.irfft(np.conj(np.fft.rfft(a)) * np.fft.rfft(b), len(a))


def shifted_sharpes(traded: Traded, min_offset: int) -> np.ndarray:
    """Per-period Sharpe ratio of the position path shifted circularly by each offset from ``min_offset``
    to ``n - min_offset``: the no-timing versions of this strategy, with its exposure, holding times and
    turnover, on the same periods. The path is treated as circular (its wrap is one change of position
    among many), so every moment is a cross-correlation computed by FFT."""
    p, r, c, n = traded.position, traded.market, traded.cost, len(traded)
    d = np.abs(p - np.roll(p, 1))  # circular changes of position; shift k moves them with the path
    total = _xcorr(p, r) - c * d.sum()
    squares = _xcorr(p * p, r * r) - 2 * c * _xcorr(p * d, r) + c * c * (d * d).sum()
    mean = total / n
    var = np.maximum(squares - n * mean**2, 0.0) / (n - 1)
    sd = np.sqrt(var)
    sharpe = np.divide(mean, sd, out=np.zeros(n), where=sd > 1e-15 * np.maximum(1.0, np.abs(mean)))
    m = int(max(1, min(min_offset, n // 4)))
    return sharpe[m : n - m + 1]


def timing_null(traded: Traded) -> TimingNull:
    """Did the timing of the positions earn more than the same positions at other times?

    The position path is shifted circularly against the returns by every offset 1 .. n - 1; each shifted
    path keeps the exposure, the long/short balance, the holding times and (but for the wrap) the
    turnover, so drift and "always long" earn alike in all of them. The p-value counts the actual path
    with the shifted ones, ties against the strategy: (1 + #{shifted >= actual}) / n. A path that never
    changes earns the same at every shift and gets p = 1.

    Every offset is used, short ones too: the rank of the actual path is uniform under "no timing" only
    over the whole group of circular shifts. Leaving out the shifts shorter than a holding period (which
    keep part of the timing) made the test reject 12-16% of no-skill paths held ~200 periods at a
    nominal 5% (tests/test_nulls.py); keeping them costs a skilled strategy at most the share of the
    periods within one holding period of the actual alignment.
    """
    n = len(traded)
    means = _shifted_means(traded)
    actual = float(traded.net.mean())
    shifted = means[1:]
    tol = 1e-12 * max(1.0, float(np.abs(means).max()))
    if len(shifted) == 0:
        return TimingNull(1.0, actual, float("nan"), float("nan"), 0.0, 0, 1, holding_period(traded.position))
    return TimingNull(
        p_value=float((1 + np.count_nonzero(shifted >= actual - tol)) / n),
        mean_return=actual,
        null_median=float(np.median(shifted)),
        null_p95=float(np.percentile(shifted, 95)),
        percentile=float(np.mean(shifted < actual - tol)),
        n_offsets=len(shifted),
        min_offset=1,
        holding_period=holding_period(traded.position),
    )


def timing_offset(traded: Traded, block: int) -> int:
    """Shifts shorter than this leave the shifted positions overlapping their own trades (part of the
    timing kept): the longer of the mean holding period and the resampling block. Used where the shifted
    paths estimate the no-skill spread of a Sharpe ratio (the deflated Sharpe ratio), not for ranks."""
    return int(max(block, math.ceil(holding_period(traded.position)), 1))


@dataclass(frozen=True)
class PairedResult:
    """The strategy's after-cost return per period against one alternative's, resampled in pairs."""

    mean_difference: float  # per period, strategy minus alternative
    p_value: float  # share of resamples in which the strategy did not beat the alternative
    difference_p5: float  # 5th percentile of the resampled mean difference
    strategy_total: float
    alternative_total: float


def paired_bootstrap(
    strategy: np.ndarray, alternatives: dict[str, np.ndarray], block: int, n_boot: int, seed: int
) -> dict[str, PairedResult]:
    """Stationary bootstrap (mean block ``block``) of the mean per-period difference between the
    strategy's after-cost returns and each alternative's; every alternative sees the same resamples.

    An alternative of all zeros is doing nothing (flat). ``p_value`` is the share of resamples whose mean
    difference is <= 0: small means the strategy beat it by more than the resampling explains.
    """
    s = np.asarray(strategy, dtype=float)
    names = list(alternatives)
    diffs = np.column_stack([s - np.asarray(alternatives[k], dtype=float) for k in names])
    bs = StationaryBootstrap(max(1, int(block)), diffs, seed=np.random.default_rng(seed))
    means = bs.apply(lambda d: d.mean(axis=0), n_boot)
    out = {}
    for j, name in enumerate(names):
        alt = np.asarray(alternatives[name], dtype=float)
        out[name] = PairedResult(
            mean_difference=float(diffs[:, j].mean()),
            p_value=float(np.mean(means[:, j] <= 0)),
            difference_p5=float(np.percentile(means[:, j], 5)),
            strategy_total=float(np.prod(1 + s) - 1),
            alternative_total=float(np.prod(1 + alt) - 1),
        )
    return out


def resamples_for(alpha: float, minimum: int) -> int:
    """Enough bootstrap resamples to resolve a p-value of ``alpha`` (at least 20 / alpha)."""
    return int(max(minimum, math.ceil(20.0 / alpha)))


def effective_count(returns: np.ndarray) -> float:
    """How many independent strategies the columns of ``returns`` (periods x strategies) amount to, for a
    multiple-testing count: Li and Ji's (2005) effective number of tests from the eigenvalues of their
    correlation matrix, sum of [lambda >= 1] + (lambda - floor(lambda)). Identical columns count as 1,
    uncorrelated ones as their number; 28 rules with pairwise correlation 0.7 count as about 10. Columns
    that never vary (a rule that never trades) count together as one more strategy."""
    x = np.asarray(returns, dtype=float)
    varying = np.ptp(x, axis=0) > 0
    flat = float(not varying.all())
    if varying.sum() <= 1:
        return float(varying.sum()) + flat
    eig = np.round(np.abs(np.linalg.eigvalsh(np.corrcoef(x[:, varying], rowvar=False))), 9)  # 2 - 1e-16 is 2
    return float(np.sum((eig >= 1) + (eig - np.floor(eig)))) + flat
