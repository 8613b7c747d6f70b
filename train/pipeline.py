"""`main` step: candles -> features/labels -> tuned base models -> ensemble -> holdout -> gate -> registry.

Run it through `mlflow run .` (see MLproject) or directly: `python -m train.pipeline --help`.
This entry point (with ``train/tracking.py``) is the only code that talks to MLflow tracking.
"""

from __future__ import annotations

import json
import logging
import resource
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib.metadata import version as dist_version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from evaluation.gate import GateConfig, evaluate_gate
from evaluation.metrics import baseline_predictions, classification_metrics, macro_f1, plot_confusion_matrix
from features.data import DataError, load_candles
from features.dataset import Dataset, InsufficientDataError, build_dataset
from features.labels import CLASS_NAMES
from models.base import build_model, default_n_jobs
from models.ensemble import WeightedSoftVoting
from models.pyfunc import SignalModel
from models.registry import PRODUCTION, get_production, promote, register_candidate
from train import tracking
from train.config import PipelineConfig, parse_args
from train.split import PurgedWalkForward, holdout_split
from train.tune import SPACE_VERSION, run_study

log = logging.getLogger("train.pipeline")

# Distributions the logged model needs at load time; versions are read from this environment.
MODEL_REQUIREMENTS = ("mlflow", "lightgbm", "xgboost-cpu", "scikit-learn", "pandas", "numpy", "cloudpickle")


class Stages:
    """Wall time and peak resident memory per pipeline stage (logged, and read by bench/)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        # ru_maxrss is in KiB on Linux and is the process peak so far; per stage it is monotone.
        self.peak_mb[name] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    def metrics(self) -> dict[str, float]:
        out = {f"stage_seconds_{k}": v for k, v in self.seconds.items()}
        out |= {f"stage_peak_rss_mb_{k}": v for k, v in self.peak_mb.items()}
        out["total_seconds"] = round(sum(self.seconds.values()), 3)
        out["peak_rss_mb"] = max(self.peak_mb.values(), default=0.0)
        return out


def describe_plan(cfg: PipelineConfig, info, ds: Dataset, split, cv) -> dict:
    """Rows, date ranges, folds and holdout as timestamps: what a dry run prints and every run logs."""
    ts = ds.X.index

    def span(positions) -> list[str]:
        return [str(ts[positions[0]]), str(ts[positions[-1]])]

    folds = []
    for fold in cv.describe(len(split.dev)):
        folds.append(fold | {"train_time": [str(ts[i]) for i in fold["train"]],
                             "validation_time": [str(ts[i]) for i in fold["validation"]]})
    return {
        "data": info.to_dict() | {"description": info.describe()},
        "rows_after_features_and_labels": ds.n_rows,
        "class_counts": ds.class_counts,
        "development": {"rows": len(split.dev), "time": span(split.dev)},
        "purge_gap_rows": split.gap,
        "holdout": {"rows": len(split.holdout), "time": span(split.holdout)},
        "folds": folds,
        "models": cfg.model_list,
    }


def print_plan(plan: dict) -> None:
    print(f"data      {plan['data']['source']}  ({plan['data']['description']})")
    print(f"rows      {plan['rows_after_features_and_labels']:,} usable, classes {plan['class_counts']}")
    dev, hold = plan["development"], plan["holdout"]
    print(f"dev       {dev['rows']:,} rows  {dev['time'][0]} .. {dev['time'][1]}")
    print(f"gap       {plan['purge_gap_rows']} rows purged")
    print(f"holdout   {hold['rows']:,} rows  {hold['time'][0]} .. {hold['time'][1]}")
    for f in plan["folds"]:
        print(f"fold {f['fold']}    train {f['n_train']:>6,} rows to {f['train_time'][1]} | "
              f"validate {f['n_validation']:,} rows {f['validation_time'][0]} .. {f['validation_time'][1]}")
    print(f"models    {', '.join(plan['models'])}")


def naive_utc(candles: pd.DataFrame) -> pd.DataFrame:
    """Candles as the served model takes them: a `timestamp` column of timezone-naive UTC datetimes."""
    frame = candles.reset_index()
    frame["timestamp"] = frame["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None)
    return frame


def score_champion(name: str, candles: pd.DataFrame, ds: Dataset, holdout_pos: np.ndarray, cfg: PipelineConfig):
    """Re-score the current production version on this run's holdout: (version, macro-F1 or None, note)."""
    champion = get_production(name)
    if champion is None:
        return None, None, "no production version yet: nothing to compare against"
    champion_version = str(champion.version)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{champion_version}")
    last_bar = int(ds.bars[holdout_pos[-1]])
    history = naive_utc(candles.iloc[: last_bar + 1])
    try:
        out = model.predict(history)
    except ValueError as exc:
        return champion_version, None, f"production v{champion_version} cannot score these candles: {exc}"
    out = out.set_index("timestamp")
    rows = out.loc[ds.X.index[holdout_pos].tz_localize(None)]
    if not rows["ready"].all():
        return champion_version, None, f"production v{champion_version} lacks history for some holdout rows"
    note = ""
    tags = champion.tags
    same = {"features": cfg.features, "horizon": str(cfg.horizon), "threshold": str(cfg.threshold),
            "vol_window": str(cfg.vol_window)}
    differs = [k for k, v in same.items() if tags.get(k) not in (None, v)]
    if differs:
        note = f"scored on this run's labels; production was trained with different {', '.join(differs)}"
    return champion_version, macro_f1(ds.y.to_numpy()[holdout_pos], rows["label"].to_numpy()), note


