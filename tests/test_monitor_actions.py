"""The monitor acts, when asked: ``--on-degraded withdraw`` / ``rollback``, the bot told of a withdrawal,
``retrain`` acting first, and the walk-forward deciding with the same function.

Two tiny models are trained once (module fixture) on 2,200 candles of planted-flow series: ``normal``
where a bar's volume reveals the next bar's drift, ``inverted`` where it reveals the opposite. The live
candles continue ``normal``'s series with the relation inverted from row 2,200 on (the planted edge
that inverts, as ``bench/walkforward.py --scenario flow_flip``): ``normal`` loses there, ``inverted``
does not. Each test registers copies of them (no training) under a model name of its own.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from evaluation import monitor as mon
from evaluation import monitor_step, monitoring
from evaluation import walkforward as ewf
from models import registry
from models.lifecycle import main as lifecycle_main
from models.loading import ProductionWithdrawn, load_model
from models.predict import main as predict_main
from models.registry import PRODUCTION, RegistryError, holders, promote, withdraw
from tests.helpers import (
    candles_from_returns,
    log_loadable_model,
    persistent_regime,
    throwaway_store,
    tiny_config,
    write_csv,
)
from train import retrain as rt
from train import walkforward as twf
from train.pipeline import run_pipeline

N_ALL, N_TRAIN, HORIZON = 3200, 2200, 3


def flow_candles(n: int, seed: int, flip_at: int | None = None, sign: float = 1.0):
    """Planted flow signal (a bar's volume shows the next bar's drift, times ``sign``), the sign
    inverted from row ``flip_at`` on."""
    rng = np.random.default_rng(seed)
    drift = persistent_regime(rng, n + 1, 0.5)
    frame = candles_from_returns(
        drift[:n] * 0.004 + 0.002 * rng.standard_normal(n), rng, "2024-01-01", "30min", 0.002
    )
    flow = np.full(n, sign)
    if flip_at is not None:
        flow[flip_at:] *= -1
    frame["volume"] *= np.exp(flow * drift[1:])
    return frame


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monitor_actions")
    with throwaway_store(tmp) as (mp, uri):
        live = flow_candles(N_ALL, seed=5, flip_at=N_TRAIN)
        trained = {}
        for kind, frame in (
            ("normal", live.iloc[:N_TRAIN]),
            ("inverted", flow_candles(N_TRAIN, seed=6, sign=-1.0)),
        ):
            path = write_csv(frame, tmp / f"{kind}.csv")
            result = run_pipeline(tiny_config(path, tmp, f"trained-{kind}", horizon=HORIZON))
            trained[kind] = MlflowClient().get_model_version(f"trained-{kind}", result["model_version"])
        yield {"tmp": tmp, "live": write_csv(live, tmp / "live.csv"), **trained}


def register(name: str, sources: list) -> list[str]:
    """Versions of ``name`` made from trained versions (same model files and tags), each passing its gate
    (what the lifecycle reads), promoted in order."""
    client = MlflowClient()
    client.create_registered_model(name)
    versions = []
    for source in sources:
        tags = {k: v for k, v in source.tags.items() if not k.startswith(("promot", "monitor", "last_mon"))}
        mv = client.create_model_version(
            name, source.source, tags=tags | {"gate": "passed"}, model_id=source.model_id
        )
        versions.append(str(mv.version))
    for v in versions:
        promote(name, v, f"test: v{v}")
    return versions


def production(name: str) -> str | None:
    found = registry.get_production(name)
    return str(found.version) if found else None


def monitor_runs() -> list:
    return mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.step = 'monitor'", output_format="list"
    )


def events(hook) -> list[str]:
    return [json.loads(r["body"])["event"] for r in hook.requests]


def run_monitor(name: str, data: str, on_degraded: str | None = None) -> int:
    argv = ["--model-uri", f"models:/{name}@{PRODUCTION}", "--data", data]
    return mon.main(argv + (["--on-degraded", on_degraded] if on_degraded else []))


# drifted wins the verdict; the degraded rule still acts
ACTED = (monitoring.EXIT_DEGRADED, monitoring.EXIT_DRIFTED)


# ---------------------------------------------------------------------------------- withdraw
def test_withdraw_removes_production_records_and_notifies_and_a_second_run_changes_nothing(
    models, hook, capsys
):
    name = "act-withdraw"
    (v1,) = register(name, [models["normal"]])
    hook.requests.clear()  # the promotion's message
    runs = len(monitor_runs())

    assert run_monitor(name, models["live"], "withdraw") in ACTED
    out = capsys.readouterr().out
    assert "verdict DEGRADED" in out or "verdict DRIFTED" in out
    assert f"withdrew production v{v1}" in out
    assert production(name) is None

    move = registry.history(name)[-1]
    assert (move.action, move.from_version, move.to_version) == ("withdraw", v1, "")
    run_id = MlflowClient().get_model_version(name, v1).tags["monitor_run_id"]
    assert move.run_id == run_id and f"monitor run {run_id} withdrew v{v1} degraded" in move.reason
    assert "after costs" in move.reason or "macro-F1" in move.reason  # the verdict's numbers
    tags = MlflowClient().get_model_version(name, v1).tags
    assert tags["withdrawal_reason"] == move.reason and tags["withdrawn_by_run"] == run_id
    audit = mlflow.artifacts.load_dict(f"runs:/{run_id}/audit.json")
    assert audit["action"] == "withdraw" and audit["seq"] == move.seq
    assert mlflow.get_run(run_id).data.tags["monitor_action"] == f"withdraw v{v1} -> v-"

    assert events(hook) in (["withdrawal", "monitor_degraded"], ["withdrawal", "monitor_drifted"])
    body = json.loads(hook.requests[0]["body"])
    assert f"production v{v1} -> v- (withdraw)" in body["content"] and move.reason[:80] in body["content"]
    status = registry.status(name)
    assert status["production"] is None and status["withdrawn"]["seq"] == move.seq
    assert not status["unrecorded"]  # a recorded withdrawal is not an outside move
    assert lifecycle_main(["status", "--model-name", name]) == 0
    assert "no production version: " in capsys.readouterr().out

    # the same state again: nothing to monitor, nothing changes, and the exit code says so
    moves, sent = registry.history(name), len(hook.requests)
    assert run_monitor(name, models["live"], "withdraw") == monitoring.EXIT_NO_PRODUCTION == 5
    out = capsys.readouterr().out
    assert out.startswith(f"no production model: '{name}'@production was withdrawn on {move.at}")
    assert registry.history(name) == moves and len(hook.requests) == sent
    assert len(monitor_runs()) == runs + 1

    # promote brings it back as usual
    back = promote(name, v1, "back after a look")
    assert (back.action, back.from_version, back.to_version, production(name)) == ("promote", None, v1, v1)


def test_alert_the_default_moves_nothing(models, capsys):
    name = "act-alert"
    (v1,) = register(name, [models["normal"]])
    moves = registry.history(name)
    assert run_monitor(name, models["live"]) in ACTED
    assert "withdrew" not in capsys.readouterr().out
    assert production(name) == v1 and registry.history(name) == moves


# ---------------------------------------------------------------------------------- rollback
def test_rollback_skips_a_degraded_earlier_version_and_picks_the_good_one(models, hook, capsys):
    name = "act-rollback"
    good, stale, current = register(name, [models["inverted"], models["normal"], models["normal"]])
    assert production(name) == current

    assert run_monitor(name, models["live"], "rollback") in ACTED
    out = capsys.readouterr().out
    assert f"rolled production back v{current} -> v{good}" in out
    assert f"v{stale} skipped: also degraded" in out
    assert production(name) == good
    move = registry.history(name)[-1]
    assert (move.action, move.from_version, move.to_version) == ("rollback", current, good)
    assert f"rolled back to v{good}" in move.reason and f"v{stale} skipped: also degraded" in move.reason
    assert "rollback" in events(hook)

    # the same state again: the rolled-back version is not degraded on these candles; nothing moves
    moves = registry.history(name)
    assert run_monitor(name, models["live"], "rollback") in (monitoring.EXIT_OK, monitoring.EXIT_DRIFTED)
    assert registry.history(name) == moves and production(name) == good


def test_rollback_with_no_version_that_qualifies_leaves_production_and_exits_6(models, capsys):
    name = "act-rollback-none"
    stale, current = register(name, [models["normal"], models["normal"]])
    moves = registry.history(name)
    assert run_monitor(name, models["live"], "rollback") == monitoring.EXIT_NOT_ACTED == 6
    out = capsys.readouterr().out
    assert f"rollback: no earlier version qualifies (v{stale} skipped: also degraded" in out
    assert f"production stays v{current}" in out
    assert production(name) == current and registry.history(name) == moves


# ----------------------------------------------------------------------------- the bot is told
def test_predict_and_the_loading_helper_say_production_was_withdrawn(store, tmp_path, candles, capsys):
    name = "act-predict"
    MlflowClient().create_registered_model(name)
    with mlflow.start_run():
        uri = log_loadable_model()
    v1 = str(mlflow.register_model(uri, name, tags={"gate": "passed"}).version)
    promote(name, v1, "first")
    move = withdraw(name, "live after-cost return -12.3% (CI -20.1% .. -4.2%)", run_id="run-xyz")
    with pytest.raises(ProductionWithdrawn) as caught:
        load_model(f"models:/{name}@{PRODUCTION}")
    assert caught.value.move == move
    data, output = write_csv(candles, tmp_path / "c.csv"), tmp_path / "s.csv"
    capsys.readouterr()  # what registering printed
    code = predict_main(
        ["--model-uri", f"models:/{name}@{PRODUCTION}", "--data", data, "--output", str(output)]
    )
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: '{name}'@production was withdrawn on {move.at}")
    assert f"v{v1} removed by" in err and "run run-xyz" in err and "-12.3%" in err and "stay flat" in err
    assert not output.exists()
    # another missing alias is still just missing
    with pytest.raises(Exception, match="does not exist") as other:
        load_model(f"models:/{name}@staging")
    assert not isinstance(other.value, ProductionWithdrawn)


# --------------------------------------------------------------------- registry level, no training
def test_withdraw_is_recorded_refused_twice_and_drops_the_version_from_the_rollback_stack(store, hook):
    client = MlflowClient()
    name = "wd-unit"
    client.create_registered_model(name)
    with mlflow.start_run():
        uri = log_loadable_model()
    v1, v2 = (str(mlflow.register_model(uri, name, tags={"gate": "passed"}).version) for _ in range(2))
    promote(name, v1, "first")
    promote(name, v2, "second")
    with pytest.raises(RegistryError, match="moved to v2 after v1 was judged"):
        withdraw(name, "wrong one", expect_current=v1)
    move = withdraw(name, "degraded", run_id="r1")
    assert production(name) is None and registry.history(name)[-1] == move
    with pytest.raises(RegistryError, match="nothing to withdraw"):
        withdraw(name, "again")
    assert registry.history(name)[-1] == move
    assert holders(registry.history(name)) == [v1]  # v2 is not known-good any more
    assert registry.unrecorded_moves(name, client) == []
    assert events(hook)[-1] == "withdrawal"
    # a withdrawal whose process died after removing the alias is completed by the next command
    promote(name, v2, "third")
    pending = registry.AliasMove(99, "withdraw", v2, "", registry._now(), "x", "died", "")
    client.set_registered_model_tag(name, registry.PENDING_TAG, pending.to_json())
    client.delete_registered_model_alias(name, PRODUCTION)
    (found,) = registry.unrecorded_moves(name, client)
    assert (found.action, found.from_version, found.to_version) == ("withdraw", v2, "")


def test_the_walkforward_decides_with_the_monitors_own_function():
    """The monitored track calls evaluation.monitoring.action_for itself (not a copy of the rule)."""
    assert twf.action_for is monitoring.action_for and ewf.action_for is monitoring.action_for
    assert twf.WITHDRAW == monitoring.WITHDRAW == "withdraw"
    config = monitoring.MonitorConfig(n_boot=200)
    losing = {"enough": True, "macro_f1": 0.5, "macro_f1_ci": [0.45, 0.55], "return": -0.1}
    losing["return_ci"] = [-0.2, -0.05]
    action = monitoring.action_for(losing, 0.5, config, monitoring.WITHDRAW)
    assert action.kind == "withdraw" and "lost money" in action.reasons[0]
    assert monitoring.action_for(losing, 0.5, config, monitoring.ALERT).kind == "alert"
    not_judged = monitoring.action_for({"enough": False}, 0.5, config, monitoring.WITHDRAW)
    assert not_judged == monitoring.Action("none", (), False)
    fine = losing | {"return_ci": [-0.01, 0.3]}
    assert monitoring.action_for(fine, 0.5, config, monitoring.ROLLBACK).kind == "none"
    with pytest.raises(ValueError, match="on_degraded"):
        monitoring.action_for(fine, 0.5, config, "sell everything")


# ---------------------------------------------------------------------------------- retrain
def test_retrain_monitors_production_first_and_withdraws_then_trains(models, monkeypatch):
    name = "act-retrain"
    (v1,) = register(name, [models["normal"]])
    trained = []

    def fake_pipeline(cfg):
        trained.append(cfg)
        return {"model_version": "9", "promoted": False, "production_version": None}

    monkeypatch.setattr(rt, "run_pipeline", fake_pipeline)
    cfg = tiny_config(models["live"], models["tmp"], name, horizon=HORIZON)
    # 1,000 new candles after v1's data: it would train anyway; what counts is the monitor acted first
    outcome = rt.retrain(cfg, rt.RetrainOptions(on_degraded="withdraw"))
    assert outcome.status == "trained" and trained, outcome.message
    assert production(name) is None and registry.history(name)[-1].action == "withdraw"
    tags = MlflowClient().get_run(outcome.summary["run_id"]).data.tags
    assert tags["retrain_monitor"] in ("degraded (exit 3)", "drifted (exit 4)")
    assert "no production version yet" in tags["retrain_reason"]


def test_act_rolls_back_past_degraded_and_ungated_versions_and_refuses_when_none_qualifies(
    store, hook, monkeypatch
):
    """The acting part alone (the candidates' judging replaced): which version, what is recorded."""
    client = MlflowClient()
    name = "act-unit"
    client.create_registered_model(name)
    with mlflow.start_run():
        uri = log_loadable_model()
    gates = ["passed", "failed", "passed", "passed"]
    v1, v2, v3, v4 = (str(mlflow.register_model(uri, name, tags={"gate": g}).version) for g in gates)
    for v in (v1, v2, v3, v4):
        promote(name, v, f"v{v}", force=True)
    fine = ({"enough": True, "macro_f1": 0.6, "return": 0.05}, monitoring.Action("none"))
    bad = ({"enough": True}, monitoring.Action("rollback", ("lost money",)))
    judged = {v1: fine, v3: bad}
    looked = []

    def judge(mv, candles, window, rows, config):
        looked.append(str(mv.version))
        live, action = judged[str(mv.version)]
        return action, live

    monkeypatch.setattr(monitor_step, "judge_version", judge)
    live = {"rows_scored": 150, "window": ["2024-03-01 00:00:00", "2024-03-04 02:30:00"]}
    result = SimpleNamespace(model_name=name, version=v4, live=live)
    action = monitoring.Action("rollback", ("the decision policy lost money after costs: -9.00% (CI ...)",))
    with mlflow.start_run() as run:
        pass
    acted = monitor_step.act(action, result, run.info.run_id, None, monitoring.MonitorConfig(), client)
    assert acted.moved and not acted.refused and production(name) == v1
    assert looked == [v3, v1]  # newest first; v2 never judged (it failed its gate)
    move = registry.history(name)[-1]
    assert (move.action, move.from_version, move.to_version, move.run_id) == (
        "rollback",
        v4,
        v1,
        run.info.run_id,
    )
    assert f"v{v3} skipped: also degraded (lost money)" in move.reason and "gate failed" in move.reason
    assert "-9.00%" in move.reason and "150 matured candles" in move.reason
    assert mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/audit.json")["to_version"] == v1
    assert events(hook)[-1] == "rollback"

    # the same verdict on v4 again: v4 is not production any more, nothing moves
    moves = registry.history(name)
    again = monitor_step.act(action, result, run.info.run_id, None, monitoring.MonitorConfig(), client)
    assert not again.moved and not again.refused and "is not production" in again.message
    assert registry.history(name) == moves

    # v1 degraded too, and nothing earlier qualifies: refused, production stays
    judged[v1] = bad
    result = SimpleNamespace(model_name=name, version=v1, live=live)
    refused = monitor_step.act(action, result, run.info.run_id, None, monitoring.MonitorConfig(), client)
    assert refused.refused and not refused.moved and production(name) == v1
    assert "no earlier version qualifies" in refused.message and registry.history(name) == moves

    # withdraw, then the same again: nothing to do
    withdraw_action = monitoring.Action("withdraw", ("x",))
    withdrawn = monitor_step.act(
        withdraw_action, result, run.info.run_id, None, monitoring.MonitorConfig(), client
    )
    assert withdrawn.moved and production(name) is None
    twice = monitor_step.act(
        withdraw_action, result, run.info.run_id, None, monitoring.MonitorConfig(), client
    )
    assert not twice.moved and registry.history(name)[-1] == withdrawn.move
