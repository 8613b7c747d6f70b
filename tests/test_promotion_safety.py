"""Promotion safety (issue 21): production never points at a model that does not load; a crashed mover
neither blocks the next move for minutes nor leaves a move out of the history; moves made outside the
tool are understood by history and rollback.

Every version here is its own tiny model that loads (``tests.helpers.ConstantSignal``), so deleting one
version's files breaks only that version.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from models import registry
from models.lifecycle import main as lifecycle
from models.registry import PRODUCTION, history, promote
from tests.helpers import damage_model, log_loadable_model

REPO = Path(__file__).resolve().parents[1]


def _version(name: str, gate: str = "passed") -> str:
    client = MlflowClient()
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException:
        pass
    with mlflow.start_run(run_name=f"version of {name}"):
        uri = log_loadable_model()
    return str(mlflow.register_model(uri, name, tags={"gate": gate}).version)


def _alias(name: str) -> str | None:
    found = registry.get_production(name)
    return None if found is None else str(found.version)


def _err_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize("damage", ["pickle deleted", "folder deleted", "pickle corrupt"])
def test_a_move_to_a_model_that_does_not_load_is_refused_in_one_line(store, capsys, damage):
    v1, v2, v3 = (_version("ps-a") for _ in range(3))
    assert lifecycle(["promote", "--model-name", "ps-a", "--version", v1]) == 0
    assert lifecycle(["promote", "--model-name", "ps-a", "--version", v2]) == 0
    damage_model("ps-a", v1, damage)
    capsys.readouterr()
    # rollback to the broken v1 (by name, and as the default target), and a forced promote of it
    for argv in (
        ["rollback", "--model-name", "ps-a", "--version", v1],
        ["rollback", "--model-name", "ps-a"],
        ["promote", "--model-name", "ps-a", "--version", v1, "--force", "true", "--reason", "try"],
    ):
        assert lifecycle(argv) == 1, argv
        lines = _err_lines(capsys)
        assert len(lines) == 1, lines
        assert f"version {v1} of 'ps-a' cannot be loaded" in lines[0] and "production stays on v2" in lines[0]
        assert _alias("ps-a") == v2 and len(history("ps-a")) == 2
    # a version that loads still moves
    assert lifecycle(["promote", "--model-name", "ps-a", "--version", v3]) == 0 and _alias("ps-a") == v3


def test_a_lock_left_by_a_dead_process_is_broken_at_once(store, caplog):
    v1 = _version("ps-b")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    client = MlflowClient()
    client.create_registered_model(
        f"ps-b{registry.LOCK_SUFFIX}",
        tags={
            registry.OWNER_TAG: f"someone pid {dead.pid}",
            "host": socket.gethostname(),
            "pid": str(dead.pid),
            "pid_start": "",
            registry.HEARTBEAT_TAG: registry._now(),  # a fresh heartbeat: only the dead pid tells
        },
    )
    start = time.monotonic()
    promote("ps-b", v1, "after a crash", lock_timeout=30)
    assert time.monotonic() - start < 10 and _alias("ps-b") == v1
    assert "broke a stale promotion lock" in caplog.text and "is gone" in caplog.text


def test_a_lock_of_a_live_holder_elsewhere_is_judged_by_its_heartbeat(store):
    v1 = _version("ps-c")
    held = {
        registry.OWNER_TAG: "someone on another host",
        "host": "another-host",
        "pid": "1",
        registry.HEARTBEAT_TAG: registry._now(),
    }
    client = MlflowClient()
    client.create_registered_model(f"ps-c{registry.LOCK_SUFFIX}", tags=held)
    with pytest.raises(registry.LockBusy, match="in progress"):
        promote("ps-c", v1, "blocked", lock_timeout=0.5)
    client.set_registered_model_tag(
        f"ps-c{registry.LOCK_SUFFIX}", registry.HEARTBEAT_TAG, "2020-01-01T00:00:00+00:00"
    )
    promote("ps-c", v1, "its heartbeat stopped", lock_timeout=5)
    assert _alias("ps-c") == v1


KILLER = """
import os, signal, sys
from mlflow.tracking import MlflowClient

original = getattr(MlflowClient, METHOD)

def then_die(self, *args, **kwargs):
    result = original(self, *args, **kwargs)
    if args[1] == KEY:  # the alias name, or the tag key
        os.kill(os.getpid(), signal.SIGKILL)
    return result

