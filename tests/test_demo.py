"""The demo dataset (``data=demo``): synthetic daily candles with a planted edge, shipped like ``builtin``,
on which the pipeline passes its gate and moves ``production`` (the README's quickstart)."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

import features.data as fd
from features.data import DEMO_INFO, DEMO_SHA256, DataError, load_candles, load_demo
from features.dataset import build_dataset
from models.registry import PRODUCTION
from tests.helpers import tiny_config
from train.pipeline import run_pipeline

REPO = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("make_demo", REPO / "features" / "builtin" / "make_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_loads_by_name_and_says_it_is_synthetic():
    frame, info = load_candles("demo")
    assert (info.source, info.sha256, info.rows, info.gaps) == ("demo", DEMO_SHA256, 3000, 0)
    assert info.bar == pd.Timedelta("1D")
    assert (str(info.start.date()), str(info.end.date())) == ("2015-01-01", "2023-03-19")
    assert list(frame.columns) == ["open", "high", "low", "close", "volume"]
    # the description the run prints and logs says what these candles are
    assert info.describe().startswith("demo: 3,000 rows 2015-01-01 .. 2023-03-19 UTC, 1d bars")
    assert "synthetic" in info.describe() and "planted edge" in info.describe()
    assert "planted edge" in DEMO_INFO["name"] and DEMO_INFO["sha256"] == DEMO_SHA256
    # resampled and windowed like any other source
    weekly, winfo = load_candles("demo", timeframe="7d", days=700)
    assert winfo.bar == pd.Timedelta("7D") and 90 <= len(weekly) <= 100


def test_demo_is_deterministic_and_its_checksum_is_checked(tmp_path, monkeypatch):
    """The generator rebuilds the shipped file's CSV byte for byte, and the loader checks its sha256."""
    text = _generator().generate().encode()
    assert hashlib.sha256(text).hexdigest() == DEMO_SHA256
    assert gzip.decompress(fd.DEMO_PATH.read_bytes()) == text
    pd.testing.assert_frame_equal(load_demo(), load_demo())

    fake = tmp_path / "demo_daily.csv.gz"
    fake.write_bytes(gzip.compress(text.replace(b"2015-01-02,", b"2015-01-02,1", 1)))
    monkeypatch.setattr(fd, "DEMO_PATH", fake)
    with pytest.raises(DataError, match=r"corrupted or was modified.*make_demo\.py"):
        load_candles("demo")


def test_demo_passes_validation_with_enough_rows_for_the_default_run():
    frame, _ = load_candles("demo")
    ds = build_dataset(frame)  # default features and label, as the default run builds them
    assert ds.n_rows >= 2900 and ds.gaps == 0
    assert min(ds.class_counts.values()) > 500  # buy, hold and sell all occur often


@pytest.mark.slow
def test_a_small_run_on_the_demo_passes_the_gate_and_moves_production(store):
    # The cheapest run that learns the edge: a random forest, 2 trials, 3 folds (LightGBM alone with so
    # few trials does not; the default run weighs the forest 0.9 in its ensemble).
    cfg = tiny_config("demo", store, "demo-model", models="random_forest")
    out = run_pipeline(cfg)
    failed = [c["name"] for c in out["gate"]["checks"] if c["blocking"] and not c["passed"]]
    assert out["gate"]["result"] == "passed", failed
    assert out["promoted"] and out["model_version"] == "1"
    assert str(MlflowClient().get_model_version_by_alias("demo-model", PRODUCTION).version) == "1"
    assert out["backtest"]["total_return"] > out["buyhold"]["total_return"] > 0
