"""The version is recorded where a user looks for it: on every MLflow run an entry point starts (tag
``crypto_signals.version``) and in the served model's metadata, under the same name (issue 19)."""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from models import lifecycle
from models.pyfunc import SignalModel
from models.version import VERSION_TAG, __version__
from tests.helpers import log_loadable_model

NAME = "versioned-model"


def _runs(where: str) -> list:
    client = MlflowClient()
    return client.search_runs([client.get_experiment_by_name("tests").experiment_id], where)


def test_the_served_model_carries_the_version_in_its_metadata(store):
    model = SignalModel(None, "default", pd.Timedelta("30min"), metadata={"horizon": 6})
    assert model.metadata == {"horizon": 6, VERSION_TAG: __version__}
    # logged as the register stage logs it: the metadata of the logged model, read back by a bot
    with mlflow.start_run():
        uri = mlflow.pyfunc.log_model(
            name="model", python_model=model, metadata=model.metadata, pip_requirements=[]
        ).model_uri
    assert mlflow.models.get_model_info(uri).metadata[VERSION_TAG] == __version__


def test_a_run_an_entry_point_starts_is_tagged_with_the_version(store, capsys):
    with mlflow.start_run(run_name="pipeline"):
        uri = log_loadable_model()
    version = mlflow.register_model(uri, NAME).version
    argv = ["promote", "--model-name", NAME, "--version", str(version), "--reason", "by hand"]
    argv += ["--force", "true"]
    assert lifecycle.main(argv) == 0, capsys.readouterr().err
    (run,) = _runs("tags.step = 'promote'")
    assert run.data.tags[VERSION_TAG] == __version__


def test_the_run_mlflow_run_started_is_tagged_too(store, monkeypatch, capsys):
    """Under `mlflow run` the launcher creates the run (MLFLOW_RUN_ID) before the entry point starts."""
    client = MlflowClient()
    client.create_registered_model(NAME)
    launcher = client.create_run(client.create_experiment("launched")).info.run_id
    assert VERSION_TAG not in client.get_run(launcher).data.tags
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher)
    assert lifecycle.main(["status", "--model-name", NAME]) == 0, capsys.readouterr().err
    assert client.get_run(launcher).data.tags[VERSION_TAG] == __version__
