"""Credentials never leak (issue 21, case 1): a database password in a tracking or Optuna storage URI, a
query token or a credential environment variable is masked (``models.redaction``) in everything a command
prints, logs, sends to the webhook, logs to MLflow (parameters, tags, artifacts, run description) or
writes into its reports. The end-to-end tests plant a password and search every output for it, including
the bytes of the SQLite tracking store and of every file under the artifact folder."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import namedtuple
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from evaluation.report import render_report
from models import redaction, tracking
from models.redaction import MASK, redact, redact_obj
from tests.helpers import make_candles, write_csv
from tests.servers import postgres_available, throwaway_database
from tests.webhook import SECRET as WEBHOOK_TOKEN

# The planted password: percent-encoded "/" and "@" in the URI, so neither the encoded nor the decoded
# spelling may appear anywhere; MARKERS are in both.
PLANTED = "Pl4ntedQx%2Fs3cretZ%40w9"
MARKERS = ("Pl4ntedQx", "s3cretZ")


def _leaks(text: str | bytes) -> list[str]:
    if isinstance(text, bytes):
        return [m for m in MARKERS if m.encode() in text]
    return [m for m in MARKERS if m in text]


# ------------------------------------------------------------------------------------------ the rule


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql+psycopg2://user:PASSWORD@host/db", "postgresql+psycopg2://user:***@host/db"),
        (
            "postgresql://u:p%40ss%2Fw%3Ard@h:5432/db?sslmode=require",
            "postgresql://u:***@h:5432/db?sslmode=require",
        ),
        # characters a URI should have encoded: "@", "/", "#", ":", "?" and quotes in the password
        ("mysql://u:p@ss/w#r:d?x@h/db", "mysql://u:***@h/db"),
        ("""postgresql://u:it's"q@h/db""", "postgresql://u:***@h/db"),
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        (
            "error: cannot reach 'postgresql+psycopg2://user:pw@127.0.0.1:1/db': OperationalError: refused",
            "error: cannot reach 'postgresql+psycopg2://user:***@127.0.0.1:1/db': OperationalError: refused",
        ),
        (
            "{'optuna_storage': 'postgresql://u:pw@h/db', 'x': 1}",
            "{'optuna_storage': 'postgresql://u:***@h/db', 'x': 1}",
        ),
        ("postgresql://u:***@h/db", "postgresql://u:***@h/db"),  # already masked: unchanged
        # secret query parameters, key=value credentials, bearer tokens
        ("https://h/x?token=abc123&b=1", "https://h/x?token=***&b=1"),
        ("https://h/x?a=1&api_key=k-9;password=p", "https://h/x?a=1&api_key=***;password=***"),
        ("host=db.local password='pa ss' dbname=x", "host=db.local password=*** dbname=x"),
        ("PGPASSWORD=hunter2 python -m train.retrain", "PGPASSWORD=*** python -m train.retrain"),
        ("AWS_SECRET_ACCESS_KEY=abcd client_secret=zz", "AWS_SECRET_ACCESS_KEY=*** client_secret=***"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.x", "Authorization: Bearer ***"),
    ],
)
def test_redact_masks_passwords_tokens_and_credentials(text, expected):
    assert redact(text) == expected
    assert redact(expected) == expected  # idempotent


@pytest.mark.parametrize(
    "text",
    [
        "a=b",
        "n_trials=3 max_tokens=5 tokenizer=bpe PWD=/work/main",
        "2024-01-01T10:00:00+00:00 and 10:00:00, ratio 3:2",
        "http://127.0.0.1:5000/#/experiments/1",
        "http://host:8080/path?to=a@b.com",  # a port, then an "@" in the query: no password
        "postgresql+psycopg2://postgres@127.0.0.1:5432/db",  # a user without a password
        "ssh://git@github.com:22/x.git and me@example.com",
        "sqlite:///mlflow.db, runs:/0123abcd/data/candles.parquet, models:/m@production",
        "exchange:bitbank:BTC/JPY:15m",
        "",
    ],
)
def test_redact_leaves_ordinary_text_alone(text):
    assert redact(text) == text


