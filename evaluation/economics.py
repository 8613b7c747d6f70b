"""What the bot would have earned: the decision policy's after-cost returns, how its confidence rule is
chosen, the deflated Sharpe ratio of that choice out of fold, and the directional statistics of the
calls (the gate's nulls for the traded holdout are in ``evaluation.nulls``). Pure numpy; no tracking.

Returns follow ``evaluation.backtest``: a position taken on row t's signal is entered at open[t+1] and
held to open[t+2], and every change of position pays fees plus slippage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from evaluation.backtest import deflated_sharpe
from evaluation.metrics import block_bootstrap_indices
from evaluation.nulls import Traded, block_length, effective_count, shifted_sharpes, timing_offset
from features.labels import BUY, SELL
from models.policy import DecisionPolicy, net_returns, policy_grid, sharpe_per_period


def period_returns(candles: pd.DataFrame, bars: np.ndarray) -> np.ndarray:
    """open[b+2] / open[b+1] - 1 for each candle position ``b``: what row b's position earns.

    NaN where the candles end before open[b+2] (the last rows of the data).
    """
    return _open_to_open(candles["open"].to_numpy(dtype=float), bars)


def _open_to_open(opens: np.ndarray, bars: np.ndarray) -> np.ndarray:
    bars = np.asarray(bars, dtype=np.int64)
    out = np.full(len(bars), np.nan)
    ok = bars + 2 < len(opens)
    out[ok] = opens[bars[ok] + 2] / opens[bars[ok] + 1] - 1.0
    return out


@dataclass(frozen=True, eq=False)
class TradingCosts:
    """What tuning trials and the policy fit need to trade out-of-fold predictions like the backtest."""

    opens: np.ndarray  # open price of every candle
    bars: np.ndarray  # candle position of every development row
    cost: float  # per unit of notional traded, as a fraction
    mode: str
    on_hold: str
    sizing: str = "full"
    size_null: float = 1.0 / 3.0  # 0.5 with a primary side (models.policy: meta-labeling)

    def span(self, rows: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``proba`` of the development ``rows`` spread over every candle from the first row's to the
        last's, with NaN (not ready: flat) on candles without a row (next to gaps, where rows were
        dropped), and each candle's period return: the inputs of ``fit_policy`` / ``grid_sharpes``."""
        bars = self.bars[np.asarray(rows)]
        if (np.diff(bars) <= 0).any():
            raise ValueError("rows must be in increasing time order")
        span = np.arange(bars[0], bars[-1] + 1)
        full = np.full((len(span), 3), np.nan)
        full[bars - bars[0]] = proba
        returns = _open_to_open(self.opens, span)
        ok = np.isfinite(returns)
        return full[ok], returns[ok]

    def grid_sharpes(self, rows: np.ndarray, proba: np.ndarray) -> dict:
        """``grid_sharpes`` of out-of-fold ``proba`` on the development ``rows``."""
        return grid_sharpes(
            *self.span(rows, proba), self.cost, self.mode, self.on_hold, self.sizing, self.size_null
        )

    def fit_policy(self, rows: np.ndarray, proba: np.ndarray) -> tuple[DecisionPolicy, list[dict]]:
        """``fit_policy`` on out-of-fold ``proba`` of the development ``rows``."""
        return fit_policy(
            *self.span(rows, proba), self.cost, self.mode, self.on_hold, self.sizing, self.size_null
        )

    def chosen_sharpe(self, rows: np.ndarray, proba: np.ndarray) -> tuple[str, float, dict]:
        """The rule ``fit_policy`` chooses on out-of-fold ``proba`` of the development ``rows``, its
        after-cost Sharpe ratio per period on those rows, and every rule's (``grid_sharpes``): what a
        tuning trial scored by Sharpe reports. One rule for all the rows, chosen as the pipeline chooses
        the served policy."""
        policy, table = self.fit_policy(rows, proba)
        sharpes = {row["policy"]: row["sharpe_per_period"] for row in table}
        return policy.key, sharpes[policy.key], sharpes


def _check_rows(proba: np.ndarray, period_return: np.ndarray) -> None:
    if len(proba) != len(period_return):
        raise ValueError(f"{len(proba)} rows of probabilities but {len(period_return)} period returns")
    if len(proba) < 3:
        raise ValueError(f"need at least 3 consecutive rows to judge a policy, got {len(proba)}")
    if not np.isfinite(period_return).all():
        raise ValueError("period returns must be finite (rows without an open two bars later are dropped)")


