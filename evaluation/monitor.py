"""`monitor` step: is a promoted model still doing what it was promoted for, on the candles of today?

    python -m evaluation.monitor --model-uri models:/crypto-signal-ensemble@production \\
        --data exchange:bitbank:BTC/JPY:30m --days 60

For a registered version (``models:/<name>/<version>`` or ``models:/<name>@<alias>``) and candles:

1. **Live performance** on candles after the model's ``trained_until`` whose labels have matured (the
   label horizon has passed; later candles have no label yet and are never scored): macro-F1,
   directional precision, and the decision policy's after-cost total return and Sharpe ratio, each with
   a moving-block bootstrap confidence interval (blocks of 10 horizons, as the gate uses), beside the
   numbers the version was promoted with (its tags ``holdout_macro_f1``, ``baseline_macro_f1``,
   ``backtest_total_return``, ``backtest_sharpe``). Fewer than ``MIN_SCORED_ROWS`` matured candles is
   not an error: the performance part says so and plays no part in the verdict.
2. **Feature drift** of the model's features on recent candles (after ``trained_until``) against the
   training candles logged with the version's pipeline run (``runs:/<pipeline_run_id>/data/
   candles.parquet``, rows up to ``trained_until``), by PSI and a KS test per feature
   (see :mod:`evaluation.drift`).

Verdict (``drifted`` wins when both hold):

* ``drifted``: at least ``drift_share`` (0.3) of the features drifted, a feature counting as drifted when
  its PSI exceeds ``psi_threshold`` (0.25) **and** the two-sample KS test rejects at
  ``ks_alpha`` / n_features (0.05, Bonferroni). Not judged with fewer than 100 recent feature rows.
* ``degraded``: with at least ``MIN_SCORED_ROWS`` matured candles, either the upper bound of the live
  macro-F1's confidence interval (``confidence``, 0.95, two-sided) is below the promoted holdout
  macro-F1 minus ``f1_tolerance`` (0.02), or the upper bound of the after-cost total return's interval
  is below zero (the policy lost money by more than luck explains).
* ``ok``: neither.

Acting on it (``--on-degraded``, :func:`action_for`; the walk-forward's monitored track decides with the
same function): when the degraded rule fires (whatever the verdict: a drifted model whose live numbers
are also degraded counts) and the monitored version is ``production``,

* ``alert`` (default): nothing moves; the verdict, its exit code and the webhook message, as always;
* ``withdraw``: ``production`` is removed (:func:`models.registry.withdraw`): bots loading it are told it
  was withdrawn and stay flat until a version is promoted;
* ``rollback``: ``production`` moves to the newest earlier holder of it (the registry's rollback stack)
  that passed its gate and is *not* degraded by the same rule on the same live rows (each candidate is
  loaded and judged; one that cannot be judged on those rows is skipped too). If none qualifies,
  production stays where it is (a bad model is not swapped for an unknown one, nor withdrawn unasked):
  the output says so and the exit code is :data:`EXIT_NOT_ACTED`.

Either move goes through the registry's lock, audit record, version tags and notification like a manual
one, names the verdict's numbers in its reason, and is logged with the monitor run (``audit.json``, tags
``monitor_action`` ...). Re-running on the same state changes nothing: a withdrawn ``production`` is
reported (exit :data:`EXIT_NO_PRODUCTION`), a rolled-back one is judged ok.

Exit codes, for a scheduler: 0 ok, 1 error (bad input, unknown model, model files missing or corrupt,
missing training snapshot, unreachable tracking store; one line on stderr), 2 bad command-line usage
(argparse), 3 degraded (and acted on, if asked), 4 drifted, 5 ``production`` was withdrawn: nothing to
monitor (one line saying when, why and by what), 6 degraded but the requested action was not taken
(nothing qualifies for a rollback, production moved meanwhile, or the alias lock stayed busy). Each
successful call logs one ``monitor`` run, tags the model version (``last_monitored``,
``monitor_verdict``, ``monitor_run_id``) and, on a verdict other than ok, posts a webhook message.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from evaluation.drift import (
    DRIFT_SHARE,
    KS_ALPHA,
    PSI_THRESHOLD,
    DriftConfig,
    DriftReport,
    feature_drift,
    plot_histograms,
    plot_psi,
)
from evaluation.economics import directional_edge
from evaluation.evaluate import MIN_SCORED_ROWS, Scoring, policy_backtest, prepare_scoring
from evaluation.metrics import block_bootstrap_indices, bootstrap_macro_f1, classification_metrics
from evaluation.plots import plot_equity
from features.context import compute_model_features, feature_names
from features.data import DataError, load_candles, match_bar
from features.labels import BUY, SELL
from models import registry, tracking
from models.loading import ModelUnavailable, load_model
from models.notify import notify
from models.pyfunc import model_bar

OK, DEGRADED, DRIFTED = "ok", "degraded", "drifted"
EXIT_OK, EXIT_ERROR, EXIT_DEGRADED, EXIT_DRIFTED = 0, 1, 3, 4
EXIT_NO_PRODUCTION, EXIT_NOT_ACTED = 5, 6
# What to do when the degraded rule fires (--on-degraded); NOTHING: it did not fire, or was not judged.
ALERT, WITHDRAW, ROLLBACK, NOTHING = "alert", "withdraw", "rollback", "none"
ON_DEGRADED = (ALERT, WITHDRAW, ROLLBACK)
EXIT_CODES = {OK: EXIT_OK, DEGRADED: EXIT_DEGRADED, DRIFTED: EXIT_DRIFTED}
DEFAULT_MODEL_URI = "models:/crypto-signal-ensemble@production"
F1_TOLERANCE = 0.02
CONFIDENCE = 0.95
N_BOOT = 1000
PROMISED_TAGS = ("holdout_macro_f1", "baseline_macro_f1", "backtest_total_return", "backtest_sharpe")
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/@]+))$")


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
    fee_bps: float = 10.0
    slippage_bps: float = 5.0
    drift: DriftConfig = field(default_factory=DriftConfig)

    def __post_init__(self):
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence!r}")
        if not 0 <= self.f1_tolerance < 1:
            raise ValueError(f"f1_tolerance must be in [0, 1), got {self.f1_tolerance!r}")
        if self.n_boot < 100:
            raise ValueError(f"n_boot must be >= 100, got {self.n_boot!r}")


# ------------------------------------------------------------------------------------------ the model
def resolve_version(model_uri: str, client: MlflowClient | None = None) -> ModelVersion:
    """The registered version a ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` URI points to."""
    match = _URI.match(model_uri.strip())
    if not match:
        raise MonitorError(
            f"model URI {model_uri!r} is not models:/<name>/<version> or models:/<name>@<alias> "
            "(the monitor needs a registered version: it reads and writes the version's tags)"
        )
    client = client or MlflowClient()
    name, version, alias = match["name"], match["version"], match["alias"]
    try:
        if version is not None:
            return client.get_model_version(name, version)
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if str(getattr(exc, "error_code", "")) in (
            "RESOURCE_DOES_NOT_EXIST",
            "NOT_FOUND",
            "INVALID_PARAMETER_VALUE",
        ):
            withdrawn = registry.withdrawal(name, client) if alias == registry.PRODUCTION else None
            if withdrawn is not None:
                raise NoProduction(registry.describe_withdrawal(name, withdrawn)) from None
            what = f"version {version}" if version is not None else f"alias '{alias}'"
            raise MonitorError(
                f"no registered model '{name}' with {what} in {mlflow.get_registry_uri()!r}: "
                f"{tracking.one_line(exc)}"
            ) from exc
        raise


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


def training_candles(version: ModelVersion) -> tuple[pd.DataFrame, str]:
    """The candles the version's pipeline run logged (``data/candles.parquet``) and their URI."""
    run_id = version.tags.get("pipeline_run_id")
    if not run_id:
        raise MonitorError(
            f"model '{version.name}' version {version.version} has no pipeline_run_id tag: cannot find the "
            "candles it was trained on, so feature drift cannot be measured"
        )
    uri = f"runs:/{run_id}/data/candles.parquet"
    try:
        return load_candles(uri)[0], uri
    except Exception as exc:  # noqa: BLE001 - a missing run, artifact or file all mean the same here
        raise MonitorError(
            f"cannot load the training candles of model '{version.name}' version {version.version} from "
            f"{uri}: {type(exc).__name__}: {tracking.one_line(exc)}"
        ) from exc


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


# -------------------------------------------------------------------------------------- live numbers
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


# ------------------------------------------------------------------------------------------- reporting
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


def log_run(result: MonitorResult, params: dict, candles: pd.DataFrame, source: str, sha256: str) -> str:
    """One ``monitor`` run with the metrics, monitor.json, plots and the verdict as its description."""
    tracking.use_experiment()
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    name = f"monitor {result.model_name} v{result.version} {day}"
    with mlflow.start_run(run_name=name) as run:
        lines = summary_lines(result)
        note = f"**{lines[0]}**\n\n" + "\n".join(f"- {line.strip()}" for line in lines[1:])
        mlflow.set_tags(
            {
                "step": "monitor",
                "mlflow.runName": name,
                "model_name": result.model_name,
                "model_version": result.version,
                "monitor_verdict": result.verdict,
                "data_source": source,
                "data_sha256": sha256,
                "mlflow.note.content": note,
            }
        )
        tracking.log_params_once(params)
        tracking.log_dataset(candles, "candles", source, "monitoring")
        mlflow.log_metrics(metrics_of(result))
        mlflow.log_dict(result.to_dict(), "monitor.json")
        with tempfile.TemporaryDirectory() as tmp:
            for path in plots(result, Path(tmp)):
                mlflow.log_artifact(str(path), "plots")
        return run.info.run_id


def tag_version(result: MonitorResult, run_id: str, client: MlflowClient | None = None) -> None:
    client = client or MlflowClient()
    now = datetime.now(UTC).isoformat(timespec="seconds")
    for key, value in (
        ("last_monitored", now),
        ("monitor_verdict", result.verdict),
        ("monitor_run_id", run_id),
    ):
        client.set_model_version_tag(result.model_name, result.version, key, value)


def send_alert(result: MonitorResult, run_id: str, action: str | None = None) -> bool:
    """A webhook message for a verdict other than ok (False when none was sent); ``action``: what
    ``--on-degraded`` did about it, one line."""
    if result.verdict == OK:
        return False
    live, p = result.live, result.promised
    fields = {
        **({"action": action} if action else {}),
        "live_macro_f1": round(live["macro_f1"], 4) if live["enough"] else None,
        "promoted_macro_f1": p["holdout_macro_f1"],
        "live_return": round(live["return"], 4) if live["enough"] else None,
        "share_drifted": round(result.drift.share_drifted, 3) if result.drift.judged else None,
        "drifted_features": ",".join(result.drift.drifted_features) or None,
        "run_id": run_id,
    }
    message = f"{result.model_name} v{result.version}: monitor verdict {result.verdict}: " + "; ".join(
        result.reasons
    )
    return notify(f"monitor_{result.verdict}", message, fields)


# --------------------------------------------------------------------------------------------- acting
@dataclass
class Acted:
    """What :func:`act` did: ``moved`` the registry (``move``), or not; ``refused`` when the action was
    asked for and could not be taken (nothing changed); ``message`` one line for the output."""

    action: Action
    moved: bool = False
    refused: bool = False
    message: str = ""
    move: registry.AliasMove | None = None


def _degraded_line(result: MonitorResult, action: Action) -> str:
    live = result.live
    return (
        f"v{result.version} degraded on {live['rows_scored']} matured candles {live['window'][0]} .. "
        f"{live['window'][1]}: " + "; ".join(action.reasons)
    )


def judge_version(
    version: ModelVersion, candles: pd.DataFrame, window: list[str], rows: int, config: MonitorConfig
) -> tuple[Action, dict]:
    """The degraded rule (:func:`action_for`) on another version, on the live rows ``window`` (first and
    last scored timestamp) the monitored version was judged on: its own calls and decision policy there,
    held to its own promised macro-F1. Not judged (``judged`` False) unless it scores the same number of
    rows there (a version that trained on some of them cannot be judged on them)."""
    model = load_model(f"models:/{version.name}/{version.version}")
    scoring = prepare_scoring(model, candles)
    stamps = pd.to_datetime(scoring.out["timestamp"])
    inside = ((stamps >= pd.Timestamp(window[0])) & (stamps <= pd.Timestamp(window[1]))).to_numpy()
    scoring = replace(scoring, scored=scoring.scored & inside)
    if scoring.n_scored != rows:
        return Action(NOTHING, (), judged=False), {"enough": False, "rows_scored": scoring.n_scored}
    live = live_performance(scoring, candles, config)
    return action_for(live, promised(version)["holdout_macro_f1"], config, ROLLBACK), live


def choose_rollback(
    result: MonitorResult, candles: pd.DataFrame, config: MonitorConfig, client: MlflowClient
) -> tuple[str | None, list[str], dict | None]:
    """The version ``--on-degraded rollback`` moves production to: the newest earlier holder of
    production (the registry's rollback stack, moves made outside this tool included) that passed its gate
    and is not degraded on the same live rows. Returns (version or None, one note per version looked at,
    the chosen version's live numbers)."""
    moves, missing = registry.full_history(result.model_name, client)
    notes: list[str] = []
    seen = {result.version}
    for candidate in reversed(registry.holders(moves + missing)):
        if candidate in seen:
            continue
        seen.add(candidate)
        mv = client.get_model_version(result.model_name, candidate)
        if mv.tags.get("gate") != "passed":
            notes.append(f"v{candidate} skipped: gate {mv.tags.get('gate', 'unknown')}")
            continue
        try:
            judged, live = judge_version(
                mv, candles, result.live["window"], result.live["rows_scored"], config
            )
        except (ModelUnavailable, ValueError) as exc:
            notes.append(f"v{candidate} skipped: {tracking.one_line(exc)}")
            continue
        if not judged.judged:
            notes.append(
                f"v{candidate} skipped: cannot be judged on the same {result.live['rows_scored']} rows "
                f"(it scores {live['rows_scored']} of them)"
            )
        elif judged.reasons:
            notes.append(f"v{candidate} skipped: also degraded ({'; '.join(judged.reasons)})")
        else:
            notes.append(
                f"v{candidate} not degraded on the same rows (live macro-F1 {live['macro_f1']:.4f}, "
                f"after-cost return {live['return']:+.2%})"
            )
            return candidate, notes, live
    return None, notes, None


def act(
    action: Action,
    result: MonitorResult,
    run_id: str,
    candles: pd.DataFrame,
    config: MonitorConfig,
    client: MlflowClient | None = None,
) -> Acted:
    """Carry out ``action`` (from :func:`action_for`) on the monitored version, if it is ``production``:
    withdraw it, or roll back (:func:`choose_rollback`), through :mod:`models.registry` (lock, audit
    record, version tags, notification), and log the move with the monitor run ``run_id``."""
    if action.kind not in (WITHDRAW, ROLLBACK):
        return Acted(action)
    client = client or MlflowClient()
    name, version = result.model_name, result.version
    current = registry.get_production(name, client)
    if current is None or str(current.version) != version:
        where = f"v{current.version}" if current is not None else "none"
        return Acted(
            action,
            message=f"{action.kind}: nothing to do, v{version} is not production (production: {where})",
        )
    degraded = _degraded_line(result, action)
    try:
        if action.kind == WITHDRAW:
            reason = f"monitor run {run_id} withdrew {degraded}"
            move = registry.withdraw(name, reason, run_id=run_id, client=client, expect_current=version)
            message = f"withdrew production v{version}: the bot finds no production model and stays flat"
        else:
            target, notes, _ = choose_rollback(result, candles, config, client)
            if target is None:
                looked = "; ".join(notes) or "no earlier production version on record"
                return Acted(
                    action,
                    refused=True,
                    message=f"rollback: no earlier version qualifies ({looked}); production stays v{version}",
                )
            reason = f"monitor run {run_id} rolled back to v{target} ({notes[-1]}) from {degraded}"
            skipped = [n for n in notes[:-1]]
            if skipped:
                reason = f"{reason}; {'; '.join(skipped)}"
            move = registry.rollback(
                name, target, reason, run_id=run_id, client=client, expect_current=version
            )
            message = f"rolled production back v{version} -> v{target}: " + "; ".join(notes)
    except registry.RegistryError as exc:
        return Acted(action, refused=True, message=f"{action.kind} not done: {tracking.one_line(exc)}")
    client.log_dict(run_id, asdict(move), "audit.json")
    client.set_tag(
        run_id, "monitor_action", f"{move.action} v{move.from_version} -> v{move.to_version or '-'}"
    )
    return Acted(action, moved=True, message=message, move=move)


# ------------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.monitor",
        description=__doc__.splitlines()[0],
        epilog=(
            f"exit codes: {EXIT_OK} ok, {EXIT_ERROR} error (bad input, unknown model, model files missing "
            f"or corrupt, missing training snapshot, unreachable store), 2 usage error, {EXIT_DEGRADED} "
            f"degraded (live numbers significantly worse than promoted), {EXIT_DRIFTED} drifted (feature "
            "distributions moved; wins over degraded)"
        ),
    )
    parser.add_argument("--model-uri", default=DEFAULT_MODEL_URI, help="models:/<name>/<version> or @<alias>")
    parser.add_argument("--data", default="builtin", help="candles: builtin, a file, exchange:..., runs:/...")
    parser.add_argument("--timeframe", default="")
    parser.add_argument("--days", type=tracking.parse_int, default=0, help="keep the last days (0: all)")
    parser.add_argument(
        "--psi-threshold", type=float, default=PSI_THRESHOLD, help="PSI above which a feature moved"
    )
    parser.add_argument(
        "--ks-alpha", type=float, default=KS_ALPHA, help="KS test level, divided by the number of features"
    )
    parser.add_argument(
        "--drift-share",
        type=float,
        default=DRIFT_SHARE,
        help="share of drifted features that makes the model drifted",
    )
    parser.add_argument(
        "--f1-tolerance", type=float, default=F1_TOLERANCE, help="macro-F1 below promised that is tolerated"
    )
    parser.add_argument("--confidence", type=float, default=CONFIDENCE, help="confidence of the intervals")
    parser.add_argument("--seed", type=tracking.parse_int, default=42)
    parser.add_argument("--fee-bps", type=float, default=10.0, help="backtest fee per unit traded, bps")
    parser.add_argument("--slippage-bps", type=float, default=5.0, help="backtest slippage per unit, bps")
    parser.add_argument(
        "--on-degraded",
        choices=ON_DEGRADED,
        default=ALERT,
        help="when the live numbers are degraded and the version is production: alert only (default), "
        "withdraw production (the bot stays flat), or roll back to the newest earlier production version "
        "that passed its gate and is not degraded on the same rows",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    tracking.redaction.install()  # credentials masked in all output from here on (models.redaction)
    args = build_parser().parse_args(argv)
    # MLflow's download progress bars would surround the one-line error a scheduler's log should show.
    with tracking.env_vars(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        config = MonitorConfig(
            f1_tolerance=args.f1_tolerance,
            confidence=args.confidence,
            seed=args.seed,
            fee_bps=args.fee_bps,
            slippage_bps=args.slippage_bps,
            drift=DriftConfig(args.psi_threshold, args.ks_alpha, args.drift_share),
        )
        tracking.check_reachable()
        client = MlflowClient()
        # Alias moves made in the UI or with the plain MLflow client: recorded first (models.registry).
        if (uri := _URI.match(args.model_uri.strip())) and (found := registry.record_unrecorded(uri["name"])):
            print(f"warning: {found}", file=sys.stderr)
        try:
            version = resolve_version(args.model_uri, client)
        except NoProduction as exc:  # already withdrawn: nothing to monitor, nothing to do
            print(f"no production model: {exc}; nothing to monitor (exit {EXIT_NO_PRODUCTION})")
            return EXIT_NO_PRODUCTION
        # First: a version whose files are missing or corrupt fails here in one line, before any download.
        model = load_model(f"models:/{version.name}/{version.version}")
        candles, info = load_candles(args.data, args.timeframe or None, args.days or None)
        candles, info, resampled = match_bar(candles, info, model_bar(model), args.timeframe)
        if resampled:  # finer candles and no --timeframe: aggregated to the model's bars
            print(resampled)
        train_candles, _ = training_candles(version)
        result = monitor(model, version, candles, train_candles, config)
        params = {k: v for k, v in vars(args).items()} | {"model_version": version.version}
        run_id = log_run(result, params, candles, info.source, info.sha256)
        tag_version(result, run_id, client)
        action = action_for(result.live, result.promised["holdout_macro_f1"], config, args.on_degraded)
        acted = act(action, result, run_id, candles, config, client)
    except (DataError, ValueError, tracking.TrackingUnavailable, ModelUnavailable) as exc:
        print(f"error: {tracking.one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except MlflowException as exc:
        print(f"error: {tracking.error_message(exc)}", file=sys.stderr)
        return EXIT_ERROR
    for line in summary_lines(result):
        print(line)
    code = EXIT_NOT_ACTED if acted.refused else result.exit_code
    if acted.message:
        print(acted.message)
    print(f"monitor run {run_id}; exit code {code}")
    send_alert(result, run_id, acted.message or None)
    return code


if __name__ == "__main__":
    sys.exit(main())
