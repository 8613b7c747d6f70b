"""Benchmark: wall time and peak memory of the default `main` run, per stage.

Usage: python bench/pipeline_default.py [--out bench/results/pipeline_default.json] [extra CLI options]

Runs the pipeline with its defaults (the built-in BTC data) in a fresh temporary directory, so the
tracking store, the Optuna storage and the registry start empty, and prints each stage's seconds and the
process's peak resident memory after it, against the targets (< 5 minutes, < 2 GB) and the old system's
documented 10-30 minutes and 2 GB.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, write_result  # noqa: E402

OLD_SYSTEM_SECONDS = (600, 1800)
OLD_SYSTEM_MB = 2048
TARGET_SECONDS, TARGET_MB = 300, 2048


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "pipeline_default.json"))
    args, extra = parser.parse_known_args()
    from train.config import parse_args
    from train.pipeline import run_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "bench")
        cfg = parse_args(extra)
        start = time.perf_counter()
        summary = run_pipeline(cfg)
        wall = time.perf_counter() - start
    stages = summary["stages"]
    result = {
        "machine": machine(),
        "config": cfg.to_dict(),
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": stages["peak_rss_mb"],
        "stages": {
            k.removeprefix("stage_seconds_"): v for k, v in stages.items() if k.startswith("stage_seconds_")
        },
        "peak_rss_mb_after_stage": {
            k.removeprefix("stage_peak_rss_mb_"): v
            for k, v in stages.items()
            if k.startswith("stage_peak_rss_mb_")
        },
        "holdout_macro_f1": summary["ensemble"]["holdout_macro_f1"],
        "gate": summary["gate"]["result"],
        "gate_checks": [
            {k: c[k] for k in ("name", "passed", "blocking", "value", "threshold", "detail")}
            for c in summary["gate"]["checks"]
        ],
        "holdout_looks": summary["gate"]["looks"],
    }
    print(f"{'stage':<22}{'seconds':>9}{'peak RSS MB':>13}")
    for name, secs in result["stages"].items():
        print(f"{name:<22}{secs:>9.1f}{result['peak_rss_mb_after_stage'][name]:>13.0f}")
    print(f"{'total (wall)':<22}{wall:>9.1f}{result['peak_rss_mb']:>13.0f}")
    print(
        f"time:   {wall / TARGET_SECONDS:.2f}x the 5-minute target; old system took "
        f"{OLD_SYSTEM_SECONDS[0] / wall:.1f}x-{OLD_SYSTEM_SECONDS[1] / wall:.1f}x as long"
    )
    print(
        f"memory: {result['peak_rss_mb'] / TARGET_MB:.2f}x the 2 GB target (old system: {OLD_SYSTEM_MB} MB)"
    )
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
