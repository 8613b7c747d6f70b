"""Look-ahead analysis (evaluation/lookahead.py): our features and labels pass, planted leaks are caught."""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation import lookahead, lookahead_analysis
from evaluation.lookahead_analysis import LABEL_SET, MAX_FINDINGS_PER_COLUMN, analyse, choose_cuts
from features.indicators import (
    EXTENDED_NAMES,
    FEATURE_NAMES,
    FEATURE_SETS,
    compute_features,
    set_feature_names,
    warmup_bars,
)
from features.labels import HOLD, make_labels
from tests.helpers import make_candles

REPO = Path(__file__).resolve().parents[1]
N = 1500


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_candles(N, seed=3)


def leaking(column: str, make: Callable[[pd.DataFrame, pd.DataFrame], pd.Series]):
    """compute_features with ``column`` replaced by ``make(candles, features)``."""

    def compute(candles: pd.DataFrame, feature_set: str = "default") -> pd.DataFrame:
        out = compute_features(candles, feature_set)
        out[column] = make(candles, out)
        return out

    return compute


def next_close(candles, out):
    return candles["close"].shift(-1) / candles["close"] - 1.0


def centered_mean(candles, out):
    return candles["close"].rolling(5, center=True).mean() / candles["close"] - 1.0


def backfilled(candles, out):
    return out["rsi_14"].bfill()


def global_zscore(candles, out):
    return (candles["close"] - candles["close"].mean()) / candles["close"].std()


def only(report, column: str) -> dict[str, list[str]]:
    return {fs: [column] for fs in report.feature_sets}


# --------------------------------------------------------------------------------------------------
# Real features and labels pass


@pytest.mark.parametrize(
    ("horizon", "threshold", "vol_window"), [(6, 0.005, 0), (12, 1.0, 20)], ids=["fixed", "vol"]
)
def test_real_features_and_labels_pass(frame: pd.DataFrame, horizon: int, threshold: float, vol_window: int):
    report = analyse(frame, cuts=50, horizon=horizon, threshold=threshold, vol_window=vol_window)
    assert report.passed, report.to_markdown()
    assert report.findings == []
    assert report.feature_sets == list(FEATURE_SETS)
    assert report.n_cuts == 50 and len(set(report.cut_positions)) == 50
    w = max(warmup_bars(fs) for fs in FEATURE_SETS)
    assert {0, w - 1, w, w + 1, w + horizon, N - 1} <= set(report.cut_positions)
    assert report.cuts == [frame.index[p] for p in report.cut_positions]
    assert report.rows_checked == sum(p + 1 for p in report.cut_positions)
    assert "extended" in FEATURE_SETS
    for fs in FEATURE_SETS:
        assert list(report.counts[fs]) == list(set_feature_names(fs))
        for count in report.counts[fs].values():
            assert (count.rows_checked, count.changed) == (report.rows_checked, 0)
    assert report.counts[LABEL_SET]["label"].rows_checked == report.rows_checked
    assert report.counts[LABEL_SET]["label"].changed == 0


def test_single_feature_set_as_string(frame: pd.DataFrame):
    report = analyse(frame, feature_sets="seed15", cuts=5)
    assert report.passed and report.feature_sets == ["seed15"] and set(report.counts) == {"seed15", "label"}


# --------------------------------------------------------------------------------------------------
# Planted leaks are caught, and only the leaking column is named


def test_next_close_leak_is_caught(frame: pd.DataFrame):
    report = analyse(frame, cuts=50, compute=leaking("ema_20", next_close))
    assert not report.passed
    assert report.leaking_columns() == only(report, "ema_20")
    # close.shift(-1) changes exactly the last row of every cut except the one at the last bar.
    expected = sum(1 for p in report.cut_positions if p < N - 1)
    for fs in FEATURE_SETS:
        assert report.counts[fs]["ema_20"].changed == expected
    assert {f.column for f in report.findings} == {"ema_20"}
    full = next_close(frame, None)
    for f in report.findings:
        assert f.row == f.cut and f.reason == "changed"
        assert math.isnan(f.truncated) and f.full == pytest.approx(full[f.row])


