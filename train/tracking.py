"""The small seam to MLflow tracking used by the pipeline entry point.

The generic helpers (reachability check, experiment choice, dataset and metric logging) live in
:mod:`models.tracking`, where the ``models`` and ``evaluation`` command-line steps use them without
importing ``train``; they are re-exported here. This module adds what only the pipeline logs: the code
version and environment, and the candle snapshot.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from models.tracking import (
    DEFAULT_EXPERIMENT,
    CandleSource,
    TrackingUnavailable,
    check_reachable,
    log_dataset,
    log_metrics,
    use_experiment,
)

__all__ = [
    "DEFAULT_EXPERIMENT",
    "REPO_ROOT",
    "SNAPSHOT_PATH",
    "CandleSource",
    "TrackingUnavailable",
    "check_reachable",
    "environment",
    "git_commit",
    "log_candles_snapshot",
    "log_dataset",
    "log_metrics",
    "log_params_once",
    "use_experiment",
]

REPO_ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    out = subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
    )
    return out.stdout.strip()


def git_commit() -> str:
    try:
        return _git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict:
    """What produced a run, logged as ``environment.json``: code version (and whether the working tree
    had uncommitted changes), Python, and the versions of the packages that shape the results."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        dirty = None
    packages = {}
    for dist in ("mlflow", "optuna", "lightgbm", "xgboost-cpu", "scikit-learn", "pandas", "numpy"):
        try:
            packages[dist] = version(dist)
        except PackageNotFoundError:
            packages[dist] = None
    return {
        "git_commit": git_commit(),
        "git_dirty": dirty,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": packages,
    }


SNAPSHOT_PATH = "data/candles.parquet"


def log_candles_snapshot(candles: pd.DataFrame, info) -> str:
    """Log the exact candles a run uses as ``data/candles.parquet`` plus ``data/snapshot.json`` (source,
    exchange/symbol/timeframe for exchange data, time range, digests) and tag the run with them.

    ``data=runs:/<run_id>/data/candles.parquet`` loads these candles again, identical to the last bit
    (``candles_sha256`` proves it), however the source has changed since (an exchange's cache grows, a
    CSV is overwritten). Returns that URI.
    """
    import tempfile

    from features.data import EXCHANGE_PREFIX, candles_sha256

    run = mlflow.active_run()
    digest = candles_sha256(candles)
    snapshot = {
        **info.to_dict(),
        "candles_sha256": digest,
        "uri": f"runs:/{run.info.run_id}/{SNAPSHOT_PATH}",
    }
    if info.source.startswith(EXCHANGE_PREFIX):
        from features.exchange import parse_spec

        spec = parse_spec(info.source)
        snapshot.update(exchange=spec.exchange, symbol=spec.symbol, exchange_timeframe=spec.timeframe)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(SNAPSHOT_PATH).name
        candles.to_parquet(path)
        mlflow.log_artifact(str(path), str(Path(SNAPSHOT_PATH).parent))
    mlflow.log_dict(snapshot, str(Path(SNAPSHOT_PATH).with_name("snapshot.json")))
    mlflow.set_tags(
        {
            "data_candles_sha256": digest,
            "data_snapshot": snapshot["uri"],
            "data_start": snapshot["start"],
            "data_end": snapshot["end"],
            **{f"data_{k}": snapshot[k] for k in ("exchange", "symbol") if k in snapshot},
        }
    )
    return snapshot["uri"]


def log_params_once(params: dict) -> None:
    """Log params not logged yet: under `mlflow run` the launcher has already logged its own spelling
    of each MLproject parameter (e.g. "90" for 90.0), and MLflow refuses to change a logged param."""
    run = mlflow.active_run()
    logged = MlflowClient().get_run(run.info.run_id).data.params if run else {}
    mlflow.log_params({k: v for k, v in params.items() if k not in logged})
