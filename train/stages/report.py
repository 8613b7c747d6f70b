"""Stage `report`: what a pipeline run decided, for people: the HTML report with its plots, the run's
description, the summary and its last line.

Everything here describes decisions already taken: nothing feeds back into a model or the gate.
:func:`report_images`, :func:`lookahead_check`, :func:`report_context`, :func:`summarise`,
:func:`run_note` and :func:`final_line` compute; :func:`report` and :func:`log_outcome` log,
:func:`print_plan` and :func:`print_summary` print.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from evaluation.gate import GateReport
from evaluation.lookahead_analysis import analyse
from evaluation.metrics import plot_confusion_matrix
from evaluation.plots import (
    gain_importance,
    holdout_permutation_importance,
    plot_equity,
    plot_importance,
    plot_optuna,
    plot_reliability,
)
from evaluation.report import write_report
from features.context import feature_function
from features.labels import label_function
from models import tracking
from models.base import default_n_jobs
from models.registry import PRODUCTION
from train.config import PipelineConfig
from train.prepare import Prepared
from train.stages.assess import Evaluation
from train.stages.fit import Fitted
from train.stages.register import Registered
from train.stages.tune import Tuned
from train.tune import OBJECTIVE_LABELS

log = logging.getLogger(__name__)
REPORT = "report.html"
EXIT_NOT_PROMOTED = 75  # EX_TEMPFAIL: the gate passed but production did not move; see the last line


# --------------------------------------------------------------------------------- the HTML report


def report_images(
    cfg: PipelineConfig, data: Prepared, fitted: Fitted, tuned: dict[str, Tuned], ev: Evaluation, plots: Path
) -> list[tuple[str, Path]]:
    """Draw the report's plots into the directory ``plots``; returns (caption, file) per image."""
    X_hold, y_hold = data.holdout
    images = [
        (
            f"Holdout equity of the decision policy after costs ({fitted.policy.mode}, "
            f"{fitted.policy.on_hold} on hold) against buy-and-hold",
            plot_equity(ev.backtest.equity, ev.backtest.benchmark_equity, plots / "equity.png"),
        )
    ]
    for name, m in ev.results.items():
        images.append(
            (
                f"Confusion matrix on the holdout: {name}",
                plot_confusion_matrix(
                    m["confusion_matrix"], f"{name}: holdout", plots / f"confusion_matrix_{name}.png"
                ),
            )
        )
    images.append(
        (
            "Reliability of the ensemble's class probabilities on the holdout",
            plot_reliability(y_hold, ev.ensemble_proba, plots / "reliability.png"),
        )
    )
    ensemble = fitted.ensemble
    gain = {n: gain_importance(m, list(X_hold.columns)) for n, m in ensemble.named_estimators_.items()}
    permutation = holdout_permutation_importance(
        ensemble, X_hold, y_hold, seed=cfg.seed, n_repeats=3, n_jobs=cfg.n_jobs or default_n_jobs()
    )
    rows = permutation.attrs["rows"]
    where = (
        "the holdout" if rows == len(X_hold) else f"{rows:,} random rows of the {len(X_hold):,}-row holdout"
    )
    images.append(
        (
            f"Feature importance: gain per model, permutation (macro-F1 drop) on {where}",
            plot_importance(gain, permutation, plots / "feature_importance.png"),
        )
    )
    for name, t in tuned.items():
        images += [(f"Optuna study: {name} ({p.stem.split('_')[1]})", p) for p in plot_optuna(t.study, plots)]
    return images


def lookahead_check(cfg: PipelineConfig, data: Prepared):
    """Features and labels recomputed on truncated histories
    (:func:`evaluation.lookahead_analysis.analyse`)."""
    return analyse(
        data.candles,
        feature_sets=(cfg.features,),
        cuts=10,
        horizon=cfg.horizon,
        threshold=cfg.threshold,
        vol_window=cfg.vol_window,
        labels=label_function(cfg.label),
        compute=feature_function(
            cfg.context_timeframe or None,
            data.info.bar,
            pair=bool(cfg.pair_data.strip()),
            primary=cfg.primary,
            horizon=cfg.horizon,
        ),
        seed=cfg.seed,
    )


def changed_values(lookahead) -> int:
    """How many values of the look-ahead check changed when later candles were cut off (0: no leak)."""
    return sum(c.changed for cols in lookahead.counts.values() for c in cols.values())


