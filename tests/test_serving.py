"""The production model served over HTTP by `mlflow models serve`, as a bot would call it.

A tiny model trained on planted-signal candles into a SQLite store of its own and promoted (conftest's
``tiny_promoted``), then `mlflow models serve -m models:/tiny-model@production --env-manager local`
runs as a subprocess in a directory where this repository is not importable (the model's shipped code
must suffice). The tests POST candles to `/invocations` and check the response shape, the history
marking, that the HTTP answer equals the in-process `mlflow.pyfunc.load_model(...).predict(...)`, and
that bad input is refused with a 400 whose message says what is wrong.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import requests
from mlflow.tracking import MlflowClient

from models.registry import PRODUCTION
from tests.helpers import SERVED_COLUMNS, TINY_MODEL, make_flow_signal_candles, use_store

pytestmark = pytest.mark.slow

MODEL_NAME = TINY_MODEL
MODEL_URI = f"models:/{MODEL_NAME}@{PRODUCTION}"
OUTPUT_COLUMNS = SERVED_COLUMNS
PROBA = ["p_sell", "p_hold", "p_buy"]
N_REQUEST = 300  # candles per request: the last ones of the training data
STARTUP_DEADLINE = 90.0
POLL_INTERVAL = 0.5
STOP_GRACE = 15.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def _wait_until_up(proc: subprocess.Popen, url: str, log: Path) -> None:
    """Poll GET `url` until it answers 200; fail with the server log if it exits or the deadline passes."""
    deadline = time.monotonic() + STARTUP_DEADLINE
    while True:
        if proc.poll() is not None:
            pytest.fail(f"model server exited with code {proc.returncode}:\n{_log_tail(log)}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"model server not up at {url} after {STARTUP_DEADLINE:.0f} s:\n{_log_tail(log)}")
        time.sleep(POLL_INTERVAL)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (the mlflow CLI and the uvicorn it spawns); SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # the group this test created (start_new_session=True)
        except ProcessLookupError:
            return  # nothing left in the group
        try:
            proc.wait(timeout=STOP_GRACE)
            return
        except subprocess.TimeoutExpired:
            continue


def _request_body(candles: pd.DataFrame) -> dict:
    """`dataframe_split` JSON: naive-UTC ISO timestamps, e.g. "2024-01-02T03:30:00", then OHLCV floats."""
    columns = ["timestamp", "open", "high", "low", "close", "volume"]
    data = [[ts.isoformat(), *row] for ts, *row in candles[columns].itertuples(index=False)]
    return {"dataframe_split": {"columns": columns, "data": data}}


@pytest.fixture(scope="module")
def served(tiny_promoted, tmp_path_factory):
    """The shared tiny promoted model (conftest's ``tiny_promoted``) served; yield (base URL, request
    candles, min_history_bars)."""
    tmp = tmp_path_factory.mktemp("serving")
    with use_store(tiny_promoted.uri, tmp, tiny_promoted.experiment) as (mp, uri):
        candles = make_flow_signal_candles(3000, seed=11)  # what it was trained on
        result = tiny_promoted.summary
        assert result["gate"]["result"] == "passed", result["gate"]
        assert result["promoted"]
        version = MlflowClient().get_model_version_by_alias(MODEL_NAME, PRODUCTION).version
        assert str(version) == result["model_version"]
        min_history = mlflow.pyfunc.load_model(MODEL_URI).metadata.metadata["min_history_bars"]

        request = candles.iloc[-N_REQUEST:].reset_index()
        request["timestamp"] = request["timestamp"].dt.tz_localize(None)

        port = _free_port()
        log = tmp / "serve.log"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["MLFLOW_TRACKING_URI"] = uri
        # The CLI execs `uvicorn` by name: this venv's bin must come first on PATH.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        cmd = [
            sys.executable, "-m", "mlflow", "models", "serve",
            "-m", MODEL_URI,
            "--env-manager", "local",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--workers", "1",
        ]  # fmt: skip
        serve_dir = tmp / "serve-cwd"  # this repository is not importable from here
        serve_dir.mkdir()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=serve_dir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_until_up(proc, f"{base}/ping", log)
            yield {"url": base, "candles": request, "min_history": min_history, "log": log}
        finally:
            _stop(proc)


def _invoke(served, body: dict) -> requests.Response:
    return requests.post(
        f"{served['url']}/invocations",
        json=body,  # requests sets Content-Type: application/json
        timeout=60,
    )


def test_served_predictions_match_in_process_model(served):
    candles, min_history = served["candles"], served["min_history"]
    response = _invoke(served, _request_body(candles))
    assert response.status_code == 200, response.text[:2000] + _log_tail(served["log"])
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()  # not-ready rows carry NaN literals, which Python's json accepts
    assert list(payload) == ["predictions"]
    records = payload["predictions"]
    assert isinstance(records, list) and len(records) == len(candles)
    assert all(list(r) == OUTPUT_COLUMNS for r in records)
    served_out = pd.DataFrame.from_records(records, columns=OUTPUT_COLUMNS)

    # Rows without history are marked, the rest carry a signal and a probability distribution.
    n_unready = min_history - 1
    assert 0 < n_unready < len(candles)
    head, tail = served_out.iloc[:n_unready], served_out.iloc[n_unready:]
    assert (~head["ready"]).all() and (head["signal"] == "insufficient_history").all()
    assert (head["label"] == -1).all() and head[PROBA].isna().all().all()
    assert tail["ready"].all() and tail["signal"].isin(["sell", "hold", "buy"]).all()
    assert tail["label"].isin([0, 1, 2]).all()
    assert (tail["signal"] == tail["label"].map({0: "sell", 1: "hold", 2: "buy"})).all()
    assert ((tail[PROBA].sum(axis=1) - 1).abs() < 1e-9).all()
    assert served_out["timestamp"].tolist() == [ts.isoformat() for ts in candles["timestamp"]]

    # Same answer as the registered model loaded in this process.
    local = mlflow.pyfunc.load_model(MODEL_URI).predict(candles)
    assert list(local.columns) == OUTPUT_COLUMNS and len(local) == len(served_out)
    assert [ts.isoformat() for ts in local["timestamp"]] == served_out["timestamp"].tolist()
    for col in ("signal", "label", "ready"):
        assert local[col].tolist() == served_out[col].tolist(), col
    for col in PROBA:
        for got, want in zip(served_out[col], local[col], strict=True):
            assert (math.isnan(got) and math.isnan(want)) or abs(got - want) <= 1e-9, (col, got, want)


def test_missing_column_is_refused_with_its_name(served):
    body = _request_body(served["candles"])
    split = body["dataframe_split"]
    drop = split["columns"].index("volume")
    split["columns"].pop(drop)
    for row in split["data"]:
        row.pop(drop)
    response = _invoke(served, body)
    assert response.status_code == 400, response.text[:2000]
    error = response.json()
    assert error["error_code"] == "INVALID_PARAMETER_VALUE"
    # the model's input schema requires no column (tests/test_bot_inputs.py): the model names it, first
    assert error["message"].startswith("Missing column(s): volume."), error["message"][:500]


def test_wrong_bar_size_is_refused_with_the_reason(served):
    # Every other 30-minute candle: 1-hour bars, which the model must not score.
    body = _request_body(served["candles"].iloc[::2])
    response = _invoke(served, body)
    assert response.status_code == 400, response.text[:2000]
    error = response.json()
    assert error["error_code"] == "INVALID_PARAMETER_VALUE"
    # the model's own reason reaches the client (models.pyfunc.InvalidCandles is an MlflowException)
    assert "trained on 30min bars" in error["message"]


def test_malformed_json_is_refused(served):
    response = requests.post(
        f"{served['url']}/invocations",
        data=b'{"dataframe_split": ',
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 400
    assert "valid JSON" in response.json()["message"]
