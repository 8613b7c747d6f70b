"""What trading bots send the production model, over Python and HTTP, and the process they load it in.

A tiny model trained on planted-signal candles into a SQLite store of its own and promoted (conftest's
``tiny_promoted``, shared with tests/test_serving.py and others). Then:

* every timestamp form a bot produces (naive UTC or timezone-aware datetimes, ISO 8601 strings with and
  without an offset, epoch seconds and milliseconds as ccxt returns them) gives the same signals as
  naive UTC datetimes, through ``mlflow.pyfunc.load_model(...).predict`` and through one
  ``mlflow models serve`` process (``dataframe_split`` and ``dataframe_records`` JSON);
* bad input is refused with a message that starts with the reason, on one line (no dump of the data);
* the model loads and predicts in a process whose own ``features``, ``models``, ``train`` and
  ``evaluation`` packages come first on ``sys.path``, and leaves them the ones the bot imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests

from models.registry import PRODUCTION
from tests.helpers import TINY_MODEL, make_flow_signal_candles, use_store
from tests.servers import free_port, stop_process, wait_http

pytestmark = pytest.mark.slow

MODEL_NAME = TINY_MODEL
MODEL_URI = f"models:/{MODEL_NAME}@{PRODUCTION}"
COLUMNS = ["timestamp", "open", "high", "low", "close", "volume"]
SAME = ["signal", "label", "ready", "action", "position"]  # must match exactly across input forms
PROBA = ["p_sell", "p_hold", "p_buy"]
N_REQUEST = 300
TOKYO = "Asia/Tokyo"


def _iso(ts: pd.Series, fmt: str = "%Y-%m-%dT%H:%M:%S", suffix: str = "") -> list[str]:
    return [f"{t}{suffix}" for t in ts.dt.strftime(fmt)]


def _forms(naive: pd.Series) -> dict[str, object]:
    """The `timestamp` column of one window of candles in every accepted form (naive = UTC)."""
    utc = naive.dt.tz_localize("UTC")
    tokyo = utc.dt.tz_convert(TOKYO)
    return {
        "aware_utc": utc,
        "aware_tokyo": tokyo,
        "iso_naive": _iso(naive),
        "iso_space_naive": _iso(naive, "%Y-%m-%d %H:%M:%S"),
        "iso_z": _iso(naive, suffix="Z"),
        "iso_utc_offset": _iso(naive, suffix="+00:00"),
        "iso_tokyo_offset": [t.isoformat() for t in tokyo],  # "2024-03-03T20:30:00+09:00"
        "epoch_s": (naive.astype("datetime64[s]").astype("int64")).tolist(),
        "epoch_ms": (naive.astype("datetime64[ms]").astype("int64")).tolist(),  # ccxt's fetch_ohlcv
    }


# Forms that JSON can carry (a datetime object travels as one of the strings).
HTTP_FORMS = [
    "iso_naive", "iso_space_naive", "iso_z", "iso_utc_offset", "iso_tokyo_offset", "epoch_s", "epoch_ms",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tiny_promoted, tmp_path_factory):
    """The shared tiny promoted model (conftest's ``tiny_promoted``), its store set for the module; yield
    the store, a directory of the module's own and a request window."""
    tmp = tmp_path_factory.mktemp("bot-inputs")
    assert tiny_promoted.summary["promoted"], tiny_promoted.summary["gate"]
    with use_store(tiny_promoted.uri, tmp, tiny_promoted.experiment) as (mp, uri):
        candles = make_flow_signal_candles(3000, seed=11)  # what it was trained on
        request = candles.iloc[-N_REQUEST:].reset_index()
        request["timestamp"] = request["timestamp"].dt.tz_localize(None)
        model = mlflow.pyfunc.load_model(MODEL_URI)
        expected = model.predict(request)
        yield {"tmp": tmp, "uri": uri, "model": model, "request": request, "expected": expected}


def _assert_same_signals(got: pd.DataFrame, want: pd.DataFrame, form: str) -> None:
    assert len(got) == len(want), form
    for col in SAME:
        assert got[col].tolist() == want[col].tolist(), (form, col)
    np.testing.assert_allclose(got[PROBA].to_numpy(float), want[PROBA].to_numpy(float), rtol=0, atol=1e-9)


def test_the_logged_input_schema_takes_any_candle_column(trained):
    schema = trained["model"].metadata.get_input_schema()
    assert schema.input_names() == COLUMNS
    assert all(str(t) == "Any" for t in schema.input_types()) and schema.required_input_names() == []


def test_every_timestamp_form_gives_the_same_signals_in_python(trained):
    model, request, expected = trained["model"], trained["request"], trained["expected"]
    assert expected["ready"].iloc[-1] and expected["ready"].sum() > N_REQUEST // 2
    assert str(expected["timestamp"].dtype).startswith("datetime64") and expected["timestamp"].dt.tz is None
    assert expected["timestamp"].tolist() == request["timestamp"].tolist()
    for form, stamps in _forms(request["timestamp"]).items():
        out = model.predict(request.assign(timestamp=stamps))
        # the output timestamps are naive UTC datetimes whatever the input form
        assert out["timestamp"].dt.tz is None, form
        assert out["timestamp"].tolist() == expected["timestamp"].tolist(), form
        _assert_same_signals(out, expected, form)


def test_a_csv_with_integer_volume_and_epoch_ms_is_read_as_is(trained, tmp_path):
    request, expected = trained["request"], trained["expected"]
    frame = request.assign(timestamp=_forms(request["timestamp"])["epoch_ms"])
    frame.to_csv(tmp_path / "candles.csv", index=False)
    out = trained["model"].predict(pd.read_csv(tmp_path / "candles.csv"))
    _assert_same_signals(out, expected, "csv")
    # integer volumes (int64 in pandas) are accepted too: a typed schema would refuse int64 -> double
    as_int = request.assign(volume=request["volume"].round().astype("int64"))
    assert trained["model"].predict(as_int)["ready"].iloc[-1]


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        (lambda f: f.assign(timestamp=["yesterday"] * len(f)), f"{N_REQUEST} unparseable timestamp(s)"),
        (lambda f: f.drop(columns="volume"), "Missing column(s): volume"),
        (lambda f: f.rename(columns=str.title), "Missing columns: the model takes candles with columns"),
        (lambda f: f.iloc[::-1], "Timestamps are not sorted"),
        (lambda f: f.assign(close=["x"] * len(f)), "Column 'close' (dtype str) is not numeric"),
    ],
    ids=["unparseable", "missing", "capitalised", "unsorted", "text-prices"],
)
def test_bad_candles_are_refused_with_the_reason_first_in_python(trained, breakage, reason):
    with pytest.raises(mlflow.exceptions.MlflowException) as exc:
        trained["model"].predict(breakage(trained["request"]))
    _assert_reason_first(exc.value.message, reason)


