"""Real servers for tests: throwaway PostgreSQL databases and MLflow tracking servers (``tests.servers``).

Plain helpers (usable from any test or script):

* :func:`free_port`: a TCP port on 127.0.0.1 that was free a moment ago.
* :func:`wait_http`: poll a URL until it answers HTTP 200, with a deadline; on failure the error carries
  the tail of the server's log, and it stops early if the server process died.
* :func:`wait_log`: the same for a line in a log file (e.g. uvicorn's "running on <url>").
* :func:`stop_process`: terminate a process group started with ``start_new_session=True``, then kill it.
* :func:`postgres_available`: ``None`` when PostgreSQL on 127.0.0.1:5432 answers, else the reason.
* :func:`throwaway_database`: context manager, a fresh uniquely named database, dropped afterwards.
* :func:`pg_connect`: context manager, an autocommit psycopg2 connection to one database.
* :func:`mlflow_server`: context manager, ``mlflow server`` on a free port until the block ends.

Pytest fixtures (opt in with ``pytest_plugins = ["tests.servers"]`` in ``tests/conftest.py``, or
``from tests.servers import pg_tracking_store, pg_tracking_server, tracking_backend`` in one module):

* ``pg_tracking_store`` (session scope): one PostgreSQL-backed MLflow server for the test run (per
  pytest-xdist worker), as a :class:`TrackingServer` (URI, database URL, artifact directory, log file).
  Skips when PostgreSQL is unreachable. Every test module that uses it shares it: tests must use distinct
  experiment and registered-model names, and look only at what they made (runs they started, models
  they named), never at counts over the whole server.
* ``pg_tracking_server`` (function scope): that server's URI, set as the tracking URI for one test.
* ``tracking_backend`` (function scope, parametrized ``sqlite`` / ``postgres-server``): a tracking URI,
  set for one test, so a lifecycle test runs against a local SQLite store and a PostgreSQL-backed server.

The two function fixtures chdir to ``tmp_path`` (stray ``./mlruns``, ``./optuna.db`` land there), set
``MLFLOW_TRACKING_URI`` and ``mlflow.set_tracking_uri``, and clear ``MLFLOW_RUN_ID`` /
``MLFLOW_EXPERIMENT_ID`` (they would name a run or experiment of another store); all is restored after.

MLflow 3.17 server notes (why :func:`mlflow_server` starts it the way it does):

* SQLAlchemy 2.1 maps a bare ``postgresql://`` URL to the psycopg 3 driver, which is not installed; the
  URL must name psycopg2: ``postgresql+psycopg2://`` (what :func:`throwaway_database` yields).
* By default the server also starts a job runner with seven huey consumer processes (for GenAI jobs) and
  leaves a temporary directory in /dev/shm; ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` turns that off.
* ``--artifacts-destination DIR`` (with the default ``--serve-artifacts``) makes new experiments store
  artifacts as ``mlflow-artifacts:/...``, uploaded and downloaded through the server, so clients need
  nothing but the URI (artifact logging, model registry, ``mlflow.pyfunc.load_model("models:/...")``).
* The security middleware (allowed hosts, CORS) admits ``127.0.0.1`` / ``localhost`` by default: no flag
  is needed for a client on this machine.
* ``--workers 1`` keeps it to one uvicorn process (default 4). Startup takes ~5 s on 2 idle cores, 15 s
  when they are busy.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
PG_ADMIN_DB = "postgres"

LOCALHOST = "127.0.0.1"

# Server environment: no job runner (seven extra processes on a 2-core machine), unbuffered logs.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONUNBUFFERED": "1"}


class ServerStartError(RuntimeError):
    """A server did not answer in time, or its process exited; the message ends with its log tail."""


# --------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that the OS reported free (another process may still take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


def port_is_open(port: int, host: str = LOCALHOST, timeout_s: float = 1.0) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def log_tail(path: Path | str | None, n_chars: int = 4000) -> str:
    """The last ``n_chars`` characters of a log file ("" if there is none)."""
    if path is None:
        return ""
    try:
        return Path(path).read_text(errors="replace")[-n_chars:]
    except OSError:
        return ""


def wait_http(
    url: str,
    timeout_s: float = 60,
    interval_s: float = 0.5,
    *,
    proc: subprocess.Popen | None = None,
    log_path: Path | str | None = None,
) -> None:
    """Poll ``url`` (GET, proxies bypassed) until it answers HTTP 200.

    Use ``/health`` for ``mlflow server`` and ``/ping`` for ``mlflow models serve``. Raises
    :class:`ServerStartError` when ``timeout_s`` passes or, if ``proc`` is given, as soon as that process
    has exited; the message names the last error and ends with the tail of ``log_path``.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    last = "no attempt"
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServerStartError(
                f"process {proc.pid} exited with code {proc.returncode} before {url} answered "
                f"(last: {last}). Log tail:\n{log_tail(log_path)}"
            )
        remaining = deadline - time.monotonic()
        try:
            with opener.open(url, timeout=max(0.5, min(5.0, remaining))) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:  # refused, reset, timed out (URLError is an OSError)
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() + interval_s > deadline:
            raise ServerStartError(
                f"{url} did not answer HTTP 200 within {timeout_s:g} s (last: {last}). "
                f"Log tail:\n{log_tail(log_path)}"
            )
        time.sleep(interval_s)


