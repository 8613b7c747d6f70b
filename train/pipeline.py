"""`main` step: candles -> features/labels -> tuned base models -> ensemble -> holdout -> gate -> registry.

Run it through `mlflow run .` (see MLproject) or directly: `python -m train.pipeline --help`.
This entry point (with ``train/tracking.py``) is the only code that talks to MLflow tracking.
"""

from __future__ import annotations

import json
import logging
import resource
import signal
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib.metadata import version as dist_version
from pathlib import Path

import cloudpickle
import mlflow
import numpy as np
import optuna
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.tracking import MlflowClient

from evaluation.backtest import BacktestConfig, BacktestResult, backtest
from evaluation.baselines import informed_baselines
from evaluation.economics import deflated_sharpe_of_choice
from evaluation.gate import ChampionComparison, GateConfig, GateReport, compare_with_champion, evaluate_gate
from evaluation.lookahead import analyse
from evaluation.metrics import baseline_predictions, classification_metrics, plot_confusion_matrix
from evaluation.nulls import Traded
from evaluation.plots import (
    gain_importance,
    holdout_permutation_importance,
    plot_equity,
    plot_importance,
    plot_optuna,
    plot_reliability,
)
from evaluation.report import write_report
from features.candles import fmt_td
from features.context import context_label, feature_function
from features.data import SNAPSHOT_PREFIXES, DataError
from features.dataset import InsufficientDataError
from features.labels import CLASS_NAMES, label_function
from models.base import build_model, default_n_jobs
from models.ensemble import WeightedSoftVoting
from models.loading import ModelUnavailable, load_model
from models.notify import notify
from models.policy import ACTION_CODES, DecisionPolicy, policy_grid
from models.pyfunc import SignalModel, as_model_input, input_schema
from models.redaction import install, redact, redact_obj
from models.registry import (
    CHALLENGER,
    PRODUCTION,
    RegistryError,
    get_production,
    mark_challenger,
    promote,
    register_candidate,
)
from models import tracking
from train.config import PipelineConfig, build_parser, configure_logging, parse_args
from train.prepare import Prepared, prepare
from train.tune import (
    FINISHED,
    OBJECTIVE_LABELS,
    SPACE_VERSION,
    TuningError,
    check_storage,
    describe_trials,
    run_study,
    study_description,
    study_name_for,
    study_objective,
    trial_counts,
    trial_macro_f1,
)

log = logging.getLogger("train.pipeline")
REPORT = "report.html"

# Distributions the logged model needs at load time; versions are read from this environment.
MODEL_REQUIREMENTS = ("mlflow", "lightgbm", "xgboost-cpu", "scikit-learn", "pandas", "numpy", "cloudpickle")


