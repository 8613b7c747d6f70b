"""The source folders use only public MLflow and Optuna APIs, so that an upgrade breaks loudly in a test
rather than silently in a run.

A scan (:func:`private_uses`, on the syntax tree) finds, in every module of ``features``, ``train``,
``models`` and ``evaluation``: an import of a private module of mlflow or optuna (a path component starting
with ``_``) or of a private name from one; an attribute chain rooted in an mlflow/optuna module or name whose
attribute starts with ``_`` (``mlflow.tracking.fluent._x``, ``fluent._x``, ``MlflowClient()._x``); and a
method of a class derived from an mlflow/optuna class that overrides a private member of it. A use that has
no public alternative carries ``# private-api: <why>`` on one of its lines and has a guard test below that
fails when MLflow or Optuna changes what it relies on.
"""

from __future__ import annotations

import ast
import importlib
import os
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = ("features", "train", "models", "evaluation")
LIBRARIES = ("mlflow", "optuna")
MARKER = "# private-api:"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _allowed(lines: list[str], first: int, last: int) -> bool:
    """A ``# private-api: <reason>`` comment (with a reason of a few words) on lines first..last."""
    for line in lines[first - 1 : last]:
        _, marker, reason = line.partition(MARKER)
        if marker and len(reason.split()) >= 3:
            return True
    return False


def private_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) for each use of a private mlflow/optuna module, name, attribute or overridden member
    in ``source`` that carries no ``# private-api: <reason>`` comment."""
    tree = ast.parse(source)
    lines = source.splitlines()
    found: list[tuple[int, int, str]] = []  # (first line, last line, what)
    rooted: dict[str, str] = {}  # local name -> the library object it stands for ("mlflow.tracking.fluent")

    def library(module: str | None) -> bool:
        return bool(module) and module.split(".")[0] in LIBRARIES

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if library(alias.name):
                    if any(_private(part) for part in alias.name.split(".")):
                        found.append((node.lineno, node.end_lineno, f"import {alias.name}"))
                    rooted[alias.asname or alias.name.split(".")[0]] = (
                        alias.asname and alias.name or (alias.name.split(".")[0])
                    )
        elif isinstance(node, ast.ImportFrom) and library(node.module) and node.level == 0:
            if any(_private(part) for part in node.module.split(".")):
                found.append((node.lineno, node.end_lineno, f"from {node.module} import ..."))
            for alias in node.names:
                if _private(alias.name):
                    found.append((node.lineno, node.end_lineno, f"from {node.module} import {alias.name}"))
                rooted[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def root(expr: ast.expr) -> str | None:
        while True:
            if isinstance(expr, ast.Attribute | ast.Subscript):
                expr = expr.value
            elif isinstance(expr, ast.Call):
                expr = expr.func
            elif isinstance(expr, ast.Name):
                return rooted.get(expr.id)
            else:
                return None

    def dotted(expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Name):
            return rooted.get(expr.id)
        if isinstance(expr, ast.Attribute):
            head = dotted(expr.value)
            return f"{head}.{expr.attr}" if head else None
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and root(node.value):
            found.append((node.lineno, node.end_lineno, f"{ast.unparse(node)}"))
        elif isinstance(node, ast.ClassDef):
            bases = [_resolve(dotted(base)) for base in node.bases]
            bases = [b for b in bases if b is not None]
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and _private(item.name):
                    if any(hasattr(base, item.name) for base in bases):
                        first = min([d.lineno for d in item.decorator_list] + [item.lineno])
                        found.append(
                            (first, item.lineno, f"{node.name}.{item.name} overrides a private member")
                        )
    return [(first, what) for first, last, what in sorted(set(found)) if not _allowed(lines, first, last)]


def _resolve(path: str | None):
    """The library object ``path`` ("optuna.storages.RDBStorage") names, or None."""
    if not path:
        return None
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError:
            return None
        return obj
    return None


def _source_files() -> list[Path]:
    return sorted(p for folder in SOURCE_FOLDERS for p in (REPO / folder).rglob("*.py"))


# ------------------------------------------------------------------------------------- the scanner itself
@pytest.mark.parametrize(
    "snippet",
    [
        "from optuna.storages._rdb import models",
        "import optuna.storages._rdb.storage",
        "from mlflow.tracking.fluent import _get_experiment_id",
        "from mlflow.tracking import fluent\nfluent._active_run_stack.get()",
        "import mlflow\nmlflow.tracking.fluent._active_experiment_id = None",
        "import mlflow.tracking.fluent as f\nf._get_experiment_id()",
        "from mlflow.tracking import MlflowClient\nMlflowClient()._tracking_client",
        "import optuna\n"
        "class S(optuna.storages.RDBStorage):\n"
        "    def _get_stale_trial_ids(self, study_id):\n"
        "        return []",
        "from mlflow.tracking.fluent import _get_experiment_id  # private-api:",  # a marker without a reason
    ],
)
def test_the_scan_finds_private_uses(snippet):
    assert private_uses(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "import mlflow\nmlflow.active_run()\nmlflow.__version__",
        "from optuna.storages import RDBStorage, RetryFailedTrialCallback",
        "import optuna\n"
        "class S(optuna.storages.RDBStorage):\n"
        "    def record_heartbeat(self, trial_id):\n"
        "        super().record_heartbeat(trial_id)\n"
        "    def _own_helper(self):\n"  # not a member of RDBStorage: our own
        "        return self._mine",
        "import pandas as pd\npd.Series._values",  # another library's business
        "from mlflow.tracking.fluent import _get_experiment_id  # private-api: no public getter exists here",
    ],
)
def test_the_scan_passes_public_uses_and_allowed_ones(snippet):
    assert private_uses(snippet) == []


