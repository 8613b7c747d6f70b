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

The analysis is :func:`evaluation.lookahead_analysis.analyse` (the pipeline runs it before training too).

Exit code 0 when nothing changed, 1 when anything did (the offending columns are named on stderr) or the
input is bad, 2 for malformed options (argparse).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.lookahead_analysis import analyse
from features.context import context_label, feature_function
from features.data import load_candles
from features.indicators import FEATURE_SETS, compute_features
from features.labels import LABELS, label_function, make_labels
from features.pair import align_pair, load_pair
from features.primary import PRIMARIES
from models import cli

__all__ = ["build_parser", "main"]


# --------------------------------------------------------------------------------------------------
# Command line


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


@dataclass(frozen=True)
class LookaheadOptions:
    """The look-ahead command's options and their defaults (the label's are the pipeline's)."""

    data: str = "builtin"
    timeframe: str = ""
    days: int = 0
    features: str = "all"
    context_timeframe: str = ""
    pair_data: str = ""
    cuts: int = 50
    horizon: int = 6
    threshold: float = 0.005
    vol_window: int = 0
    label: str = "threshold"
    primary: str = "none"
    seed: int = 0
    output: str = ""


HELP = {
    "data": "'builtin' or a CSV/CSV.gz/Parquet file of candles",
    "timeframe": "resample to e.g. 1h ('' = native bars)",
    "days": "keep only the last N days (0 = all)",
    "features": f"'all' or a comma list from {', '.join(FEATURE_SETS)}",
    "context_timeframe": "also check the ctx_* features on this coarser timeframe, e.g. 4h ('' = none)",
    "pair_data": "also check the pair_* features of this second instrument's candles ('' = none)",
    "cuts": "number of cut points",
    "horizon": "label horizon in bars",
    "threshold": "label threshold",
    "vol_window": "label vol window",
    "label": "label kind",
    "primary": "also check meta-labeling's primary_side of this rule, over --horizon bars",
    "seed": "seed of the random cut points",
    "output": "also write the markdown report to this file ('' = none)",
}


def build_parser() -> cli.Parser:
    parser = cli.Parser(
        "python -m evaluation.lookahead",
        "Recompute every feature and the label on truncated histories at many cut points and "
        "report any value that changes (look-ahead bias). Exit 0 = none found, 1 = found or bad input.",
    )
    cli.add_options(parser, LookaheadOptions, HELP, choices={"label": LABELS, "primary": PRIMARIES})
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    return cli.main(build_parser(), argv, _main, (ValueError, TypeError, RuntimeError), runs=False)


def _main(args: argparse.Namespace) -> int:
    if args.days < 0:
        raise ValueError(f"days must be >= 0 (0 = all), got {args.days}")
    if args.cuts < 1:
        raise ValueError(f"cuts must be >= 1, got {args.cuts}")
    sets = _feature_sets(args.features)
    context_label(args.context_timeframe)  # a malformed value fails before any file is read
    candles, info = load_candles(args.data, args.timeframe or None, args.days or None)
    # Module globals looked up at call time, so a test can monkeypatch a leaking function in.
    compute: Callable[..., Any] = compute_features
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
    if not report.passed:
        named = "; ".join(
            f"{fs}: " + ", ".join(f"{col} ({report.counts[fs][col].changed:,} values)" for col in cols)
            for fs, cols in report.leaking_columns().items()
        )
        print(f"look-ahead found in {named}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    cli.run(main)
