"""Benchmark: how often the gate promotes a model with no edge, and how often one with a real edge.

Usage: python bench/gate_error_rates.py [--runs-scale 1.0] [--only KIND,...] [--budget small|default]
                                        [--out bench/results/gate_error_rates.json]

Runs the whole pipeline with the default gate on synthetic candles whose truth is known, each run in a
fresh tracking store (no champion, one look at each holdout). The candles are daily bars (4,000 = 11 years,
so the holdout spans 2.2 years: an annualised Sharpe ratio of 2 is then a t-statistic of about 3, while
over the 5 months of a 2-year 30-minute holdout it is 1.3, which no honest test can tell from luck).

No edge (every promotion is false):

* ``random_walk``: i.i.d. returns;
* ``volatility_regimes``: calm and stormy regimes that persist; direction i.i.d. (``hold`` is predictable);
* ``drift_up`` / ``drift_down``: i.i.d. returns with a steady drift (+-0.05% a bar, buy-and-hold +-40% over
  the holdout): "always long" (or short) makes money without any timing;
* ``persistent_moves``: fat-tailed (Student t, 3 degrees of freedom) returns whose volatility persists
  for hundreds of bars: long swings in price that nobody can predict, and slow features whose positions
  persist.

Planted edges (a promotion is true): a hidden down / flat / up drift revealed by the previous bar's
volume (``tests.helpers.make_flow_signal_candles``' mechanism), its strength stated as the annualised
after-cost Sharpe ratio of the oracle that knows the drift and trades it with the backtest's rules
(calibrated on 200,000 bars). A model learns part of it: what the gate judges is the Sharpe ratio its
strategy achieved, so the results are also given by bands of that (``SHARPE_BANDS``).

* ``flow_oracle_2`` / ``_4`` / ``_6``: the drift is kept from bar to bar with probability 0.5: prices
  alone barely show it;
* ``trend_flow_oracle_4``: kept with probability 0.9 (runs of about 15 bars), so the ``momentum`` rule
  captures part of it from prices alone.

Each run records every check's numbers, the decision policy's trades per 1,000 bars out of fold and on the
holdout (issue 16 E), and the oracle's holdout Sharpe ratio.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, write_result  # noqa: E402

N_CANDLES = 4000
FREQ = "1D"
BARS_PER_YEAR = 365.25
VOL = 0.004
COST = 0.0015  # the pipeline's default fee + slippage (15 bps per unit traded)
# kind -> (runs at --runs-scale 1, oracle Sharpe, drift persistence)
PLANTED = {
    "flow_oracle_2": (10, 2.0, 0.5),
    "flow_oracle_4": (20, 4.0, 0.5),
    "flow_oracle_6": (10, 6.0, 0.5),
    "trend_flow_oracle_4": (10, 4.0, 0.9),
}
# Bands of the annualised after-cost Sharpe ratio the models' strategies achieved on the holdout.
SHARPE_BANDS = ((0.5, 1.5), (1.5, 2.5), (2.5, 3.5), (3.5, 99.0))
NO_EDGE_RUNS = {
    "random_walk": 15,
    "volatility_regimes": 15,
    "drift_up": 10,
    "drift_down": 10,
    "persistent_moves": 10,
}
NO_EDGE = tuple(NO_EDGE_RUNS)


def flow_edge(n: int, seed: int, trend: float, persistence: float):
    """Candles with a volume-revealed drift, and the oracle's position for each bar's signal (the drift
    of the bar it trades: a signal at bar t trades bar t + 1)."""
    from tests.helpers import candles_from_returns, persistent_regime

    rng = np.random.default_rng(seed)
    drift = persistent_regime(rng, n + 2, persistence)
    log_ret = drift[:n] * trend + VOL * rng.standard_normal(n)
    frame = candles_from_returns(log_ret, rng, "2010-01-01", FREQ, VOL)
    frame["volume"] *= np.exp(drift[1 : n + 1])
    return frame, drift[1 : n + 1].astype(float)


def oracle_sharpe(frame, oracle, rows=None) -> float:
    """Annualised after-cost Sharpe ratio of trading ``oracle`` with the backtest's rules."""
    from models.policy import net_returns

    opens = frame["open"].to_numpy()
    r = opens[2:] / opens[1:-1] - 1  # what bar t's signal earns
    p = oracle[:-2]
    if rows is not None:
        p, r = p[rows], r[rows]
    net = net_returns(p, r, COST)
    return float(net.mean() / net.std(ddof=1) * math.sqrt(BARS_PER_YEAR))


def calibrate(target: float, persistence: float) -> float:
    """The drift strength whose oracle earns ``target`` annualised after costs (bisection, 200,000 bars)."""
    lo, hi = 0.0, 0.01
    for _ in range(40):
        mid = (lo + hi) / 2
        frame, oracle = flow_edge(200_000, 0, mid, persistence)
        lo, hi = (mid, hi) if oracle_sharpe(frame, oracle) < target else (lo, mid)
    return (lo + hi) / 2


