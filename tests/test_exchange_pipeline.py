"""Exchange data end to end: `fetch` fills the cache, the pipeline trains on `exchange:...` candles and
logs a snapshot that rebuilds them exactly; a failing exchange stops the run before anything is logged.

ccxt talks to the bitbank replay server on 127.0.0.1 (``tests.replay``) through the documented
``CRYPTO_SIGNALS_CCXT_CONFIG`` setting, as a user would point it at a mirror: no test touches the internet.
"""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from features.data import candles_sha256, load_candles
from features.exchange import main as fetch_main
from tests.helpers import make_regime_candles, mlflow_cli_env, tiny_config
from tests.replay import ReplayServer
from train.pipeline import main, run_pipeline

DATA = "exchange:bitbank:BTC/JPY:15m"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def exchange(tmp_path, monkeypatch):
    """bitbank's API on 127.0.0.1 with 32 days of learnable 15-minute BTC/JPY candles up to the last
    closed one, a throwaway cache and tracking store."""
    bar = pd.Timedelta(minutes=15)
    last = pd.Timestamp.now(tz="UTC").floor(bar) - bar  # the newest closed candle
    n = 32 * 96
    truth = make_regime_candles(n, seed=11, start=str(last - (n - 1) * bar), freq="15min")
    assert truth.index[-1] == last
    with ReplayServer() as server:
        server.add_series("btc_jpy", "15min", truth)
        base = server.base_url
        config = {"urls": {"api": {"public": base, "private": base, "markets": base}}, "rateLimit": 1}
        monkeypatch.setenv("CRYPTO_SIGNALS_CCXT_CONFIG", json.dumps(config))
        monkeypatch.setenv("CRYPTO_SIGNALS_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.chdir(tmp_path)
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "exchange")
        monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
        monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # another test's run may have set it
        mlflow.set_tracking_uri(uri)
        yield server, truth
        mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_fetch_then_train_on_exchange_candles_and_rebuild_them_from_the_run(exchange, tmp_path, capsys):
    server, truth = exchange
    assert fetch_main(["--data", DATA, "--days", "40"]) == 0  # the weekly job: cache only
    assert "BTC/JPY" in capsys.readouterr().out
    cache = tmp_path / "cache" / "bitbank" / "BTC-JPY" / "15m.parquet"
    assert cache.is_file()
    assert not (tmp_path / "mlflow.db").exists()  # fetching tracks and trains nothing
    # the cache file is itself a candle file: workers tuning one study can all read this fixed copy
    from_file, _ = load_candles(str(cache))
    pd.testing.assert_frame_equal(from_file, truth.loc[from_file.index], check_freq=False)
    fetched = len(server.requests)

    summary = run_pipeline(tiny_config(DATA, tmp_path, "exchange-model", days=40))
    # the pipeline read the cache and asked only for what is new since the fetch (at most today's page)
    asked = [r.path for r in server.requests[fetched:] if "/candlestick/" in r.path]
    assert len(asked) <= 1, asked
    run = MlflowClient().get_run(summary["run_id"])
    tags = run.data.tags
    assert (
        tags["data_source"] == DATA
        and tags["data_exchange"] == "bitbank"
        and tags["data_symbol"] == "BTC/JPY"
    )
    assert summary["model_version"] == "1"

    # the logged snapshot alone rebuilds the exact candles, whatever happens to the cache afterwards
    cache.unlink()
    snapshot = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="data/snapshot.json")
        ).read_text()
    )
    assert (snapshot["exchange"], snapshot["symbol"], snapshot["exchange_timeframe"]) == (
        "bitbank",
        "BTC/JPY",
        "15m",
    )
    rebuilt, info = load_candles(snapshot["uri"])
    assert candles_sha256(rebuilt) == snapshot["candles_sha256"] == tags["data_candles_sha256"]
    assert (rebuilt.index[0].isoformat(), rebuilt.index[-1].isoformat()) == (
        snapshot["start"],
        snapshot["end"],
    )
    pd.testing.assert_frame_equal(rebuilt, truth.loc[rebuilt.index], check_freq=False)
    assert len(rebuilt) == snapshot["rows"] and rebuilt.index[-1] == truth.index[-1]


@pytest.mark.slow
def test_an_exchange_failure_stops_the_run_before_anything_is_logged(exchange, tmp_path, capsys):
    # an unknown pair: refused at once (not retried), saying how to list the exchange's pairs
    assert main(["--data", "exchange:bitbank:XRP/JPY:15m", "--days", "40"]) == 1
    err = capsys.readouterr().err
    assert "no market 'XRP/JPY'" in err and "load_markets" in err
    # the exchange is down (every request fails): a clear error after bounded retries, no partial data
    server, _ = exchange
    server.always_fail()
    assert main(["--data", DATA, "--days", "40"]) == 1
    assert "bitbank" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.db").exists()


@pytest.mark.slow
def test_fetch_entry_point_updates_the_cache(exchange, tmp_path):
    """`mlflow run . -e fetch` as the weekly job runs it: MLproject's parameters reach the command."""
    _, truth = exchange
    env = mlflow_cli_env()
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "fetch", "--env-manager", "local"]
    cmd += ["--experiment-name", "fetch", "-P", f"data={DATA}", "-P", "days=3"]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    cached = pd.read_parquet(tmp_path / "cache" / "bitbank" / "BTC-JPY" / "15m.parquet")
    cached = cached.set_index("timestamp")
    assert cached.index[-1] == truth.index[-1]
    span = cached.index[-1] - cached.index[0]  # days=3 reached the command
    assert abs(span - pd.Timedelta(days=3)) <= pd.Timedelta(hours=1), span
    pd.testing.assert_frame_equal(cached, truth.loc[cached.index], check_freq=False, check_index_type=False)


@pytest.mark.parametrize(
    "source",
    [
        DATA,
        "runs:/0123456789abcdef/data/candles.parquet",
        "mlflow-artifacts:/1/abc/artifacts/data/candles.parquet",
    ],
)
def test_every_non_path_source_load_candles_accepts_is_logged_as_a_candles_dataset(
    tmp_path, monkeypatch, source
):
    from models.tracking import log_dataset

    for var in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run(experiment_id=mlflow.set_experiment("datasets").experiment_id) as run:
            log_dataset(make_regime_candles(50, seed=1), "candles", source, "candles")
        (logged,) = MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
        assert logged.dataset.source_type == "candles" and json.loads(logged.dataset.source) == {
            "uri": source
        }
    finally:
        mlflow.set_tracking_uri(None)