def policy_result(policy: DecisionPolicy, proba: np.ndarray, period_return: np.ndarray, cost: float) -> dict:
    """After-cost result of ``policy`` over consecutive rows: Sharpe per period, total return, trades."""
    _check_rows(proba, period_return)
    position = policy.positions(proba)
    r = net_returns(position, period_return, cost)
    return {
        "policy": policy.key,
        "min_proba": policy.min_proba,
        "min_margin": policy.min_margin,
        "sharpe_per_period": sharpe_per_period(r),
        "total_return": float(np.prod(1.0 + r) - 1.0),
        "n_trades": int(np.count_nonzero(np.diff(position, prepend=0.0))),
        "n_periods": len(position),
        "exposure": float(np.mean(position != 0)),
    }


def grid_sharpes(
    proba: np.ndarray,
    period_return: np.ndarray,
    cost: float,
    mode: str,
    on_hold: str,
    sizing: str = "full",
    size_null: float = 1.0 / 3.0,
) -> dict:
    """Per-period Sharpe ratio after costs of every confidence rule in the policy grid, by policy key.

    Each tuning trial records this for its own out-of-fold predictions, so the deflated Sharpe ratio can
    use the measured spread of the trials' Sharpe ratios under the policy finally chosen.
    """
    _check_rows(proba, period_return)
    out = {}
    for policy in policy_grid(mode, on_hold, sizing, size_null):
        out[policy.key] = sharpe_per_period(net_returns(policy.positions(proba), period_return, cost))
    return out


def fit_policy(
    proba: np.ndarray,
    period_return: np.ndarray,
    cost: float,
    mode: str,
    on_hold: str,
    sizing: str = "full",
    size_null: float = 1.0 / 3.0,
) -> tuple[DecisionPolicy, list[dict]]:
    """Choose the confidence rule with the best after-cost Sharpe ratio on out-of-fold predictions.

    ``proba`` must be out-of-fold predictions on consecutive development rows (never the holdout). Ties
    go to the stricter rule (higher probability threshold, then margin): fewer trades for the same edge.
    Returns the policy and one row per rule searched. ``size_null``: what ``sizing="probability"`` sizes
    against (``models.policy``; 0.5 with a primary side).
    """
    grid = policy_grid(mode, on_hold, sizing, size_null)
    table = [policy_result(p, proba, period_return, cost) for p in grid]
    best = max(
        range(len(table)),
        key=lambda i: (
            round(table[i]["sharpe_per_period"], 12),
            table[i]["min_proba"],
            table[i]["min_margin"],
        ),
    )
    row = table[best]
    return DecisionPolicy(mode, on_hold, row["min_proba"], row["min_margin"], sizing, size_null), table


def deflated_sharpe_of_choice(
    chosen: Traded, rule_positions: list[np.ndarray], n_trials: int, n_members: int, looks: int
) -> dict:
    """The deflated Sharpe ratio where the choices were made: the ``chosen`` strategy's after-cost Sharpe
    ratio on the out-of-fold development periods, against the best that luck gives among every strategy
    tried there: ``n_trials`` finished trials x the policy rules x ``n_members`` ensemble members x
    ``looks`` (runs that scored this data: reruns choose again on the same rows). The rules
    (``rule_positions``: every rule's positions on the same periods) are counted as the independent
    strategies they amount to (``evaluation.nulls.effective_count`` of their returns: 28 rules that mostly
    trade alike are a few strategies, not 28).

    The no-skill spread is measured on this strategy and these periods: the Sharpe ratios of its own
    positions shifted in time (same exposure, holding times and turnover, no timing), whose variance sets
    the expected maximum and whose mean, never below flat, is the centre (what drift pays that exposure;
    the rules tried include some that trade far less, whose no-skill Sharpe ratio is near 0, not this
    strategy's cost drag). The holdout needs no such count (nothing was chosen on it); the gate tests its
    checks at a level divided by ``looks``.
    """
    null = shifted_sharpes(chosen, timing_offset(chosen, block_length(chosen)))
    variance = float(null.var(ddof=1)) if len(null) > 1 and np.ptp(null) > 0 else None
    centre = max(0.0, float(null.mean())) if variance is not None else 0.0
    n_rules = effective_count(np.column_stack([chosen.with_position(p).net for p in rule_positions]))
    count = max(1, round(n_trials * n_rules * n_members * looks))
    counted = (
        f"{n_trials} trials x {n_rules:.1f} effective policy rules (of {len(rule_positions)}) x {n_members} "
        f"ensemble members x {looks} " + ("runs on this data" if looks > 1 else "run")
    )
    source = (
        f"measured: its own out-of-fold positions shifted in time, {len(null):,} shifts; no-skill centre "
        f"{centre:+.4f}"
        if variance is not None
        else "assumed: 1 / (T - 1)"
    )
    dsr = deflated_sharpe(chosen.net, count, sr_variance=variance, sr_null_mean=centre)
    return dsr | {
        "measured": variance is not None,
        "counted": counted,
        "effective_rules": n_rules,
        "variance_source": source,
        "looks": looks,
        "sample": "out-of-fold",
    }


