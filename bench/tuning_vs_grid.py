"""Benchmark: our Optuna search (TPE + median pruner) against scikit-learn's GridSearchCV, one model.

Usage: python bench/tuning_vs_grid.py [--days 90] [--timeframe 1h] [--seeds 5] [--out ...json]

Both search LightGBM over learning_rate, num_leaves, max_depth, n_estimators and class_weight; every other
parameter stays at the same fixed default (``models.base.build_model`` with an empty search: LightGBM's
own defaults). The grid has 3 x 3 x 3 x 3 x 2 = 162 points inside the ranges of
``train.tune.space_lightgbm``; Optuna samples those five parameters over the same ranges (continuous /
integer), through the pipeline's stage `tune` (``train.stages.tune.study_for``: the pipeline's sampler,
pruner and objective that reports the running fold mean, and that also records each completed trial's
out-of-fold after-cost Sharpe ratios, as every pipeline trial does) on an in-memory storage. Same
development rows, the same ``PurgedWalkForward`` folds (passed as ``cv=`` to GridSearchCV), the same
scorer (macro-F1 with labels [0, 1, 2], zero_division=0: ``evaluation.metrics.macro_f1``), one fit at a
time in both (GridSearchCV n_jobs=1) with 2 LightGBM threads per fit in both.

The grid runs first; Optuna then runs ``--seeds`` times (seeds seed, seed+1, ...), each with the grid's
wall time as its timeout: one search's time to a noisy maximum is luck as much as method. From each
search's trial timestamps the benchmark reads the trace of best-so-far CV macro-F1 against elapsed time,
the time (and fold fits) at which it first reaches the grid's best score, and its best within the budget;
the median speed-up is over all seeds, a search that never reached the grid's best counting as 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, write_result  # noqa: E402

GRID = {  # three points per range of train.tune.space_lightgbm (log-spaced where it samples on a log scale)
    "learning_rate": [0.03, 0.1, 0.3],
    "num_leaves": [8, 23, 64],
    "max_depth": [3, 7, 12],
    "n_estimators": [50, 150, 300],
    "class_weight": [None, "balanced"],
}
N_JOBS = 2  # LightGBM threads per fit, both searches


def space_five(trial) -> dict:
    """The five grid parameters over the ranges of train.tune.space_lightgbm; the rest stay default."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
        "n_estimators": trial.suggest_int("n_estimators", 50, 300),
        "num_leaves": trial.suggest_int("num_leaves", 8, 64, log=True),
        "max_depth": trial.suggest_int("max_depth", 3, 12),
        "class_weight": trial.suggest_categorical("class_weight", [None, "balanced"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--timeframe", default="1h")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--seeds",
        type=int,
        default=5,
        help="Optuna searches, seeds seed, seed+1, ...; each gets the grid's time",
    )
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "tuning_vs_grid.json"))
    args = parser.parse_args()

    import dataclasses

    import numpy as np
    import optuna
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GridSearchCV

    from evaluation.metrics import macro_f1
    from models.base import build_model
    from train.config import PipelineConfig
    from train.prepare import prepare
    from train.stages.tune import study_for

    cfg = PipelineConfig(timeframe=args.timeframe, days=args.days, models="lightgbm", seed=args.seed)
    data = prepare(cfg)
    X, y = data.dev
    y = np.asarray(y)
    print(
        f"data: builtin, {args.timeframe} bars, last {args.days} days: {len(X):,} development rows, "
        f"{cfg.n_folds} purged folds, classes {np.bincount(y).tolist()}"
    )
    n_points = int(np.prod([len(v) for v in GRID.values()]))

    # ---- GridSearchCV -------------------------------------------------------------------------------
    grid = GridSearchCV(
        build_model("lightgbm", {}, seed=args.seed, n_jobs=N_JOBS),
        GRID,
        scoring=make_scorer(macro_f1),
        cv=data.cv,
        n_jobs=1,
        refit=False,
        error_score="raise",
    )
    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    grid.fit(X, y)
    grid_wall = time.perf_counter() - start
    res = grid.cv_results_
    grid_best = float(grid.best_score_)
    # When did the grid (in its own evaluation order) first hit its best? Cumulative fit+score time.
    per_point = (np.asarray(res["mean_fit_time"]) + np.asarray(res["mean_score_time"])) * cfg.n_folds
    cum = np.cumsum(per_point) * grid_wall / per_point.sum()
    grid_first_best = float(cum[int(np.argmax(res["mean_test_score"]))])
    load_grid_end = os.getloadavg()[0]
    print(
        f"grid: {n_points} points x {cfg.n_folds} folds in {grid_wall:.1f}s, best CV macro-F1 "
        f"{grid_best:.4f} {grid.best_params_}"
    )

    # ---- Optuna (stage `tune` with the five-parameter space), once per seed --------------------------
    def search(seed: int) -> dict:
        start_wall = time.time()
        study = study_for(
            dataclasses.replace(cfg, seed=seed, n_trials=100_000, timeout=grid_wall),
            data,
            "lightgbm",
            N_JOBS,
            storage=optuna.storages.InMemoryStorage(),
            study_name=f"bench-tuning-vs-grid-{seed}",
            space=space_five,
        )
        optuna_wall = time.time() - start_wall
        trace, best = [], float("-inf")
        reached_at = reached_fits = None
        fits = 0  # fold fits so far: a machine-load-independent measure of work
        states = {"COMPLETE": 0, "PRUNED": 0}
        for t in sorted(study.trials, key=lambda t: t.datetime_complete or t.datetime_start):
            if t.datetime_complete is None:
                continue
            elapsed = t.datetime_complete.timestamp() - start_wall
            states[t.state.name] = states.get(t.state.name, 0) + 1
            fits += len(t.user_attrs.get("fold_macro_f1", []))
            if t.state == optuna.trial.TrialState.COMPLETE and t.value > best:
                best = t.value
            trace.append(
                {
                    "trial": t.number,
                    "elapsed_s": round(elapsed, 2),
                    "state": t.state.name,
                    "value": None if t.value is None else round(t.value, 5),
                    "best": round(best, 5),
                    "fold_fits_so_far": fits,
                }
            )
            if reached_at is None and best >= grid_best:
                reached_at, reached_fits = elapsed, fits
        reached = (
            f"reached the grid's best after {reached_at:.1f}s ({grid_wall / reached_at:.1f}x faster), "
            f"{reached_fits} fold fits"
            if reached_at is not None
            else "did not reach the grid's best"
        )
        print(
            f"optuna seed {seed}: {len(trace)} trials ({states['COMPLETE']} complete, {states['PRUNED']} "
            f"pruned) in {optuna_wall:.1f}s, best {study.best_value:.4f}; {reached}"
        )
        return {
            "seed": seed,
            "wall_seconds": round(optuna_wall, 1),
            "trials": len(trace),
            "complete": states["COMPLETE"],
            "pruned": states["PRUNED"],
            "best_cv_macro_f1": round(study.best_value, 5),
            "best_params": study.best_params,
            "reached_grid_best_at_seconds": None if reached_at is None else round(reached_at, 1),
            "speedup_to_grid_best": None if reached_at is None else round(grid_wall / reached_at, 2),
            "fold_fits_total": fits,
            "reached_grid_best_after_fold_fits": reached_fits,
            "speedup_to_grid_best_in_fold_fits": None
            if reached_fits is None
            else round(n_points * cfg.n_folds / reached_fits, 2),
            "load_average_1min_end": round(os.getloadavg()[0], 2),
            "trace": trace,
        }

    runs = [search(args.seed + i) for i in range(args.seeds)]
    # A seed that never reached the grid's best counts as slower than the grid (speed-up below 1x), so
    # the median is taken over all seeds, not only the lucky ones.
    speedups = sorted((r["speedup_to_grid_best"] or 0.0) for r in runs)
    median = float(np.median(speedups))
    reached = sum(r["speedup_to_grid_best"] is not None for r in runs)
    beat = sum(r["best_cv_macro_f1"] >= grid_best for r in runs)
    verdict = (
        f"{reached} of {len(runs)} Optuna searches reached the grid's best ({grid_best:.4f}) within the "
        f"grid's {grid_wall:.1f}s; median speed-up {median:.1f}x (a search that did not reach it counts "
        f"as 0); speed-ups {speedups}; best within the same budget: grid {grid_best:.4f}, Optuna "
        f"{sorted(r['best_cv_macro_f1'] for r in runs)} ({beat} of {len(runs)} at or above the grid)"
    )
    print(verdict)
    print(
        f"the grid itself first evaluated its best point after ~{grid_first_best:.0f}s of its run; load "
        f"average grid start/end {load_start:.1f}/{load_grid_end:.1f}, end {os.getloadavg()[0]:.1f}"
    )

    result = {
        "machine": machine(),
        "data": {
            "source": "builtin",
            "timeframe": args.timeframe,
            "days": args.days,
            "development_rows": len(X),
            "n_folds": cfg.n_folds,
            "horizon": cfg.horizon,
            "class_counts": np.bincount(y).tolist(),
        },
        "fairness": {
            "gridsearch_n_jobs": 1,
            "lightgbm_threads_per_fit": N_JOBS,
            "scoring": "macro-F1, labels [0,1,2], zero_division=0",
            "other_params": "LightGBM defaults in both (objective multiclass, subsample_freq=1)",
        },
        "grid": {
            "space": {k: [v if v is not None else "None" for v in vs] for k, vs in GRID.items()},
            "points": n_points,
            "wall_seconds": round(grid_wall, 1),
            "best_cv_macro_f1": round(grid_best, 5),
            "best_params": grid.best_params_,
            "first_best_at_seconds_approx": round(grid_first_best, 1),
            "fold_fits": n_points * cfg.n_folds,
            "load_average_1min_start_end": [round(load_start, 2), round(load_grid_end, 2)],
        },
        "optuna": {
            "sampler": "TPE(multivariate, constant_liar)",
            "pruner": "MedianPruner(5 startup, 1 warm-up)",
            "timeout_seconds": round(grid_wall, 1),
            "runs": runs,
        },
        "median_speedup_to_grid_best": round(median, 2),
        "searches_reaching_grid_best": reached,
        "verdict": verdict,
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
