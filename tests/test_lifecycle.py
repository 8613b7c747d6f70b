"""Registry lifecycle: promote, roll back, history, locking, refusals, and real parallel processes.

Versions here are registered directly (no training), since the lifecycle only reads their gate tags;
the end-to-end flow with trained models is in test_lifecycle_e2e.py.
"""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from models import registry
from models.lifecycle import main as lifecycle_main
from models.registry import PRODUCTION, RegistryError, history, holders, production_lock, promote, rollback
from tests.helpers import log_loadable_model
from tests.webhook import SECRET

REPO = Path(__file__).resolve().parents[1]


def _versions(client: MlflowClient, name: str, gates: list[str]) -> list[str]:
    """Register one version per gate result, all of one tiny model that loads (every move of production
    first proves its target loads)."""
    client.create_registered_model(name)
    mlflow.set_experiment("lifecycle-tests")  # this test's store, not one cached from an earlier test
    with mlflow.start_run(run_name=f"versions {name}"):
        uri = log_loadable_model()
    return [str(mlflow.register_model(uri, name, tags={"gate": g}).version) for g in gates]


def _locks(client):
    return [m.name for m in client.search_registered_models() if m.name.endswith(registry.LOCK_SUFFIX)]


def _alias(client, name):
    return str(client.get_model_version_by_alias(name, PRODUCTION).version)


def test_promote_records_the_move_everywhere(tracking_backend):
    client = MlflowClient()
    v1, v2 = _versions(client, "lc-a", ["passed", "passed"])
    first = promote("lc-a", v1, "first model", run_id="run-1")
    second = promote("lc-a", v2, "better model", run_id="run-2")
    assert _alias(client, "lc-a") == v2
    assert (first.seq, first.from_version, first.to_version) == (1, None, v1)
    assert (second.seq, second.from_version, second.to_version, second.action) == (2, v1, v2, "promote")
    assert history("lc-a") == [first, second]
    tags = client.get_model_version("lc-a", v2).tags
    assert tags["promotion_reason"] == "better model" and tags["replaced_version"] == v1
    assert tags["promoted_by_run"] == "run-2" and tags["promotion_action"] == "promote"
    assert not _locks(client)  # released


def test_failed_version_needs_force_and_reason(tracking_backend):
    client = MlflowClient()
    good, bad = _versions(client, "lc-b", ["passed", "failed"])
    promote("lc-b", good, "ok")
    with pytest.raises(RegistryError, match="did not pass its gate.*force=true"):
        promote("lc-b", bad, "please")
    with pytest.raises(RegistryError, match="needs a reason"):
        promote("lc-b", bad, "  ", force=True)
    assert _alias(client, "lc-b") == good and len(history("lc-b")) == 1  # nothing changed
    forced = promote("lc-b", bad, "known issue in the gate data", force=True)
    assert forced.action == "force_promote" and _alias(client, "lc-b") == bad
    assert history("lc-b")[-1].reason == "known issue in the gate data"


def test_refusals_change_nothing(tracking_backend):
    client = MlflowClient()
    (v1,) = _versions(client, "lc-c", ["passed"])
    with pytest.raises(RegistryError, match="no production version"):
        rollback("lc-c")
    promote("lc-c", v1, "first")
    with pytest.raises(RegistryError, match="already production"):
        promote("lc-c", v1, "again")
    with pytest.raises(RegistryError, match="no earlier production version"):
        rollback("lc-c")
    with pytest.raises(RegistryError, match=r"no version 9 \(versions: 1\)"):
        promote("lc-c", "9", "typo")
    with pytest.raises(RegistryError, match="no registered model 'nope'"):
        history("nope")
    assert _alias(client, "lc-c") == v1 and len(history("lc-c")) == 1