class Stages:
    """Wall time and peak resident memory per pipeline stage (logged, and read by bench/)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, doing: str = ""):
        """Time the block; with ``doing``, also say (INFO) when the stage starts and how long it took."""
        start = time.perf_counter()
        if doing:
            log.info("%-9s %s ...", name, doing)
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        if doing:
            log.info("%-9s done in %.0fs", name, self.seconds[name])
        # ru_maxrss is in KiB on Linux and is the process peak so far; per stage it is monotone.
        self.peak_mb[name] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    def metrics(self) -> dict[str, float]:
        out = {f"stage_seconds_{k}": v for k, v in self.seconds.items()}
        out |= {f"stage_peak_rss_mb_{k}": v for k, v in self.peak_mb.items()}
        out["total_seconds"] = round(sum(self.seconds.values()), 3)
        out["peak_rss_mb"] = max(self.peak_mb.values(), default=0.0)
        return out


def print_plan(plan: dict) -> None:
    log.info(f"data      {plan['data']['source']}  ({plan['data']['description']})")
    log.info(f"rows      {plan['rows_after_features_and_labels']:,} usable, classes {plan['class_counts']}")
    if plan.get("gaps"):
        log.info(
            f"gaps      {plan['gaps']} gap(s) in the candles: {plan['rows_dropped_at_gaps']:,} rows "
            "dropped so that no label or indicator window spans one"
        )
    dev, hold = plan["development"], plan["holdout"]
    log.info(f"dev       {dev['rows']:,} rows  {dev['time'][0]} .. {dev['time'][1]}")
    log.info(f"gap       {plan['purge_gap_rows']} rows purged")
    log.info(f"holdout   {hold['rows']:,} rows  {hold['time'][0]} .. {hold['time'][1]}")
    for f in plan["folds"]:
        log.info(
            f"fold {f['fold']}    train {f['n_train']:>6,} rows to {f['train_time'][1]} | "
            f"validate {f['n_validation']:,} rows {f['validation_time'][0]} .. {f['validation_time'][1]}"
        )
    log.info(f"models    {', '.join(plan['models'])}")


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
    label = {"horizon": str(cfg.horizon), "threshold": str(cfg.threshold), "vol_window": str(cfg.vol_window)}
    label["label"] = cfg.label
    label["primary"] = cfg.primary  # meta-labels (a primary side) are another label
    # A version tagged before label kinds (or before meta-labeling): threshold labels, no primary.
    tags = {"label": "threshold", "primary": "none"} | dict(tags)
    differs = [f"{k} {tags[k]} vs {v}" for k, v in label.items() if k in tags and tags[k] != v]
    if differs:
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
    sizes = None
    if "action" in rows and "policy" in meta:
        policy = DecisionPolicy.from_dict(meta["policy"])
        actions = rows["action"].map(ACTION_CODES).to_numpy()
        if "position" in rows:  # a bet-sized champion's sizes (1 otherwise)
            sizes = rows["position"].abs().to_numpy()
    else:
        policy = DecisionPolicy(mode=cfg.backtest_mode, on_hold="flat")
        actions = rows["label"].to_numpy()
    # Both models trade the holdout from flat at its first row, at the same costs.
    champion_returns = holdout_returns(
        data,
        backtest(
            data.candles,
            pd.Series(actions, index=data.ds.X.index[holdout_pos]),
            _config(cfg, policy),
            sizes=sizes,
        ),
    )
    notes = []
    if tags.get("features", cfg.features) != cfg.features:
        notes.append(f"production uses the '{tags['features']}' feature set, this candidate '{cfg.features}'")
    theirs, ours = tags.get("context_timeframe", ""), context_label(cfg.context_timeframe)
    if theirs != ours:
        notes.append(
            f"production uses context timeframe '{theirs or 'none'}', this candidate '{ours or 'none'}'"
        )
    return compare_with_champion(
        version,
        np.asarray(unseen),
        data.holdout[1],
        candidate_pred,
        rows["label"].to_numpy(),
        candidate_returns,
        champion_returns,
        note="; ".join(notes),
    )


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


def _config(cfg: PipelineConfig, policy: DecisionPolicy) -> BacktestConfig:
    return BacktestConfig(
        mode=policy.mode, hold=policy.on_hold, fee_bps=cfg.fee_bps, slippage_bps=cfg.slippage_bps
    )


def holdout_returns(data: Prepared, bt: BacktestResult) -> np.ndarray:
    """Per holdout row, the after-cost return of the period its signal traded (NaN for the last rows,
    which have no period to trade)."""
    starts = data.candles.index[np.minimum(data.ds.bars[data.split.holdout] + 1, len(data.candles) - 1)]
    return bt.returns.reindex(starts).to_numpy()


# The project's packages whose code the served model runs (SignalModel and the feature functions, the
# ensemble and its base models, the decision policy, the CV splitter the ensemble keeps as a parameter).
MODEL_CODE_PACKAGES = ("features", "models", "train")


@contextmanager
def model_code_by_value():
    """Pickle the project's classes and functions by value into the model logged inside this block.

    The logged model then carries the code it runs and imports none of it: no MLflow ``code_paths``, so
    nothing named ``features``, ``models`` or ``train`` goes on the loading process's ``sys.path`` or in
    its ``sys.modules``, and a bot with packages of those names keeps its own. Only what the pickled
    objects reference is stored (cloudpickle follows their globals); third-party code (numpy, pandas,
    scikit-learn, LightGBM, XGBoost, MLflow) stays pickled by reference. Versions logged before this
    carry their code as ``code_paths`` and still load that way.
    """
    packages = [sys.modules[name] for name in MODEL_CODE_PACKAGES]  # all imported by this module
    for package in packages:
        cloudpickle.register_pickle_by_value(package)  # covers its submodules
    try:
        yield
    finally:
        for package in packages:
            cloudpickle.unregister_pickle_by_value(package)


@dataclass
class Tuned:
    run_id: str  # the model's tuning run ("" where no run is logged, as in the walk-forward)
    params: dict
    cv_macro_f1_mean: float  # always macro-F1, whatever the study maximised
    cv_macro_f1_std: float
    n_trials: int
    study: optuna.Study
    objective: str = "macro_f1"  # what the study maximised (train.tune.OBJECTIVES)
    cv_objective: float = float("nan")  # the best trial's value: its objective's number
    cv_sharpe: float | None = None  # the best trial's out-of-fold after-cost Sharpe (chosen rule)

    @classmethod
    def from_study(cls, run_id: str, study: optuna.Study) -> Tuned:
        """The best trial of ``study`` (``study.best_trial``: the completed trial with the highest value
        of the study's objective); ``n_trials`` counts finished trials (complete or pruned, as n_trials
        counts them; failed ones are counted apart)."""
        best = study.best_trial
        return cls(
            run_id,
            best.params,
            trial_macro_f1(best),
            best.user_attrs.get("cv_macro_f1_std", float("nan")),
            trial_counts(study.trials)["finished"],
            study,
            objective=study_objective(study),
            cv_objective=best.value,
            cv_sharpe=best.user_attrs.get("cv_sharpe"),
        )

    def describe(self) -> str:
        """The best trial's numbers for a log line, e.g. ``cv macro-F1 0.4012, out-of-fold Sharpe 0.0121
        (objective)``."""
        text = f"cv macro-F1 {self.cv_macro_f1_mean:.4f}"
        if self.cv_sharpe is not None:
            text += f", out-of-fold Sharpe {self.cv_sharpe:.4f}"
        return text + f" ({OBJECTIVE_LABELS[self.objective]} maximised)"


@dataclass
class Fitted:
    """The candidate: the ensemble and the decision policy chosen on its out-of-fold predictions."""

    ensemble: WeightedSoftVoting
    policy: DecisionPolicy
    policy_search: list[dict]


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


def log_inputs(cfg: PipelineConfig, data: Prepared) -> str:
    """Tags, parameters, configuration, plan and dataset of the pipeline run; returns the data digest."""
    info = data.info
    source = info.describe().split(": ", 1)[0]  # builtin, a file's name, exchange:..., runs:/...
    mlflow.set_tag(
        "mlflow.runName",
        f"pipeline {source} {cfg.timeframe or fmt_td(info.bar)} {cfg.features} "
        f"h{cfg.horizon} {time.strftime('%Y-%m-%d %H:%M')}",
    )
    mlflow.set_tags(
        {
            "step": "pipeline",
            "feature_set": cfg.features,
            "git_commit": tracking.git_commit(),
            "data_source": info.source,
            "data_sha256": info.sha256,
        }
    )
    tracking.log_candles_snapshot(data.candles, info)
    tracking.log_params_once(cfg.to_dict())
    mlflow.log_metrics({"data_gaps": data.ds.gaps, "rows_dropped_at_gaps": data.ds.rows_dropped_at_gaps})
    mlflow.log_dict(redact_obj(cfg.to_dict()), "config.json")  # a storage URI's password masked
    mlflow.log_dict(data.plan, "plan.json")
    mlflow.log_dict(tracking.environment(), "environment.json")
    return tracking.log_dataset(data.candles, "candles", info.source, "candles")


def study_for(
    cfg: PipelineConfig,
    data: Prepared,
    name: str,
    n_jobs: int,
    description: dict | None = None,
    warm_start: list[dict] | None = None,
) -> optuna.Study:
    """Run (create, resume or join) model family ``name``'s Optuna study on the development rows, named
    by everything that changes what a trial measures; ``description`` adds to the study's user attrs."""
    X_dev, y_dev = data.dev
    return run_study(
        name,
        X_dev,
        y_dev,
        data.cv,
        cfg.n_trials,
        cfg.timeout or None,
        cfg.optuna_storage,
        study_name_for(name, cfg.fingerprint(data.info.sha256, name, SPACE_VERSION)),
        seed=cfg.seed,
        n_jobs=n_jobs,
        costs=data.trading_costs(cfg),
        description=study_description(cfg, data.info, name) | (description or {}),
        warm_start=warm_start,
        objective=cfg.objective,
        sample_weight=data.dev_weights,
        side_column=cfg.side_column,
    )


