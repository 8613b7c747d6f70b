"""What the training runs log beyond the generic helpers of :mod:`models.tracking` (this package): the code
version and environment, the candle snapshot, and the liveness of its runs: who runs them (host, pid),
a heartbeat, and closing the runs a dead process left RUNNING.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.abstract_context import RunContextProvider

from models.tracking import (
    DEFAULT_EXPERIMENT,
    HOST_TAG,
    PID_START_TAG,
    PID_TAG,
    CandleSource,
    TrackingUnavailable,
    check_reachable,
    env_vars,
    experiment_in_use,
    log_dataset,
    log_metrics,
    log_params_once,
    owner_alive,
    owner_tags,
    process_start,
    use_experiment,
)
from models.version import VERSION_TAG, __version__, version_tags

__all__ = [
    "DEFAULT_EXPERIMENT",
    "HOST_TAG",
    "PID_START_TAG",
    "PID_TAG",
    "REPO_ROOT",
    "SNAPSHOT_PATH",
    "CandleSource",
    "TrackingUnavailable",
    "check_reachable",
    "close_orphaned_runs",
    "environment",
    "experiment_in_use",
    "git_commit",
    "holdout_looks",
    "log_candles_snapshot",
    "log_dataset",
    "log_metrics",
    "log_params_once",
    "owner_alive",
    "owner_tags",
    "process_start",
    "record_version",
    "track_liveness",
    "tuning_notes",
    "use_experiment",
]

REPO_ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    out = subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
    )
    return out.stdout.strip()


def git_commit() -> str:
    try:
        return _git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict:
    """What produced a run, logged as ``environment.json``: code version (and whether the working tree
    had uncommitted changes), Python, and the versions of the packages that shape the results."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        dirty = None
    packages: dict[str, str | None] = {}
    for dist in ("mlflow", "optuna", "lightgbm", "xgboost-cpu", "scikit-learn", "pandas", "numpy"):
        try:
            packages[dist] = version(dist)
        except PackageNotFoundError:
            packages[dist] = None
    return {
        "git_commit": git_commit(),
        "git_dirty": dirty,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": packages,
    }


SNAPSHOT_PATH = "data/candles.parquet"


def log_candles_snapshot(candles: pd.DataFrame, info) -> str:
    """Log the exact candles a run uses as ``data/candles.parquet`` plus ``data/snapshot.json`` (source,
    exchange/symbol/timeframe for exchange data, time range, digests) and tag the run with them.

    ``data=runs:/<run_id>/data/candles.parquet`` loads these candles again, identical to the last bit
    (``candles_sha256`` proves it), however the source has changed since (an exchange's cache grows, a
    CSV is overwritten). Returns that URI.
    """
    import tempfile

    from features.data import EXCHANGE_PREFIX, candles_sha256

    run_id = _active_run_id()
    digest = candles_sha256(candles)
    snapshot = {
        **info.to_dict(),
        "candles_sha256": digest,
        "uri": f"runs:/{run_id}/{SNAPSHOT_PATH}",
    }
    if info.source.startswith(EXCHANGE_PREFIX):
        from features.exchange_candles import parse_spec

        spec = parse_spec(info.source)
        snapshot.update(exchange=spec.exchange, symbol=spec.symbol, exchange_timeframe=spec.timeframe)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(SNAPSHOT_PATH).name
        candles.to_parquet(path)
        mlflow.log_artifact(str(path), str(Path(SNAPSHOT_PATH).parent))
    mlflow.log_dict(snapshot, str(Path(SNAPSHOT_PATH).with_name("snapshot.json")))
    mlflow.set_tags(
        {
            "data_candles_sha256": digest,
            "data_snapshot": snapshot["uri"],
            "data_start": snapshot["start"],
            "data_end": snapshot["end"],
            **{f"data_{k}": snapshot[k] for k in ("exchange", "symbol") if k in snapshot},
        }
    )
    return snapshot["uri"]


# ----------------------------------------------------------------- runs left RUNNING by a dead process
#
# A process killed outright (SIGKILL, OOM, power loss) cannot end its MLflow runs: they stay RUNNING for
# good. Every run the pipeline starts therefore records which process runs it (``host``, ``pid`` and
# ``pid_start``, so that a later process given the same pid is not mistaken for it) and a ``heartbeat``
# refreshed while it is open; the next pipeline closes as KILLED the runs whose process is gone.

