"""Diagnostic plots and feature importances for a person reading a run. No tracking calls here.

Every plot function writes one PNG (Agg backend, ~110 dpi, figure closed after saving) and returns its
path; the pipeline decides where it is logged. Nothing here feeds back into a model: importances and
calibration are measured after every model decision was taken.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd

from evaluation.metrics import macro_f1
from features.labels import CLASS_NAMES

if TYPE_CHECKING:
    import optuna
    from matplotlib.axes import Axes

log = logging.getLogger(__name__)

DPI = 110
# One colour per class, the same in every plot (sell red, hold grey, buy green).
CLASS_COLOURS = {"sell": "#d62728", "hold": "#7f7f7f", "buy": "#2ca02c"}
STRATEGY_COLOUR, BENCHMARK_COLOUR = "#1f77b4", "#ff7f0e"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    _pyplot().close(fig)
    return path


def _class_colour(name: str, k: int) -> str:
    return CLASS_COLOURS.get(name, f"C{k}")


# --------------------------------------------------------------------------------------------- backtest
def drawdown(equity: pd.Series) -> pd.Series:
    """Drawdown from the running peak, as a fraction (0 at a new high, -0.25 = 25% below the peak)."""
    equity = equity.astype(float)
    return equity / equity.cummax() - 1.0


def plot_equity(
    equity: pd.Series, benchmark_equity: pd.Series, path: str | Path, title: str = "Holdout backtest"
) -> Path:
    """Strategy equity vs buy-and-hold (both start at 1.0) and, below on the same time axis, both drawdowns.

    The legend carries each curve's total return and maximum drawdown, so the picture reads without the
    tables.
    """
    if len(equity) == 0 or len(benchmark_equity) == 0:
        raise ValueError("plot_equity needs non-empty equity and benchmark series")
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(7.5, 5.0), sharex=True, gridspec_kw={"height_ratios": [2, 1], "hspace": 0.08}
    )
    for series, label, colour in (
        (equity, "strategy", STRATEGY_COLOUR),
        (benchmark_equity, "buy and hold", BENCHMARK_COLOUR),
    ):
        series = series.astype(float)
        dd = drawdown(series) * 100.0
        total = series.iloc[-1] / series.iloc[0] - 1.0
        top.plot(
            series.index,
            series.to_numpy(),
            color=colour,
            lw=1.3,
            label=f"{label} ({total:+.1%}, max drawdown {dd.min():.1f}%)",
        )
        bottom.fill_between(dd.index, dd.to_numpy(), 0.0, color=colour, alpha=0.35, lw=0, label=label)
        bottom.plot(dd.index, dd.to_numpy(), color=colour, lw=0.8)
    top.axhline(1.0, color="black", lw=0.6, ls=":")
    top.set_ylabel("equity (start = 1.0)")
    top.set_title(title, fontsize=11)
    top.legend(loc="best", fontsize=8, frameon=False)
    top.grid(alpha=0.3)
    bottom.set_ylabel("drawdown (%)")
    bottom.set_xlabel("time")
    bottom.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.subplots_adjust(left=0.1, right=0.97, top=0.93, bottom=0.2)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------- calibration
def plot_reliability(
    y_true, proba: np.ndarray, path: str | Path, class_names=CLASS_NAMES, n_bins: int = 10
) -> Path:
    """Reliability curve per class (one-vs-rest) with the diagonal, and the predicted-probability histograms.

    Bins are quantiles of each class's predicted probability (``strategy="quantile"``): these models
    put nearly all their probability mass in a narrow band (e.g. 0.25-0.5), where uniform bins would
    leave most bins empty and a few points resting on a handful of rows. Quantile bins give every point
    the same number of rows, so every point is equally trustworthy. A class whose probability is
    constant (or never predicted) collapses to one point; a class that cannot be binned at all is
    listed as such in the legend instead of raising.
    """
    from sklearn.calibration import calibration_curve

    y_true = np.asarray(y_true)
    proba = np.clip(np.asarray(proba, dtype=float), 0.0, 1.0)
    if proba.ndim != 2 or proba.shape[0] != len(y_true) or proba.shape[1] != len(class_names):
        raise ValueError(
            f"proba must have shape (n_rows, {len(class_names)}) matching y_true ({len(y_true)} rows), "
            f"got {proba.shape}"
        )
    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(7.0, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08}
    )
    ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--", label="perfectly calibrated")
    bins = np.linspace(0.0, 1.0, 41)
    for k, name in enumerate(class_names):
        colour = _class_colour(name, k)
        is_k = (y_true == k).astype(int)
        p = proba[:, k]
        try:
            frac_pos, mean_pred = calibration_curve(is_k, p, n_bins=n_bins, strategy="quantile", pos_label=1)
        except ValueError as exc:  # e.g. no rows at all
            log.info("no reliability curve for class %s: %s", name, exc)
            ax.plot([], [], color=colour, label=f"{name}: not computable")
        else:
            ax.plot(mean_pred, frac_pos, marker="o", ms=4, lw=1.3, color=colour, label=f"{name} vs rest")
        hist.hist(p, bins=bins, histtype="step", lw=1.3, color=colour, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("observed frequency of the class")
    ax.set_title(f"Reliability on the holdout (one-vs-rest, {n_bins} quantile bins)", fontsize=11)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    hist.set_xlabel("predicted probability")
    hist.set_ylabel("rows")
    hist.grid(alpha=0.3)
    fig.subplots_adjust(left=0.11, right=0.97, top=0.93, bottom=0.1)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------- importances
def gain_importance(model, feature_names) -> pd.Series:
    """Each feature's share of the fitted model's split gain (sums to 1; all zeros if the model never split).

    LightGBM: total gain of the booster's splits; XGBoost: ``total_gain`` (features never used in a
    split are absent from its dict and get 0); random forest: the mean impurity decrease scikit-learn
    computes. These are in-sample (training) quantities: they say what the model relies on, not what
    helps out of sample (see ``holdout_permutation_importance`` for that).
    """
    from lightgbm import LGBMModel
    from sklearn.ensemble import RandomForestClassifier
    from xgboost import XGBModel

    names = [str(n) for n in feature_names]
    if isinstance(model, LGBMModel):
        raw = np.asarray(model.booster_.feature_importance(importance_type="gain"), dtype=float)
        if len(raw) != len(names):
            raise ValueError(f"model has {len(raw)} features, {len(names)} feature names given")
        values = pd.Series(raw, index=names)
    elif isinstance(model, XGBModel):
        booster = model.get_booster()
        scores = booster.get_score(importance_type="total_gain")
        n_model = booster.num_features()
        if n_model != len(names):
            raise ValueError(f"model has {n_model} features, {len(names)} feature names given")
        values = pd.Series(0.0, index=names)
        for key, gain in scores.items():
            values[_xgb_feature(key, names)] += float(cast(float, gain))  # a scalar per feature here
    elif isinstance(model, RandomForestClassifier):
        raw = np.asarray(model.feature_importances_, dtype=float)
        if len(raw) != len(names):
            raise ValueError(f"model has {len(raw)} features, {len(names)} feature names given")
        values = pd.Series(raw, index=names)
    else:
        raise TypeError(
            f"gain_importance supports LightGBM, XGBoost and RandomForestClassifier models, "
            f"got {type(model).__name__}"
        )
    total = float(values.sum())
    values = values / total if total > 0 else values * 0.0
    values.name = "gain_share"
    return values


def _xgb_feature(key: str, names: list[str]) -> str:
    """XGBoost names features by the training frame's columns, or ``f0, f1, ...`` for a bare array."""
    if key in names:
        return key
    match = re.fullmatch(r"f(\d+)", key)
    if match and int(match.group(1)) < len(names):
        return names[int(match.group(1))]
    raise ValueError(f"XGBoost feature {key!r} matches none of the given feature names")


