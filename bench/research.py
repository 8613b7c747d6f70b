"""Benchmark: which search configuration (objective x label x sizing x features) makes money out of sample.

Usage: python bench/research.py [--timeframes 4h[,1h]] [--n-trials N] [--out bench/results/research_4h.json]
       python bench/research.py --quick            (2 configurations, 2 trials: a smoke test)

Replays the walk-forward (``python -m train.walkforward``: built-in BTC/USD two years, monthly retraining
after 345 days of first history, 3 models, warm-started studies) once per configuration and timeframe,
each in a fresh temporary store, exactly as ``bench/walkforward.py`` does. Per configuration it records the
stitched out-of-sample after-cost total return, Sharpe and maximum drawdown of retrain + gate (this
system), retrain + gate + monitor, always-promote and buy-and-hold over the same periods, and how many
windows the gate promoted.

The matrix is fixed here, before any result was seen, and is not chosen adaptively:

* the 2 x 2 x 2 of ``objective`` (macro_f1, sharpe) x ``label`` (threshold, triple_barrier) x ``sizing``
  (full, probability) on the ``default`` features: 8 configurations;
* if the ``extended`` feature set exists, two more on it: today's defaults (macro_f1 / threshold / full)
  and every new option at once (sharpe / triple_barrier / probability): 10;
* if meta-labeling exists (``--primary momentum``: the side is the sign of the trailing ``horizon``-bar
  return and the models learn whether acting on it pays), two more on the default features: today's
  defaults and every new option at once, each with the momentum primary: 12 in all.

``threshold`` labels keep the pipeline's defaults (+-0.5% over 6 bars). ``triple_barrier`` labels use
barriers at +-0.5 * sigma * sqrt(6) with sigma the standard deviation of the last week of 1-bar returns
(``--threshold 0.5 --vol-window <a week of bars>``) and the default uniqueness sample weights: the fixed
0.5% barriers are touched within 6 bars 96% of the time at 4h (almost no ``hold``, and folds fail),
the book's +-1 daily volatility is refused by the config (threshold < 1), and 0.5 was picked from the
label's class balance alone (about a third per class at 4h and at 1h), not from any result.

The verdict accounts for every configuration tried: Hansen's test of superior predictive ability
(``arch.bootstrap.SPA``) of the configurations' per-period after-cost returns of the gated system against
buy-and-hold's per-period returns over the same periods (losses = minus the returns; H0: no configuration
has a higher mean per-period return than the benchmark), and the same against staying flat (losses 0);
``arch.bootstrap.StepM`` (Romano-Wolf) names which configurations, if any, are superior at 5%. Stationary
bootstrap, mean block length one week of bars (42 at 4h: several times the label horizon and the holding
periods), 10,000 replications, seed 0. With several timeframes, each timeframe has its own test
(different periods) and its p-values are multiplied by the number of timeframes (Bonferroni). The bench
recommends defaults for ``mlflow run .`` only from a configuration that passes; otherwise it says the
defaults stay.

Per-period returns come from the walk-forward's ``returns.csv`` artifact (``train.walkforward`` logs the
stitched returns of every strategy); the gated returns of every configuration and buy-and-hold's are also
written beside the result (``<out>_returns.csv.gz``) so the test can be checked or redone.
Run the full matrix on an otherwise quiet machine (load average recorded at the start and the end).
Each finished replay is also kept in ``<out>_parts/`` (its row, its returns and the commit it ran on);
``--resume`` reuses the parts whose command matches instead of replaying them, so a matrix cut short
can be finished (only over code that trains the same models: the commit of each part is recorded).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, write_result  # noqa: E402

RETRAIN_EVERY = 30  # days
MIN_TRAIN_DAYS = 345  # the first window's 2,000 usable rows at 4h; the same traded dates at 1h
N_TRIALS = 4  # per model per window; sized so that the default matrix at 4h fits in 60 min on 2 cores
TB_MULTIPLIER = 0.5  # triple-barrier width in sigma * sqrt(horizon) (see the module docstring)
SPA_REPS = 10_000
SPA_SEED = 0
ALPHA = 0.05
STRATEGIES = ("gated", "gated_monitored", "always_promote", "buy_and_hold")
METRICS = ("total_return", "sharpe", "max_drawdown", "n_trades")


@dataclass(frozen=True)
class Config:
    objective: str = "macro_f1"
    label: str = "threshold"
    sizing: str = "full"
    features: str = "default"
    primary: str = "none"

    @property
    def name(self) -> str:
        meta = f"/meta:{self.primary}" if self.primary != "none" else ""
        return f"{self.objective}/{self.label}/{self.sizing}/{self.features}{meta}"

    def options(self, timeframe: str) -> list[str]:
        opts = ["--objective", self.objective, "--label", self.label, "--sizing", self.sizing]
        opts += ["--features", self.features]
        if self.primary != "none":
            opts += ["--primary", self.primary]
        if self.label == "triple_barrier":
            week = int(pd.Timedelta(days=7) / pd.Timedelta(timeframe))
            opts += ["--threshold", str(TB_MULTIPLIER), "--vol-window", str(week)]
        return opts


def feature_sets() -> tuple[str, ...]:
    from features.indicators import FEATURE_SETS

    return tuple(FEATURE_SETS)


def primaries() -> tuple[str, ...]:
    from train.config import PipelineConfig

    return ("none", "momentum") if "primary" in PipelineConfig.__dataclass_fields__ else ("none",)


def matrix(quick: bool = False) -> list[Config]:
    """The configurations, fixed before looking (see the module docstring)."""
    everything_new = Config("sharpe", "triple_barrier", "probability")
    if quick:
        return [Config(), everything_new]
    configs = [
        Config(objective, label, sizing)
        for objective in ("macro_f1", "sharpe")
        for label in ("threshold", "triple_barrier")
        for sizing in ("full", "probability")
    ]
    if "extended" in feature_sets():
        configs += [
            Config(features="extended"),
            Config("sharpe", "triple_barrier", "probability", "extended"),
        ]
    if "momentum" in primaries():
        configs += [
            Config(primary="momentum"),
            Config("sharpe", "triple_barrier", "probability", primary="momentum"),
        ]
    return configs


def walkforward_command(config: Config, timeframe: str, n_trials: int, tmp: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "train.walkforward",
        "--data",
        "builtin",
        "--timeframe",
        timeframe,
        "--retrain-every",
        str(RETRAIN_EVERY),
        "--min-train-days",
        str(MIN_TRAIN_DAYS),
        "--n-trials",
        str(n_trials),
        *config.options(timeframe),
        "--optuna-storage",
        f"sqlite:///{tmp}/optuna.db",
    ]


def shown_command(config: Config, timeframe: str, n_trials: int) -> str:
    return " ".join(walkforward_command(config, timeframe, n_trials, "<tmp>")[1:])


def replay(config: Config, timeframe: str, n_trials: int) -> dict:
    """One walk-forward in a fresh temporary store: its summary, window table and stitched returns."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db")
        env.pop("MLFLOW_RUN_ID", None)
        command = walkforward_command(config, timeframe, n_trials, tmp)
        shown = shown_command(config, timeframe, n_trials)
        start = time.perf_counter()
        out = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=4 * 3600)
        wall = round(time.perf_counter() - start, 1)
        if out.returncode != 0:
            tail = (out.stdout + out.stderr).strip().splitlines()[-6:]
            return {"command": shown, "wall_seconds": wall, "error": "\n".join(tail)}
        run_id = next(line for line in out.stdout.splitlines() if line.startswith("run ")).split()[1]
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one line per configuration
        import mlflow

        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(Path(tmp) / "a")))
        summary = json.loads((local / "walkforward.json").read_text())
        table = pd.read_csv(io.StringIO((local / "windows.csv").read_text()))
        returns = pd.read_csv(local / "returns.csv", index_col="period_start", parse_dates=True)
    return {
        "command": shown,
        "wall_seconds": wall,
        "windows": summary["windows"],
        "promoted": summary["promoted"],
        "seconds_per_window": round(float(table["seconds"].mean()), 1),
        "strategies": {
            k: {m: round(float(summary["strategies"][k][m]), 4) for m in METRICS} for k in STRATEGIES
        },
        "returns": returns,
    }


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return (out.stdout.strip() or "unknown") + ("+dirty" if dirty else "")


