"""Stage `register`: the served model logged with its code, a new registry version with its gate tags,
and production moved to it when it passed the gate.

:func:`model_metrics`, :func:`version_tags` and :func:`model_signature` compute; the rest writes to the
tracking store and the registry, and only the pipeline calls it.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version as dist_version

import cloudpickle
import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.tracking import MlflowClient

from features.context import context_label
from models.loading import ModelUnavailable
from models.notify import notify
from models.pyfunc import SignalModel, as_model_input, input_schema
from models.redaction import redact
from models.registry import CHALLENGER, RegistryError, mark_challenger, promote, register_candidate
from train.config import PipelineConfig
from train.prepare import Prepared
from train.stages.assess import Evaluation
from train.stages.fit import Fitted, serving_model

log = logging.getLogger(__name__)

# Distributions the logged model needs at load time; versions are read from this environment.
MODEL_REQUIREMENTS = ("mlflow", "lightgbm", "xgboost-cpu", "scikit-learn", "pandas", "numpy", "cloudpickle")
# The project's packages whose code the served model runs (SignalModel and the feature functions, the
# ensemble and its base models, the decision policy, the CV splitter the ensemble keeps as a parameter).
MODEL_CODE_PACKAGES = ("features", "models", "train")


@dataclass
class Registered:
    version: str  # the new model version
    promoted: bool  # production moved to it
    refused: str | None = None  # why a version that passed its gate was not promoted


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
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_model_metrics needs the ensemble run active (no active MLflow run)")
    run_id = run.info.run_id
    inputs = MlflowClient().get_run(run_id).inputs
    logged = inputs.dataset_inputs if inputs is not None else []
    holdout = next((i.dataset for i in logged if i.dataset.name == "holdout"), None)
    mlflow.log_metrics(model_metrics(ev), model_id=model_id, dataset=holdout, run_id=run_id)


def model_signature(cfg: PipelineConfig, signal_model: SignalModel, example) -> ModelSignature:
    """Inputs of any type (every timestamp form a bot sends reaches predict, which checks it:
    ``models.pyfunc``); the outputs as the model gives them for ``example``."""
    with warnings.catch_warnings():
        # `label` is an integer column by design (-1 marks rows without history), never NaN.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        outputs = infer_signature(example, signal_model.predict_candles(example)).outputs
    return ModelSignature(input_schema(pair=bool(cfg.pair_data.strip())), outputs)


def log_served_model(cfg: PipelineConfig, data: Prepared, fitted: Fitted, ev: Evaluation):
    """Log the served model (:func:`train.stages.fit.serving_model`) with its code, requirements,
    signature and example to the active run, its holdout numbers as its metrics; returns its ModelInfo."""
    signal_model = serving_model(cfg, data, fitted)
    example = as_model_input(data.candles.iloc[-(signal_model.min_history + 5) :])
    signature = model_signature(cfg, signal_model, example)
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
    return logged


def version_tags(
    cfg: PipelineConfig,
    data: Prepared,
    fitted: Fitted,
    ev: Evaluation,
    pipeline_run_id: str,
    data_digest: str,
) -> dict:
    """The new version's tags: its gate result and the numbers the gate looked at, what it predicts from
    which data (what a later champion comparison checks), and where it came from."""
    info, gate = data.info, ev.gate
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
    return tags


def notify_gate(cfg: PipelineConfig, version: str, ev: Evaluation) -> None:
    """The gate's decision on the new version, to the notification hook."""
    gate = ev.gate
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


def promote_passed(cfg: PipelineConfig, version: str, ev: Evaluation, pipeline_run_id: str) -> Registered:
    """Move production to ``version``, which passed its gate, unless production moved since it was
    compared, the promotion lock stayed busy or the version does not load: then a version that loads
    gets the ``challenger`` alias, and the result says why it was not promoted."""
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
        if not isinstance(exc.__cause__, ModelUnavailable):  # one that does not load is no challenger
            mark_as_challenger(cfg, version, redact(str(exc)))
        return Registered(version, False, redact(str(exc)))
    return Registered(version, True)


def mark_as_challenger(cfg: PipelineConfig, version: str, reason: str) -> None:
    """A version that passed but was not promoted stays at hand as ``@challenger``."""
    try:
        if mark_challenger(cfg.model_name, version, reason):
            mlflow.set_tag(CHALLENGER, version)
            log.info(f"challenger {cfg.model_name}@{CHALLENGER} -> v{version} (passed, not promoted)")
    except MlflowException as alias_exc:  # the version is registered; the alias is a convenience
        log.warning("could not set @%s: %s", CHALLENGER, redact(str(alias_exc)))


def register(
    cfg: PipelineConfig,
    data: Prepared,
    fitted: Fitted,
    ev: Evaluation,
    pipeline_run_id: str,
    data_digest: str,
) -> Registered:
    """Log the served model (its holdout numbers as LoggedModel metrics), register it as a new version
    with its gate tags, promote if it passed. Returns the version, whether it was promoted, and why not
    when it passed the gate but was not (the promotion lock stayed busy, production moved meanwhile, the
    version does not load); such a version, if it loads, gets the ``challenger`` alias."""
    logged = log_served_model(cfg, data, fitted, ev)
    tags = version_tags(cfg, data, fitted, ev, pipeline_run_id, data_digest)
    version = str(register_candidate(logged.model_uri, cfg.model_name, tags).version)
    mlflow.set_tag("model_version", version)
    notify_gate(cfg, version, ev)
    if not ev.gate.passed:
        return Registered(version, False)
    return promote_passed(cfg, version, ev, pipeline_run_id)