def tune(cfg: PipelineConfig, data: Prepared, name: str, n_jobs: int) -> Tuned:
    """One Optuna study for model family ``name`` in its own child run."""
    study_name = study_name_for(name, cfg.fingerprint(data.info.sha256, name, SPACE_VERSION))
    with mlflow.start_run(run_name=f"tune-{name}", nested=True) as child:
        mlflow.set_tags(
            {
                "step": "tune",
                "model_family": name,
                "optuna_study": study_name,
                "feature_set": cfg.features,
                "objective": cfg.objective,
            }
        )
        study = study_for(cfg, data, name, n_jobs)
        tuned = Tuned.from_study(child.info.run_id, study)
        best = study.best_trial
        trials = study.trials_dataframe()
        counts = trial_counts(study.trials)
        mlflow.log_params({f"best_{k}": v for k, v in best.params.items()})
        mlflow.log_params(
            {"optuna_study": study_name, "n_trials_requested": cfg.n_trials, "timeout": cfg.timeout}
        )
        mlflow.set_tag("trials", describe_trials(counts, cfg.n_trials, cfg.timeout or None))
        mlflow.log_metrics(
            {
                "cv_macro_f1_mean": tuned.cv_macro_f1_mean,
                "cv_macro_f1_std": tuned.cv_macro_f1_std,
                "cv_objective": tuned.cv_objective,
            }
            | ({} if tuned.cv_sharpe is None else {"cv_sharpe": tuned.cv_sharpe})
            | {f"n_trials_{k}": v for k, v in counts.items()}
        )
        mlflow.log_text(trials.to_csv(index=False), "trials.csv")
        mlflow.log_dict(best.params, "best_params.json")
    return tuned


def fit_candidate(cfg: PipelineConfig, data: Prepared, tuned: dict[str, Tuned], n_jobs: int) -> Fitted:
    """Refit the tuned models as one ensemble and choose its decision policy, on development rows only
    (no tracking: :func:`fit_ensemble` logs it)."""
    X_dev, y_dev = data.dev
    # One thread per fit, n_jobs fits at once (see models.ensemble.map_folds).
    estimators = [(n, build_model(n, t.params, seed=cfg.seed, n_jobs=1)) for n, t in tuned.items()]
    # Weights from out-of-fold predictions on the development rows only; the holdout stays unseen.
    ensemble = WeightedSoftVoting(estimators, cv=data.cv, n_jobs=n_jobs, side_column=cfg.side_column).fit(
        X_dev, y_dev, sample_weight=data.dev_weights
    )
    # The policy's confidence rule: the best after-cost Sharpe ratio on the same out-of-fold predictions.
    policy, search = data.trading_costs(cfg).fit_policy(ensemble.oof_index_, ensemble.oof_proba_)
    return Fitted(ensemble, policy, search)


def fit_ensemble(cfg: PipelineConfig, data: Prepared, tuned: dict[str, Tuned], n_jobs: int) -> Fitted:
    """:func:`fit_candidate`, logged to the ensemble run."""
    mlflow.set_tags({"step": "ensemble", "model_family": "ensemble", "feature_set": cfg.features})
    fitted = fit_candidate(cfg, data, tuned, n_jobs)
    ensemble, policy, search = fitted.ensemble, fitted.policy, fitted.policy_search
    mlflow.log_params({f"weight_{k}": round(v, 4) for k, v in ensemble.named_weights_.items()})
    mlflow.log_metric("weight_search_oof_macro_f1", ensemble.oof_macro_f1_)
    chosen = next(r for r in search if r["policy"] == policy.key)
    mlflow.log_params({f"policy_{k}": v for k, v in policy.to_dict().items()})
    mlflow.log_metrics(
        {
            "policy_oof_sharpe_per_period": chosen["sharpe_per_period"],
            "policy_oof_total_return": chosen["total_return"],
            "policy_oof_n_trades": chosen["n_trades"],
        }
    )
    mlflow.log_text(pd.DataFrame(search).to_csv(index=False), "policy_search.csv")
    X_dev, y_dev = data.dev
    X_hold, y_hold = data.holdout
    tracking.log_dataset(X_dev.assign(label=y_dev), "development", data.info.source, "training")
    tracking.log_dataset(X_hold.assign(label=y_hold), "holdout", data.info.source, "evaluation")
    return fitted