def _part(parts: Path, timeframe: str, config: Config, n_trials: int) -> Path:
    key = hashlib.sha256(f"{timeframe}|{config.name}|{n_trials}".encode()).hexdigest()[:12]
    return parts / f"{timeframe}_{key}"


def save_part(base: Path, replayed: dict) -> None:
    base.parent.mkdir(parents=True, exist_ok=True)
    row = _without_returns(replayed) | {"commit": _commit()}
    base.with_suffix(".json").write_text(json.dumps(row, indent=2) + "\n")
    if "returns" in replayed:
        replayed["returns"].to_csv(base.with_suffix(".csv.gz"), index_label="period_start")


def load_part(base: Path, command: str) -> dict | None:
    """A replay kept by an earlier run of the same command, or None."""
    row_file, returns_file = base.with_suffix(".json"), base.with_suffix(".csv.gz")
    if not row_file.exists():
        return None
    row = json.loads(row_file.read_text())
    if row.get("command") != command or "error" in row or not returns_file.exists():
        return None
    return row | {"returns": pd.read_csv(returns_file, index_col="period_start", parse_dates=True)}


def spa_test(benchmark: pd.Series, models: pd.DataFrame, block: int, reps: int = SPA_REPS) -> dict:
    """Hansen's SPA and Romano-Wolf's StepM of ``models`` (period returns, one column per configuration)
    against ``benchmark`` (period returns), losses = minus the returns.

    A configuration that returned exactly what the benchmark did in every period (a gated system that
    never traded, against flat) cannot be superior, and its zero-variance differential breaks the
    studentised statistic (arch then reports p = 0); it is left out of the test and listed. With none
    left, the p-values are 1 by construction."""
    from arch.bootstrap import SPA, StepM, optimal_block_length

    diff = models.sub(benchmark, axis=0)  # > 0: the configuration made more than the benchmark
    same = [str(c) for c in diff.columns if float(diff[c].abs().max()) == 0.0]
    tested = models.drop(columns=same)
    out = {
        "configurations_tested": tested.shape[1],
        "equal_to_benchmark_not_tested": same,
        "best_mean_excess_per_period": round(float(diff.mean().max()), 6),
        "best_by_mean_excess": str(diff.mean().idxmax()),
    }
    if not tested.shape[1]:
        return out | {"pvalues": dict.fromkeys(("lower", "consistent", "upper"), 1.0), "stepm_superior": []}
    bench_loss, model_loss = -benchmark.to_numpy(float), -tested.to_numpy(float)
    spa = SPA(bench_loss, model_loss, block_size=block, reps=reps, seed=SPA_SEED)
    spa.compute()
    stepm = StepM(bench_loss, model_loss, size=ALPHA, block_size=block, reps=reps, seed=SPA_SEED)
    stepm.compute()
    pw = optimal_block_length(diff[tested.columns])["stationary"]
    return out | {
        "pvalues": {k: round(float(v), 4) for k, v in spa.pvalues.items()},
        "stepm_superior": [str(tested.columns[int(i)]) for i in stepm.superior_models],
        "politis_white_block_median": round(float(pw.median()), 1),
    }


