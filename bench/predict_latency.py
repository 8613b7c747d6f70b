"""Benchmark: latency of the served model's ``predict``, as a bot calls it, and what it is spent on.

Usage: python bench/predict_latency.py [--model-uri URI] [--cycle-repeats 200] [--batch-repeats 30]
       [--out bench/results/predict_latency.json] [extra pipeline CLI options]

Without ``--model-uri`` it first trains a model the default way but quickly (built-in BTC/USD 30-minute
data, all three models so the ensemble has its real shape, ``--n-trials 3 --timeout 0`` unless given) in a
fresh temporary tracking store, and registers it as ``crypto-signal-ensemble@production`` (a candidate
that failed its gate is force-promoted there: only its speed matters). With ``--model-uri`` it times that
model from the store ``MLFLOW_TRACKING_URI`` points at (it must take 30-minute bars).

The model is loaded with ``mlflow.pyfunc.load_model`` in this process, then timed on the built-in candles,
as the bot sends them (``timestamp, open, high, low, close, volume``, timestamps naive UTC):

* cycle: the last 300 candles, one bot cycle (the bot reads the last row; ~50 rows of history are needed)
* batch: the last 10,000 candles

For each input, after a few warm-up rounds that are not counted, it times ``--*-repeats`` rounds of
(interleaved, one call of each per round, so a change in the machine's load hits all alike):

* ``pyfunc.predict``: everything a bot waits for: MLflow's schema enforcement, candle validation, bar and
  gap check, feature computation, the ensemble, the output frame;
* ``SignalModel.predict_candles``: the same without MLflow's schema enforcement;
* ``compute_features``: the features alone (with the context features for a model trained with them);
* ``ensemble.predict_proba``: the soft-voting ensemble alone, on the already computed feature rows,
  and each of its models alone: ``<model>.predict_proba`` (the library's own) and, for a model whose code
  has it, ``<model>.fast_member_proba`` (the same numbers the way the ensemble asks for them,
  ``models.ensemble.fast_member_proba``).

p50 / p99 / mean are in milliseconds (the p99 of 200 or 30 calls is close to their maximum), rows per
second is rows / mean; the shares of ``pyfunc.predict`` spent on each part are ratios of p50s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, write_result  # noqa: E402

MODEL_NAME = "crypto-signal-ensemble"
QUICK = ["--n-trials", "3", "--timeout", "0"]


def timed(paths: dict, repeats: int, warmup: int) -> dict:
    """Time every path ``repeats`` times, interleaved (one call of each per round), so a change in the
    machine's load during the benchmark affects all paths alike; ``warmup`` rounds are not counted."""
    for _ in range(warmup):
        for fn in paths.values():
            fn()
    times = {name: np.empty(repeats) for name in paths}
    for i in range(repeats):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            times[name][i] = time.perf_counter() - start
    out = {}
    for name, secs in times.items():
        ms = secs * 1e3
        out[name] = {
            "repeats": repeats,
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3),
            "min_ms": round(float(ms.min()), 3),
        }
    return out


def train(extra: list[str]) -> tuple[str, dict]:
    """Train and register a quick default model in the temporary store; return its URI and a summary."""
    from models.registry import PRODUCTION, promote
    from train.config import parse_args
    from train.pipeline import run_pipeline

    given = {a.split("=")[0] for a in extra if a.startswith("--")}
    quick = [x for i in range(0, len(QUICK), 2) if QUICK[i] not in given for x in QUICK[i : i + 2]]
    cfg = parse_args(quick + extra)
    start = time.perf_counter()
    summary = run_pipeline(cfg)
    seconds = time.perf_counter() - start
    forced = False
    if not summary["promoted"]:
        promote(cfg.model_name, summary["model_version"], "benchmark: time this model", force=True)
        forced = True
    info = {
        "config": cfg.to_dict(),
        "train_seconds": round(seconds, 1),
        "stage_seconds": {
            k.removeprefix("stage_seconds_"): v
            for k, v in summary["stages"].items()
            if k.startswith("stage_seconds_")
        },
        "model_version": summary["model_version"],
        "gate": summary["gate"]["result"],
        "force_promoted": forced,
        "holdout_macro_f1": summary["ensemble"]["holdout_macro_f1"],
        "weights": summary["ensemble"]["weights"],
    }
    return f"models:/{cfg.model_name}@{PRODUCTION}", info


