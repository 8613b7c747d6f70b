"""Look-ahead bias analysis: recompute features and labels on truncated histories and report any change.

    python -m evaluation.lookahead --data builtin --features all --cuts 50 [--context-timeframe 4h]
        [--output lookahead.md]

The check freqtrade's ``lookahead-analysis`` popularised: a feature is causal only if its value at bar t
is the same whether the data ends at t or runs on for years. For each cut point c ("the data ends at bar
c") every feature set is recomputed on ``candles.iloc[:c + 1]`` and compared with the features of the
full history at **every** row <= c (not just the last few: recomputing dominates the cost, the comparison
is a vectorised pass, and a whole 35k-row builtin run takes a few seconds). A value that differs is
look-ahead: it depended on bars after c. With ``--context-timeframe`` the higher-timeframe ``ctx_*``
columns of ``features.context`` are checked the same way, beside the 15 base features, and with
``--pair-data`` the second instrument's ``pair_*`` columns (``features.pair``): its candles ride in the
same frame, so each cut truncates both instruments.

Labels look ahead by design (the label at t uses bars t+1 .. t+horizon), so their rule is: on the data
ending at c, labels at rows <= c - horizon equal the full-history labels, and rows > c - horizon are NaN
(an incomplete horizon must never be defaulted to a class).

Exit code 0 when nothing changed, 1 when anything did (the offending columns are named on stderr) or the
input is bad, 2 for malformed options (argparse).
"""

from __future__ import annotations

import argparse
import math
import numbers
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.context import context_label, feature_function
from features.data import DataError, load_candles
from features.indicators import FEATURE_SETS, compute_features, warmup_bars
from features.labels import LABELS, label_function, make_labels
from features.pair import align_pair, load_pair
from features.primary import PRIMARIES
from models.redaction import install