def timeframe_result(timeframe: str, rows: dict, n_timeframes: int) -> dict:
    """The table and both tests for one timeframe (``rows``: configuration name -> replay)."""
    done = {name: r for name, r in rows.items() if "error" not in r}
    failed = sorted(set(rows) - set(done))
    out: dict = {"configurations_tried": len(rows), "failed": failed}
    if not done:
        return out | {"verdict": "every configuration failed: nothing to test"}
    gated = pd.DataFrame({name: r["returns"]["gated"] for name, r in done.items()})
    if gated.isna().any().any():
        raise AssertionError(f"{timeframe}: the configurations traded different periods")
    holds = pd.DataFrame({name: r["returns"]["buy_and_hold"] for name, r in done.items()})
    holds = holds.reindex(gated.index)
    if (holds.max(axis=1) - holds.min(axis=1)).abs().max() > 1e-12:
        raise AssertionError(f"{timeframe}: buy-and-hold differs between configurations")
    hold = holds.iloc[:, 0]
    block = int(pd.Timedelta(days=7) / pd.Timedelta(timeframe))
    vs_hold = spa_test(hold, gated, block)
    vs_flat = spa_test(pd.Series(0.0, index=gated.index), gated, block)
    # Information, not the verdict: is there an edge the gate leaves on the table?
    always = pd.DataFrame({name: r["returns"]["always_promote"] for name, r in done.items()})
    always_vs_hold = spa_test(hold, always.reindex(gated.index), block)
    for test in (vs_hold, vs_flat, always_vs_hold):
        test["pvalues_adjusted"] = {k: min(1.0, v * n_timeframes) for k, v in test["pvalues"].items()}
    out |= {
        "periods": len(gated),
        "first_period": str(gated.index[0]),
        "last_period": str(gated.index[-1]),
        "spa": {
            "losses": "minus each period's after-cost return (gated system; benchmark: buy-and-hold or 0)",
            "bootstrap": "stationary",
            "block_size": block,
            "reps": SPA_REPS,
            "seed": SPA_SEED,
            "studentize": True,
            "vs_buy_and_hold": vs_hold,
            "vs_flat": vs_flat,
            "always_promote_vs_buy_and_hold": always_vs_hold,
        },
        "returns": pd.concat(
            {"gated": gated, "always_promote": always, "buy_and_hold": hold.to_frame("buy_and_hold")}, axis=1
        ),
    }
    return out


