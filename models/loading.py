"""Load a served model, or fail in one line that says which model and what is wrong with its files.

Every entry point that loads a model (``predict``, ``evaluate``, ``monitor``, the pipeline's champion)
and every move of ``production`` (:mod:`models.registry`) goes through :func:`load_model`, so a version
whose ``python_model.pkl`` was deleted, whose artifact folder is gone or whose pickle is corrupt gives
the same one-line :class:`ModelUnavailable`, never a traceback and never ``No such artifact: ''``.

For a registry URI (``models:/<name>/<version>`` or ``models:/<name>@<alias>``) the version is looked up
first, so the message says which it is (an alias names the version it points to) and tells a version
that does not exist apart from one whose files are missing (``... its model files are missing ...``)
or unreadable (``... its model files are corrupt ...``). A registry that cannot be asked (a dead store)
is not the model's fault: that :class:`~mlflow.exceptions.MlflowException` is raised as it is, for the
caller's usual one-line store error.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from urllib.parse import urlparse

import mlflow

from models.redaction import redact
from models.tracking import env_vars

_log = logging.getLogger(__name__)

_REGISTRY_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/@]+))/?")
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")
# How MLflow words "the files are not there" (a deleted folder, a deleted MLmodel, a deleted file).
_MISSING_WORDS = ("No such artifact", "No such file", 'Could not find an "MLmodel"', "does not exist")


class ModelUnavailable(RuntimeError):
    """A model that cannot be loaded; the message names it, says what is wrong and what to do."""


class ProductionWithdrawn(ModelUnavailable):
    """``production`` was withdrawn on purpose (``monitor --on-degraded withdraw``): there is no model to
    trade with, and a bot should stay flat until a version is promoted. ``move`` is the recorded
    withdrawal (:class:`models.registry.AliasMove`)."""

    def __init__(self, message: str, move=None):
        super().__init__(message)
        self.move = move


def _withdrawn(name: str, alias: str) -> ProductionWithdrawn | None:
    """The error for an alias that is missing because production was withdrawn, else None."""
    from models import registry  # registry imports this module: import it only when needed

    if alias != registry.PRODUCTION:
        return None
    try:
        move = registry.withdrawal(name)
    except Exception:  # noqa: BLE001 - only for the message: the caller's "does not exist" still holds
        return None
    if move is None:
        return None
    return ProductionWithdrawn(
        f"{registry.describe_withdrawal(name, move)}. No production model: stay flat until a version is "
        f"promoted (python -m models.lifecycle promote --model-name {name} --version N --reason ...).",
        move,
    )


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return redact(re.sub(r"\s*\(Background on this error at: [^)]*\)", "", text))[:300]


def describe(model_uri: str) -> str:
    """``models:/name/3`` -> ``version 3 of 'name'``; ``models:/name@alias`` -> ``'name'@alias``."""
    match = _REGISTRY_URI.fullmatch(model_uri.strip())
    if match and match["version"]:
        return f"version {match['version']} of '{match['name']}'"
    if match:
        return f"'{match['name']}'@{match['alias']}"
    return repr(redact(model_uri))


def _registered(model_uri: str):
    """``(what, version)`` for a registry URI: its description and its ModelVersion; ``(describe(uri),
    None)`` for any other URI. A version or alias that is not in the registry raises ModelUnavailable."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    what = describe(model_uri)
    match = _REGISTRY_URI.fullmatch(model_uri.strip())
    if not match:
        return what, None
    client = MlflowClient()
    try:
        if match["version"]:
            return what, client.get_model_version(match["name"], match["version"])
        version = client.get_model_version_by_alias(match["name"], match["alias"])
    except MlflowException as exc:
        if str(getattr(exc, "error_code", "")) in _NOT_FOUND or "not found" in str(exc).lower():
            withdrawn = None if match["version"] else _withdrawn(match["name"], match["alias"])
            if withdrawn is not None:
                raise withdrawn from None
            raise ModelUnavailable(f"{what} does not exist in the registry: {_first_line(exc)}") from exc
        raise  # the registry itself failed: the caller reports the store, not the model
    return f"version {version.version} of '{match['name']}' (@{match['alias']})", version


