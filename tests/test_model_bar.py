"""The CLI steps know the model's bar: given finer candles and no ``--timeframe``, ``monitor``, ``predict``
and ``evaluate`` aggregate them to the bar size the model was trained on (saying so), with the same result
as candles resampled by hand; coarser candles are refused, in ``30min`` / ``4h`` wording.

One tiny model is trained (module fixture) on 4h bars made from 30-minute candles, as
``mlflow run . -e pipeline -P timeframe=4h`` on the built-in data would.
"""

from __future__ import annotations

import re

import mlflow
import pandas as pd
import pytest

from evaluation import evaluate as ev
from evaluation import monitor as mon
from evaluation import monitoring
from features.candles import resample
from features.data import DataError, load_candles, match_bar, resample_to
from models import predict as pr
from tests.helpers import make_candles, make_flow_signal_candles, throwaway_store, tiny_config, write_csv
from train.pipeline import run_pipeline

MODEL_NAME = "four-hour-model"
FINE, BAR = pd.Timedelta("30min"), pd.Timedelta("4h")
N_TRAIN_BARS, N_ALL_BARS = 2100, 2700


# ------------------------------------------------------------------------------- no model needed
def test_resample_to_equals_load_candles_with_the_timeframe(tmp_path):
    path = write_csv(make_candles(8 * 60 + 5, seed=3), tmp_path / "c.csv")
    by_hand = load_candles(path, "4h", None)
    frame, info = resample_to(*load_candles(path), BAR)
    assert frame.equals(by_hand[0]) and info == by_hand[1]
    assert info.bar == BAR and info.timeframe == "4h"


def test_match_bar_notes_what_it_did_and_leaves_other_cases_alone(tmp_path):
    candles, info = load_candles(write_csv(make_candles(8 * 30, seed=3), tmp_path / "c.csv"))
    out, new, note = match_bar(candles, info, BAR)
    assert new.bar == BAR and len(out) == new.rows < info.rows
    assert note.startswith("resampled the candles from 30min to 4h bars, the model's bar size")
    for bar, timeframe in ((FINE, None), (None, None), (BAR, "1h")):  # same bar, unknown bar, asked for
        same, same_info, nothing = match_bar(candles, info, bar, timeframe)
        assert same is candles and same_info is info and nothing is None


@pytest.mark.parametrize(
    ("candle_bar", "message"),
    [
        ("1d", "these candles are 1d bars, coarser than the 4h bars the model was trained on"),
        ("3h", "these candles are 3h bars; the model was trained on 4h bars, not a whole multiple of 3h"),
    ],
)
def test_candles_that_cannot_become_the_model_bar_are_refused(tmp_path, candle_bar, message):
    candles, info = load_candles(write_csv(make_candles(200, seed=3, freq=candle_bar), tmp_path / "c.csv"))
    with pytest.raises(DataError, match=re.escape(message)):
        match_bar(candles, info, BAR)


# ---------------------------------------------------------------------------------- a 4h model
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("model_bar")
    with throwaway_store(tmp) as (mp, uri):
        fine = make_flow_signal_candles(8 * N_ALL_BARS, seed=5, trend=0.0015)  # 30-minute candles
        train_csv = write_csv(fine.iloc[: 8 * N_TRAIN_BARS], tmp / "train.csv")
        result = run_pipeline(tiny_config(train_csv, tmp, MODEL_NAME, timeframe="4h", horizon=2))
        model_uri = f"models:/{MODEL_NAME}/{result['model_version']}"
        assert mlflow.pyfunc.load_model(model_uri).metadata.metadata["bar"] == str(BAR)
        (tmp / "fine").mkdir()
        (tmp / "hand").mkdir()
        (tmp / "coarse").mkdir()
        coarse = make_flow_signal_candles(N_ALL_BARS // 6, seed=5, freq="1d")
        yield {
            "tmp": tmp,
            "model_uri": model_uri,
            "fine": write_csv(fine, tmp / "fine" / "candles.csv"),
            "hand": write_csv(resample(fine, BAR, FINE), tmp / "hand" / "candles.csv"),
            "coarse": write_csv(coarse, tmp / "coarse" / "candles.csv"),
        }


def _run(main, args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _same(out: str, trained) -> list[str]:
    """Output lines, without the resampling note and run ids, and with either data folder as <data>."""
    text = out.replace(str(trained["tmp"] / "fine"), "<data>").replace(str(trained["tmp"] / "hand"), "<data>")
    text = re.sub(r"\b[0-9a-f]{32}\b", "<run>", text)
    return [line for line in text.splitlines() if not line.startswith("resampled the candles")]


NOTE = "resampled the candles from 30min to 4h bars, the model's bar size"


def test_predict_resamples_to_the_model_bar(trained, capsys, tmp_path):
    got, want = tmp_path / "fine.csv", tmp_path / "hand.csv"
    code, out, err = _run(
        pr.main,
        ["--model-uri", trained["model_uri"], "--data", trained["fine"], "--output", str(got)],
        capsys,
    )
    assert code == 0, err
    assert NOTE in out
    code, hand_out, err = _run(
        pr.main,
        ["--model-uri", trained["model_uri"], "--data", trained["hand"], "--output", str(want)],
        capsys,
    )
    assert code == 0, err
    assert NOTE not in hand_out
    pd.testing.assert_frame_equal(pd.read_csv(got), pd.read_csv(want))
    assert _same(out, trained)[1:] == _same(hand_out, trained)[1:]  # the first line names the output file


def test_evaluate_resamples_to_the_model_bar(trained, capsys):
    code, out, err = _run(ev.main, ["--model-uri", trained["model_uri"], "--data", trained["fine"]], capsys)
    assert code == 0, err
    assert NOTE in out
    code, hand_out, err = _run(
        ev.main, ["--model-uri", trained["model_uri"], "--data", trained["hand"]], capsys
    )
    assert code == 0, err
    assert _same(out, trained) == _same(hand_out, trained)


def test_monitor_resamples_to_the_model_bar(trained, capsys):
    fine = _run(mon.main, ["--model-uri", trained["model_uri"], "--data", trained["fine"]], capsys)
    assert fine[0] in (monitoring.EXIT_OK, monitoring.EXIT_DEGRADED, monitoring.EXIT_DRIFTED), fine[2]
    assert NOTE in fine[1]
    hand = _run(mon.main, ["--model-uri", trained["model_uri"], "--data", trained["hand"]], capsys)
    assert hand[0] == fine[0], hand[2]
    assert _same(fine[1], trained) == _same(hand[1], trained)


@pytest.mark.parametrize("main", [pr.main, ev.main, mon.main], ids=["predict", "evaluate", "monitor"])
def test_coarser_candles_are_refused_in_plain_bar_sizes(trained, capsys, tmp_path, main):
    args = ["--model-uri", trained["model_uri"], "--data", trained["coarse"]]
    code, out, err = _run(
        main, args + (["--output", str(tmp_path / "s.csv")] if main is pr.main else []), capsys
    )
    assert code == 1
    assert "these candles are 1d bars, coarser than the 4h bars the model was trained on" in err
    assert "days" not in err.split("trained on")[0]  # no "0 days 04:00:00"


def test_an_explicit_timeframe_other_than_the_model_bar_is_refused(trained, capsys, tmp_path):
    args = ["--model-uri", trained["model_uri"], "--data", trained["fine"], "--timeframe", "1h"]
    code, out, err = _run(pr.main, args + ["--output", str(tmp_path / "s.csv")], capsys)
    assert code == 1
    assert "these candles are 1h bars but the model was trained on 4h bars" in err
