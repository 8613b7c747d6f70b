"""Storage hiccups (issue 21, cases 4 and 5).

* Case 4: a dropped Optuna database connection during tuning is not fatal. Pooled connections are
  checked before use, a statement cut off by a dropped connection is retried with backoff, and the study
  is re-opened and filled to the same number of trials. A database that stays away ends the tuning with
  one line naming the storage (password masked), no traceback. Reproduced on a real PostgreSQL database
  (a throwaway one per test), by terminating its server processes as an operator or a failover would.
* Case 5: a dead PostgreSQL tracking store fails every command in seconds with one ``error:`` line
  naming the store (password masked), and a missing SQLAlchemy driver is named as such.
"""

from __future__ import annotations

import importlib.util
import re
import threading
import time
from contextlib import contextmanager

import mlflow
import numpy as np
import optuna
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from tests.helpers import make_regime_candles, write_csv
from tests.servers import database_name, pg_connect, postgres_available, throwaway_database
from train.split import PurgedWalkForward
from train.tune import StorageUnavailable, run_study

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
SECRET = "s3cretPW"


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err and "[SQL:" not in err and "sqlalche.me" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --- case 5: a dead PostgreSQL tracking store ----------------------------------------------------------

DEAD_PG = f"postgresql+psycopg2://u:{SECRET}@127.0.0.1:1/db"  # nothing listens on port 1


@pytest.fixture
def tracking_uri(monkeypatch, tmp_path):
    """Set the tracking URI for one test (environment and MLflow), restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)

    def use(uri: str) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)

    yield use
    mlflow.set_tracking_uri(None)


def _lifecycle_status(capfd) -> tuple[int, str, float]:
    from models.lifecycle import main

    start = time.monotonic()
    code = main(["status"])
    return code, capfd.readouterr().err, time.monotonic() - start


def test_lifecycle_status_against_a_dead_postgresql_store_fails_in_seconds(tracking_uri, capfd):
    tracking_uri(DEAD_PG)
    code, err, seconds = _lifecycle_status(capfd)
    line = _one_error_line(err)
    assert code == 1 and seconds < 10, (code, seconds, err)
    assert "postgresql+psycopg2://u:***@127.0.0.1:1/db" in line and SECRET not in line
    assert "127.0.0.1:1" in line and "MLFLOW_TRACKING_URI" in line


@pytest.mark.skipif(importlib.util.find_spec("psycopg") is not None, reason="psycopg 3 is installed")
def test_a_bare_postgresql_uri_without_psycopg_names_the_missing_driver(tracking_uri, capfd):
    tracking_uri(DEAD_PG.replace("postgresql+psycopg2://", "postgresql://"))
    code, err, seconds = _lifecycle_status(capfd)
    line = _one_error_line(err)
    assert code == 1 and seconds < 10, (code, seconds, err)
    assert "driver 'psycopg'" in line and "not installed" in line and "postgresql+psycopg2://" in line
    assert "Start the server" not in line and SECRET not in line and "u:***@" in line


def test_a_wrong_user_on_a_live_postgresql_server_fails_in_seconds(tracking_uri, capfd):
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    tracking_uri(f"postgresql+psycopg2://nobody_here:{SECRET}@127.0.0.1:5432/no_such_db")
    code, err, seconds = _lifecycle_status(capfd)
    line = _one_error_line(err)
    assert code == 1 and seconds < 10, (code, seconds, err)
    assert "nobody_here:***@" in line and SECRET not in line and "nobody_here" in line


@pytest.mark.parametrize("scheme", ["postgresql+psycopg2", "postgresql"])
def test_the_pipeline_check_against_a_dead_postgresql_store_fails_in_seconds(
    tracking_uri, capfd, tmp_path, scheme
):
    from train.pipeline import main

    if scheme == "postgresql" and importlib.util.find_spec("psycopg") is not None:
        pytest.skip("psycopg 3 is installed")
    tracking_uri(DEAD_PG.replace("postgresql+psycopg2", scheme))
    csv = write_csv(make_regime_candles(600, seed=3), tmp_path / "c.csv")
    start = time.monotonic()
    code = main(["--data", csv, "--n-trials", "1", "--models", "lightgbm"])
    seconds = time.monotonic() - start
    line = _one_error_line(capfd.readouterr().err)
    assert code == 1 and seconds < 10, (code, seconds, line)
    assert f"{scheme}://u:***@127.0.0.1:1/db" in line and SECRET not in line
    if scheme == "postgresql":
        assert "driver 'psycopg'" in line and "Start the server" not in line
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


# --- case 4: a dropped Optuna database connection ------------------------------------------------------


@pytest.fixture
def pg_optuna():
    """A throwaway PostgreSQL database for one study, its URL as a user writes it (with a password the
    trust-authenticated test server ignores, to check that no message shows it)."""
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    with throwaway_database("cs_hiccup") as url:
        yield url.replace("postgresql+psycopg2://postgres@", f"postgresql://postgres:{SECRET}@")


def _terminate(dbname: str, pid: int | None = None, *, close: bool = False) -> None:
    """Terminate one server process (``pid``) or all of ``dbname``'s; ``close``: refuse new ones too."""
    from psycopg2 import sql

    with pg_connect() as admin, admin.cursor() as cur:
        if close:
            cur.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(dbname)))
        if pid is not None:
            cur.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        else:
            cur.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            )


