"""The weekly job in one command: refresh the candles, skip or train, notify; one retrain per model at a time.

``python -m train.retrain`` (or ``mlflow run . -e retrain``) takes every pipeline option plus
``--min-new-candles``, ``--lock-timeout``, ``--refresh`` and ``--on-degraded``, and:

1. takes the retrain lock of the model name, ``<model_name>.retrain-lock`` in the model registry (the
   tracking server, so it holds across machines): a second retrain waits up to ``--lock-timeout`` seconds,
   then exits with :data:`EXIT_BUSY` (75, EX_TEMPFAIL). The holder refreshes a heartbeat tag on the lock
   every 30 s; a lock is broken when its process on this host is gone, or its heartbeat is 5 minutes old;
2. refreshes the exchange cache when ``--data`` is ``exchange:...`` (other sources are read as they are);
3. counts the candles, at the pipeline's bar size, after the last candle the production version's pipeline
   run read (its ``data_end`` tag). Fewer than ``--min-new-candles``: ``skipped: ...``, exit 0. The
   default ``auto`` asks for half a week of bars (84 hours), so that a weekly timer that fires a little
   early still trains while a source that did not grow (a fixed file, a stalled cache) skips;
   Before deciding, the production version is monitored on those candles (``python -m
   evaluation.monitor --on-degraded ...``, the same command and decision): with ``withdraw`` or
   ``rollback`` a degraded production is withdrawn or rolled back first, and the decision is then taken
   against what production is after that (a withdrawn one: train). A monitor that cannot judge (too few
   new candles, no training snapshot ...) is logged and the retrain goes on;
4. otherwise runs the pipeline (gate and promotion as usual) and posts a one-line summary.

Every retrain is one MLflow run: the pipeline run, tagged ``retrain=true`` with the decision
(``retrain_new_candles`` ...), or a small run with tag ``step=retrain`` when it skipped, found the lock
busy or failed before training. Exit codes: 0 trained (whatever the gate said) or skipped, 1 failed,
2 bad arguments, 75 another retrain of the model holds the lock, or the new version passed its gate but
production could not be moved to it (the summary says why).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import mlflow
import pandas as pd
from mlflow.entities import RunTag
from mlflow.entities.model_registry import RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from evaluation.monitoring import ON_DEGRADED
from features.candles import fmt_td, fmt_ts
from features.data import EXCHANGE_PREFIX, DataError, DataInfo, load_candles
from features.exchange_candles import cache_file, fetch_candles, parse_spec
from models import cli, tracking
from models.notify import notify
from models.redaction import redact, redact_obj
from models.registry import HEARTBEAT_TAG, LockBusy, LockHold, get_production, registry_lock
from models.registry import lock_stale as registry_lock_stale
from models.tracking import env_vars, error_message, one_line, warn_logged_credentials
from models.version import version_tags
from train.config import PipelineConfig, pipeline_config, pipeline_parser
from train.pipeline import run_pipeline
from train.stages.report import print_summary

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_BUSY = 0, 1, 75  # 75: EX_TEMPFAIL in sysexits.h, "try again later"
LOCK_SUFFIX = ".retrain-lock"
LOCK_HEARTBEAT_SECONDS = 30.0
LOCK_STALE_SECONDS = 300.0  # 10 missed heartbeats
AUTO = "auto"
AUTO_SPAN = pd.Timedelta(hours=84)  # half a week: what "auto" asks for, in bars of the pipeline's size
STEP = "retrain"


# ----------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class RetrainOptions:
    min_new_candles: int | None = None  # None: auto (half a week of bars)
    lock_timeout: float = 0.0
    refresh: bool = True
    on_degraded: str = "alert"  # what the monitor run first does about a degraded production


def _min_new(text: str) -> int | None:
    if text.strip().lower() == AUTO:
        return None
    try:
        value = float(text)  # `mlflow run` may pass "100.0"
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not value.is_integer() or value < 0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number >= 0, got {text!r}")
    return int(value)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def build_parser() -> cli.Parser:
    """The pipeline's options (``train.config``) and :class:`RetrainOptions`'."""
    parser = pipeline_parser(
        "python -m train.retrain",
        "The weekly job: refresh exchange candles, skip if too few new candles arrived since the "
        "production version's data ended, else run the pipeline (gate, promotion) and notify. "
        f"Exit 0 trained or skipped, 1 failed, 2 bad arguments, {EXIT_BUSY} another retrain of the "
        "model holds the lock, or the new version passed its gate but production could not move to it.",
    )
    parser.add_argument(
        "--min-new-candles",
        dest="min_new_candles",
        type=_min_new,
        default=AUTO if RetrainOptions.min_new_candles is None else RetrainOptions.min_new_candles,
        help="train only if at least this many candles (at the pipeline's bar size) arrived after the "
        "last candle the production version's run read; 'auto' = half a week of bars (168 of 30m, "
        "84 of 1h, 21 of 4h), 0 = always train",
    )
    parser.add_argument(
        "--lock-timeout",
        dest="lock_timeout",
        type=_seconds,
        default=RetrainOptions.lock_timeout,
        help="seconds to wait while another retrain of the same model name runs (anywhere sharing the "
        f"tracking server) before exiting with code {EXIT_BUSY}; 0 = exit at once",
    )
    parser.add_argument(
        "--refresh",
        dest="refresh",
        type=cli.parse_bool,
        default=RetrainOptions.refresh,
        help="update the exchange cache before deciding (exchange: data only); false = count on the cache "
        "as it is",
    )
    parser.add_argument(
        "--on-degraded",
        dest="on_degraded",
        choices=ON_DEGRADED,
        default=RetrainOptions.on_degraded,
        help="the production version is monitored first (python -m evaluation.monitor); when its live "
        "numbers are degraded: alert only, withdraw production, or roll back",
    )
    return parser


def options(args: argparse.Namespace) -> tuple[PipelineConfig, RetrainOptions]:
    """The pipeline configuration and the retrain options of parsed arguments."""
    names = [f.name for f in fields(RetrainOptions)]
    return pipeline_config(args), RetrainOptions(**{k: getattr(args, k) for k in names})


def parse_args(argv: list[str] | None = None) -> tuple[PipelineConfig, RetrainOptions, str]:
    """The pipeline configuration, the retrain options and the log level."""
    args = build_parser().parse_args(argv)
    return (*options(args), args.log_level)


# ---------------------------------------------------------------------------------------- the lock


def lock_stale(held: RegisteredModel, stale_after: float = LOCK_STALE_SECONDS) -> str | None:
    """Why the retrain lock ``held`` has no live holder, or None if it may have one (the rule of every
    registry lock, :func:`models.registry.lock_stale`, with the retrain's longer heartbeat limit)."""
    return registry_lock_stale(held, stale_after)


def retrain_lock(
    name: str,
    client: MlflowClient,
    timeout: float = 0.0,
    heartbeat: float = LOCK_HEARTBEAT_SECONDS,
    stale_after: float = LOCK_STALE_SECONDS,
):
    """Context manager: hold ``<name>.retrain-lock`` (see the module docstring); :class:`LockBusy` when
    another live retrain of ``name`` still holds it after ``timeout`` seconds."""

    def busy(held: RegisteredModel) -> str:
        return (
            f"another retrain of '{name}' is running ({held.tags.get('owner', '?')}, since "
            f"{held.tags.get('acquired_at', '?')}, heartbeat {held.tags.get(HEARTBEAT_TAG, '?')}); "
            f"waited {timeout:g}s. Nothing was done; the next scheduled run tries again. A lock whose "
            f"process died is broken at once on its host, elsewhere once its heartbeat is "
            f"{stale_after:.0f}s old."
        )

    return registry_lock(
        f"{name}{LOCK_SUFFIX}",
        client,
        timeout=timeout,
        stale=lambda held: lock_stale(held, stale_after),
        busy=busy,
        tags=tracking.owner_tags(),
        description=f"Held while `python -m train.retrain` retrains '{name}'; deleted on release.",
        heartbeat=heartbeat,
    )


# ------------------------------------------------------------------------------------- the decision


@dataclass(frozen=True)
class Production:
    """The production version and the last candle its pipeline run read."""

    version: str
    data_end: pd.Timestamp | None
    data_source: str | None
    anchor: str  # where data_end came from, for the log


def production_data_end(name: str, client: MlflowClient) -> Production | None:
    """The production version of ``name`` and the end of the candles it was trained and tested on: the
    ``data_end`` tag of its pipeline run (one tag read, no model download); for a version whose run is
    gone, its model metadata's ``trained_until``. None when there is no production version."""
    mv = get_production(name, client)
    if mv is None:
        return None
    version = str(mv.version)
    run_id = mv.tags.get("pipeline_run_id") or mv.run_id
    tags: dict[str, str] = {}
    if run_id:
        try:
            tags = client.get_run(run_id).data.tags
        except MlflowException as exc:
            log.warning("cannot read the pipeline run %s of v%s: %s", run_id, version, one_line(exc))
    if tags.get("data_end"):
        return Production(version, _utc(tags["data_end"]), tags.get("data_source"), "its run's data_end")
    # No run to read: the model's own metadata (an MLmodel file; candles after trained_until include
    # its holdout, so this counts more candles as new than the run's data_end would).
    try:
        meta = mlflow.models.get_model_info(f"models:/{name}/{version}").metadata or {}
    except Exception as exc:  # noqa: BLE001 - no anchor: train, and say why
        log.warning("cannot read the metadata of v%s: %s", version, one_line(exc))
        meta = {}
    until = meta.get("trained_until")
    return Production(version, _utc(until) if until else None, None, "its model's trained_until")


def _utc(text: str) -> pd.Timestamp:
    ts = pd.Timestamp(text)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


@dataclass
class Decision:
    train: bool
    reason: str
    new_candles: int | None = None
    needed: int | None = None
    production: str | None = None
    refreshed: str = ""
    fields: dict = field(default_factory=dict)


def _not_refreshed(cfg: PipelineConfig) -> str:
    line = f"not needed: {cfg.data} is read as it is (only exchange: data is fetched)"
    log.info("refresh   %s", line)
    return line


def read_candles(cfg: PipelineConfig, refresh: bool) -> tuple[pd.DataFrame, DataInfo, str]:
    """The candles the pipeline would train on (after ``days`` and ``timeframe``), their info, and one
    line saying what was refreshed. Exchange data: the cache is brought up to date first (``refresh``)."""
    timeframe, days = cfg.timeframe or None, cfg.days or None
    if not cfg.data.startswith(EXCHANGE_PREFIX):
        line = _not_refreshed(cfg)
        candles, info = load_candles(cfg.data, timeframe, days)
        return candles, info, line
    spec = parse_spec(cfg.data)
    if refresh:
        result = fetch_candles(spec, days=days)
        path = result.cache_path
        line = f"{spec}: {result.new_rows:,} new candle(s), {result.cache_rows:,} in the cache"
    else:
        path = cache_file(spec)
        if not path.exists():
            raise DataError(f"refresh=false, but {spec} has no cache at {path}; run with refresh=true once")
        line = f"off: {spec} counted on its cache as it is"
    log.info("refresh   %s (%s)", line, path)
    candles, info = load_candles(str(path), timeframe, days)  # the cache file is itself a candle file
    return candles, replace(info, source=str(spec)), line


def decide(cfg: PipelineConfig, opts: RetrainOptions, client: MlflowClient) -> Decision:
    """Refresh, then train or skip (see the module docstring)."""
    production = production_data_end(cfg.model_name, client)
    if production is None:
        if cfg.data.startswith(EXCHANGE_PREFIX):
            line = read_candles(cfg, opts.refresh)[2]
        else:  # nothing to compare with: the pipeline reads the data itself
            line = _not_refreshed(cfg)
        return Decision(True, f"'{cfg.model_name}' has no production version yet", refreshed=line)
    candles, info, line = read_candles(cfg, opts.refresh)
    needed = opts.min_new_candles
    if needed is None:
        needed = max(1, math.ceil(AUTO_SPAN / info.bar))
    v = production.version
    base = Decision(False, "", needed=needed, production=v, refreshed=line)
    if production.data_end is None:
        return replace(base, train=True, reason=f"production v{v} does not say when its data ended")
    if production.data_source and production.data_source != info.source:
        return replace(
            base,
            train=True,
            new_candles=len(candles),
            reason=f"production v{v} was trained on {production.data_source}, this retrain reads "
            f"{info.source}",
        )
    new = int((candles.index > production.data_end).sum())
    span = f"{new:,} new {fmt_td(info.bar)} candle(s) after {fmt_ts(production.data_end)}"
    where = f"the end of production v{v}'s data ({production.anchor})"
    if new < needed:
        return replace(base, new_candles=new, reason=f"{span}, {where}; at least {needed:,} needed")
    return replace(base, train=True, new_candles=new, reason=f"{span}, {where}; {needed:,} needed")


# --------------------------------------------------------------------------------- the monitor first

MONITOR_OUTCOMES = {0: "ok", 1: "not judged", 3: "degraded", 4: "drifted", 5: "no production", 6: "not acted"}


def monitor_production(cfg: PipelineConfig, opts: RetrainOptions) -> int:
    """Run the monitor step (:func:`evaluation.monitor_step.run_monitor`, what ``python -m
    evaluation.monitor`` runs) on ``models:/<name>@production`` with the retrain's candles (an exchange
    source: its refreshed cache) and ``--on-degraded``; its own top-level run, even under `mlflow run`
    (whose run is the pipeline's). Returns the monitor's exit code, never raises."""
    from evaluation.monitor_step import run_monitor
    from evaluation.monitoring import EXIT_ERROR, MonitorConfig

    data = cfg.data
    if data.startswith(EXCHANGE_PREFIX):
        data = str(cache_file(parse_spec(data)))
    model_uri = f"models:/{cfg.model_name}@production"
    launcher_run = os.environ.pop("MLFLOW_RUN_ID", None)
    try:
        config = MonitorConfig(seed=cfg.seed, fee_bps=cfg.fee_bps, slippage_bps=cfg.slippage_bps)
        code = run_monitor(model_uri, data, cfg.timeframe, int(cfg.days or 0), config, opts.on_degraded)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the retrain goes on without a verdict
        log.warning("monitor   failed: %s", _error_text(exc) if isinstance(exc, Exception) else exc)
        code = EXIT_ERROR
    finally:
        if launcher_run is not None:
            os.environ["MLFLOW_RUN_ID"] = launcher_run
    log.info("monitor   production: %s (exit %s)", MONITOR_OUTCOMES.get(code, "?"), code)
    return code


# --------------------------------------------------------------------------------- records and runs


def _experiment_id() -> str:
    return tracking.experiment_in_use()  # set_experiment's choice, as models.tracking


def record(outcome: str, cfg: PipelineConfig, tags: dict, note: str, failed: bool = False) -> str | None:
    """One small run (tag ``step=retrain``) for a retrain that did not train: skipped, busy or failed
    before the pipeline started. Under `mlflow run` the launcher's run gets the tags instead. Returns its
    id, or None when the store cannot take it (a warning: the exit code and message still tell)."""
    all_tags = {
        "step": STEP,
        "retrain": "true",
        "retrain_outcome": outcome,
        "model_name": cfg.model_name,
        "mlflow.note.content": note,
        **version_tags(),  # created by the client: no run-context provider adds it
        **{k: str(v) for k, v in tags.items() if v is not None},
    }
    all_tags = redact_obj(all_tags)  # an error or reason may quote a store URI with its password
    client = MlflowClient()
    try:
        # a store that fails now should not hold up the exit code for minutes
        with env_vars(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="15"):
            run_id = os.environ.get("MLFLOW_RUN_ID")
            if run_id:
                warn_logged_credentials(run_id, client.get_run(run_id).data.params)  # `mlflow run` -P values
                client.log_batch(run_id, tags=[RunTag(k, v) for k, v in all_tags.items()])
                client.set_tag(run_id, "mlflow.runName", f"retrain {outcome} {cfg.model_name}")
                return run_id
            run = client.create_run(
                _experiment_id(), run_name=f"retrain {outcome} {cfg.model_name}", tags=all_tags
            )
            client.set_terminated(run.info.run_id, "FAILED" if failed else "FINISHED")
            return run.info.run_id
    except Exception as exc:  # noqa: BLE001 - recording is secondary to reporting
        log.warning("could not record the retrain run: %s", error_message(exc))
        return None


def _tags(decision: Decision, hold: LockHold | None, opts: RetrainOptions) -> dict:
    return {
        "retrain_reason": decision.reason[:500],
        "retrain_new_candles": decision.new_candles,
        "retrain_min_new_candles": decision.needed,
        "retrain_production_before": decision.production or "",
        "retrain_refresh": decision.refreshed[:500] or None,
        "retrain_lock_wait_seconds": f"{hold.waited:.1f}" if hold else None,
        "retrain_lock_broken": hold.broke if hold and hold.broke else None,
        "retrain_host": socket.gethostname(),
    }


def train(cfg: PipelineConfig, tags: dict, pipeline: Callable[[PipelineConfig], dict]) -> dict:
    """Run the pipeline in a run that carries the retrain tags from its start (so a failed training
    shows them too): the run is created here and the pipeline resumes it through MLFLOW_RUN_ID, as it
    does under `mlflow run` (whose launcher's run is used as it is)."""
    client = MlflowClient()
    launcher_run = os.environ.get("MLFLOW_RUN_ID")
    run_tags = {"retrain": "true", "retrain_outcome": "training", "model_name": cfg.model_name} | {
        k: redact(str(v)) for k, v in tags.items() if v is not None
    }
    run_tags |= version_tags()  # created by the client: no run-context provider adds it
    if launcher_run:
        run_id = launcher_run
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in run_tags.items()])
    else:
        run_tags |= tracking.owner_tags() | {"step": "pipeline"}  # a dead retrain's run is closed later
        run = client.create_run(_experiment_id(), run_name=f"retrain {cfg.model_name}", tags=run_tags)
        run_id = run.info.run_id
        os.environ["MLFLOW_RUN_ID"] = run_id
    try:
        summary = pipeline(cfg)
    except BaseException as exc:
        _finish(client, run_id, launcher_run, "failed", {"retrain_error": _error_text(exc)[:500]})
        raise
    _finish(client, run_id, launcher_run, "trained", {})
    return summary | {"run_id": summary.get("run_id") or run_id}