HEARTBEAT_TAG = "heartbeat"
KILLED_REASON_TAG = "killed_reason"
NOTE_TAG = "mlflow.note.content"
PROJECT_STEPS = (
    "pipeline",
    "tune",
    "ensemble",
    "walkforward",
    "walkforward_window",
)  # the runs this project starts (tag ``step``)
HEARTBEAT_SECONDS = 60.0
# A run of another host is judged by its heartbeat alone, written with that host's clock: generous.
GRACE_SECONDS = 30 * 60.0
# A run without process tags or heartbeat (logged before they existed) is judged by its start time.
LEGACY_GRACE_SECONDS = 24 * 3600.0

_log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# The experiments this process started runs in (the heartbeat looks for its open runs there).
_experiments: set[str] = set()


def _quoted(value: str) -> str:
    return "'" + str(value).replace("'", "\\'") + "'"


def _own_open_runs() -> list:
    """RUNNING runs that carry this process's owner tags, in the experiments it started runs in (what the
    heartbeat refreshes). MLflow has no public list of the runs open in other threads
    (``mlflow.active_run()`` sees the calling thread's only), so the store is asked."""
    me = owner_tags()
    where = " and ".join(
        ["attributes.status = 'RUNNING'"] + [f"tags.{k} = {_quoted(v)}" for k, v in me.items()]
    )
    experiments = set(_experiments)
    try:
        experiments.add(_experiment_in_use())
    except Exception as exc:  # an experiment that cannot be resolved now: the recorded ones still count
        _log.debug("heartbeat: no experiment in use (%s)", exc)
    if not experiments:
        return []
    return MlflowClient().search_runs(sorted(experiments), where, max_results=1000)


class _OwnerContext(RunContextProvider):
    """Adds the owner tags and a first heartbeat to every run ``mlflow.start_run`` creates."""

    def in_context(self) -> bool:
        return True

    def tags(self) -> dict[str, str]:
        try:  # the experiment the run being started goes to, for the heartbeat to find it
            _experiments.add(_experiment_in_use())
        except Exception as exc:  # the run's own creation reports a store or experiment problem
            _log.debug("run context: no experiment in use (%s)", exc)
        return owner_tags() | {HEARTBEAT_TAG: _now()}


class _VersionContext(RunContextProvider):
    """Adds the project's version (:data:`models.version.VERSION_TAG`) to every run ``mlflow.start_run``
    creates."""

    def in_context(self) -> bool:
        return True

    def tags(self) -> dict[str, str]:
        return version_tags()


def _register(provider: type[RunContextProvider]) -> None:
    """Add ``provider`` to MLflow's run-context providers, once per process."""
    from mlflow.tracking.context.registry import (
        _run_context_provider_registry as registry,  # private-api: providers register only by entry point
    )

    # MLflow's only public way to add a run-context provider is an entry point of an installed package;
    # this project is not installed, so the provider goes into MLflow's registry object.
    if not any(isinstance(p, provider) for p in registry):
        registry.register(provider)


def record_version() -> None:
    """From now on every run this process creates with ``mlflow.start_run`` is tagged with the project's
    version; under `mlflow run` the launcher's run (resumed by id, so no provider sees it) is tagged now,
    best effort (the command's own work reports a store that does not answer)."""
    _register(_VersionContext)
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        try:
            with env_vars(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="15"):
                MlflowClient().set_tag(run_id, VERSION_TAG, __version__)
        except Exception as exc:  # noqa: BLE001 - a tag is not worth failing the command for
            _log.debug("could not tag run %s with the version: %s", run_id, exc)


class _Heartbeat:
    """The one heartbeat thread of this process, how often it beats and the event that wakes it."""

    interval: float = HEARTBEAT_SECONDS
    thread: threading.Thread | None = None
    wake: threading.Event = threading.Event()


_heartbeat = _Heartbeat()


