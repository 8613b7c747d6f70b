"""The monitor's judging: is a promoted model still doing what it was promoted for? No tracking calls.

:func:`monitor` takes a loaded model, its registered version, recent candles and the candles it trained
on, and returns a :class:`MonitorResult`: live performance on matured out-of-sample rows
(:func:`live_performance`, with moving-block bootstrap intervals), feature drift against the training
candles (:mod:`evaluation.drift`), and the verdict (:func:`decide`). :func:`action_for` is the degraded
rule and what ``--on-degraded`` makes of it; the walk-forward's monitored track decides with it too.

Verdict (``drifted`` wins when both hold):

* ``drifted``: at least ``drift_share`` (0.3) of the features drifted, a feature counting as drifted when
  its PSI exceeds ``psi_threshold`` (0.25) **and** the two-sample KS test rejects at
  ``ks_alpha`` / n_features (0.05, Bonferroni). Not judged with fewer than 100 recent feature rows.
* ``degraded``: with at least ``MIN_SCORED_ROWS`` matured candles, either the upper bound of the live
  macro-F1's confidence interval (``confidence``, 0.95, two-sided) is below the promoted holdout
  macro-F1 minus ``f1_tolerance`` (0.02), or the upper bound of the after-cost total return's interval
  is below zero (the policy lost money by more than luck explains).
* ``ok``: neither.

The step around it (resolve the version, log the run, tag the version, act, alert) is
:mod:`evaluation.monitor_step`; the command line is ``python -m evaluation.monitor``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from evaluation.backtest import BacktestConfig
from evaluation.drift import DriftConfig, DriftReport, feature_drift, plot_histograms, plot_psi
from evaluation.economics import directional_edge
from evaluation.metrics import block_bootstrap_indices, bootstrap_macro_f1, classification_metrics
from evaluation.plots import plot_equity
from evaluation.scoring import MIN_SCORED_ROWS, Scoring, policy_backtest, prepare_scoring
from features.context import compute_model_features, feature_names
from features.labels import BUY, SELL

if TYPE_CHECKING:  # a registered version's tags are read; nothing here talks to the tracking store
    from mlflow.entities.model_registry import ModelVersion

OK, DEGRADED, DRIFTED = "ok", "degraded", "drifted"
EXIT_OK, EXIT_ERROR, EXIT_DEGRADED, EXIT_DRIFTED = 0, 1, 3, 4
EXIT_NO_PRODUCTION, EXIT_NOT_ACTED = 5, 6
# What to do when the degraded rule fires (--on-degraded); NOTHING: it did not fire, or was not judged.
ALERT, WITHDRAW, ROLLBACK, NOTHING = "alert", "withdraw", "rollback", "none"
ON_DEGRADED = (ALERT, WITHDRAW, ROLLBACK)
EXIT_CODES = {OK: EXIT_OK, DEGRADED: EXIT_DEGRADED, DRIFTED: EXIT_DRIFTED}
F1_TOLERANCE = 0.02
CONFIDENCE = 0.95
N_BOOT = 1000
PROMISED_TAGS = ("holdout_macro_f1", "baseline_macro_f1", "backtest_total_return", "backtest_sharpe")


class MonitorError(ValueError):
    """Input the monitor cannot work with; the message names the problem."""


class NoProduction(MonitorError):
    """``production`` was withdrawn: there is nothing to monitor (the message says when, why, by what)."""


@dataclass(frozen=True)
class MonitorConfig:
    f1_tolerance: float = F1_TOLERANCE
    confidence: float = CONFIDENCE
    n_boot: int = N_BOOT
    seed: int = 42
    fee_bps: float = BacktestConfig.fee_bps  # the pipeline's backtest costs: one definition
    slippage_bps: float = BacktestConfig.slippage_bps
    drift: DriftConfig = field(default_factory=DriftConfig)

    def __post_init__(self):
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence!r}")
        if not 0 <= self.f1_tolerance < 1:
            raise ValueError(f"f1_tolerance must be in [0, 1), got {self.f1_tolerance!r}")
        if self.n_boot < 100:
            raise ValueError(f"n_boot must be >= 100, got {self.n_boot!r}")


# ------------------------------------------------------------------------------------------ the model
def promised(version: ModelVersion) -> dict[str, float | None]:
    """The numbers the version was registered (and promoted) with, from its tags; None when absent."""
    out: dict[str, float | None] = {}
    for tag in PROMISED_TAGS:
        try:
            out[tag] = float(version.tags[tag])
        except (KeyError, TypeError, ValueError):
            out[tag] = None
    return out


def model_features(meta: dict, candles: pd.DataFrame) -> pd.DataFrame:
    """The model's input features on ``candles``, computed as the served model computes them."""
    context = meta.get("context_timeframe") or None
    primary = meta.get("primary", "none")  # a model logged before meta-labeling: no primary side
    horizon = int(meta["horizon"]) if primary != "none" else None
    names = meta.get("feature_names") or feature_names(meta["feature_set"], context, primary=primary)
    return compute_model_features(
        candles, meta["feature_set"], context, bar=pd.Timedelta(meta["bar"]), primary=primary, horizon=horizon
    )[names]