__all__ = ["LABEL_SET", "Finding", "LookaheadReport", "analyse", "choose_cuts", "main"]

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
    horizon = _check_int("horizon", horizon, 1)
    vol_window = _check_int("vol_window", vol_window, 0)
    cuts = _check_int("cuts", cuts, 1)
    started = time.perf_counter()

    n = len(candles)
    index = candles.index
    full: dict[str, np.ndarray] = {}
    columns: dict[str, list[str]] = {}
    warmup = vol_window
    for fs in sets:
        frame = compute(candles, fs)
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"compute(candles, {fs!r}) must return a DataFrame, got {type(frame).__name__}")
        columns[fs] = [str(c) for c in frame.columns]
        full[fs] = _as_matrix(frame, index, columns[fs], f"compute(candles, {fs!r})")
        warmup = max(warmup, _declared_warmup(fs, frame))
    close = candles["close"]
    full_labels = _label_array(labels(close, horizon, threshold, vol_window), index, "labels(close, ...)")

    positions = choose_cuts(n, cuts, warmup, horizon, seed)
    counts = {fs: {c: ColumnCount() for c in columns[fs]} for fs in sets}
    counts[LABEL_SET] = {"label": ColumnCount()}
    findings: list[Finding] = []
    kept: dict[tuple[str, str], int] = {}

    def record(fs: str, col: str, c: int, rows: np.ndarray, trunc: np.ndarray, ref: np.ndarray, why: str):
        counts[fs][col].changed += len(rows)
        room = max(MAX_FINDINGS_PER_COLUMN - kept.get((fs, col), 0), 0)
        for r in rows[:room]:
            findings.append(Finding(fs, col, index[c], index[r], float(trunc[r]), float(ref[r]), why))
        kept[(fs, col)] = kept.get((fs, col), 0) + min(len(rows), room)

    for c in positions:
        part = candles.iloc[: c + 1]
        for fs in sets:
            try:
                frame = compute(part, fs)
            except Exception as exc:
                raise RuntimeError(
                    f"compute(candles, {fs!r}) failed on the {c + 1} candles ending at {index[c]}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            trunc = _as_matrix(frame, part.index, columns[fs], f"compute(candles[:{c + 1}], {fs!r})")
            changed = _differs(trunc, full[fs][: c + 1])
            for j, col in enumerate(columns[fs]):
                counts[fs][col].rows_checked += c + 1
                rows = np.flatnonzero(changed[:, j])
                if len(rows):
                    record(fs, col, c, rows, trunc[:, j], full[fs][:, j], "changed")

        trunc_labels = _label_array(
            labels(part["close"], horizon, threshold, vol_window), part.index, f"labels(close[:{c + 1}], ...)"
        )
        counts[LABEL_SET]["label"].rows_checked += c + 1
        settled = c - horizon + 1  # rows < settled have a complete horizon inside the truncated data
        settled = max(settled, 0)
        head = np.flatnonzero(_differs(trunc_labels[:settled], full_labels[:settled]))
        if len(head):
            record(LABEL_SET, "label", c, head, trunc_labels, full_labels, "changed")
        tail = settled + np.flatnonzero(~np.isnan(trunc_labels[settled:]))
        if len(tail):
            record(LABEL_SET, "label", c, tail, trunc_labels, full_labels, "not NaN")

    findings.sort(key=lambda f: (f.feature_set, f.column))  # stable: cuts stay in order within a column
    return LookaheadReport(
        feature_sets=sets,
        cuts=[index[p] for p in positions],
        cut_positions=positions,
        n_rows=n,
        horizon=horizon,
        threshold=float(threshold),
        vol_window=vol_window,
        rows_checked=sum(p + 1 for p in positions),
        counts=counts,
        findings=findings,
        seconds=time.perf_counter() - started,
    )


def _label_array(values: pd.Series, index: pd.Index, what: str) -> np.ndarray:
    if not isinstance(values, pd.Series):
        raise TypeError(f"{what} must return a Series, got {type(values).__name__}")
    if not values.index.equals(index):
        raise ValueError(f"{what} must return one label per candle with the candles' index")
    return values.to_numpy(dtype="float64")


# --------------------------------------------------------------------------------------------------
# Command line


def _whole(text: str) -> int:
    """An int option that also accepts "6.0" (MLflow passes float parameters as given)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def _feature_sets(text: str) -> list[str]:
    if text.strip().lower() in ("all", ""):
        return list(FEATURE_SETS)
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in FEATURE_SETS]
    if unknown:
        raise ValueError(
            f"unknown feature set(s) {unknown}; use 'all' or a comma list from {list(FEATURE_SETS)}"
        )
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.lookahead",
        description="Recompute every feature and the label on truncated histories at many cut points and "
        "report any value that changes (look-ahead bias). Exit 0 = none found, 1 = found or bad input.",
    )
    parser.add_argument("--data", default="builtin", help="'builtin' or a CSV/CSV.gz/Parquet file of candles")
    parser.add_argument("--timeframe", default="", help="resample to e.g. 1h ('' = native bars)")
    parser.add_argument("--days", type=_whole, default=0, help="keep only the last N days (0 = all)")
    parser.add_argument(
        "--features", default="all", help=f"'all' or a comma list from {', '.join(FEATURE_SETS)}"
    )
    parser.add_argument(
        "--context-timeframe",
        dest="context_timeframe",
        default="",
        help="also check the ctx_* features on this coarser timeframe, e.g. 4h ('' = none)",
    )
    parser.add_argument(
        "--pair-data",
        dest="pair_data",
        default="",
        help="also check the pair_* features of this second instrument's candles ('' = none)",
    )
    parser.add_argument("--cuts", type=_whole, default=50, help="number of cut points (default 50)")
    parser.add_argument("--horizon", type=_whole, default=6, help="label horizon in bars")
    parser.add_argument("--threshold", type=float, default=0.005, help="label threshold")
    parser.add_argument("--vol-window", dest="vol_window", type=_whole, default=0, help="label vol window")
    parser.add_argument("--label", default="threshold", choices=LABELS, help="label kind (default threshold)")
    parser.add_argument(
        "--primary",
        default="none",
        choices=PRIMARIES,
        help="also check meta-labeling's primary_side of this rule, over --horizon bars (default none)",
    )
    parser.add_argument("--seed", type=_whole, default=0, help="seed of the random cut points")
    parser.add_argument("--output", default="", help="also write the markdown report to this file")
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    install()  # credentials masked in every line printed or logged from here on (models.redaction)
    args = build_parser().parse_args(None if argv is None else list(argv))
    try:
        if args.days < 0:
            raise ValueError(f"days must be >= 0 (0 = all), got {args.days}")
        if args.cuts < 1:
            raise ValueError(f"cuts must be >= 1, got {args.cuts}")
        sets = _feature_sets(args.features)
        context_label(args.context_timeframe)  # a malformed value fails before any file is read
        candles, info = load_candles(args.data, args.timeframe or None, args.days or None)
        # Module globals looked up at call time, so a test can monkeypatch a leaking function in.
        compute = compute_features
        if args.context_timeframe.strip():
            compute = feature_function(args.context_timeframe, info.bar)
        if args.pair_data.strip():
            # Both instruments' candles in one frame, so every cut truncates both (features.pair).
            pair = load_pair(args.pair_data.strip(), args.timeframe or None, info.bar)
            candles = align_pair(candles, pair, info.bar)
            compute = feature_function(args.context_timeframe, info.bar, pair=True)
        if args.primary != "none":
            compute = feature_function(
                args.context_timeframe or None,
                info.bar,
                pair=bool(args.pair_data.strip()),
                primary=args.primary,
                horizon=args.horizon,
            )
        report = analyse(
            candles,
            sets,
            cuts=args.cuts,
            horizon=args.horizon,
            threshold=args.threshold,
            vol_window=args.vol_window,
            compute=compute,
            seed=args.seed,
            labels=make_labels if args.label == "threshold" else label_function(args.label),
        )
        text = f"{info.describe()}\n\n{report.to_markdown()}"
        print(text, end="")
        if args.output:
            path = Path(args.output)
            try:
                path.write_text(text, encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"cannot write the report to {str(path)!r}: {exc}") from exc
    except (DataError, ValueError, TypeError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not report.passed:
        named = "; ".join(
            f"{fs}: " + ", ".join(f"{col} ({report.counts[fs][col].changed:,} values)" for col in cols)
            for fs, cols in report.leaking_columns().items()
        )
        print(f"look-ahead found in {named}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