def wait_log(
    log_path: Path | str,
    text: str,
    timeout_s: float = 60,
    interval_s: float = 0.25,
    *,
    proc: subprocess.Popen | None = None,
    offset: int = 0,
) -> None:
    """Wait until ``log_path`` contains ``text`` (case-insensitive) after byte ``offset``; same failures
    as :func:`wait_http`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with open(log_path, "rb") as log:
                log.seek(offset)
                if text.lower() in log.read().decode(errors="replace").lower():
                    return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise ServerStartError(
                f"process {proc.pid} exited with code {proc.returncode} before logging {text!r}. "
                f"Log tail:\n{log_tail(log_path)}"
            )
        if time.monotonic() + interval_s > deadline:
            raise ServerStartError(
                f"{log_path} did not show {text!r} within {timeout_s:g} s. Log tail:\n{log_tail(log_path)}"
            )
        time.sleep(interval_s)


def die_with_parent() -> None:
    """``preexec_fn`` for servers: on Linux, SIGTERM the child when the thread that started it ends, so a
    test run killed outright (SIGKILL, OOM) does not leave a server behind. Start servers from the main
    thread. A no-op where ``prctl`` is unavailable."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop_process(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session=True``), wait up to
    ``grace_s`` for it to go, then SIGKILL whatever is left of that group. Safe to call twice."""
    pgid = proc.pid  # a new session's leader: its group id is its pid, and only its descendants share it
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 2.0
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        pass


# -------------------------------------------------------------------------------------------- PostgreSQL


def pg_url(dbname: str) -> str:
    """SQLAlchemy URL of ``dbname`` on the test server, with the psycopg2 driver named explicitly."""
    return f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{dbname}"


def postgres_available() -> str | None:
    """``None`` if PostgreSQL on 127.0.0.1:5432 lets user ``postgres`` in and create databases; otherwise
    the reason why not, worded as a skip reason."""
    try:
        import psycopg2
    except ImportError:
        return "psycopg2 is not installed (pip install psycopg2-binary, see requirements.txt)"
    try:
        conn = psycopg2.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=PG_ADMIN_DB, connect_timeout=3
        )
    except psycopg2.Error as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (
            f"PostgreSQL is not reachable at {PG_USER}@{PG_HOST}:{PG_PORT}/{PG_ADMIN_DB}: {first_line}. "
            "Start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`."
        )
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user")
            row = cur.fetchone()
        if not (row and row[0]):
            return f"PostgreSQL user {PG_USER!r} may not create databases"
    finally:
        conn.close()
    return None


@contextmanager
def pg_connect(dbname: str = PG_ADMIN_DB):
    """An autocommit psycopg2 connection to ``dbname`` on the test server, closed afterwards."""
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, connect_timeout=5)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def database_name(url: str) -> str:
    """The database name at the end of a SQLAlchemy URL."""
    return url.rsplit("/", 1)[-1].split("?", 1)[0]


@contextmanager
def throwaway_database(prefix: str = "cs_test") -> Iterator[str]:
    """CREATE DATABASE ``<prefix>_[<xdist worker>_]<pid>_<random>``, yield its SQLAlchemy URL, DROP it
    (WITH FORCE) after. The name is unique per process (and says which pytest-xdist worker made it).

    The URL is ``postgresql+psycopg2://postgres@127.0.0.1:5432/<db>``: see the module notes on why the
    driver is spelled out. The drop disconnects any session still open (e.g. a server that hung).
    """
    from psycopg2 import sql

    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1 ... under pytest-xdist
    name = "_".join(filter(None, [prefix, worker, str(os.getpid()), secrets.token_hex(4)]))
    with pg_connect() as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield pg_url(name)
    finally:
        with pg_connect() as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# ---------------------------------------------------------------------------------------- MLflow server


def mlflow_server_command(
    backend_uri: str, artifacts_dir: Path | str, port: int, serve_artifacts: bool = True
) -> list[str]:
    """The ``mlflow server`` command line :func:`mlflow_server` runs (with :data:`SERVER_ENV`).

    ``serve_artifacts``: the server proxies artifacts into ``artifacts_dir`` (new runs log
    ``mlflow-artifacts:/`` URIs); without it, clients wrote local paths under ``artifacts_dir`` themselves
    and the server only reads them there.
    """
    artifacts = str(Path(artifacts_dir).resolve())
    artifact_args = (
        ["--artifacts-destination", artifacts]
        if serve_artifacts
        else ["--default-artifact-root", artifacts, "--no-serve-artifacts"]
    )
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        *artifact_args,
        "--host",
        LOCALHOST,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


@contextmanager
def mlflow_server(
    backend_uri: str,
    artifacts_dir: Path | str,
    *,
    log_path: Path | str | None = None,
    startup_timeout_s: float = 90,
    port_attempts: int = 3,
    serve_artifacts: bool = True,
    extra_env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Run ``mlflow server`` on a free 127.0.0.1 port; yield ``http://127.0.0.1:<port>``; stop it after.

    ``backend_uri`` is any SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg2://...``); the
    registry uses the same store. Artifacts are proxied by the server into ``artifacts_dir``. Output goes
    to ``log_path`` (default: a temporary file, deleted afterwards). Waits for ``/health``; if the port
    was taken meanwhile, retries on another one. On exit (also on errors) the whole process group is
    terminated, then killed after a bounded wait.
    """
    Path(artifacts_dir).mkdir(parents=True, exist_ok=True)
    own_log = log_path is None
    if own_log:
        fd, name = tempfile.mkstemp(prefix="mlflow-server-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    log_path = Path(log_path)
    env = {**os.environ, **SERVER_ENV, **(extra_env or {})}
    proc = None
    try:
        for attempt in range(1, port_attempts + 1):
            port = free_port()
            cmd = mlflow_server_command(backend_uri, artifacts_dir, port, serve_artifacts)
            with open(log_path, "ab") as log:
                log.write(f"\n$ {' '.join(cmd)}\n".encode())
                log.flush()
                offset = log.tell()
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=Path(artifacts_dir).resolve().parent,  # anything it writes to ./ stays beside them
                    start_new_session=True,  # its own process group, so stop_process reaches its children
                    preexec_fn=die_with_parent if sys.platform == "linux" else None,
                )
            try:
                # Our process bound the port (not some other server that took it meanwhile), then /health.
                wait_log(
                    log_path,
                    f"running on http://{LOCALHOST}:{port}",
                    timeout_s=startup_timeout_s,
                    proc=proc,
                    offset=offset,
                )
                wait_http(f"http://{LOCALHOST}:{port}/health", timeout_s=30, proc=proc, log_path=log_path)
                break
            except ServerStartError as exc:
                stop_process(proc)
                if attempt < port_attempts and "address already in use" in str(exc).lower():
                    continue
                raise
        yield f"http://{LOCALHOST}:{port}"
    finally:
        if proc is not None:
            stop_process(proc)
        if own_log:
            log_path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ fixtures