def test_rollback_walks_back_through_previous_holders(tracking_backend):
    client = MlflowClient()
    v1, v2, v3, v4 = _versions(client, "lc-d", ["passed", "passed", "passed", "failed"])
    for v in (v1, v2, v3):
        promote("lc-d", v, f"promote {v}")
    assert rollback("lc-d", reason="v3 misbehaves").to_version == v2
    assert rollback("lc-d", reason="v2 too").to_version == v1
    with pytest.raises(RegistryError, match="no earlier production version"):
        rollback("lc-d")
    assert _alias(client, "lc-d") == v1
    # explicit targets: a former production version is fine, a never-promoted failed one is not
    assert rollback("lc-d", version=v3, reason="v3 was fine after all").to_version == v3
    with pytest.raises(RegistryError, match="never production and did not pass its gate"):
        rollback("lc-d", version=v4)
    moves = history("lc-d")
    assert [m.seq for m in moves] == list(range(1, 7))
    assert [(m.action, m.to_version) for m in moves[3:]] == [
        ("rollback", v2),
        ("rollback", v1),
        ("rollback", v3),
    ]


def test_holders_stack():
    def m(seq, action, to):
        return registry.AliasMove(seq, action, None, to, "", "", "", "")

    assert holders(
        [m(1, "promote", "1"), m(2, "promote", "2"), m(3, "rollback", "1"), m(4, "promote", "3")]
    ) == ["1", "3"]
    assert holders([m(1, "promote", "1"), m(2, "rollback", "5")]) == ["1", "5"]


def test_challenger_is_not_promoted_over_a_champion_it_did_not_see(tracking_backend):
    client = MlflowClient()
    v1, v2, v3 = _versions(client, "lc-e", ["passed", "passed", "passed"])
    promote("lc-e", v1, "first")
    promote("lc-e", v2, "meanwhile, another run")
    with pytest.raises(RegistryError, match="moved to v2 after version 3 was compared with v1"):
        promote("lc-e", v3, "passed the gate", expect_current=v1)
    assert promote("lc-e", v3, "passed the gate", expect_current=v2).to_version == v3


def test_held_lock_refuses_after_timeout_and_stale_lock_is_broken(tracking_backend):
    client = MlflowClient()
    v1, v2 = _versions(client, "lc-f", ["passed", "passed"])
    with production_lock("lc-f", client):
        start = time.monotonic()
        with pytest.raises(RegistryError, match="in progress.*nothing was changed"):
            promote("lc-f", v1, "blocked", lock_timeout=0.5)
        assert time.monotonic() - start < 10
    assert registry.get_production("lc-f") is None
    # a lock left behind by a dead process is broken once it is older than stale_after
    client.create_registered_model(f"lc-f{registry.LOCK_SUFFIX}")
    time.sleep(0.05)
    with production_lock("lc-f", client, timeout=2, stale_after=0.01):
        pass
    promote("lc-f", v2, "after the stale lock")
    assert _alias(client, "lc-f") == v2


def test_status_flags_an_alias_moved_outside_the_tool(tracking_backend):
    client = MlflowClient()
    v1, v2 = _versions(client, "lc-g", ["passed", "passed"])
    promote("lc-g", v1, "first")
    assert "warning" not in registry.status("lc-g")
    client.set_registered_model_alias("lc-g", PRODUCTION, v2)
    info = registry.status("lc-g")
    assert info["production"]["version"] == v2 and "moved outside this tool" in info["warning"]


def test_cli_records_the_run_that_moved_the_alias(tracking_backend, capsys):
    client = MlflowClient()
    v1, v2 = _versions(client, "lc-h", ["passed", "failed"])
    assert lifecycle_main(["promote", "--model-name", "lc-h", "--version", v1, "--reason", "first"]) == 0
    move = history("lc-h")[-1]
    run = client.get_run(move.run_id)
    assert run.data.tags["step"] == "promote" and run.info.status == "FINISHED"
    audit = json.loads(
        Path(mlflow.artifacts.download_artifacts(run_id=move.run_id, artifact_path="audit.json")).read_text()
    )
    assert audit["to_version"] == v1 and audit["reason"] == "first"
    # a refused move: exit 1, a clear message, a FAILED run saying why, and no change
    assert lifecycle_main(["promote", "--model-name", "lc-h", "--version", v2]) == 1
    assert "did not pass its gate" in capsys.readouterr().err
    refused = client.search_runs(
        [run.info.experiment_id], "tags.model_name = 'lc-h' and attributes.status = 'FAILED'"
    )
    assert len(refused) == 1 and "did not pass its gate" in refused[0].data.tags["refused"]
    assert _alias(client, "lc-h") == v1
    capsys.readouterr()
    assert lifecycle_main(["history", "--model-name", "lc-h"]) == 0
    assert "promote" in capsys.readouterr().out
    assert lifecycle_main(["status", "--model-name", "lc-h", "--json", "true"]) == 0
    assert json.loads(capsys.readouterr().out)["production"]["version"] == v1


