"""Stage `tune`: one Optuna study per model family on the development rows, and its best trial.

:func:`study_for` runs the study (the pipeline, the walk-forward and every ``python -m train.tune``
worker call it, so they all fill the same study); :func:`tune` is the pipeline's logged form of it, in a
child run of its own. The search itself (spaces, objective, storage) is ``train.tune``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlflow
import optuna

from train.config import PipelineConfig
from train.prepare import Prepared
from train.tune import (
    FINISHED,
    OBJECTIVE_LABELS,
    SPACE_VERSION,
    OutOfFold,
    describe_trials,
    run_study,
    study_description,
    study_name_for,
    study_objective,
    trial_counts,
    trial_macro_f1,
)


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
    # The best trial's out-of-fold predictions, when this process ran it (None: another worker or an
    # earlier run did): the ensemble's weights reuse them instead of fitting the same folds again.
    oof: OutOfFold | None = None

    @classmethod
    def from_study(cls, run_id: str, study: optuna.Study, oof: dict[int, OutOfFold] | None = None) -> Tuned:
        """The best trial of ``study`` (``study.best_trial``: the completed trial with the highest value
        of the study's objective); ``n_trials`` counts finished trials (complete or pruned, as n_trials
        counts them; failed ones are counted apart). ``oof``: the out-of-fold predictions this process
        kept (:func:`study_for`'s ``keep_oof``), of which the best trial's are kept."""
        best = study.best_trial
        if best.value is None:  # the best trial is a completed trial of a single-objective study
            raise ValueError(f"study {study.study_name!r}: its best trial {best.number} has no value")
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
            oof=(oof or {}).get(best.number),
        )

    def describe(self) -> str:
        """The best trial's numbers for a log line, e.g. ``cv macro-F1 0.4012, out-of-fold Sharpe 0.0121
        (objective)``."""
        text = f"cv macro-F1 {self.cv_macro_f1_mean:.4f}"
        if self.cv_sharpe is not None:
            text += f", out-of-fold Sharpe {self.cv_sharpe:.4f}"
        return text + f" ({OBJECTIVE_LABELS[self.objective]} maximised)"


def study_name_of(cfg: PipelineConfig, data: Prepared, name: str) -> str:
    """Model family ``name``'s study: named by everything that changes what a trial measures."""
    return study_name_for(name, cfg.fingerprint(data.info.sha256, name, SPACE_VERSION))


def study_for(
    cfg: PipelineConfig,
    data: Prepared,
    name: str,
    n_jobs: int | None,
    description: dict | None = None,
    warm_start: list[dict] | None = None,
    *,
    storage=None,
    study_name: str | None = None,
    worker_id: int = 0,
    space: Callable[[optuna.Trial], dict] | None = None,
    keep_oof: dict[int, OutOfFold] | None = None,
) -> optuna.Study:
    """Run (create, resume or join) model family ``name``'s Optuna study on the development rows, named
    by :func:`study_name_of` (or ``study_name``); ``description`` adds to the study's user attrs.
    ``storage`` (default ``cfg.optuna_storage``) and ``worker_id`` are for a `tune` worker, ``space``
    for a benchmark; ``keep_oof`` receives the out-of-fold predictions of the trials this process
    completes (see :func:`train.tune.run_study`)."""
    X_dev, y_dev = data.dev
    return run_study(
        name,
        X_dev,
        y_dev,
        data.cv,
        cfg.n_trials,
        cfg.timeout or None,
        cfg.optuna_storage if storage is None else storage,
        study_name or study_name_of(cfg, data, name),
        seed=cfg.seed,
        n_jobs=n_jobs,
        worker_id=worker_id,
        costs=data.trading_costs(cfg),
        description=study_description(cfg, data.info, name) | (description or {}),
        warm_start=warm_start,
        objective=cfg.objective,
        sample_weight=data.dev_weights,
        side_column=cfg.side_column,
        space=space,
        keep_oof=keep_oof,
    )


def finished_trials(tuned: dict[str, Tuned]) -> int:
    """Trials that finished (complete, pruned or failed) over every study: each one was a look at the
    development rows."""
    return max(1, sum(t.state in FINISHED for tu in tuned.values() for t in tu.study.trials))


def tune(cfg: PipelineConfig, data: Prepared, name: str, n_jobs: int) -> Tuned:
    """:func:`study_for` model family ``name`` in its own child run, logged there."""
    study_name = study_name_of(cfg, data, name)
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
        oof: dict[int, OutOfFold] = {}
        study = study_for(cfg, data, name, n_jobs, keep_oof=oof)
        tuned = Tuned.from_study(child.info.run_id, study, oof)
        log_tuned(cfg, study_name, tuned)
    return tuned


def log_tuned(cfg: PipelineConfig, study_name: str, tuned: Tuned) -> None:
    """The study's best parameters, its numbers, how its trials ended and its trials table, to the active
    (tuning) run."""
    study = tuned.study
    best = study.best_trial
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
    mlflow.log_text(study.trials_dataframe().to_csv(index=False), "trials.csv")
    mlflow.log_dict(best.params, "best_params.json")
