"""Runs and trials left RUNNING by a process killed outright (SIGKILL, OOM) are closed by the next run.

The pipeline's MLflow runs record their process (``host``, ``pid``, ``pid_start``) and a ``heartbeat``;
the next pipeline closes as KILLED the ones whose process is gone (on this machine) or whose heartbeat is
too old (from another host). Optuna trials record their process too, so a rerun fails a killed trial at
once, even when it finds the study already full, and never counts it as finished.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient

from models import tracking
from tests.helpers import make_flow_signal_candles, write_csv
from train.tune import OWNER, fail_stale_trials, make_storage, record_owner

REPO = Path(__file__).resolve().parents[1]
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _iso(seconds_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds_ago)).isoformat(timespec="seconds")


def test_runs_of_dead_processes_are_closed_and_live_ones_left(store):
    client = MlflowClient()
    exp = client.create_experiment("tests")
    me = tracking.owner_tags()
    dead = {**me, "pid": str(_dead_pid())}  # this host; the pid's process is gone
    reused = {**me, "pid_start": me["pid_start"].rsplit("/", 1)[0] + "/1"}  # a live pid, another process
    elsewhere = {"host": "another-host", "pid": "1", "pid_start": "x/y/1"}
    two_days_ago, hours_ago = (int((time.time() - s) * 1000) for s in (2 * 86400, 3 * 3600))
    cases = {  # name: (tags, start time, closed?)
        "dead": ({"step": "pipeline", **dead, "heartbeat": _iso(5)}, None, True),
        "reused pid": ({"step": "tune", **reused, "heartbeat": _iso(5)}, None, True),
        "alive": ({"step": "ensemble", **me, "heartbeat": _iso(5)}, None, False),
        "silent host": ({"step": "pipeline", **elsewhere, "heartbeat": _iso(7200)}, None, True),
        "beating host": ({"step": "pipeline", **elsewhere, "heartbeat": _iso(60)}, None, False),
        "not ours": ({"step": "promote", **dead, "heartbeat": _iso(5)}, None, False),
        "legacy old": ({"step": "pipeline"}, two_days_ago, True),
        "legacy recent": ({"step": "tune"}, None, False),
    }
    ids = {}
    for name, (tags, start, _) in cases.items():
        start = hours_ago if start is None and "heartbeat" in tags else start
        ids[name] = client.create_run(exp, start_time=start, tags=tags, run_name=name).info.run_id
    finished = client.create_run(exp, tags={"step": "pipeline", **dead}).info.run_id
    client.set_terminated(finished)

    closed = tracking.close_orphaned_runs(exp)

    assert sorted(line.split(" (")[0] for line in closed) == sorted(n for n, c in cases.items() if c[2])
    for name, (tags, _, should_close) in cases.items():
        run = client.get_run(ids[name])
        if not should_close:
            assert run.info.status == "RUNNING", name
            assert "killed_reason" not in run.data.tags, name
            continue
        assert run.info.status == "KILLED", name
        assert run.data.tags["killed_reason"].startswith("orphaned: "), name
        assert "orphaned" in run.data.tags["mlflow.note.content"], name
        if "heartbeat" in tags:  # ended when last seen alive
            beat = datetime.fromisoformat(tags["heartbeat"]).timestamp()
            assert run.info.end_time == pytest.approx(beat * 1000, abs=1000), name
    assert "is gone" in client.get_run(ids["dead"]).data.tags["killed_reason"]
    assert "no heartbeat" in client.get_run(ids["silent host"]).data.tags["killed_reason"]
    assert client.get_run(finished).info.status == "FINISHED"  # only RUNNING runs are looked at
    assert tracking.close_orphaned_runs(exp) == []  # nothing left to close


def test_runs_record_their_process_and_a_heartbeat(store):
    mlflow.set_experiment("tests")  # not one an earlier test left active in another store
    tracking.track_liveness(interval=0.3)
    try:
        with mlflow.start_run() as run, mlflow.start_run(nested=True) as child:
            first = MlflowClient().get_run(child.info.run_id).data.tags["heartbeat"]
            deadline = time.monotonic() + 20  # second resolution, and a busy machine may delay the thread
            while time.monotonic() < deadline and any(
                MlflowClient().get_run(r.info.run_id).data.tags["heartbeat"] <= first for r in (run, child)
            ):
                time.sleep(0.3)
            for r in (run, child):
                tags = MlflowClient().get_run(r.info.run_id).data.tags
                assert {k: tags[k] for k in ("host", "pid", "pid_start")} == tracking.owner_tags()
                assert tags["heartbeat"] > first
            # a run open in this process is never closed, whatever its tags say
            assert tracking.close_orphaned_runs(grace=0, legacy_grace=0) == []
    finally:
        tracking.track_liveness()  # back to the default interval


def test_trial_of_a_dead_process_fails_within_the_grace_period(tmp_path):
    """The heartbeat grace period (120 s by default) is for trials of other hosts; a trial whose process
    on this machine is gone is failed as soon as a worker (or the pipeline) looks."""
    storage = make_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=30)
    study = optuna.create_study(study_name="s", storage=storage)
    killed, live = study.ask(), study.ask()
    for trial in (killed, live):
        record_owner(storage, study, trial)  # what run_study's objective does first
    assert storage.get_trial(live._trial_id).system_attrs[OWNER] == tracking.owner_tags()
    storage.set_trial_system_attr(killed._trial_id, OWNER, {**tracking.owner_tags(), "pid": str(_dead_pid())})
    assert fail_stale_trials(study, storage) == [killed.number]
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states == {
        killed.number: optuna.trial.TrialState.FAIL,
        live.number: optuna.trial.TrialState.RUNNING,
        max(states): optuna.trial.TrialState.WAITING,  # queued again by Optuna's retry callback
    }


# ------------------------------------------------------------------------------- SIGKILL, end to end

# The pipeline with each fold fit slowed down, so that a trial is surely in flight when it is killed.
SLOW_FOLDS = """
import sys, time
import train.tune as tune
fit = tune.fit_predict_fold
tune.fit_predict_fold = lambda *a, **k: (time.sleep(float(sys.argv[1])), fit(*a, **k))[1]
from train.pipeline import main
sys.exit(main(sys.argv[2:]))
"""


def _start(tmp_path, csv, n_trials: int, fold_sleep: float) -> subprocess.Popen:
    args = ["--data", csv, "--models", "lightgbm", "--n-folds", "3", "--n-trials", str(n_trials)]
    args += ["--timeout", "0", "--n-jobs", "1", "--optuna-storage", f"sqlite:///{tmp_path / 'optuna.db'}"]
    args += ["--model-name", "orphan-model"]
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        MLFLOW_EXPERIMENT_NAME="tests",
    )
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(var, None)
    cmd = [sys.executable, "-c", SLOW_FOLDS, str(fold_sleep), *args]
    return subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _trials(tmp_path) -> list:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).trials


def _trial_progress(tmp_path) -> list[tuple[str, int]]:
    """(state, folds reported) per trial, read without creating the database or its tables."""
    path = tmp_path / "optuna.db"
    if not path.exists():
        return []
    query = (
        "SELECT state, (SELECT COUNT(*) FROM trial_intermediate_values v WHERE v.trial_id = t.trial_id) "
        "FROM trials t"
    )
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return db.execute(query).fetchall()
    except sqlite3.Error:  # tables not created yet
        return []


def _runs(tmp_path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = client.get_experiment_by_name("tests")
    except Exception:  # the store is being created
        return []
    return client.search_runs([experiment.experiment_id]) if experiment else []


def _wait_and_kill(proc: subprocess.Popen, ready, what: str, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not ready():
        assert proc.poll() is None, f"ended before {what}: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {limit} s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


@pytest.mark.slow
def test_sigkilled_pipelines_leave_nothing_running(tmp_path):
    """Kill a pipeline during tuning (a trial in flight), rerun it at once and kill it during the
    ensemble stage, then run it to the end: every run a killed process left RUNNING is KILLED with a
    note, the killed trial is FAIL (well within Optuna's 120 s heartbeat grace period) and is not counted
    among the finished trials, although the reruns find the study already full."""
    csv = write_csv(make_flow_signal_candles(2400, seed=3), tmp_path / "candles.csv")
    running, finished = optuna.trial.TrialState.RUNNING, FINISHED

    # 1. killed while tuning: a trial has finished and the next is in flight
    first = _start(tmp_path, csv, n_trials=50, fold_sleep=0.5)

    def trial_in_flight():  # after its first fold of three: killed surely before it finishes
        progress = _trial_progress(tmp_path)
        return sum(state in ("COMPLETE", "PRUNED") for state, _ in progress) >= 1 and any(
            state == "RUNNING" and folds == 1 for state, folds in progress
        )

    _wait_and_kill(first, trial_in_flight, "a trial in flight after a finished one")
    trials = _trials(tmp_path)
    done = sum(t.state in finished for t in trials)
    assert [t.state for t in trials].count(running) == 1
    killed_runs = {r.info.run_id for r in _runs(tmp_path)}
    assert {r.info.status for r in _runs(tmp_path)} == {"RUNNING"}  # pipeline and tune-lightgbm, orphaned

    # 2. rerun at once (the study is full: nothing to tune), killed in the ensemble stage
    second = _start(tmp_path, csv, n_trials=done, fold_sleep=0)

    def in_ensemble():
        return any(r.data.tags.get("mlflow.runName") == "ensemble" for r in _runs(tmp_path))

    _wait_and_kill(second, in_ensemble, "ensemble run")
    runs = {r.info.run_id: r for r in _runs(tmp_path)}
    assert {runs[i].info.status for i in killed_runs} == {"KILLED"}  # closed by the rerun's start
    assert [t.state for t in _trials(tmp_path)].count(running) == 0  # failed though the study was full
    killed_runs |= {i for i, r in runs.items() if r.info.status == "RUNNING"}

    # 3. run to the end
    third = _start(tmp_path, csv, n_trials=done, fold_sleep=0)
    out, err = third.communicate(timeout=120)
    assert third.returncode == 0, err[-3000:]

    runs = {r.info.run_id: r for r in _runs(tmp_path)}
    assert "RUNNING" not in {r.info.status for r in runs.values()}
    names = sorted(runs[i].data.tags["mlflow.runName"].split()[0] for i in killed_runs)
    assert names == ["ensemble", "pipeline", "pipeline", "tune-lightgbm"]
    for i in killed_runs:
        tags = runs[i].data.tags
        assert runs[i].info.status == "KILLED"
        assert "is gone" in tags["killed_reason"] and "orphaned" in tags["mlflow.note.content"]
    assert sum(line.startswith("orphan ") for line in out.splitlines()) == 2  # run 2's pipeline, ensemble
    trials = _trials(tmp_path)
    assert [t.state for t in trials].count(optuna.trial.TrialState.FAIL) == 1
    assert sum(t.state in finished for t in trials) == done
    last = max(
        (r for r in runs.values() if r.data.tags.get("step") == "tune"), key=lambda r: r.info.start_time
    )
    assert last.data.metrics["n_trials_finished"] == done and last.data.metrics["n_trials_failed"] == 1
    assert f"({done} trials, " in out  # the finished ones, not every trial in the study
    assert f"trials    lightgbm: {done} trials finished (1 failed, not counted)" in out
