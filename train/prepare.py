"""The data stage every step shares: candles -> features and labels -> holdout split and purged folds.

The pipeline and every `tune` worker call ``prepare`` with the same settings, so they see identical rows,
folds and study names. No tracking calls here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from evaluation.economics import TradingCosts
from features.data import DataInfo, load_candles
from features.dataset import Dataset, build_dataset
from features.pair import align_pair, load_pair
from train.config import PipelineConfig
from train.split import HoldoutSplit, PurgedWalkForward, holdout_split


def describe_plan(cfg: PipelineConfig, info, ds: Dataset, split, cv) -> dict:
    """Rows, date ranges, folds and holdout as timestamps: what a dry run prints and every run logs."""
    ts = ds.X.index

    def span(positions) -> list[str]:
        return [str(ts[positions[0]]), str(ts[positions[-1]])]

    folds = []
    for fold in cv.describe(len(split.dev)):
        folds.append(
            fold
            | {
                "train_time": [str(ts[i]) for i in fold["train"]],
                "validation_time": [str(ts[i]) for i in fold["validation"]],
            }
        )
    return {
        "data": info.to_dict() | {"description": info.describe()},
        "rows_after_features_and_labels": ds.n_rows,
        # gaps (more than GAP_TOLERANCE_BARS missing bars) and the rows lost because a label or indicator
        # window would have spanned one
        "gaps": ds.gaps,
        "rows_dropped_at_gaps": ds.rows_dropped_at_gaps,
        "class_counts": ds.class_counts,
        "label": ds.label,
        "sample_weights": ds.sample_weights,
        "primary": ds.primary,
        "development": {"rows": len(split.dev), "time": span(split.dev)},
        "purge_gap_rows": split.gap,
        "holdout": {"rows": len(split.holdout), "time": span(split.holdout)},
        "folds": folds,
        "models": cfg.model_list,
    }


@dataclass
class Prepared:
    """Everything derived from the candles before any model sees them."""

    candles: pd.DataFrame
    info: DataInfo
    ds: Dataset
    split: HoldoutSplit
    cv: PurgedWalkForward
    plan: dict

    @property
    def dev(self) -> tuple[pd.DataFrame, pd.Series]:
        return self.ds.X.iloc[self.split.dev], self.ds.y.iloc[self.split.dev]

    @property
    def dev_weights(self) -> np.ndarray | None:
        """Sample weights of the development rows for every fit (None: unweighted)."""
        weights = self.ds.fit_weights
        return None if weights is None else weights[self.split.dev]

    @property
    def holdout(self) -> tuple[pd.DataFrame, np.ndarray]:
        return self.ds.X.iloc[self.split.holdout], self.ds.y.to_numpy()[self.split.holdout]

    def trading_costs(self, cfg: PipelineConfig) -> TradingCosts:
        """The development rows' candles with the run's costs and policy rules, for tuning trials and the
        policy fit."""
        return TradingCosts(
            self.candles["open"].to_numpy(dtype=float),
            self.ds.bars[self.split.dev],
            cfg.cost,
            cfg.backtest_mode,
            cfg.hold,
            cfg.sizing,
            cfg.size_null,
        )


def prepare(cfg: PipelineConfig) -> Prepared:
    candles, info = load_candles(cfg.data, cfg.timeframe or None, cfg.days or None)
    return prepare_candles(cfg, with_pair(cfg, candles, info), info)


def with_pair(cfg: PipelineConfig, candles: pd.DataFrame, info: DataInfo) -> pd.DataFrame:
    """``candles`` plus the second instrument's ``pair_*`` columns when ``pair_data`` is set (loaded at
    the same timeframe, aligned without look-ahead, see ``features.pair``); unchanged otherwise."""
    if not cfg.pair_data.strip():
        return candles
    pair = load_pair(cfg.pair_data.strip(), cfg.timeframe or None, info.bar)
    return align_pair(candles, pair, info.bar)


def prepare_candles(cfg: PipelineConfig, candles: pd.DataFrame, info: DataInfo) -> Prepared:
    """:func:`prepare` on candles already loaded (the walk-forward gives each window its own history)."""
    ds = build_dataset(
        candles,
        cfg.features,
        cfg.horizon,
        cfg.threshold,
        cfg.vol_window,
        context_timeframe=cfg.context_timeframe or None,
        pair=bool(cfg.pair_data.strip()),
        label=cfg.label,
        sample_weights=cfg.sample_weights,
        primary=cfg.primary,
    )
    split = holdout_split(ds.n_rows, cfg.horizon, cfg.holdout_frac)
    cv = PurgedWalkForward(n_splits=cfg.n_folds, horizon=cfg.horizon)
    return Prepared(candles, info, ds, split, cv, describe_plan(cfg, info, ds, split, cv))
