"""Shared fixtures: seeded candles, a throwaway MLflow tracking store, and one tiny trained-and-promoted
model shared by the modules that only read it; the ``slow`` and ``xdist_group`` marks given by module and
fixture (``pytest_collection_modifyitems`` below)."""

from __future__ import annotations

import logging
import os
import shutil

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import TinyStore, made_once, make_candles, train_tiny

pytest_plugins = ["tests.servers", "tests.webhook"]

# ----------------------------------------------------------------------------- slow tests, xdist groups
#
# `slow` (`pytest -m "not slow"` is the everyday loop): a test whose set-up and call take more than about
# 2 s on a busy 2-core machine, counting the fixtures it needs. Tests that run the pipeline, a subprocess
# that imports MLflow, or a server carry `@pytest.mark.slow` (or their module's `pytestmark`); tests that
# use one of the fixtures below are marked here, wherever the fixture pays its cost.
SLOW_FIXTURES = {
    "tiny_promoted",  # trains and promotes the shared tiny model (30-60 s, once per run)
    "pg_tracking_store",  # starts a PostgreSQL-backed `mlflow server` (5-15 s, once per worker)
    "tracking_backend",  # registry round trips: 3-6 s a test on SQLite too, a server on PostgreSQL
}
# Module-scoped fixtures that train with the pipeline (their names are generic): module -> fixtures. Each
# of these modules is also one xdist group, so that the fixture is made on one worker only.
SLOW_MODULE_FIXTURES = {
    "test_logged_model_metrics.py": {"raced"},
    "test_model_bar.py": {"trained"},
    "test_monitor.py": {"trained"},
    "test_monitor_actions.py": {"models"},
    "test_walkforward.py": {"replay"},
}
# Modules that also keep their tests on one worker for a costly module-scoped fixture (a server, a model
# fitted or logged, features computed at many cuts), whether or not their tests are slow.
ONE_WORKER_MODULES = {
    "test_bot_inputs.py",
    "test_clean_failures.py",
    "test_context.py",
    "test_serving.py",
    "test_ui.py",
}
# Timing-sensitive modules: they assert on wall-clock time, hold locks or beat heartbeats, or kill
# processes (locks, heartbeats, orphans, fail-fast, distributed workers, storage failures, timeouts).
# Under pytest-xdist they all run on one worker, one after another (group "timing"), so that two of them
# never compete for the cores; the other worker still runs the rest. TIMING_TESTS: single tests elsewhere.
TIMING_MODULES = {
    "test_distributed.py",
    "test_fail_fast.py",
    "test_lifecycle.py",
    "test_orphans.py",
    "test_promotion_safety.py",
    "test_retrain.py",
    "test_storage_failures.py",
    "test_tracking_server.py",
    "test_tune.py",
    "test_tune_timeout.py",
}
TIMING_TESTS = {"tests/test_exchange.py::test_requests_are_throttled_at_the_rate_limit"}  # arrival times


def xdist_group(nodeid: str) -> str | None:
    """The pytest-xdist group of a test (``None``: any worker, test by test)."""
    module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    if module in TIMING_MODULES or nodeid in TIMING_TESTS:
        return "timing"
    if module in SLOW_MODULE_FIXTURES or module in ONE_WORKER_MODULES:
        return module.removesuffix(".py")
    return None


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        slow_fixtures = SLOW_FIXTURES | SLOW_MODULE_FIXTURES.get(item.path.name, set())
        if slow_fixtures.intersection(item.fixturenames) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
        if group := xdist_group(item.nodeid):
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadgroup`` that also works with pytest 9.2: pytest-xdist 3.8 sends a test's group to the
    scheduler as a ``@group`` suffix of its node id, which it sets through ``item._nodeid``, an attribute
    pytest 9.2 no longer reads (node ids live in ``item._id``), so every test arrives ungrouped. This
    scheduler groups node ids by :func:`xdist_group` (the same tables as the marks above) and still
    honours a ``@group`` suffix should one arrive."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class Scheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.rfind("@") > nodeid.rfind("]"):
                return super()._split_scope(nodeid)
            return xdist_group(nodeid) or nodeid

    return Scheduling(config, log)