def _assert_reason_first(message: str, reason: str) -> None:
    assert message.startswith(reason), message[:500]
    assert "\n" not in message and len(message) < 1000, message[:2000]


@pytest.fixture(scope="module")
def server(trained):
    """One `mlflow models serve` process for the module, in a directory without this repository."""
    tmp = trained["tmp"]
    port = free_port()
    log = tmp / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = trained["uri"]
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # uvicorn by name
    cmd = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", MODEL_URI, "--env-manager", "local",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    cwd = tmp / "serve-cwd"
    cwd.mkdir()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/ping", timeout_s=120, proc=proc, log_path=log)
        yield url
    finally:
        stop_process(proc)


def _post(url: str, body: dict) -> requests.Response:
    return requests.post(f"{url}/invocations", json=body, timeout=120)


def _split(frame: pd.DataFrame) -> dict:
    # to_json keeps numbers as numbers and the timestamp strings / epoch ints as given
    return {"dataframe_split": json.loads(frame[COLUMNS].to_json(orient="split", index=False))}


def _records(frame: pd.DataFrame) -> dict:
    return {"dataframe_records": json.loads(frame[COLUMNS].to_json(orient="records"))}


def test_every_timestamp_form_gives_the_same_signals_over_http(trained, server):
    request, expected = trained["request"], trained["expected"]
    want_stamps = [t.isoformat() for t in expected["timestamp"]]  # naive UTC ISO strings out
    forms = _forms(request["timestamp"])
    for form in HTTP_FORMS:
        frame = request.assign(timestamp=forms[form])
        for orient, body in (("split", _split(frame)), ("records", _records(frame))):
            response = _post(server, body)
            assert response.status_code == 200, (form, orient, response.text[:1000])
            out = pd.DataFrame.from_records(response.json()["predictions"])
            assert out["timestamp"].tolist() == want_stamps, (form, orient)
            _assert_same_signals(out, expected, f"{form}/{orient}")


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        (lambda f: f.assign(timestamp=["yesterday"] * len(f)), f"{N_REQUEST} unparseable timestamp(s)"),
        (lambda f: f.assign(timestamp=[1.5] * len(f)), f"{N_REQUEST} numeric timestamp(s)"),
        (lambda f: f.drop(columns="volume"), "Missing column(s): volume"),
        (lambda f: f.iloc[::2], "these candles are 1h bars but the model was trained on 30min bars"),
    ],
    ids=["unparseable", "not-epoch", "missing", "bar-size"],
)
def test_bad_input_over_http_is_a_400_with_the_reason_first(trained, server, breakage, reason):
    frame = breakage(trained["request"].assign(timestamp=_forms(trained["request"]["timestamp"])["iso_z"]))
    columns = [c for c in COLUMNS if c in frame.columns]
    body = {"dataframe_split": json.loads(frame[columns].to_json(orient="split", index=False))}
    response = _post(server, body)
    assert response.status_code == 400, response.text[:1000]
    error = response.json()
    assert error["error_code"] == "INVALID_PARAMETER_VALUE"
    _assert_reason_first(error["message"], reason)


