"""The primary side of meta-labeling (López de Prado, *Advances in Financial Machine Learning*, ch. 3.6).

A primary rule says which side to bet on; the secondary model (the ensemble) learns whether acting on
that side pays (``features.labels.meta_labels``), and its probability sizes the bet
(``models.policy``: ``size_null=0.5``). The side is a feature column, :data:`PRIMARY_COLUMN`, appended to
the model's inputs, so the served model computes it from candles like every other feature and the
look-ahead checks cover it.

Primaries (:data:`PRIMARIES`):

* ``none``: no primary side (plain buy/sell/hold classification, the default);
* ``momentum``: the sign of the trailing ``horizon``-bar return, ``close_t / close_{t-horizon} - 1``:
  +1 long, -1 short, 0 (no side) when the return is exactly 0. Known at t (closes up to t only); NaN for
  the first ``horizon`` rows (its warm-up: ``warmup_bars``), never backfilled.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PRIMARIES: tuple[str, ...] = ("none", "momentum")
PRIMARY_COLUMN = "primary_side"


def check_primary(primary: object) -> str:
    """``primary`` if it names a primary rule, else ValueError naming the valid ones."""
    if primary not in PRIMARIES:
        raise ValueError(f"primary must be one of {list(PRIMARIES)}, got {primary!r}")
    return str(primary)


def _check_horizon(horizon: object) -> int:
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise ValueError(f"a primary side needs the label horizon, an int >= 1; got {horizon!r}")
    return int(horizon)


def primary_names(primary: str = "none") -> list[str]:
    """The column a primary adds to the model's features (none without a primary)."""
    return [] if check_primary(primary) == "none" else [PRIMARY_COLUMN]


def warmup_bars(primary: str, horizon: int | None) -> int:
    """Leading rows without a side: ``horizon`` for ``momentum``, 0 without a primary."""
    return 0 if check_primary(primary) == "none" else _check_horizon(horizon)


def primary_side(close: pd.Series, horizon: int, primary: str = "momentum") -> pd.Series:
    """The primary's side per row (float64 +1 / 0 / -1, NaN where unknown), named :data:`PRIMARY_COLUMN`."""
    if check_primary(primary) == "none":
        raise ValueError("primary 'none' has no side")
    h = _check_horizon(horizon)
    close = close.astype("float64")
    trailing = close / close.shift(h) - 1.0
    side = np.sign(trailing)  # NaN stays NaN: the warm-up, or a NaN close
    return side.where(np.isfinite(trailing)).rename(PRIMARY_COLUMN)