@pytest.fixture(scope="session", autouse=True)
def _session_cwd(tmp_path_factory: pytest.TempPathFactory):
    """Each test process works in a directory of its own, never in the repository: whatever lands in ./
    outside a test's own directory (``store`` and the other fixtures chdir to theirs) stays out of the
    work tree and apart from other pytest-xdist workers. What does: models.tracking's heartbeat thread,
    started by any pipeline run in-process, goes on asking the current tracking store every 60 s, which
    after the test is MLflow's default ``./mlflow.db`` (created on first use)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        yield


# The experiment variables as the test session found them.
_SESSION_EXPERIMENT = {v: os.environ.get(v) for v in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}


@pytest.fixture(autouse=True)
def _restore_experiment(monkeypatch):
    """mlflow.set_experiment() (in a test, a module-scoped fixture or an entry point called in-process)
    writes MLFLOW_EXPERIMENT_ID into os.environ and remembers the experiment in a module global; a later
    test on another store would inherit an experiment id that does not exist there. Every test starts
    from the session's own values."""
    for var, value in _SESSION_EXPERIMENT.items():
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)
    mlflow.tracking.fluent._active_experiment_id = None  # MLflow 3.17's module global
    yield


@pytest.fixture(autouse=True)
def _restore_logging():
    """An entry point's main() called in-process configures logging (models.cli.configure_logging):
    undo it after the test, so the next one sees logging as a fresh process would. That includes the
    project's child loggers: e.g. train.walkforward's main() sets ``train.tune`` to WARNING, which hid
    test_progress's trial lines whenever a walk-forward test had run before it in the same process (as
    pytest-xdist may order them)."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    levels = {name: logging.getLogger(name).level for name in _logger_names()}
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        if type(handler).__module__ == "models.cli":  # only ours: pytest's capture handlers stay
            root.removeHandler(handler)
    for name in _logger_names():
        logging.getLogger(name).setLevel(levels.get(name, logging.NOTSET))


def _logger_names() -> list[str]:
    """The root logger, MLflow's, and every logger of the project's packages (children included)."""
    ours = ("train", "features", "models", "evaluation", "__main__")
    known = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in ours]
    return ["", "mlflow", *ours, *known]


@pytest.fixture
def candles() -> pd.DataFrame:
    """600 seeded 30-minute BTC-like bars from 2024-01-01 UTC (fresh copy per test)."""
    return make_candles(600, seed=7)


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory):
    """An MLflow SQLite store with its tables, made once: creating them (MLflow's migrations) costs
    seconds, for every test that needs a store."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(request, tmp_path, monkeypatch, _empty_store):
    """A throwaway tracking store (experiment "tests") and working directory: the Optuna storage and
    artifacts land under tmp_path. The store starts as a copy of an empty one with MLflow's tables,
    except for tests marked ``no_store_file`` (they check that nothing creates the file)."""
    if request.node.get_closest_marker("no_store_file") is None:
        shutil.copy(_empty_store, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # restored after the test if set meanwhile
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
    mlflow.set_tracking_uri(uri)
    yield tmp_path
    mlflow.set_tracking_uri(None)


# ------------------------------------------------------------------------- one tiny promoted model, shared


@pytest.fixture(scope="session")
def tiny_promoted(tmp_path_factory: pytest.TempPathFactory) -> TinyStore:
    """One tiny model (LightGBM, 2 trials, 3 folds: ``tiny_config(..., horizon=3)``) trained on 3,000
    planted-signal candles (``make_flow_signal_candles(3000, seed=11)``, where the gate passes) and
    promoted to ``production``, in a store of its own (experiment ``crypto-signals``, model
    ``tiny-model``). Trained once per test run and shared, across pytest-xdist workers too, by the modules
    that only read it (test_bot_inputs, test_serving, test_tidy, test_ui; each checks that the gate passed
    and the model was promoted). It does not set the tracking URI: use ``tests.helpers.use_store``.

    Read only: a test that would change it (log a run, register or promote a version) must train its own
    or copy ``dir`` first (artifact locations in the copy still point at this one's ``mlruns``)."""
    return made_once(tmp_path_factory, "tiny-promoted", train_tiny)