def _finish(client: MlflowClient, run_id: str, launcher_run: str | None, outcome: str, tags: dict) -> None:
    """Tag the outcome; end the run if the pipeline never resumed it (a dry run, an early failure)."""
    if not launcher_run and os.environ.get("MLFLOW_RUN_ID") == run_id:
        os.environ.pop("MLFLOW_RUN_ID")
        status = "FAILED" if outcome == "failed" else "FINISHED"
    else:
        status = None
    try:
        client.log_batch(
            run_id, tags=[RunTag(k, v) for k, v in ({"retrain_outcome": outcome} | tags).items()]
        )
        if status and client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status)
    except Exception as exc:  # noqa: BLE001 - the store may be what failed
        log.warning("could not tag the retrain run %s: %s", run_id, error_message(exc))


def _error_text(exc: BaseException) -> str:
    """The one line a failure is reported in (stderr, the run's tags, the notification), without
    credentials: a dead store's message names its URI."""
    if isinstance(exc, KeyboardInterrupt):
        return f"interrupted ({exc or 'Ctrl-C'})"
    if isinstance(exc, MlflowException):
        return error_message(exc)
    return redact(one_line(exc) or type(exc).__name__)


# ----------------------------------------------------------------------------------------- the job


@dataclass
class Outcome:
    status: str  # trained | skipped | busy | failed | dry_run
    exit_code: int
    message: str
    summary: dict = field(default_factory=dict)

    def to_json(self) -> str:
        s = self.summary
        return json.dumps(
            {
                "retrain": self.status,
                "new_candles": s.get("new_candles"),
                "gate": (s.get("gate") or {}).get("result"),
                "model_version": s.get("model_version"),
                "production_version": s.get("production_version"),
            }
        )


