"""The project's one version number (``pyproject.toml``'s ``[project] version`` equals it, tested).

Semantic versioning from 0.19.0, the release of issue 19: the minor number grows with each issue that
changes what a user runs or gets (options, outputs, the served model), the patch number with fixes.
``--version`` on every entry point prints it; every MLflow run an entry point starts is tagged with it
(:data:`VERSION_TAG`) and every served model carries it in its metadata, under the same name.
"""

from __future__ import annotations

__version__ = "0.19.0"

# The run tag and the served model's metadata key that record which version of this code made them.
VERSION_TAG = "crypto_signals.version"


def version_tags() -> dict[str, str]:
    """The tags that record this version on a run (or a registered model version)."""
    return {VERSION_TAG: __version__}
