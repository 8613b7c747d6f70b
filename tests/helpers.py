"""Synthetic candle generators and store set-up shared by the tests (importable as ``tests.helpers``)."""

from __future__ import annotations

import fcntl
import os
import pickle
import shutil
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest


def make_candles(
    n: int,
    seed: int = 7,
    start: str = "2024-01-01",
    freq: str = "30min",
    drift: float = 0.0,
    vol: float = 0.01,
) -> pd.DataFrame:
    """Seeded OHLCV frame in the features/data.py convention (UTC DatetimeIndex named "timestamp").

    close is a geometric random walk, open is the previous close, high/low enclose open and close with
    a random wick, volume is positive (lognormal, large so that log1p(volume) ~ log(volume)).
    """
    rng = np.random.default_rng(seed)
    log_ret = drift + vol * rng.standard_normal(n)
    return candles_from_returns(log_ret, rng, start, freq, vol)


def persistent_regime(rng: np.random.Generator, n: int, persistence: float) -> np.ndarray:
    """A hidden -1 / 0 / +1 state per bar, kept from one bar to the next with probability ``persistence``
    (else drawn anew, uniformly): regime[t] is the draw at the last switch up to t, so it is causal."""
    switch = rng.random(n) > persistence
    draws = rng.integers(-1, 2, n)
    return draws[np.maximum.accumulate(np.where(switch, np.arange(n), 0))]


def make_regime_candles(
    n: int,
    seed: int = 11,
    persistence: float = 0.97,
    trend: float = 0.003,
    vol: float = 0.002,
    start: str = "2024-01-01",
    freq: str = "30min",
) -> pd.DataFrame:
    """Candles with a planted, learnable signal: a hidden down / flat / up regime that persists.

    Each bar keeps its regime with probability ``persistence`` (else draws a new one uniformly), and its
    log return is ``regime * trend`` plus noise. Past returns reveal the regime, and the regime mostly
    persists over the label horizon, so recent-momentum features predict the label well out of sample.
    """
    rng = np.random.default_rng(seed)
    regime = persistent_regime(rng, n, persistence)
    log_ret = regime * trend + vol * rng.standard_normal(n)
    return candles_from_returns(log_ret, rng, start, freq, vol)


def make_flow_signal_candles(
    n: int,
    seed: int = 17,
    persistence: float = 0.5,
    trend: float = 0.004,
    vol: float = 0.002,
    flow: float = 1.0,
    start: str = "2024-01-01",
    freq: str = "30min",
) -> pd.DataFrame:
    """Candles with a planted, tradable directional signal that price-only rules cannot see.

    A hidden down / flat / up drift (kept from bar to bar with probability ``persistence``) moves each
    bar's close by ``trend`` × drift plus noise, and the volume traded in the bar *before* reveals it
    (log volume shifts by ``flow`` × the next bar's drift), as order flow often leads price. A model
    that reads volume predicts the next bars; the momentum, reversal and volatility baselines see only
    prices, where the drift leaves little trace ahead of time.
    """
    rng = np.random.default_rng(seed)
    drift = persistent_regime(rng, n + 1, persistence)  # drift[t] moves bar t; bar t's volume shows t + 1
    log_ret = drift[:n] * trend + vol * rng.standard_normal(n)
    frame = candles_from_returns(log_ret, rng, start, freq, vol)
    frame["volume"] *= np.exp(flow * drift[1:])
    return frame


def make_volatility_regime_candles(
    n: int,
    seed: int = 13,
    persistence: float = 0.99,
    calm: float = 0.0008,
    stormy: float = 0.006,
    start: str = "2024-01-01",
    freq: str = "30min",
) -> pd.DataFrame:
    """Candles whose volatility switches between calm and stormy regimes and whose direction is i.i.d.

    Each bar keeps its regime with probability ``persistence``. Returns are zero-mean normal with the
    regime's standard deviation: whether a bar ends as `hold` is predictable from trailing volatility,
    its direction is not. A model can beat "majority" and "stratified" here without any tradable edge.
    """
    rng = np.random.default_rng(seed)
    switch = rng.random(n) > persistence
    regime = np.cumsum(switch) % 2  # 0 calm, 1 stormy, alternating at each switch
    sigma = np.where(regime == 1, stormy, calm)
    log_ret = sigma * rng.standard_normal(n)
    return candles_from_returns(log_ret, rng, start, freq, calm)


def candles_from_returns(
    log_ret: np.ndarray, rng: np.random.Generator, start: str, freq: str, vol: float
) -> pd.DataFrame:
    """OHLCV bars whose closes follow ``log_ret`` from 100, with random wicks and volume."""
    n = len(log_ret)
    close = 100.0 * np.exp(np.cumsum(log_ret))
    open_ = np.concatenate([[100.0], close[:-1]])
    wick_hi = np.abs(rng.standard_normal(n)) * vol * 0.5
    wick_lo = np.abs(rng.standard_normal(n)) * vol * 0.5
    high = np.maximum(open_, close) * (1.0 + wick_hi)
    low = np.minimum(open_, close) * (1.0 - wick_lo)
    volume = rng.lognormal(mean=12.0, sigma=0.5, size=n)
    index = pd.date_range(start=start, periods=n, freq=freq, tz="UTC", name="timestamp")
    return pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume},
        index=index,
        dtype="float64",
    )


# The served model's output columns, in order (models.pyfunc.SignalModel.predict_candles).
SERVED_COLUMNS = ["timestamp", "signal", "label", "p_sell", "p_hold", "p_buy", "ready", "action", "position"]