def _location(version) -> str:
    """Where the model files of a registered version live (the logged model's artifact folder, or the
    version's source for versions registered from a run's artifacts); "" when it cannot be told."""
    source = str(version.source or "")
    model_id = getattr(version, "model_id", None) or (
        source.removeprefix("models:/") if re.fullmatch(r"models:/m-[0-9a-f]+", source) else None
    )
    if not model_id:
        return "" if source.startswith("models:/") else source
    try:
        from mlflow.tracking import MlflowClient

        return str(MlflowClient().get_logged_model(model_id).artifact_location or "")
    except Exception:  # only for the message
        return ""


def _local_path(location: str) -> Path | None:
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else location)
    return None


def load_model(model_uri: str):
    """``mlflow.pyfunc.load_model(model_uri)``, or :class:`ModelUnavailable` in one line when the model
    is missing, its files are gone or cannot be read, or it fails to load."""
    from mlflow.exceptions import MlflowException

    what, version = _registered(model_uri)
    try:
        # No download progress bars around the one line a failure prints (a cron log shows both).
        with warnings.catch_warnings(), env_vars(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):
            warnings.simplefilter("ignore")  # requirement mismatch warnings: the load result is what counts
            return mlflow.pyfunc.load_model(model_uri)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ModelUnavailable(_missing(what, version, exc)) from exc
    except MlflowException as exc:
        if any(word in str(exc) for word in _MISSING_WORDS):
            raise ModelUnavailable(_missing(what, version, exc)) from exc
        code = str(getattr(exc, "error_code", ""))
        if version is None and code in _NOT_FOUND:
            raise ModelUnavailable(f"{what} does not exist: {_first_line(exc)}") from exc
        raise ModelUnavailable(f"{what} cannot be loaded: {_first_line(exc)}") from exc
    except Exception as exc:  # an unpickling error, a missing module, a corrupt file: all mean "unusable"
        raise ModelUnavailable(
            f"{what} cannot be loaded ({type(exc).__name__}: {_first_line(exc)}); its model files are "
            "corrupt or were written by incompatible code. Re-register it from its run, or use another "
            "version."
        ) from exc


def candles_for(model, data: str, timeframe: str = "", days: int = 0):
    """The candles at ``data`` (``features.data.load_candles``) at ``model``'s bar: finer candles, with no
    ``timeframe`` asked for, are aggregated to it and a line on stdout says so. Returns (candles, info)."""
    from features.data import load_candles, match_bar
    from models.pyfunc import model_bar

    candles, info = load_candles(data, timeframe or None, days or None)
    candles, info, resampled = match_bar(candles, info, model_bar(model), timeframe)
    if resampled:
        print(resampled)
    return candles, info


def _missing(what: str, version, exc: BaseException) -> str:
    location = _location(version) if version is not None else ""
    folder = _local_path(location) if location else None
    if folder is not None and not folder.is_dir():
        detail = f"its artifact folder {redact(location)} is gone"
    elif isinstance(exc, FileNotFoundError) and exc.filename:
        detail = f"{redact(str(exc.filename))} does not exist"
    else:
        detail = _first_line(exc)
        if not detail or detail.rstrip(": '\"").endswith("No such artifact"):
            detail = f"nothing at {redact(location)}" if location else "no model files"
    return (
        f"{what} cannot be loaded: its model files are missing ({detail}). The artifact store lost them; "
        "re-register the model from its run, or use another version."
    )


def verify_loads(name: str, version: str) -> None:
    """Raise :class:`ModelUnavailable` unless version ``version`` of ``name`` loads as a pyfunc (what a
    bot does with ``models:/name@production``): the proof every move of ``production`` needs first."""
    load_model(f"models:/{name}/{version}")
    _log.debug("version %s of %s loads", version, name)
