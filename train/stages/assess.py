"""Stage `assess`: the candidate on the holdout, against the baselines, the market and production.

:func:`assess` computes every number the gate looks at and the gate's decision (the walk-forward keeps
it per window); :func:`evaluate` is the pipeline's logged form, against the registry's production
version (:func:`score_champion`). The champion comparison itself, :func:`compare_champion`, takes any
model that predicts like a loaded pyfunc.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import mlflow
import numpy as np
import pandas as pd

from evaluation.backtest import BacktestConfig, BacktestResult, backtest
from evaluation.baselines import informed_baselines
from evaluation.economics import deflated_sharpe_of_choice
from evaluation.gate import ChampionComparison, GateConfig, GateReport, compare_with_champion, evaluate_gate
from evaluation.metrics import baseline_predictions, classification_metrics
from evaluation.nulls import Traded
from features.context import context_label
from features.labels import CLASS_NAMES
from models import tracking
from models.loading import ModelUnavailable, load_model
from models.policy import ACTION_CODES, DecisionPolicy, policy_grid
from models.pyfunc import as_model_input
from models.registry import get_production
from train.config import PipelineConfig
from train.prepare import Prepared
from train.stages.fit import Fitted
from train.stages.tune import Tuned, finished_trials

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    results: dict  # model name (and "ensemble") -> holdout metrics
    baselines: dict  # baseline name -> holdout metrics
    gate: GateReport
    champion: ChampionComparison | None
    ensemble_proba: np.ndarray
    backtest: BacktestResult
    deflated_sharpe: dict
    baseline_backtests: dict  # baseline name -> backtest metrics under the same policy rules
    actions: np.ndarray | None = None  # the decision policy's action per holdout row (0..2)
    baselines_fitted: dict | None = None  # what the informed baselines learned on the development rows


def gate_config(cfg: PipelineConfig) -> GateConfig:
    """The gate's thresholds from the run's settings."""
    return GateConfig(
        min_macro_f1=cfg.gate_min_f1,
        min_margin=cfg.gate_margin,
        min_confidence=cfg.gate_confidence,
        min_dsr=cfg.gate_min_dsr,
        economic=cfg.gate_economic,
        benchmark=cfg.gate_benchmark,
    )


def backtest_config(cfg: PipelineConfig, policy: DecisionPolicy) -> BacktestConfig:
    """How ``policy``'s actions are traded, at the run's costs."""
    return BacktestConfig(
        mode=policy.mode, hold=policy.on_hold, fee_bps=cfg.fee_bps, slippage_bps=cfg.slippage_bps
    )


def holdout_returns(data: Prepared, bt: BacktestResult) -> np.ndarray:
    """Per holdout row, the after-cost return of the period its signal traded (NaN for the last rows,
    which have no period to trade)."""
    starts = data.candles.index[np.minimum(data.ds.bars[data.split.holdout] + 1, len(data.candles) - 1)]
    return bt.returns.reindex(starts).to_numpy()


# ------------------------------------------------------------------------------------ the candidate


def deflated_sharpe_counted(
    cfg: PipelineConfig, data: Prepared, fitted: Fitted, tuned: dict[str, Tuned], looks: int
) -> dict:
    """:func:`evaluation.economics.deflated_sharpe_of_choice` for the chosen ensemble and policy rule on
    the out-of-fold development periods, every rule of its grid and every finished trial counted."""
    ensemble, policy = fitted.ensemble, fitted.policy
    proba, market = data.trading_costs(cfg).span(ensemble.oof_index_, ensemble.oof_proba_)
    return deflated_sharpe_of_choice(
        Traded(policy.positions(proba), market, cfg.cost),
        [
            rule.positions(proba)
            for rule in policy_grid(policy.mode, policy.on_hold, policy.sizing, policy.size_null)
        ],
        n_trials=finished_trials(tuned),
        n_members=len(tuned),
        looks=looks,
    )


def holdout_scores(fitted: Fitted, data: Prepared) -> tuple[dict, np.ndarray]:
    """Holdout metrics of every member and of the ensemble (``"ensemble"``), and the ensemble's class
    probabilities per holdout row."""
    ensemble = fitted.ensemble
    X_hold, y_hold = data.holdout
    results = {
        name: classification_metrics(y_hold, ensemble.member_proba(name, X_hold))
        for name in ensemble.named_estimators_
    }
    proba = ensemble.predict_proba(X_hold)
    results["ensemble"] = classification_metrics(y_hold, proba)
    return results, proba


@dataclass
class Baselines:
    """The baselines' holdout calls, all fitted on development rows: trivial (class frequencies) and
    informed (trailing volatility; momentum and reversal of the last horizon's move)."""

    pred: dict  # name -> class per holdout row
    metrics: dict  # name -> holdout metrics
    informed: dict  # name -> evaluation.baselines.informed_baselines' entry (pred, proba, fitted)


def score_baselines(cfg: PipelineConfig, data: Prepared) -> Baselines:
    """:class:`Baselines` on the holdout rows."""
    y_hold = data.holdout[1]
    trivial = baseline_predictions(data.dev[1], len(y_hold), cfg.seed)
    informed = informed_baselines(
        data.candles,
        data.ds.bars,
        data.ds.y.to_numpy(),
        data.split.dev,
        data.split.holdout,
        cfg.horizon,
        cfg.threshold,
        cfg.vol_window,
        cfg.seed,
    )
    pred = {k: p.argmax(axis=1) for k, p in trivial.items()} | {k: b["pred"] for k, b in informed.items()}
    metrics = {k: classification_metrics(y_hold, p) for k, p in trivial.items()} | {
        k: classification_metrics(y_hold, b["proba"], b["pred"]) for k, b in informed.items()
    }
    return Baselines(pred, metrics, informed)


@dataclass
class HoldoutTrades:
    actions: np.ndarray  # the decision policy's action per holdout row (0..2)
    backtest: BacktestResult  # those actions traded after costs
    baselines: dict  # informed baseline name -> its calls traded by the same rules (BacktestResult)


def trade_holdout(
    cfg: PipelineConfig, data: Prepared, policy: DecisionPolicy, proba: np.ndarray, informed: dict
) -> HoldoutTrades:
    """Trade the holdout the way the bot will: the decision policy's actions on ``proba``, after fees and
    slippage; and the informed baselines' calls traded by the same rules (what the easy signals earn)."""
    index = data.holdout[0].index
    config = backtest_config(cfg, policy)
    actions = policy.actions(proba)
    sizes = policy.sizes(proba) if policy.sizing != "full" else None
    bt = backtest(data.candles, pd.Series(actions, index=index), config, data.info.bar, sizes)
    baselines = {
        k: backtest(data.candles, pd.Series(b["pred"], index=index), config, bar=data.info.bar)
        for k, b in informed.items()
    }
    return HoldoutTrades(actions, bt, baselines)


def assess(
    cfg: PipelineConfig,
    data: Prepared,
    fitted: Fitted,
    tuned: dict[str, Tuned],
    champion_of=None,
    looks: int = 1,
) -> Evaluation:
    """Holdout metrics of every model and the baselines, the policy's backtest, the champion, the gate.

    Computes only (no tracking): the pipeline logs the result (:func:`evaluate`), the walk-forward
    (``train.walkforward``) keeps it per window. ``champion_of(candidate_pred, candidate_returns)``
    returns the :class:`ChampionComparison` with the model in production, or None when there is none.
    """
    y_hold = data.holdout[1]
    results, proba = holdout_scores(fitted, data)
    pred = proba.argmax(axis=1)
    base = score_baselines(cfg, data)
    trades = trade_holdout(cfg, data, fitted.policy, proba, base.informed)
    # Every strategy tried counts where it was chosen: out of fold, trials x rules x members x looks.
    dsr = deflated_sharpe_counted(cfg, data, fitted, tuned, looks)
    champion = None if champion_of is None else champion_of(pred, holdout_returns(data, trades.backtest))
    gate = evaluate_gate(
        y_hold,
        pred,
        base.pred,
        gate_config(cfg),
        traded=trades.backtest.traded(),
        baselines_traded={k: b.traded() for k, b in trades.baselines.items()},
        actions=trades.actions,
        dsr=dsr,
        champion=champion,
        looks=looks,
        seed=cfg.seed,
        horizon=cfg.horizon,
    )
    return Evaluation(
        results,
        base.metrics,
        gate,
        champion,
        proba,
        trades.backtest,
        dsr,
        {k: b.metrics for k, b in trades.baselines.items()},
        actions=trades.actions,
        baselines_fitted={k: b["fitted"] for k, b in base.informed.items()},
    )


# ------------------------------------------------------------------------------------- the champion


def score_champion(
    name: str, data: Prepared, cfg: PipelineConfig, candidate_pred: np.ndarray, candidate_returns: np.ndarray
) -> ChampionComparison | None:
    """The current production version of ``name`` in the registry against the candidate (see
    :func:`compare_champion`); None when nothing is in production.

    A production version that cannot be loaded (files missing or corrupt) is not comparable: the gate
    check ``not_worse_than_production`` fails with the one-line reason, as for any incomparable champion,
    so nothing replaces it unseen (the failed-gate notification tells the operator that production itself
    is broken; ``promote --force`` moves the candidate by hand)."""
    champion = get_production(name)
    if champion is None:
        return None
    version = str(champion.version)
    try:
        return compare_champion(
            version,
            champion.tags,
            lambda: load_model(f"models:/{name}/{version}"),
            data,
            cfg,
            candidate_pred,
            candidate_returns,
        )
    except ModelUnavailable as exc:
        log.warning(f"production: {exc}")
        return ChampionComparison(version, comparable=False, note=str(exc))


def compare_champion(
    version: str,
    tags: dict,
    load,
    data: Prepared,
    cfg: PipelineConfig,
    candidate_pred: np.ndarray,
    candidate_returns: np.ndarray,
) -> ChampionComparison:
    """The champion (its version, version tags, and ``load()`` giving a model with ``predict(candles)``
    and ``metadata.metadata``, as a loaded pyfunc has) against the candidate on holdout rows it never
    trained on.

    Only rows after the champion's ``trained_until`` plus its horizon count: scores on rows it was fitted
    on would flatter it. The champion computes its own features from the candles (a different feature
    set is still a fair comparison on the same labels) and acts through its own decision policy (a model
    logged before policies existed: its argmax class, flat on hold, as the old backtest traded it). A
    different label definition or bar size is not comparable: the comparison says why.
    """
    # A version tagged before label kinds (or before meta-labeling): threshold labels, no primary.
    tags = {"label": "threshold", "primary": "none"} | dict(tags)
    if differs := label_differences(cfg, tags):
        note = f"it predicts another label ({'; '.join(differs)})"
        return ChampionComparison(version, comparable=False, note=note)
    model = load()
    meta = model.metadata.metadata or {}
    if "trained_until" not in meta:
        note = "it does not say which candles it trained on (no trained_until in its metadata)"
        return ChampionComparison(version, comparable=False, note=note)
    holdout_pos = data.split.holdout
    history = as_model_input(data.candles.iloc[: int(data.ds.bars[holdout_pos[-1]]) + 1])
    try:
        out = model.predict(history)
    except ValueError as exc:  # e.g. trained on another bar size
        return ChampionComparison(version, comparable=False, note=f"it cannot score these candles: {exc}")
    stamps = data.ds.X.index[holdout_pos].tz_localize(None)
    rows = out.set_index("timestamp").loc[stamps]
    if not rows["ready"].all():
        return ChampionComparison(version, comparable=False, note="it lacks history for some holdout rows")
    unseen = (
        stamps > pd.Timestamp(meta["trained_until"]) + int(meta.get("horizon", cfg.horizon)) * data.info.bar
    )
    # Both models trade the holdout from flat at its first row, at the same costs.
    champion_returns = holdout_returns(data, champion_backtest(cfg, data, rows, meta))
    return compare_with_champion(
        version,
        np.asarray(unseen),
        data.holdout[1],
        candidate_pred,
        rows["label"].to_numpy(),
        candidate_returns,
        champion_returns,
        note="; ".join(setting_notes(cfg, tags)),
    )


def label_differences(cfg: PipelineConfig, tags: dict) -> list[str]:
    """How the label a champion (its version tags) predicts differs from this run's, e.g.
    ``["horizon 4 vs 3"]``; meta-labels (a primary side) are another label."""
    label = {"horizon": str(cfg.horizon), "threshold": str(cfg.threshold), "vol_window": str(cfg.vol_window)}
    label["label"] = cfg.label
    label["primary"] = cfg.primary
    return [f"{k} {tags[k]} vs {v}" for k, v in label.items() if k in tags and tags[k] != v]


def champion_backtest(cfg: PipelineConfig, data: Prepared, rows: pd.DataFrame, meta: dict) -> BacktestResult:
    """The champion's holdout ``rows`` (its predictions) traded through its own decision policy (its
    argmax class, flat on hold, for a model logged before policies existed), at this run's costs."""
    sizes = None
    if "action" in rows and "policy" in meta:
        policy = DecisionPolicy.from_dict(meta["policy"])
        actions = rows["action"].map(ACTION_CODES).to_numpy()
        if "position" in rows:  # a bet-sized champion's sizes (1 otherwise)
            sizes = rows["position"].abs().to_numpy()
    else:
        policy = DecisionPolicy(mode=cfg.backtest_mode, on_hold="flat")
        actions = rows["label"].to_numpy()
    index = data.ds.X.index[data.split.holdout]
    return backtest(data.candles, pd.Series(actions, index=index), backtest_config(cfg, policy), sizes=sizes)


def setting_notes(cfg: PipelineConfig, tags: dict) -> list[str]:
    """Settings in which production differs from this candidate but which keep them comparable."""
    notes = []
    if tags.get("features", cfg.features) != cfg.features:
        notes.append(f"production uses the '{tags['features']}' feature set, this candidate '{cfg.features}'")
    theirs, ours = tags.get("context_timeframe", ""), context_label(cfg.context_timeframe)
    if theirs != ours:
        notes.append(
            f"production uses context timeframe '{theirs or 'none'}', this candidate '{ours or 'none'}'"
        )
    return notes


# ---------------------------------------------------------------------------------- the logged form


def evaluate(cfg: PipelineConfig, data: Prepared, fitted: Fitted, tuned: dict[str, Tuned]) -> Evaluation:
    """:func:`assess` against the registry's production version, logged to the pipeline's runs."""
    hold_index = data.holdout[0].index
    looks = tracking.holdout_looks(data.info.source, data.info.bar, hold_index[0], hold_index[-1])
    if looks > 1:
        log.info(
            f"holdout   looked at {looks} times (this run included): each test's level is divided by {looks}"
        )
    ev = assess(
        cfg,
        data,
        fitted,
        tuned,
        lambda pred, returns: score_champion(cfg.model_name, data, cfg, pred, returns),
        looks=looks,
    )
    mlflow.log_metric("holdout_looks", looks)
    log_evaluation(data, fitted, tuned, ev)
    return ev


def log_evaluation(data: Prepared, fitted: Fitted, tuned: dict[str, Tuned], ev: Evaluation) -> None:
    """Every number of :func:`assess` to the active (ensemble) run, each member's holdout metrics to its
    tuning run; the backtest and every holdout row as artifacts."""
    for name in fitted.ensemble.named_estimators_:
        tracking.log_metrics("holdout_", ev.results[name], run_id=tuned[name].run_id)
    tracking.log_metrics("holdout_", ev.results["ensemble"])
    for k, m in ev.baselines.items():
        tracking.log_metrics(f"baseline_{k}_", m)
    mlflow.log_dict(
        {"models": ev.results, "baselines": ev.baselines, "baselines_fitted": ev.baselines_fitted},
        "holdout_metrics.json",
    )
    log_backtest(fitted, ev)
    mlflow.log_table(holdout_predictions(data, ev), artifact_file="holdout_predictions.json")
    champion = ev.champion
    # compare_with_champion sets both scores together (None: no holdout row to compare on)
    if champion is not None and champion.champion_macro_f1 is not None:
        f1, ret = champion.champion_macro_f1, champion.champion_return
        if ret is not None:
            mlflow.log_metrics({"production_holdout_macro_f1": f1, "production_holdout_return": ret})
    mlflow.log_metric("baseline_macro_f1", ev.gate.baseline_macro_f1)
    mlflow.set_tag("gate", ev.gate.result)


def log_backtest(fitted: Fitted, ev: Evaluation) -> None:
    """The holdout backtest's metrics (the policy's, buy-and-hold's, the baselines', the deflated Sharpe
    ratio), its periods (``backtest.csv``) and its settings (``backtest.json``)."""
    bt, dsr = ev.backtest, ev.deflated_sharpe
    tracking.log_metrics("backtest_", bt.metrics)
    tracking.log_metrics("buyhold_", bt.benchmark_metrics)
    for k, m in ev.baseline_backtests.items():
        tracking.log_metrics(f"baseline_{k}_backtest_", m)
    mlflow.log_metrics({"backtest_dsr": dsr["dsr"], "backtest_psr": dsr["psr"], "backtest_sr0": dsr["sr0"]})
    mlflow.log_text(backtest_table(bt).to_csv(index_label="period_start"), "backtest.csv")
    mlflow.log_dict(
        {
            "config": asdict(bt.config),
            "policy": fitted.policy.to_dict(),
            "metrics": bt.metrics,
            "buyhold": bt.benchmark_metrics,
            "baselines": ev.baseline_backtests,
            "deflated_sharpe": dsr,
            "signals_dropped_at_end": bt.n_dropped,
        },
        "backtest.json",
    )


def backtest_table(bt: BacktestResult) -> pd.DataFrame:
    """Per traded period: the position, its after-cost return, buy-and-hold's, and both equity curves."""
    table = pd.DataFrame(
        {"position": bt.position, "return": bt.returns, "buyhold_return": bt.benchmark_returns}
    )
    table["equity"] = (1 + table["return"]).cumprod()
    table["buyhold_equity"] = (1 + table["buyhold_return"]).cumprod()
    return table


def holdout_predictions(data: Prepared, ev: Evaluation) -> pd.DataFrame:
    """Every holdout row as the model saw it, so anyone can recompute the holdout numbers: the position is
    the one the row's action sets, held from the next bar's open (empty for the last signals, dropped)."""
    X_hold, y_hold = data.holdout
    rows = data.candles.index.get_indexer(X_hold.index)
    entry = data.candles.index[np.minimum(rows + 1, len(data.candles) - 1)]
    names = np.asarray(CLASS_NAMES, dtype=object)
    return pd.DataFrame(
        {"timestamp": X_hold.index.astype(str), "label": names[np.asarray(y_hold)]}
        | {f"p_{c}": ev.ensemble_proba[:, k] for k, c in enumerate(CLASS_NAMES)}
        # the policy's actions: 0..2, no NaN rows
        | {"predicted": names[ev.ensemble_proba.argmax(axis=1)], "action": names[ev.actions]}
        | {"position": ev.backtest.position.reindex(entry).to_numpy()}
    )
