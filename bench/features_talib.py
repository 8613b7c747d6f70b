"""Benchmark: feature throughput, and how closely the `default` feature set agrees with TA-Lib.

Usage: pip install -r bench/requirements.txt && python bench/features_talib.py
       [--repeats 7] [--out bench/results/features_talib.json]

On the built-in BTC/USD 30-minute candles (35,019 rows):

(a) throughput of ``compute_features`` for each feature set: rows per second, best of ``--repeats``
    timed calls after one warm-up call (best-of, because other processes may share the CPUs);
(b) agreement of the `default` set with TA-Lib (``ta-lib`` on PyPI, benchmark-only, pinned in
    bench/requirements.txt): RSI, ATR, ADX, +DI, -DI, the MACD line and the position of the close in
    the Bollinger bands. Our features are scale-free, so TA-Lib's outputs get the same conversion first
    (ATR / close, MACD / close, (close - lower) / (upper - lower)).

Per indicator, over the rows where both are defined, starting ``burn-in`` bars after the first such row
(0, 100, 500): the largest and the 99th-percentile absolute difference. "Within 1e-6" means
|ours - TA-Lib| <= 1e-6 * max(|ours|, |TA-Lib|). The verdict: ``exact`` when every common row is within
1e-6; ``converges after N bars`` when every row from N bars after the first common row on is within it
(a seeding difference that decays: the disagreeing rows fill at least half of that leading stretch and
end before the last 10% of the data); ``differs`` otherwise, e.g. scattered rows of rounding noise.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, write_result  # noqa: E402
from features.data import load_builtin  # noqa: E402
from features.indicators import FEATURE_SETS, compute_features  # noqa: E402

BURN_INS = (0, 100, 500)
REL_TOL = 1e-6


def best_seconds(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up: imports, caches, first-touch allocations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), times


def talib_reference(candles: pd.DataFrame) -> tuple[dict[str, np.ndarray], str]:
    """TA-Lib's values for the compared `default` features, converted to our scale-free form."""
    import talib

    o = {c: candles[c].to_numpy(dtype="float64") for c in ("high", "low", "close")}
    high, low, close = o["high"], o["low"], o["close"]
    upper, _, lower = talib.BBANDS(close, timeperiod=20, nbdevup=2.0, nbdevdn=2.0, matype=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        bb_position = (close - lower) / (upper - lower)
    macd_line, _, _ = talib.MACD(close, fastperiod=12, slowperiod=26, signalperiod=9)
    ref = {
        "rsi_14": talib.RSI(close, timeperiod=14),
        "atr_14": talib.ATR(high, low, close, timeperiod=14) / close,
        "adx_14": talib.ADX(high, low, close, timeperiod=14),
        "plus_di_14": talib.PLUS_DI(high, low, close, timeperiod=14),
        "minus_di_14": talib.MINUS_DI(high, low, close, timeperiod=14),
        "macd": macd_line / close,
        "bb_position": bb_position,
    }
    return ref, talib.__version__


def first_valid(x: np.ndarray) -> int | None:
    ok = np.flatnonzero(np.isfinite(x))
    return int(ok[0]) if len(ok) else None


def compare(ours: np.ndarray, ref: np.ndarray) -> dict:
    n = len(ours)
    both = np.isfinite(ours) & np.isfinite(ref)
    start = int(np.argmax(both))
    idx = np.flatnonzero(both)
    diff = np.abs(ours[idx] - ref[idx])
    scale = np.maximum(np.abs(ours[idx]), np.abs(ref[idx]))
    within = diff <= REL_TOL * scale
    out: dict = {
        "first_valid_ours": first_valid(ours),
        "first_valid_talib": first_valid(ref),
        "common_rows": len(idx),
        "by_burn_in": {},
    }
    for burn in BURN_INS:
        keep = idx >= start + burn
        d = diff[keep]
        out["by_burn_in"][str(burn)] = {
            "rows": int(keep.sum()),
            "max_abs": float(d.max()),
            "p99_abs": float(np.quantile(d, 0.99)),
            "share_within_1e-6_rel": float(within[keep].mean()),
        }
    bad = idx[~within]
    out["rows_outside_1e-6_rel"] = len(bad)
    out["converges_after_bars"] = None
    if len(bad) == 0:
        out["verdict"] = "exact"
        out["converges_after_bars"] = 0
        return out
    span = int(bad[-1] - start + 1)
    rel = diff[~within] / scale[~within]
    if bad[-1] < n - n // 10 and len(bad) >= span / 2:
        # The disagreeing rows are (nearly) all of a leading stretch: a seeding difference that decays.
        out["converges_after_bars"] = span
        out["verdict"] = f"converges after {span} bars"
    else:
        # Scattered rows: rounding, not seeding (a seeding difference would fill a leading stretch).
        out["verdict"] = (
            f"differs: {len(bad)} scattered rows outside 1e-6 rel (max rel {rel.max():.0e}, "
            f"max abs {diff.max():.0e}), last at bar {int(bad[-1])}"
        )
    return out


def bb_position_exact(close: np.ndarray, t: int, period: int = 20, k: float = 2.0) -> float:
    """Position of close[t] in its ddof=0 Bollinger bands, mean and variance in exact rational arithmetic
    (only the square root is rounded): the referee when ours and TA-Lib differ by rounding."""
    window = [Fraction(x) for x in close[t - period + 1 : t + 1]]
    mean = sum(window) / period
    std = Fraction(math.sqrt(sum((x - mean) ** 2 for x in window) / period))
    return float((Fraction(close[t]) - mean + k * std) / (2 * k * std))


def rounding_referee(close: np.ndarray, ours: np.ndarray, ref: np.ndarray, rows: int = 20) -> dict:
    """On the rows where ours and TA-Lib's bb_position differ most, who is closer to the exact value."""
    diff = np.where(np.isfinite(ours) & np.isfinite(ref), np.abs(ours - ref), -1.0)
    worst = np.argsort(-diff)[:rows]
    exact = np.array([bb_position_exact(close, int(t)) for t in worst])
    return {
        "rows_checked": len(worst),
        "max_abs_error_ours": float(np.abs(ours[worst] - exact).max()),
        "max_abs_error_talib": float(np.abs(ref[worst] - exact).max()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per measurement (best is kept)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "features_talib.json"))
    args = parser.parse_args()
    try:
        import talib  # noqa: F401
    except ImportError:
        print("TA-Lib is not installed: pip install -r bench/requirements.txt", file=sys.stderr)
        return 1

    wall_start = time.perf_counter()
    load_before = machine()["load_avg_1_5_15"]
    candles = load_builtin()
    rows = len(candles)

    throughput = {}
    for feature_set in FEATURE_SETS:
        best, times = best_seconds(lambda fs=feature_set: compute_features(candles, fs), args.repeats)
        throughput[feature_set] = {
            "best_seconds": round(best, 5),
            "median_seconds": round(float(np.median(times)), 5),
            "rows_per_second": round(rows / best),
        }
    best, times = best_seconds(lambda: talib_reference(candles), args.repeats)
    throughput["talib_7_compared_indicators"] = {
        "best_seconds": round(best, 5),
        "median_seconds": round(float(np.median(times)), 5),
        "rows_per_second": round(rows / best),
    }

    ours = compute_features(candles, "default")
    ref, talib_version = talib_reference(candles)
    agreement = {name: compare(ours[name].to_numpy(), values) for name, values in ref.items()}
    close = candles["close"].to_numpy()
    referee = rounding_referee(close, ours["bb_position"].to_numpy(), ref["bb_position"])
    agreement["bb_position"]["exact_referee"] = referee

    result = {
        "machine": machine() | {"load_avg_1_5_15_at_start": load_before},
        "talib_version": talib_version,
        "rows": rows,
        "repeats": args.repeats,
        "rel_tol": REL_TOL,
        "throughput": throughput,
        "agreement": agreement,
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
    }

    print(f"compute_features on {rows:,} rows (best of {args.repeats}):")
    print(f"  {'feature set':<30}{'best ms':>10}{'median ms':>11}{'rows/s':>13}")
    for name, t in throughput.items():
        print(
            f"  {name:<30}{t['best_seconds'] * 1e3:>10.1f}{t['median_seconds'] * 1e3:>11.1f}"
            f"{t['rows_per_second']:>13,}"
        )
    print(f"\n`default` vs TA-Lib {talib_version}: |ours - TA-Lib| after a burn-in of 0 / 100 / 500 bars")
    print(
        f"  {'feature':<13}{'first ours/TA':>14}{'max abs 0':>11}{'max 100':>10}{'max 500':>10}"
        f"{'p99 0':>10}{'p99 100':>10}{'p99 500':>10}{'within 0':>10}{'within 500':>11}  verdict"
    )
    for name, a in agreement.items():
        b = a["by_burn_in"]
        print(
            f"  {name:<13}{a['first_valid_ours']:>7}/{a['first_valid_talib']:<6}"
            + "".join(f"{b[k]['max_abs']:>10.1e} " for k in ("0", "100", "500"))[:-1]
            + "".join(f"{b[k]['p99_abs']:>10.1e}" for k in ("0", "100", "500"))
            + f"{b['0']['share_within_1e-6_rel']:>10.2%}{b['500']['share_within_1e-6_rel']:>11.3%}"
            + f"  {a['verdict']}"
        )
    print(
        f"\nbb_position on the {referee['rows_checked']} rows where the two differ most, against exact "
        f"arithmetic: ours off by up to {referee['max_abs_error_ours']:.1e}, "
        f"TA-Lib by up to {referee['max_abs_error_talib']:.1e}"
    )
    load_at_end = result["machine"]["load_avg_1_5_15"]
    print(f"\nload average (1/5/15 min) at start {load_before}, at end {load_at_end}")
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