def persistent_moves(n: int, seed: int):
    """Student-t(3) returns with a volatility that persists (GARCH(1,1)-like, persistence 0.99)."""
    from tests.helpers import candles_from_returns

    rng = np.random.default_rng(seed)
    shocks = rng.standard_t(3, n) / math.sqrt(3.0)  # unit variance
    var = np.empty(n)
    var[0] = VOL**2
    for t in range(1, n):
        var[t] = 0.01 * VOL**2 + 0.09 * (shocks[t - 1] ** 2) * var[t - 1] + 0.9 * var[t - 1]
    log_ret = np.sqrt(var) * shocks
    return candles_from_returns(log_ret, rng, "2010-01-01", FREQ, VOL)


def no_edge_candles(kind: str, seed: int):
    from tests.helpers import make_candles, make_volatility_regime_candles

    if kind == "random_walk":
        return make_candles(N_CANDLES, seed=seed, vol=VOL, start="2010-01-01", freq=FREQ)
    if kind == "volatility_regimes":
        return make_volatility_regime_candles(N_CANDLES, seed=seed, start="2010-01-01", freq=FREQ)
    if kind in ("drift_up", "drift_down"):
        drift = 0.0005 if kind == "drift_up" else -0.0005
        return make_candles(N_CANDLES, seed=seed, vol=VOL, drift=drift, start="2010-01-01", freq=FREQ)
    if kind == "persistent_moves":
        return persistent_moves(N_CANDLES, seed)
    raise ValueError(kind)


BUDGETS = {
    "small": {"models": "lightgbm", "n_trials": 3, "n_folds": 3},
    "default": {"models": "lightgbm,xgboost,random_forest", "n_trials": 12, "n_folds": 5},
}


def one_run(frame, seed: int, budget: str, oracle=None) -> dict:
    import mlflow

    from tests.helpers import tiny_config, write_csv
    from train.pipeline import run_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        uri = f"sqlite:///{tmp}/mlflow.db"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        mlflow.set_tracking_uri(uri)
        data = write_csv(frame, Path(tmp) / "candles.csv")
        cfg = tiny_config(data, tmp, "gate-bench", horizon=3, seed=seed, **BUDGETS[budget])
        start = time.perf_counter()
        s = run_pipeline(cfg)
        seconds = time.perf_counter() - start
        os.chdir(REPO)
    checks = {c["name"]: c for c in s["gate"]["checks"]}

    def value(name):
        c = checks.get(name)
        return None if c is None or c["value"] is None else round(float(c["value"]), 5)

    bt, oof = s["backtest"], s["policy_oof"]
    holdout_rows = None
    if oracle is not None:  # the oracle over the holdout's periods
        n_hold = bt["n_periods"]
        holdout_rows = np.arange(len(frame) - 3 - n_hold, len(frame) - 3)  # signal bars; horizon 3
    return {
        "seed": seed,
        "promoted": bool(s["promoted"]),
        "failed_checks": [c["name"] for c in s["gate"]["checks"] if c["blocking"] and not c["passed"]],
        "p_timing": value("timing_skill"),
        "p_flat": value("beats_flat_after_costs"),
        "p_worst_baseline": value("beats_baselines_traded"),
        "p_buy_and_hold": value("beats_buy_and_hold"),
        "dsr": round(s["deflated_sharpe"]["dsr"], 4),
        "block": s["gate"]["block"],
        "holdout_macro_f1": round(s["ensemble"]["holdout_macro_f1"], 4),
        "best_baseline": s["gate"]["baseline_name"],
        "best_baseline_macro_f1": round(s["gate"]["baseline_macro_f1"], 4),
        "backtest_total_return": round(bt["total_return"], 4),
        "backtest_sharpe": round(bt["sharpe"], 3),
        "buyhold_total_return": round(s["buyhold"]["total_return"], 4),
        "baseline_returns": {k: round(m["total_return"], 4) for k, m in s["baseline_backtests"].items()},
        "oracle_holdout_sharpe": None
        if oracle is None
        else round(oracle_sharpe(frame, oracle, holdout_rows), 3),
        "trades_per_1000_oof": round(1000 * oof["n_trades"] / oof["n_periods"], 2),
        "trades_per_1000_holdout": round(1000 * bt["n_trades"] / bt["n_periods"], 2),
        "policy": s["policy"],
        "seconds": round(seconds, 1),
    }


