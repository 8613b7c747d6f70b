"""Robust under faults (issue 10): a dead, read-only or corrupt store, an Optuna storage that cannot be
opened, an unreadable data file and out-of-range or non-integer parameters all fail in seconds, before
any data is read or any run is created, with one line ``error: ...`` naming what to fix; no traceback.

Command-line checks run in subprocesses with a timeout: MLflow's default HTTP retries take about four
minutes against a dead server, which is what these tests must never see. The dead server is a closed
loopback port.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from features.data import DataError, load_candles
from tests.helpers import make_candles, mlflow_cli_env, write_csv
from train.config import MAX_FOLDS, PipelineConfig, build_parser
from train.pipeline import main
from train.prepare import prepare

REPO = Path(__file__).resolve().parents[1]
DEAD = "http://127.0.0.1:9"  # nothing listens on the discard port of the loopback interface
SNAPSHOT = "runs:/0123456789abcdef0123456789abcdef/data/candles.parquet"


@pytest.fixture
def csv(tmp_path) -> str:
    return write_csv(make_candles(2600, seed=2, vol=0.004), tmp_path / "c.csv")


def _env(tracking_uri: str, **extra: str) -> dict[str, str]:
    """The environment a user's shell gives a command: MLflow's HTTP defaults (no retry settings), this
    repository importable from any working directory."""
    env = mlflow_cli_env()
    for var in [v for v in env if v.startswith("MLFLOW_HTTP_REQUEST_")] + ["MLFLOW_RUN_ID"]:
        env.pop(var, None)
    env.update(MLFLOW_TRACKING_URI=tracking_uri, PYTHONPATH=str(REPO), **extra)
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 90) -> tuple[int, str, str, float]:
    start = time.monotonic()
    try:
        out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(args)} still running after {timeout:.0f}s")
    return out.returncode, out.stdout, out.stderr, time.monotonic() - start


def _module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _one_error_line(stderr: str) -> str:
    """stderr must be exactly one line, ``error: ...``, and no traceback."""
    assert "Traceback" not in stderr and "[SQL:" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


# --- (a) a dead tracking store --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ["train.pipeline", "--data", "{csv}", "--n-trials", "1", "--models", "lightgbm"],
        # a dry run reads the tracking store only for a runs:/ snapshot, and then checks it first
        ["train.pipeline", "--dry-run", "true", "--data", SNAPSHOT],
        ["models.predict", "--data", "{csv}"],  # the default model URI is models:/...@production
        ["models.predict", "--model-uri", "runs:/0123abcd/model", "--data", "{csv}"],
        ["evaluation.evaluate", "--data", "{csv}"],
        ["models.lifecycle", "status"],
        ["models.lifecycle", "promote", "--version", "1", "--reason", "test"],
        ["train.tune", "--model", "lightgbm", "--data", SNAPSHOT],
    ],
    ids=lambda c: " ".join(c[:3]),
)
def test_a_dead_tracking_store_fails_in_seconds_with_one_line(tmp_path, csv, command):
    args = _module(*[a.replace("{csv}", csv) for a in command])
    code, _, err, seconds = _run(args, tmp_path, _env(DEAD))
    line = _one_error_line(err)
    assert code == 1 and seconds < 30, (code, seconds)
    assert "cannot reach the MLflow tracking store" in line and "127.0.0.1:9" in line
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_a_dry_run_touches_no_store_so_checks_none(tmp_path, csv):
    """Decided: a dry run (candles from a file) validates the data and prints the plan offline."""
    args = _module(
        "train.pipeline", "--data", csv, "--dry-run", "true", "--optuna-storage", "sqlite:////no/db"
    )
    code, out, err, seconds = _run(args, tmp_path, _env(DEAD))
    assert code == 0 and "dry run" in out and seconds < 30, err


@pytest.mark.slow
def test_mlflow_run_against_a_dead_store_fails_in_seconds_with_the_documented_settings(tmp_path, csv):
    """`mlflow run` creates its run before our code starts, with MLflow's HTTP retries (about 4 minutes
    by default); docs/operations.md says which settings make that seconds, and they do."""
    page = (REPO / "docs" / "operations.md").read_text()
    section = page.split("## A dead store fails in seconds", 1)[1].split("\n## ", 1)[0]
    settings = dict(re.findall(r"\b(MLFLOW_HTTP_REQUEST_[A-Z_]+)=(\d+)", section))
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" in settings, "docs/operations.md: make `mlflow run` fail fast"
    args = _module("mlflow", "run", str(REPO), "--env-manager", "local", "-P", f"data={csv}")
    code, out, err, seconds = _run(args + ["-P", "dry_run=true"], tmp_path, _env(DEAD, **settings))
    assert code != 0 and seconds < 30, (code, seconds)
    assert "127.0.0.1:9" in err


# --- (b) an Optuna storage that cannot be opened, an unreadable file, a read-only store -----------


def _read_only_sqlite(path: Path) -> str:
    return f"sqlite:///file:{path}?mode=ro&uri=true"


def _optuna_db(path: Path) -> Path:
    from train.tune import make_storage

    storage = make_storage(f"sqlite:///{path}")
    storage.engine.dispose()
    return path


@pytest.mark.no_store_file
@pytest.mark.parametrize(
    "kind",
    ["missing directory", "no server", "not a database", "read-only", "bad url"],
)
def test_an_optuna_storage_that_cannot_be_opened_fails_before_any_run(store, csv, capsys, kind):
    url = {
        "missing directory": "sqlite:////nonexistent/dir/optuna.db",
        "no server": "postgresql://postgres:secret@127.0.0.1:1/x",
        "bad url": "optuna.db",
    }.get(kind)
    if kind == "not a database":
        (store / "garbage.db").write_bytes(os.urandom(4096))
        url = f"sqlite:///{store / 'garbage.db'}"
    elif kind == "read-only":
        url = _read_only_sqlite(_optuna_db(store / "ro.db"))
    start = time.monotonic()
    assert main(["--data", csv, "--n-trials", "1", "--models", "lightgbm", "--optuna-storage", url]) == 1
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err
    line = _one_error_line(err)
    shown = url.replace(":secret@", ":***@")
    assert f"cannot open the Optuna storage {shown!r}" in line and "--optuna-storage" in line
    assert "secret" not in line
    # nothing was created in the tracking store: not even its database file
    assert not (store / "mlflow.db").exists()


def test_tune_with_an_optuna_storage_that_cannot_be_opened_fails_with_one_line(store, csv, capsys):
    from train.tune import main as tune_main

    url = _read_only_sqlite(_optuna_db(store / "ro.db"))
    assert tune_main(["--model", "lightgbm", "--data", csv, "--n-trials", "1", "--optuna-storage", url]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "cannot open the Optuna storage" in line and "readonly" in line


@pytest.mark.no_store_file
def test_a_new_sqlite_storage_is_not_created_by_the_check(store, csv, capsys):
    """The checks leave nothing behind when the run then fails on its input."""
    assert main(["--data", str(store / "nope.csv")]) == 1
    assert "nope.csv" in capsys.readouterr().err
    assert not (store / "mlflow.db").exists() and not (store / "optuna.db").exists()


def test_unreadable_data_is_a_data_error(tmp_path, monkeypatch):
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(DataError, match="not a file"):
        load_candles(str(tmp_path / "dir.csv"))
    for suffix in (".csv", ".csv.gz", ".parquet"):
        garbage = tmp_path / f"garbage{suffix}"
        garbage.write_bytes(b"\xff\xfe\x00" + os.urandom(2000))
        with pytest.raises(DataError, match="Could not read"):
            load_candles(str(garbage))
    for path in ("~no-such-user-here/c.csv", "c\0.csv"):
        with pytest.raises(DataError, match="not a usable file path"):
            load_candles(path)
    with pytest.raises(DataError, match="Could not read data file"):
        load_candles(str(tmp_path / ("x" * 300 + ".csv")))  # a name longer than the file system allows

    # No read permission (the tests may run as root, who reads anything: the error is simulated).
    noperm = tmp_path / "noperm.csv"
    noperm.write_text("timestamp,open,high,low,close,volume\n")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DataError, match="Permission denied"):
        load_candles(str(noperm))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files without permission")
def test_a_file_without_read_permission_is_a_data_error(tmp_path):
    noperm = tmp_path / "noperm.csv"
    noperm.write_text("timestamp,open,high,low,close,volume\n")
    noperm.chmod(0)
    with pytest.raises(DataError, match="Permission denied"):
        load_candles(str(noperm))


def test_an_unreadable_data_file_fails_the_commands_with_one_line(store, capsys):
    (store / "dir.csv").mkdir()
    assert main(["--data", str(store / "dir.csv"), "--dry-run", "true"]) == 1
    assert "dir.csv" in _one_error_line(capsys.readouterr().err)


def _mlflow_db(path: Path) -> Path:
    """An MLflow database with the experiment the commands use, then left alone (read-only below)."""
    client = MlflowClient(f"sqlite:///{path}")
    client.create_experiment("tests", artifact_location=(path.parent / "artifacts").as_uri())
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["read-only", "not a database"])
def test_a_read_only_or_corrupt_tracking_store_is_one_line_naming_it(tmp_path, csv, kind):
    if kind == "read-only":
        uri = _read_only_sqlite(_mlflow_db(tmp_path / "ro.db"))
        expected = "attempt to write a readonly database"
    else:
        (tmp_path / "garbage.db").write_bytes(os.urandom(4096))
        uri = f"sqlite:///{tmp_path / 'garbage.db'}"
        expected = "file is not a database"
    env = _env(uri, MLFLOW_EXPERIMENT_NAME="tests")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    pipeline = _module("train.pipeline", "--data", csv, "--models", "lightgbm", "--optuna-storage", storage)
    for args in (pipeline, _module("models.lifecycle", "promote", "--version", "1", "--reason", "test")):
        code, _, err, seconds = _run(args, tmp_path, env)
        line = _one_error_line(err)
        assert code == 1 and seconds < 30, (code, seconds)
        assert expected in line and repr(uri) in line, line


# --- (c) range checks and integer parameters, before any data is read ------------------------------


@pytest.mark.parametrize(
    "name,value",
    [
        ("n_folds", 1),
        ("n_folds", MAX_FOLDS + 1),
        ("n_folds", 2000),
        ("gate_min_f1", math.nan),
        ("gate_min_f1", -1.0),
        ("gate_min_f1", 1.5),
        ("gate_margin", -0.5),
        ("gate_margin", math.nan),
        ("gate_confidence", 0.0),
        ("gate_confidence", math.nan),
        ("gate_min_dsr", math.nan),
        ("threshold", math.nan),
        ("timeout", math.inf),
        ("fee_bps", math.inf),
        ("slippage_bps", math.nan),
    ],
)
def test_out_of_range_settings_are_refused(name, value):
    with pytest.raises(ValueError, match=name):
        PipelineConfig(**{name: value})


def test_too_many_folds_fail_before_the_data_is_read(store, capsys):
    # the data file does not exist: a message about it would mean it was read first
    assert main(["--n-folds", "2000", "--data", "nope.csv"]) == 1
    assert "n_folds must be in [2, 20]; got n_folds=2000" in _one_error_line(capsys.readouterr().err)


def test_the_most_folds_allowed_still_have_enough_rows_each(tmp_path):
    """At the fewest rows a run accepts (about 2,000 usable), 20 folds keep validation blocks of dozens
    of rows, never single rows."""
    data = write_csv(make_candles(2100, seed=2, vol=0.004), tmp_path / "c.csv")
    plan = prepare(PipelineConfig(data=data, n_folds=MAX_FOLDS)).plan
    assert len(plan["folds"]) == MAX_FOLDS
    assert min(f["n_validation"] for f in plan["folds"]) >= 50


INT_OPTIONS = [f.name for f in fields(PipelineConfig) if f.type == "int"]


@pytest.mark.parametrize("name", INT_OPTIONS)
def test_integer_options_take_whole_numbers_written_as_floats_and_refuse_fractions(name, capsys):
    option = f"--{name.replace('_', '-')}"
    parsed = build_parser().parse_args([option, "6.0"])
    assert getattr(parsed, name) == 6 and type(getattr(parsed, name)) is int
    with pytest.raises(SystemExit) as exc:
        main([option, "6.5"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"error: argument {option}: expected a whole number, got '6.5'" in err


@pytest.mark.parametrize("option", ["--horizon", "--n-folds", "--processes", "--worker-id", "--heartbeat"])
def test_tune_integer_options_refuse_fractions(option, capsys):
    from train.tune import main as tune_main

    with pytest.raises(SystemExit) as exc:
        tune_main(["--model", "lightgbm", option, "2.5"])
    assert exc.value.code == 2
    assert f"argument {option}: expected a whole number, got '2.5'" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["models.predict", "evaluation.evaluate"])
def test_step_integer_options_refuse_fractions(module, capsys):
    import importlib

    with pytest.raises(SystemExit) as exc:
        importlib.import_module(module).main(["--days", "1.5"])
    assert exc.value.code == 2
    assert "argument --days: expected a whole number, got '1.5'" in capsys.readouterr().err


@pytest.mark.slow
def test_mlflow_run_passes_whole_floats_and_refuses_fractions_in_one_line(tmp_path, csv):
    """MLproject declares integer parameters `float` (MLflow has no integer type, and does not check
    either): `-P horizon=6.0` must run, `-P horizon=6.5` must stop at the option with one clear line."""
    env = _env(f"sqlite:///{tmp_path / 'mlflow.db'}")
    base = _module("mlflow", "run", str(REPO), "--env-manager", "local", "--experiment-name", "fail-fast")
    base += ["-P", f"data={csv}", "-P", "dry_run=true", "-P", "n_folds=3.0"]
    code, out, err, _ = _run(base + ["-P", "horizon=6.0"], tmp_path, env, timeout=180)
    assert code == 0 and "dry run" in out, err[-2000:]
    code, out, err, _ = _run(base + ["-P", "horizon=6.5"], tmp_path, env, timeout=180)
    assert code != 0 and "Traceback" not in err
    assert "error: argument --horizon: expected a whole number, got '6.5'" in err