def finished_trials(tuned: dict[str, Tuned]) -> int:
    """Trials that finished (complete, pruned or failed) over every study: each one was a look at the
    development rows."""
    return max(1, sum(t.state in FINISHED for tu in tuned.values() for t in tu.study.trials))


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
    ensemble, policy = fitted.ensemble, fitted.policy
    X_hold, y_hold = data.holdout
    results = {
        name: classification_metrics(y_hold, ensemble.member_proba(name, X_hold))
        for name in ensemble.named_estimators_
    }
    ens_proba = ensemble.predict_proba(X_hold)
    ens_pred = ens_proba.argmax(axis=1)
    results["ensemble"] = classification_metrics(y_hold, ens_proba)

    # Baselines, all fitted on development rows: trivial (class frequencies) and informed (trailing
    # volatility; momentum and reversal of the last horizon's move).
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
    base_pred = {k: p.argmax(axis=1) for k, p in trivial.items()} | {
        k: b["pred"] for k, b in informed.items()
    }
    base_metrics = {k: classification_metrics(y_hold, p) for k, p in trivial.items()} | {
        k: classification_metrics(y_hold, b["proba"], b["pred"]) for k, b in informed.items()
    }

    # Trade the holdout the way the bot will: the decision policy's actions, after fees and slippage.
    bt_config = _config(cfg, policy)
    actions = policy.actions(ens_proba)
    sizes = policy.sizes(ens_proba) if policy.sizing != "full" else None
    bt = backtest(data.candles, pd.Series(actions, index=X_hold.index), bt_config, data.info.bar, sizes)
    # The informed baselines' calls traded by the same rules: what the easy signals earn.
    baseline_traded = {
        k: backtest(data.candles, pd.Series(b["pred"], index=X_hold.index), bt_config, bar=data.info.bar)
        for k, b in informed.items()
    }
    # Every strategy tried counts where it was chosen: out of fold, trials x rules x members x looks.
    dsr = deflated_sharpe_counted(cfg, data, fitted, tuned, looks)
    champion = None if champion_of is None else champion_of(ens_pred, holdout_returns(data, bt))
    gate = evaluate_gate(
        y_hold,
        ens_pred,
        base_pred,
        gate_config(cfg),
        traded=bt.traded(),
        baselines_traded={k: b.traded() for k, b in baseline_traded.items()},
        actions=actions,
        dsr=dsr,
        champion=champion,
        looks=looks,
        seed=cfg.seed,
        horizon=cfg.horizon,
    )
    return Evaluation(
        results,
        base_metrics,
        gate,
        champion,
        ens_proba,
        bt,
        dsr,
        {k: b.metrics for k, b in baseline_traded.items()},
        actions=actions,
        baselines_fitted={k: b["fitted"] for k, b in informed.items()},
    )


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
    X_hold, y_hold = data.holdout
    bt, dsr = ev.backtest, ev.deflated_sharpe
    for name in fitted.ensemble.named_estimators_:
        tracking.log_metrics("holdout_", ev.results[name], run_id=tuned[name].run_id)
    tracking.log_metrics("holdout_", ev.results["ensemble"])
    for k, m in ev.baselines.items():
        tracking.log_metrics(f"baseline_{k}_", m)
    mlflow.log_dict(
        {"models": ev.results, "baselines": ev.baselines, "baselines_fitted": ev.baselines_fitted},
        "holdout_metrics.json",
    )
    tracking.log_metrics("backtest_", bt.metrics)
    tracking.log_metrics("buyhold_", bt.benchmark_metrics)
    for k, m in ev.baseline_backtests.items():
        tracking.log_metrics(f"baseline_{k}_backtest_", m)
    mlflow.log_metrics({"backtest_dsr": dsr["dsr"], "backtest_psr": dsr["psr"], "backtest_sr0": dsr["sr0"]})
    table = pd.DataFrame(
        {"position": bt.position, "return": bt.returns, "buyhold_return": bt.benchmark_returns}
    )
    table["equity"] = (1 + table["return"]).cumprod()
    table["buyhold_equity"] = (1 + table["buyhold_return"]).cumprod()
    mlflow.log_text(table.to_csv(index_label="period_start"), "backtest.csv")
    # Every holdout row as the model saw it, so anyone can recompute the holdout numbers: the position is
    # the one the row's action sets, held from the next bar's open (empty for the last signals, dropped).
    rows = data.candles.index.get_indexer(X_hold.index)
    entry = data.candles.index[np.minimum(rows + 1, len(data.candles) - 1)]
    names = np.asarray(CLASS_NAMES, dtype=object)
    predictions = pd.DataFrame(
        {"timestamp": X_hold.index.astype(str), "label": names[np.asarray(y_hold)]}
        | {f"p_{c}": ev.ensemble_proba[:, k] for k, c in enumerate(CLASS_NAMES)}
        # the policy's actions: 0..2, no NaN rows
        | {"predicted": names[ev.ensemble_proba.argmax(axis=1)], "action": names[ev.actions]}
        | {"position": bt.position.reindex(entry).to_numpy()}
    )
    mlflow.log_table(predictions, artifact_file="holdout_predictions.json")
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
    if ev.champion is not None and ev.champion.champion_macro_f1 is not None:
        mlflow.log_metrics(
            {
                "production_holdout_macro_f1": ev.champion.champion_macro_f1,
                "production_holdout_return": ev.champion.champion_return,
            }
        )
    mlflow.log_metric("baseline_macro_f1", ev.gate.baseline_macro_f1)
    mlflow.set_tag("gate", ev.gate.result)
    return ev


