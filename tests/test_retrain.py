"""The weekly job, ``train.retrain``: skip or train, the lock between concurrent retrains, the exchange
refresh, failures, and the deployment examples. Real pipeline runs only where the test is about training
(two tiny ones); elsewhere a fake pipeline that resumes the run the retrain prepared, as the real one does."""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from features.data import DataError
from features.exchange_candles import read_cache
from models import tracking
from models.registry import HEARTBEAT_TAG, PRODUCTION, LockBusy
from tests.helpers import make_flow_signal_candles, make_regime_candles, tiny_config, write_csv
from tests.replay import ReplayServer
from train import retrain as rt
from train.config import PipelineConfig, build_parser

REPO = Path(__file__).resolve().parents[1]
NAME = "retrain-model"


def _events(hook) -> list[str]:
    return [json.loads(r["body"])["event"] for r in hook.requests]


def _runs(tag_filter: str = "") -> list:
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tests")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], tag_filter, order_by=["attributes.start_time ASC"])


def _locks() -> list[str]:
    return [m.name for m in MlflowClient().search_registered_models() if m.name.endswith(rt.LOCK_SUFFIX)]


def fake_pipeline(cfg: PipelineConfig) -> dict:
    """What the retrain needs from run_pipeline, resuming the run it prepared (as the real one does)."""
    with mlflow.start_run() as run:
        mlflow.set_tag("step", "pipeline")
        return {
            "run_id": run.info.run_id,
            "model_version": "7",
            "promoted": False,
            "production_version": None,
        }


# ------------------------------------------------------------------------------------------ options


def test_options_are_the_pipeline_options_plus_three_and_the_mlproject_entry_passes_them_all():
    cfg, opts, level = rt.parse_args(["--n-trials", "3", "--min-new-candles", "100.0", "--refresh", "false"])
    assert cfg == PipelineConfig(n_trials=3) and level == "INFO"
    assert opts == rt.RetrainOptions(min_new_candles=100, lock_timeout=0.0, refresh=False)
    assert rt.parse_args([])[1] == rt.RetrainOptions(min_new_candles=None, lock_timeout=0.0, refresh=True)
    with pytest.raises(SystemExit):
        rt.parse_args(["--min-new-candles", "-1"])

    entry = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["retrain"]
    pipeline_options = {a.dest for a in build_parser().options}  # --help, --version, --config aside
    own = {"min_new_candles", "lock_timeout", "refresh", "on_degraded", "config"}
    assert set(entry["parameters"]) == pipeline_options | own
    assert entry["command"].startswith("python -m train.retrain")
    for param in entry["parameters"]:  # MLflow substitutes these; each must reach its CLI option
        assert f"--{param.replace('_', '-')} {{{param}}}" in entry["command"]
    assert entry["parameters"]["min_new_candles"]["default"] == "auto"


# ------------------------------------------------------------------------------ train, then skip


@pytest.mark.slow
def test_trains_and_promotes_then_skips_when_nothing_new_arrived_then_trains_on_new_candles(
    store, hook, monkeypatch
):
    client = MlflowClient()
    candles = make_flow_signal_candles(3300, seed=11)
    path = store / "candles.csv"
    cfg = tiny_config(str(path), store, NAME, horizon=3)
    write_csv(candles.iloc[:3000], path)

    # no production yet: train, and the pipeline promotes what passes the gate
    first = rt.retrain(cfg, rt.RetrainOptions())
    assert first.status == "trained" and first.exit_code == 0, first.message
    assert first.summary["promoted"], first.summary["gate"]
    assert str(client.get_model_version_by_alias(NAME, PRODUCTION).version) == "1"
    tags = client.get_run(first.summary["run_id"]).data.tags
    assert tags["retrain"] == "true" and tags["retrain_outcome"] == "trained" and tags["step"] == "pipeline"
    assert "no production version yet" in tags["retrain_reason"]
    assert float(tags["retrain_lock_wait_seconds"]) < 5
    assert _events(hook) == ["gate_passed", "promotion", "retrain_done"]

    # the same file again: no candle after the production run's data_end, so skip (exit 0), one small run
    second = rt.retrain(cfg, rt.RetrainOptions())
    assert (second.status, second.exit_code) == ("skipped", 0)
    assert (
        second.message.startswith("skipped: 0 new 30min candle(s) after") and "168 needed" in second.message
    )
    (skip,) = _runs("tags.step = 'retrain'")
    assert skip.data.tags["retrain_outcome"] == "skipped" and skip.data.tags["retrain_new_candles"] == "0"
    assert skip.info.status == "FINISHED" and "retrain skipped" in skip.data.tags["mlflow.note.content"]
    assert _events(hook)[-1] == "retrain_skipped"
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1  # nothing trained

    # 300 new bars (> 168 = half a week of 30-minute bars): train again (the pipeline is faked here:
    # what it does with a champion is test_pipeline's and test_lifecycle_e2e's business)
    write_csv(candles, path)
    trained = []
    monkeypatch.setattr(rt, "run_pipeline", lambda cfg: trained.append(cfg) or fake_pipeline(cfg))
    third = rt.retrain(cfg, rt.RetrainOptions())
    assert third.status == "trained" and trained == [cfg], third.message
    assert third.summary["new_candles"] == 300
    tags = client.get_run(third.summary["run_id"]).data.tags
    assert (tags["retrain_new_candles"], tags["retrain_production_before"]) == ("300", "1")
    assert tags["retrain_min_new_candles"] == "168" and "300 new 30min candle(s)" in tags["retrain_reason"]
    assert _events(hook)[-1] == "retrain_done"
    # a smaller threshold than what arrived skips again; min_new_candles=0 always trains
    assert rt.retrain(cfg, rt.RetrainOptions(min_new_candles=301)).status == "skipped"
    assert rt.retrain(cfg, rt.RetrainOptions(min_new_candles=0)).status == "trained"
    assert not _locks()


