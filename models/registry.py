"""Model Registry operations: register a candidate, read and move the ``production`` alias.

MLflow keeps no history of where an alias pointed; every move made here leaves tags on the version that
received it (when, who, why, which run, which version it replaced) and on the registered model
(the previous production version), so a person or a rollback can retrace it.
"""

from __future__ import annotations

import getpass
from datetime import UTC, datetime

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

PRODUCTION = "production"


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE") and (
        "not found" in str(exc).lower() or "does not exist" in str(exc).lower()
    )


def get_production(name: str, client: MlflowClient | None = None) -> ModelVersion | None:
    """The version aliased ``production``, or None when the model or the alias does not exist yet."""
    client = client or MlflowClient()
    try:
        return client.get_model_version_by_alias(name, PRODUCTION)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise


def register_candidate(model_uri: str, name: str, tags: dict[str, str]) -> ModelVersion:
    """A new version of ``name`` from ``model_uri``, created with its tags in one call."""
    return mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})


def promote(
    name: str, version: str, reason: str, run_id: str | None = None, client: MlflowClient | None = None
) -> str | None:
    """Point ``production`` at ``version`` and record the move; returns the version it replaced."""
    client = client or MlflowClient()
    previous = get_production(name, client)
    previous_version = str(previous.version) if previous else None
    now = datetime.now(UTC).isoformat(timespec="seconds")
    audit = {
        "promoted_at": now,
        "promoted_by": getpass.getuser(),
        "promotion_reason": reason,
        "promoted_by_run": run_id or "",
        "replaced_version": previous_version or "",
    }
    for key, value in audit.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, PRODUCTION, version)
    client.set_registered_model_tag(name, "production_previous_version", previous_version or "")
    return previous_version