def _beat() -> None:
    wake = _heartbeat.wake
    while True:
        wake.wait(_heartbeat.interval)  # woken early when track_liveness changes the interval
        wake.clear()
        try:
            run_ids = [run.info.run_id for run in _own_open_runs()]
        except Exception as exc:  # a store briefly unreachable: the next beat tries again
            _log.debug("heartbeat: cannot list this process's runs: %s", exc)
            continue
        for run_id in run_ids:
            try:
                MlflowClient().set_tag(run_id, HEARTBEAT_TAG, _now())
            except Exception as exc:  # a store briefly unreachable: the next beat tries again
                _log.debug("heartbeat of run %s failed: %s", run_id, exc)


def track_liveness(interval: float = HEARTBEAT_SECONDS) -> None:
    """From now on every run this process starts carries ``host``, ``pid`` and ``pid_start`` tags and
    a ``heartbeat`` tag (UTC time) refreshed every ``interval`` seconds while it is open, so that a later
    pipeline can tell whether its process is alive (:func:`close_orphaned_runs`). Under `mlflow run` the
    launcher created the pipeline run: it is tagged here. Calling it again only changes the interval."""
    from mlflow.entities import RunTag

    _register(_OwnerContext)
    if os.environ.get("MLFLOW_RUN_ID"):
        tags = owner_tags() | {HEARTBEAT_TAG: _now()} | version_tags()  # a run resumed by id: no provider
        run_id = os.environ["MLFLOW_RUN_ID"]
        MlflowClient().log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        _experiments.add(MlflowClient().get_run(run_id).info.experiment_id)
    _heartbeat.interval = interval
    thread = _heartbeat.thread
    if thread is None or not thread.is_alive():
        _heartbeat.wake = threading.Event()
        _heartbeat.thread = threading.Thread(target=_beat, name="mlflow-run-heartbeat", daemon=True)
        _heartbeat.thread.start()
    else:
        _heartbeat.wake.set()  # a running thread may be asleep for the old interval


def _experiment_in_use() -> str:
    if os.environ.get("MLFLOW_RUN_ID"):
        return MlflowClient().get_run(os.environ["MLFLOW_RUN_ID"]).info.experiment_id
    return experiment_in_use()  # set_experiment's choice, else the env's


def _parse_time(text: str | None) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp() if text else None
    except ValueError:
        return None


def why_dead(run, now: float, grace: float, legacy_grace: float) -> str | None:
    """Why ``run`` (RUNNING) has no live process behind it, or None if it may be alive."""
    tags = run.data.tags
    alive = owner_alive(tags)
    if alive is not None:
        return None if alive else f"its process (pid {tags[PID_TAG]} on {tags[HOST_TAG]}) is gone"
    beat = _parse_time(tags.get(HEARTBEAT_TAG))
    if beat is not None:
        if now - beat <= grace:
            return None
        where = f" on {tags[HOST_TAG]}" if HOST_TAG in tags else ""
        return f"no heartbeat from its process{where} since {tags[HEARTBEAT_TAG]} (grace {grace:.0f} s)"
    if now - run.info.start_time / 1000 <= legacy_grace:
        return None
    return f"it has no heartbeat and started more than {legacy_grace:.0f} s ago"