def test_credential_environment_values_are_masked_wherever_they_appear(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "hunter2/with@odd")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-123456")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "ab")  # too short to mask without masking prose
    text = "libpq said hunter2/with@odd; encoded hunter2%2Fwith%40odd; header tok-123456; about abc"
    assert redact(text) == f"libpq said {MASK}; encoded {MASK}; header {MASK}; about abc"


def test_redact_obj_masks_every_string_in_nested_values():
    Pair = namedtuple("Pair", "name uri")
    value = {
        "storage": "postgresql://u:pw@h/db",
        "list": ["x", ("sqlite:///a.db", "mysql://u:pw@h/db")],
        "pair": Pair("p", "redis://:pw@h/0"),
        "n": 3,
        "none": None,
        Path("p"): {1.5},
    }
    out = redact_obj(value)
    assert out["storage"] == "postgresql://u:***@h/db"
    assert out["list"] == ["x", ("sqlite:///a.db", "mysql://u:***@h/db")]
    assert out["pair"] == Pair("p", "redis://:***@h/0") and isinstance(out["pair"], Pair)
    assert out["n"] == 3 and out["none"] is None and out[Path("p")] == {1.5}
    assert value["storage"] == "postgresql://u:pw@h/db"  # the input is not changed


def test_install_masks_log_records_and_the_standard_streams(capsys, caplog):
    redaction.install()
    redaction.install()  # idempotent: one wrapper, one factory
    assert not isinstance(getattr(sys.stdout, "stream", None), redaction.RedactingStream)
    caplog.set_level(logging.INFO)
    logging.getLogger("some.library").info("connecting to %s", f"postgresql://u:{PLANTED}@h/db")
    try:
        raise RuntimeError(f"failed: postgresql://u:{PLANTED}@h/db")
    except RuntimeError:
        logging.getLogger("some.library").exception("boom")
    print(f"url postgresql://u:{PLANTED}@h/db")
    print(f"and postgresql://u:{PLANTED}@h/db", file=sys.stderr)
    out, err = capsys.readouterr()
    logged = [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    assert "postgresql://u:***@h/db" in out and "postgresql://u:***@h/db" in err
    assert "postgresql://u:***@h/db" in logged[0] and "RuntimeError" in logged[1]
    for text in (out, err, caplog.text, *logged):
        assert not _leaks(text), text


# ------------------------------------------------------------------------- where the project writes


def test_errors_parameters_and_the_report_are_masked(store):
    uri = f"postgresql+psycopg2://user:{PLANTED}@127.0.0.1:1/db"
    assert str(tracking.TrackingUnavailable(f"cannot reach the MLflow tracking store at {uri!r}")) == (
        "cannot reach the MLflow tracking store at 'postgresql+psycopg2://user:***@127.0.0.1:1/db'"
    )
    assert not _leaks(tracking.error_message(RuntimeError(f"no: {uri}")))
    with mlflow.start_run() as run:
        tracking.log_params_once({"optuna_storage": uri, "n_trials": 2})
    params = MlflowClient().get_run(run.info.run_id).data.params
    assert params == {"optuna_storage": "postgresql+psycopg2://user:***@127.0.0.1:1/db", "n_trials": "2"}
    html = render_report({"run_id": "r", "gate": {}, "config": {"optuna_storage": uri}})
    assert "postgresql+psycopg2://user:***@127.0.0.1:1/db" in html and not _leaks(html)


def test_a_credential_the_launcher_already_logged_gets_one_warning(store, capsys):
    """Under `mlflow run` the launcher logs every -P value before our code runs; MLflow cannot change a
    logged parameter. The pipeline's run then says so once, in one line, and how to keep it out."""
    uri = f"postgresql://postgres:{PLANTED}@127.0.0.1:5432/optuna"
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tests") or client.get_experiment(
        client.create_experiment("tests")
    )
    launcher = client.create_run(experiment.experiment_id)
    client.log_param(launcher.info.run_id, "optuna_storage", uri)  # what `mlflow run -P` does
    with mlflow.start_run(run_id=launcher.info.run_id):
        tracking.log_params_once({"optuna_storage": uri, "n_trials": 2})
        tracking.log_params_once({"seed": 1})  # a second call: no second warning
    err = capsys.readouterr().err
    (line,) = err.strip().splitlines()
    assert line.startswith("warning: ") and "optuna_storage" in line and launcher.info.run_id in line
    assert "PGPASSWORD" in line and "~/.pgpass" in line and "MLFLOW_TRACKING_PASSWORD" in line
    assert not _leaks(err)
    assert tracking.warn_logged_credentials("another", {"data": "builtin", "timeout": "90"}) == []


