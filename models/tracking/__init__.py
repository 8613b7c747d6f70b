"""MLflow tracking helpers shared by the command-line steps (``models.lifecycle``, ``evaluation.evaluate``)
and the training pipeline; :mod:`models.tracking.runs` adds what the training runs log.

It imports only the standard library, pandas and mlflow at import time (``features.data`` only inside
:class:`CandleSource`, when MLflow asks it to load or resolve a source), never ``train``, so the CLIs in
``models`` and ``evaluation`` do not reach up into the training code.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import mlflow
import pandas as pd
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.pandas_dataset import from_pandas
from mlflow.tracking import MlflowClient

from models import redaction
from models.cli import one_line, parse_bool, parse_int  # noqa: F401 - re-exported (stdlib-only home)

__all__ = [
    "DEFAULT_EXPERIMENT",
    "CandleSource",
    "TrackingUnavailable",
    "check_reachable",
    "error_message",
    "experiment_in_use",
    "log_dataset",
    "log_metrics",
    "log_params_once",
    "new_sqlite_file",
    "one_line",
    "parse_bool",
    "parse_int",
    "use_experiment",
    "warn_logged_credentials",
]

DEFAULT_EXPERIMENT = "crypto-signals"


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached; the message names the store, without its password."""

    def __init__(self, *args: object):
        super().__init__(*(redaction.redact(a) if isinstance(a, str) else a for a in args))


