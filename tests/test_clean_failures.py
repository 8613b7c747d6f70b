"""Clean failures (issue 21, cases 7 and 8): one line, never a traceback, and no signal from the future.

* A registered version whose ``python_model.pkl`` was deleted, whose whole artifact folder is gone, or
  whose pickle is garbage: ``monitor``, ``evaluate`` and ``predict`` each exit 1 with exactly one
  ``error: ...`` line on stderr naming the version and saying "missing" or "corrupt"; the pipeline's
  champion comparison reports such a production version as not comparable (its gate check fails with
  the reason) instead of crashing.
* The served model marks candles stamped beyond now plus one bar not ready (``future_timestamp``), never
  ``buy``/``sell``; a missing column is named with the spellings the served model accepts, only.

The damaged versions are the cheapest model that loads (``tests.helpers.ConstantSignal``), registered
in a throwaway store with a training snapshot as a pipeline run logs one (so ``monitor`` gets as far as
loading the model, where it used to end in a traceback).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient

from evaluation import evaluate, monitor
from evaluation.gate import GateConfig, _champion_check
from features.indicators import compute_features
from models import predict
from models.base import build_model
from models.ensemble import WeightedSoftVoting
from models.pyfunc import FUTURE, SignalModel, input_schema
from models.registry import PRODUCTION
from tests.helpers import (
    damage_model,
    log_loadable_model,
    make_candles,
    make_regime_candles,
    throwaway_store,
    write_csv,
)
from train.config import PipelineConfig
from train.stages.assess import score_champion

REPO = Path(__file__).resolve().parents[1]
NAME = "clean-model"
DAMAGES = {"pickle deleted": "missing", "folder deleted": "missing", "pickle corrupt": "corrupt"}


def _register(tmp: Path) -> str:
    """One loadable version of NAME, tagged with a pipeline run that logged its training candles."""
    candles = make_candles(300, seed=5)
    snapshot = tmp / "candles.parquet"
    candles.to_parquet(snapshot)
    with mlflow.start_run(run_name="pipeline") as run:
        uri = log_loadable_model()
        mlflow.log_artifact(str(snapshot), "data")
    tags = {"gate": "passed", "pipeline_run_id": run.info.run_id}
    version = str(mlflow.register_model(uri, NAME, tags=tags).version)
    MlflowClient().set_registered_model_alias(NAME, PRODUCTION, version)
    from models.registry import record_unrecorded

    record_unrecorded(NAME)  # the hand-made move, recorded now: the commands below print only their error
    return version


def _damage(version: str, damage: str) -> None:
    damage_model(NAME, version, damage)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("error: ") and "Traceback" not in err, lines[0]
    assert "No such artifact: ''" not in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_every_entry_point_says_in_one_line_that_the_model_files_are_missing_or_corrupt(
    store, capsys, damage
):
    version = _register(store)
    data = write_csv(make_candles(300, seed=6), store / "candles.csv")
    _damage(version, damage)
    capsys.readouterr()
    runs = [
        (monitor.main, ["--model-uri", f"models:/{NAME}/{version}", "--data", data]),
        (monitor.main, ["--model-uri", f"models:/{NAME}@{PRODUCTION}", "--data", data]),
        (evaluate.main, ["--model-uri", f"models:/{NAME}/{version}", "--data", data]),
        (predict.main, ["--model-uri", f"models:/{NAME}@{PRODUCTION}", "--data", data, "--output", "s.csv"]),
    ]
    for main, argv in runs:
        assert main(argv) == 1, (main.__module__, argv)
        out = capsys.readouterr()
        line = _one_error_line(out.err)
        assert f"version {version} of '{NAME}'" in line and DAMAGES[damage] in line, line
        assert out.out == "", out.out
    assert not (store / "s.csv").exists()


@pytest.mark.slow
def test_from_the_command_line_the_error_is_one_line_on_stderr(store):
    """As an operator runs them (a fresh process: MLflow's own logging and warnings on the real stderr)."""
    version = _register(store)
    data = write_csv(make_candles(300, seed=6), store / "candles.csv")
    _damage(version, "folder deleted")
    for module in ("evaluation.monitor", "models.predict"):
        proc = subprocess.run(
            [sys.executable, "-m", module, "--model-uri", f"models:/{NAME}@{PRODUCTION}", "--data", data],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 1, (module, proc.stderr[-3000:])
        line = _one_error_line(proc.stderr)
        assert f"version {version} of '{NAME}'" in line and "missing" in line, line


def test_a_production_version_that_cannot_load_fails_the_champion_check_in_one_line(store):
    version = _register(store)
    _damage(version, "pickle deleted")
    champion = score_champion(NAME, None, PipelineConfig(), None, None)
    assert champion is not None and not champion.comparable
    assert f"version {version} of '{NAME}' cannot be loaded" in champion.note and "missing" in champion.note
    assert "\n" not in champion.note
    check = _champion_check(champion, GateConfig())  # the gate's not_worse_than_production
    assert not check.passed and check.blocking and "missing" in check.detail, check


# ------------------------------------------------------------------------------------ served model
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A small SignalModel logged with the project's input signature and loaded back as a pyfunc."""
    tmp = tmp_path_factory.mktemp("served")
    candles = make_regime_candles(400, seed=3)
    X = compute_features(candles).dropna()
    y = np.random.default_rng(0).integers(0, 3, len(X))
    ens = WeightedSoftVoting(
        [("lgbm", build_model("lightgbm", {"n_estimators": 5}, n_jobs=1))], weights=[1.0]
    ).fit(X, y)
    with throwaway_store(tmp):
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=SignalModel(ens, "default", pd.Timedelta("30min")),
                signature=ModelSignature(input_schema()),
                pip_requirements=[],
            )
        yield mlflow.pyfunc.load_model(info.model_uri)


def _request(n: int, end: pd.Timestamp) -> pd.DataFrame:
    """n candles whose last one opened at ``end`` (naive UTC), as a bot sends them."""
    frame = make_regime_candles(n, seed=3).reset_index()
    frame["timestamp"] = pd.date_range(end=end, periods=n, freq="30min")
    return frame


def test_candles_from_2099_are_not_ready_and_never_a_trade(served):
    out = served.predict(_request(300, pd.Timestamp("2099-06-01 12:00")))
    assert not out["ready"].any()
    assert (out["signal"] == FUTURE).all() and (out["action"] == FUTURE).all()
    assert (out["label"] == -1).all() and (out["position"] == 0).all()
    assert out[["p_sell", "p_hold", "p_buy"]].isna().all().all()


def test_only_the_candles_beyond_now_plus_one_bar_are_marked(served):
    now = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("30min")
    out = served.predict(_request(300, now + pd.Timedelta("2h")))  # the last four candles are ahead
    future = out["timestamp"] > pd.Timestamp.now(tz="UTC").tz_localize(None) + pd.Timedelta("30min")
    assert 2 <= future.sum() <= 4
    assert (out.loc[future, "signal"] == FUTURE).all() and not out.loc[future, "ready"].any()
    assert out.loc[~future].iloc[100:]["ready"].all()  # the rest is scored as usual
    assert set(out.loc[~future, "action"]) & {"buy", "sell", "hold"}


@pytest.mark.parametrize(
    ("rename", "missing", "rejected"),
    [
        ({"volume": "vol"}, "volume", "vol"),
        ({"volume": "Volume", "timestamp": "time"}, "timestamp, volume", "time"),
        ({"close": "BTC.close"}, "close", "c"),
    ],
)
def test_a_missing_column_message_lists_only_the_spellings_the_model_accepts(
    served, rename, missing, rejected
):
    with pytest.raises(mlflow.exceptions.MlflowException) as exc:
        served.predict(_request(100, pd.Timestamp("2024-03-01")).rename(columns=rename))
    message = exc.value.message
    assert message.startswith(f"Missing column(s): {missing}."), message
    assert "timestamp, open, high, low, close, volume (these exact lower-case names" in message, message
    # never offered as accepted: the alias lists of file loading (e.g. "volume/vol/v")
    assert "Accepted spellings" not in message and f"/{rejected}" not in message, message
    assert "dotted prefix" not in message, message
