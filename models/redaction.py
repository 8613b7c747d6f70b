"""One rule for credentials: what this project prints, logs, tags, logs as a parameter, writes into an
artifact or sends to a webhook passes through :func:`redact` first.

What it hides:

* the password of any URI with user info (``postgresql://user:PASSWORD@host/db`` ->
  ``postgresql://user:***@host/db``), the way SQLAlchemy shows its own URLs, also when the password
  holds characters a URI should have percent-encoded;
* secret-looking query parameters (``?password=``, ``token=``, ``api_key=``, ``secret=``, ``sig=`` ...),
  ``key=value`` pairs whose key names a password, secret, token or key (a libpq connection string's
  ``password=``, ``PGPASSWORD=...`` on a shell line) and ``Bearer`` tokens;
* the configured webhook URL, its path and its token (``<webhook>``, see :mod:`models.notify`);
* the literal values of the credentials MLflow, PostgreSQL and cloud stores read from the environment
  (``MLFLOW_TRACKING_PASSWORD``, ``MLFLOW_TRACKING_TOKEN``, ``PGPASSWORD``, ``AWS_SECRET_ACCESS_KEY`` ...),
  wherever they appear.

The commands' ``main`` functions call :func:`install`, which puts the rule on every log record and on the
process's stdout and stderr, so a library's message or a traceback cannot carry a credential to a cron
log either. It imports only the standard library.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import urllib.parse
from typing import Any, TextIO

__all__ = ["MASK", "install", "redact", "redact_obj"]

MASK = "***"
WEBHOOK_ENV = "CRYPTO_SIGNALS_WEBHOOK_URL"
# Environment variables whose values are credentials (their values are masked wherever they appear).
SECRET_ENV = (
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "PGPASSWORD",
    "MYSQL_PWD",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "DATABRICKS_TOKEN",
)
# scheme://user:password@ : the user has no ":", "/" or "@"; the password runs to the last "@" of the
# white-space-delimited word (an unencoded "@", "/", "#" or quote in a password is masked too: better a
# host masked with it than part of a password shown). "host:8080/path@x" is a port, not a password.
_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@?#'\"]*)"
    r":(?!\d{1,5}(?:[/?#'\"\s),;\]]|$))"
    r"(?P<pw>\S+)@"
)
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pwd|pass|token|access_token|api[_-]?key|apikey|secret|"
    r"client_secret|sig|signature|auth)=)(?P<value>[^&;#\s'\"]+)",
    re.IGNORECASE,
)
# key=value outside a URI query: a libpq connection string ("host=h password=secret"), a shell line
# ("PGPASSWORD=secret"), a repr: any key naming a password, secret, token or key.
_SECRET_ASSIGNMENT = re.compile(
    r"(?P<key>(?<![\w.\-])[\w.\-]*(?:passw(?:or)?d|secret|token|api[_-]?key|access[_-]?key)"
    r"(?:[_.\-][\w.\-]*)?\s*=\s*)(?P<value>'[^']*'|\"[^\"]*\"|[^\s&#'\",;)\]}]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<key>\bBearer\s+)(?P<value>[A-Za-z0-9._~+/\-]{8,}=*)")


def _webhook_secrets() -> list[str]:
    url = os.environ.get(WEBHOOK_ENV, "").strip()
    if not url:
        return []
    found = {url, url.rstrip("/")}
    parts = urllib.parse.urlsplit(url)
    tail = parts.path + (f"?{parts.query}" if parts.query else "")
    for piece in (tail, parts.path, parts.path.rstrip("/"), parts.query):
        if len(piece) > 1:  # never replace a bare "/" everywhere
            found.add(piece)
    last_segment = parts.path.rstrip("/").rsplit("/", 1)[-1]
    if len(last_segment) >= 8:  # the token is the last path segment for Discord and Slack
        found.add(last_segment)
    if parts.netloc.count("@"):  # credentials in the authority part
        found.add(parts.netloc.rsplit("@", 1)[0])
    return sorted(found, key=len, reverse=True)


def _env_secrets() -> list[str]:
    values = {os.environ.get(name, "") for name in SECRET_ENV}
    # Short values ("x", "1") would mask ordinary text; a credential that short is no protection anyway.
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every credential this module knows of masked (see the module docstring)."""
    if not isinstance(text, str):
        raise TypeError(f"redact() needs a str, got {type(text).__name__}")
    if not text:
        return text
    for secret in _webhook_secrets():
        text = text.replace(secret, "<webhook>")
    for secret in _env_secrets():
        text = text.replace(secret, MASK)
    for quoted in {urllib.parse.quote(s, safe="") for s in _env_secrets()} - set(_env_secrets()):
        text = text.replace(quoted, MASK)
    if "://" in text:
        text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@" if m["pw"] != MASK else m[0], text)
    if "=" in text:
        text = _SECRET_PARAM.sub(lambda m: f"{m['key']}{MASK}", text)
        text = _SECRET_ASSIGNMENT.sub(lambda m: m[0] if m["value"] == MASK else f"{m['key']}{MASK}", text)
    if "Bearer" in text:
        text = _BEARER.sub(lambda m: f"{m['key']}{MASK}", text)
    return text


def redact_obj(value: Any) -> Any:
    """``value`` with :func:`redact` applied to every string in it (dicts, lists, tuples; keys too)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_obj(k): redact_obj(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(redact_obj(v) for v in value))
    if isinstance(value, list | tuple | set | frozenset):
        return type(value)(redact_obj(v) for v in value)
    return value


class RedactingFilter(logging.Filter):
    """Masks credentials in a log record's final message (arguments merged in, exception text too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as it would
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class RedactingStream(io.TextIOBase):
    """A text stream that masks credentials in everything written to it, then passes it on."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(redact(text) if isinstance(text, str) else text)
        return len(text)

    def flush(self) -> None:
        if not getattr(self.stream, "closed", False):
            self.stream.flush()

    def close(self) -> None:
        """Never closes the wrapped stream (``sys.stderr`` belongs to the process, or to a test's capture)."""
        self.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.stream, "errors", None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


_FILTER = RedactingFilter()
_installed = False


def install() -> None:
    """Mask credentials in every log record (through the record factory, so every logger and handler,
    present and future, MLflow's and Optuna's included) and in everything written to stdout and stderr.
    Idempotent."""
    global _installed
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout)
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)
    if _installed:
        return
    old_factory = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = old_factory(*args, **kwargs)
        _FILTER.filter(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