def report(
    cfg: PipelineConfig,
    data: Prepared,
    fitted: Fitted,
    tuned: dict[str, Tuned],
    ev: Evaluation,
    run_id: str,
) -> dict:
    """Plots and the one-page HTML report of the pipeline run; returns the gate report that links to it.

    Everything here describes decisions already taken: nothing feeds back into a model or the gate.
    It logs to the pipeline run ``run_id`` (the active run is the ensemble's).
    """
    client = MlflowClient()
    ensemble = fitted.ensemble
    X_hold, y_hold = data.holdout
    gate = ev.gate.to_dict() | {"report": f"runs:/{run_id}/{REPORT}"}
    with tempfile.TemporaryDirectory() as tmp:
        plots = Path(tmp) / "plots"
        plots.mkdir()
        images = [
            (
                f"Holdout equity of the decision policy after costs ({fitted.policy.mode}, "
                f"{fitted.policy.on_hold} on hold) against buy-and-hold",
                plot_equity(ev.backtest.equity, ev.backtest.benchmark_equity, plots / "equity.png"),
            )
        ]
        for name, m in ev.results.items():
            images.append(
                (
                    f"Confusion matrix on the holdout: {name}",
                    plot_confusion_matrix(
                        m["confusion_matrix"], f"{name}: holdout", plots / f"confusion_matrix_{name}.png"
                    ),
                )
            )
        images.append(
            (
                "Reliability of the ensemble's class probabilities on the holdout",
                plot_reliability(y_hold, ev.ensemble_proba, plots / "reliability.png"),
            )
        )
        gain = {n: gain_importance(m, list(X_hold.columns)) for n, m in ensemble.named_estimators_.items()}
        permutation = holdout_permutation_importance(ensemble, X_hold, y_hold, seed=cfg.seed, n_repeats=3)
        images.append(
            (
                "Feature importance: gain per model, permutation (macro-F1 drop) on "
                + (
                    "the holdout"
                    if permutation.attrs["rows"] == len(X_hold)
                    else f"{permutation.attrs['rows']:,} random rows of the {len(X_hold):,}-row holdout"
                ),
                plot_importance(gain, permutation, plots / "feature_importance.png"),
            )
        )
        for name, t in tuned.items():
            images += [
                (f"Optuna study: {name} ({p.stem.split('_')[1]})", p) for p in plot_optuna(t.study, plots)
            ]
        lookahead = analyse(
            data.candles,
            feature_sets=(cfg.features,),
            cuts=10,
            horizon=cfg.horizon,
            threshold=cfg.threshold,
            vol_window=cfg.vol_window,
            labels=label_function(cfg.label),
            compute=feature_function(
                cfg.context_timeframe or None,
                data.info.bar,
                pair=bool(cfg.pair_data.strip()),
                primary=cfg.primary,
                horizon=cfg.horizon,
            ),
            seed=cfg.seed,
        )
        changed = sum(c.changed for cols in lookahead.counts.values() for c in cols.values())
        client.log_metric(run_id, "lookahead_changed_values", changed)
        ctx = {
            "title": f"{cfg.model_name}: pipeline run",
            "run_id": run_id,
            "gate": gate,
            "data": data.plan["data"],
            "plan": data.plan,
            "models": {
                n: {
                    "cv_macro_f1_mean": t.cv_macro_f1_mean,
                    "cv_macro_f1_std": t.cv_macro_f1_std,
                    "holdout": ev.results[n],
                }
                for n, t in tuned.items()
            },
            "ensemble": {"weights": ensemble.named_weights_, "holdout": ev.results["ensemble"]},
            "baselines": ev.baselines,
            "backtest": {
                "config": asdict(ev.backtest.config),
                "policy": fitted.policy.to_dict(),
                "policy_search": fitted.policy_search,
                "metrics": ev.backtest.metrics,
                "benchmark_metrics": ev.backtest.benchmark_metrics,
                "baseline_metrics": ev.baseline_backtests,
                "deflated_sharpe": ev.deflated_sharpe,
            },
            "lookahead": {
                "passed": lookahead.passed,
                "detail": f"features and labels recomputed on truncated histories at {lookahead.n_cuts} cut "
                f"points ({lookahead.values_checked:,} values): {changed} changed"
                + "".join(f"; {fs}: {', '.join(cols)}" for fs, cols in lookahead.leaking_columns().items()),
            },
            "images": images,
            "config": cfg.to_dict(),
        }
        write_report(ctx, Path(tmp) / REPORT)
        client.log_artifacts(run_id, str(plots), "plots")
        client.log_artifact(run_id, str(Path(tmp) / REPORT))
    return gate


def serving_model(cfg: PipelineConfig, data: Prepared, fitted: Fitted) -> SignalModel:
    """The model a bot loads: the fitted ensemble and policy with what it was trained on (metadata)."""
    return SignalModel(
        fitted.ensemble,
        cfg.features,
        data.info.bar,
        context_timeframe=cfg.context_timeframe or None,
        policy=fitted.policy,
        pair=cfg.pair_data.strip() or None,
        primary=cfg.primary,
        horizon=cfg.horizon,
        metadata={
            "feature_set": cfg.features,
            "context_timeframe": context_label(cfg.context_timeframe),
            # The second instrument whose candles the bot must send as pair_* columns ("" = none).
            "pair_data": cfg.pair_data.strip(),
            "feature_names": list(data.ds.X.columns),
            "bar": str(data.info.bar),
            "horizon": cfg.horizon,
            "threshold": cfg.threshold,
            "vol_window": cfg.vol_window,
            "label": cfg.label,
            "primary": cfg.primary,
            "sample_weights": data.ds.sample_weights,
            "classes": list(CLASS_NAMES),
            "policy": fitted.policy.to_dict(),
            # The last candle any training label looked at: later candles are out of sample for this model.
            "trained_until": str(
                data.candles.index[int(data.ds.bars[data.split.dev[-1]]) + cfg.horizon].tz_localize(None)
            ),
            "holdout": [str(t.tz_localize(None)) for t in data.ds.X.index[data.split.holdout[[0, -1]]]],
        },
    )