def report_context(
    cfg: PipelineConfig,
    data: Prepared,
    fitted: Fitted,
    tuned: dict[str, Tuned],
    ev: Evaluation,
    run_id: str,
    gate: dict,
    images: list,
    lookahead,
) -> dict:
    """What :func:`evaluation.report.write_report` renders."""
    changed = changed_values(lookahead)
    return {
        "title": f"{cfg.model_name}: pipeline run",
        "run_id": run_id,
        "gate": gate,
        "data": data.plan["data"],
        "plan": data.plan,
        "models": {
            n: {
                "cv_macro_f1_mean": t.cv_macro_f1_mean,
                "cv_macro_f1_std": t.cv_macro_f1_std,
                "holdout": ev.results[n],
            }
            for n, t in tuned.items()
        },
        "ensemble": {"weights": fitted.ensemble.named_weights_, "holdout": ev.results["ensemble"]},
        "baselines": ev.baselines,
        "backtest": {
            "config": asdict(ev.backtest.config),
            "policy": fitted.policy.to_dict(),
            "policy_search": fitted.policy_search,
            "metrics": ev.backtest.metrics,
            "benchmark_metrics": ev.backtest.benchmark_metrics,
            "baseline_metrics": ev.baseline_backtests,
            "deflated_sharpe": ev.deflated_sharpe,
        },
        "lookahead": {
            "passed": lookahead.passed,
            "detail": f"features and labels recomputed on truncated histories at {lookahead.n_cuts} cut "
            f"points ({lookahead.values_checked:,} values): {changed} changed"
            + "".join(f"; {fs}: {', '.join(cols)}" for fs, cols in lookahead.leaking_columns().items()),
        },
        "images": images,
        "config": cfg.to_dict(),
    }


def report(
    cfg: PipelineConfig,
    data: Prepared,
    fitted: Fitted,
    tuned: dict[str, Tuned],
    ev: Evaluation,
    run_id: str,
) -> dict:
    """Plots and the one-page HTML report of the pipeline run; returns the gate report that links to it.

    It logs to the pipeline run ``run_id`` (the active run is the ensemble's).
    """
    client = MlflowClient()
    gate = ev.gate.to_dict() | {"report": f"runs:/{run_id}/{REPORT}"}
    with tempfile.TemporaryDirectory() as tmp:
        plots = Path(tmp) / "plots"
        plots.mkdir()
        images = report_images(cfg, data, fitted, tuned, ev, plots)
        lookahead = lookahead_check(cfg, data)
        client.log_metric(run_id, "lookahead_changed_values", changed_values(lookahead))
        ctx = report_context(cfg, data, fitted, tuned, ev, run_id, gate, images, lookahead)
        write_report(ctx, Path(tmp) / REPORT)
        client.log_artifacts(run_id, str(plots), "plots")
        client.log_artifact(run_id, str(Path(tmp) / REPORT))
    return gate


# ------------------------------------------------------------------------------ the pipeline run


def production_version(ev: Evaluation, registered: Registered) -> str | None:
    """The version in production after the run: this one if promoted, else the champion (if any)."""
    if registered.promoted:
        return registered.version
    return None if ev.champion is None else ev.champion.version


def outcome_metrics(ev: Evaluation) -> dict[str, float]:
    """The holdout numbers the pipeline run itself carries (the ensemble run has them all)."""
    ens = ev.results["ensemble"]
    return (
        {
            "holdout_macro_f1": ens["macro_f1"],
            "baseline_macro_f1": ev.gate.baseline_macro_f1,
            "holdout_accuracy": ens["accuracy"],
            "backtest_dsr": ev.deflated_sharpe["dsr"],
            "backtest_psr": ev.deflated_sharpe["psr"],
            "backtest_sr0": ev.deflated_sharpe["sr0"],
        }
        | {f"backtest_{k}": v for k, v in ev.backtest.metrics.items()}
        | {f"buyhold_{k}": v for k, v in ev.backtest.benchmark_metrics.items()}
    )


def check_value(gate: GateReport, name: str) -> str:
    """A check's value for a one-line note ("-" when the check was not run or has none)."""
    check = next((c for c in gate.checks if c.name == name), None)
    return "-" if check is None or check.value is None else f"{check.value:.3g}"