def close_orphaned_runs(
    experiment_id: str | None = None,
    grace: float = GRACE_SECONDS,
    legacy_grace: float = LEGACY_GRACE_SECONDS,
) -> list[str]:
    """Close as KILLED this project's runs (tag ``step`` pipeline, tune or ensemble) in the experiment in
    use that a dead process left RUNNING; returns one line per closed run.

    A run from this machine is dead when its process (``pid`` with its start time ``pid_start``) is
    gone; a run from another host when its ``heartbeat`` is older than ``grace`` seconds; a run without
    either (logged before they existed) when it started more than ``legacy_grace`` seconds ago. A closed
    run gets the tag ``killed_reason`` and a note (``mlflow.note.content``) saying it was found orphaned,
    and ends at its last heartbeat. Runs open in this process are never touched.
    """
    from mlflow.entities import RunTag

    client = MlflowClient()
    experiment_id = experiment_id or _experiment_in_use()
    # Runs open in this process carry its owner tags (track_liveness) and are judged alive by them; the
    # launcher's run and this thread's run are skipped even without them.
    active = mlflow.active_run()
    skip = {os.environ.get("MLFLOW_RUN_ID"), active.info.run_id if active else None}
    me = owner_tags()
    now = datetime.now(UTC).timestamp()
    closed, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], "attributes.status = 'RUNNING'", max_results=1000, page_token=token
        )
        for run in page:
            if run.info.run_id in skip or run.data.tags.get("step") not in PROJECT_STEPS:
                continue
            reason = why_dead(run, now, grace, legacy_grace)
            if reason is None:
                continue
            note = (
                f"Found orphaned and closed as KILLED at {_now()} by the pipeline of pid {me[PID_TAG]} on "
                f"{me[HOST_TAG]}: the run was left RUNNING, but {reason}."
            )
            old_note = run.data.tags.get(NOTE_TAG)
            tags = {
                KILLED_REASON_TAG: f"orphaned: {reason}",
                NOTE_TAG: f"{old_note}\n\n{note}" if old_note else note,
            }
            beat = _parse_time(run.data.tags.get(HEARTBEAT_TAG))
            end = int(beat * 1000) if beat is not None else None  # last seen alive, else now
            try:
                client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
                client.set_terminated(
                    run.info.run_id, "KILLED", end_time=max(end, run.info.start_time) if end else None
                )
            except MlflowException as exc:  # e.g. no permission on another user's run: not this run's job
                _log.warning("cannot close orphaned run %s: %s", run.info.run_id, exc)
                continue
            name = run.data.tags.get("mlflow.runName", run.info.run_id)
            closed.append(f"{name} ({run.info.run_id}) closed as KILLED: {reason}")
        token = page.token
        if not token:
            return closed


def tuning_notes(pipeline_run_id: str) -> dict[str, str]:
    """Model family -> how its tuning ended, for the tune runs of a pipeline run whose trials fell short
    of ``n_trials`` (the timeout), were cut by the timeout or failed (empty when all went to plan)."""
    client = MlflowClient()
    try:
        experiment_id = client.get_run(pipeline_run_id).info.experiment_id
        runs = client.search_runs(
            [experiment_id], f"tags.mlflow.parentRunId = '{pipeline_run_id}' and tags.step = 'tune'"
        )
    except Exception as exc:  # only a summary line: a store hiccup after the run must not fail it
        _log.warning("cannot read the tune runs of %s: %s", pipeline_run_id, exc)
        return {}
    notes = {}
    for run in sorted(runs, key=lambda r: r.info.start_time):
        m = run.data.metrics
        short = m.get("n_trials_finished", 0) < float(run.data.params.get("n_trials_requested", 0))
        if short or m.get("n_trials_cut_by_timeout") or m.get("n_trials_failed"):
            notes[run.data.tags.get("model_family", run.info.run_name)] = run.data.tags.get("trials", "")
    return notes


# Tags of a run whose gate scored a holdout: which market and bar (a digest), and the holdout's time range.
HOLDOUT_TAGS = ("holdout_data", "holdout_start", "holdout_end")


def _active_run_id() -> str:
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run: call this inside mlflow.start_run()")
    return run.info.run_id


def holdout_looks(source: str, bar: pd.Timedelta, start: pd.Timestamp, end: pd.Timestamp) -> int:
    """Tag the active run as a look at this holdout, and count the looks: this run and every earlier run
    (in any experiment of the tracking store) that scored at least half of the same holdout's time span
    on the same data source and bar size. Each look is one more test of the same rows: the gate divides
    its significance level by this count and the deflated Sharpe ratio counts it as trials."""
    key = hashlib.sha256(f"{source}|{pd.Timedelta(bar).isoformat()}".encode()).hexdigest()[:16]
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    run_id = _active_run_id()
    mlflow.set_tags(dict(zip(HOLDOUT_TAGS, (key, start.isoformat(), end.isoformat()), strict=True)))
    earlier = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.holdout_data = '{key}'", output_format="list"
    )
    span = max(end - start, pd.Timedelta(0))
    looks = 1
    for run in earlier:
        if run.info.run_id == run_id:
            continue
        try:
            s, e = (pd.Timestamp(run.data.tags[t]) for t in HOLDOUT_TAGS[1:])
        except (KeyError, ValueError):
            continue  # a run tagged by hand, without a readable range
        if min(e, end) - max(s, start) >= span / 2:
            looks += 1
    return looks
