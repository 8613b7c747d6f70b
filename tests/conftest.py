"""Shared fixtures: seeded candles, and a throwaway MLflow tracking store."""

from __future__ import annotations

import logging
import os
import shutil

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import make_candles

pytest_plugins = ["tests.servers", "tests.webhook"]


# The experiment variables as the test session found them.
_SESSION_EXPERIMENT = {v: os.environ.get(v) for v in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}


@pytest.fixture(autouse=True)
def _restore_experiment(monkeypatch):
    """mlflow.set_experiment() (in a test, a module-scoped fixture or an entry point called in-process)
    writes MLFLOW_EXPERIMENT_ID into os.environ and remembers the experiment in a module global; a later
    test on another store would inherit an experiment id that does not exist there. Every test starts
    from the session's own values."""
    for var, value in _SESSION_EXPERIMENT.items():
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)
    mlflow.tracking.fluent._active_experiment_id = None  # MLflow 3.17's module global
    yield


@pytest.fixture(autouse=True)
def _restore_logging():
    """An entry point's main() called in-process configures logging (models.cli.configure_logging):
    undo it after the test, so the next one sees logging as a fresh process would."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    names = ("", "train", "features", "models", "evaluation", "__main__", "mlflow")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        if type(handler).__module__ == "models.cli":  # only ours: pytest's capture handlers stay
            root.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def candles() -> pd.DataFrame:
    """600 seeded 30-minute BTC-like bars from 2024-01-01 UTC (fresh copy per test)."""
    return make_candles(600, seed=7)


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory):
    """An MLflow SQLite store with its tables, made once: creating them (MLflow's migrations) costs
    seconds, for every test that needs a store."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(request, tmp_path, monkeypatch, _empty_store):
    """A throwaway tracking store (experiment "tests") and working directory: the Optuna storage and
    artifacts land under tmp_path. The store starts as a copy of an empty one with MLflow's tables,
    except for tests marked ``no_store_file`` (they check that nothing creates the file)."""
    if request.node.get_closest_marker("no_store_file") is None:
        shutil.copy(_empty_store, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # restored after the test if set meanwhile
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
    mlflow.set_tracking_uri(uri)
    yield tmp_path
    mlflow.set_tracking_uri(None)