def bench(uri: str, args) -> dict:
    import mlflow

    from features.data import load_builtin
    from models.pyfunc import as_model_input

    start = time.perf_counter()
    model = mlflow.pyfunc.load_model(uri)
    load_seconds = time.perf_counter() - start
    signal_model = model.unwrap_python_model()
    # The very functions predict_candles calls: the model's own code (pickled by value with it, so not
    # necessarily this checkout's modules, which a bench process may have imported too).
    code = SimpleNamespace(**type(signal_model).predict_candles.__globals__)
    feature_names = list(signal_model.feature_names)
    context = getattr(signal_model, "context_timeframe", None)

    def compute_features(candles, feature_set):  # base features, plus the context ones if the model has them
        return code.compute_model_features(candles, feature_set, context, bar=signal_model.bar)

    ensemble = signal_model.ensemble
    estimators = ensemble.named_estimators_
    # The ensemble's own per-member path (models.ensemble.fast_member_proba), when its code has one.
    member_probas = getattr(type(ensemble), "_member_probas", None)
    fast_member = None if member_probas is None else member_probas.__globals__.get("fast_member_proba")
    candles = as_model_input(load_builtin())
    inputs = {"cycle": candles.iloc[-args.cycle_rows :], "batch": candles.iloc[-args.batch_rows :]}
    repeats = {"cycle": args.cycle_repeats, "batch": args.batch_repeats}
    frames = {name: frame.set_index("timestamp").tz_localize("UTC") for name, frame in inputs.items()}

    results: dict = {}
    for name, frame in inputs.items():
        n, reps = len(frame), repeats[name]
        warmup = max(3, reps // 20)
        out = model.predict(frame)
        assert len(out) == n and bool(out["ready"].iloc[-1]), "the last row must get a signal"
        feats = compute_features(frames[name], signal_model.feature_set)[feature_names]
        ready = feats[feats.notna().all(axis=1)]
        paths = {
            "pyfunc.predict": lambda f=frame: model.predict(f),
            "SignalModel.predict_candles": lambda f=frame: signal_model.predict_candles(f),
            "compute_features": lambda c=frames[name]: compute_features(c, signal_model.feature_set),
            "ensemble.predict_proba": lambda x=ready: ensemble.predict_proba(x),
        } | {f"{m}.predict_proba": lambda x=ready, e=est: e.predict_proba(x) for m, est in estimators.items()}
        if fast_member is not None:
            # Each member as the ensemble asks it (one after the other here; XGBoost runs beside the others
            # in ensemble.predict_proba): the library's predict_proba above is the same numbers.
            xn, leaf_values = ready.to_numpy(dtype=np.float64), ensemble._leaf_values()
            paths |= {
                f"{m}.fast_member_proba": lambda x=ready, xn=xn, e=est, v=v: fast_member(e, x, xn, v)
                for (m, est), v in zip(estimators.items(), leaf_values, strict=True)
            }
        print(f"{name}: {n:,} candles, {len(ready):,} ready rows, {reps} timed calls each", flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = timed(paths, reps, warmup)
        for path, r in rows.items():
            r["rows"] = len(ready) if path.endswith(("predict_proba", "member_proba")) else n
            r["rows_per_second"] = round(r["rows"] / (r["mean_ms"] / 1e3))
        total = rows["pyfunc.predict"]["p50_ms"]
        results[name] = {
            "candles": n,
            "ready_rows": len(ready),
            "last_signal": str(out["signal"].iloc[-1]),
            "timings": rows,
            "share_of_pyfunc_p50": {
                "ensemble.predict_proba": round(rows["ensemble.predict_proba"]["p50_ms"] / total, 3),
                "compute_features": round(rows["compute_features"]["p50_ms"] / total, 3),
                "mlflow_schema_enforcement": round(
                    (total - rows["SignalModel.predict_candles"]["p50_ms"]) / total, 3
                ),
            },
        }
    return {
        "model_uri": uri,
        "load_seconds": round(load_seconds, 2),
        "feature_set": signal_model.feature_set,
        "context_timeframe": context,
        "models": {m: type(e).__name__ for m, e in estimators.items()},
        "model_n_jobs": {m: getattr(e, "n_jobs", None) for m, e in estimators.items()},
        "n_estimators": {m: getattr(e, "n_estimators", None) for m, e in estimators.items()},
        "results": results,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", default="", help="time this model instead of training one")
    parser.add_argument("--cycle-rows", type=int, default=300)
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--cycle-repeats", type=int, default=200)
    parser.add_argument("--batch-repeats", type=int, default=30)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "predict_latency.json"))
    args, extra = parser.parse_known_args()
    if args.model_uri and extra:
        parser.error(f"pipeline options {extra} train a model; with --model-uri nothing is trained")
    wall_start = time.perf_counter()
    load_at_start = machine()["load_avg_1_5_15"]

    if args.model_uri:
        training, measured = None, bench(args.model_uri, args)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            cwd = os.getcwd()
            os.chdir(tmp)
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
            os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "bench")
            try:
                uri, training = train(extra)
                measured = bench(uri, args)
            finally:
                os.chdir(cwd)

    result = {
        "machine": machine() | {"load_avg_1_5_15_at_start": load_at_start},
        "training": training,
        **measured,
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
    }
    models = ", ".join(measured["models"])
    print(f"\nmodel {measured['model_uri']} ({models}), loaded in {measured['load_seconds']} s")
    print(f"{'input':<8}{'path':<36}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'rows/s':>12}")
    for name, res in measured["results"].items():
        for path, t in res["timings"].items():
            indent = "  " if path.split(".")[0] in measured["models"] else ""
            print(
                f"{name:<8}{indent + path:<36}{t['p50_ms']:>9.2f}{t['p99_ms']:>9.2f}{t['mean_ms']:>9.2f}"
                f"{t['rows_per_second']:>12,}"
            )
        s = res["share_of_pyfunc_p50"]
        print(
            f"{'':<8}of the pyfunc p50: ensemble {s['ensemble.predict_proba']:.0%}, features "
            f"{s['compute_features']:.0%}, MLflow schema enforcement {s['mlflow_schema_enforcement']:.0%}"
        )
    load_at_end = result["machine"]["load_avg_1_5_15"]
    print(f"load average (1/5/15 min) at start {load_at_start}, at end {load_at_end}")
    print(f"wall {result['wall_seconds']} s")
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