# ------------------------------------------------------------------------------------------ the lock

WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from train import retrain

    log, ready, go, argv = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]

    def slow_pipeline(cfg):
        with log.open("a") as f:
            f.write(f"start {time.time()}\\n")
        time.sleep(2.0)
        with log.open("a") as f:
            f.write(f"end {time.time()}\\n")
        return {"model_version": "1", "promoted": False, "production_version": None}

    retrain.run_pipeline = slow_pipeline
    retrain.tracking.check_reachable()  # the store's first look before the start line, not after
    ready.touch()
    while not go.exists():  # all workers start at once
        time.sleep(0.01)
    sys.exit(retrain.main(argv))
""")


@pytest.mark.slow
def test_two_simultaneous_retrains_do_not_both_train(store):
    base = ["--model-name", NAME, "--optuna-storage", f"sqlite:///{store}/optuna.db"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    go = store / "go"
    procs = []
    for i in range(2):
        cmd = [sys.executable, "-c", WORKER, str(store / f"log{i}"), str(store / f"ready{i}"), str(go), *base]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    deadline = time.monotonic() + 60
    while not all((store / f"ready{i}").exists() for i in range(2)) and time.monotonic() < deadline:
        time.sleep(0.02)
    go.touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, rt.EXIT_BUSY], [err[-2000:] for _, err in outputs]
    trained = [i for i in range(2) if (store / f"log{i}").exists()]
    assert len(trained) == 1  # exactly one ran the pipeline
    (out, err), code = next((o, p.returncode) for o, p in zip(outputs, procs, strict=True) if p.returncode)
    assert "another retrain of 'retrain-model' is running" in err
    assert json.loads(out.strip().splitlines()[-1])["retrain"] == "busy"
    (busy,) = _runs("tags.retrain_outcome = 'busy'")
    assert busy.data.tags["step"] == "retrain"
    assert len(_runs("tags.retrain_outcome = 'trained'")) == 1
    assert not _locks()


def test_a_retrain_with_a_lock_timeout_waits_for_the_holder_then_trains(store, monkeypatch):
    client = MlflowClient()
    holding, released = threading.Event(), []

    def hold_for_a_second():
        with rt.retrain_lock(NAME, client):
            holding.set()
            time.sleep(1.0)
        released.append(time.monotonic())

    def pipeline(cfg):
        assert released, "trained while another retrain held the lock"
        return fake_pipeline(cfg)

    monkeypatch.setattr(rt, "run_pipeline", pipeline)
    holder = threading.Thread(target=hold_for_a_second)
    holder.start()
    assert holding.wait(30)
    outcome = rt.retrain(PipelineConfig(model_name=NAME), rt.RetrainOptions(lock_timeout=30))
    holder.join()
    assert outcome.status == "trained", outcome.message
    tags = client.get_run(outcome.summary["run_id"]).data.tags
    assert 0.3 < float(tags["retrain_lock_wait_seconds"]) < 30


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lock_left_by_a_dead_process_is_taken_over(store, monkeypatch):
    client = MlflowClient()
    dead = {
        tracking.HOST_TAG: socket.gethostname(),
        tracking.PID_TAG: str(_dead_pid()),
        tracking.PID_START_TAG: f"{tracking._machine()}/1",
        HEARTBEAT_TAG: pd.Timestamp.now(tz="UTC").isoformat(),  # fresh: the dead pid decides
        "owner": "someone pid 1",
    }
    client.create_registered_model(f"{NAME}{rt.LOCK_SUFFIX}", tags=dead)
    monkeypatch.setattr(rt, "run_pipeline", fake_pipeline)
    outcome = rt.retrain(PipelineConfig(model_name=NAME), rt.RetrainOptions())
    assert outcome.status == "trained", outcome.message
    tags = client.get_run(outcome.summary["run_id"]).data.tags
    assert "is gone" in tags["retrain_lock_broken"]
    assert not _locks()


def test_a_live_lock_elsewhere_is_busy_until_its_heartbeat_is_old(store):
    client = MlflowClient()
    now = pd.Timestamp.now(tz="UTC")
    lock = f"{NAME}{rt.LOCK_SUFFIX}"
    elsewhere = {
        tracking.HOST_TAG: "another-host",
        tracking.PID_TAG: "4242",
        "owner": "ci@another-host pid 4242",
    }
    client.create_registered_model(lock, tags=elsewhere | {HEARTBEAT_TAG: now.isoformat()})
    start = time.monotonic()
    with pytest.raises(LockBusy, match="another retrain of 'retrain-model' is running"):
        with rt.retrain_lock(NAME, client, timeout=0.3):
            pass
    assert time.monotonic() - start < 5
    old = (now - pd.Timedelta(seconds=rt.LOCK_STALE_SECONDS + 60)).isoformat()
    client.set_registered_model_tag(lock, HEARTBEAT_TAG, old)
    with rt.retrain_lock(NAME, client) as hold:
        assert "no heartbeat from ci@another-host pid 4242" in hold.broke
    assert not _locks()


def test_the_holder_refreshes_its_heartbeat(store):
    client = MlflowClient()
    with rt.retrain_lock(NAME, client, heartbeat=0.1) as hold:
        first = client.get_registered_model(hold.name).tags[HEARTBEAT_TAG]
        deadline = time.monotonic() + 10
        while client.get_registered_model(hold.name).tags[HEARTBEAT_TAG] == first:
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.05)
        assert rt.lock_stale(client.get_registered_model(hold.name)) is None  # this live process
        assert not hold.lost.is_set()
    assert not _locks()


# -------------------------------------------------------------------------- refresh and failures


def test_exchange_data_is_refreshed_before_deciding(store, monkeypatch):
    bar = pd.Timedelta(minutes=15)
    last = pd.Timestamp.now(tz="UTC").floor(bar) - bar
    truth = make_regime_candles(3 * 96, seed=3, start=str(last - (3 * 96 - 1) * bar), freq="15min")
    cache = store / "cache" / "bitbank" / "BTC-JPY" / "15m.parquet"
    monkeypatch.setenv("CRYPTO_SIGNALS_CACHE_DIR", str(store / "cache"))
    seen = []

    def pipeline(cfg):
        seen.append(read_cache(cache).index[-1])  # the cache was brought up to date first
        return fake_pipeline(cfg)

    monkeypatch.setattr(rt, "run_pipeline", pipeline)
    cfg = PipelineConfig(data="exchange:bitbank:BTC/JPY:15m", days=3, model_name=NAME)
    # refresh=false with no cache: a clear failure, nothing fetched
    failed = rt.retrain(cfg, rt.RetrainOptions(refresh=False))
    assert failed.status == "failed" and "has no cache" in failed.message and not cache.exists()
    with ReplayServer() as server:
        server.add_series("btc_jpy", "15min", truth)
        config = {"urls": {"api": {"public": server.base_url, "markets": server.base_url}}, "rateLimit": 1}
        monkeypatch.setenv("CRYPTO_SIGNALS_CCXT_CONFIG", json.dumps(config))
        outcome = rt.retrain(cfg, rt.RetrainOptions())
    assert outcome.status == "trained", outcome.message
    assert seen == [last]
    tags = MlflowClient().get_run(outcome.summary["run_id"]).data.tags
    assert re.match(r"exchange:bitbank:BTC/JPY:15m: 28\d new candle\(s\)", tags["retrain_refresh"])


def test_a_failure_exits_non_zero_with_one_line_and_a_notification(store, hook, monkeypatch, capsys):
    def broken(cfg):
        with mlflow.start_run():
            raise DataError("the exchange answered nonsense\nat length")

    monkeypatch.setattr(rt, "run_pipeline", broken)
    assert rt.main(["--model-name", NAME, "--optuna-storage", f"sqlite:///{store}/optuna.db"]) == 1
    err = capsys.readouterr().err
    assert "error: the exchange answered nonsense at length" in err and "Traceback" not in err
    assert _events(hook) == ["retrain_failed"]
    assert "the exchange answered nonsense" in json.loads(hook.requests[0]["body"])["content"]
    (run,) = _runs()
    assert run.info.status == "FAILED" and run.data.tags["retrain_outcome"] == "failed"
    assert "nonsense" in run.data.tags["retrain_error"]
    assert not _locks()


def test_a_busy_lock_inside_the_pipeline_is_a_failure_and_a_dry_run_records_nothing(store, monkeypatch):
    def promotion_lock_busy(cfg):
        raise LockBusy("another promotion or rollback of 'retrain-model' is in progress")

    monkeypatch.setattr(rt, "run_pipeline", promotion_lock_busy)
    outcome = rt.retrain(PipelineConfig(model_name=NAME), rt.RetrainOptions())
    assert (outcome.status, outcome.exit_code) == ("failed", 1)  # not 75: the retrain lock was ours
    (run,) = _runs()
    assert run.data.tags["retrain_outcome"] == "failed" and run.info.status == "FAILED"

    planned = []
    monkeypatch.setattr(rt, "run_pipeline", planned.append)
    outcome = rt.retrain(PipelineConfig(model_name=NAME, dry_run=True), rt.RetrainOptions())
    assert outcome.status == "dry_run" and outcome.exit_code == 0 and len(planned) == 1
    assert len(_runs()) == 1 and not _locks()


def test_an_unreachable_tracking_store_fails_in_seconds_and_notifies(hook, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri("http://127.0.0.1:9")
    try:
        start = time.monotonic()
        assert rt.main(["--model-name", NAME]) == 1
        assert time.monotonic() - start < 30
    finally:
        mlflow.set_tracking_uri(None)
    assert "cannot reach the MLflow tracking store" in capsys.readouterr().err
    assert _events(hook) == ["retrain_failed"]


# ---------------------------------------------------------------------------------- deployment files


def test_deployment_examples_parse_and_run_the_retrain():
    deploy = REPO / "docs" / "deploy"
    workflow = yaml.safe_load((deploy / "retrain.yml").read_text())
    assert "schedule" in workflow[True]  # YAML 1.1 reads the key `on` as True
    steps = [s.get("run", "") for job in workflow["jobs"].values() for s in job["steps"]]
    assert any("python -m train.retrain" in s for s in steps)
    env = json.dumps(workflow)
    for secret in ("MLFLOW_TRACKING_URI", "CRYPTO_SIGNALS_WEBHOOK_URL"):
        assert f"secrets.{secret}" in env

    for unit, section in (
        ("crypto-signals-retrain.service", "Service"),
        ("crypto-signals-retrain.timer", "Timer"),
    ):
        text = (deploy / unit).read_text()
        sections = {line.strip("[]") for line in text.splitlines() if line.startswith("[")}
        assert section in sections and "Unit" in sections
    service = (deploy / "crypto-signals-retrain.service").read_text()
    exec_start = next(line for line in service.splitlines() if line.startswith("ExecStart="))
    assert "python -m train.retrain" in exec_start or "mlflow run . -e retrain" in exec_start
    assert "SuccessExitStatus=75" in service  # a busy lock is not a failed unit
    timer = (deploy / "crypto-signals-retrain.timer").read_text()
    assert "OnCalendar=" in timer and "Persistent=true" in timer

    # The retrain and its schedules are documented in docs/operations.md, which the README links to
    # (before the page on tuning with several workers).
    readme = (REPO / "README.md").read_text()
    assert readme.index("(docs/operations.md)") < readme.index("(docs/distributed-tuning.md)")
    page = (REPO / "docs" / "operations.md").read_text()
    section = page.split("## The weekly job: retrain", 1)[1].split("\n## ", 1)[0]
    for needle in ("crontab", "OnCalendar", "schedule:", "MLFLOW_TRACKING_URI", "postgresql", "75"):
        assert needle in section, needle
    assert "python -m train.retrain --config docs/deploy/retrain.toml" in section
