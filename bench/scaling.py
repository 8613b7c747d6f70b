"""Benchmark: end-to-end `run_pipeline` wall time and peak memory at 10k, 100k and 1M candles.

Usage: python bench/scaling.py [--sizes 10000,100000,1000000] [--max-seconds 420] [--out ...]

The built-in data has ~35k 30-minute candles, so the larger sets are synthetic: a stationary block
bootstrap (geometric block lengths, mean 48 bars = one day, seed 0) of the built-in bars, each bar taken
as a tuple (log close-to-close return, log open gap to the previous close, upper and lower wick relative
to the body, volume). OHLC is rebuilt from those on a continuous 30-minute grid starting 2017-10-01, so
returns, wicks, volume and their within-block dependence come from real bars, and prices never go
negative (the log returns are demeaned first: the sample's drift compounded over 1M bars would reach
absurd prices). One 1M-candle series is generated; the smaller sets are its first 10k / 100k candles. Each set
is written as Parquet to a temporary directory.

Every size runs in its own subprocess (so ``ru_maxrss`` is that size's peak) with its own temporary
directory, MLflow SQLite store and Optuna SQLite storage, and the same fixed trial budget:
``--models lightgbm --n-trials 4 --timeout 0 --n-folds 5`` (all other options default). A size that does
not finish within ``--max-seconds`` is killed and recorded as not finished.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, write_result  # noqa: E402

PIPELINE_ARGS = ["--models", "lightgbm", "--n-trials", "4", "--timeout", "0", "--n-folds", "5"]
MEAN_BLOCK = 48


def synthetic_candles(n: int, seed: int = 0):
    """``n`` 30-minute candles by stationary block bootstrap of the built-in bars (see module doc)."""
    import numpy as np
    import pandas as pd

    from features.data import load_builtin

    src = load_builtin()
    o, h, low, c, v = (src[k].to_numpy(float) for k in ("open", "high", "low", "close", "volume"))
    ret = np.log(c[1:] / c[:-1])
    ret -= ret.mean()  # no drift: the sample's drift compounded over 1M bars would reach absurd prices
    gap = np.log(o[1:] / c[:-1])
    up = np.log(h[1:] / np.maximum(o[1:], c[1:]))
    down = np.log(np.minimum(o[1:], c[1:]) / low[1:])
    vol = v[1:]
    m = len(ret)
    rng = np.random.default_rng(seed)
    # Stationary bootstrap: at each bar, with probability 1/MEAN_BLOCK jump to a random bar, else continue.
    jump = rng.random(n) < 1.0 / MEAN_BLOCK
    jump[0] = True
    starts = rng.integers(0, m, size=n)
    block = np.cumsum(jump) - 1
    first = np.flatnonzero(jump)
    offset = np.arange(n) - first[block]
    idx = (starts[first][block] + offset) % m
    close = c[0] * np.exp(np.cumsum(ret[idx]))
    prev = np.concatenate([[c[0]], close[:-1]])
    opn = prev * np.exp(gap[idx])
    high = np.maximum(opn, close) * np.exp(up[idx])
    low_ = np.minimum(opn, close) * np.exp(-down[idx])
    ts = pd.date_range("2017-10-01", periods=n, freq="30min")
    return pd.DataFrame(
        {"timestamp": ts, "open": opn, "high": high, "low": low_, "close": close, "volume": vol[idx]}
    )


def run_one(path: str) -> int:
    """Child mode: one pipeline run on ``path`` in a fresh temp dir; prints one JSON line."""
    import resource

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.environ["MLFLOW_EXPERIMENT_NAME"] = "bench-scaling"
        from train.config import parse_args
        from train.pipeline import run_pipeline

        cfg = parse_args(["--data", path, "--optuna-storage", f"sqlite:///{tmp}/optuna.db", *PIPELINE_ARGS])
        start = time.perf_counter()
        summary = run_pipeline(cfg)
        wall = time.perf_counter() - start
    stages = summary["stages"]
    out = {
        "pipeline_seconds": round(wall, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "usable_rows": summary.get("plan", {}).get("rows_after_features_and_labels"),
        "stages": {
            k.removeprefix("stage_seconds_"): v for k, v in stages.items() if k.startswith("stage_seconds_")
        },
    }
    print("RESULT " + json.dumps(out))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--max-seconds", type=float, default=420.0, help="kill a size after this long")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "scaling.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: path of one data file
    args = parser.parse_args()
    if args.one:
        return run_one(args.one)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        full = synthetic_candles(max(sizes))
        paths = {}
        for n in sizes:
            paths[n] = str(Path(tmp) / f"candles_{n}.parquet")
            full.iloc[:n].to_parquet(paths[n], index=False)
        print(
            f"generated {max(sizes):,} candles and wrote {len(sizes)} Parquet files in "
            f"{time.perf_counter() - t0:.1f}s"
        )
        del full
        for n in sizes:
            start = time.perf_counter()
            try:
                proc = subprocess.run(
                    [sys.executable, __file__, "--one", paths[n]],
                    capture_output=True,
                    text=True,
                    timeout=args.max_seconds,
                    cwd=REPO,
                )
            except subprocess.TimeoutExpired:
                print(f"{n:>9,} candles: not finished within {args.max_seconds:.0f}s, killed")
                rows.append({"candles": n, "finished": False, "killed_after_seconds": args.max_seconds})
                continue
            wall = time.perf_counter() - start
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n")
                rows.append({"candles": n, "finished": False, "error": proc.stderr[-1000:]})
                continue
            res = json.loads(line[0].removeprefix("RESULT "))
            row = {"candles": n, "finished": True, "process_seconds": round(wall, 1), **res}
            row["seconds_per_1k_candles"] = round(res["pipeline_seconds"] / (n / 1000), 3)
            rows.append(row)
            print(
                f"{n:>9,} candles: {res['pipeline_seconds']:7.1f}s pipeline ({wall:.1f}s process), "
                f"peak {res['peak_rss_mb']:7.0f} MB, {row['seconds_per_1k_candles']:.3f} s/1k"
            )
    done = [r for r in rows if r["finished"]]
    growth = []
    for a, b in zip(done, done[1:], strict=False):
        growth.append(
            {
                "from": a["candles"],
                "to": b["candles"],
                "rows_x": round(b["candles"] / a["candles"], 1),
                "time_x": round(b["pipeline_seconds"] / a["pipeline_seconds"], 2),
                "memory_x": round(b["peak_rss_mb"] / a["peak_rss_mb"], 2),
            }
        )
        print(
            f"{a['candles']:,} -> {b['candles']:,}: rows x{growth[-1]['rows_x']}, "
            f"time x{growth[-1]['time_x']}, peak memory x{growth[-1]['memory_x']}"
        )
    result = {
        "machine": machine(),
        "pipeline_args": PIPELINE_ARGS,
        "data": f"stationary block bootstrap (mean block {MEAN_BLOCK} bars, seed 0) of the builtin 30m bars, "
        "smaller sets are its prefixes; Parquet",
        "sizes": rows,
        "growth": growth,
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