@contextmanager
def env_vars(**values: str):
    """Set environment variables for the duration of a with-block, then restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def new_sqlite_file(uri: str) -> Path | None:
    """The file of a ``sqlite:///<file>`` store URI when it does not exist yet (MLflow and Optuna create it
    on first use), else None (another kind of URI, ``sqlite://`` URI filenames with options, in memory)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or "?" in uri:
        return None
    raw = uri[len(prefix) :]
    if raw in ("", ":memory:") or raw.startswith("file:"):
        return None
    path = Path(raw).expanduser()
    return None if path.exists() else path


def _is_database_error(exc: BaseException) -> bool:
    text = str(exc)
    return "[SQL: " in text or "sqlalche.me/" in text


def error_message(exc: BaseException) -> str:
    """What a command prints after ``error: `` for a failed MLflow call: one line, and when the store's
    database refused (read-only, corrupt, locked, full), the store's URI and what to check."""
    text = one_line(exc)
    if _is_database_error(exc):
        text = (
            f"the MLflow tracking store {mlflow.get_tracking_uri()!r} refused the request: {text}. "
            "Check that the store is a writable, uncorrupted MLflow database (file and directory "
            "permissions, disk space), or fix MLFLOW_TRACKING_URI."
        )
    return redaction.redact(text)


class _DropStoreTracebacks(logging.Filter):
    """MLflow logs the full traceback (with the SQL statement and its parameters) of every database
    error before raising it; the commands report the same error in one line (:func:`error_message`).
    MLflow's SQL store also logs each of its ten attempts to open a database that does not answer as a
    multi-line warning (with SQLAlchemy's link); each becomes one line here."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        if msg.startswith("SQLAlchemy database error"):
            return False
        if msg.startswith("SQLAlchemy engine could not be created"):
            args = record.args if isinstance(record.args, tuple) else ()
            error = next((a for a in args if isinstance(a, BaseException)), None)
            delay = next((a for a in args if isinstance(a, float)), None)
            record.msg = "MLflow could not open the store's database (%s); it retries%s"
            record.args = (
                one_line(error) if error is not None else "no answer",
                f" in {delay:.1f} s" if delay is not None else "",
            )
            record.exc_info = record.exc_text = None
        return True


_STORE_LOGGER = logging.getLogger("mlflow.store.db.utils")


def _quiet_store_tracebacks() -> None:
    if not any(isinstance(f, _DropStoreTracebacks) for f in _STORE_LOGGER.filters):
        _STORE_LOGGER.addFilter(_DropStoreTracebacks())


# Database servers a store URI may name: the backend's name, its default port and what people call it.
_SERVERS = {"postgresql": (5432, "PostgreSQL"), "mysql": (3306, "MySQL"), "mariadb": (3306, "MariaDB")}
# The package that provides each SQLAlchemy driver (what `pip install` takes).
_DRIVER_PACKAGES = {
    "psycopg": "psycopg",
    "psycopg2": "psycopg2-binary",
    "pg8000": "pg8000",
    "mysqldb": "mysqlclient",
    "pymysql": "pymysql",
    "mysqlconnector": "mysql-connector-python",
    "mariadbconnector": "mariadb",
}
PROBE_TIMEOUT = 3  # seconds for the TCP connection and the login of the store check


def _probe_database(what: str, variable: str, store: str) -> None:
    """For a PostgreSQL or MySQL store URI, in a few seconds instead of MLflow's ~100 s of retries: the
    SQLAlchemy driver it names is installed, the server accepts a TCP connection, and it lets the user
    in. Raises :class:`TrackingUnavailable` (one line, the URI without its password) otherwise. Other
    URIs (HTTP servers, SQLite files, anything SQLAlchemy cannot parse) are left to MLflow."""
    import sqlalchemy
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    try:
        url = make_url(store)
    except Exception:  # an http(s):// or file store, or not a URL: MLflow reports it
        return
    backend = url.get_backend_name()
    if backend not in _SERVERS:
        return
    port, server = _SERVERS[backend]
    shown = redaction.redact(store)
    try:
        dialect = url.get_dialect()  # the dialect class only: the driver is imported below
    except Exception as exc:  # an unknown driver name (postgresql+nosuch://)
        raise TrackingUnavailable(
            f"cannot use the MLflow {what} at {shown!r}: {type(exc).__name__}: "
            f"{redaction.redact(one_line(exc))}. Fix {variable}."
        ) from exc
    driver = dialect.driver
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        package = _DRIVER_PACKAGES.get(driver, driver)
        alternative = (
            f"use {backend}+psycopg2://... (installed by requirements.txt) or "
            if backend == "postgresql" and driver != "psycopg2"
            else ""
        )
        raise TrackingUnavailable(
            f"cannot use the MLflow {what} at {shown!r}: the {server} driver {driver!r} (for "
            f"{url.drivername}://) is not installed; {alternative}pip install {package}, or fix {variable}."
        ) from exc
    host: str | None = url.host or "localhost"
    if url.host is None and ("host" in url.query or "unix_socket" in url.query):
        host = None  # a Unix socket: no TCP to probe; the login below still has its timeout
    if host is not None:
        try:
            with socket.create_connection((host, url.port or port), timeout=PROBE_TIMEOUT):
                pass
        except OSError as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise TrackingUnavailable(
                f"cannot reach the MLflow {what} at {shown!r}: no {server} server answers at "
                f"{host}:{url.port or port} ({reason} after at most {PROBE_TIMEOUT} s). Start the database "
                f"server or fix {variable}"
                + (" (unset it to use the local sqlite:///mlflow.db)." if what == "tracking store" else ".")
            ) from exc
    # The server answers: one login, so a wrong password or database name also fails here in seconds.
    timeout_drivers = ("psycopg2", "psycopg", "pymysql", "mysqldb")
    connect_args = {"connect_timeout": PROBE_TIMEOUT} if driver in timeout_drivers else {}
    engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect():
            pass
    except Exception as exc:
        raise TrackingUnavailable(
            f"cannot reach the MLflow {what} at {shown!r}: the {server} server refused the connection: "
            f"{redaction.redact(one_line(exc))}. Check the user, password and database name in {variable}."
        ) from exc
    finally:
        engine.dispose()


def check_reachable() -> str:
    """Fail fast, before any work, if the tracking store (or a separate model registry) cannot be reached.

    One attempt with a short timeout instead of MLflow's default 7 retries with exponential backoff
    (about 4 minutes against a dead server). A ``sqlite:///`` file that does not exist yet is not created
    here (a command that then fails on its input leaves nothing behind), only its directory is checked.
    From here on, MLflow's own tracebacks of database errors are not printed: the commands report them in
    one line with :func:`error_message`.
    """
    _quiet_store_tracebacks()
    uri = mlflow.get_tracking_uri()
    registry = mlflow.get_registry_uri()
    stores = [("tracking store", "MLFLOW_TRACKING_URI", uri)]
    if registry and registry != uri:
        stores.append(("model registry", "MLFLOW_REGISTRY_URI", registry))
    for what, variable, store in stores:
        new = new_sqlite_file(store)
        if new is not None:
            if not new.parent.is_dir():
                raise TrackingUnavailable(
                    f"cannot reach the MLflow {what} at {redaction.redact(store)!r}: the directory "
                    f"{str(new.parent)!r} of the database file does not exist. Create it or fix {variable}."
                )
            continue
        # MLflow tries a database server ten times with growing pauses (~100 s) before it gives up.
        _probe_database(what, variable, store)
        try:
            with env_vars(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="15"):
                if what == "tracking store":
                    MlflowClient().search_experiments(max_results=1)
                else:
                    MlflowClient(registry_uri=store).search_registered_models(max_results=1)
        except Exception as exc:  # any failure here means the same thing to the user
            raise TrackingUnavailable(
                f"cannot reach the MLflow {what} at {redaction.redact(store)!r}: {type(exc).__name__}: "
                f"{redaction.redact(one_line(exc))}. Start the server or fix {variable}"
                + (" (unset it to use the local sqlite:///mlflow.db)." if what == "tracking store" else ".")
            ) from exc
    return uri


DEFAULT_EXPERIMENT_HINT = (
    "note: `mlflow run` put this run in MLflow's 'Default' experiment; pass --experiment-name "
    f"{DEFAULT_EXPERIMENT} to keep the runs together (the direct `python -m` commands use it by default)"
)


def use_experiment() -> None:
    """The experiment every command logs to: MLFLOW_EXPERIMENT_NAME, else MLFLOW_EXPERIMENT_ID, else
    :data:`DEFAULT_EXPERIMENT` (never MLflow's 'Default'). Under `mlflow run` the CLI has already chosen the
    experiment and opened the run; when that is 'Default' (no --experiment-name), print a one-line hint."""
    if os.environ.get("MLFLOW_RUN_ID"):
        if os.environ.get("MLFLOW_EXPERIMENT_ID") == "0":  # MLflow's Default experiment
            print(DEFAULT_EXPERIMENT_HINT, file=sys.stderr)
        return
    name, experiment_id = os.environ.get("MLFLOW_EXPERIMENT_NAME"), os.environ.get("MLFLOW_EXPERIMENT_ID")
    if experiment_id and not name:
        mlflow.set_experiment(experiment_id=experiment_id)
    else:
        mlflow.set_experiment(name or DEFAULT_EXPERIMENT)


def experiment_in_use() -> str:
    """The experiment ``mlflow.start_run()`` would log to, from public MLflow state only: the one
    ``mlflow.set_experiment`` chose (MLflow writes its id to MLFLOW_EXPERIMENT_ID) or MLFLOW_EXPERIMENT_ID,
    else MLFLOW_EXPERIMENT_NAME's (created if missing, as MLflow does), else MLflow's Default ("0")."""
    experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
    if experiment_id:
        return experiment_id
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if name:
        experiment = mlflow.get_experiment_by_name(name)
        return experiment.experiment_id if experiment else mlflow.create_experiment(name)
    return "0"


class CandleSource(DatasetSource):
    """Where candles came from when MLflow has no source type for it: ``exchange:<ex>:<symbol>:<tf>``
    (fetched through ccxt) or a logged snapshot (``runs:/<run_id>/data/candles.parquet``, or its
    ``mlflow-artifacts:/`` form): the non-path sources ``features.data.load_candles`` accepts."""

    def __init__(self, uri: str):
        self.uri = uri

    @staticmethod
    def _get_source_type() -> str:  # private-api: abstract in MLflow's DatasetSource
        return "candles"

    def load(self) -> pd.DataFrame:
        from features.data import load_candles

        return load_candles(self.uri)[0]

    @staticmethod
    def _can_resolve(raw_source) -> bool:  # private-api: abstract in MLflow's DatasetSource
        from features.data import URI_PREFIXES

        return isinstance(raw_source, str) and raw_source.startswith(URI_PREFIXES)

    @classmethod
    def _resolve(cls, raw_source) -> CandleSource:  # private-api: abstract in MLflow's DatasetSource
        return cls(raw_source)

    def to_dict(self) -> dict:
        return {"uri": self.uri}

    @classmethod
    def from_dict(cls, source_dict: dict) -> CandleSource:
        return cls(source_dict["uri"])


def log_dataset(frame: pd.DataFrame, name: str, source: str, context: str) -> str:
    """Log a dataset input (schema, profile, digest; not the rows) and return its digest."""
    with warnings.catch_warnings():
        # MLflow guesses a source type from the string and warns that a local path fits two of its kinds.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        where: str | DatasetSource = CandleSource(source) if CandleSource._can_resolve(source) else source
        dataset = from_pandas(frame.reset_index(), source=where, name=name)
    mlflow.log_input(dataset, context=context)
    return dataset.digest


def log_metrics(prefix: str, metrics: dict, run_id: str | None = None) -> None:
    """Log the scalar entries of ``metrics`` as ``<prefix><key>``; lists (confusion matrices) are skipped."""
    scalars = {f"{prefix}{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    if run_id is None:
        mlflow.log_metrics(scalars)
    else:
        client = MlflowClient()
        for key, value in scalars.items():
            client.log_metric(run_id, key, value)


def log_params_once(params: dict) -> None:
    """Log the params the active run lacks: under `mlflow run` the launcher has already logged its own
    spelling of each MLproject parameter ("90" for 90.0, "''" for ""), and MLflow refuses to change one.
    Values are logged with credentials masked (:func:`models.redaction.redact`); a credential the launcher
    logged already gets one warning (:func:`warn_logged_credentials`)."""
    run = mlflow.active_run()
    logged = MlflowClient().get_run(run.info.run_id).data.params if run else {}
    if run:
        warn_logged_credentials(run.info.run_id, logged)
    mlflow.log_params({k: redaction.redact_obj(v) for k, v in params.items() if k not in logged})


CREDENTIAL_ADVICE = (
    "Keep passwords out of URIs: PostgreSQL's libpq reads PGPASSWORD or ~/.pgpass (so "
    "postgresql://user@host/db with PGPASSWORD set works), and an MLflow tracking server reads "
    "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD."
)
_warned_runs: set[str] = set()


def warn_logged_credentials(run_id: str, params: Mapping[str, object]) -> list[str]:
    """Warn once per run, in one line on stderr, when parameters already logged to ``run_id`` hold a
    credential (a password in a URI): `mlflow run` logs every ``-P`` value as given before our code runs,
    and MLflow cannot change a logged parameter. Returns the names of those parameters."""
    leaked = sorted(k for k, v in params.items() if isinstance(v, str) and redaction.redact(v) != v)
    if leaked and run_id not in _warned_runs:
        _warned_runs.add(run_id)
        print(
            redaction.redact(
                f"warning: run {run_id} has the parameter(s) {', '.join(leaked)} logged with a credential "
                "in them, by `mlflow run` from its -P values before this code ran (it also printed them in "
                "its '=== Running command' line; MLflow cannot change a logged parameter: delete the run, "
                "then `mlflow gc`, to remove it). " + CREDENTIAL_ADVICE
            ),
            file=sys.stderr,
        )
    return leaked


# ------------------------------------------------------------------ which process holds a run or a lock
# A run or a registry lock records the process that holds it (``host``, ``pid`` and ``pid_start``, so a later
# process given the same pid is not mistaken for it); another process on the same machine can then tell at
# once whether the holder is alive.

HOST_TAG, PID_TAG, PID_START_TAG = "host", "pid", "pid_start"


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _machine() -> str:
    """This boot of this machine and this pid namespace, where a pid names one process ("" if unknown)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    boot = _read("/proc/sys/kernel/random/boot_id")
    return f"{boot}/{namespace}" if boot or namespace else ""


def process_start(pid: int) -> str | None:
    """A token for the live process ``pid``, different for a later process given the same pid (machine
    boot, pid namespace and start time in clock ticks, from /proc), or None if no such process is alive
    (a zombie is dead). Without /proc (not Linux): "" for a live pid."""
    stat = _read(f"/proc/{pid}/stat")
    if stat:
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
        if fields[0] in ("Z", "X"):
            return None
        return f"{_machine()}/{fields[19]}"  # field 22 of stat: start time
    if os.path.isdir("/proc/self"):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    return ""


def owner_tags() -> dict[str, str]:
    """``host``, ``pid`` and ``pid_start`` of this process (also recorded on Optuna trials)."""
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PID_START_TAG: process_start(pid) or ""}


def owner_alive(owner: Mapping[str, object]) -> bool | None:
    """Whether the process that ``owner`` (:func:`owner_tags`) names is alive: True or False if it ran
    on this machine, None if this machine cannot tell (another host, a reboot or another pid namespace
    since, or no owner recorded)."""
    host, pid, start = owner.get(HOST_TAG), str(owner.get(PID_TAG, "")), str(owner.get(PID_START_TAG) or "")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    if start and start.rsplit("/", 1)[0] != _machine():
        return None
    now = process_start(int(pid))
    if now is None:
        return False
    return not start or now == start  # a different start time: the pid was reused


# ------------------------------------------------------------------------- brief store hiccups, retried
# MLflow's SQL stores check a pooled connection before use (pool_pre_ping), so a connection the database
# dropped between calls is replaced; one dropped during a call, or a SQLite file briefly locked, fails that
# call. Idempotent calls (reads, setting a tag or an alias) are retried after these pauses, in seconds.
STORE_RETRY_DELAYS = (0.5, 1.0, 2.0)
_CONNECTION_WORDS = (
    "connection",
    "terminating",
    "could not connect",
    "server closed",
    "database is locked",
    "timeout",
    "timed out",
)
_store_log = logging.getLogger("models.tracking")


def transient_store_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an error it was raised from) is a lost, refused or timed-out database
    connection, or a locked SQLite file: what a retry a moment later may get past. A read-only or
    corrupt store, a missing table or a refused request is not."""
    import sqlalchemy.exc

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
            return True
        if isinstance(exc, sqlalchemy.exc.DisconnectionError):
            return True
        if isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            text = str(exc).lower()
            return any(word in text for word in _CONNECTION_WORDS)
        exc = exc.__cause__ or exc.__context__
    return False


def retry_store(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, retried after each pause of :data:`STORE_RETRY_DELAYS` while it fails with
    a :func:`transient_store_error`; then the last error is raised (the commands print it in one line
    with :func:`error_message`). Only for calls that may safely run twice."""
    for delay in (*STORE_RETRY_DELAYS, None):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if delay is None or not transient_store_error(exc):
                raise
            _store_log.warning(
                "the MLflow store %s did not answer (%s); retrying in %.1f s",
                redaction.redact(mlflow.get_tracking_uri()),
                one_line(exc)[:200],
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


class RetryingClient:
    """An :class:`~mlflow.tracking.MlflowClient` whose calls are retried on brief store hiccups
    (:func:`retry_store`). Use it for idempotent calls only: reads, tags, aliases, deletes."""

    def __init__(self, client: MlflowClient):
        self.client = client

    def __getattr__(self, name: str):
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: retry_store(attr, *args, **kwargs)


def retrying(client: MlflowClient | None = None) -> MlflowClient:
    """``client`` (a new one if None) with its calls retried on brief store hiccups (:class:`RetryingClient`),
    typed as the client it stands in for."""
    return cast(MlflowClient, RetryingClient(client or MlflowClient()))


# What the training runs log (code version, environment, candle snapshot, liveness, looks), re-exported so
# that `from models import tracking` is the one import; last, because it uses the helpers above.
from models.tracking.runs import (  # noqa: E402, F401
    REPO_ROOT,
    SNAPSHOT_PATH,
    close_orphaned_runs,
    environment,
    git_commit,
    holdout_looks,
    log_candles_snapshot,
    record_version,
    track_liveness,
    tuning_notes,
)