def run_note(cfg: PipelineConfig, ev: Evaluation, registered: Registered) -> str:
    """The run's description (runs table and run page): what was decided, on which numbers."""
    gate, bt, bh = ev.gate, ev.backtest.metrics, ev.backtest.benchmark_metrics
    failed = ", ".join(gate.failed_checks())
    production = f"production: v{production_version(ev, registered) or '-'}"
    where = "production" if registered.promoted else f"not production ({production})"
    if registered.refused:
        where = f"NOT promoted although it passed the gate ({registered.refused}; {production})"
    return (
        f"**gate {gate.result}**{f' (failed: {failed})' if failed else ''}: "
        f"{cfg.model_name} v{registered.version}, {where}\n\n"
        f"- holdout macro-F1 **{gate.candidate_macro_f1:.4f}** vs best baseline "
        f"{gate.baseline_macro_f1:.4f} ({gate.baseline_name})\n"
        f"- backtest after costs: return **{bt['total_return']:+.2%}**, Sharpe {bt['sharpe']:.2f}, "
        f"{bt['n_trades']} trades; buy-and-hold {bh['total_return']:+.2%}\n"
        f"- timing against its own shifted positions: p = {check_value(gate, 'timing_skill')}; holdout "
        f"looked at {gate.looks} time{'s' if gate.looks != 1 else ''} "
        f"(each test at p <= {gate.alpha:.3g})\n"
        f"- deflated Sharpe {ev.deflated_sharpe['dsr']:.3f}; holdout rows in the ensemble run's "
        "`holdout_predictions.json`"
    )


def log_outcome(
    cfg: PipelineConfig, ev: Evaluation, gate_report: dict, registered: Registered, stage_metrics: dict
) -> None:
    """The decision, its numbers, the stage timings, the gate report and the description, to the active
    (pipeline) run."""
    mlflow.set_tags({"gate": ev.gate.result, "model_version": registered.version})
    mlflow.log_metrics(outcome_metrics(ev) | stage_metrics)
    mlflow.log_dict(gate_report, "gate_report.json")
    mlflow.set_tag("mlflow.note.content", run_note(cfg, ev, registered))


def summarise(
    cfg: PipelineConfig,
    run_id: str,
    data: Prepared,
    tuned: dict[str, Tuned],
    fitted: Fitted,
    ev: Evaluation,
    registered: Registered,
    stage_metrics: dict,
) -> dict:
    """The pipeline's summary (what ``run_pipeline`` returns and :func:`print_summary` prints)."""
    return {
        "run_id": run_id,
        "plan": data.plan,
        "objective": cfg.objective,
        "models": {
            n: {
                "cv_macro_f1_mean": t.cv_macro_f1_mean,
                "cv_macro_f1_std": t.cv_macro_f1_std,
                "cv_objective": t.cv_objective,
                "cv_sharpe": t.cv_sharpe,
                "holdout_macro_f1": ev.results[n]["macro_f1"],
            }
            for n, t in tuned.items()
        },
        "ensemble": {
            "holdout_macro_f1": ev.results["ensemble"]["macro_f1"],
            "weights": fitted.ensemble.named_weights_,
        },
        "baselines": {k: m["macro_f1"] for k, m in ev.baselines.items()},
        "policy": fitted.policy.to_dict(),
        "policy_oof": fitted.chosen,
        "backtest": ev.backtest.metrics,
        "buyhold": ev.backtest.benchmark_metrics,
        "baseline_backtests": ev.baseline_backtests,
        "deflated_sharpe": ev.deflated_sharpe,
        "gate": ev.gate.to_dict(),
        "champion": None if ev.champion is None else asdict(ev.champion),
        "model_name": cfg.model_name,
        "model_version": registered.version,
        "promoted": registered.promoted,
        "promotion_refused": registered.refused,
        "production_version": production_version(ev, registered),
        "stages": stage_metrics,
    }


def final_line(summary: dict) -> dict:
    """The last line a pipeline prints (JSON): the gate's result, the version, whether production moved
    to it and, for a version that passed its gate but was not promoted, why."""
    line = {
        "gate": summary["gate"]["result"],
        "model_version": summary["model_version"],
        "promoted": summary["promoted"],
        "production_version": summary["production_version"],
    }
    if summary.get("promotion_refused"):
        line["not_promoted"] = summary["promotion_refused"]
    return line


# ------------------------------------------------------------------------------------- the console