def model_metrics(ev: Evaluation) -> dict[str, float]:
    """The holdout numbers versions are compared by, as the ensemble run logged them (same names): macro-F1,
    the policy's after-cost return, Sharpe ratio, deflated Sharpe ratio and drawdown, and the gate's
    decision (1 passed, 0 failed)."""
    bt = ev.backtest.metrics
    return {
        "holdout_macro_f1": ev.results["ensemble"]["macro_f1"],
        "backtest_total_return": bt["total_return"],
        "backtest_sharpe": bt["sharpe"],
        "backtest_dsr": ev.deflated_sharpe["dsr"],
        "backtest_max_drawdown": bt["max_drawdown"],
        "gate_passed": float(ev.gate.passed),
    }


def log_model_metrics(model_id: str, ev: Evaluation) -> None:
    """:func:`model_metrics` on the LoggedModel itself, linked to the holdout dataset the ensemble run
    logged, so the Models page and ``mlflow.search_logged_models`` rank versions without reading tags."""
    run_id = mlflow.active_run().info.run_id
    inputs = MlflowClient().get_run(run_id).inputs
    holdout = next((i.dataset for i in inputs.dataset_inputs if i.dataset.name == "holdout"), None)
    mlflow.log_metrics(model_metrics(ev), model_id=model_id, dataset=holdout, run_id=run_id)


