"""Tidy tracking (issue 12): read-only lifecycle commands open no run, moves are named for what they
did, every pipeline run describes itself (note and holdout predictions table), and studies carry the
fingerprint they were named from."""

from __future__ import annotations

import mlflow
from mlflow.tracking import MlflowClient

from models.lifecycle import main as lifecycle_main
from tests.test_lifecycle import _versions


def _all_runs(client: MlflowClient) -> list:
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, max_results=1000)


def test_read_only_lifecycle_commands_open_no_run_and_moves_are_named(tracking_backend, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)  # the default experiment
    client = MlflowClient()
    v1, v2, v3 = _versions(client, "tidy-a", ["passed", "passed", "failed"])
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # which mlflow.set_experiment just set
    before = {r.info.run_id for r in _all_runs(client)}
    for argv in (["status"], ["history"], ["status", "--json", "true"], ["history", "--json", "true"]):
        assert lifecycle_main([*argv, "--model-name", "tidy-a"]) == 0
    assert {r.info.run_id for r in _all_runs(client)} == before  # no run, in any experiment

    assert lifecycle_main(["promote", "--model-name", "tidy-a", "--version", v1, "--reason", "a"]) == 0
    assert lifecycle_main(["promote", "--model-name", "tidy-a", "--version", v2, "--reason", "b"]) == 0
    assert lifecycle_main(["promote", "--model-name", "tidy-a", "--version", v3]) == 1  # failed its gate
    assert lifecycle_main(["rollback", "--model-name", "tidy-a", "--reason", "c"]) == 0
    capsys.readouterr()
    new = sorted(
        (r for r in _all_runs(client) if r.info.run_id not in before), key=lambda r: r.info.start_time
    )
    assert [(r.info.run_name, r.info.status, r.data.tags["step"]) for r in new] == [
        (f"promote v{v1} -> production", "FINISHED", "promote"),
        (f"promote v{v2} -> production", "FINISHED", "promote"),
        (f"refused promote v{v3}", "FAILED", "promote"),
        (f"rollback v{v2} -> v{v1}", "FINISHED", "rollback"),
    ]
    assert "did not pass its gate" in new[2].data.tags["refused"]
    assert {mlflow.get_experiment(r.info.experiment_id).name for r in new} == {"crypto-signals"}
