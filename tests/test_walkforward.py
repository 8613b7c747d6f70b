"""Walk-forward: the schedule, the no-future guard, and a real replay on candles with a planted signal.

One small replay (LightGBM only, 2 trials per window) runs once per module, with recorders on everything
a window trains and decides on; the tests read what it did.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

import train.walkforward as wfmod
from evaluation.monitoring import MonitorConfig
from evaluation.walkforward import (
    LeakError,
    Window,
    WindowTrade,
    check_known,
    degraded_window,
    schedule,
    training_candles,
)
from models.pyfunc import SignalModel
from tests.helpers import make_candles, make_flow_signal_candles, throwaway_store, tiny_config, write_csv
from train.walkforward import WalkForwardConfig, main, run_walkforward

BAR = pd.Timedelta("30min")
WF = WalkForwardConfig(retrain_every=9.0, min_train_days=44.0, warm_start_trials=2)
N_CANDLES = 3800  # 79 days of 30-minute bars: 4 windows


# ----------------------------------------------------------------------------------------- schedule


def test_schedule_cuts_every_period_and_the_last_window_takes_the_remainder():
    index = pd.date_range("2024-01-01", periods=48 * 60, freq=BAR, tz="UTC")  # 60 days
    windows = schedule(index, BAR, pd.Timedelta(days=10), pd.Timedelta(days=25))
    cuts = [w.cut for w in windows]
    assert cuts == [pd.Timestamp("2024-01-26", tz="UTC") + pd.Timedelta(days=10 * k) for k in range(4)]
    # windows tile the traded span without overlap; the last one runs to the close of the last candle
    assert all(a.end == b.cut for a, b in zip(windows, windows[1:], strict=False))
    assert windows[-1].end == index[-1] + BAR
    assert all(w.train_start == index[0] for w in windows)  # expanding history


def test_schedule_with_a_training_window_and_too_short_candles():
    index = pd.date_range("2024-01-01", periods=48 * 60, freq=BAR, tz="UTC")
    windows = schedule(index, BAR, pd.Timedelta(days=10), pd.Timedelta(days=25), pd.Timedelta(days=20))
    assert [w.cut - w.train_start for w in windows] == [pd.Timedelta(days=20)] * len(windows)
    with pytest.raises(ValueError, match="too short"):
        schedule(index[: 48 * 20], BAR, pd.Timedelta(days=10), pd.Timedelta(days=25))


def test_training_candles_end_before_the_cut_and_the_guard_refuses_later_ones():
    candles = make_candles(48 * 10, seed=3)
    window = Window(0, candles.index[0], candles.index[200], candles.index[300])
    frame = training_candles(candles, window)
    assert frame.index[-1] == candles.index[199]
    check_known(frame.index, window.cut, "x")  # passes
    with pytest.raises(LeakError, match=r"1 candle\(s\) from .* at or after the cut"):
        check_known(candles.index[:201], window.cut, "x")


def test_walkforward_options_are_checked():
    with pytest.raises(ValueError, match="retrain_every"):
        WalkForwardConfig(retrain_every=0)
    with pytest.raises(ValueError, match="train_days"):
        WalkForwardConfig(train_days=-1)


# ------------------------------------------------------------------------------------ a real replay


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    """One replay of 79 days of 30-minute candles: 4 windows of 9 days after 44 days of history, with
    recorders on the candles every window's training and trading sees."""
    tmp = tmp_path_factory.mktemp("walkforward")
    seen = {"train": [], "predict": []}
    real_prepare, real_predict = wfmod.prepare_candles, SignalModel.predict_candles

    def recording_prepare(cfg, candles, info):
        seen["train"].append(candles.index[-1])
        return real_prepare(cfg, candles, info)

    def recording_predict(self, candles):
        seen["predict"].append((self.metadata["trained_until"], pd.Timestamp(candles["timestamp"].iloc[-1])))
        return real_predict(self, candles)

    with throwaway_store(tmp) as (mp, uri):
        mp.setattr(wfmod, "prepare_candles", recording_prepare)
        mp.setattr(SignalModel, "predict_candles", recording_predict)
        data = write_csv(make_flow_signal_candles(N_CANDLES, seed=11), tmp / "flow.csv")
        cfg = tiny_config(data, tmp, "wf-test", horizon=3)
        summary = run_walkforward(cfg, WF)
        runs = {
            r.info.run_id: r
            for r in MlflowClient().search_runs(
                [mlflow.get_experiment_by_name("tests").experiment_id], max_results=100
            )
        }
        yield {"summary": summary, "seen": seen, "runs": runs, "tmp": tmp, "cfg": cfg, "uri": uri}


