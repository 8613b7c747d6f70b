"""Distributed tuning: `python -m train.tune` workers in separate processes fill one Optuna study in a
real PostgreSQL database (a throwaway one per test), a SIGKILLed worker loses at most the trial in
flight, and the pipeline afterwards uses the finished study."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import make_regime_candles, tiny_config, write_csv
from tests.servers import postgres_available, throwaway_database
from train.pipeline import run_pipeline

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@pytest.fixture
def pg_storage():
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    with throwaway_database("cs_optuna") as url:
        yield url.replace("postgresql+psycopg2://", "postgresql://")  # as a user writes it


@pytest.fixture
def candles_csv(tmp_path):
    return write_csv(make_regime_candles(2600, seed=4), tmp_path / "candles.csv")


def _tune(candles_csv, storage, *extra, n_trials=6, n_jobs=1):
    cmd = [
        sys.executable,
        "-m",
        "train.tune",
        "--model",
        "lightgbm",
        "--data",
        candles_csv,
        "--n-folds",
        "3",
        "--n-trials",
        str(n_trials),
        "--timeout",
        "0",
        "--n-jobs",
        str(n_jobs),
        "--optuna-storage",
        storage,
        *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _only_study(storage):
    url = storage.replace("postgresql://", "postgresql+psycopg2://")
    (summary,) = optuna.get_all_study_summaries(url)
    return optuna.load_study(study_name=summary.study_name, storage=url)


def test_two_workers_fill_one_study_without_duplicates(pg_storage, candles_csv):
    workers = [_tune(candles_csv, pg_storage, "--worker-id", str(k)) for k in range(2)]
    for proc in workers:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    study = _only_study(pg_storage)
    finished = [t for t in study.trials if t.state in FINISHED]
    # the study is full; a worker may finish the trial it had started when the other filled it
    assert 6 <= len(finished) <= 7
    assert len({t.number for t in study.trials}) == len(study.trials)
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params)) == len(params)  # the two samplers did not propose the same trials


def test_killed_worker_loses_at_most_the_trial_in_flight(pg_storage, candles_csv):
    proc = _tune(candles_csv, pg_storage, "--heartbeat", "1", n_trials=200)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until it has finished a couple of trials
        try:
            if sum(t.state in FINISHED for t in _only_study(pg_storage).trials) >= 2:
                break
        except (ValueError, KeyError):  # no study yet, or only check_storage's, deleted while we looked
            pass
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = _only_study(pg_storage).trials
    done_before = sum(t.state in FINISHED for t in before)
    assert done_before >= 2 and len(before) - done_before <= 1
    time.sleep(5)  # past the grace period of four 1-second heartbeats
    rerun = _tune(candles_csv, pg_storage, "--heartbeat", "1", n_trials=done_before + 2)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    after = _only_study(pg_storage).trials
    assert sum(t.state in FINISHED for t in after) == done_before + 2  # resumed, not restarted
    assert [t.params for t in after[:done_before]] == [t.params for t in before[:done_before]]
    # the trial that was running when the worker died is marked failed, not left running
    assert not [t for t in after if t.state == optuna.trial.TrialState.RUNNING]
    assert sum(t.state == optuna.trial.TrialState.FAIL for t in after) == len(before) - done_before
    # ... and run again with its parameters (Optuna's RetryHeartbeatStaleTrialCallback), counted once
    retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    reruns = [t for t in after if retried(t) is not None]
    assert [(retried(t), t.params) for t in reruns] == [(t.number, t.params) for t in before[done_before:]]
    assert all(t.state in FINISHED for t in reruns)


def test_pipeline_uses_the_study_the_workers_filled(pg_storage, candles_csv, tmp_path, monkeypatch):
    proc = _tune(candles_csv, pg_storage, "--processes", "2", n_trials=4, n_jobs=0)  # 0: share the cores
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    # the cores are shared between the local workers, not oversubscribed
    assert f"2 worker process(es), {max(1, (os.cpu_count() or 1) // 2)} thread(s) each" in out
    n_before = len(_only_study(pg_storage).trials)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    summary = run_pipeline(
        tiny_config(candles_csv, tmp_path, "dist-model", n_trials=4, optuna_storage=pg_storage)
    )
    assert len(_only_study(pg_storage).trials) == n_before  # nothing re-tuned: the study was already full
    tune_run = MlflowClient().search_runs(
        [MlflowClient().get_run(summary["run_id"]).info.experiment_id], "tags.step = 'tune'"
    )[0]
    assert tune_run.data.tags["optuna_study"] == _only_study(pg_storage).study_name
    assert tune_run.data.metrics["n_trials_complete"] + tune_run.data.metrics["n_trials_pruned"] >= 4


def test_interrupted_pipeline_leaves_no_running_runs(tmp_path, candles_csv):
    """SIGTERM in the middle of tuning: the pipeline run and its open child run are ended (FAILED), not
    left RUNNING, and the finished trials stay in the study."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_NAME="interrupt")
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [
        sys.executable,
        "-m",
        "train.pipeline",
        "--data",
        candles_csv,
        "--models",
        "lightgbm",
        "--n-folds",
        "3",
        "--n-trials",
        "200",
        "--timeout",
        "0",
        "--n-jobs",
        "1",
        "--optuna-storage",
        storage,
    ]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    finished = 0
    while time.monotonic() < deadline and finished < 2:
        time.sleep(0.5)
        try:
            (summary,) = optuna.get_all_study_summaries(storage)
            finished = sum(
                t.state in FINISHED
                for t in optuna.load_study(study_name=summary.study_name, storage=storage).trials
            )
        except (ValueError, KeyError, Exception):  # storage or study not created yet
            continue
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("interrupt").experiment_id])
    assert {r.data.tags["mlflow.runName"].split()[0] for r in runs} == {"pipeline", "tune-lightgbm"}
    assert {r.info.status for r in runs} == {"FAILED"}  # none left RUNNING
    assert finished >= 2