def holdout_permutation_importance(
    model,
    X: pd.DataFrame,
    y,
    seed: int = 0,
    n_repeats: int = 5,
    n_jobs: int = 1,
    max_rows: int | None = 20_000,
) -> pd.DataFrame:
    """Drop in holdout macro-F1 when one feature's values are shuffled (index feature, columns mean, std).

    Measured on the holdout, after every model decision (features, hyperparameters, weights, the gate's
    inputs) was taken: it informs a person about what the fitted model uses out of sample, and nothing
    computed here may feed back into a model, or the holdout stops being out of sample. Shuffling breaks
    the time order of a feature but keeps the other features' rows, so correlated features share their
    importance (each looks less important than the pair). Sorted by mean, largest first.

    A holdout longer than ``max_rows`` is scored on ``max_rows`` of its rows drawn at random (seeded),
    the same rows for the baseline and every shuffle, so the cost stops growing with the data (it was
    29 s of a 77 s run at 100k candles); ``attrs["rows"]`` says how many were used. ``None``: all rows.
    """
    from joblib import parallel_config
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import make_scorer

    # macro_f1 is the gate's metric: labels 0, 1, 2 always, a class never predicted scores 0.
    scorer = make_scorer(macro_f1)
    y = np.asarray(y)
    if max_rows is not None and len(X) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(len(X), size=max_rows, replace=False))
        X, y = X.iloc[rows], y[rows]
    # Threads, not processes: the model is not copied into workers, and the libraries release the GIL
    # while they predict. Each feature's shuffles are seeded alike whatever the thread count.
    with parallel_config(backend="threading"):
        result = permutation_importance(
            model, X, y, scoring=scorer, n_repeats=n_repeats, random_state=seed, n_jobs=n_jobs
        )
    out = pd.DataFrame(
        {"mean": result.importances_mean, "std": result.importances_std},
        index=pd.Index([str(c) for c in X.columns], name="feature"),
    ).sort_values("mean", ascending=False)
    out.attrs["rows"] = len(X)
    return out