def test_centered_rolling_mean_leak_is_caught(frame: pd.DataFrame):
    report = analyse(frame, cuts=50, compute=leaking("bb_position", centered_mean))
    assert report.leaking_columns() == only(report, "bb_position")
    positions = {ts: i for i, ts in enumerate(frame.index)}
    offsets = {positions[f.cut] - positions[f.row] for f in report.findings}
    assert offsets == {0, 1}  # a 5-bar centered window reads 2 bars ahead: the last 2 rows change


def test_backfill_leak_is_caught(frame: pd.DataFrame):
    report = analyse(frame, cuts=50, compute=leaking("rsi_14", backfilled))
    assert report.leaking_columns() == only(report, "rsi_14")
    # Only cuts inside the warm-up, before RSI's first value (bar 14), can see a back-fill.
    assert report.findings and all(frame.index.get_loc(f.row) < 14 for f in report.findings)
    assert all(math.isnan(f.truncated) and not math.isnan(f.full) for f in report.findings)


def test_global_statistic_leak_changes_every_row_and_findings_are_capped(frame: pd.DataFrame):
    report = analyse(frame, feature_sets=["default"], cuts=20, compute=leaking("macd", global_zscore))
    assert report.leaking_columns() == {"default": ["macd"]}
    # Every row of every cut but the full-length one changes (rows 0..c at cut c).
    assert report.counts["default"]["macd"].changed == sum(p + 1 for p in report.cut_positions if p < N - 1)
    assert len(report.findings) == MAX_FINDINGS_PER_COLUMN
    json.dumps(report.to_dict(), allow_nan=False)


def test_extended_set_passes_and_a_leak_in_a_new_column_is_caught(frame: pd.DataFrame):
    report = analyse(frame, feature_sets="extended", cuts=50)
    assert report.passed, report.to_markdown()
    assert list(report.counts["extended"]) == list(FEATURE_NAMES + EXTENDED_NAMES)
    assert all(c.rows_checked == report.rows_checked for c in report.counts["extended"].values())

    def centred_volatility(candles, out):  # a realised volatility read over a centred window
        return np.log(candles["close"]).diff().rolling(12, center=True).std()

    def next_bar_volume(candles, out):  # relative volume of the bar still to come
        return np.log1p(candles["volume"].shift(-1) / candles["volume"].rolling(48).median())

    for column, make in (("rvol_12", centred_volatility), ("volume_rel_48", next_bar_volume)):
        report = analyse(frame, feature_sets="extended", cuts=20, compute=leaking(column, make))
        assert report.leaking_columns() == {"extended": [column]}, column


def test_label_defaulting_the_tail_to_hold_is_caught(frame: pd.DataFrame):
    def tail_hold(close, horizon, threshold, vol_window):
        return make_labels(close, horizon, threshold, vol_window).fillna(HOLD)

    report = analyse(frame, cuts=30, horizon=6, labels=tail_hold)
    assert report.leaking_columns() == {LABEL_SET: ["label"]}
    assert report.findings and {f.reason for f in report.findings} == {"not NaN"}
    for f in report.findings:
        cut, row = frame.index.get_loc(f.cut), frame.index.get_loc(f.row)
        assert cut - 6 < row <= cut and f.truncated == HOLD


def test_label_looking_past_its_horizon_is_caught(frame: pd.DataFrame):
    def one_bar_too_far(close, horizon, threshold, vol_window):
        return make_labels(close, horizon + 1, threshold, vol_window)

    report = analyse(frame, cuts=30, horizon=6, labels=one_bar_too_far)
    assert report.leaking_columns() == {LABEL_SET: ["label"]}
    for f in report.findings:
        assert f.reason == "changed" and frame.index.get_loc(f.cut) - frame.index.get_loc(f.row) == 6
        assert math.isnan(f.truncated) and not math.isnan(f.full)