WORKER = textwrap.dedent("""
    import sys, time
    from models.registry import RegistryError, promote, rollback
    kind, version, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
    time.sleep(max(0.0, start - time.time()))  # all workers move at the same moment
    try:
        move = (promote("lc-par", version, f"worker {version}") if kind == "promote"
                else rollback("lc-par", reason="worker rollback"))
        print(f"MOVED {move.seq} {move.to_version}")
    except RegistryError as exc:
        print(f"REFUSED {exc}")
""")


def test_parallel_promotions_and_rollback_leave_a_consistent_history(tracking_backend):
    client = MlflowClient()
    versions = _versions(client, "lc-par", ["passed"] * 5)
    promote("lc-par", versions[0], "initial")
    env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=mlflow.get_tracking_uri())
    start = time.time() + 4.0
    jobs = [("promote", v) for v in versions[1:]] + [("rollback", "-")]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, kind, v, str(start)],
            cwd=os.getcwd(),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for kind, v in jobs
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-2000:]
        assert out.startswith(("MOVED", "REFUSED")), out + err[-2000:]
    moved = [o for o, _ in outputs if o.startswith("MOVED")]
    refused = [o for o, _ in outputs if o.startswith("REFUSED")]
    moves = history("lc-par")
    # every move that reported success is in the history, in one unbroken sequence
    assert [m.seq for m in moves] == list(range(1, len(moved) + 2))
    assert sorted(int(o.split()[1]) for o in moved) == [m.seq for m in moves[1:]]
    # each move starts from where the previous one left the alias, and the alias is where the last one put it
    for before, after in zip(moves, moves[1:], strict=False):
        assert after.from_version == before.to_version
    assert _alias(client, "lc-par") == moves[-1].to_version
    # a refusal is a clear, expected one (already production / nothing earlier), never a crash
    for o in refused:
        assert "already production" in o or "no earlier production version" in o or "in progress" in o
    assert len(moved) >= 3
    assert not _locks(client)  # released


def test_moves_notify_the_webhook_without_leaking_its_url(tracking_backend, hook, capsys):
    client = MlflowClient()
    v1, v2 = _versions(client, "lc-n", ["passed", "passed"])
    promote("lc-n", v1, "first")
    assert lifecycle_main(["promote", "--model-name", "lc-n", "--version", v2, "--reason", "second"]) == 0
    rollback("lc-n", reason="undo")
    bodies = [json.loads(r["body"]) for r in hook.requests]
    assert [b["event"] for b in bodies] == ["promotion", "promotion", "rollback"]
    assert "v1 -> v2" in bodies[1]["text"] and bodies[1]["content"] == bodies[1]["text"]
    assert "undo" in bodies[2]["text"]
    # the URL (with its token) is nowhere in the registry, the runs or the printed output
    model = client.get_registered_model("lc-n")
    stored = [json.dumps(model.tags)]
    stored += [json.dumps(client.get_model_version("lc-n", v).tags) for v in (v1, v2)]
    for run in client.search_runs([e.experiment_id for e in client.search_experiments()]):
        stored += [json.dumps(run.data.params), json.dumps(run.data.tags)]
    stored.append(capsys.readouterr().out)
    assert not any(SECRET in text for text in stored)
