"""MLflow tracking helpers shared by the command-line steps (``models.lifecycle``, ``evaluation.evaluate``)
and the training pipeline (``train.tracking`` re-exports them).

``models`` is copied into every logged model (``code_paths``), so this module imports only the standard
library, pandas and mlflow at import time; ``features.data`` is imported only inside :class:`CandleSource`
when MLflow asks it to load or resolve a source.
"""

from __future__ import annotations

import argparse
import os
import warnings
from contextlib import contextmanager

import mlflow
import pandas as pd
from mlflow.data.dataset_source import DatasetSource
from mlflow.tracking import MlflowClient

__all__ = [
    "DEFAULT_EXPERIMENT",
    "CandleSource",
    "TrackingUnavailable",
    "check_reachable",
    "log_dataset",
    "log_metrics",
    "parse_bool",
    "use_experiment",
]

DEFAULT_EXPERIMENT = "crypto-signals"


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


def log_metrics(prefix: str, metrics: dict, run_id: str | None = None) -> None:
    """Log the scalar entries of ``metrics`` as ``<prefix><key>``; lists (confusion matrices) are skipped."""
    scalars = {f"{prefix}{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    if run_id is None:
        mlflow.log_metrics(scalars)
    else:
        client = MlflowClient()
        for key, value in scalars.items():
            client.log_metric(run_id, key, value)


def parse_bool(text: str) -> bool:
    """argparse ``type`` for true/false flags: true/1/yes/y and false/0/no/n/"" (any case)."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "y"):
        return True
    if value in ("false", "0", "no", "n", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