def retrain(
    cfg: PipelineConfig,
    opts: RetrainOptions,
    pipeline: Callable[[PipelineConfig], dict] | None = None,
) -> Outcome:
    """The weekly job (see the module docstring); never raises for a failure of the job itself: the
    outcome carries the exit code, and a failure has been logged and announced."""
    pipeline = pipeline or run_pipeline
    name = cfg.model_name
    started = time.monotonic()
    decision: Decision | None = None
    hold: LockHold | None = None
    try:
        tracking.check_reachable()  # a dead store fails in seconds, before the lock or any data
        tracking.use_experiment()
        client = MlflowClient()
        if cfg.dry_run:  # reads the registry and the data, takes no lock, logs and announces nothing
            decision = decide(cfg, opts, client)
            log.info("decision  %s: %s", "would train" if decision.train else "would skip", decision.reason)
            pipeline(cfg)
            return Outcome("dry_run", EXIT_OK, decision.reason)
        with retrain_lock(name, client, timeout=opts.lock_timeout) as hold:
            if hold.broke:
                log.warning("lock      broke a stale retrain lock of '%s': %s", name, hold.broke)
            if hold.waited >= 1:
                log.info("lock      waited %.0fs for another retrain of '%s'", hold.waited, name)
            decision = decide(cfg, opts, client)
            decision, monitored = _monitor_first(cfg, opts, client, decision)
            tags = _tags(decision, hold, opts)
            if monitored is not None:
                tags["retrain_monitor"] = f"{MONITOR_OUTCOMES.get(monitored, '?')} (exit {monitored})"
            if not decision.train:
                return _skipped(cfg, decision, tags)
            log.info("decision  train: %s", decision.reason)
            summary = train(cfg, tags, pipeline)
            if hold.lost.is_set():
                log.warning("the retrain lock of '%s' was taken by another process during this run", name)
    except LockBusy as exc:
        if hold is not None:  # not our lock (the pipeline's own promotion lock): a failure
            return _failed(cfg, decision, exc)
        return _busy(cfg, exc)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - every failure: one line, exit 1, a message
        return _failed(cfg, decision, exc)
    return _trained(cfg, decision, summary, started)


