"""Stage `fit`: the tuned models refitted as one ensemble, its decision policy, and the served model.

Everything is fitted on the development rows only; the holdout stays unseen until ``assess``.
:func:`fit_candidate` and :func:`serving_model` compute; :func:`fit_ensemble` is the pipeline's logged
form (the ensemble run).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import pandas as pd

from features.context import context_label
from features.labels import CLASS_NAMES
from models import tracking
from models.base import build_model, fit_threads
from models.ensemble import WeightedSoftVoting
from models.policy import DecisionPolicy
from models.pyfunc import SignalModel
from train.config import PipelineConfig
from train.prepare import Prepared
from train.stages.tune import Tuned


@dataclass
class Fitted:
    """The candidate: the ensemble and the decision policy chosen on its out-of-fold predictions."""

    ensemble: WeightedSoftVoting
    policy: DecisionPolicy
    policy_search: list[dict]

    @property
    def chosen(self) -> dict:
        """The policy search's row of the chosen rule: its out-of-fold after-cost numbers."""
        return next(r for r in self.policy_search if r["policy"] == self.policy.key)


def fit_candidate(cfg: PipelineConfig, data: Prepared, tuned: dict[str, Tuned], n_jobs: int) -> Fitted:
    """Refit the tuned models as one ensemble and choose its decision policy, on development rows only
    (no tracking: :func:`fit_ensemble` logs it)."""
    X_dev, y_dev = data.dev
    # Threads per fit by family, as in the tuning (models.base.fit_threads); the members predict on one.
    estimators = [
        (n, build_model(n, t.params, seed=cfg.seed, n_jobs=fit_threads(n, n_jobs)[0]))
        for n, t in tuned.items()
    ]
    # Weights from out-of-fold predictions on the development rows only; the holdout stays unseen.
    # A tuning trial run by this process already fitted the best parameters' folds: the same fits.
    oof = {n: t.oof for n, t in tuned.items() if t.oof is not None}
    ensemble = WeightedSoftVoting(estimators, cv=data.cv, n_jobs=n_jobs, side_column=cfg.side_column).fit(
        X_dev, y_dev, sample_weight=data.dev_weights, oof=oof
    )
    # The policy's confidence rule: the best after-cost Sharpe ratio on the same out-of-fold predictions.
    policy, search = data.trading_costs(cfg).fit_policy(ensemble.oof_index_, ensemble.oof_proba_)
    return Fitted(ensemble, policy, search)


def fit_ensemble(cfg: PipelineConfig, data: Prepared, tuned: dict[str, Tuned], n_jobs: int) -> Fitted:
    """:func:`fit_candidate`, logged to the ensemble run (the active run)."""
    mlflow.set_tags({"step": "ensemble", "model_family": "ensemble", "feature_set": cfg.features})
    fitted = fit_candidate(cfg, data, tuned, n_jobs)
    log_fitted(data, fitted)
    return fitted


def log_fitted(data: Prepared, fitted: Fitted) -> None:
    """The ensemble's weights, the chosen policy with its out-of-fold numbers and the whole policy search,
    and the development and holdout datasets, to the active (ensemble) run."""
    ensemble, policy, chosen = fitted.ensemble, fitted.policy, fitted.chosen
    mlflow.log_params({f"weight_{k}": round(v, 4) for k, v in ensemble.named_weights_.items()})
    mlflow.log_metric("weight_search_oof_macro_f1", ensemble.oof_macro_f1_)
    mlflow.log_params({f"policy_{k}": v for k, v in policy.to_dict().items()})
    mlflow.log_metrics(
        {
            "policy_oof_sharpe_per_period": chosen["sharpe_per_period"],
            "policy_oof_total_return": chosen["total_return"],
            "policy_oof_n_trades": chosen["n_trades"],
        }
    )
    mlflow.log_text(pd.DataFrame(fitted.policy_search).to_csv(index=False), "policy_search.csv")
    X_dev, y_dev = data.dev
    X_hold, y_hold = data.holdout
    tracking.log_dataset(X_dev.assign(label=y_dev), "development", data.info.source, "training")
    tracking.log_dataset(X_hold.assign(label=y_hold), "holdout", data.info.source, "evaluation")


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
        metadata=model_metadata(cfg, data, fitted),
    )


def model_metadata(cfg: PipelineConfig, data: Prepared, fitted: Fitted) -> dict:
    """What the served model says about itself: its features, bar, label, policy, and the candles it
    trained on (``trained_until``) and was tested on (``holdout``)."""
    return {
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
    }
