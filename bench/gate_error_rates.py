"""Benchmark: how often the gate promotes a model with no edge, and how often it promotes a real one.

Usage: python bench/gate_error_rates.py [--seeds 10] [--out bench/results/gate_error_rates.json]

Runs the whole pipeline (small budget: LightGBM, 3 trials, 3 folds, one thread) with the default gate on
synthetic candles whose truth is known, each run in a fresh tracking store (so no champion is involved):

* ``random_walk``: i.i.d. returns, nothing to learn;
* ``volatility_regimes``: calm / stormy volatility that persists, direction i.i.d.: `hold` is predictable,
  direction is not (the trap that made the old gate promote money-losing models);
* ``planted_edge``: a directional drift that the previous bar's volume reveals (``--edge-trend`` per bar
  against 0.002 noise), which a model can trade and price-only baselines cannot see.

A promotion on the first two is a false promotion (aim <= 5%); on the third a true one (aim >= 80%). For
comparison each run also records what the old gate's first two checks said (macro-F1 floor and margin
over the trivial baselines only).
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

N_CANDLES = 4000


def scenarios(edge_trend: float) -> dict:
    from tests.helpers import make_candles, make_flow_signal_candles, make_volatility_regime_candles

    return {
        "random_walk": lambda seed: make_candles(N_CANDLES, seed=seed, vol=0.004),
        "volatility_regimes": lambda seed: make_volatility_regime_candles(N_CANDLES, seed=seed),
        "planted_edge": lambda seed: make_flow_signal_candles(N_CANDLES, seed=seed, trend=edge_trend),
    }


def one_run(frame, seed: int, horizon: int) -> dict:
    import mlflow

    from tests.helpers import tiny_config, write_csv
    from train.pipeline import run_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        uri = f"sqlite:///{tmp}/mlflow.db"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        mlflow.set_tracking_uri(uri)
        data = write_csv(frame, Path(tmp) / "candles.csv")
        cfg = tiny_config(data, tmp, "gate-bench", n_trials=3, horizon=horizon, seed=seed)
        start = time.perf_counter()
        s = run_pipeline(cfg)
        seconds = time.perf_counter() - start
        os.chdir(REPO)
    trivial = max(s["baselines"]["majority"], s["baselines"]["stratified"])
    f1 = s["ensemble"]["holdout_macro_f1"]
    return {
        "seed": seed,
        "promoted": bool(s["promoted"]),
        "failed_checks": [c["name"] for c in s["gate"]["checks"] if not c["passed"]],
        "holdout_macro_f1": round(f1, 4),
        "best_baseline": s["gate"]["baseline_name"],
        "best_baseline_macro_f1": round(s["gate"]["baseline_macro_f1"], 4),
        "backtest_total_return": round(s["backtest"]["total_return"], 4),
        "buyhold_total_return": round(s["buyhold"]["total_return"], 4),
        "dsr": round(s["deflated_sharpe"]["dsr"], 4),
        "policy": s["policy"],
        "old_gate_f1_checks_pass": bool(f1 >= 0.36 and f1 - trivial >= 0.02),
        "seconds": round(seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=100)
    parser.add_argument("--horizon", type=int, default=3)
    parser.add_argument("--edge-trend", type=float, default=0.002)
    parser.add_argument("--only", default="", help="comma list of scenarios (default: all)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "gate_error_rates.json"))
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "bench")
    start_machine = machine()
    chosen = scenarios(args.edge_trend)
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    runs: dict[str, list[dict]] = {}
    started = time.perf_counter()
    for name, make in chosen.items():
        runs[name] = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            r = one_run(make(seed), seed, args.horizon)
            runs[name].append(r)
            print(
                f"{name:<20} seed {seed}: {'PROMOTED' if r['promoted'] else 'not promoted':<13} "
                f"F1 {r['holdout_macro_f1']:.3f} vs {r['best_baseline']} {r['best_baseline_macro_f1']:.3f}, "
                f"backtest {r['backtest_total_return']:+.1%}, DSR {r['dsr']:.2f}, "
                f"failed {','.join(r['failed_checks']) or '-'} ({r['seconds']:.0f}s)",
                flush=True,
            )
    summary = {}
    for name, rs in runs.items():
        promoted = sum(r["promoted"] for r in rs)
        summary[name] = {
            "runs": len(rs),
            "promoted": promoted,
            "promotion_rate": promoted / len(rs),
            "old_gate_f1_checks_pass_rate": sum(r["old_gate_f1_checks_pass"] for r in rs) / len(rs),
            "promoted_and_lost_money": sum(r["promoted"] and r["backtest_total_return"] <= 0 for r in rs),
            "minutes": round(sum(r["seconds"] for r in rs) / 60, 1),
        }
    no_edge = [r for k in ("random_walk", "volatility_regimes") for r in runs.get(k, [])]
    result = {
        "machine_at_start": start_machine,
        "machine_at_end": machine(),
        "settings": {
            "candles": N_CANDLES,
            "bar": "30min",
            "horizon": args.horizon,
            "threshold": 0.005,
            "budget": "lightgbm, 3 trials, 3 folds, 1 thread",
            "edge_trend_per_bar": args.edge_trend,
            "noise_per_bar": 0.002,
            "gate": "defaults",
        },
        "summary": summary,
        "false_promotion_rate": (sum(r["promoted"] for r in no_edge) / len(no_edge)) if no_edge else None,
        "true_promotion_rate": summary.get("planted_edge", {}).get("promotion_rate"),
        "total_minutes": round((time.perf_counter() - started) / 60, 1),
        "runs": runs,
    }
    print()
    for name, s in summary.items():
        print(
            f"{name:<20} promoted {s['promoted']}/{s['runs']} ({s['promotion_rate']:.0%}); old gate's F1 "
            f"checks would pass {s['old_gate_f1_checks_pass_rate']:.0%}; {s['minutes']} min"
        )
    if result["false_promotion_rate"] is not None:
        print(f"false promotion rate {result['false_promotion_rate']:.0%} (aim <= 5%)")
    if result["true_promotion_rate"] is not None:
        print(f"true promotion rate {result['true_promotion_rate']:.0%} (aim >= 80%)")
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