def _monitor_first(
    cfg: PipelineConfig, opts: RetrainOptions, client: MlflowClient, decision: Decision
) -> tuple[Decision, int | None]:
    """Monitor production (if any) before training; when the monitor withdrew or rolled it back, decide
    again against what production is now. Returns the decision and the monitor's exit code."""
    if not decision.production:
        return decision, None
    monitored = monitor_production(cfg, opts)
    now = get_production(cfg.model_name, client)
    if (str(now.version) if now else None) != decision.production:  # withdrawn or rolled back
        again = decide(cfg, replace(opts, refresh=False), client)
        decision = replace(again, refreshed=decision.refreshed)
    return decision, monitored


def _skipped(cfg: PipelineConfig, decision: Decision, tags: dict) -> Outcome:
    """Too few new candles: recorded and announced, exit 0."""
    message = f"skipped: {decision.reason}"
    log.info("%s", message)
    run_id = record("skipped", cfg, tags, f"**retrain skipped**: {decision.reason}")
    notify(
        "retrain_skipped",
        f"{cfg.model_name}: retrain {message}",
        {"new_candles": decision.new_candles, "needed": decision.needed, "run_id": run_id},
    )
    summary = {"new_candles": decision.new_candles, "production_version": decision.production}
    return Outcome("skipped", EXIT_OK, message, summary)