@contextmanager
def drop_connection_before(dbname: str, statement: str, occurrence: int = 1, *, close: bool = False):
    """Just before the ``occurrence``-th statement starting with ``statement`` runs against ``dbname``,
    terminate the server process of the connection about to run it (the statement then meets a dropped
    connection, which checking connections on checkout cannot catch); ``close``: terminate every
    connection to the database and refuse new ones (a database that stays away). Yields the statements
    the drop hit."""
    hits: list[str] = []
    seen = [0]

    def before(conn, cursor, text, parameters, context, executemany):
        if hits or conn.engine.url.database != dbname or not text.lstrip().startswith(statement):
            return
        seen[0] += 1
        if seen[0] < occurrence:
            return
        hits.append(text)
        pid = conn.connection.dbapi_connection.get_backend_pid()  # psycopg2's connection
        _terminate(dbname, None if close else pid, close=close)

    event.listen(Engine, "before_cursor_execute", before)
    try:
        yield hits
    finally:
        event.remove(Engine, "before_cursor_execute", before)


def _data(n=900, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = np.where(X[:, 0] > 0.5, 2, np.where(X[:, 0] < -0.5, 0, 1))
    return X, y


def _tune(storage: str, n_trials: int, study_name: str = "s") -> optuna.Study:
    X, y = _data()
    cv = PurgedWalkForward(n_splits=2, horizon=2)
    return run_study(
        "random_forest", X, y, cv, n_trials=n_trials, timeout=None, storage=storage, study_name=study_name
    )


def _trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    url = storage.replace("postgresql://", "postgresql+psycopg2://")
    return optuna.load_study(study_name="s", storage=url).trials


@pytest.mark.slow
@pytest.mark.parametrize(
    "where, statement",
    [
        ("report", "INSERT INTO trial_intermediate_values"),  # inside the objective, between folds
        ("tell", "INSERT INTO trial_values"),  # while the finished trial is written
        # (a trial's creation Optuna retries itself)
    ],
)
def test_a_connection_dropped_during_tuning_is_reopened_and_the_study_filled(
    pg_optuna, capfd, caplog, where, statement
):
    with drop_connection_before(database_name(pg_optuna), statement, occurrence=2) as hits:
        study = _tune(pg_optuna, n_trials=4)
    assert hits, "the connection was never dropped"
    trials = _trials(pg_optuna)
    assert sum(t.state in FINISHED for t in trials) == 4  # the same budget, despite the drop
    assert len({t.number for t in study.trials}) == len(study.trials)
    # the trial the drop interrupted (if any) is failed, not left running; the others are untouched
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    assert sum(t.state == optuna.trial.TrialState.FAIL for t in trials) <= 1
    err = capfd.readouterr().err + caplog.text
    assert "Traceback" not in err and "[SQL:" not in err and SECRET not in err, err
    assert "retrying" in err or "re-opening" in err  # said what happened, in one line each


@pytest.mark.slow
def test_connections_terminated_again_and_again_do_not_stop_the_tuning(pg_optuna, capfd, caplog):
    """The operator's experiment: pg_terminate_backend on every connection of the database, from
    outside, every few tenths of a second while the study runs."""
    dbname, stop = database_name(pg_optuna), threading.Event()

    def killer():
        while not stop.wait(0.4):
            _terminate(dbname)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        _tune(pg_optuna, n_trials=5)
    finally:
        stop.set()
        thread.join(timeout=10)
    trials = _trials(pg_optuna)
    assert sum(t.state in FINISHED for t in trials) == 5
    err = capfd.readouterr().err + caplog.text
    assert "Traceback" not in err and SECRET not in err, err


@pytest.mark.slow
def test_a_database_that_stays_away_ends_the_tuning_in_one_line(pg_optuna, capfd, caplog):
    start = time.monotonic()
    with drop_connection_before(database_name(pg_optuna), "INSERT INTO trial_values", close=True) as hits:
        with pytest.raises(StorageUnavailable) as caught:
            _tune(pg_optuna, n_trials=3)
    assert hits and time.monotonic() - start < 60
    message = str(caught.value)
    assert "\n" not in message and SECRET not in message
    assert f"'postgresql://postgres:***@127.0.0.1:5432/{database_name(pg_optuna)}'" in message
    assert "rerun the same command to resume" in message
    err = capfd.readouterr().err + caplog.text
    assert "Traceback" not in err and "[SQL:" not in err and SECRET not in err, err


@pytest.mark.slow
def test_tune_command_against_a_database_that_stays_away_prints_one_error_line(pg_optuna, capfd, tmp_path):
    from train.tune import main

    csv = write_csv(make_regime_candles(2600, seed=4), tmp_path / "c.csv")
    args = ["--model", "lightgbm", "--data", csv, "--n-folds", "3", "--n-trials", "3", "--timeout", "0"]
    with drop_connection_before(database_name(pg_optuna), "INSERT INTO trial_values", close=True):
        code = main([*args, "--n-jobs", "1", "--optuna-storage", pg_optuna])
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 1 and len(errors) == 1, err
    assert "Traceback" not in err and "[SQL:" not in err and SECRET not in err, err
    # (the command names the PostgreSQL driver it uses: postgresql+psycopg2://)
    assert re.search(r"the Optuna storage 'postgresql\S*://postgres:\*\*\*@", errors[0])
    assert "rerun the same command to resume" in errors[0]