# ------------------------------------------------------------------------------------- end to end


def _files_leaking(root: Path) -> list[str]:
    return [str(p) for p in sorted(root.rglob("*")) if p.is_file() and _leaks(p.read_bytes())]


@pytest.mark.slow
def test_a_pipeline_with_a_password_in_its_optuna_storage_leaks_it_nowhere(store, hook, capsys, caplog):
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    from train.pipeline import main

    caplog.set_level(logging.INFO)
    data = write_csv(make_candles(2600, seed=2, vol=0.004), store / "c.csv")
    with throwaway_database("cs_secrets") as url:  # postgresql+psycopg2://postgres@127.0.0.1:5432/<db>
        storage = url.replace("postgresql+psycopg2://postgres@", f"postgresql://postgres:{PLANTED}@")
        args = ["--data", data, "--n-trials", "1", "--models", "lightgbm", "--n-folds", "3", "--n-jobs", "1"]
        code = main([*args, "--model-name", "secrets-model", "--optuna-storage", storage])
    out, err = capsys.readouterr()
    assert code == 0, err
    # the storage was used (PostgreSQL trusts the local user and ignores the password) and logged, masked
    (run,) = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("tests").experiment_id], "tags.step = 'pipeline'"
    )
    masked = storage.replace(PLANTED, MASK)
    assert run.data.params["optuna_storage"] == masked
    config = json.loads(
        Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/config.json")).read_text()
    )
    assert config["optuna_storage"] == masked
    assert hook.requests, "the pipeline announced its gate result"
    # ... and the planted password is nowhere
    assert not _leaks(out) and not _leaks(err)
    assert not [r.getMessage() for r in caplog.records if _leaks(r.getMessage() + (r.exc_text or ""))]
    assert not [r for r in hook.requests if _leaks(r["body"]) or _leaks(r["path"])]
    assert not _leaks((store / "mlflow.db").read_bytes())
    assert (store / "mlruns").is_dir() and not _files_leaking(store)  # every artifact, the store, the CSV


def test_a_retrain_against_a_dead_store_with_a_password_names_it_masked(
    hook, monkeypatch, tmp_path, capsys, caplog
):
    from train import retrain as rt

    uri = f"postgresql+psycopg2://user:{PLANTED}@127.0.0.1:1/db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setattr("mlflow.store.db.utils.MAX_RETRY_COUNT", 0, raising=False)  # MLflow's ~100 s
    caplog.set_level(logging.INFO)
    mlflow.set_tracking_uri(uri)
    try:
        assert rt.main(["--model-name", "secrets-model"]) == rt.EXIT_FAILED
    finally:
        mlflow.set_tracking_uri(None)
    out, err = capsys.readouterr()
    shown = "postgresql+psycopg2://user:***@127.0.0.1:1/db"
    assert shown in err
    (request,) = hook.requests
    payload = json.loads(request["body"])
    assert payload["event"] == "retrain_failed" and shown in payload["content"]
    assert not _leaks(out) and not _leaks(err) and not _leaks(request["body"])
    assert not [r.getMessage() for r in caplog.records if _leaks(r.getMessage() + (r.exc_text or ""))]
    assert WEBHOOK_TOKEN not in err and os.environ["CRYPTO_SIGNALS_WEBHOOK_URL"] not in err
