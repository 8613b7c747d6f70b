"""What a pipeline run read and how it was configured, logged once to the pipeline run."""

from __future__ import annotations

import time

import mlflow

from features.candles import fmt_td
from models import tracking
from models.redaction import redact_obj
from train.config import PipelineConfig
from train.prepare import Prepared


def run_name(cfg: PipelineConfig, data: Prepared) -> str:
    """The pipeline run's name, e.g. ``pipeline builtin 30min default h4 2025-01-31 12:00``."""
    info = data.info
    source = info.describe().split(": ", 1)[0]  # builtin, a file's name, exchange:..., runs:/...
    return (
        f"pipeline {source} {cfg.timeframe or fmt_td(info.bar)} {cfg.features} "
        f"h{cfg.horizon} {time.strftime('%Y-%m-%d %H:%M')}"
    )


def log_inputs(cfg: PipelineConfig, data: Prepared) -> str:
    """Tags, parameters, configuration, plan and dataset of the pipeline run; returns the data digest."""
    info = data.info
    mlflow.set_tag("mlflow.runName", run_name(cfg, data))
    mlflow.set_tags(
        {
            "step": "pipeline",
            "feature_set": cfg.features,
            "git_commit": tracking.git_commit(),
            "data_source": info.source,
            "data_sha256": info.sha256,
        }
    )
    tracking.log_candles_snapshot(data.candles, info)
    tracking.log_params_once(cfg.to_dict())
    mlflow.log_metrics({"data_gaps": data.ds.gaps, "rows_dropped_at_gaps": data.ds.rows_dropped_at_gaps})
    mlflow.log_dict(redact_obj(cfg.to_dict()), "config.json")  # a storage URI's password masked
    mlflow.log_dict(data.plan, "plan.json")
    mlflow.log_dict(tracking.environment(), "environment.json")
    return tracking.log_dataset(data.candles, "candles", info.source, "candles")
