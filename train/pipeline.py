"""`main` step: candles -> features/labels -> tuned base models -> ensemble -> holdout -> gate -> registry.

Run it through `mlflow run .` (see MLproject) or directly: `python -m train.pipeline --help`.
The stages are ``train.stages`` (tune, fit, assess, report, register); :func:`run_pipeline` runs them in
order, in one pipeline run with a child run per tuned model and one for the ensemble.
"""

from __future__ import annotations

import argparse
import json
import logging

import mlflow

from features.data import SNAPSHOT_PREFIXES
from models import cli, tracking
from models.base import default_n_jobs
from train.config import ERRORS, PipelineConfig, pipeline_config, pipeline_parser
from train.prepare import Prepared, prepare
from train.stages.assess import Evaluation, evaluate
from train.stages.fit import Fitted, fit_ensemble
from train.stages.inputs import log_inputs
from train.stages.register import Registered, register
from train.stages.report import (
    EXIT_NOT_PROMOTED,
    final_line,
    log_outcome,
    print_plan,
    print_summary,
    report,
    summarise,
)
from train.stages.timing import Stages
from train.stages.tune import Tuned, tune
from train.tune import check_storage, describe_trials, trial_counts

log = logging.getLogger("train.pipeline")


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run every step and return the summary (also printed by ``main``)."""
    stages = Stages()
    n_jobs = cfg.n_jobs or default_n_jobs()
    check_stores(cfg)
    with stages("data"):
        data = prepare(cfg)
    print_plan(data.plan)
    if cfg.dry_run:
        log.info("dry run: nothing trained, nothing logged, nothing registered")
        return {"dry_run": True, "plan": data.plan}

    open_experiment()
    with mlflow.start_run() as parent:
        run_id = parent.info.run_id
        digest = log_inputs(cfg, data)
        tuned = tune_models(cfg, data, stages, n_jobs)
        with mlflow.start_run(run_name="ensemble", nested=True):
            fitted, ev, gate_report, registered = build_candidate(
                cfg, data, tuned, stages, n_jobs, run_id, digest
            )
        log_outcome(cfg, ev, gate_report, registered, stages.metrics())
    return summarise(cfg, run_id, data, tuned, fitted, ev, registered, stages.metrics())


def check_stores(cfg: PipelineConfig) -> None:
    """The stores first, in seconds, before any data is read. A dry run touches neither (it needs the
    tracking store only to download a runs:/ snapshot), so it checks only what it reads."""
    if not cfg.dry_run or cfg.data.startswith(SNAPSHOT_PREFIXES):
        tracking.check_reachable()
    if not cfg.dry_run:
        check_storage(cfg.optuna_storage)


def open_experiment() -> None:
    """The experiment the runs go to; runs record their process and a heartbeat, so that a later run can
    tell if one died, and the runs a killed pipeline left RUNNING are closed."""
    tracking.use_experiment()
    tracking.track_liveness()
    for closed in tracking.close_orphaned_runs():
        log.info("orphan    %s", closed)


def tune_models(cfg: PipelineConfig, data: Prepared, stages: Stages, n_jobs: int) -> dict[str, Tuned]:
    """Stage `tune`: one study per model family, each in its child run. The trial budget ends each study;
    the timeout is a safety net: when it cuts one short, the model depends on the machine's speed and
    load, and the run says so (tag ``tuning_cut_by_timeout``, a warning, the summary's ``trials`` line)."""
    tuned = {}
    for name in cfg.model_list:
        with stages(f"tune_{name}"):
            tuned[name] = tune(cfg, data, name, n_jobs)
        log.info(
            f"tuned     {name:<14} {tuned[name].describe()} "
            f"({tuned[name].n_trials} trials, {stages.seconds[f'tune_{name}']:.0f}s)"
        )
    counts = {n: trial_counts(t.study.trials) for n, t in tuned.items()}
    short = {n: c for n, c in counts.items() if c["finished"] < cfg.n_trials or c["cut_by_timeout"]}
    if short and cfg.timeout:
        cut = "; ".join(f"{n}: {describe_trials(c, cfg.n_trials, cfg.timeout)}" for n, c in short.items())
        mlflow.set_tag("tuning_cut_by_timeout", cut)
        log.warning(
            "the %gs tuning timeout cut studies short (%s): the same command on a faster or quieter machine "
            "may give another model; raise --timeout (0 = no limit) for a repeatable run",
            cfg.timeout,
            cut,
        )
    return tuned


def build_candidate(
    cfg: PipelineConfig,
    data: Prepared,
    tuned: dict[str, Tuned],
    stages: Stages,
    n_jobs: int,
    run_id: str,
    digest: str,
) -> tuple[Fitted, Evaluation, dict, Registered]:
    """Stages `fit`, `assess`, `report` and `register`, in the ensemble run (the active run)."""
    with stages("ensemble", f"out-of-fold weights and refit of {', '.join(tuned)}"):
        fitted = fit_ensemble(cfg, data, tuned, n_jobs)
    with stages("evaluate", "holdout metrics, baselines, backtest, champion, gate"):
        ev = evaluate(cfg, data, fitted, tuned)
    # The report before registering: a failure here leaves the registry untouched.
    with stages("report", "plots, feature importance, look-ahead check, HTML report"):
        gate_report = report(cfg, data, fitted, tuned, ev, run_id)
        mlflow.log_dict(gate_report, "gate_report.json")
    with stages("register", f"logging and registering the model as {cfg.model_name}"):
        registered = register(cfg, data, fitted, ev, run_id, digest)
    return fitted, ev, gate_report, registered


def build_parser() -> cli.Parser:
    return pipeline_parser()


def main(argv: list[str] | None = None) -> int:
    return cli.main(build_parser(), argv, _main, ERRORS)


def _main(args: argparse.Namespace) -> int:
    summary = run_pipeline(pipeline_config(args))
    if summary.get("dry_run"):
        return 0
    print_summary(summary)
    print(json.dumps(final_line(summary)))
    return EXIT_NOT_PROMOTED if summary.get("promotion_refused") else 0


if __name__ == "__main__":
    cli.run(main)