def print_plan(plan: dict) -> None:
    log.info(f"data      {plan['data']['source']}  ({plan['data']['description']})")
    log.info(f"rows      {plan['rows_after_features_and_labels']:,} usable, classes {plan['class_counts']}")
    if plan.get("gaps"):
        log.info(
            f"gaps      {plan['gaps']} gap(s) in the candles: {plan['rows_dropped_at_gaps']:,} rows "
            "dropped so that no label or indicator window spans one"
        )
    dev, hold = plan["development"], plan["holdout"]
    log.info(f"dev       {dev['rows']:,} rows  {dev['time'][0]} .. {dev['time'][1]}")
    log.info(f"gap       {plan['purge_gap_rows']} rows purged")
    log.info(f"holdout   {hold['rows']:,} rows  {hold['time'][0]} .. {hold['time'][1]}")
    for f in plan["folds"]:
        log.info(
            f"fold {f['fold']}    train {f['n_train']:>6,} rows to {f['train_time'][1]} | "
            f"validate {f['n_validation']:,} rows {f['validation_time'][0]} .. {f['validation_time'][1]}"
        )
    log.info(f"models    {', '.join(plan['models'])}")


def print_summary(s: dict) -> None:
    log.info("\n== summary " + "=" * 60)
    if "objective" in s:
        log.info(f"tuning    each study maximised {OBJECTIVE_LABELS[s['objective']]} ({s['objective']})")
    log.info(f"{'model':<16}{'cv macro-F1':>14}{'holdout macro-F1':>19}{'weight':>9}")
    for name, m in s["models"].items():
        log.info(
            f"{name:<16}{m['cv_macro_f1_mean']:>14.4f}{m['holdout_macro_f1']:>19.4f}"
            f"{s['ensemble']['weights'][name]:>9.2f}"
        )
    log.info(f"{'ensemble':<16}{'':>14}{s['ensemble']['holdout_macro_f1']:>19.4f}")
    for name, f1 in s["baselines"].items():
        log.info(f"{'baseline ' + name:<30}{f1:>19.4f}")
    p, bt, bh, dsr = s["policy"], s["backtest"], s["buyhold"], s["deflated_sharpe"]
    log.info(
        f"policy    {p['mode']}, {p['on_hold']} on hold; act on buy/sell when p >= {p['min_proba']:g} "
        f"and beats the other direction by >= {p['min_margin']:g} (chosen on out-of-fold predictions)"
    )
    log.info(
        f"backtest  holdout after costs: return {bt['total_return']:+.2%}, Sharpe {bt['sharpe']:.2f}, "
        f"{bt['n_trades']:,} trades, max drawdown {bt['max_drawdown']:.1%}, deflated Sharpe {dsr['dsr']:.3f}"
    )
    others = ", ".join(f"{k} {m['total_return']:+.2%}" for k, m in s["baseline_backtests"].items())
    log.info(f"          buy-and-hold {bh['total_return']:+.2%} (Sharpe {bh['sharpe']:.2f}); {others}")
    print_gate(s["gate"])
    alias = f"{PRODUCTION} -> v{s['production_version']}" if s["production_version"] else f"no {PRODUCTION}"
    moved = "moved to this version" if s["promoted"] else "not moved"
    if s.get("promotion_refused"):
        moved = f"NOT PROMOTED although the gate passed: {s['promotion_refused']}"
    log.info(f"registry  {s['model_name']} v{s['model_version']}; alias {alias} ({moved})")
    stages = s["stages"]
    if notes := tracking.tuning_notes(s["run_id"]):  # trials cut short by the timeout, or failed
        log.info("trials    " + "; ".join(f"{name}: {note}" for name, note in notes.items()))
    log.info(
        f"run       {s['run_id']}  ({stages['total_seconds']:.0f}s, peak {stages['peak_rss_mb']:.0f} MB)"
    )


def print_gate(gate: dict) -> None:
    """The gate's result and every check (``GateReport.to_dict()``), one line each."""
    log.info(
        f"gate      {gate['result'].upper()} (this holdout looked at {gate['looks']} time"
        f"{'s' if gate['looks'] != 1 else ''}: each test at p <= {gate['alpha']:.3g})"
    )
    for c in gate["checks"]:
        info = "" if c["blocking"] else " (information)"
        log.info(f"  [{'x' if c['passed'] else ' '}] {c['name']}{info}: {c['detail']}")
