"""The pipeline against a real MLflow tracking server backed by PostgreSQL, as a team would deploy it.

Runs, nested runs, artifacts (proxied by the server), registered versions with their gate tags and the
``production`` alias all go through the server's REST API into a throwaway PostgreSQL database; the
registered model loads back through ``models:/``. A server that was up and then stopped makes the
pipeline fail fast, before any training. Skipped (with the reason) when PostgreSQL is not reachable.
"""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from models.registry import PRODUCTION, get_production
from tests.helpers import SERVED_COLUMNS, make_regime_candles, tiny_config
from tests.servers import TrackingServer, mlflow_server, pg_connect, port_is_open
from train.pipeline import main, run_pipeline

pytestmark = pytest.mark.slow


def _naive(candles: pd.DataFrame) -> pd.DataFrame:
    """Candles as the served model takes them: a tz-naive UTC `timestamp` column plus OHLCV."""
    frame = candles.reset_index()
    frame["timestamp"] = frame["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None)
    return frame


def _pg_rows(server: TrackingServer, query: str, params: tuple = ()) -> list[tuple]:
    with pg_connect(server.database) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall()


def test_pipeline_tracks_and_registers_through_postgres_server(
    pg_tracking_server,
    pg_tracking_store,
    tmp_path,
    monkeypatch,
):
    assert pg_tracking_server.startswith("http://127.0.0.1:")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "pg-pipeline")
    candles = make_regime_candles(3000, seed=11)
    data = tmp_path / "regime.csv"
    candles.reset_index().to_csv(data, index=False)

    summary = run_pipeline(tiny_config(str(data), tmp_path, "pg-model"))

    client = MlflowClient()
    assert mlflow.get_tracking_uri() == pg_tracking_server
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["step"] == "pipeline" and run.data.tags["gate"] == summary["gate"]["result"]
    assert run.data.tags["model_version"] == summary["model_version"] == "1"
    assert client.get_experiment(run.info.experiment_id).name == "pg-pipeline"
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert sorted(c.data.tags["mlflow.runName"] for c in children) == ["ensemble", "tune-lightgbm"]
    assert all(c.info.status == "FINISHED" for c in children)
    ensemble_run = next(c for c in children if c.data.tags["mlflow.runName"] == "ensemble")
    assert {"gate_report.json", "holdout_metrics.json"} <= {
        a.path for a in client.list_artifacts(ensemble_run.info.run_id)
    }
    # Artifacts went through the server's proxy into its artifact directory, not into this process's cwd.
    assert ensemble_run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert list(pg_tracking_store.artifacts_dir.rglob("gate_report.json"))
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()

    version = client.get_model_version("pg-model", "1")
    assert version.tags["gate"] == summary["gate"]["result"]
    assert version.tags["pipeline_run_id"] == run.info.run_id

    # The store really is the PostgreSQL database.
    assert _pg_rows(pg_tracking_store, "SELECT version()")[0][0].startswith("PostgreSQL")
    assert ("pg-model",) in _pg_rows(pg_tracking_store, "SELECT name FROM registered_models")
    assert _pg_rows(
        pg_tracking_store,
        "SELECT value FROM model_version_tags WHERE name = %s AND version = 1 AND key = 'gate'",
        ("pg-model",),
    ) == [(summary["gate"]["result"],)]
    runs = (
        "SELECT r.run_uuid FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
        "WHERE e.name = %s AND r.status = 'FINISHED'"
    )
    assert len(_pg_rows(pg_tracking_store, runs, ("pg-pipeline",))) == 3  # pipeline + 2 children

    if summary["gate"]["result"] == "passed":
        assert summary["promoted"]
        assert str(client.get_model_version_by_alias("pg-model", PRODUCTION).version) == "1"
        aliases = "SELECT alias, version FROM registered_model_aliases WHERE name = %s"
        assert _pg_rows(pg_tracking_store, aliases, ("pg-model",)) == [(PRODUCTION, 1)]
        model_uri = f"models:/pg-model@{PRODUCTION}"
    else:
        assert not summary["promoted"] and get_production("pg-model", client) is None
        model_uri = "models:/pg-model/1"  # still downloadable through the server, just not promoted
    model = mlflow.pyfunc.load_model(model_uri)
    out = model.predict(_naive(candles.iloc[-600:]))
    assert list(out.columns) == SERVED_COLUMNS
    assert len(out) == 600 and out["ready"].iloc[-1]
    assert set(out.loc[out["ready"], "signal"]) <= {"sell", "hold", "buy"}


def test_registry_round_trip_on_each_backend(tracking_backend, tmp_path):
    """The registry calls the pipeline relies on (runs, versions from run artifacts, tags, an alias, a
    download through ``models:/``), with plain MLflow calls, on either backend of ``tracking_backend``."""
    assert mlflow.get_tracking_uri() == tracking_backend
    name = f"round-trip-{'server' if tracking_backend.startswith('http') else 'sqlite'}"
    mlflow.set_experiment(name)
    client = MlflowClient()
    client.create_registered_model(name)
    versions = []
    for i in range(2):
        with mlflow.start_run() as run:
            mlflow.log_metric("score", float(i))
            mlflow.log_text(f"candidate {i}", "candidate/notes.txt")
        source = f"{run.info.artifact_uri}/candidate"
        created = client.create_model_version(name, source, run_id=run.info.run_id, tags={"gate": "passed"})
        versions.append(str(created.version))
    assert versions == ["1", "2"]
    client.set_registered_model_alias(name, PRODUCTION, "1")
    client.set_registered_model_alias(name, PRODUCTION, "2")
    held = client.get_model_version_by_alias(name, PRODUCTION)
    assert str(held.version) == "2" and held.tags["gate"] == "passed"
    local = mlflow.artifacts.download_artifacts(f"models:/{name}@{PRODUCTION}", dst_path=str(tmp_path / "dl"))
    assert (Path(local) / "notes.txt").read_text() == "candidate 1"


def test_stopped_server_fails_before_training(tmp_path, monkeypatch, capsys):
    """A server that answered a moment ago and was then stopped: exit code 1, fast, nothing tuned."""
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts") as uri:
        assert MlflowClient(uri).search_experiments(max_results=1)  # it was up
    port = int(uri.rsplit(":", 1)[1])
    assert not port_is_open(port)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    data = tmp_path / "c.csv"
    make_regime_candles(2600, seed=4).reset_index().to_csv(data, index=False)
    try:
        start = time.monotonic()
        code = main(["--data", str(data), "--n-trials", "1", "--models", "lightgbm"])
        elapsed = time.monotonic() - start
    finally:
        mlflow.set_tracking_uri(None)
    assert code == 1
    err = capsys.readouterr().err
    assert "cannot reach the MLflow tracking store" in err and uri in err
    assert elapsed < 20, elapsed  # one attempt, not MLflow's minutes of retries
    assert not (tmp_path / "optuna.db").exists()  # nothing was tuned