DECOYS = {
    # Packages of a bot that happen to share the project's names: the bot imports these, the model
    # must neither import them (each submodule raises) nor replace them in sys.modules.
    "features/__init__.py": "DECOY = True\ndef normalize_candles(*a):\n    raise RuntimeError('decoy')\n",
    "features/candles.py": "raise ImportError('the model imported the bot\\'s features.candles')\n",
    "features/context.py": "raise ImportError('the model imported the bot\\'s features.context')\n",
    "models/__init__.py": "DECOY = True\nSignalModel = None\n",
    "models/pyfunc.py": "raise ImportError('the model imported the bot\\'s models.pyfunc')\n",
    "models/ensemble.py": "raise ImportError('the model imported the bot\\'s models.ensemble')\n",
    "models/base.py": "raise ImportError('the model imported the bot\\'s models.base')\n",
    "models/policy.py": "raise ImportError('the model imported the bot\\'s models.policy')\n",
    "train/__init__.py": "DECOY = True\n",
    "train/split.py": "raise ImportError('the model imported the bot\\'s train.split')\n",
    "evaluation/__init__.py": "DECOY = True\n",
}


def test_the_model_leaves_a_bots_own_features_and_models_packages_alone(trained, tmp_path):
    decoys = tmp_path / "bot"
    for rel, text in DECOYS.items():
        (decoys / rel).parent.mkdir(parents=True, exist_ok=True)
        (decoys / rel).write_text(text)
    csv = tmp_path / "request.csv"
    trained["request"].to_csv(csv, index=False)
    code = textwrap.dedent(f"""
        import json, sys
        import features, models, train, evaluation  # the bot's own packages, first on sys.path
        import pandas as pd, mlflow
        assert sys.path[1] == {str(decoys)!r}, sys.path[:3]
        model = mlflow.pyfunc.load_model({MODEL_URI!r})
        out = model.predict(pd.read_csv({str(csv)!r}))
        import models
        assert models.DECOY is True and features.DECOY is True and train.DECOY is True
        assert evaluation.DECOY is True and models.SignalModel is None
        names = ("features", "models", "train", "evaluation")
        mods = sorted(m for m in sys.modules if m.split(".")[0] in names)
        on_path = [p for p in sys.path if p.rstrip("/").endswith(("/features", "/models", "/train", "/code"))]
        print(json.dumps({{"modules": mods, "on_path": on_path, "signal": out["signal"].tolist(),
                          "action": out["action"].tolist(), "ready": out["ready"].tolist()}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(decoys)
    env["MLFLOW_TRACKING_URI"] = trained["uri"]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["modules"] == ["evaluation", "features", "models", "train"]  # the decoy packages only
    assert got["on_path"] == []
    expected = trained["expected"]
    assert got["signal"] == expected["signal"].tolist()
    assert got["action"] == expected["action"].tolist() and got["ready"] == expected["ready"].tolist()