def write_csv(frame: pd.DataFrame, path) -> str:
    """Write candles as a user's CSV file (a `timestamp` column, ISO times) and return its path."""
    frame.reset_index().to_csv(path, index=False)
    return str(path)


def tiny_config(data: str, tmp, model_name: str, **overrides):
    """Pipeline settings small enough for a test: LightGBM only, 2 trials, 3 folds, one thread (OpenMP
    spinning on a busy 2-core machine costs minutes), the Optuna storage under ``tmp``."""
    from train.config import PipelineConfig

    settings = dict(
        data=data,
        n_trials=2,
        timeout=0.0,
        models="lightgbm",
        n_folds=3,
        model_name=model_name,
        optuna_storage=f"sqlite:///{tmp}/optuna.db",
        n_jobs=1,
    )
    return PipelineConfig(**(settings | overrides))


def mlflow_cli_env() -> dict[str, str]:
    """Environment for running the `mlflow` CLI as a user would, from this venv: its bin first on PATH,
    and no MLFLOW_EXPERIMENT_NAME / _ID (`mlflow run` refuses them beside --experiment-name)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for var in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        env.pop(var, None)
    return env


@contextmanager
def throwaway_store(tmp: Path, experiment: str = "tests"):
    """A module fixture's own tracking store under ``tmp`` (what conftest's ``store`` does per test):
    the working directory, the tracking URI and the experiment, all restored afterwards. Yields
    (the MonkeyPatch for further patches, the store's URI)."""
    # the runs' artifact root is ./mlruns, beside mlflow.db
    with use_store(f"sqlite:///{Path(tmp) / 'mlflow.db'}", tmp, experiment) as (mp, uri):
        yield mp, uri


@contextmanager
def use_store(uri: str, cwd: Path, experiment: str = "tests"):
    """Point the environment and MLflow at an existing tracking store ``uri`` from the working directory
    ``cwd`` (e.g. conftest's session-wide ``tiny_promoted`` store, from a module's own directory), all
    restored afterwards. Yields (the MonkeyPatch for further patches, ``uri``)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        mlflow.set_tracking_uri(uri)
        try:
            yield mp, uri
        finally:
            mlflow.set_tracking_uri(None)


class ConstantSignal(mlflow.pyfunc.PythonModel):
    """The cheapest model that loads as a pyfunc: "hold" for every row (lifecycle tests, which only
    need versions that load)."""

    def predict(self, context, model_input, params=None):
        return pd.DataFrame({"signal": ["hold"] * len(model_input)})


def log_loadable_model() -> str:
    """Log :class:`ConstantSignal` (in the active run, if any); its ``models:/`` URI to register."""
    return mlflow.pyfunc.log_model(name="model", python_model=ConstantSignal(), pip_requirements=[]).model_uri


def owner_lock_tags() -> dict[str, str]:
    """Tags of a registry lock held by this (live) test process."""
    from models import registry
    from models.tracking import owner_tags

    return {
        registry.OWNER_TAG: f"test pid {os.getpid()}",
        registry.HEARTBEAT_TAG: registry._now(),
    } | owner_tags()


def model_files(name: str, version: str) -> Path:
    """The local folder that holds the model files of a registered version (a LoggedModel's artifacts)."""
    from urllib.parse import urlparse

    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    found = client.get_model_version(name, version)
    model_id = found.model_id or found.source.removeprefix("models:/")
    return Path(urlparse(client.get_logged_model(model_id).artifact_location).path)


def damage_model(name: str, version: str, damage: str) -> None:
    """Break a registered version's files: "pickle deleted", "folder deleted" or "pickle corrupt"."""
    import shutil

    files = model_files(name, version)
    assert (files / "python_model.pkl").is_file()
    if damage == "pickle deleted":
        (files / "python_model.pkl").unlink()
    elif damage == "folder deleted":
        shutil.rmtree(files)
    else:
        (files / "python_model.pkl").write_bytes(b"not a pickle")


# One tiny promoted model, made once per test run (conftest's ``tiny_promoted``).

TINY_MODEL = "tiny-model"
TINY_EXPERIMENT = "crypto-signals"  # the pipeline's default experiment, as the UI test shows it


@dataclass(frozen=True)
class TinyStore:
    """A SQLite tracking store holding one pipeline run whose tiny model passed its gate and is
    ``production``; and what made it."""

    dir: Path  # mlflow.db, mlruns/ (the artifacts), optuna.db, flow.csv
    uri: str  # sqlite:///<dir>/mlflow.db
    experiment: str
    model_name: str
    data: str  # the candles it was trained on (a CSV in ``dir``)
    config: Any  # train.config.PipelineConfig
    summary: dict  # what run_pipeline returned


def made_once(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], Any]) -> Any:
    """``make(directory)`` once per test run, also across pytest-xdist workers: the first worker to ask
    makes it under a file lock, the others wait for it and read the pickled result. A failed ``make``
    leaves nothing behind, so the next one to ask tries again."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's directory, above the workers' own
    path = root / f"shared-{name}"
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        done = path / "made.pickle"
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            done.write_bytes(pickle.dumps(make(path)))
        return pickle.loads(done.read_bytes())


def train_tiny(path: Path) -> TinyStore:
    """conftest's ``tiny_promoted``: train and promote the tiny model in a store under ``path``."""
    from train.pipeline import run_pipeline

    with throwaway_store(path, TINY_EXPERIMENT) as (_, uri):
        data = write_csv(make_flow_signal_candles(3000, seed=11), path / "flow.csv")
        cfg = tiny_config(data, path, TINY_MODEL, horizon=3)
        summary = run_pipeline(cfg)
    return TinyStore(path, uri, TINY_EXPERIMENT, TINY_MODEL, data, cfg, summary)