# --------------------------------------------------------------------------------------- the source tree
def test_source_folders_use_no_private_mlflow_or_optuna_api():
    files = _source_files()
    assert len(files) > 30  # the folders were found
    problems = [
        f"{path.relative_to(REPO)}:{line}: {what}"
        for path in files
        for line, what in private_uses(path.read_text())
    ]
    assert problems == [], (
        "private MLflow/Optuna API used; use a public one, or add '# private-api: <why>' and a guard test "
        "in tests/test_public_apis.py:\n" + "\n".join(problems)
    )


# ------------------------------------------------------- guards: what the allowed uses rely on, by version
def test_guard_run_context_provider_registry(store):
    """models.tracking.track_liveness adds its provider to MLflow's run-context registry (MLflow's public
    route is an entry point, which needs an installed package): the object must still exist, take a
    provider class, and its providers' tags must still reach every run ``mlflow.start_run`` creates."""
    from mlflow.tracking.context import registry as context_registry

    from models import tracking

    registry = getattr(context_registry, "_run_context_provider_registry", None)
    assert registry is not None, "mlflow.tracking.context.registry._run_context_provider_registry is gone"
    assert callable(getattr(registry, "register", None)) and iter(registry) is not None
    tracking.track_liveness()
    assert any(isinstance(p, tracking.runs._OwnerContext) for p in registry)
    with mlflow.start_run() as run:
        tags = MlflowClient().get_run(run.info.run_id).data.tags
    assert {k: tags.get(k) for k in ("host", "pid", "pid_start")} == tracking.owner_tags(), (
        "run-context providers in MLflow's registry no longer tag new runs"
    )


def test_guard_dataset_source_contract():
    """models.tracking.CandleSource implements the underscore-named abstract methods MLflow documents for
    a custom DatasetSource; they must still be the abstract ones."""
    from mlflow.data.dataset_source import DatasetSource

    from models.tracking import CandleSource

    for name in ("_get_source_type", "_can_resolve", "_resolve", "load", "to_dict", "from_dict"):
        assert getattr(getattr(DatasetSource, name, None), "__isabstractmethod__", False), (
            f"DatasetSource.{name} is no longer an abstract method of MLflow's custom-source contract"
        )
        assert not getattr(getattr(CandleSource, name), "__isabstractmethod__", False), name
    assert CandleSource._get_source_type() == "candles"
    assert CandleSource._can_resolve("runs:/abc/data/candles.parquet")


def test_guard_served_error_message_keeps_the_reason():
    """models.pyfunc.InvalidCandles keeps its reason when MLflow's scoring server rewrites an
    MlflowException's public ``message`` to "Failed to predict data '<input>'..." (no public way to stop
    it). Fails if the server stops assigning ``message`` that way (then the setter is moot) or if the
    reason no longer comes first."""
    import json

    import pandas as pd
    from mlflow.pyfunc import scoring_server

    from models.pyfunc import InvalidCandles

    class Refusing:
        metadata = None

        def predict(self, data, params=None):
            raise InvalidCandles("Missing column(s): volume. The candles need it.")

    body = json.dumps({"dataframe_split": pd.DataFrame({"open": [1.0]}).to_dict(orient="split")})
    with pytest.raises(InvalidCandles) as caught:
        scoring_server.invocations(body, "application/json", Refusing(), None)
    assert caught.value.message == "Missing column(s): volume. The candles need it."
    plain = mlflow.exceptions.MlflowException("reason")

    class RefusingPlainly(Refusing):
        def predict(self, data, params=None):
            raise plain

    with pytest.raises(mlflow.exceptions.MlflowException):
        scoring_server.invocations(body, "application/json", RefusingPlainly(), None)
    assert plain.message.startswith("Failed to predict data"), (
        "MLflow's scoring server no longer rewrites exc.message: InvalidCandles.message's setter is moot"
    )


def test_experiment_in_use_is_where_start_run_logs(store, monkeypatch):
    """models.tracking.experiment_in_use (replacing fluent._get_experiment_id) reads MLflow's public
    state: MLFLOW_EXPERIMENT_NAME, and mlflow.set_experiment's choice, which MLflow writes to
    MLFLOW_EXPERIMENT_ID. Fails if set_experiment stops doing so."""
    from models.tracking import experiment_in_use

    def started_in() -> str:
        with mlflow.start_run() as run:
            return run.info.experiment_id

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "by-name")
    assert experiment_in_use() == started_in() == mlflow.get_experiment_by_name("by-name").experiment_id
    chosen = mlflow.set_experiment("chosen").experiment_id
    assert os.environ.get("MLFLOW_EXPERIMENT_ID") == chosen, "set_experiment no longer sets the env var"
    assert experiment_in_use() == started_in() == chosen
