"""From a clean store: pipeline twice, promote, roll back; the history shows the four moves with their
reasons, and ``models:/<name>@production`` loads the right version after each step. Runs against SQLite
and against an MLflow tracking server on PostgreSQL."""

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from models.lifecycle import main as lifecycle
from models.registry import PRODUCTION, history
from tests.helpers import make_flow_signal_candles, tiny_config, write_csv
from train.pipeline import run_pipeline

pytestmark = pytest.mark.slow
NAME = "e2e-model"


def _production_run_id() -> str:
    """The run behind the model that `models:/NAME@production` actually loads."""
    return mlflow.pyfunc.load_model(f"models:/{NAME}@{PRODUCTION}").metadata.run_id


def test_pipeline_twice_promote_rollback(tracking_backend, tmp_path, hook):
    client = MlflowClient()
    data = write_csv(make_flow_signal_candles(3000, seed=11), tmp_path / "flow.csv")
    cfg = tiny_config(data, tmp_path, NAME, horizon=3)
    run_of = {}

    first = run_pipeline(cfg)
    assert first["promoted"], first["gate"]
    run_of["1"] = client.get_model_version(NAME, "1").run_id
    assert _production_run_id() == run_of["1"]

    # Same data and settings: the resumed studies are already full, the refit is the same model, so the
    # challenger is not worse than the champion it is compared with, and it is promoted.
    second = run_pipeline(cfg)
    assert second["promoted"], second["gate"]
    champion_check = second["gate"]["checks"][-1]
    assert champion_check["name"] == "not_worse_than_production" and champion_check["value"] == pytest.approx(
        0
    )
    run_of["2"] = client.get_model_version(NAME, "2").run_id
    assert run_of["2"] != run_of["1"] and _production_run_id() == run_of["2"]

    assert lifecycle(["promote", "--model-name", NAME, "--version", "1", "--reason", "v1 was steadier"]) == 0
    assert _production_run_id() == run_of["1"]
    assert lifecycle(["rollback", "--model-name", NAME, "--reason", "undo the manual promotion"]) == 0
    assert _production_run_id() == run_of["2"]

    moves = history(NAME)
    assert [(m.action, m.from_version, m.to_version, m.reason) for m in moves] == [
        ("promote", None, "1", "passed the gate"),
        ("promote", "1", "2", "passed the gate"),
        ("promote", "2", "1", "v1 was steadier"),
        ("rollback", "1", "2", "undo the manual promotion"),
    ]
    # the webhook heard every gate result and every move
    events = [json.loads(r["body"])["event"] for r in hook.requests]
    assert events == ["gate_passed", "promotion", "gate_passed", "promotion", "promotion", "rollback"]
    # each move names the run that made it: the two pipeline runs, then the two command runs
    assert [m.run_id for m in moves[:2]] == [first["run_id"], second["run_id"]]
    assert [client.get_run(m.run_id).data.tags["step"] for m in moves[2:]] == ["promote", "rollback"]