def register(
    cfg: PipelineConfig,
    data: Prepared,
    fitted: Fitted,
    ev: Evaluation,
    pipeline_run_id: str,
    data_digest: str,
) -> tuple[str, bool, str | None]:
    """Log the served model (its holdout numbers as LoggedModel metrics), register it as a new version
    with its gate tags, promote if it passed. Returns the version, whether it was promoted, and why not
    when it passed the gate but was not (the promotion lock stayed busy, production moved meanwhile, the
    version does not load); such a version, if it loads, gets the ``challenger`` alias."""
    info = data.info
    signal_model = serving_model(cfg, data, fitted)
    example = as_model_input(data.candles.iloc[-(signal_model.min_history + 5) :])
    with warnings.catch_warnings():
        # `label` is an integer column by design (-1 marks rows without history), never NaN.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        outputs = infer_signature(example, signal_model.predict_candles(example)).outputs
    # Inputs of any type: every timestamp form a bot sends reaches predict, which checks it (models.pyfunc).
    signature = ModelSignature(input_schema(pair=bool(cfg.pair_data.strip())), outputs)
    with model_code_by_value():
        logged = mlflow.pyfunc.log_model(
            name="model",
            python_model=signal_model,
            signature=signature,
            input_example=example,
            pip_requirements=[f"{d}=={dist_version(d)}" for d in MODEL_REQUIREMENTS],
            metadata={"min_history_bars": signal_model.min_history} | signal_model.metadata,
        )
    log_model_metrics(logged.model_id, ev)
    gate = ev.gate
    tags = {
        "gate": gate.result,
        "holdout_macro_f1": f"{gate.candidate_macro_f1:.6f}",
        "baseline_macro_f1": f"{gate.baseline_macro_f1:.6f}",
        "baseline_name": gate.baseline_name,
        "gate_failed_checks": ",".join(gate.failed_checks()),
        "features": cfg.features,
        "context_timeframe": context_label(cfg.context_timeframe),
        "pair_data": cfg.pair_data.strip(),
        "horizon": cfg.horizon,
        "threshold": cfg.threshold,
        "vol_window": cfg.vol_window,
        "label": cfg.label,
        "primary": cfg.primary,
        "bar": str(info.bar),
        "data_sha256": info.sha256,
        "data_digest": data_digest,
        "pipeline_run_id": pipeline_run_id,
    }
    tags |= {
        "policy": json.dumps(fitted.policy.to_dict()),
        "backtest_total_return": f"{ev.backtest.metrics['total_return']:.6f}",
        "backtest_sharpe": f"{ev.backtest.metrics['sharpe']:.4f}",
        "backtest_dsr": f"{ev.deflated_sharpe['dsr']:.4f}",
        "buyhold_total_return": f"{ev.backtest.benchmark_metrics['total_return']:.6f}",
    }
    if ev.champion is not None and ev.champion.champion_macro_f1 is not None:
        tags["production_holdout_macro_f1"] = f"{ev.champion.champion_macro_f1:.6f}"
    version = str(register_candidate(logged.model_uri, cfg.model_name, tags).version)
    mlflow.set_tag("model_version", version)
    notify(
        f"gate_{gate.result}",
        f"{cfg.model_name} v{version}: gate {gate.result}",
        {
            "holdout_macro_f1": round(gate.candidate_macro_f1, 4),
            "baseline_macro_f1": round(gate.baseline_macro_f1, 4),
            "backtest_total_return": round(ev.backtest.metrics["total_return"], 4),
            "buyhold_total_return": round(ev.backtest.benchmark_metrics["total_return"], 4),
            "failed_checks": ",".join(gate.failed_checks()) or None,
        },
    )
    if not gate.passed:
        return version, False, None
    try:
        promote(
            cfg.model_name,
            version,
            reason="passed the gate",
            run_id=pipeline_run_id,
            expect_current=None if ev.champion is None else ev.champion.version,
        )
    except RegistryError as exc:  # production moved meanwhile, the lock stayed busy, it does not load
        log.warning("not promoted: %s", exc)
        mlflow.set_tag("promotion_refused", redact(str(exc))[:500])
        # A version that loads stays at hand as @challenger (one that does not load is no challenger).
        try:
            if not isinstance(exc.__cause__, ModelUnavailable) and mark_challenger(
                cfg.model_name, version, redact(str(exc))
            ):
                mlflow.set_tag(CHALLENGER, version)
                log.info(f"challenger {cfg.model_name}@{CHALLENGER} -> v{version} (passed, not promoted)")
        except MlflowException as alias_exc:  # the version is registered; the alias is a convenience
            log.warning("could not set @%s: %s", CHALLENGER, redact(str(alias_exc)))
        return version, False, redact(str(exc))
    return version, True, None


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run every step and return the summary (also printed by ``main``)."""
    stages = Stages()
    n_jobs = cfg.n_jobs or default_n_jobs()

    # The stores first, in seconds, before any data is read. A dry run touches neither (it needs the
    # tracking store only to download a runs:/ snapshot), so it checks only what it reads.
    if not cfg.dry_run or cfg.data.startswith(SNAPSHOT_PREFIXES):
        tracking.check_reachable()
    if not cfg.dry_run:
        check_storage(cfg.optuna_storage)
    with stages("data"):
        data = prepare(cfg)
    print_plan(data.plan)
    if cfg.dry_run:
        log.info("dry run: nothing trained, nothing logged, nothing registered")
        return {"dry_run": True, "plan": data.plan}

    tracking.use_experiment()
    tracking.track_liveness()  # runs record their process and a heartbeat: a later run can tell if it died
    for closed in tracking.close_orphaned_runs():  # runs a killed pipeline left RUNNING
        log.info("orphan    %s", closed)
    with mlflow.start_run() as parent:
        digest = log_inputs(cfg, data)
        tuned = {}
        for name in cfg.model_list:
            with stages(f"tune_{name}"):
                tuned[name] = tune(cfg, data, name, n_jobs)
            log.info(
                f"tuned     {name:<14} {tuned[name].describe()} "
                f"({tuned[name].n_trials} trials, {stages.seconds[f'tune_{name}']:.0f}s)"
            )
        with mlflow.start_run(run_name="ensemble", nested=True):
            with stages("ensemble", f"out-of-fold weights and refit of {', '.join(tuned)}"):
                fitted = fit_ensemble(cfg, data, tuned, n_jobs)
            with stages("evaluate", "holdout metrics, baselines, backtest, champion, gate"):
                ev = evaluate(cfg, data, fitted, tuned)
            # The report before registering: a failure here leaves the registry untouched.
            with stages("report", "plots, feature importance, look-ahead check, HTML report"):
                gate_report = report(cfg, data, fitted, tuned, ev, parent.info.run_id)
                mlflow.log_dict(gate_report, "gate_report.json")
            with stages("register", f"logging and registering the model as {cfg.model_name}"):
                version, promoted, refused = register(cfg, data, fitted, ev, parent.info.run_id, digest)
        ens = ev.results["ensemble"]
        mlflow.set_tags({"gate": ev.gate.result, "model_version": version})
        mlflow.log_metrics(
            {
                "holdout_macro_f1": ens["macro_f1"],
                "baseline_macro_f1": ev.gate.baseline_macro_f1,
                "holdout_accuracy": ens["accuracy"],
                "backtest_dsr": ev.deflated_sharpe["dsr"],
                "backtest_psr": ev.deflated_sharpe["psr"],
                "backtest_sr0": ev.deflated_sharpe["sr0"],
            }
            | {f"backtest_{k}": v for k, v in ev.backtest.metrics.items()}
            | {f"buyhold_{k}": v for k, v in ev.backtest.benchmark_metrics.items()}
            | stages.metrics()
        )
        mlflow.log_dict(gate_report, "gate_report.json")
        # The run's description (runs table and run page): what was decided, on which numbers.
        gate, bt, bh = ev.gate, ev.backtest.metrics, ev.backtest.benchmark_metrics
        failed = ", ".join(gate.failed_checks())
        production = version if promoted else (ev.champion and ev.champion.version)
        where = "production" if promoted else f"not production (production: v{production or '-'})"
        if refused:
            where = f"NOT promoted although it passed the gate ({refused}; production: v{production or '-'})"
        mlflow.set_tag(
            "mlflow.note.content",
            f"**gate {gate.result}**{f' (failed: {failed})' if failed else ''}: "
            f"{cfg.model_name} v{version}, {where}\n\n"
            f"- holdout macro-F1 **{gate.candidate_macro_f1:.4f}** vs best baseline "
            f"{gate.baseline_macro_f1:.4f} ({gate.baseline_name})\n"
            f"- backtest after costs: return **{bt['total_return']:+.2%}**, Sharpe {bt['sharpe']:.2f}, "
            f"{bt['n_trades']} trades; buy-and-hold {bh['total_return']:+.2%}\n"
            f"- timing against its own shifted positions: p = {_value(gate, 'timing_skill')}; holdout "
            f"looked at {gate.looks} time{'s' if gate.looks != 1 else ''} "
            f"(each test at p <= {gate.alpha:.3g})\n"
            f"- deflated Sharpe {ev.deflated_sharpe['dsr']:.3f}; holdout rows in the ensemble run's "
            "`holdout_predictions.json`",
        )

    return {
        "run_id": parent.info.run_id,
        "plan": data.plan,
        "objective": cfg.objective,
        "models": {
            n: {
                "cv_macro_f1_mean": t.cv_macro_f1_mean,
                "cv_macro_f1_std": t.cv_macro_f1_std,
                "cv_objective": t.cv_objective,
                "cv_sharpe": t.cv_sharpe,
                "holdout_macro_f1": ev.results[n]["macro_f1"],
            }
            for n, t in tuned.items()
        },
        "ensemble": {"holdout_macro_f1": ens["macro_f1"], "weights": fitted.ensemble.named_weights_},
        "baselines": {k: m["macro_f1"] for k, m in ev.baselines.items()},
        "policy": fitted.policy.to_dict(),
        "policy_oof": next(r for r in fitted.policy_search if r["policy"] == fitted.policy.key),
        "backtest": ev.backtest.metrics,
        "buyhold": ev.backtest.benchmark_metrics,
        "baseline_backtests": ev.baseline_backtests,
        "deflated_sharpe": ev.deflated_sharpe,
        "gate": ev.gate.to_dict(),
        "champion": None if ev.champion is None else asdict(ev.champion),
        "model_name": cfg.model_name,
        "model_version": version,
        "promoted": promoted,
        "promotion_refused": refused,
        "production_version": version if promoted else (ev.champion and ev.champion.version),
        "stages": stages.metrics(),
    }


def _value(gate: GateReport, name: str) -> str:
    """A check's value for a one-line note ("-" when the check was not run or has none)."""
    check = next((c for c in gate.checks if c.name == name), None)
    return "-" if check is None or check.value is None else f"{check.value:.3g}"


