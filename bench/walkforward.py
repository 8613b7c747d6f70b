"""Benchmark: the walk-forward over the built-in two years at 4h bars with monthly retraining.

Usage: python bench/walkforward.py [--scenario builtin|flow_flip] [--out ...json] [--png ...png]
       [-- extra train.walkforward options]

Runs `python -m train.walkforward` (3 models, 6 trials per model per window, warm-started studies) in a
fresh temporary store and records its wall time, the time per window, how many candidates the gate
promoted, and the stitched after-cost results of the gated system against "always promote", "never
retrain" and buy-and-hold. The first window needs 2,000 usable rows (the pipeline's minimum), which at 4h
bars is about 11 months of history: the first 345 days train the first window, and the following ~13
months are traded. Run it on an otherwise quiet machine (its load average is recorded).

``--scenario flow_flip`` replays synthetic 30-minute candles instead (167 days, 10-day windows after 45
days, horizon 3) whose volume reveals the next bar's drift (``tests.helpers.make_flow_signal_candles``)
until the middle of the series, where the relation inverts: a tradable edge that changes, the case
retraining exists for, and one where the gate has something to promote.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, write_result  # noqa: E402

FLOW_FLIP = [
    "--horizon",
    "3",
    "--retrain-every",
    "10",
    "--min-train-days",
    "45",
    "--n-trials",
    "4",
]
DEFAULT = [
    "--data",
    "builtin",
    "--timeframe",
    "4h",
    "--retrain-every",
    "30",
    "--min-train-days",
    "345",
    "--n-trials",
    "6",
]


def flow_flip_csv(tmp: str, n: int = 8000, seed: int = 5) -> str:
    """Planted flow signal whose sign flips halfway (see the module docstring); returns the CSV path."""
    import numpy as np

    from tests.helpers import candles_from_returns, persistent_regime, write_csv

    rng = np.random.default_rng(seed)
    drift = persistent_regime(rng, n + 1, 0.5)
    frame = candles_from_returns(
        drift[:n] * 0.004 + 0.002 * rng.standard_normal(n), rng, "2024-01-01", "30min", 0.002
    )
    flow = np.where(np.arange(n) < n // 2, 1.0, -1.0)
    frame["volume"] *= np.exp(flow * drift[1:])
    return write_csv(frame, Path(tmp) / "flow_flip.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("builtin", "flow_flip"), default="builtin")
    parser.add_argument("--out", default="", help="default: bench/results/walkforward[_<scenario>].json")
    parser.add_argument("--png", default="", help="copy the run's equity plot here (README picture)")
    parser.add_argument("extra", nargs="*", help="more train.walkforward options (after --)")
    args = parser.parse_args()
    suffix = "" if args.scenario == "builtin" else f"_{args.scenario}"
    out_path = args.out or str(REPO / "bench" / "results" / f"walkforward{suffix}.json")
    before = machine()
    with tempfile.TemporaryDirectory() as tmp:
        options = DEFAULT if args.scenario == "builtin" else ["--data", flow_flip_csv(tmp), *FLOW_FLIP]
        env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db")
        env.pop("MLFLOW_RUN_ID", None)
        command = [
            sys.executable,
            "-m",
            "train.walkforward",
            *options,
            "--optuna-storage",
            f"sqlite:///{tmp}/optuna.db",
            *args.extra,
        ]
        start = time.perf_counter()
        out = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=4 * 3600)
        wall = time.perf_counter() - start
        if out.returncode != 0:
            raise SystemExit(f"walk-forward failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
        run_line = next(line for line in out.stdout.splitlines() if line.startswith("run "))
        run_id = run_line.split()[1]
        import mlflow

        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(Path(tmp) / "a")))
        summary = json.loads((local / "walkforward.json").read_text())
        windows = (local / "windows.csv").read_text()
        if args.png:
            shutil.copy(local / "walkforward_equity.png", args.png)
    import io

    import pandas as pd

    table = pd.read_csv(io.StringIO(windows))
    result = {
        "command": " ".join(command[1:]).replace(tmp, "<tmp>"),
        "machine_at_start": before,
        "machine_at_end": machine(),
        "wall_seconds": round(wall, 1),
        "windows": summary["windows"],
        "promoted": summary["promoted"],
        "seconds_per_window": {
            "mean": round(float(table["seconds"].mean()), 1),
            "max": round(float(table["seconds"].max()), 1),
        },
        "strategies": {
            k: {
                m: round(v, 4)
                for m, v in s.items()
                if m in ("total_return", "sharpe", "max_drawdown", "n_trades")
            }
            for k, s in summary["strategies"].items()
        },
        "description": summary["description"],
        "windows_table": table.drop(columns=["train_start"]).to_dict(orient="records"),
        "log_tail": out.stdout.splitlines()[-12:],
    }
    print(json.dumps({k: result[k] for k in ("wall_seconds", "windows", "promoted", "strategies")}, indent=2))
    write_result(out_path, result)


if __name__ == "__main__":
    main()
