"""Join features and labels into the supervised data set used by training and evaluation.

Between gaps (``features.candles.segments``) the kept rows are contiguous blocks of candle bars
(warm-up head and horizon tail removed). At a gap, no indicator window and no label window may span it:
the rows whose label would reach across it and the rows after it that have no indicator history yet are
dropped (``rows_dropped_at_gaps``). ``bars`` maps each row back to its candle position. Rows k apart are
therefore at least k bars apart, so purging by rows stays safe. A triple-barrier label ends at or before
its row's horizon (``ends``), so purging by ``horizon`` rows covers it too.

Sample weights (``weights``, mean 1) are the labels' average uniqueness (``features.labels``): a row whose
label span overlaps many others counts less. A label never spans a gap, so concurrency is counted within
each gap-free stretch. Whether label j covers bar u <= t1_i depends only on closes before u, so a row's
weight uses no candle after its own label's end: purged folds keep validation outcomes out of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import pandas as pd

from features.candles import infer_bar, segment_ids, segments
from features.context import compute_model_features, context_label, min_history_bars
from features.labels import (
    CLASS_NAMES,
    average_uniqueness,
    labels_and_ends,
    meta_labels,
    resolve_sample_weights,
)
from features.pair import PAIR_FEATURE_NAMES
from features.primary import PRIMARY_COLUMN, check_primary

MIN_ROWS = 2000


class InsufficientDataError(ValueError):
    """Too few usable rows after removing the indicator warm-up and the label horizon."""


# eq=False: the generated __eq__ would compare DataFrames/arrays element-wise and raise on bool().
@dataclass(frozen=True, eq=False)
class Dataset:
    """Features ``X``, int64 labels ``y`` (0/1/2), candle positions ``bars`` and the source candles.

    ``ends``: candle position of the bar that decided each row's label (t1); ``weights``: per-row
    sample weights with mean 1 (all ones when ``sample_weights`` is "none").
    """

    X: pd.DataFrame
    y: pd.Series
    bars: np.ndarray
    candles: pd.DataFrame
    gaps: int = 0  # gaps (more than GAP_TOLERANCE_BARS missing bars) inside the kept span
    rows_dropped_at_gaps: int = 0  # rows lost because a label or indicator window would span a gap
    label: str = "threshold"  # label kind (features.labels.LABELS)
    sample_weights: str = "none"  # weighting actually applied: "uniqueness" or "none" (never "auto")
    ends: np.ndarray | None = None
    weights: np.ndarray | None = None
    primary: str = "none"  # meta-labeling's primary side (features.primary): y are then meta-labels

    @property
    def fit_weights(self) -> np.ndarray | None:
        """Weights to pass to ``fit(..., sample_weight=...)``: None when unweighted (the libraries'
        unweighted path, bit for bit what an unweighted run always fitted)."""
        return None if self.sample_weights == "none" else self.weights

    @property
    def n_rows(self) -> int:
        """Number of usable rows."""
        return len(self.y)

    @property
    def class_counts(self) -> dict[str, int]:
        """Rows per class, keyed by class name (every class present, zero included)."""
        counts = np.bincount(self.y.to_numpy(), minlength=len(CLASS_NAMES))
        return {name: int(n) for name, n in zip(CLASS_NAMES, counts, strict=True)}


def _check_min_rows(min_rows: object) -> int:
    if isinstance(min_rows, bool) or not isinstance(min_rows, int | np.integer):
        raise TypeError(f"min_rows must be an int >= 1, got {min_rows!r} of type {type(min_rows).__name__}")
    if min_rows < 1:
        raise ValueError(f"min_rows must be an int >= 1, got {min_rows!r}")
    return int(min_rows)


def build_dataset(
    candles: pd.DataFrame,
    feature_set: str = "default",
    horizon: int = 6,
    threshold: float = 0.005,
    vol_window: int = 0,
    min_rows: int = MIN_ROWS,
    context_timeframe: str | None = None,
    label: str = "threshold",
    sample_weights: str = "auto",
    pair: bool = False,
    primary: str = "none",
) -> Dataset:
    """Compute features and labels and keep the rows where all of them are defined.

    ``label``: "threshold" or "triple_barrier" (``features.labels``; ``threshold`` is then the barrier
    width). ``sample_weights``: "uniqueness", "none", or "auto" (uniqueness for triple_barrier, none for
    threshold).

    ``context_timeframe`` (e.g. "4h") appends the ``ctx_*`` columns of ``features.context`` to the 15
    base features; their longer warm-up removes more leading rows. ``pair`` appends the second
    instrument's ``pair_*`` features (``features.pair``; the candles carry its ``pair_*`` columns). Rows
    whose pair features are NaN because the pair had no fresh candle (its staleness rule) are dropped
    wherever they fall, and counted in ``rows_dropped_at_gaps``: that leaves rows k apart at least k bars
    apart, which is all purging needs.

    ``primary`` (meta-labeling, ``features.primary``): "momentum" appends the ``primary_side`` column and
    makes ``y`` the meta-labels of the ``label`` kind (``features.labels.meta_labels``: buy or sell where
    acting on the side pays, hold otherwise); label spans and weights are those of the labels.

    Raises ``InsufficientDataError`` when fewer than ``min_rows`` rows remain, and ``ValueError`` when a
    NaN appears in the middle of the data (non-contiguous rows) or a class is absent (``DataError``, a
    ``ValueError``, when the context timeframe does not fit the candles' bar).
    """
    min_rows = _check_min_rows(min_rows)
    weighting = resolve_sample_weights(label, sample_weights)  # also checks label
    check_primary(primary)
    features = compute_model_features(
        candles, feature_set, context_timeframe, pair=pair, primary=primary, horizon=horizon
    )
    bar = infer_bar(candles.index) if len(candles) >= 2 else None
    parts = segments(candles.index, bar) if bar is not None else [slice(0, len(candles))]
    labels, ends = _labels_by_segment(candles["close"], parts, horizon, threshold, vol_window, label)
    if primary != "none":
        labels = meta_labels(labels, features[PRIMARY_COLUMN])  # does acting on the side pay?

    positions, dropped_at_gaps = _usable_rows(features, labels, parts, pair)
    if len(positions) < min_rows:
        _raise_too_few(
            candles,
            positions,
            dropped_at_gaps,
            min_rows,
            feature_set,
            context_timeframe,
            pair,
            primary,
            horizon,
            vol_window,
        )

    bars = positions.astype(np.int64)
    ids = segment_ids(candles.index, bar) if bar is not None else np.zeros(len(candles), dtype=np.int64)
    row_ends = ends[bars].astype(np.int64)
    dataset = Dataset(
        X=features.iloc[bars],
        y=labels.iloc[bars].astype("int64"),
        bars=bars,
        candles=candles,
        gaps=int(ids[bars[-1]] - ids[bars[0]]),
        rows_dropped_at_gaps=int(dropped_at_gaps),
        label=label,
        sample_weights=weighting,
        ends=row_ends,
        weights=_sample_weights(weighting, bars, row_ends, len(candles)),
        primary=primary,
    )
    _check_every_class(dataset, threshold, horizon, vol_window)
    return dataset


def _labels_by_segment(
    close: pd.Series, parts: list[slice], horizon: int, threshold: float, vol_window: int, label: str
) -> tuple[pd.Series, np.ndarray]:
    """Labels and the candle position that decided each (t1). No label window spans a gap: each gap-free
    stretch is labelled on its own."""
    labelled = [labels_and_ends(close.iloc[p], horizon, threshold, vol_window, label) for p in parts]
    labels = pd.concat([lab for lab, _ in labelled])
    ends = np.concatenate([t1.to_numpy() + p.start for p, (_, t1) in zip(parts, labelled, strict=True)])
    return labels, ends


def _usable_rows(
    features: pd.DataFrame, labels: pd.Series, parts: list[slice], pair: bool
) -> tuple[np.ndarray, int]:
    """Candle positions whose features and label are all defined, and how many rows between the first and
    the last of them were dropped next to gaps. Raises ValueError for a NaN inside a gap-free stretch."""
    label_ok = labels.notna().to_numpy()
    usable = features.notna().all(axis=1).to_numpy() & label_ok
    # Holes left by missing pair candles may fall anywhere; any other NaN must not (checked below).
    pair_cols = features.columns.isin(PAIR_FEATURE_NAMES)
    contiguous = (features.loc[:, ~pair_cols].notna().all(axis=1).to_numpy() & label_ok) if pair else usable
    positions = np.flatnonzero(usable)
    if not len(positions):
        return positions, 0
    for p in parts:  # inside a gap-free stretch the usable rows must be one block
        inside = np.flatnonzero(contiguous[p])
        if len(inside) and inside[-1] - inside[0] + 1 != len(inside):
            _raise_gap(features, labels, p.start + inside[0], p.start + inside[-1], contiguous)
    return positions, int(positions[-1] - positions[0] + 1) - len(positions)


def _raise_too_few(
    candles: pd.DataFrame,
    positions: np.ndarray,
    dropped_at_gaps: int,
    min_rows: int,
    feature_set: str,
    context_timeframe: str | None,
    pair: bool,
    primary: str,
    horizon: int,
    vol_window: int,
) -> NoReturn:
    """Say how many rows the warm-up, the label horizon and the gaps cost, and what would give more."""
    n = len(candles)
    if len(positions):
        lost_head, lost_tail = int(positions[0]), n - 1 - int(positions[-1])
    else:
        # Nothing usable: report what warm-up and horizon would cost (the label's volatility window
        # needs vol_window past returns, which can exceed the indicator warm-up).
        bar = infer_bar(candles.index) if context_label(context_timeframe) else None
        warmup = min_history_bars(feature_set, context_timeframe, bar, pair, primary, horizon) - 1
        lost_head = min(n, max(warmup, vol_window))
        lost_tail = n - lost_head
    context = context_label(context_timeframe)
    raise InsufficientDataError(
        f"only {len(positions)} usable rows from {n} candles, need at least {min_rows}: "
        f"{lost_head} rows were lost to indicator warm-up (feature_set={feature_set!r}"
        f"{f', context_timeframe={context!r}' if context else ''}"
        f"{f', vol_window={vol_window}' if vol_window else ''}) and {lost_tail} to the label horizon "
        f"(horizon={horizon})"
        + (f", and {dropped_at_gaps} next to gaps in the candles" if dropped_at_gaps else "")
        + f". Load more history (a larger `days`), use a smaller `timeframe`"
        f"{', a shorter `context_timeframe`' if context else ''}, or use a different data file."
    )


def _sample_weights(weighting: str, bars: np.ndarray, ends: np.ndarray, n_candles: int) -> np.ndarray:
    """Per-row weights with mean 1: the labels' average uniqueness, or all ones."""
    if weighting != "uniqueness":
        return np.ones(len(bars))
    uniqueness = average_uniqueness(bars, ends, n_candles)
    return uniqueness / uniqueness.mean()


def _check_every_class(dataset: Dataset, threshold: float, horizon: int, vol_window: int) -> None:
    """A classifier needs every class: name the absent ones and what would bring them back."""
    counts = dataset.class_counts
    absent = [name for name, count in counts.items() if count == 0]
    if not absent:
        return
    advice = []
    if "hold" in absent:
        advice.append("a larger threshold (no row stays within +-threshold)")
    if "buy" in absent or "sell" in absent:
        advice.append("a smaller threshold (or a longer horizon / more data)")
    label, primary = dataset.label, dataset.primary
    raise ValueError(
        f"class(es) {absent} have no rows (class counts {counts}, label={label}, threshold={threshold}, "
        f"horizon={horizon}, vol_window={vol_window}"
        f"{f', primary={primary}' if primary != 'none' else ''}); a classifier needs every class. Try "
        + " or ".join(advice)
        + "."
    )


def _raise_gap(
    features: pd.DataFrame, labels: pd.Series, first: int, last: int, usable: np.ndarray
) -> NoReturn:
    """Name the first undefined row inside the usable span and which columns are NaN there."""
    gap = first + int(np.argmax(~usable[first : last + 1]))
    missing = features.columns[features.iloc[gap].isna().to_numpy()].tolist()
    if pd.isna(labels.iat[gap]):
        missing.append("label")
    raise ValueError(
        f"NaN in the middle of the data at {features.index[gap]} (bar {gap}) in {missing}; between gaps "
        f"the usable rows must be one contiguous block of bars (downstream purging assumes it). This means "
        f"NaN or missing values in the candles around that time; clean or drop them before building."
    )
