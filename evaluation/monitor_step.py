"""The monitor step as a library function: :func:`run_monitor` is what ``python -m evaluation.monitor``
runs (and ``train.retrain`` before it trains): resolve the registered version, judge it on the candles
(:func:`evaluation.monitoring.monitor`), log one ``monitor`` run, tag the version, act on the degraded
rule when asked (:func:`act`: withdraw or roll back through :mod:`models.registry`) and post a webhook
message. The command's options, output and exit codes are described in :mod:`evaluation.monitor`.
"""

from __future__ import annotations

import re
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from evaluation.monitoring import (
    ALERT,
    EXIT_ERROR,
    EXIT_NO_PRODUCTION,
    EXIT_NOT_ACTED,
    NOTHING,
    OK,
    ON_DEGRADED,
    ROLLBACK,
    WITHDRAW,
    Action,
    MonitorConfig,
    MonitorError,
    MonitorResult,
    NoProduction,
    action_for,
    live_performance,
    metrics_of,
    monitor,
    plots,
    promised,
    summary_lines,
)
from evaluation.scoring import prepare_scoring
from features.data import DataError, load_candles
from models import registry, tracking
from models.loading import ModelUnavailable, candles_for, load_model
from models.notify import notify

DEFAULT_MODEL_URI = "models:/crypto-signal-ensemble@production"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/@]+))$")


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


# ------------------------------------------------------------------------------------------ reporting
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


# ------------------------------------------------------------------------------------------- the step


def run_monitor(
    model_uri: str = DEFAULT_MODEL_URI,
    data: str = "builtin",
    timeframe: str = "",
    days: int = 0,
    config: MonitorConfig | None = None,
    on_degraded: str = ALERT,
    params: dict | None = None,
) -> int:
    """The monitor step on ``model_uri`` (``models:/<name>/<version>`` or ``models:/<name>@<alias>``) and
    the candles ``data`` (``timeframe``, last ``days``; 0: all): judge, log the run, tag the version, act
    as ``on_degraded`` says, print the report and return the exit code (:mod:`evaluation.monitor`).
    Errors print one ``error: ...`` line on stderr and return :data:`EXIT_ERROR`; never raises for them.
    ``params``: the run's parameters (default: these arguments and ``config``'s thresholds, by their
    command-line names)."""
    config = config or MonitorConfig()
    if on_degraded not in ON_DEGRADED:
        raise ValueError(f"on_degraded must be one of {', '.join(ON_DEGRADED)}, got {on_degraded!r}")
    if params is None:
        params = _params(model_uri, data, timeframe, days, config, on_degraded)
    # MLflow's download progress bars would surround the one-line error a scheduler's log should show.
    with tracking.env_vars(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):
        try:
            client = _connect(model_uri)
            try:
                version = resolve_version(model_uri, client)
            except NoProduction as exc:  # already withdrawn: nothing to monitor, nothing to do
                print(f"no production model: {exc}; nothing to monitor (exit {EXIT_NO_PRODUCTION})")
                return EXIT_NO_PRODUCTION
            result, candles, run_id = _judge_and_log(version, data, timeframe, days, config, params, client)
            action = action_for(result.live, result.promised["holdout_macro_f1"], config, on_degraded)
            acted = act(action, result, run_id, candles, config, client)
        except (DataError, ValueError, tracking.TrackingUnavailable, ModelUnavailable) as exc:
            print(f"error: {tracking.one_line(exc)}", file=sys.stderr)
            return EXIT_ERROR
        except MlflowException as exc:
            print(f"error: {tracking.error_message(exc)}", file=sys.stderr)
            return EXIT_ERROR
        return _report(result, run_id, acted)


def _params(
    model_uri: str, data: str, timeframe: str, days: int, config: MonitorConfig, on_degraded: str
) -> dict:
    """The run's parameters as the command line names them."""
    return {
        "model_uri": model_uri,
        "data": data,
        "timeframe": timeframe,
        "days": days,
        "psi_threshold": config.drift.psi_threshold,
        "ks_alpha": config.drift.ks_alpha,
        "drift_share": config.drift.drift_share,
        "f1_tolerance": config.f1_tolerance,
        "confidence": config.confidence,
        "seed": config.seed,
        "fee_bps": config.fee_bps,
        "slippage_bps": config.slippage_bps,
        "on_degraded": on_degraded,
    }


def _connect(model_uri: str) -> MlflowClient:
    """A client on a reachable store, after recording alias moves made outside this tool (in the UI or
    with the plain MLflow client; :mod:`models.registry`)."""
    tracking.check_reachable()
    client = MlflowClient()
    if (uri := _URI.match(model_uri.strip())) and (found := registry.record_unrecorded(uri["name"])):
        print(f"warning: {found}", file=sys.stderr)
    return client


def _judge_and_log(
    version: ModelVersion,
    data: str,
    timeframe: str,
    days: int,
    config: MonitorConfig,
    params: dict,
    client: MlflowClient,
) -> tuple[MonitorResult, pd.DataFrame, str]:
    """Load the version and the candles, judge it, log the monitor run and tag the version with it."""
    # First: a version whose files are missing or corrupt fails here in one line, before any download.
    model = load_model(f"models:/{version.name}/{version.version}")
    candles, info = candles_for(model, data, timeframe, days)
    train_candles, _ = training_candles(version)
    result = monitor(model, version, candles, train_candles, config)
    run_params = dict(params) | {"model_version": version.version}
    run_id = log_run(result, run_params, candles, info.source, info.sha256)
    tag_version(result, run_id, client)
    return result, candles, run_id


def _report(result: MonitorResult, run_id: str, acted: Acted) -> int:
    """Print the verdict, what was done about it and the run; post the webhook message; the exit code."""
    for line in summary_lines(result):
        print(line)
    code = EXIT_NOT_ACTED if acted.refused else result.exit_code
    if acted.message:
        print(acted.message)
    print(f"monitor run {run_id}; exit code {code}")
    send_alert(result, run_id, acted.message or None)
    return code