def upper_bound(k: int, n: int, level: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a rate seen k times in n."""
    from scipy.stats import beta

    return 1.0 if k == n else float(beta.ppf(level, k + 1, n - k))


def lower_bound(k: int, n: int, level: float = 0.95) -> float:
    from scipy.stats import beta

    return 0.0 if k == 0 else float(beta.ppf(1 - level, k, n - k + 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-scale", type=float, default=1.0, help="multiply every kind's run count")
    parser.add_argument("--first-seed", type=int, default=100)
    parser.add_argument("--budget", choices=list(BUDGETS), default="small")
    parser.add_argument("--only", default="", help="comma list of kinds (default: all)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "gate_error_rates.json"))
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "bench")
    start_machine = machine()
    kinds = {k: (n, None, None) for k, n in NO_EDGE_RUNS.items()} | PLANTED
    if args.only:
        kinds = {k: v for k, v in kinds.items() if k in args.only.split(",")}
    trends = {k: calibrate(sharpe, pers) for k, (_, sharpe, pers) in kinds.items() if sharpe is not None}
    runs: dict[str, list[dict]] = {}
    started = time.perf_counter()
    for kind, (n, _, pers) in kinds.items():
        runs[kind] = []
        for seed in range(args.first_seed, args.first_seed + max(1, round(n * args.runs_scale))):
            if kind in trends:
                frame, oracle = flow_edge(N_CANDLES, seed, trends[kind], pers)
            else:
                frame, oracle = no_edge_candles(kind, seed), None
            r = one_run(frame, seed, args.budget, oracle)
            runs[kind].append(r)
            print(
                f"{kind:<20} seed {seed}: {'PROMOTED' if r['promoted'] else 'not promoted':<13} "
                f"return {r['backtest_total_return']:+.1%} (Sharpe {r['backtest_sharpe']:+.2f}), buy-hold "
                f"{r['buyhold_total_return']:+.1%}; p timing {r['p_timing']}, flat {r['p_flat']}, "
                f"baselines {r['p_worst_baseline']}; DSR {r['dsr']:.2f}; F1 {r['holdout_macro_f1']:.3f} vs "
                f"{r['best_baseline']} {r['best_baseline_macro_f1']:.3f}; failed "
                f"{','.join(r['failed_checks']) or '-'} ({r['seconds']:.0f}s)",
                flush=True,
            )
    summary = {}
    for kind, rs in runs.items():
        k, n = sum(r["promoted"] for r in rs), len(rs)
        summary[kind] = {
            "runs": n,
            "promoted": k,
            "promotion_rate": k / n,
            "rate_95_interval": [round(lower_bound(k, n), 3), round(upper_bound(k, n), 3)],
            "promoted_and_lost_money": sum(r["promoted"] and r["backtest_total_return"] <= 0 for r in rs),
            "median_backtest_sharpe": float(np.median([r["backtest_sharpe"] for r in rs])),
            "minutes": round(sum(r["seconds"] for r in rs) / 60, 1),
        }
        if kind in trends:
            summary[kind]["drift_per_bar"] = round(trends[kind], 6)
            summary[kind]["oracle_sharpe"] = kinds[kind][1]
    no_edge = [r for kind in NO_EDGE for r in runs.get(kind, [])]
    false_k = sum(r["promoted"] for r in no_edge)
    planted = [r for kind in trends for r in runs[kind]]
    bands = {}
    for lo, hi in SHARPE_BANDS:
        rs = [r for r in planted if lo <= r["backtest_sharpe"] < hi]
        k = sum(r["promoted"] for r in rs)
        bands[f"{lo:g}-{hi:g}"] = {
            "runs": len(rs),
            "promoted": k,
            "rate": k / len(rs) if rs else None,
            "rate_95_interval": [round(lower_bound(k, len(rs)), 3), round(upper_bound(k, len(rs)), 3)]
            if rs
            else None,
        }
    # What each optional blocking check changes: the decisions had it not been blocking.
    counterfactual = {}
    for check in ("macro_f1_floor", "deflated_sharpe", "beats_baselines_traded"):

        def without(rs, check=check):
            return sum(set(r["failed_checks"]) <= {check} for r in rs)

        counterfactual[check] = {"no_edge_promoted": without(no_edge), "planted_promoted": without(planted)}
    result = {
        "machine_at_start": start_machine,
        "machine_at_end": machine(),
        "settings": {
            "candles": N_CANDLES,
            "bar": FREQ,
            "horizon": 3,
            "threshold": 0.005,
            "noise_per_bar": VOL,
            "cost_per_unit_traded": COST,
            "budget": BUDGETS[args.budget] | {"timeout": 0, "n_jobs": 1},
            "gate": "defaults",
        },
        "summary": summary,
        "false_promotions": {
            "runs": len(no_edge),
            "promoted": false_k,
            "rate": false_k / len(no_edge) if no_edge else None,
            "upper_95": round(upper_bound(false_k, len(no_edge)), 3) if no_edge else None,
        },
        "planted_by_achieved_sharpe": bands,
        "promoted_without_check": counterfactual,
        "total_minutes": round((time.perf_counter() - started) / 60, 1),
        "runs": runs,
    }
    print()
    for kind, s in summary.items():
        lo, hi = s["rate_95_interval"]
        print(
            f"{kind:<20} promoted {s['promoted']}/{s['runs']} "
            f"({s['promotion_rate']:.0%}, 95% interval {lo:.0%}-{hi:.0%})"
        )
    for band, b in bands.items():
        if b["runs"]:
            print(
                f"planted, achieved Sharpe {band:<8} promoted {b['promoted']}/{b['runs']} ({b['rate']:.0%})"
            )
    for check, c in counterfactual.items():
        print(f"without {check}: no edge {c['no_edge_promoted']}, planted {c['planted_promoted']} promoted")
    if no_edge:
        f = result["false_promotions"]
        print(
            f"no edge: {f['promoted']}/{f['runs']} promoted, upper 95% bound {f['upper_95']:.1%} (aim <= 5%)"
        )
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