@dataclass(frozen=True)
class DirectionalEdge:
    """Precision of buy/sell calls on rows that moved, against the base rate of the direction called."""

    n_calls: int  # buy or sell calls
    n_called_moves: int  # ... whose outcome was a move (buy or sell label)
    precision: float  # share of those whose direction was right
    base_rate: float  # expected share with no directional skill: mean base rate of the direction called
    p_positive: float  # moving-block bootstrap probability that precision > base rate
    buy_precision: float
    sell_precision: float
    buy_base_rate: float  # share of buy among moves (holdout)
    sell_base_rate: float

    @property
    def excess(self) -> float:
        return self.precision - self.base_rate


def directional_edge(y_true, y_pred, block: int, n_boot: int = 500, seed: int = 0) -> DirectionalEdge:
    """Did the calls get the direction right more often than the base rates say they would by luck?

    Only rows whose outcome was a move (buy or sell) are scored, so a model cannot pass by timing
    volatility: calling buy/sell in stormy markets and hold in calm ones raises the plain precision of
    its calls (stormy rows are more often moves), but not how often it picks the right direction.
    With no skill, a call of direction d is right with probability P(d | move); ``base_rate`` is that
    averaged over the calls. Every bootstrap resample recomputes the base rates from its own rows.
    """
    y, pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    move = (y == BUY) | (y == SELL)
    call = (pred == BUY) | (pred == SELL)

    def stats(rows: np.ndarray | slice):
        m, c, yy, pp = move[rows], call[rows], y[rows], pred[rows]
        cm = m & c
        n_moves = m.sum(axis=-1)
        buy_rate = np.divide(
            (yy == BUY).sum(axis=-1), n_moves, out=np.zeros(np.shape(n_moves)), where=n_moves > 0
        )
        n_cm = cm.sum(axis=-1)
        hits = (cm & (yy == pp)).sum(axis=-1)
        buy_calls = (cm & (pp == BUY)).sum(axis=-1)
        expected = buy_calls * buy_rate + (n_cm - buy_calls) * (1 - buy_rate)
        precision = np.divide(hits, n_cm, out=np.zeros(np.shape(n_cm)), where=n_cm > 0)
        base = np.divide(expected, n_cm, out=np.zeros(np.shape(n_cm)), where=n_cm > 0)
        return precision, base, n_cm, buy_rate

    precision, base, n_cm, buy_rate = stats(slice(None))
    idx = block_bootstrap_indices(len(y), block, n_boot, seed)
    boot_precision, boot_base, boot_n, _ = stats(idx)
    p_positive = float(np.mean((boot_precision > boot_base) & (boot_n > 0))) if n_cm > 0 else 0.0

    def class_precision(d: int) -> float:
        rows = move & (pred == d)
        return float((y[rows] == d).mean()) if rows.any() else 0.0

    return DirectionalEdge(
        n_calls=int(call.sum()),
        n_called_moves=int(n_cm),
        precision=float(precision),
        base_rate=float(base),
        p_positive=p_positive,
        buy_precision=class_precision(BUY),
        sell_precision=class_precision(SELL),
        buy_base_rate=float(buy_rate),
        sell_base_rate=float(1 - buy_rate) if move.any() else 0.0,
    )
