"""Chronological holdout split and purged walk-forward cross-validation.

Rows are consecutive bars (``features.dataset.build_dataset`` guarantees a contiguous block), so a gap
of ``horizon`` rows is a gap of ``horizon`` bars. A training row at position i has a label computed from
bars i+1 .. i+horizon; purging means no such label window may reach the first row it is scored against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import BaseCrossValidator, TimeSeriesSplit


def check_no_label_overlap(train_idx: np.ndarray, test_idx: np.ndarray, horizon: int) -> None:
    """Raise AssertionError if a training row's label window reaches the test block or beyond."""
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise AssertionError("empty training or validation block")
    last_label_bar = int(np.max(train_idx)) + horizon
    first_test = int(np.min(test_idx))
    if last_label_bar >= first_test:
        raise AssertionError(
            f"label leakage: training row {int(np.max(train_idx))} has a label window up to row "
            f"{last_label_bar}, which reaches the validation block starting at row {first_test}"
        )


@dataclass(frozen=True)
class HoldoutSplit:
    """Positions of the development rows (tuning, CV, fitting) and of the untouched holdout rows."""

    dev: np.ndarray
    holdout: np.ndarray
    gap: int


def holdout_split(
    n_rows: int, horizon: int, holdout_frac: float = 0.2, gap: int | None = None
) -> HoldoutSplit:
    """Last ``holdout_frac`` of the rows is the holdout; ``gap`` (>= horizon) rows before it are purged."""
    gap = horizon if gap is None else gap
    if not 0.0 < holdout_frac < 1.0:
        raise ValueError(f"holdout_frac must be in (0, 1), got {holdout_frac!r}")
    if gap < horizon:
        raise ValueError(f"purge gap ({gap}) must be at least the label horizon ({horizon})")
    n_holdout = math.ceil(n_rows * holdout_frac)
    n_dev = n_rows - n_holdout - gap
    if n_dev <= 0 or n_holdout <= 0:
        raise ValueError(f"{n_rows} rows are too few for a {holdout_frac:.0%} holdout and a {gap}-row gap")
    split = HoldoutSplit(dev=np.arange(n_dev), holdout=np.arange(n_rows - n_holdout, n_rows), gap=gap)
    check_no_label_overlap(split.dev, split.holdout, horizon)
    return split


class PurgedWalkForward(BaseCrossValidator):
    """Expanding-window walk-forward folds with a purge gap of at least ``horizon`` rows.

    A thin layer over scikit-learn's ``TimeSeriesSplit`` (which already implements the expanding window
    and the gap) that refuses a gap shorter than the label horizon and asserts, for every fold, that no
    training label window reaches the validation block.
    """

    def __init__(self, n_splits: int = 5, horizon: int = 1, gap: int | None = None):
        self.n_splits = n_splits
        self.horizon = horizon
        self.gap = gap

    def _gap(self) -> int:
        gap = self.horizon if self.gap is None else self.gap
        if gap < self.horizon:
            raise ValueError(f"purge gap ({gap}) must be at least the label horizon ({self.horizon})")
        return gap

    def split(self, X, y=None, groups=None):
        inner = TimeSeriesSplit(n_splits=self.n_splits, gap=self._gap())
        for train_idx, test_idx in inner.split(X):
            check_no_label_overlap(train_idx, test_idx, self.horizon)
            yield train_idx, test_idx

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        return self.n_splits

    def describe(self, n_rows: int) -> list[dict]:
        """Fold boundaries as row positions, for the dry-run plan and the logged configuration."""
        return [
            {
                "fold": k,
                "train": [int(tr[0]), int(tr[-1])],
                "validation": [int(te[0]), int(te[-1])],
                "n_train": len(tr),
                "n_validation": len(te),
            }
            for k, (tr, te) in enumerate(self.split(np.zeros(n_rows)))
        ]