def plot_importance(
    gain: dict[str, pd.Series], permutation: pd.DataFrame | None, path: str | Path, top: int = 15
) -> Path:
    """One horizontal-bar panel per model's gain share, plus the ensemble's holdout permutation importance."""
    panels: list[tuple[str, pd.Series, pd.Series | None, str]] = [
        (f"{name}: share of split gain (training)", s.astype(float), None, "share of total gain")
        for name, s in gain.items()
    ]
    if permutation is not None:
        perm = permutation.sort_values("mean", ascending=False)
        panels.append(
            (
                "ensemble: permutation importance (holdout)",
                perm["mean"],
                perm["std"],
                "drop in holdout macro-F1 when shuffled",
            )
        )
    if not panels:
        raise ValueError("plot_importance needs at least one gain series or a permutation table")
    plt = _pyplot()
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    n_bars = min(top, max(len(p[1]) for p in panels))
    row_height = max(3.0, 0.24 * n_bars + 1.0)
    width = 5.4 * ncols if ncols > 1 else 7.0
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, row_height * nrows), squeeze=False)
    for ax, (title, values, err, xlabel) in zip(axes.flat, panels, strict=False):
        shown = values.sort_values(ascending=False).head(top)
        shown_err = None if err is None else err.reindex(shown.index).to_numpy()
        colour = "#9467bd" if err is not None else STRATEGY_COLOUR
        y_pos = np.arange(len(shown))
        ax.barh(y_pos, shown.to_numpy(), xerr=shown_err, color=colour, alpha=0.85, capsize=2)
        ax.set_yticks(y_pos, [str(i) for i in shown.index], fontsize=8)
        ax.invert_yaxis()  # largest at the top
        ax.axvline(0.0, color="black", lw=0.6)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------------------------- optuna
def plot_optuna(study, out_dir: str | Path) -> list[Path]:
    """Optimisation history and hyperparameter importances of a study; returns the files written.

    Either plot is skipped (logged, never raised) when the study has fewer than 2 completed trials or
    the importances cannot be computed (e.g. every trial drew the same values). Optuna's matplotlib
    functions switch the global style to ggplot; that is undone here so later plots are unaffected.
    """
    import optuna

    plt = _pyplot()
    import matplotlib

    out_dir = Path(out_dir)
    model = str(study.user_attrs.get("model", study.study_name))
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        log.info("study %s: %d completed trial(s), no optuna plots", study.study_name, len(complete))
        return []
    from matplotlib.figure import Figure
    from optuna.visualization import matplotlib as ovm

    varied = any(
        len({repr(t.params.get(name)) for t in complete}) > 1
        for name in {p for t in complete for p in t.params}
    )
    # The study's metric name says what its values are (train.tune.OBJECTIVES).
    names = study.metric_names or ["cv_macro_f1"]
    metric = "out-of-fold after-cost Sharpe" if names[0] == "cv_sharpe" else "CV macro-F1"
    jobs: list[tuple[str, str, Callable[[optuna.Study], Axes]]] = [
        ("history", f"{model}: optimisation history (objective = {metric})", ovm.plot_optimization_history)
    ]
    if varied:
        jobs.append(("importance", f"{model}: hyperparameter importance", ovm.plot_param_importances))
    else:
        log.info("study %s: no parameter took two values, no importance plot", study.study_name)
    written: list[Path] = []
    for kind, title, plot in jobs:
        with warnings.catch_warnings(record=True) as caught, matplotlib.rc_context():
            warnings.simplefilter("always")
            before = set(plt.get_fignums())
            try:
                ax = plot(study)
                # PED-ANOVA says so when too few trials separate "good" from "all": no information then.
                if any("importances will be equal" in str(w.message) for w in caught):
                    raise ValueError("too few trials to tell parameters apart")
            except Exception as exc:  # a diagnostic plot must never fail the run
                log.warning("study %s: %s plot skipped: %s", study.study_name, kind, exc)
                for num in set(plt.get_fignums()) - before:
                    plt.close(num)
                continue
            fig = ax.get_figure(root=True)
            assert isinstance(fig, Figure)  # the root figure of optuna's axes
            fig.set_size_inches(7.0, 4.0)
            ax.set_title("", loc="left")  # optuna's own title, replaced by one naming the model
            ax.set_title(title, fontsize=11)
            if kind == "history":
                ax.set_ylabel("mean CV macro-F1")
            fig.tight_layout()
            written.append(_save(fig, out_dir / f"optuna_{kind}_{safe}.png"))
        for w in caught:
            if not issubclass(w.category, optuna.exceptions.ExperimentalWarning):
                log.info("study %s, %s plot: %s", study.study_name, kind, w.message)
    return written