def _artifact(uri: str, run_id: str, path: str, tmp: Path) -> Path:
    return Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, dst_path=str(tmp), tracking_uri=uri
        )
    )


def test_no_window_trains_or_decides_on_candles_after_its_cut(replay):
    windows = replay["summary"]["table"]
    cuts = pd.to_datetime(windows["cut"])
    ends = pd.to_datetime(windows["end"])
    assert len(replay["seen"]["train"]) == len(windows) == 4
    for last, cut in zip(replay["seen"]["train"], cuts, strict=True):
        assert last < cut  # the last candle a window trained on opened (and closed) before its cut
    # Every traded model saw only candles before its window's end, and was trained before that window.
    for trained_until, last in replay["seen"]["predict"]:
        window = int((ends > last.tz_localize("UTC")).argmax())
        assert last.tz_localize("UTC") < ends.iloc[window]
        assert pd.Timestamp(trained_until).tz_localize("UTC") < cuts.iloc[window]


def test_the_stitched_curve_is_the_concatenation_of_the_window_backtests(replay):
    summary, uri = replay["summary"], replay["uri"]
    children = sorted(
        (r for r in replay["runs"].values() if r.data.tags.get("step") == "walkforward_window"),
        key=lambda r: int(r.data.params["window"]),
    )
    assert len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {summary["run_id"]}
    logged = [
        pd.read_csv(_artifact(uri, r.info.run_id, "trades.csv", replay["tmp"] / r.info.run_id), index_col=0)
        for r in children
    ]
    stitched = pd.read_csv(
        _artifact(uri, summary["run_id"], "returns.csv", replay["tmp"] / "parent"), index_col=0
    )
    for name in ("gated", "gated_monitored", "always_promote", "never_retrain"):
        assert stitched[name].tolist() == pd.concat([t[name] for t in logged]).tolist()
        in_memory = pd.concat([w[name].returns for w in summary["trades"]])
        assert stitched[name].tolist() == pytest.approx(in_memory.tolist(), rel=0, abs=1e-15)
        equity = (1 + stitched[name]).prod() - 1
        assert summary["strategies"][name]["total_return"] == pytest.approx(equity, rel=1e-9)
    # consecutive windows trade consecutive periods: no period twice, none skipped between windows
    index = pd.to_datetime(stitched.index)
    assert index.is_unique and index.is_monotonic_increasing
    assert ((index[1:] - index[:-1]) == BAR).all()


def test_gated_trades_only_what_passed_and_baselines_trade_their_models(replay):
    table = replay["summary"]["table"]
    trades = replay["summary"]["trades"]
    # never retrain trades the first candidate: in window 0 that is the candidate itself
    assert trades[0]["never_retrain"].returns.equals(trades[0]["always_promote"].returns)
    production = ""
    for k, row in table.iterrows():
        if row["promoted"]:
            production = f"window {k:02d}"
            assert trades[k]["gated"].returns.equals(trades[k]["always_promote"].returns)
        assert row["production"] == production
        if not production:  # nothing passed yet: the bot stays out
            assert (trades[k]["gated"].returns == 0).all()
    # the planted signal is learnable: at least one window passes the gate
    assert table["promoted"].any(), table[["gate", "failed_checks"]]


def test_each_window_warm_starts_from_the_previous_best(replay):
    storage = replay["cfg"].optuna_storage
    studies = sorted(
        (s for s in optuna.get_all_study_summaries(storage) if "walkforward_cut" in s.user_attrs),
        key=lambda s: s.user_attrs["walkforward_cut"],
    )
    assert len(studies) == 4
    for before, after in zip(studies, studies[1:], strict=False):
        prev = optuna.load_study(study_name=before.study_name, storage=storage)
        nxt = optuna.load_study(study_name=after.study_name, storage=storage)
        best = sorted((t for t in prev.trials if t.value is not None), key=lambda t: -t.value)[0]
        assert nxt.trials[0].params == best.params
        assert nxt.trials[0].user_attrs.get("warm_start") is True