def verdict(per_tf: dict, rows: dict) -> tuple[str, dict | None]:
    """Plain words, and the configuration the defaults should follow (None: the defaults stay)."""
    from train.config import PipelineConfig

    d = PipelineConfig()
    defaults = f"objective={d.objective}, label={d.label}, sizing={d.sizing}, features={d.features}"
    tried = sum(r["configurations_tried"] for r in per_tf.values())
    lines, best = [], None
    for tf, r in per_tf.items():
        if "spa" not in r:
            lines.append(f"{tf}: {r['verdict']}.")
            continue
        h, f = r["spa"]["vs_buy_and_hold"], r["spa"]["vs_flat"]
        ph, pf = h["pvalues_adjusted"]["consistent"], f["pvalues_adjusted"]["consistent"]
        sharper = [
            n
            for n, x in rows[tf].items()
            if "error" not in x
            and x["strategies"]["gated"]["sharpe"] > x["strategies"]["buy_and_hold"]["sharpe"]
        ]
        ok = [x for x in rows[tf].values() if "error" not in x]
        promoted, windows = sum(x["promoted"] for x in ok), sum(x["windows"] for x in ok)
        lines.append(
            f"{tf}: the gate promoted {promoted} of {windows} candidates over {len(ok)} configuration(s). "
            f"SPA of the gated system against buy-and-hold, consistent p = {ph:.3f}; against flat, "
            f"p = {pf:.3f}"
            f"{' (no configuration traded: nothing to test)' if not f['configurations_tested'] else ''}. "
            f"Gated Sharpe above buy-and-hold's before any correction: {', '.join(sharper) or 'none'}."
        )
        if ph < ALPHA and h["stepm_superior"]:
            cand = max(h["stepm_superior"], key=lambda n: rows[tf][n]["strategies"]["gated"]["sharpe"])
            if best is None or rows[tf][cand]["strategies"]["gated"]["sharpe"] > best["sharpe"]:
                best = {"timeframe": tf, "configuration": cand} | {
                    "sharpe": rows[tf][cand]["strategies"]["gated"]["sharpe"]
                }
    if best is None:
        lines.append(
            f"After {tried} configuration(s) tried, none beats buy-and-hold at {ALPHA:.0%} once the "
            f"search is accounted for: the defaults of `mlflow run .` stay ({defaults})."
        )
    else:
        lines.append(
            f"After {tried} configuration(s) tried, {best['configuration']} at {best['timeframe']} beats "
            f"buy-and-hold (StepM at {ALPHA:.0%}; the highest gated Sharpe among those that do): the "
            f"defaults of `mlflow run .` should follow it (today: {defaults})."
        )
    return " ".join(lines), best


def _without_returns(replayed: dict) -> dict:
    return {k: v for k, v in replayed.items() if k != "returns"}


