"""Look-ahead bias analysis: recompute features and labels on truncated histories and report any change.

The check freqtrade's ``lookahead-analysis`` popularised: a feature is causal only if its value at bar t
is the same whether the data ends at t or runs on for years. For each cut point c ("the data ends at bar
c") every feature set is recomputed on ``candles.iloc[:c + 1]`` and compared with the features of the
full history at **every** row <= c (not just the last few: recomputing dominates the cost, the comparison
is a vectorised pass, and a whole 35k-row builtin run takes a few seconds). A value that differs is
look-ahead: it depended on bars after c.

Labels look ahead by design (the label at t uses bars t+1 .. t+horizon), so their rule is: on the data
ending at c, labels at rows <= c - horizon equal the full-history labels, and rows > c - horizon are NaN
(an incomplete horizon must never be defaulted to a class).

The pipeline runs :func:`analyse` before training; ``python -m evaluation.lookahead``
(:mod:`evaluation.lookahead`) runs it on any candles and feature sets and prints the report.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.indicators import FEATURE_SETS, compute_features, warmup_bars
from features.labels import make_labels

__all__ = ["LABEL_SET", "MAX_FINDINGS_PER_COLUMN", "Finding", "LookaheadReport", "analyse", "choose_cuts"]

# Pseudo feature set under which label findings and counts are reported.
LABEL_SET = "label"
RTOL = 1e-9
ATOL = 1e-12
# Findings kept per (feature set, column); the counts are always complete. A leak through a global
# statistic changes every row at every cut, which would otherwise mean millions of stored findings.
MAX_FINDINGS_PER_COLUMN = 20

ComputeFn = Callable[[pd.DataFrame, str], pd.DataFrame]
LabelFn = Callable[[pd.Series, int, float, int], pd.Series]


@dataclass(frozen=True)
class Finding:
    """One value that is not reproducible from the data available at its cut.

    ``reason`` is "changed" (truncated and full values differ) or "not NaN" (a label whose horizon runs
    past the end of the truncated data has a value instead of NaN).
    """

    feature_set: str
    column: str
    cut: Any
    row: Any
    truncated: float
    full: float
    reason: str = "changed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_set": self.feature_set,
            "column": self.column,
            "cut": _label(self.cut),
            "row": _label(self.row),
            "truncated": _num(self.truncated),
            "full": _num(self.full),
            "reason": self.reason,
        }


@dataclass
class ColumnCount:
    """Values of one column compared over all cuts, and how many of them were not reproducible."""

    rows_checked: int = 0
    changed: int = 0


@dataclass
class LookaheadReport:
    """Result of :func:`analyse`.

    ``findings`` holds at most ``MAX_FINDINGS_PER_COLUMN`` examples per column (earliest cuts first);
    ``counts[feature_set][column]`` has the complete numbers. ``rows_checked`` is the number of (cut, row)
    pairs compared per feature set, i.e. the sum of ``c + 1`` over the cuts.
    """

    feature_sets: list[str]
    cuts: list[Any]
    cut_positions: list[int]
    n_rows: int
    horizon: int
    threshold: float
    vol_window: int
    rows_checked: int
    counts: dict[str, dict[str, ColumnCount]]
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.leaking_columns()

    @property
    def n_cuts(self) -> int:
        return len(self.cuts)

    @property
    def values_checked(self) -> int:
        return sum(c.rows_checked for cols in self.counts.values() for c in cols.values())

    def leaking_columns(self) -> dict[str, list[str]]:
        """{feature_set: [columns with at least one changed value]}, only sets with such columns."""
        out: dict[str, list[str]] = {}
        for fs, cols in self.counts.items():
            bad = [name for name, c in cols.items() if c.changed]
            if bad:
                out[fs] = bad
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (timestamps as ISO strings, NaN as None)."""
        return {
            "passed": self.passed,
            "n_rows": self.n_rows,
            "n_cuts": self.n_cuts,
            "cuts": [_label(c) for c in self.cuts],
            "cut_positions": list(self.cut_positions),
            "rows_checked": self.rows_checked,
            "values_checked": self.values_checked,
            "feature_sets": list(self.feature_sets),
            "label": {"horizon": self.horizon, "threshold": self.threshold, "vol_window": self.vol_window},
            "tolerance": {"rtol": RTOL, "atol": ATOL},
            "counts": {
                fs: {name: {"rows_checked": c.rows_checked, "changed": c.changed} for name, c in cols.items()}
                for fs, cols in self.counts.items()
            },
            "leaking_columns": self.leaking_columns(),
            "findings": [f.to_dict() for f in self.findings],
            "max_findings_per_column": MAX_FINDINGS_PER_COLUMN,
            "seconds": round(self.seconds, 3),
        }

    def to_markdown(self, max_examples: int = 10) -> str:
        """Summary, one table per feature set (plus one for the label), and a few example findings."""
        verdict = "PASSED: no look-ahead found" if self.passed else "FAILED: look-ahead found"
        span = f"{_label(self.cuts[0])} .. {_label(self.cuts[-1])}" if self.cuts else "none"
        lines = [
            "# Look-ahead analysis",
            "",
            f"**{verdict}.** {self.n_cuts} cuts ({span}) on {self.n_rows:,} rows; every row up to each cut "
            f"compared, {self.rows_checked:,} (cut, row) pairs per feature set, {self.values_checked:,} "
            f"values in all; tolerance {RTOL:g} relative + {ATOL:g} absolute; {self.seconds:.1f} s.",
        ]
        for fs, cols in self.counts.items():
            title = (
                f"label (horizon {self.horizon}, threshold {self.threshold:g}, vol_window "
                f"{self.vol_window}): rows <= cut - horizon must match, later rows must be NaN"
                if fs == LABEL_SET
                else f"feature set `{fs}`"
            )
            lines += ["", f"## {title}", "", "| column | rows checked | changed values | status |"]
            lines.append("|---|---:|---:|---|")
            for name, c in cols.items():
                status = "LOOK-AHEAD" if c.changed else "ok"
                lines.append(f"| {name} | {c.rows_checked:,} | {c.changed:,} | {status} |")
        if self.findings:
            lines += ["", f"## Examples (first {min(max_examples, len(self.findings))} of the findings)", ""]
            lines += ["| feature set | column | data ends at | row | truncated | full | reason |"]
            lines.append("|---|---|---|---|---:|---:|---|")
            for f in self.findings[:max_examples]:
                lines.append(
                    f"| {f.feature_set} | {f.column} | {_label(f.cut)} | {_label(f.row)} | "
                    f"{_fmt(f.truncated)} | {_fmt(f.full)} | {f.reason} |"
                )
        return "\n".join(lines) + "\n"