def test_parent_run_has_the_table_plot_report_and_comparison(replay):
    summary, uri = replay["summary"], replay["uri"]
    parent = replay["runs"][summary["run_id"]]
    assert parent.data.tags["step"] == "walkforward"
    assert "walk-forward" in parent.data.tags["mlflow.note.content"]
    for name in ("gated", "always_promote", "never_retrain", "buy_and_hold"):
        assert f"{name}_total_return" in parent.data.metrics
    files = {f.path for f in MlflowClient(uri).list_artifacts(summary["run_id"])}
    assert {"windows.csv", "returns.csv", "equity.csv", "walkforward.json", "walkforward_equity.png"} <= files
    html = _artifact(uri, summary["run_id"], "walkforward.html", replay["tmp"] / "html").read_text()
    assert "walkforward_equity.png" in html and "always promote" in html
    logged = json.loads(
        _artifact(uri, summary["run_id"], "walkforward.json", replay["tmp"] / "j").read_text()
    )
    assert logged["windows"] == 4


def test_a_planted_leak_is_caught(store, monkeypatch):
    """A window given candles past its cut (a slicing bug) fails loudly before anything is trained."""
    data = write_csv(make_flow_signal_candles(N_CANDLES, seed=11), store / "flow.csv")
    trained = []
    monkeypatch.setattr(wfmod, "training_candles", lambda candles, window: candles)  # the leak
    monkeypatch.setattr(wfmod, "study_for", lambda *a, **k: trained.append(a) or pytest.fail("trained"))
    with pytest.raises(
        LeakError, match=r"window 00 .*training candles holds \d+ candle\(s\) .* after the cut"
    ):
        run_walkforward(tiny_config(data, store, "wf-leak", horizon=3), WF)
    assert not trained


def test_cli_reports_bad_options_in_one_line(store, capsys):
    data = write_csv(make_flow_signal_candles(600, seed=11), store / "short.csv")
    assert main(["--data", data, "--retrain-every", "0"]) == 1
    assert "retrain_every" in capsys.readouterr().err
    assert main(["--data", data, "--min-train-days", "25"]) == 1
    assert "too short" in capsys.readouterr().err


# ------------------------------------------------------------------------- the monitored strategy


def _trade(n: int, returns: np.ndarray, labels: np.ndarray, proba: np.ndarray) -> tuple[WindowTrade, Window]:
    rows = pd.date_range("2024-01-01", periods=n, freq=BAR, tz="UTC")
    window = Window(0, rows[0] - pd.Timedelta(days=30), rows[0], rows[-1] + BAR)
    series = pd.Series(returns, index=rows + BAR)  # the period of row t starts at t + 1 bar
    return WindowTrade(series, series * 0, {}, None, rows=rows, proba=proba, labels=labels), window


def test_the_monitor_withdraws_a_losing_model_judging_only_what_was_known():
    rng = np.random.default_rng(0)
    n, horizon = 400, 3
    labels = rng.integers(0, 3, n).astype(float)
    proba = np.eye(3)[labels.astype(int)] * 0.5 + 0.5 / 3  # calls right: macro-F1 1.0
    config = MonitorConfig(n_boot=200)
    losing, window = _trade(n, np.full(n, -0.002) + rng.normal(0, 1e-4, n), labels, proba)
    reasons = degraded_window(losing, window, BAR, horizon, 0.5, config)
    assert reasons and "lost money" in reasons[0]
    # The same model, profitable on every period whose exit price was known at the window's end, with a
    # crash in the last one (exit after the end): not judged on what it could not know yet.
    tail = np.full(n, 0.002) + rng.normal(0, 1e-4, n)
    tail[-1] = -0.99
    known, window = _trade(n, tail, labels, proba)
    assert degraded_window(known, window, BAR, horizon, 0.5, config) == []
    # Calls far worse than promised: degraded on macro-F1, however the money went.
    wrong = np.eye(3)[(labels.astype(int) + 1) % 3] * 0.5 + 0.5 / 3
    bad, window = _trade(n, tail, labels, wrong)
    assert "macro-F1" in degraded_window(bad, window, BAR, horizon, 0.5, config)[0]
    short, window = _trade(60, tail[:60], labels[:60], proba[:60])
    assert degraded_window(short, window, BAR, horizon, 0.5, config) is None


def test_the_monitored_track_follows_the_gate_and_its_withdrawals(replay):
    table, trades = replay["summary"]["table"], replay["summary"]["trades"]
    production = ""
    for k, row in table.iterrows():
        if row["monitored_gate"] == "passed":
            production = f"window {k:02d}"
        assert row["monitored_production"] == production
        if not production:
            assert (trades[k]["gated_monitored"].returns == 0).all()
        elif production == row["production"]:
            assert trades[k]["gated_monitored"].returns.equals(trades[k]["gated"].returns)
        if row["monitor"].startswith("withdrew"):
            production = ""
        else:
            assert row["monitor"] in ("ok", "not judged (too few matured rows)", "")