def print_summary(s: dict) -> None:
    log.info("\n== summary " + "=" * 60)
    if "objective" in s:
        log.info(f"tuning    each study maximised {OBJECTIVE_LABELS[s['objective']]} ({s['objective']})")
    log.info(f"{'model':<16}{'cv macro-F1':>14}{'holdout macro-F1':>19}{'weight':>9}")
    for name, m in s["models"].items():
        log.info(
            f"{name:<16}{m['cv_macro_f1_mean']:>14.4f}{m['holdout_macro_f1']:>19.4f}"
            f"{s['ensemble']['weights'][name]:>9.2f}"
        )
    log.info(f"{'ensemble':<16}{'':>14}{s['ensemble']['holdout_macro_f1']:>19.4f}")
    for name, f1 in s["baselines"].items():
        log.info(f"{'baseline ' + name:<30}{f1:>19.4f}")
    p, bt, bh, dsr = s["policy"], s["backtest"], s["buyhold"], s["deflated_sharpe"]
    log.info(
        f"policy    {p['mode']}, {p['on_hold']} on hold; act on buy/sell when p >= {p['min_proba']:g} "
        f"and beats the other direction by >= {p['min_margin']:g} (chosen on out-of-fold predictions)"
    )
    log.info(
        f"backtest  holdout after costs: return {bt['total_return']:+.2%}, Sharpe {bt['sharpe']:.2f}, "
        f"{bt['n_trades']:,} trades, max drawdown {bt['max_drawdown']:.1%}, deflated Sharpe {dsr['dsr']:.3f}"
    )
    others = ", ".join(f"{k} {m['total_return']:+.2%}" for k, m in s["baseline_backtests"].items())
    log.info(f"          buy-and-hold {bh['total_return']:+.2%} (Sharpe {bh['sharpe']:.2f}); {others}")
    gate = s["gate"]
    log.info(
        f"gate      {gate['result'].upper()} (this holdout looked at {gate['looks']} time"
        f"{'s' if gate['looks'] != 1 else ''}: each test at p <= {gate['alpha']:.3g})"
    )
    for c in gate["checks"]:
        info = "" if c["blocking"] else " (information)"
        log.info(f"  [{'x' if c['passed'] else ' '}] {c['name']}{info}: {c['detail']}")
    alias = f"{PRODUCTION} -> v{s['production_version']}" if s["production_version"] else f"no {PRODUCTION}"
    moved = "moved to this version" if s["promoted"] else "not moved"
    if s.get("promotion_refused"):
        moved = f"NOT PROMOTED although the gate passed: {s['promotion_refused']}"
    log.info(f"registry  {s['model_name']} v{s['model_version']}; alias {alias} ({moved})")
    stages = s["stages"]
    if notes := tracking.tuning_notes(s["run_id"]):  # trials cut short by the timeout, or failed
        log.info("trials    " + "; ".join(f"{name}: {note}" for name, note in notes.items()))
    log.info(
        f"run       {s['run_id']}  ({stages['total_seconds']:.0f}s, peak {stages['peak_rss_mb']:.0f} MB)"
    )


EXIT_NOT_PROMOTED = 75  # EX_TEMPFAIL: the gate passed but production did not move; see the last line


def final_line(summary: dict) -> dict:
    """The last line a pipeline prints (JSON): the gate's result, the version, whether production moved
    to it and, for a version that passed its gate but was not promoted, why."""
    line = {
        "gate": summary["gate"]["result"],
        "model_version": summary["model_version"],
        "promoted": summary["promoted"],
        "production_version": summary["production_version"],
    }
    if summary.get("promotion_refused"):
        line["not_promoted"] = summary["promotion_refused"]
    return line


def terminate_as_interrupt(signum, frame) -> None:
    """SIGTERM (a scheduler stopping the job) unwinds like Ctrl-C: open MLflow runs are ended (FAILED)
    and the Optuna trial in flight is marked FAILED, instead of both being left RUNNING."""
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    install()  # credentials masked in every line printed or logged from here on (models.redaction)
    # The log level first (an option outside PipelineConfig); bad arguments exit here as before.
    configure_logging(build_parser().parse_args(argv).log_level)
    try:
        cfg = parse_args(argv)
        summary = run_pipeline(cfg)
    except (
        DataError,
        InsufficientDataError,
        tracking.TrackingUnavailable,
        TuningError,
        ValueError,
        TypeError,
    ) as exc:
        log.error("%s", exc)
        return 1
    except MlflowException as exc:  # one line naming the store, not the SQL statement it refused
        from models.tracking import error_message

        log.error("%s", error_message(exc))
        return 1
    if not summary.get("dry_run"):
        print_summary(summary)
        print(json.dumps(final_line(summary)))
        if summary.get("promotion_refused"):
            return EXIT_NOT_PROMOTED
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, terminate_as_interrupt)
    sys.exit(main())