def test_report_serialises_and_renders(frame: pd.DataFrame):
    report = analyse(frame, cuts=10, compute=leaking("ema_20", next_close))
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["passed"] is False and data["n_cuts"] == 10
    assert data["leaking_columns"] == {"default": ["ema_20"], "seed15": ["ema_20"], "extended": ["ema_20"]}
    assert data["counts"]["default"]["rsi_14"] == {"rows_checked": report.rows_checked, "changed": 0}
    assert data["findings"][0]["truncated"] is None and data["cuts"][0] == frame.index[0].isoformat()
    md = report.to_markdown()
    assert "## feature set `default`" in md and "## feature set `seed15`" in md and "## label" in md
    assert "| column | rows checked | changed values | status |" in md
    assert f"| ema_20 | {report.rows_checked:,} | 9 | LOOK-AHEAD |" in md
    assert f"| rsi_14 | {report.rows_checked:,} | 0 | ok |" in md
    assert "FAILED" in md and "PASSED" in analyse(frame, cuts=3).to_markdown()


# --------------------------------------------------------------------------------------------------
# Cut points and comparison


def test_cut_points_are_deterministic_spread_and_complete():
    a = choose_cuts(N, 50, warmup=49, horizon=6, seed=0)
    assert a == choose_cuts(N, 50, warmup=49, horizon=6, seed=0) == sorted(set(a))
    assert len(a) == 50 and a[0] == 0 and a[-1] == N - 1
    assert {1, 3, 7, 15, 31, 48, 49, 50, 55} <= set(a)
    b = choose_cuts(N, 50, warmup=49, horizon=6, seed=1)
    assert len(b) == 50 and a != b and len(set(a) & set(b)) >= 40  # only the few random ones move
    assert np.diff(a).max() < 2 * (N - 49) / 35  # evenly spread, no big hole
    assert choose_cuts(10, 50, warmup=3, horizon=2) == list(range(10))
    assert choose_cuts(N, 1, warmup=49, horizon=6) == [49]
    assert choose_cuts(N, 2, warmup=49, horizon=6) == [49, N - 1]
    with pytest.raises(ValueError, match="cuts"):
        choose_cuts(N, 0, warmup=49, horizon=6)


def test_tolerance_is_nan_aware_and_relative():
    a = np.array([1.0, 1e6, np.nan, np.inf, 0.0, 1.0, np.nan, 1e-13])
    b = np.array([1.0 + 1e-12, 1e6 + 1e-4, np.nan, np.inf, 1e-13, 1.0 + 1e-6, 0.0, 0.0])
    expected = [False, False, False, False, False, True, True, False]
    assert lookahead_analysis._differs(a, b).tolist() == expected


def test_bad_arguments_are_refused(frame: pd.DataFrame):
    with pytest.raises(ValueError, match="horizon"):
        analyse(frame, horizon=0)
    with pytest.raises(TypeError, match="cuts"):
        analyse(frame, cuts=2.5)
    with pytest.raises(ValueError, match="unknown feature_set"):
        analyse(frame, feature_sets=["fancy"])
    with pytest.raises(ValueError, match="at least 2 candles"):
        analyse(frame.iloc[:1])
    with pytest.raises(ValueError, match="one row per candle"):
        analyse(frame, compute=lambda c, fs: compute_features(c, fs).iloc[:-1])


# --------------------------------------------------------------------------------------------------
# Command line


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory, frame: pd.DataFrame) -> Path:
    path = tmp_path_factory.mktemp("lookahead") / "candles.csv"
    frame.to_csv(path)
    return path