def _line(timeframe: str, name: str, replayed: dict) -> str:
    if "error" in replayed:
        last = replayed["error"].splitlines()[-1]
        return f"{timeframe} {name:<44} FAILED after {replayed['wall_seconds']:.0f}s: {last}"
    s = replayed["strategies"]
    return (
        f"{timeframe} {name:<44} {replayed['wall_seconds']:>4.0f}s  promoted "
        f"{replayed['promoted']:>2}/{replayed['windows']}  "
        + "  ".join(
            f"{k} {s[k]['total_return']:+.1%} SR {s[k]['sharpe']:.2f} DD {s[k]['max_drawdown']:.0%}"
            for k in ("gated", "always_promote", "buy_and_hold")
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeframes", default="4h", help="comma list of bar sizes (default 4h)")
    parser.add_argument("--n-trials", type=int, default=0, help=f"per model per window (default {N_TRIALS})")
    parser.add_argument("--quick", action="store_true", help="2 configurations, 2 trials: a smoke test")
    parser.add_argument("--resume", action="store_true", help="reuse finished replays kept in <out>_parts/")
    parser.add_argument(
        "--out", default="", help="default: bench/results/research_<timeframes>.json (quick: the temp folder)"
    )
    args = parser.parse_args()
    timeframes = [t.strip() for t in args.timeframes.split(",") if t.strip()]
    n_trials = args.n_trials or (2 if args.quick else N_TRIALS)
    configs = matrix(args.quick)
    tag = "_".join(timeframes)
    default_out = (
        Path(tempfile.gettempdir()) / f"research_quick_{tag}.json"
        if args.quick
        else REPO / "bench" / "results" / f"research_{tag}.json"
    )
    out_path = Path(args.out or default_out)
    returns_path = out_path.with_name(out_path.stem + "_returns.csv.gz")
    parts = out_path.with_name(out_path.stem + "_parts")
    result = {
        "quick": args.quick,
        "machine_at_start": machine(),
        "n_trials": n_trials,
        "timeframes": timeframes,
        "matrix": [asdict(c) | {"name": c.name} for c in configs],
        "feature_sets_available": list(feature_sets()),
        "triple_barrier": {"threshold_multiplier": TB_MULTIPLIER, "vol_window": "one week of bars"},
    }
    print(f"{len(configs)} configuration(s) x {len(timeframes)} timeframe(s), {n_trials} trials per model")
    started = time.perf_counter()
    rows: dict[str, dict] = {tf: {} for tf in timeframes}
    kept_names: list[str] = []
    for tf in timeframes:
        for c in configs:
            base = _part(parts, tf, c, n_trials)
            kept = load_part(base, shown_command(c, tf, n_trials)) if args.resume else None
            rows[tf][c.name] = kept or replay(c, tf, n_trials)
            if kept is None:
                save_part(base, rows[tf][c.name])
            else:
                kept_names.append(f"{tf} {c.name}")
            print(_line(tf, c.name, rows[tf][c.name]) + (" (kept)" if kept else ""), flush=True)
            # What is done so far, in case the rest does not finish (overwritten at the end).
            table = {t: {n: _without_returns(r) for n, r in rows[t].items()} for t in rows}
            write_result(out_path, result | {"partial": True, "table": table})
    per_tf = {tf: timeframe_result(tf, rows[tf], len(timeframes)) for tf in timeframes}
    text, best = verdict(per_tf, rows)
    total = round(time.perf_counter() - started, 1)  # the replays and the tests
    frames = {}
    for tf, r in per_tf.items():
        if "returns" in r:
            frames[tf] = r.pop("returns")
    if frames:
        pd.concat(frames, axis=1).to_csv(returns_path, index_label="period_start")
    result |= {
        "machine_at_end": machine(),
        "wall_seconds_total": total,
        "wall_seconds_replays": round(sum(r["wall_seconds"] for t in rows.values() for r in t.values()), 1),
        "kept_from_earlier_runs": kept_names,
        "table": {tf: {n: _without_returns(r) for n, r in rows[tf].items()} for tf in rows},
        "tests": per_tf,
        "returns_csv": returns_path.name if frames else None,
        "recommended": best,
        "verdict": text,
    }
    for tf, r in per_tf.items():
        if "spa" in r:
            print(
                f"{tf} SPA ({r['configurations_tried']} configurations, {r['periods']} periods, block "
                f"{r['spa']['block_size']}, {SPA_REPS} reps): vs buy-and-hold "
                f"{r['spa']['vs_buy_and_hold']['pvalues']}, vs flat {r['spa']['vs_flat']['pvalues']}; "
                f"always-promote vs buy-and-hold (information) "
                f"{r['spa']['always_promote_vs_buy_and_hold']['pvalues']}"
            )
    print(f"total {total:.0f}s\n{text}")
    write_result(out_path, result)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
