"""Benchmark: the default run's wall time on an idle machine and beside CPU-bound neighbours.

Usage: python bench/busy_machine.py [--neighbours 0,1,2] [--out bench/results/busy_machine.json] [options]

Runs `python -m train.pipeline` with its defaults (built-in data, 3 models, 12 trials, 600 s safety net)
in a fresh temporary store once per neighbour count, side by side in one session; each neighbour is a Python
process spinning on one core (`while True: pass`), started before and stopped after the run. Records the
wall time, the trials each study finished, the holdout macro-F1 and the gate, so a faster run that
tuned less shows as such. Run it on an otherwise quiet machine: anything else running is a neighbour too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, write_result  # noqa: E402


def run_once(neighbours: int, extra: list[str]) -> dict:
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(neighbours)]
    try:
        time.sleep(2)  # let them take their cores
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db")
            env.pop("MLFLOW_RUN_ID", None)
            start = time.perf_counter()
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "train.pipeline",
                    "--optuna-storage",
                    f"sqlite:///{tmp}/optuna.db",
                    *extra,
                ],
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
                timeout=3600,
            )
            wall = time.perf_counter() - start
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    if out.returncode != 0:
        raise RuntimeError(f"pipeline failed with {neighbours} neighbours:\n{out.stderr[-3000:]}")
    tuned = [line for line in out.stdout.splitlines() if line.startswith("tuned")]
    final = json.loads(out.stdout.strip().splitlines()[-1])
    # The summary's "ensemble   <holdout macro-F1>" line (not the stage's "ensemble  out-of-fold ..." line).
    f1 = next(line for line in out.stdout.splitlines() if re.fullmatch(r"ensemble\s+[0-9.]+", line.strip()))
    return {
        "neighbours": neighbours,
        "wall_seconds": round(wall, 1),
        "tuned": tuned,
        "ensemble_holdout_macro_f1": float(f1.split()[-1]),
        "gate": final["gate"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neighbours", default="0,1,2")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "busy_machine.json"))
    args, extra = parser.parse_known_args()
    start_machine = machine()
    runs = []
    for n in (int(x) for x in args.neighbours.split(",")):
        r = run_once(n, extra)
        runs.append(r)
        print(
            f"{n} neighbour(s): {r['wall_seconds']:.0f} s, holdout macro-F1 "
            f"{r['ensemble_holdout_macro_f1']:.4f}, gate {r['gate']}",
            flush=True,
        )
        for line in r["tuned"]:
            print(f"    {line}")
    idle = next((r["wall_seconds"] for r in runs if r["neighbours"] == 0), None)
    if idle:
        for r in runs:
            r["ratio_to_idle"] = round(r["wall_seconds"] / idle, 2)
            print(f"{r['neighbours']} neighbour(s): {r['ratio_to_idle']:.2f}x idle")
    write_result(args.out, {"machine_at_start": start_machine, "extra_options": extra, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