def _busy(cfg: PipelineConfig, exc: LockBusy) -> Outcome:
    """Another retrain of the model holds the lock: recorded and announced, exit :data:`EXIT_BUSY`."""
    message = f"busy: {exc}"
    log.warning("%s", message)
    record("busy", cfg, {"retrain_reason": str(exc)[:500]}, f"**retrain not started**: {exc}")
    notify(
        "retrain_busy", f"{cfg.model_name}: retrain not started, another one is running", {"detail": str(exc)}
    )
    return Outcome("busy", EXIT_BUSY, message)


def _trained(cfg: PipelineConfig, decision: Decision, summary: dict, started: float) -> Outcome:
    """The pipeline ran: its result in one line, announced; exit 0, or :data:`EXIT_BUSY` when the new
    version passed its gate but production could not be moved to it."""
    minutes = (time.monotonic() - started) / 60
    version, production = summary.get("model_version"), summary.get("production_version")
    gate = (summary.get("gate") or {}).get("result", "?")
    before = decision.production
    moved = (
        f"production v{before or '-'} -> v{production}"
        if summary.get("promoted")
        else f"production stays v{production or before or '-'}"
    )
    if summary.get("promotion_refused"):
        moved += f" (not promoted: {summary['promotion_refused']})"
    message = f"trained: v{version}, gate {gate}, {moved} ({minutes:.0f} min)"
    log.info("retrain   %s", message)
    notify(
        "retrain_done",
        f"{cfg.model_name}: retrained v{version}, gate {gate}, {moved}",
        {"new_candles": decision.new_candles, "minutes": round(minutes, 1), "run_id": summary.get("run_id")},
    )
    # A version that passed its gate but did not become production: "try again later", like a busy lock.
    code = EXIT_BUSY if summary.get("promotion_refused") else EXIT_OK
    return Outcome("trained", code, message, summary | {"new_candles": decision.new_candles})


