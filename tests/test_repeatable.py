"""The same command with the same seed and data gives the same model: every number the run reports.

Two runs of a tiny configuration, each in its own tracking store and Optuna storage (so neither resumes
the other's study nor counts the other's look at the holdout), must agree on everything but the run's
identity and its timings.
"""

import mlflow
import pytest

from tests.helpers import make_regime_candles, tiny_config, write_csv
from train.pipeline import run_pipeline

pytestmark = pytest.mark.slow

# What may differ between two runs of the same command: which run it was, and how long its stages took.
VOLATILE = ("run_id", "stages")


def _run_in_own_store(data: str, where, monkeypatch, seed: int) -> dict:
    where.mkdir()
    uri = f"sqlite:///{where / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    cfg = tiny_config(data, where, "repeatable", models="lightgbm,random_forest", n_trials=3, seed=seed)
    summary = run_pipeline(cfg)
    return {k: v for k, v in summary.items() if k not in VOLATILE}


def test_same_seed_same_data_gives_the_same_numbers(store, monkeypatch):
    data = write_csv(make_regime_candles(2400, seed=5), store / "candles.csv")
    first = _run_in_own_store(str(data), store / "a", monkeypatch, seed=3)
    second = _run_in_own_store(str(data), store / "b", monkeypatch, seed=3)
    assert first["models"], "the runs tuned no model"
    for key in first:
        assert second[key] == first[key], f"{key} differs between two runs of the same command"
    # ...and the seed is what fixes it: another seed tunes other trials.
    other = _run_in_own_store(str(data), store / "c", monkeypatch, seed=4)
    assert other["models"] != first["models"]