def _label(value: Any) -> Any:
    if isinstance(value, pd.Timestamp | np.datetime64):
        return pd.Timestamp(value).isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value if isinstance(value, int | float | str) or value is None else str(value)


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _fmt(x: float) -> str:
    return "NaN" if math.isnan(x) else f"{x:.10g}"


# --------------------------------------------------------------------------------------------------
# Analysis


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _declared_warmup(feature_set: str, full: pd.DataFrame) -> int:
    """Leading NaN rows: the set's declared warm-up, or the one observed in ``full`` if that is later
    (higher-timeframe context columns start later than the base set declares)."""
    complete = full.notna().all(axis=1).to_numpy()
    observed = int(np.argmax(complete)) if complete.any() else len(full)
    return max(warmup_bars(feature_set), observed) if feature_set in FEATURE_SETS else observed


def choose_cuts(n_rows: int, cuts: int, warmup: int, horizon: int, seed: int = 0) -> list[int]:
    """``min(cuts, n_rows)`` distinct positions in [0, n_rows - 1], sorted; deterministic for a seed.

    Up to a quarter of the budget goes to early positions, in priority order: the first complete row
    ``warmup``, row 0, ``warmup - 1``, ``warmup + 1``, ``warmup + horizon``, then 1, 3, 7, 15 ... inside
    the warm-up (a back-fill leak only shows at a cut before the column's first value); ``cuts // 10``
    positions are seeded random ones; the rest are evenly spaced from ``warmup`` to the last row. Positions
    lost to duplicates are replaced by seeded random ones.
    """
    cuts = _check_int("cuts", cuts, 1)
    last = n_rows - 1
    warmup = min(max(warmup, 0), last)
    early = [warmup, 0, warmup - 1, warmup + 1, warmup + horizon]
    early += [2**k - 1 for k in range(1, 64) if 2**k - 1 < warmup - 1]
    early = [p for p in dict.fromkeys(early) if 0 <= p <= last]
    n_random = cuts // 10
    n_early = min(len(early), (cuts - n_random) // 4)
    n_even = cuts - n_random - n_early
    chosen = set(early[:n_early])
    chosen.update(int(p) for p in np.rint(np.linspace(warmup, last, n_even)))
    rng = np.random.default_rng(seed)
    # Random positions: first from after the warm-up, then (if the series is tiny) from anywhere.
    for lo in (warmup, 0):
        missing = min(cuts, n_rows) - len(chosen)
        pool = np.setdiff1d(np.arange(lo, last + 1), np.fromiter(chosen, dtype=np.int64, count=len(chosen)))
        if missing > 0 and len(pool):
            chosen.update(int(p) for p in rng.choice(pool, size=min(missing, len(pool)), replace=False))
    return sorted(chosen)


def _as_matrix(frame: pd.DataFrame, index: pd.Index, columns: list[str], what: str) -> np.ndarray:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{what} must return a DataFrame, got {type(frame).__name__}")
    if list(frame.columns) != columns:
        raise ValueError(f"{what} returned columns {list(frame.columns)}, expected {columns}")
    if not frame.index.equals(index):
        raise ValueError(f"{what} must return one row per candle with the candles' index")
    return frame.to_numpy(dtype="float64")


def _differs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise "not the same value": NaN equals NaN, equal infinities are equal, else a tolerance."""
    with np.errstate(invalid="ignore"):
        close = np.abs(a - b) <= RTOL * np.maximum(np.abs(a), np.abs(b)) + ATOL
    return ~(close | (a == b) | (np.isnan(a) & np.isnan(b)))


def analyse(
    candles: pd.DataFrame,
    feature_sets: str | Sequence[str] = FEATURE_SETS,
    cuts: int = 50,
    horizon: int = 6,
    threshold: float = 0.005,
    vol_window: int = 0,
    compute: ComputeFn = compute_features,
    seed: int = 0,
    labels: LabelFn = make_labels,
) -> LookaheadReport:
    """Recompute features and labels on the data ending at each of ``cuts`` cut points; report changes.

    ``compute(candles, feature_set)`` and ``labels(close, horizon, threshold, vol_window)`` are injectable
    (a test passes a deliberately leaking one). Cut points come from :func:`choose_cuts`, using the
    largest warm-up of the feature sets and the label's ``vol_window``.

    Features: at every cut c, ``compute(candles.iloc[:c + 1], fs)`` must equal ``compute(candles, fs)``
    at **all** rows <= c (NaN equals NaN; |a - b| <= 1e-9 * max(|a|, |b|) + 1e-12). Labels: rows
    <= c - horizon must equal the full-history labels, rows > c - horizon must be NaN.
    """
    sets = _check_inputs(candles, feature_sets)
    horizon = _check_int("horizon", horizon, 1)
    vol_window = _check_int("vol_window", vol_window, 0)
    cuts = _check_int("cuts", cuts, 1)
    started = time.perf_counter()

    full = _FullHistory.compute(candles, sets, compute, vol_window)
    index = candles.index
    full_labels = _label_array(
        labels(candles["close"], horizon, threshold, vol_window), index, "labels(close, ...)"
    )
    positions = choose_cuts(len(candles), cuts, full.warmup, horizon, seed)
    tally = _Tally(index, full.columns)
    for c in positions:
        part = candles.iloc[: c + 1]
        for fs in sets:
            _check_features(tally, part, fs, compute, full)
        truncated = _label_array(
            labels(part["close"], horizon, threshold, vol_window), part.index, f"labels(close[:{c + 1}], ...)"
        )
        _check_labels(tally, c, truncated, full_labels, horizon)

    return LookaheadReport(
        feature_sets=sets,
        cuts=[index[p] for p in positions],
        cut_positions=positions,
        n_rows=len(candles),
        horizon=horizon,
        threshold=float(threshold),
        vol_window=vol_window,
        rows_checked=sum(p + 1 for p in positions),
        counts=tally.counts,
        findings=tally.sorted_findings(),
        seconds=time.perf_counter() - started,
    )


def _check_inputs(candles: pd.DataFrame, feature_sets: str | Sequence[str]) -> list[str]:
    """The feature sets as a list, after checking the candles can be cut and the names are distinct."""
    if not isinstance(candles, pd.DataFrame):
        raise TypeError(f"candles must be a pandas DataFrame, got {type(candles).__name__}")
    if "close" not in candles.columns:
        raise ValueError(f"candles need a 'close' column (and open, high, low, volume), got {list(candles)}")
    if len(candles) < 2:
        raise ValueError(f"need at least 2 candles to cut, got {len(candles)}")
    sets = [feature_sets] if isinstance(feature_sets, str) else list(feature_sets)
    if not sets or not all(isinstance(s, str) for s in sets) or len(set(sets)) != len(sets):
        raise ValueError(
            f"feature_sets must be distinct names from {list(FEATURE_SETS)}, got {feature_sets!r}"
        )
    return sets


@dataclass
class _FullHistory:
    """Each feature set computed on all the candles: ``values[fs]`` (rows x columns), ``columns[fs]``, and
    the warm-up the cut points start from (the largest of the sets' and the label's ``vol_window``)."""

    values: dict[str, np.ndarray]
    columns: dict[str, list[str]]
    warmup: int

    @classmethod
    def compute(
        cls, candles: pd.DataFrame, sets: list[str], compute: ComputeFn, vol_window: int
    ) -> _FullHistory:
        values: dict[str, np.ndarray] = {}
        columns: dict[str, list[str]] = {}
        warmup = vol_window
        for fs in sets:
            frame = compute(candles, fs)
            if not isinstance(frame, pd.DataFrame):
                raise TypeError(
                    f"compute(candles, {fs!r}) must return a DataFrame, got {type(frame).__name__}"
                )
            columns[fs] = [str(c) for c in frame.columns]
            values[fs] = _as_matrix(frame, candles.index, columns[fs], f"compute(candles, {fs!r})")
            warmup = max(warmup, _declared_warmup(fs, frame))
        return cls(values, columns, warmup)


class _Tally:
    """Complete counts per (feature set, column) and at most ``MAX_FINDINGS_PER_COLUMN`` findings of each,
    recorded as the cuts are checked (label findings under :data:`LABEL_SET`)."""

    def __init__(self, index: pd.Index, columns: dict[str, list[str]]) -> None:
        self.index = index
        self.counts = {fs: {c: ColumnCount() for c in cols} for fs, cols in columns.items()}
        self.counts[LABEL_SET] = {"label": ColumnCount()}
        self.findings: list[Finding] = []
        self._kept: dict[tuple[str, str], int] = {}

    def record(
        self, fs: str, col: str, c: int, rows: np.ndarray, trunc: np.ndarray, ref: np.ndarray, why: str
    ) -> None:
        """Count the ``rows`` whose value at cut ``c`` is not reproducible; keep the first few as findings."""
        self.counts[fs][col].changed += len(rows)
        kept = self._kept.get((fs, col), 0)
        room = max(MAX_FINDINGS_PER_COLUMN - kept, 0)
        for r in rows[:room]:
            self.findings.append(
                Finding(fs, col, self.index[c], self.index[r], float(trunc[r]), float(ref[r]), why)
            )
        self._kept[(fs, col)] = kept + min(len(rows), room)

    def sorted_findings(self) -> list[Finding]:
        """By feature set and column; the sort is stable, so cuts stay in order within a column."""
        return sorted(self.findings, key=lambda f: (f.feature_set, f.column))


def _check_features(
    tally: _Tally, part: pd.DataFrame, fs: str, compute: ComputeFn, full: _FullHistory
) -> None:
    """Feature set ``fs`` recomputed on the candles ``part`` (the data ending at cut c) against the full
    history at every row <= c."""
    c = len(part) - 1
    try:
        frame = compute(part, fs)
    except Exception as exc:
        raise RuntimeError(
            f"compute(candles, {fs!r}) failed on the {c + 1} candles ending at {part.index[c]}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    columns, reference = full.columns[fs], full.values[fs]
    trunc = _as_matrix(frame, part.index, columns, f"compute(candles[:{c + 1}], {fs!r})")
    changed = _differs(trunc, reference[: c + 1])
    for j, col in enumerate(columns):
        tally.counts[fs][col].rows_checked += c + 1
        rows = np.flatnonzero(changed[:, j])
        if len(rows):
            tally.record(fs, col, c, rows, trunc[:, j], reference[:, j], "changed")


def _check_labels(tally: _Tally, c: int, truncated: np.ndarray, full: np.ndarray, horizon: int) -> None:
    """Labels on the data ending at cut ``c``: rows with a complete horizon inside it must equal the
    full-history labels, later rows must be NaN."""
    tally.counts[LABEL_SET]["label"].rows_checked += c + 1
    settled = max(c - horizon + 1, 0)  # rows < settled have a complete horizon inside the truncated data
    head = np.flatnonzero(_differs(truncated[:settled], full[:settled]))
    if len(head):
        tally.record(LABEL_SET, "label", c, head, truncated, full, "changed")
    tail = settled + np.flatnonzero(~np.isnan(truncated[settled:]))
    if len(tail):
        tally.record(LABEL_SET, "label", c, tail, truncated, full, "not NaN")


def _label_array(values: pd.Series, index: pd.Index, what: str) -> np.ndarray:
    if not isinstance(values, pd.Series):
        raise TypeError(f"{what} must return a Series, got {type(values).__name__}")
    if not values.index.equals(index):
        raise ValueError(f"{what} must return one label per candle with the candles' index")
    return values.to_numpy(dtype="float64")
