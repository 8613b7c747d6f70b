"""The decision policy: how a bot acts on the ensemble's class probabilities.

It is part of the model: chosen at training time, logged with the model, applied by the served model
(its ``action`` and ``position`` columns) and by every backtest, so the bot does exactly what the gate
measured. Pure numpy; no tracking calls.

A row's *action* is ``buy`` when p_buy reaches ``min_proba`` and beats p_sell by at least ``min_margin``
(and strictly), ``sell`` symmetrically, otherwise ``hold`` (no new signal). Actions become positions:
buy = long 1, sell = short 1 (``long_only``: flat), hold = keep the position the previous row left
(``on_hold="keep"``, what a bot does without a new signal; flat before the first signal) or go flat
(``on_hold="flat"``).

Bet sizing (``sizing="probability"``, López de Prado, *Advances in Financial Machine Learning*, ch. 10):
a buy or sell is held at a size set by the probability of the side acted on, ``p``, against the 1/3 of
a guess among three classes: ``z = (p - 1/3) / sqrt(p (1 - p))``, size ``2 Phi(z) - 1``, rounded to steps
of :data:`SIZE_STEP` (a size that rounds to 0 is flat). So p = 0.4 stays flat, 0.5 holds 0.25, 0.6 holds
0.5, 0.8 holds 0.75, p -> 1 holds 1. ``sizing="full"`` (the default) holds 1. Every change of position,
a resize included, pays the cost on the notional traded (:func:`net_returns`).

Meta-labeling (a primary side, ``features.primary``; AFML ch. 3.6): the model's probabilities are masked
to the side (:func:`mask_to_side`: the class opposite to the side has probability 0, no side means hold),
so its buy or sell probability is the chance that acting on the primary's side pays, an outcome with
two values. Sizing then measures it against the 1/2 of a guess between two (``size_null=0.5``):
``z = (p - 1/2) / sqrt(p (1 - p))``, so p = 0.5 stays flat, 0.75 holds 0.5, 0.9 holds 0.75. The default
``size_null`` is the 1/3 of three classes.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

MODES: tuple[str, ...] = ("long_short", "long_only")
ON_HOLD: tuple[str, ...] = ("keep", "flat")
SIZINGS: tuple[str, ...] = ("full", "probability")
SIZE_STEP = 0.25  # positions of a probability-sized policy are multiples of this
SELL, HOLD, BUY = 0, 1, 2
NOT_READY = -1  # no usable probabilities (too little history, e.g. after a gap): the bot is flat
ACTION_NAMES: tuple[str, ...] = ("sell", "hold", "buy")
ACTION_CODES: dict[str, int] = {name: code for code, name in enumerate(ACTION_NAMES)}

# The confidence rules searched when a policy is fitted (models.policy.policy_grid). A probability
# threshold of 1/3 acts on any lean towards a direction; 0.7 only on strong ones.
MIN_PROBA_GRID: tuple[float, ...] = (0.34, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7)
MIN_MARGIN_GRID: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2)


@dataclass(frozen=True)
class DecisionPolicy:
    """How class probabilities (columns sell, hold, buy) become actions and positions."""

    mode: str = "long_short"
    on_hold: str = "keep"
    min_proba: float = 0.34
    min_margin: float = 0.0
    sizing: str = "full"
    size_null: float = 1.0 / 3.0  # the probability of a guess p is sized against (0.5 with a primary)

    def __post_init__(self) -> None:
        for name, allowed in (("mode", MODES), ("on_hold", ON_HOLD), ("sizing", SIZINGS)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"policy {name} must be one of {list(allowed)}, got {value!r}")
        for name in ("min_proba", "min_margin", "size_null"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise TypeError(f"policy {name} must be a finite number, got {value!r}")
        if not 0.0 <= self.min_proba <= 1.0:
            raise ValueError(f"policy min_proba must be in [0, 1], got {self.min_proba!r}")
        if not 0.0 <= self.min_margin <= 1.0:
            raise ValueError(f"policy min_margin must be in [0, 1], got {self.min_margin!r}")
        if not 0.0 < self.size_null < 1.0:
            raise ValueError(f"policy size_null must be in (0, 1), got {self.size_null!r}")

    @property
    def key(self) -> str:
        """Short identity of the confidence rule, e.g. ``p0.45-m0.1`` (mode and hold rule not included)."""
        return f"p{self.min_proba:g}-m{self.min_margin:g}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> DecisionPolicy:
        # A policy logged before size_null existed sized against 1/3 (the default).
        keys = ("mode", "on_hold", "min_proba", "min_margin", "sizing", "size_null")
        return cls(**{k: values[k] for k in keys if k in values})

    def actions(self, proba: np.ndarray) -> np.ndarray:
        """Action codes (0 sell, 1 hold, 2 buy) for class probabilities of shape (rows, 3); a row with
        NaN probabilities (not ready) gets ``NOT_READY``."""
        proba = np.asarray(proba, dtype=float)
        if proba.ndim != 2 or proba.shape[1] != 3:
            raise ValueError(f"class probabilities must have shape (rows, 3), got {proba.shape}")
        p_sell, p_buy = proba[:, 0], proba[:, 2]
        buy = (p_buy >= self.min_proba) & (p_buy - p_sell >= self.min_margin) & (p_buy > p_sell)
        sell = (p_sell >= self.min_proba) & (p_sell - p_buy >= self.min_margin) & (p_sell > p_buy)
        codes = np.where(buy, BUY, np.where(sell, SELL, HOLD))
        return np.where(np.isnan(proba).any(axis=1), NOT_READY, codes).astype(np.int64)

    def sizes(self, proba: np.ndarray) -> np.ndarray:
        """The size of a buy or sell on each row (see the module docstring): 1 with ``sizing="full"``,
        else ``2 Phi(z) - 1`` of the larger of p_buy and p_sell, in steps of :data:`SIZE_STEP`."""
        proba = np.asarray(proba, dtype=float)
        if self.sizing == "full":
            return np.ones(len(proba))
        from scipy.special import ndtr  # the standard normal CDF, vectorised

        p = np.clip(np.nan_to_num(np.maximum(proba[:, 0], proba[:, 2])), 0.0, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (p - self.size_null) / np.sqrt(p * (1.0 - p))
        z = np.where(p >= 1.0, np.inf, np.where(p <= 0.0, -np.inf, z))
        size = np.clip(2.0 * ndtr(z) - 1.0, 0.0, 1.0)
        return np.round(size / SIZE_STEP) * SIZE_STEP

    def positions_from_actions(self, actions: np.ndarray, sizes: np.ndarray | None = None) -> np.ndarray:
        """Positions held after each row, for consecutive rows starting flat: buy = +size, sell = -size
        (``long_only``: flat), sizes 1 unless ``sizes`` (:meth:`sizes`) says otherwise.

        A ``NOT_READY`` row is flat, and a hold after it keeps that flat position: a bot that could not
        see (too little history, a gap in the candles) does not carry a position through."""
        actions = np.asarray(actions)
        size = np.ones(len(actions)) if sizes is None else np.asarray(sizes, dtype=float)
        short = -size if self.mode == "long_short" else 0.0
        pos = np.where(actions == BUY, size, np.where(actions == SELL, short, np.nan))
        pos = np.where(actions == NOT_READY, 0.0, pos)
        if self.on_hold == "flat":
            return np.nan_to_num(pos, nan=0.0)
        return pd.Series(pos).ffill().fillna(0.0).to_numpy()  # keep: carry the last buy/sell forward

    def positions(self, proba: np.ndarray) -> np.ndarray:
        """Positions for consecutive rows of class probabilities (see the module docstring)."""
        sizes = None if self.sizing == "full" else self.sizes(proba)
        return self.positions_from_actions(self.actions(proba), sizes)


def policy_grid(
    mode: str, on_hold: str, sizing: str = "full", size_null: float = 1.0 / 3.0
) -> list[DecisionPolicy]:
    """Every confidence rule the fitting searches, for one mode, hold rule and sizing (a fixed order)."""
    return [
        DecisionPolicy(
            mode=mode, on_hold=on_hold, min_proba=p, min_margin=m, sizing=sizing, size_null=size_null
        )
        for p in MIN_PROBA_GRID
        for m in MIN_MARGIN_GRID
    ]


def mask_to_side(proba: np.ndarray, side: np.ndarray) -> np.ndarray:
    """Class probabilities (sell, hold, buy) made consistent with a primary side, exactly.

    Under meta-labeling the class opposite to the side cannot occur: side +1 sets p_sell to 0, side -1
    sets p_buy to 0, and the row is renormalised; side 0 (no side) gives [0, 1, 0]. Rows with NaN
    probabilities stay NaN; a NaN side is no side. Returns a new float64 array.
    """
    proba = np.array(proba, dtype=np.float64)
    side = np.asarray(side, dtype=np.float64).reshape(-1)
    if proba.ndim != 2 or proba.shape[1] != 3 or len(side) != len(proba):
        raise ValueError(
            f"need probabilities of shape (rows, 3) and one side per row, got {proba.shape}, {side.shape}"
        )
    nan = np.isnan(proba).any(axis=1)
    proba[side > 0, SELL] = 0.0
    proba[side < 0, BUY] = 0.0
    none = ~(side > 0) & ~(side < 0)
    proba[none] = (0.0, 1.0, 0.0)
    total = proba.sum(axis=1, keepdims=True)
    out = np.divide(proba, total, out=np.zeros_like(proba), where=total > 0)
    # A row whose only mass was on the impossible class: nothing says the bet pays, so hold.
    out[(total[:, 0] <= 0)] = (0.0, 1.0, 0.0)
    out[nan] = np.nan
    return out


def net_returns(position: np.ndarray, period_return: np.ndarray, cost: float) -> np.ndarray:
    """Per-period returns after costs: ``p_t * r_t - cost * |p_t - p_{t-1}|``, entering from flat.

    ``period_return[t]`` is what a position taken on row t's signal earns (``evaluation.backtest``:
    open[t+1] to open[t+2]); ``cost`` is per unit of notional traded, as a fraction.
    """
    position = np.asarray(position, dtype=float)
    return position * np.asarray(period_return, dtype=float) - cost * np.abs(np.diff(position, prepend=0.0))


def sharpe_per_period(returns: np.ndarray) -> float:
    """Mean / standard deviation (ddof=1) of per-period returns; 0.0 when undefined (no variance)."""
    r = np.asarray(returns, dtype=float)
    if len(r) < 2 or np.ptp(r) == 0:
        return 0.0
    return float(r.mean() / r.std(ddof=1))