def _failed(cfg: PipelineConfig, decision: Decision | None, exc: BaseException) -> Outcome:
    """One line on stderr, a ``failed`` record unless the training run has it, a notification."""
    text = _error_text(exc)
    log.error("%s", text)
    unreachable = isinstance(exc, tracking.TrackingUnavailable)  # nowhere to record it
    if not unreachable and (decision is None or not decision.train):  # else the training run tells
        record("failed", cfg, {"retrain_error": text[:500]}, f"**retrain failed**: {text}", failed=True)
    notify("retrain_failed", f"{cfg.model_name}: retrain failed: {text}", {"host": socket.gethostname()})
    return Outcome("failed", EXIT_FAILED, text)


def main(argv: list[str] | None = None) -> int:
    return cli.main(build_parser(), argv, _main)


def _main(args: argparse.Namespace) -> int:
    try:
        cfg, opts = options(args)
    except (ValueError, TypeError) as exc:  # PipelineConfig's checks: said in one line by cli.main
        notify("retrain_failed", f"retrain failed: {redact(str(exc))}", {"host": socket.gethostname()})
        raise
    outcome = retrain(cfg, opts)
    if outcome.status == "trained" and "models" in outcome.summary:  # the pipeline's full summary
        print_summary(outcome.summary)
    if outcome.status != "dry_run":
        print(outcome.to_json())
    return outcome.exit_code


if __name__ == "__main__":
    cli.run(main)