def stage_model_code(tmp: Path) -> list[str]:
    """Copy the code the served model unpickles, without data files, caches or the training steps.

    That is ``features`` and ``models``, plus ``train/split.py``: the fitted ensemble keeps its CV
    splitter as a parameter (scikit-learn's contract), so unpickling it needs that one module.
    """
    ignore = shutil.ignore_patterns("builtin", "__pycache__", "*.pyc")
    for package in ("features", "models"):
        shutil.copytree(tracking.REPO_ROOT / package, tmp / package, ignore=ignore)
    (tmp / "train").mkdir()
    for module in ("__init__.py", "split.py"):
        shutil.copy2(tracking.REPO_ROOT / "train" / module, tmp / "train" / module)
    return [str(tmp / p) for p in ("features", "models", "train")]


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run every step and return the summary (also printed by ``main``)."""
    stages = Stages()
    n_jobs = cfg.n_jobs or default_n_jobs()

    with stages("data"):
        candles, info = load_candles(cfg.data, cfg.timeframe or None, cfg.days or None)
        ds = build_dataset(candles, cfg.features, cfg.horizon, cfg.threshold, cfg.vol_window)
        split = holdout_split(ds.n_rows, cfg.horizon, cfg.holdout_frac)
        cv = PurgedWalkForward(n_splits=cfg.n_folds, horizon=cfg.horizon)
        plan = describe_plan(cfg, info, ds, split, cv)
    print_plan(plan)
    if cfg.dry_run:
        print("dry run: nothing trained, nothing logged, nothing registered")
        return {"dry_run": True, "plan": plan}

    tracking.check_reachable()
    tracking.use_experiment()
    X_dev, y_dev = ds.X.iloc[split.dev], ds.y.iloc[split.dev]
    X_hold, y_hold = ds.X.iloc[split.holdout], ds.y.to_numpy()[split.holdout]
    summary: dict = {"models": {}, "plan": plan}

    with mlflow.start_run() as parent:
        source = "builtin" if info.source == "builtin" else Path(info.source).name
        mlflow.set_tag("mlflow.runName", f"pipeline {source} {cfg.timeframe or str(info.bar)} {cfg.features} "
                       f"h{cfg.horizon} {time.strftime('%Y-%m-%d %H:%M')}")
        mlflow.set_tags({"step": "pipeline", "feature_set": cfg.features, "git_commit": tracking.git_commit(),
                         "data_source": info.source, "data_sha256": info.sha256})
        tracking.log_params_once(cfg.to_dict())
        mlflow.log_dict(cfg.to_dict(), "config.json")
        mlflow.log_dict(plan, "plan.json")
        data_digest = tracking.log_dataset(candles, "candles", info.source, "candles")

        studies, best_params = {}, {}
        for name in cfg.model_list:
            study_name = f"{name}-{cfg.fingerprint(info.sha256, name, SPACE_VERSION)}"
            with stages(f"tune_{name}"), mlflow.start_run(run_name=f"tune-{name}", nested=True) as child:
                mlflow.set_tags({"step": "tune", "model_family": name, "optuna_study": study_name,
                                 "feature_set": cfg.features})
                study = run_study(name, X_dev, y_dev, cv, cfg.n_trials, cfg.timeout or None,
                                  cfg.optuna_storage, study_name, seed=cfg.seed, n_jobs=n_jobs)
                best = study.best_trial
                best_params[name] = best.params
                trials = study.trials_dataframe()
                mlflow.log_params({f"best_{k}": v for k, v in best.params.items()})
                mlflow.log_params({"optuna_storage_study": study_name, "n_trials_requested": cfg.n_trials})
                mlflow.log_metrics({
                    "cv_macro_f1_mean": best.value,
                    "cv_macro_f1_std": best.user_attrs.get("cv_macro_f1_std", float("nan")),
                    "n_trials_complete": int((trials["state"] == "COMPLETE").sum()),
                    "n_trials_pruned": int((trials["state"] == "PRUNED").sum()),
                })
                mlflow.log_text(trials.to_csv(index=False), "trials.csv")
                mlflow.log_dict(best.params, "best_params.json")
                studies[name] = child.info.run_id
                summary["models"][name] = {"cv_macro_f1_mean": best.value,
                                           "cv_macro_f1_std": best.user_attrs.get("cv_macro_f1_std")}
            print(f"tuned     {name:<14} cv macro-F1 {best.value:.4f} "
                  f"({len(trials)} trials, {stages.seconds[f'tune_{name}']:.0f}s)")

        with mlflow.start_run(run_name="ensemble", nested=True) as ens_run:
            with stages("ensemble"):
                mlflow.set_tags({"step": "ensemble", "model_family": "ensemble", "feature_set": cfg.features})
                estimators = [(n, build_model(n, best_params[n], seed=cfg.seed, n_jobs=n_jobs))
                              for n in cfg.model_list]
                # Weights from out-of-fold predictions on the development rows only; the holdout stays unseen.
                ensemble = WeightedSoftVoting(estimators, cv=cv).fit(X_dev, y_dev)
                mlflow.log_params({f"weight_{k}": round(v, 4) for k, v in ensemble.named_weights_.items()})
                mlflow.log_metric("weight_search_oof_macro_f1", ensemble.oof_macro_f1_)
                tracking.log_dataset(ds.X.iloc[split.dev].assign(label=y_dev), "development", info.source,
                                     "training")
                tracking.log_dataset(ds.X.iloc[split.holdout].assign(label=y_hold), "holdout", info.source,
                                     "evaluation")

            with stages("evaluate"):
                results = {}
                for name, model in ensemble.named_estimators_.items():
                    results[name] = classification_metrics(y_hold, model.predict_proba(X_hold))
                    tracking.log_metrics("holdout_", results[name], run_id=studies[name])
                    summary["models"][name]["holdout_macro_f1"] = results[name]["macro_f1"]
                ens_proba = ensemble.predict_proba(X_hold)
                results["ensemble"] = classification_metrics(y_hold, ens_proba)
                tracking.log_metrics("holdout_", results["ensemble"])
                base = baseline_predictions(y_dev, len(y_hold), cfg.seed)
                base_metrics = {k: classification_metrics(y_hold, p) for k, p in base.items()}
                for k, m in base_metrics.items():
                    tracking.log_metrics(f"baseline_{k}_", m)
                with tempfile.TemporaryDirectory() as tmp:
                    for name, m in results.items():
                        plot_confusion_matrix(m["confusion_matrix"], f"{name}: holdout", Path(tmp) / f"cm_{name}.png")
                    mlflow.log_artifacts(tmp, "confusion_matrix")
                mlflow.log_dict({"models": results, "baselines": base_metrics}, "holdout_metrics.json")

                champion_version, champion_f1, champion_note = score_champion(
                    cfg.model_name, candles, ds, split.holdout, cfg)
                if champion_f1 is not None:
                    mlflow.log_metric("production_holdout_macro_f1", champion_f1)
                ens_f1 = results["ensemble"]["macro_f1"]
                gate = evaluate_gate(
                    y_hold, ens_proba.argmax(axis=1),
                    {k: p.argmax(axis=1) for k, p in base.items()},
                    {k: m["macro_f1"] for k, m in base_metrics.items()},
                    ens_f1,
                    GateConfig(cfg.gate_min_f1, cfg.gate_margin, cfg.gate_confidence),
                    block=max(cfg.horizon * 10, 20),
                    champion_f1=champion_f1, champion_version=champion_version, champion_note=champion_note,
                    seed=cfg.seed,
                )
                if champion_version is not None and champion_f1 is None:
                    # The champion could not be scored on these candles: an incomparable comparison must not
                    # silently let the candidate replace it.
                    for check in gate.checks:
                        if check.name == "not_worse_than_production":
                            check.passed = False
                    gate.passed = False
                mlflow.log_dict(gate.to_dict(), "gate_report.json")
                mlflow.log_metric("baseline_macro_f1", gate.baseline_macro_f1)
                mlflow.set_tag("gate", gate.result)

            with stages("register"):
                signal_model = SignalModel(ensemble, cfg.features, info.bar, metadata={
                    "feature_set": cfg.features, "bar": str(info.bar), "horizon": cfg.horizon,
                    "threshold": cfg.threshold, "vol_window": cfg.vol_window, "classes": list(CLASS_NAMES),
                })
                example = naive_utc(candles.iloc[-(signal_model.min_history + 5):])
                signature = infer_signature(example, signal_model.predict_candles(example))
                with tempfile.TemporaryDirectory() as tmp:
                    logged = mlflow.pyfunc.log_model(
                        name="model",
                        python_model=signal_model,
                        code_paths=stage_model_code(Path(tmp)),
                        signature=signature,
                        input_example=example,
                        pip_requirements=[f"{d}=={dist_version(d)}" for d in MODEL_REQUIREMENTS],
                        metadata={"min_history_bars": signal_model.min_history} | signal_model.metadata,
                    )
                tags = {
                    "gate": gate.result,
                    "holdout_macro_f1": f"{ens_f1:.6f}",
                    "baseline_macro_f1": f"{gate.baseline_macro_f1:.6f}",
                    "baseline_name": gate.baseline_name,
                    "gate_failed_checks": ",".join(gate.failed_checks()),
                    "features": cfg.features, "horizon": cfg.horizon, "threshold": cfg.threshold,
                    "vol_window": cfg.vol_window, "bar": str(info.bar), "data_sha256": info.sha256,
                    "data_digest": data_digest, "pipeline_run_id": parent.info.run_id,
                }
                if champion_f1 is not None:
                    tags["production_holdout_macro_f1"] = f"{champion_f1:.6f}"
                mv = register_candidate(logged.model_uri, cfg.model_name, tags)
                version = str(mv.version)
                promoted = False
                if gate.passed:
                    promote(cfg.model_name, version, reason="passed the gate", run_id=parent.info.run_id)
                    promoted = True
                mlflow.set_tag("model_version", version)

        mlflow.set_tags({"gate": gate.result, "model_version": version})
        mlflow.log_metrics({"holdout_macro_f1": ens_f1, "baseline_macro_f1": gate.baseline_macro_f1,
                            "holdout_accuracy": results["ensemble"]["accuracy"]})
        mlflow.log_metrics(stages.metrics())
        mlflow.log_dict(gate.to_dict(), "gate_report.json")

    summary |= {
        "run_id": parent.info.run_id,
        "ensemble": {"holdout_macro_f1": ens_f1, "weights": ensemble.named_weights_},
        "baselines": {k: m["macro_f1"] for k, m in base_metrics.items()},
        "gate": gate.to_dict(),
        "model_name": cfg.model_name,
        "model_version": version,
        "promoted": promoted,
        "production_version": version if promoted else champion_version,
        "stages": stages.metrics(),
    }
    return summary


def print_summary(s: dict) -> None:
    print("\n== summary " + "=" * 60)
    print(f"{'model':<16}{'cv macro-F1':>14}{'holdout macro-F1':>19}{'weight':>9}")
    for name, m in s["models"].items():
        print(f"{name:<16}{m['cv_macro_f1_mean']:>14.4f}{m['holdout_macro_f1']:>19.4f}"
              f"{s['ensemble']['weights'][name]:>9.2f}")
    print(f"{'ensemble':<16}{'':>14}{s['ensemble']['holdout_macro_f1']:>19.4f}")
    for name, f1 in s["baselines"].items():
        print(f"{'baseline ' + name:<30}{f1:>19.4f}")
    gate = s["gate"]
    print(f"gate      {gate['result'].upper()}")
    for c in gate["checks"]:
        print(f"  [{'x' if c['passed'] else ' '}] {c['name']}: {c['detail']}")
    alias = f"{PRODUCTION} -> v{s['production_version']}" if s["production_version"] else f"no {PRODUCTION}"
    moved = "moved to this version" if s["promoted"] else "not moved"
    print(f"registry  {s['model_name']} v{s['model_version']}; alias {alias} ({moved})")
    print(f"run       {s['run_id']}  ({s['stages']['total_seconds']:.0f}s, peak {s['stages']['peak_rss_mb']:.0f} MB)")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_args(argv)
        summary = run_pipeline(cfg)
    except (DataError, InsufficientDataError, tracking.TrackingUnavailable, ValueError, TypeError,
            MlflowException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not summary.get("dry_run"):
        print_summary(summary)
        print(json.dumps({"gate": summary["gate"]["result"], "model_version": summary["model_version"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