setattr(MlflowClient, METHOD, then_die)
from models.lifecycle import main
sys.exit(main(sys.argv[1:]))
"""


def _killed_after(store: Path, method: str, key: str, argv: list[str]) -> int:
    """Run ``python -m models.lifecycle argv`` and SIGKILL it right after ``MlflowClient.<method>``
    returns for ``key`` (the production alias, or the pending-move tag)."""
    code = f"METHOD, KEY = {method!r}, {key!r}\n" + KILLER
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=store, env=env, capture_output=True, timeout=120
    )
    return out.returncode


@pytest.mark.slow
def test_a_kill_right_after_the_alias_move_is_recorded_by_the_next_command(store, capsys):
    v1, v2 = _version("ps-d"), _version("ps-d")
    assert lifecycle(["promote", "--model-name", "ps-d", "--version", v1, "--reason", "first"]) == 0
    argv = ["promote", "--model-name", "ps-d", "--version", v2, "--reason", "x"]
    code = _killed_after(store, "set_registered_model_alias", PRODUCTION, argv)
    assert code == -signal.SIGKILL
    # production moved, the history does not have it yet, and the dead process still holds the lock
    assert _alias("ps-d") == v2 and [m.to_version for m in history("ps-d")] == [v1]
    assert MlflowClient().search_registered_models(f"name = 'ps-d{registry.LOCK_SUFFIX}'")
    capsys.readouterr()
    # read-only commands show the move and warn; they never skip it
    assert lifecycle(["history", "--model-name", "ps-d", "--json", "true"]) == 0
    out = capsys.readouterr()
    moves = json.loads(out.out)
    assert [(m["to_version"], m["recorded"]) for m in moves] == [(v1, True), (v2, False)]
    assert moves[1]["action"] == "promote" and moves[1]["reason"] == "x"
    assert "not recorded (its process died)" in out.err
    assert "not recorded" in registry.status("ps-d")["warning"]
    # the next move breaks the dead process's lock at once, records the move, then rolls back over it
    start = time.monotonic()
    assert lifecycle(["rollback", "--model-name", "ps-d"]) == 0
    assert time.monotonic() - start < 20
    moves = history("ps-d")
    assert [(m.action, m.from_version, m.to_version) for m in moves] == [
        ("promote", None, v1),
        ("promote", v1, v2),
        ("rollback", v2, v1),
    ]
    assert "its process died" in moves[1].note and _alias("ps-d") == v1
    assert MlflowClient().get_model_version("ps-d", v2).tags["promotion_reason"] == "x"
    assert registry.PENDING_TAG not in MlflowClient().get_registered_model("ps-d").tags
    assert "warning" not in registry.status("ps-d")


@pytest.mark.slow
def test_a_kill_before_the_alias_move_leaves_nothing_to_record(store, caplog):
    v1, v2 = _version("ps-e"), _version("ps-e")
    promote("ps-e", v1, "first")
    argv = ["promote", "--model-name", "ps-e", "--version", v2, "--reason", "x"]
    code = _killed_after(store, "set_registered_model_tag", registry.PENDING_TAG, argv)
    assert code == -signal.SIGKILL
    assert _alias("ps-e") == v1 and "warning" not in registry.status("ps-e")
    v3 = _version("ps-e")
    promote("ps-e", v3, "next")
    assert [m.to_version for m in history("ps-e")] == [v1, v3]
    assert "discarded an interrupted move" in caplog.text


def test_history_and_rollback_understand_a_move_made_by_hand(store, capsys):
    v1, v2, v3 = (_version("ps-f") for _ in range(3))
    promote("ps-f", v1, "first")
    promote("ps-f", v2, "second")
    MlflowClient().set_registered_model_alias("ps-f", PRODUCTION, v3)  # by hand, outside the tool
    capsys.readouterr()
    assert lifecycle(["history", "--model-name", "ps-f"]) == 0
    out = capsys.readouterr()
    assert f"moved outside this tool (v{v2} -> v{v3})" in out.err
    assert re.search(rf"outside +v{v2} -> v{v3} .*not recorded yet", out.out)
    # rollback goes to the version production held before the hand move, and says which
    assert lifecycle(["rollback", "--model-name", "ps-f"]) == 0
    out = capsys.readouterr().out
    assert f"production v{v3} -> v{v2}" in out and "moved outside this tool" in out
    assert [(m.action, m.to_version) for m in history("ps-f")] == [
        ("promote", v1),
        ("promote", v2),
        ("outside", v3),
        ("rollback", v2),
    ]
    # and the next rollback continues down the recorded stack
    assert lifecycle(["rollback", "--model-name", "ps-f"]) == 0 and _alias("ps-f") == v1


def test_a_deleted_alias_is_understood(store, capsys):
    v1, v2 = _version("ps-g"), _version("ps-g")
    promote("ps-g", v1, "first")
    MlflowClient().delete_registered_model_alias("ps-g", PRODUCTION)
    assert "alias (v1) was deleted outside this tool" in registry.status("ps-g")["warning"]
    promote("ps-g", v2, "again")
    assert [(m.action, m.from_version, m.to_version) for m in history("ps-g")] == [
        ("promote", None, v1),
        ("outside", v1, ""),
        ("promote", None, v2),
    ]


def test_the_monitor_records_a_move_made_with_the_plain_client_before_anything_else(store, capsys):
    """Someone moves production with the plain MLflow client (as the UI does): status warns, and the next
    monitor records it as an outside move first, whatever the monitor then finds (this constant model
    cannot be monitored: it exits 1, the record stays)."""
    from evaluation.monitor import main as monitor
    from tests.helpers import make_candles, write_csv

    v1, v2 = _version("ps-m"), _version("ps-m")
    promote("ps-m", v1, "first")
    MlflowClient().set_registered_model_alias("ps-m", PRODUCTION, v2)  # what the UI's alias editor calls
    assert f"moved outside this tool (v{v1} -> v{v2})" in registry.status("ps-m")["warning"]
    assert history("ps-m")[-1].to_version == v1  # status only reads
    capsys.readouterr()
    data = write_csv(make_candles(300, seed=1), store / "candles.csv")
    assert monitor(["--model-uri", "models:/ps-m@production", "--data", data]) == 1
    err = capsys.readouterr().err
    assert f"moved outside this tool (v{v1} -> v{v2}); recorded in the history as move #2" in err
    assert [(m.action, m.from_version, m.to_version) for m in history("ps-m")] == [
        ("promote", None, v1),
        ("outside", v1, v2),
    ]
    assert history("ps-m")[-1].by == "unknown" and "found on" in history("ps-m")[-1].note
    assert registry.status("ps-m")["unrecorded"] == []
    assert not MlflowClient().search_registered_models(f"name = 'ps-m{registry.LOCK_SUFFIX}'")  # released
    # a second monitor finds nothing more to record
    monitor(["--model-uri", "models:/ps-m@production", "--data", data])
    assert "outside this tool" not in capsys.readouterr().err and len(history("ps-m")) == 2


@pytest.mark.slow
def test_a_pipeline_that_passes_but_cannot_promote_says_so_and_exits_75(store, capsys, monkeypatch):
    """The gate passes, but a live process holds the promotion lock: the version is registered, production
    does not move, and the last line, the summary and the exit code say so."""
    import functools

    from tests.helpers import make_flow_signal_candles, owner_lock_tags, write_csv
    from train import pipeline
    from train.stages import register as register_stage

    data = write_csv(make_flow_signal_candles(3000, seed=11), store / "flow.csv")
    quick = functools.partial(register_stage.promote, lock_timeout=0.5)
    monkeypatch.setattr(register_stage, "promote", quick)
    MlflowClient().create_registered_model(f"ps-p{registry.LOCK_SUFFIX}", tags=owner_lock_tags())
    argv = ["--data", data, "--n-trials", "2", "--models", "lightgbm", "--n-folds", "3", "--horizon", "3"]
    argv += ["--model-name", "ps-p", "--optuna-storage", f"sqlite:///{store}/optuna.db", "--n-jobs", "1"]
    code = pipeline.main(argv)
    out = capsys.readouterr()
    last = json.loads(out.out.strip().splitlines()[-1])
    assert last["gate"] == "passed", out.err[-3000:]
    assert code == pipeline.EXIT_NOT_PROMOTED == 75
    assert last["promoted"] is False and last["production_version"] is None and last["model_version"] == "1"
    assert "in progress" in last["not_promoted"]
    assert "NOT PROMOTED although the gate passed" in out.err + out.out
    assert _alias("ps-p") is None


@pytest.mark.parametrize("transient", [True, False])
def test_a_store_hiccup_during_a_move_is_retried_and_a_real_refusal_is_not(
    store, monkeypatch, caplog, transient
):
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    from models import tracking

    v1 = _version("ps-r")
    monkeypatch.setattr(tracking, "STORE_RETRY_DELAYS", (0.01, 0.01, 0.01))
    original = MlflowClient.set_registered_model_alias
    calls = []
    reason = (
        "server closed the connection unexpectedly" if transient else "attempt to write a readonly database"
    )

    def flaky(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            error = sqlalchemy.exc.OperationalError("UPDATE registered_model_aliases", {}, Exception(reason))
            raise MlflowException(str(error)) from error
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", flaky)
    if transient:
        promote("ps-r", v1, "through a hiccup")
        assert _alias("ps-r") == v1 and [m.to_version for m in history("ps-r")] == [v1]
        assert "did not answer" in caplog.text and "retrying" in caplog.text
    else:
        with pytest.raises(MlflowException, match="readonly"):
            promote("ps-r", v1, "refused by the store")
        assert _alias("ps-r") is None and history("ps-r") == [] and len(calls) == 1
