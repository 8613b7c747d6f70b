"""The small seam to MLflow tracking used by the pipeline entry point."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.data.dataset_source import DatasetSource
from mlflow.tracking import MlflowClient

DEFAULT_EXPERIMENT = "crypto-signals"
REPO_ROOT = Path(__file__).resolve().parents[1]


class TrackingUnavailable(RuntimeError):
    pass


@contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_reachable() -> str:
    """Fail fast, before any training, if the tracking store cannot be reached."""
    uri = mlflow.get_tracking_uri()
    try:
        # One quick attempt instead of MLflow's default minutes of retries.
        with _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="15"):
            MlflowClient().search_experiments(max_results=1)
    except Exception as exc:  # any failure here means the same thing to the user
        raise TrackingUnavailable(
            f"cannot reach the MLflow tracking store at {uri!r}: {type(exc).__name__}: {exc}. "
            "Start the server or fix MLFLOW_TRACKING_URI (unset it to use the local sqlite:///mlflow.db)."
        ) from exc
    return uri


def use_experiment() -> None:
    """Under `mlflow run` the CLI has already chosen the experiment and opened the run; otherwise pick one."""
    if not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT))


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


class CandleSource(DatasetSource):
    """Where candles came from when MLflow has no source type for it: ``exchange:<ex>:<symbol>:<tf>``
    (fetched through ccxt) or a logged snapshot (``runs:/<run_id>/data/candles.parquet``, or its
    ``mlflow-artifacts:/`` form): the non-path sources ``features.data.load_candles`` accepts."""

    def __init__(self, uri: str):
        self.uri = uri

    @staticmethod
    def _get_source_type() -> str:
        return "candles"

    def load(self) -> pd.DataFrame:
        from features.data import load_candles

        return load_candles(self.uri)[0]

    @staticmethod
    def _can_resolve(raw_source) -> bool:
        from features.data import URI_PREFIXES

        return isinstance(raw_source, str) and raw_source.startswith(URI_PREFIXES)

    @classmethod
    def _resolve(cls, raw_source) -> CandleSource:
        return cls(raw_source)

    def to_dict(self) -> dict:
        return {"uri": self.uri}

    @classmethod
    def from_dict(cls, source_dict: dict) -> CandleSource:
        return cls(source_dict["uri"])


def log_dataset(frame: pd.DataFrame, name: str, source: str, context: str) -> str:
    """Log a dataset input (schema, profile, digest; not the rows) and return its digest."""
    with warnings.catch_warnings():
        # MLflow guesses a source type from the string and warns that a local path fits two of its kinds.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        if CandleSource._can_resolve(source):
            source = CandleSource(source)
        dataset = mlflow.data.from_pandas(frame.reset_index(), source=source, name=name)
    mlflow.log_input(dataset, context=context)
    return dataset.digest


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


def log_metrics(prefix: str, metrics: dict, run_id: str | None = None) -> None:
    """Log the scalar entries of ``metrics`` as ``<prefix><key>``; lists (confusion matrices) are skipped."""
    scalars = {f"{prefix}{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    if run_id is None:
        mlflow.log_metrics(scalars)
    else:
        client = MlflowClient()
        for key, value in scalars.items():
            client.log_metric(run_id, key, value)
