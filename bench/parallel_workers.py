"""Benchmark: 1, 2 and 4 worker processes filling one Optuna study through PostgreSQL.

Usage: python bench/parallel_workers.py [--workers 1,2,4] [--n-trials 48] [--days 180] [--out ...]

For each worker count K, a fresh throwaway PostgreSQL database (``tests.servers.throwaway_database``) holds
the study, and one command fills it:

    python -m train.tune --model lightgbm --processes K --n-jobs max(1, cores // K) --n-trials 48 \\
        --timeout 0 --days 180 --optuna-storage <that database> --study-name bench-parallel

(built-in 30-minute data, last 180 days; pruning as always: the median pruner on the running fold mean).
Trials per minute (and fold fits per minute: the work done, which the pruner changes) are counted over the
study's own span, from the first trial's start to the last trial's end (so process start-up and data
preparation, the same for every K, are left out); the command's wall time, which includes them, is
recorded too. Skips with a message if PostgreSQL is unreachable.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, write_result  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--n-trials", type=int, default=48)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "parallel_workers.json"))
    args = parser.parse_args()

    from tests.servers import postgres_available, throwaway_database

    reason = postgres_available()
    if reason:
        print(f"skipped: {reason}")
        return 0
    import optuna

    cores = os.cpu_count() or 1
    rows = []
    for k in (int(w) for w in args.workers.split(",")):
        n_jobs = max(1, cores // k)
        with throwaway_database("bench_parallel") as url:
            cmd = [
                sys.executable,
                "-m",
                "train.tune",
                "--model",
                "lightgbm",
                "--processes",
                str(k),
                "--n-jobs",
                str(n_jobs),
                "--n-trials",
                str(args.n_trials),
                "--timeout",
                "0",
                "--days",
                str(args.days),
                "--optuna-storage",
                url,
                "--study-name",
                "bench-parallel",
            ]
            load_before = os.getloadavg()[0]
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                print(proc.stdout, proc.stderr[-4000:], sep="\n")
                return 1
            study = optuna.load_study(study_name="bench-parallel", storage=url)
            trials = [t for t in study.trials if t.datetime_complete is not None]
            first = min(t.datetime_start for t in trials)
            last = max(t.datetime_complete for t in trials)
            span = (last - first).total_seconds()
            # fold fits: the work done, whatever the pruner stopped (trials/min alone rewards pruning)
            fits = sum(len(t.user_attrs.get("fold_macro_f1", [])) for t in trials)
            counts = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
            row = {
                "workers": k,
                "threads_per_worker": n_jobs,
                "finished_trials": counts["COMPLETE"] + counts["PRUNED"],
                **{s.lower(): n for s, n in counts.items()},
                "study_span_seconds": round(span, 1),
                "command_wall_seconds": round(wall, 1),
                "trials_per_minute": round((counts["COMPLETE"] + counts["PRUNED"]) / span * 60, 2),
                "fold_fits": fits,
                "fold_fits_per_minute": round(fits / span * 60, 1),
                "best_cv_macro_f1": round(study.best_value, 4),
                "load_average_before": round(load_before, 2),
            }
        rows.append(row)
        base = rows[0]["trials_per_minute"]
        row["speedup_vs_first"] = round(row["trials_per_minute"] / base, 2)
        row["fold_fit_speedup_vs_first"] = round(
            row["fold_fits_per_minute"] / rows[0]["fold_fits_per_minute"], 2
        )
        print(
            f"{k} worker(s) x {n_jobs} thread(s): {row['finished_trials']} trials "
            f"({counts['PRUNED']} pruned) "
            f"in {span:.1f}s of study time ({wall:.1f}s command): {row['trials_per_minute']:.1f} trials/min, "
            f"{row['speedup_vs_first']:.2f}x vs {rows[0]['workers']} worker(s), "
            f"best {row['best_cv_macro_f1']}; {fits} fold fits, {row['fold_fits_per_minute']}/min "
            f"({row['fold_fit_speedup_vs_first']:.2f}x)"
        )
    result = {
        "machine": machine(),
        "command": "python -m train.tune --model lightgbm --processes K --n-jobs max(1, cores // K) "
        f"--n-trials {args.n_trials} --timeout 0 --days {args.days} --optuna-storage <throwaway PostgreSQL>",
        "runs": rows,
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
