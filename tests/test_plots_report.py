"""Plots and importances (evaluation/plots.py) and the HTML run report (evaluation/report.py)."""

from __future__ import annotations

import base64
import logging
import re

import matplotlib
import numpy as np
import optuna
import pandas as pd
import pytest
from PIL import Image
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression

from evaluation.gate import GateCheck, GateReport
from evaluation.metrics import classification_metrics
from evaluation.plots import (
    gain_importance,
    holdout_permutation_importance,
    plot_equity,
    plot_importance,
    plot_optuna,
    plot_reliability,
)
from evaluation.report import render_report, write_report
from models.base import MODEL_NAMES, build_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FEATURES = ["noise_a", "noise_b", "signal", "noise_c"]


def assert_png(path, min_width: int = 500, min_height: int = 300) -> None:
    """A real PNG of a readable size whose pixels are not all the same colour."""
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.width >= min_width and img.height >= min_height, img.size
        pixels = np.asarray(img.convert("L"), dtype=float)
    assert pixels.var() > 0


@pytest.fixture(scope="module")
def signal_data():
    """Only ``signal`` carries information about the label; the three noise columns carry none."""
    rng = np.random.default_rng(3)
    n = 900
    X = pd.DataFrame(rng.standard_normal((n, len(FEATURES))), columns=FEATURES)
    y = np.digitize(X["signal"] + 0.3 * rng.standard_normal(n), [-0.45, 0.45])
    return X.iloc[:600], y[:600], X.iloc[600:], y[600:]


@pytest.fixture(scope="module")
def fitted(signal_data):
    X, y, _, _ = signal_data
    return {name: build_model(name, {"n_estimators": 25}, seed=0, n_jobs=1).fit(X, y) for name in MODEL_NAMES}


# ------------------------------------------------------------------------------------------------ plots
def test_plot_equity_writes_a_png(tmp_path):
    idx = pd.date_range("2024-01-01", periods=400, freq="30min", tz="UTC")
    rng = np.random.default_rng(0)
    equity = pd.Series(np.exp(np.cumsum(rng.normal(0.0005, 0.004, 400))), idx)
    bench = pd.Series(np.exp(np.cumsum(rng.normal(0.0, 0.006, 400))), idx)
    out = plot_equity(equity / equity.iloc[0], bench / bench.iloc[0], tmp_path / "equity.png")
    assert out == tmp_path / "equity.png"
    assert_png(out)
    with Image.open(out) as img:
        assert img.width > img.height  # landscape, two stacked panels


def test_plot_equity_refuses_empty_series(tmp_path):
    with pytest.raises(ValueError, match="non-empty"):
        plot_equity(pd.Series(dtype=float), pd.Series(dtype=float), tmp_path / "e.png")


def test_plot_reliability_writes_a_png(tmp_path):
    rng = np.random.default_rng(1)
    proba = rng.dirichlet([2, 3, 2], size=500)
    y = np.array([rng.choice(3, p=p) for p in proba])
    out = plot_reliability(y, proba, tmp_path / "rel.png")
    assert_png(out)


def test_plot_reliability_survives_constant_and_never_predicted_class(tmp_path):
    n = 300
    proba = np.tile([0.3, 0.7, 0.0], (n, 1))  # every column constant, "buy" never predicted
    y = np.random.default_rng(2).integers(0, 2, n)  # and "buy" never occurs
    assert_png(plot_reliability(y, proba, tmp_path / "rel.png"))