@dataclass(frozen=True)
class TrackingServer:
    """A running MLflow tracking server and where it keeps things."""

    uri: str  # http://127.0.0.1:<port>
    backend_uri: str  # SQLAlchemy URL of its backend (and registry) store
    artifacts_dir: Path  # where the server writes proxied artifacts
    log_path: Path  # the server's stdout and stderr

    @property
    def database(self) -> str:
        """Backend database name (for :func:`pg_connect`)."""
        return database_name(self.backend_uri)


def _use_tracking_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, uri: str) -> Iterator[str]:
    """Point env and the fluent API at ``uri`` for one test, in ``tmp_path``; undone afterwards."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    if any(os.environ.get(v) for v in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")):
        for var in ("NO_PROXY", "no_proxy"):  # requests honours either spelling
            current = os.environ.get(var, "")
            monkeypatch.setenv(var, ",".join(filter(None, [current, LOCALHOST, "localhost"])))
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(None)  # back to whatever MLFLOW_TRACKING_URI says once monkeypatch undoes it


@pytest.fixture(scope="session")
def pg_tracking_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackingServer]:
    """One PostgreSQL-backed MLflow tracking server for the test run (skips without PostgreSQL); under
    pytest-xdist, one per worker (its database name carries the worker's pid, so workers never meet).

    Its startup (5-15 s) is paid once rather than per module. The database and the server process are
    removed at the end of the session, also when tests failed. Tests sharing it (across modules) must use
    distinct experiment and registered-model names. It does not set the tracking URI: request
    ``pg_tracking_server`` (or ``tracking_backend``) for that.
    """
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("pg-tracking")
    with throwaway_database() as backend_uri:
        log_path = base / "mlflow-server.log"
        with mlflow_server(backend_uri, base / "artifacts", log_path=log_path) as uri:
            yield TrackingServer(uri, backend_uri, base / "artifacts", log_path)


@pytest.fixture
def pg_tracking_server(
    pg_tracking_store: TrackingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The session's PostgreSQL-backed server URI, set as the tracking URI for this test (cwd: tmp_path)."""
    yield from _use_tracking_uri(monkeypatch, tmp_path, pg_tracking_store.uri)


@pytest.fixture(params=["sqlite", pytest.param("postgres-server", marks=pytest.mark.slow)])
def tracking_backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A tracking URI set for this test (cwd: tmp_path), once per backend.

    ``sqlite``: a fresh ``sqlite:///<tmp_path>/mlflow.db`` (artifacts under ``tmp_path/mlruns``), a copy
    of conftest's ``_empty_store`` (MLflow's tables made once: seconds saved per test).
    ``postgres-server``: the session's PostgreSQL-backed server (``pg_tracking_store``; skipped without
    PostgreSQL), shared with other tests and modules, so use distinct experiment and model names.
    """
    if request.param == "sqlite":
        shutil.copy(request.getfixturevalue("_empty_store"), tmp_path / "mlflow.db")
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    else:
        uri = request.getfixturevalue("pg_tracking_store").uri
    yield from _use_tracking_uri(monkeypatch, tmp_path, uri)
