"""What a user sees while a run works: progress lines, the log level, and no library warning noise.

Also the cause of the "y_prob values do not sum to one" warnings (issue 12): XGBoost's float32
probabilities, off by up to ~1e-7 per row, checked by scikit-learn against float64's tolerance.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from evaluation.metrics import classification_metrics
from models.base import build_model
from models.ensemble import WeightedSoftVoting, as_probabilities, fit_predict_fold, fit_weights
from tests.helpers import make_flow_signal_candles, write_csv
from train.config import PROJECT_LOGGERS, build_parser, configure_logging, parse_args
from train.split import PurgedWalkForward
from train.tune import run_study

# ---------------------------------------------------------------------------------------------------
# Probabilities sum to one in float64


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1500, 8))
    y = rng.integers(0, 3, 1500)
    return X, y


def _xgboost(seed=0):
    return build_model("xgboost", {"n_estimators": 30}, seed=seed, n_jobs=1)


def test_xgboost_float32_rows_are_what_breaks_the_sum(xy):
    X, y = xy
    raw = _xgboost().fit(X, y).predict_proba(X)
    assert raw.dtype == np.float32  # the cause: if XGBoost ever returns float64, this test can go
    fixed = as_probabilities(raw)
    assert fixed.dtype == np.float64
    assert np.abs(fixed.sum(axis=1) - 1).max() < 1e-12
    assert np.abs(fixed - raw).max() < 1e-6  # only rounding moved


def test_no_sum_warning_from_metrics_folds_weights_or_ensemble(xy):
    X, y = xy
    train, test = np.arange(1000), np.arange(1000, 1500)
    classes = np.arange(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        xgb = _xgboost().fit(X[train], y[train])
        metrics = classification_metrics(y[test], xgb.predict_proba(X[test]))
        oof_x = fit_predict_fold(_xgboost(), X, y, train, test, classes)
        oof_l = fit_predict_fold(
            build_model("lightgbm", {"n_estimators": 30}, n_jobs=1), X, y, train, test, classes
        )
        fit_weights([oof_x, oof_l], y[test], step=0.1)
        ens = WeightedSoftVoting(
            [("xgboost", _xgboost()), ("lightgbm", build_model("lightgbm", {"n_estimators": 30}, n_jobs=1))],
            weights=[0.7, 0.3],
        ).fit(X[train], y[train])
        proba = ens.predict_proba(X[test])
        classification_metrics(y[test], proba)
    sums = [str(w.message) for w in caught if "sum to one" in str(w.message)]
    assert sums == []
    assert np.isfinite(metrics["log_loss"])
    for p in (oof_x, proba):
        assert p.dtype == np.float64
        assert np.abs(p.sum(axis=1) - 1).max() < 1e-12


def test_metrics_clip_keeps_rows_summing_to_one():
    proba = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]], dtype=np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = classification_metrics([0, 1], proba)
    assert not [w for w in caught if "sum to one" in str(w.message)]
    assert m["log_loss"] == pytest.approx(np.log(2) / 2, abs=1e-12)


# ---------------------------------------------------------------------------------------------------
# Progress lines and --log-level

REPO = Path(__file__).resolve().parents[1]
TRIAL_LINE = re.compile(r"^trial +lightgbm (\d+)/3: (macro-F1 [0-9.]+|pruned.*|cut.*) \(\d+s\); best [0-9.]+")


@pytest.fixture
def restore_logging():
    """configure_logging changes process-wide loggers: put them back for the next test."""
    names = (*PROJECT_LOGGERS, "mlflow")
    levels = {n: logging.getLogger(n).level for n in names}
    root = logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    yield
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)
    root.handlers[:] = handlers
    root.setLevel(root_level)


def _tiny_study(tmp_path, timeout=600):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 4))
    y = np.where(X[:, 0] > 0.5, 2, np.where(X[:, 0] < -0.5, 0, 1))
    cv = PurgedWalkForward(n_splits=2, gap=2)
    return run_study(
        "lightgbm",
        X,
        y,
        cv,
        n_trials=3,
        timeout=timeout,
        storage=f"sqlite:///{tmp_path}/o.db",
        study_name="s",
        n_jobs=1,
    )


@pytest.mark.slow
def test_tuning_says_one_line_per_trial_with_k_of_n_and_best_so_far(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="train.tune")
    study = _tiny_study(tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.name == "train.tune"]
    trials = [m for m in lines if m.startswith("trial")]
    assert len(trials) == 3, lines
    assert [int(TRIAL_LINE.match(m).group(1)) for m in trials] == [1, 2, 3]
    assert all("\r" not in m and "\n" not in m for m in lines)  # one plain line each: CI logs, files
    assert all(re.search(r"; \d+s of the 600s timeout left$", m) for m in trials)
    assert trials[-1].split("best ")[1].startswith(f"{study.best_value:.4f}")
    assert lines[0].startswith("tuning    lightgbm: 3 of 3 trials to run")


@pytest.mark.slow
def test_log_level_warning_hides_progress_and_info_shows_it(tmp_path, capsys, restore_logging):
    configure_logging("WARNING")
    (tmp_path / "a").mkdir()
    _tiny_study(tmp_path / "a")
    out, err = capsys.readouterr()
    assert "trial" not in out + err
    configure_logging("INFO")
    (tmp_path / "b").mkdir()
    _tiny_study(tmp_path / "b")
    out, err = capsys.readouterr()
    assert len([line for line in out.splitlines() if TRIAL_LINE.match(line)]) == 3, out
    assert err == ""


def test_log_level_is_an_option_not_a_run_parameter():
    assert build_parser().parse_args(["--log-level", "debug"]).log_level == "DEBUG"
    assert "log_level" not in parse_args(["--log-level", "WARNING"]).to_dict()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--log-level", "chatty"])


@pytest.mark.slow
def test_a_tiny_run_shows_progress_and_no_library_warnings(tmp_path):
    data = write_csv(make_flow_signal_candles(2600), tmp_path / "candles.csv")
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db", PYTHONPATH=str(REPO))
    for var in ("PYTHONWARNINGS", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        env.pop(var, None)
    cmd = [
        sys.executable,
        "-m",
        "train.pipeline",
        "--data",
        data,
        "--models",
        "lightgbm",
        "--n-trials",
        "2",
        "--n-folds",
        "3",
        "--n-jobs",
        "1",
        "--horizon",
        "3",
        "--model-name",
        "progress-model",
        "--optuna-storage",
        f"sqlite:///{tmp_path}/optuna.db",
    ]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    text = out.stdout + out.stderr
    noisy = [line for line in text.splitlines() if "Warning" in line or "warnings.warn" in line]
    assert noisy == [], noisy
    assert "INFO mlflow" not in text  # MLflow's own INFO lines only at --log-level DEBUG
    assert "Passing a Python object as `python_model`" not in text
    stdout = out.stdout.splitlines()
    assert [line for line in stdout if line.startswith("trial     lightgbm ")][-1].startswith(
        "trial     lightgbm 2/2"
    )
    assert any(line.startswith("tuned     lightgbm") for line in stdout)
    for stage in ("ensemble", "evaluate", "report", "register"):
        assert any(re.match(rf"{stage} +done in \d+s$", line) for line in stdout), stage
    assert "== summary" in out.stdout and any(line.startswith("gate      ") for line in stdout)
    assert json.loads(stdout[-1])["model_version"] == "1"  # the line scripts parse, last on stdout