def _naive(index: pd.DatetimeIndex) -> pd.DatetimeIndex:
    return index.tz_convert("UTC").tz_localize(None) if index.tz is not None else index


# -------------------------------------------------------------------------------------- bootstrap CIs
def _interval(values: np.ndarray, confidence: float) -> list[float]:
    tail = (1 - confidence) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def bootstrap_directional_precision(y_true: np.ndarray, y_pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Share of buy/sell calls on rows that moved whose direction was right, per resample (NaN: none)."""
    move = (y_true == BUY) | (y_true == SELL)
    call = (y_pred == BUY) | (y_pred == SELL)
    counted = (move & call)[idx]
    hits = (move & call & (y_true == y_pred))[idx].sum(axis=1)
    n = counted.sum(axis=1)
    return np.divide(hits, n, out=np.full(len(idx), np.nan), where=n > 0)


# --------------------------------------------------------------------------------------- live numbers
def live_numbers(
    y: np.ndarray,
    proba: np.ndarray,
    returns: np.ndarray,
    block: int,
    bars_per_year: float,
    config: MonitorConfig,
) -> dict:
    """Macro-F1, directional precision and the after-cost total return and Sharpe ratio of live rows,
    each with its moving-block bootstrap interval: labels ``y`` and probabilities ``proba`` of the
    matured rows, ``returns`` the decision policy's period returns (also used by ``train.walkforward``)."""
    calls = proba.argmax(axis=1)
    metrics = classification_metrics(y, proba)
    idx = block_bootstrap_indices(len(y), block, config.n_boot, config.seed)
    f1_boot = bootstrap_macro_f1(y, calls, idx)
    edge = directional_edge(y, calls, block=block, n_boot=config.n_boot, seed=config.seed)
    precision_boot = bootstrap_directional_precision(y, calls, idx)
    precision_boot = precision_boot[np.isfinite(precision_boot)]
    r = np.asarray(returns, dtype=float)
    ridx = block_bootstrap_indices(len(r), block, config.n_boot, config.seed + 1)
    boot_r = r[ridx]
    total_boot = np.prod(1.0 + boot_r, axis=1) - 1.0
    std = boot_r.std(axis=1, ddof=1)
    sharpe_boot = np.divide(boot_r.mean(axis=1), std, out=np.zeros(len(ridx)), where=std > 0) * math.sqrt(
        bars_per_year
    )
    return {
        "macro_f1": metrics["macro_f1"],
        "macro_f1_ci": _interval(f1_boot, config.confidence),
        "accuracy": metrics["accuracy"],
        "directional_precision": edge.precision,
        "directional_precision_ci": _interval(precision_boot, config.confidence)
        if len(precision_boot)
        else None,
        "directional_base_rate": edge.base_rate,
        "directional_calls": edge.n_called_moves,
        "return": float(np.prod(1.0 + r) - 1.0),
        "return_ci": _interval(total_boot, config.confidence),
        "sharpe_ci": _interval(sharpe_boot, config.confidence),
        "confusion_matrix": metrics["confusion_matrix"],
    }


def live_performance(scoring: Scoring, candles: pd.DataFrame, config: MonitorConfig) -> dict:
    """Live numbers with confidence intervals on the scored (matured, out-of-sample) rows."""
    n = scoring.n_scored
    if n < MIN_SCORED_ROWS:
        return {
            "enough": False,
            "rows_scored": n,
            "note": f"not enough matured candles yet ({n}, need {MIN_SCORED_ROWS})",
        }
    rule, bt_config, bt = policy_backtest(scoring, candles, config.fee_bps, config.slippage_bps)
    numbers = live_numbers(
        scoring.y, scoring.proba, bt.returns.to_numpy(dtype=float), scoring.block, bt.bars_per_year, config
    )
    timestamps = scoring.out["timestamp"][scoring.scored]
    return {
        "enough": True,
        "rows_scored": n,
        "window": [str(timestamps.iloc[0]), str(timestamps.iloc[-1])],
        "block": scoring.block,
        **numbers,
        "sharpe": bt.metrics["sharpe"],
        "n_trades": bt.metrics["n_trades"],
        "buyhold_return": bt.benchmark_metrics["total_return"],
        "policy": rule.to_dict(),
        "backtest_config": asdict(bt_config),
        "_backtest": bt,  # for the equity plot; dropped from monitor.json
    }


def degraded_reasons(live: dict, promised_f1: float | None, config: MonitorConfig) -> list[str]:
    """Why live numbers (:func:`live_numbers`) count as degraded; empty when they do not (see the module
    docstring for the rule)."""
    degraded = []
    hi = live["macro_f1_ci"][1]
    if promised_f1 is not None and hi < promised_f1 - config.f1_tolerance:
        degraded.append(
            f"live macro-F1 {live['macro_f1']:.4f} (CI up to {hi:.4f}) is below the promoted holdout "
            f"macro-F1 {promised_f1:.4f} minus the tolerance {config.f1_tolerance:g}"
        )
    if live["return_ci"][1] < 0:
        degraded.append(
            f"the decision policy lost money after costs: {live['return']:+.2%} "
            f"(CI {live['return_ci'][0]:+.2%} .. {live['return_ci'][1]:+.2%}, entirely below 0)"
        )
    return degraded


@dataclass(frozen=True)
class Action:
    """What to do about a production model: ``kind`` is :data:`NOTHING` (the degraded rule did not fire,
    or there were too few matured rows to judge: ``judged`` False) or the ``on_degraded`` choice, with the
    rule's ``reasons`` (each naming its numbers)."""

    kind: str
    reasons: tuple[str, ...] = ()
    judged: bool = True


def action_for(live: dict, promised_f1: float | None, config: MonitorConfig, on_degraded: str) -> Action:
    """The monitor's decision on live numbers (:func:`live_performance`, or any dict with ``enough`` and,
    when enough, :func:`live_numbers`' keys): the degraded rule (:func:`degraded_reasons`) and what
    ``on_degraded`` makes of it. The verdict, ``monitor --on-degraded`` and the walk-forward's
    monitored track all decide here."""
    if on_degraded not in ON_DEGRADED:
        raise ValueError(f"on_degraded must be one of {', '.join(ON_DEGRADED)}, got {on_degraded!r}")
    if not live.get("enough"):
        return Action(NOTHING, (), judged=False)
    reasons = tuple(degraded_reasons(live, promised_f1, config))
    return Action(on_degraded if reasons else NOTHING, reasons)


def decide(live: dict, drift: DriftReport, promise: dict, config: MonitorConfig) -> tuple[str, list[str]]:
    """The verdict and the reasons for it (see the module docstring for the rule)."""
    reasons = []
    if drift.judged and drift.drifted:
        reasons.append(
            f"{len(drift.drifted_features)}/{len(drift.features)} features drifted "
            f"({drift.share_drifted:.0%} >= {drift.config.drift_share:.0%}): "
            + ", ".join(drift.drifted_features)
        )
    degraded = list(action_for(live, promise.get("holdout_macro_f1"), config, ALERT).reasons)
    reasons += degraded
    verdict = DRIFTED if drift.judged and drift.drifted else (DEGRADED if degraded else OK)
    return verdict, reasons


@dataclass
class MonitorResult:
    model_name: str
    version: str
    verdict: str
    reasons: list[str]
    live: dict
    promised: dict
    drift: DriftReport
    trained_until: str
    recent_window: list[str]
    config: MonitorConfig
    train_features: pd.DataFrame = field(repr=False)
    recent_features: pd.DataFrame = field(repr=False)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def to_dict(self) -> dict:
        live = {k: v for k, v in self.live.items() if not k.startswith("_")}
        return {
            "model_name": self.model_name,
            "version": self.version,
            "verdict": self.verdict,
            "reasons": self.reasons,
            "trained_until": self.trained_until,
            "recent_window": self.recent_window,
            "live": live,
            "promised": self.promised,
            "drift": self.drift.to_dict(),
            "config": asdict(self.config),
        }


def monitor(
    model, version: ModelVersion, candles: pd.DataFrame, train_candles: pd.DataFrame, config: MonitorConfig
) -> MonitorResult:
    """Live performance, feature drift and the verdict of a loaded pyfunc ``model`` (registered as
    ``version``) on ``candles``, against the candles it trained on. No tracking calls."""
    scoring = prepare_scoring(model, candles)
    meta, trained_until = scoring.meta, scoring.trained_until
    recent = _naive(candles.index) > trained_until
    if not recent.any():
        raise MonitorError(
            f"these candles end at {_naive(candles.index)[-1]}, within the model's training window (it "
            f"saw candles up to {trained_until}): nothing to monitor; give newer candles"
        )
    live = live_performance(scoring, candles, config)
    train_features = model_features(meta, train_candles)
    train_features = train_features[_naive(train_candles.index) <= trained_until]
    # Features on all the given candles (earlier ones warm the indicators up), kept after the cut.
    recent_features = model_features(meta, candles)[recent]
    drift = feature_drift(train_features, recent_features, config.drift)
    verdict, reasons = decide(live, drift, promised(version), config)
    window = _naive(candles.index[recent])
    return MonitorResult(
        model_name=version.name,
        version=str(version.version),
        verdict=verdict,
        reasons=reasons,
        live=live,
        promised=promised(version),
        drift=drift,
        trained_until=str(trained_until),
        recent_window=[str(window[0]), str(window[-1])],
        config=config,
        train_features=train_features,
        recent_features=recent_features,
    )


# ------------------------------------------------------------------------------------------ reporting
def _ci(value: float, ci: list[float] | None, fmt: str) -> str:
    if ci is None:
        return format(value, fmt)
    return f"{format(value, fmt)} [{format(ci[0], fmt)}, {format(ci[1], fmt)}]"


def _promised(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def summary_lines(result: MonitorResult) -> list[str]:
    """The human-readable report (printed, and the run's description)."""
    live, p, d = result.live, result.promised, result.drift
    f1, base = _promised(p["holdout_macro_f1"], ".4f"), _promised(p["baseline_macro_f1"], ".4f")
    precision = _ci(live.get("directional_precision", 0.0), live.get("directional_precision_ci"), ".1%")
    pct = int(round(result.config.confidence * 100))
    lines = [
        f"{result.model_name} v{result.version}: verdict {result.verdict.upper()} "
        f"(trained until {result.trained_until}; recent candles {result.recent_window[0]} .. "
        f"{result.recent_window[1]})"
    ]
    if live["enough"]:
        lines += [
            f"live performance on {live['rows_scored']:,} matured candles {live['window'][0]} .. "
            f"{live['window'][1]} ({pct}% moving-block bootstrap intervals), promoted with:",
            f"  macro-F1 {_ci(live['macro_f1'], live['macro_f1_ci'], '.4f')}  vs holdout "
            f"{f1} (best baseline then {base})",
            f"  directional precision {precision}  vs base rate {live['directional_base_rate']:.1%} "
            f"({live['directional_calls']} calls on moves)",
            f"  after-cost return {_ci(live['return'], live['return_ci'], '+.2%')}  vs holdout "
            f"{_promised(p['backtest_total_return'], '+.2%')} (buy-and-hold {live['buyhold_return']:+.2%})",
            f"  Sharpe {_ci(live['sharpe'], live['sharpe_ci'], '.2f')}  vs holdout "
            f"{_promised(p['backtest_sharpe'], '.2f')} ({live['n_trades']} trades)",
        ]
    else:
        lines.append(f"live performance: {live['note']}")
    if d.judged:
        top = ", ".join(f"{f.feature} {f.psi:.2f}" for f in d.features[:5])
        lines.append(
            f"feature drift ({d.n_recent:,} recent vs {d.n_train:,} training rows): "
            f"{len(d.drifted_features)}/{len(d.features)} features drifted ({d.share_drifted:.0%}; model "
            f"drifted at >= {d.config.drift_share:.0%}; PSI > {d.config.psi_threshold:g} and KS p < "
            f"{d.ks_alpha_per_feature:.2g}); highest PSI: {top}"
        )
    else:
        lines.append(f"feature drift: {d.note}")
    lines += [f"  reason: {r}" for r in result.reasons]
    return lines


def metrics_of(result: MonitorResult) -> dict[str, float]:
    live, d = result.live, result.drift
    out: dict[str, float] = {"rows_scored": live["rows_scored"], "rows_recent": d.n_recent}
    if live["enough"]:
        for key in ("macro_f1", "directional_precision", "return", "sharpe"):
            out[f"live_{key}"] = live[key]
            ci = live.get(f"{key}_ci")
            if ci is not None:
                out[f"live_{key}_ci_low"], out[f"live_{key}_ci_high"] = ci
        out["live_buyhold_return"] = live["buyhold_return"]
    if d.judged:
        out["share_drifted"] = d.share_drifted
        out["n_drifted"] = len(d.drifted_features)
        out |= {f"psi_{f.feature}": f.psi for f in d.features}
    for key, value in result.promised.items():
        if value is not None:
            out[f"promoted_{key}"] = value
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}


def plots(result: MonitorResult, directory: Path) -> list[Path]:
    paths = []
    d = result.drift
    if d.judged:
        title = f"{result.model_name} v{result.version} feature drift"
        paths.append(plot_psi(d, directory / "monitor_psi.png", title=title))
        paths.append(
            plot_histograms(
                result.train_features, result.recent_features, d, directory / "monitor_histograms.png"
            )
        )
    bt = result.live.get("_backtest")
    if bt is not None:
        paths.append(
            plot_equity(
                bt.equity,
                bt.benchmark_equity,
                directory / "monitor_equity.png",
                title=f"{result.model_name} v{result.version}: live decision policy after costs",
            )
        )
    return paths