def test_cli_passes_on_a_small_csv_and_writes_the_report(csv_path: Path, tmp_path: Path, capsys):
    out = tmp_path / "report.md"
    assert lookahead.main(["--data", str(csv_path), "--cuts", "10", "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert "PASSED" in captured.out and "| rsi_14 |" in captured.out
    assert "## feature set `seed15`" in captured.out
    assert "1,500 rows" in captured.out and captured.err == ""
    assert out.read_text(encoding="utf-8") == captured.out


def test_cli_checks_the_context_features_when_asked(csv_path: Path, capsys):
    argv = ["--data", str(csv_path), "--cuts", "10", "--features", "seed15", "--context-timeframe", "2h"]
    assert lookahead.main(argv) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "| rsi_14 |" in out
    assert all(f"| ctx_2h_{name} |" in out for name in FEATURE_NAMES)


def test_cli_fails_and_names_the_leaking_column(csv_path: Path, monkeypatch, capsys):
    monkeypatch.setattr(lookahead, "compute_features", leaking("donchian_high_20", next_close))
    assert lookahead.main(["--data", str(csv_path), "--cuts", "10", "--features", "default"]) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.out and "| donchian_high_20 |" in captured.out
    assert "look-ahead found in default: donchian_high_20" in captured.err
    assert "rsi_14" not in captured.err and "seed15" not in captured.err


def test_cli_fails_on_a_leaking_label(csv_path: Path, monkeypatch, capsys):
    monkeypatch.setattr(lookahead, "make_labels", lambda c, h, t, v: make_labels(c, h, t, v).fillna(HOLD))
    assert lookahead.main(["--data", str(csv_path), "--cuts", "10"]) == 1
    assert "look-ahead found in label: label" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--features", "fancy"], "unknown feature set(s) ['fancy']"),
        (["--data", "no/such/file.csv"], "does not exist"),
        (["--cuts", "0"], "cuts must be >= 1"),
        (["--horizon", "0"], "horizon"),
        (["--threshold", "-1"], "threshold"),
        (["--vol-window", "1"], "vol_window"),
        (["--days", "-3"], "days must be >= 0"),
        (["--timeframe", "7x"], "Invalid timeframe"),
        (["--output", "no/such/dir/report.md", "--cuts", "2"], "cannot write the report"),
    ],
)
def test_cli_bad_input_exits_1_with_a_clear_error(csv_path: Path, args, message, capsys):
    argv = ["--data", str(csv_path), *args] if "--data" not in args else args
    assert lookahead.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


@pytest.mark.parametrize("args", [["--cuts", "abc"], ["--cuts", "2.5"], ["--threshold", "x"]])
def test_cli_malformed_options_exit_2(args):
    with pytest.raises(SystemExit) as exc:
        lookahead.main(args)
    assert exc.value.code == 2


def test_mlproject_entry_point_mirrors_the_cli(csv_path: Path, capsys):
    from mlflow.projects._project_spec import load_project

    entry = load_project(str(REPO)).get_entry_point("lookahead")
    defaults = {k: p.default for k, p in entry.parameters.items() if k != "config"}  # test_config.py
    assert defaults == {
        "data": "builtin",
        "timeframe": "",
        "days": 0,
        "features": "all",
        "context_timeframe": "",
        "pair_data": "",
        "cuts": 50,
        "horizon": 6,
        "threshold": 0.005,
        "vol_window": 0,
        "label": "threshold",
        "primary": "none",
    }
    argv = shlex.split(entry.compute_command({}, None))
    assert argv[:3] == ["python", "-m", "evaluation.lookahead"]
    parsed = lookahead.build_parser().parse_args(argv[3:])
    assert {k: getattr(parsed, k) for k in defaults} == defaults | {"threshold": 0.005}
    # MLflow hands float parameters over as typed; the command accepts "8.0" as 8.
    argv = shlex.split(entry.compute_command({"data": str(csv_path), "cuts": "8.0", "vol_window": 20}, None))
    assert lookahead.main(argv[3:]) == 0
    assert "vol_window 20" in capsys.readouterr().out


@pytest.mark.slow
def test_builtin_data_passes_from_the_command_line():
    """The shipped data, both feature sets and the label, at the command's default 50 cut points."""
    proc = subprocess.run(
        [sys.executable, "-m", "evaluation.lookahead", "--data", "builtin"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED" in proc.stdout and "35,019 rows" in proc.stdout and "50 cuts" in proc.stdout