def test_plot_reliability_checks_shapes(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        plot_reliability([0, 1, 2], np.full((3, 2), 0.5), tmp_path / "rel.png")


def test_plot_importance_writes_a_png(tmp_path, fitted):
    gains = {name: gain_importance(model, FEATURES) for name, model in fitted.items()}
    perm = pd.DataFrame({"mean": [0.2, 0.01, 0.0, -0.01], "std": [0.02, 0.01, 0.01, 0.005]}, index=FEATURES)
    assert_png(plot_importance(gains, perm, tmp_path / "imp.png", top=3))
    assert_png(plot_importance({"lightgbm": gains["lightgbm"]}, None, tmp_path / "one.png"))
    with pytest.raises(ValueError):
        plot_importance({}, None, tmp_path / "none.png")


# ------------------------------------------------------------------------------------------ importances
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gain_importance_normalised_and_finds_the_signal(name, fitted):
    imp = gain_importance(fitted[name], FEATURES)
    assert list(imp.index) == FEATURES
    assert imp.sum() == pytest.approx(1.0)
    assert (imp >= 0).all()
    assert imp.idxmax() == "signal"
    assert imp["signal"] > 2 * imp.drop("signal").max()


def test_gain_importance_maps_xgboost_positional_names(signal_data):
    """Fitted on a bare array, XGBoost calls the features f0..f3; they map back to the given names."""
    X, y, _, _ = signal_data
    model = build_model("xgboost", {"n_estimators": 25}, seed=0, n_jobs=1).fit(X.to_numpy(), y)
    assert set(model.get_booster().get_score(importance_type="total_gain")) <= {"f0", "f1", "f2", "f3"}
    imp = gain_importance(model, FEATURES)
    assert list(imp.index) == FEATURES
    assert imp.idxmax() == "signal"
    assert imp.sum() == pytest.approx(1.0)


def test_gain_importance_unused_xgboost_feature_is_zero(signal_data):
    X, y, _, _ = signal_data
    X = X.assign(constant=1.0)  # never split on: absent from get_score
    model = build_model("xgboost", {"n_estimators": 10}, seed=0, n_jobs=1).fit(X, y)
    imp = gain_importance(model, list(X.columns))
    assert imp["constant"] == 0.0
    assert imp.sum() == pytest.approx(1.0)


def test_gain_importance_rejects_unknown_models_and_wrong_names(signal_data, fitted):
    X, y, _, _ = signal_data
    with pytest.raises(TypeError, match="LogisticRegression"):
        gain_importance(LogisticRegression().fit(X, y), FEATURES)
    with pytest.raises(ValueError, match="feature names"):
        gain_importance(fitted["random_forest"], FEATURES[:2])


def test_permutation_importance_ranks_the_signal_first(signal_data, fitted):
    _, _, X_hold, y_hold = signal_data
    imp = holdout_permutation_importance(fitted["lightgbm"], X_hold, y_hold, seed=0, n_repeats=3)
    assert imp.index.name == "feature"
    assert list(imp.columns) == ["mean", "std"]
    assert set(imp.index) == set(FEATURES)
    assert imp.index[0] == "signal"
    assert imp.loc["signal", "mean"] > 0.2  # shuffling the only signal costs a lot of macro-F1
    assert imp.drop("signal")["mean"].abs().max() < 0.05


class EchoColumn(ClassifierMixin, BaseEstimator):
    """A fitted 'model' that predicts the value of one column: its importance is known in closed form."""

    def fit(self, X, y):
        self.classes_ = np.arange(3)
        return self

    def predict(self, X):
        return X["f"].to_numpy()


def test_permutation_importance_scores_macro_f1_over_all_three_classes():
    """y = f in {0, 1}, class 2 never occurs: macro-F1 over labels 0, 1, 2 drops from 2/3 to ~1/3 when f is
    shuffled, so the importance is ~1/3 (accuracy, or F1 over the present labels only, would give ~1/2)."""
    rng = np.random.default_rng(0)
    f = rng.integers(0, 2, 4000)
    X = pd.DataFrame({"f": f, "other": rng.standard_normal(4000)})
    imp = holdout_permutation_importance(EchoColumn().fit(X, f), X, f, seed=0, n_repeats=3)
    assert imp.loc["f", "mean"] == pytest.approx(1 / 3, abs=0.03)
    assert imp.loc["other", "mean"] == 0.0


class CountingEcho(EchoColumn):
    def predict(self, X):
        self.largest_ = max(getattr(self, "largest_", 0), len(X))
        return super().predict(X)


def test_permutation_importance_on_a_long_holdout_scores_a_seeded_sample_of_rows():
    rng = np.random.default_rng(1)
    f = rng.integers(0, 2, 4000)
    X = pd.DataFrame({"f": f, "other": rng.standard_normal(4000)})
    model = CountingEcho().fit(X, f)
    imp = holdout_permutation_importance(model, X, f, seed=0, n_repeats=3, max_rows=1000)
    assert model.largest_ == 1000 and imp.attrs["rows"] == 1000
    assert imp.loc["f", "mean"] == pytest.approx(1 / 3, abs=0.05)  # the sample still tells the same story
    again = holdout_permutation_importance(CountingEcho().fit(X, f), X, f, seed=0, n_repeats=3, max_rows=1000)
    pd.testing.assert_frame_equal(imp, again)
    full = CountingEcho().fit(X, f)
    assert holdout_permutation_importance(full, X, f, n_repeats=1, max_rows=None).attrs["rows"] == 4000
    assert full.largest_ == 4000


# ------------------------------------------------------------------------------------------------ optuna
def _study(n_trials: int, model: str = "lightgbm") -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr("model", model)
    study.optimize(
        lambda t: -((t.suggest_float("x", -3, 3) - 1) ** 2) + 0.1 * t.suggest_int("k", 1, 5), n_trials
    )
    return study


def test_plot_optuna_writes_history_and_importance(tmp_path):
    style_before = dict(matplotlib.rcParams)
    paths = plot_optuna(_study(3), tmp_path)
    assert sorted(p.name for p in paths) == ["optuna_history_lightgbm.png", "optuna_importance_lightgbm.png"]
    for p in paths:
        assert_png(p)
    # optuna switches to the ggplot style globally; that must not leak into later plots
    assert matplotlib.rcParams["axes.facecolor"] == style_before["axes.facecolor"]


def test_plot_optuna_skips_instead_of_crashing(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="evaluation.plots"):
        assert plot_optuna(_study(1), tmp_path) == []
    assert list(tmp_path.iterdir()) == []
    # no parameter at all: the history is drawn, the importance is skipped
    study = optuna.create_study(study_name="no-params")
    study.optimize(lambda t: 1.0, n_trials=3)
    assert [p.name for p in plot_optuna(study, tmp_path)] == ["optuna_history_no-params.png"]


# ------------------------------------------------------------------------------------------------ report
def _metrics(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    proba = rng.dirichlet([1, 1, 1], size=200)
    y = rng.integers(0, 3, 200)
    return classification_metrics(y, proba)


@pytest.fixture
def ctx(tmp_path):
    img = tmp_path / "cm.png"
    Image.new("RGB", (20, 10), (200, 30, 30)).save(img)
    gate = GateReport(
        passed=False,
        checks=[
            GateCheck("macro_f1_floor", True, 0.41, 0.36, "holdout macro-F1 0.4100 vs floor 0.3600"),
            GateCheck("beats_best_baseline", True, 0.05, 0.02, "margin ok"),
            GateCheck("gain_is_significant", False, 0.81, 0.95, "bootstrap <b>81%</b> of resamples"),
            GateCheck("not_worse_than_production", True, None, None, "no production version yet"),
        ],
        candidate_macro_f1=0.41,
        baseline_name="stratified",
        baseline_macro_f1=0.36,
    )
    return {
        "title": "crypto-signals run",
        "run_id": "<script>alert(1)</script>",
        "created": "2026-01-02T03:04:05+00:00",
        "config": {"data": "/data/<img src=x onerror=alert(2)>.csv", "n_trials": 12, "threshold": 0.005},
        "data": {"source": "builtin", "description": "builtin: 35,019 rows", "rows": 35019},
        "plan": {
            "development": {
                "rows": 27000,
                "time": ["2017-10-10 00:00:00+00:00", "2019-05-01 00:00:00+00:00"],
            },
            "holdout": {"rows": 6900, "time": ["2019-05-01 03:00:00+00:00", "2019-09-30 00:00:00+00:00"]},
            "purge_gap_rows": 6,
            "folds": [
                {
                    "fold": k,
                    "n_train": 4000 * (k + 1),
                    "n_validation": 4000,
                    "train_time": ["2017-10-10", f"2018-0{k + 1}-01"],
                    "validation_time": [f"2018-0{k + 1}-02", f"2018-0{k + 2}-01"],
                }
                for k in range(2)
            ],
        },
        "models": {
            "lightgbm": {"cv_macro_f1_mean": 0.41234, "cv_macro_f1_std": 0.01502, "holdout": _metrics(1)},
            "xgboost": {"cv_macro_f1_mean": 0.39871, "cv_macro_f1_std": 0.02, "holdout": _metrics(2)},
        },
        "ensemble": {"weights": {"lightgbm": 0.65, "xgboost": 0.35}, "holdout": _metrics(3)},
        "baselines": {"majority": _metrics(4), "stratified": _metrics(5)},
        "gate": gate.to_dict(),
        "backtest": {
            "config": {"fee_bps": 10},
            "metrics": {"total_return": 0.1234, "sharpe": 1.1, "max_drawdown": -0.2},
            "benchmark_metrics": {"total_return": -0.05, "sharpe": -0.3, "max_drawdown": -0.45},
            "deflated_sharpe": {"sharpe": 1.1, "dsr": 0.62, "n_trials": 36},
        },
        "images": [("Confusion matrix: ensemble", img)],
    }


def test_report_is_self_contained(ctx):
    page = render_report(ctx)
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "<link" not in page.lower()
    assert not re.search(r"<script[^>]*src", page, re.IGNORECASE)
    assert "<style>" in page
    img_srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(img_srcs) == 1
    assert (
        img_srcs[0] == "data:image/png;base64," + base64.b64encode(ctx["images"][0][1].read_bytes()).decode()
    )


def test_report_decision_box_lists_every_check(ctx):
    page = render_report(ctx)
    decision = re.search(r'<section id="decision" class="decision (\w+)">(.*?)</section>', page, re.S)
    assert decision is not None
    assert decision.group(1) == "fail"
    assert "Gate failed" in decision.group(2)
    for check in ctx["gate"]["checks"]:
        assert check["name"] in decision.group(2)
    assert decision.group(2).count("&#10007; fail") == 1
    assert decision.group(2).count("&#10003; pass") == 3
    # the box comes before every other section
    assert page.index('id="decision"') < page.index('id="data"') < page.index('id="models"')

    ctx["gate"] = GateReport(
        passed=True, checks=[GateCheck("macro_f1_floor", True, 0.5, 0.36, "ok")]
    ).to_dict()
    page = render_report(ctx)
    assert 'class="decision pass"' in page and "Gate passed" in page


def test_report_models_numbers_and_tables(ctx):
    page = render_report(ctx)
    for name in ("lightgbm", "xgboost", "ensemble", "majority", "stratified"):
        assert f"<td>{name}</td>" in page or f"<b>{name}</b>" in page
    assert "0.4123 &plusmn; 0.0150" in page
    assert "0.3987 &plusmn; 0.0200" in page
    assert f"{ctx['ensemble']['holdout']['macro_f1']:.4f}" in page
    assert f"{ctx['models']['xgboost']['holdout']['log_loss']:.4f}" in page
    assert ">0.65<" in page and ">0.35<" in page
    for c in ("sell", "hold", "buy"):
        assert f"<td>{c}</td>" in page
    assert ">35,019<" in page and "2019-05-01 03:00:00+00:00" in page
    assert page.count("<tr>") >= 2 + 3  # folds and per-class rows at least
    assert ">8,000<" in page and "2018-02-02 &rarr; 2018-03-01" in page  # second fold
    assert '<th>threshold</th><td class="num">0.005</td>' in page  # settings exactly as given


def test_report_escapes_user_strings(ctx):
    page = render_report(ctx)
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "<b>81%</b>" not in page and "&lt;b&gt;81%&lt;/b&gt;" in page
    assert "<script" not in page.lower()


def test_report_backtest_and_deflated_sharpe(ctx):
    page = render_report(ctx)
    section = re.search(r'<section id="backtest">(.*?)</section>', page, re.S).group(1)
    for metric in ("total_return", "sharpe", "max_drawdown"):
        assert f"<td>{metric}</td>" in section
    assert "0.1234" in section and "-0.4500" in section
    assert "not distinguishable from luck given 36 trials" in section
    ctx["backtest"]["deflated_sharpe"]["dsr"] = 0.97
    page = render_report(ctx)
    assert "not distinguishable from luck" not in page and "remains significant" in page


def test_report_omits_missing_optional_sections(ctx, tmp_path):
    ctx["backtest"] = None
    del ctx["images"]
    page = render_report(ctx)
    assert 'id="backtest"' not in page and "Deflated" not in page
    assert 'id="figures"' not in page and "<img" not in page
    assert 'id="lookahead"' not in page
    ctx["lookahead"] = {"passed": True, "detail": "changing candles after t changes nothing at or before t"}
    assert 'id="lookahead"' in render_report(ctx)

    out = write_report(ctx, tmp_path / "sub" / "report.html")
    assert out == tmp_path / "sub" / "report.html"
    assert out.read_text(encoding="utf-8") == render_report(ctx)


def test_report_missing_image_file_is_noted_not_fatal(ctx, tmp_path):
    ctx["images"].append(("Equity curve", tmp_path / "missing.png"))
    page = render_report(ctx)
    assert page.count("<img ") == 1
    assert "figure not available: Equity curve" in page
