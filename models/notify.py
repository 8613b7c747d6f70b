"""Optional chat notifications (Discord or Slack incoming webhook) for gate results and alias moves.

The webhook URL comes only from the environment variable ``CRYPTO_SIGNALS_WEBHOOK_URL``; unset or empty
means notifications are off. A notification is sent after the registry action it announces, so a failure
to deliver never undoes or blocks that action: ``notify`` warns (log + stderr) and returns False.

Webhook URLs embed their secret token, so the URL never appears in anything this module logs, prints,
raises or returns; failures name only the host ("webhook (host discord.com)"). ``redact`` does the same
for text that callers log themselves.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from models.redaction import WEBHOOK_ENV
from models.redaction import redact as _redact

USERNAME = "crypto-signals"
USER_AGENT = "crypto-signals-notify/1.0 (+python-urllib)"
MAX_CHARS = 2000  # Discord's limit for ``content``; Slack's ``text`` allows more.
BACKOFF_S = (0.5, 1.0)  # sleeps between the at most 3 attempts
KNOWN_EVENTS = frozenset(
    {"gate_passed", "gate_failed", "promotion", "rollback", "withdrawal", "monitor_degraded"}
    | {"monitor_drifted"}
    # train.retrain, the weekly job: one summary per run (the pipeline announces gate and promotion)
    | {"retrain_done", "retrain_skipped", "retrain_busy", "retrain_failed"}
)  # used by callers

FieldValue = str | int | float | None

logger = logging.getLogger("models.notify")
_sleep = time.sleep  # tests replace this to skip the backoff


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Report 3xx as an HTTP error: urllib would otherwise re-send a POST as a body-less GET."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def _configured_url() -> str:
    return os.environ.get(WEBHOOK_ENV, "").strip()


def redact(text: str) -> str:
    """``text`` with the configured webhook URL, its path and its token replaced by ``<webhook>``, and
    every other credential masked (:func:`models.redaction.redact`)."""
    return _redact(text)


def _check_args(event: object, message: object, fields: object, timeout: object) -> None:
    """Raise TypeError/ValueError for programming errors (before looking at the environment)."""
    if not isinstance(event, str):
        raise TypeError(f"event must be a str, got {type(event).__name__}")
    if not event.strip() or "\n" in event or "\r" in event:
        raise ValueError(f"event must be a non-empty single-line str, got {event!r}")
    if not isinstance(message, str):
        raise TypeError(f"message must be a str, got {type(message).__name__}")
    if fields is not None:
        if not isinstance(fields, dict):
            raise TypeError(f"fields must be a dict or None, got {type(fields).__name__}")
        for key, value in fields.items():
            if not isinstance(key, str):
                raise TypeError(f"field names must be str, got {type(key).__name__}")
            if value is not None and not isinstance(value, str | int | float):
                raise TypeError(f"field {key!r} must be str, int, float or None, got {type(value).__name__}")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number, got {type(timeout).__name__}")
    if not timeout > 0 or math.isinf(timeout):
        raise ValueError(f"timeout must be a positive finite number of seconds, got {timeout!r}")


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def _show(value: FieldValue) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return _one_line(str(value))


def _truncate(text: str, limit: int = MAX_CHARS) -> str:
    """At most ``limit`` UTF-16 code units (how Discord counts), ending in an ellipsis when cut."""

    def units(ch: str) -> int:
        return 2 if ord(ch) > 0xFFFF else 1

    if sum(units(ch) for ch in text) <= limit:
        return text
    kept, used = [], 0
    for ch in text:
        if used + units(ch) > limit - 1:
            break
        kept.append(ch)
        used += units(ch)
    return "".join(kept) + "…"


def format_text(event: str, message: str, fields: dict[str, FieldValue] | None = None) -> str:
    """The one-line chat text: ``[event] message | k=v | k=v``, at most 2000 characters."""
    text = f"[{_one_line(event)}] {_one_line(message)}"
    for key, value in (fields or {}).items():
        text += f" | {_one_line(key)}={_show(value)}"
    return _truncate(redact(text))


def build_payload(event: str, message: str, fields: dict[str, FieldValue] | None = None) -> dict[str, Any]:
    """One JSON body that both webhooks accept: Discord reads ``content``, Slack reads ``text``."""
    text = format_text(event, message, fields)
    json_fields: dict[str, Any] = {}
    for key, value in (fields or {}).items():
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)  # NaN/inf are not valid JSON
        elif isinstance(value, str):
            value = redact(value)
        json_fields[redact(key)] = value
    return {"content": text, "text": text, "username": USERNAME, "event": event, "fields": json_fields}


def _warn(text: str) -> None:
    text = redact(text)
    logger.warning("%s", text)
    try:
        print(f"WARNING: {text}", file=sys.stderr)
    except (OSError, ValueError):  # closed or broken stderr: the log record above still exists
        pass


def _describe_exception(exc: BaseException) -> str:
    """Exception class (and OS error text, which carries no URL); never the exception's full message."""
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    name = type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return f"{name} ({exc.strerror})"
    return name


def _attempt(request: urllib.request.Request, timeout: float) -> tuple[bool, bool, str]:
    """One POST: (delivered, worth retrying, failure description)."""
    try:
        with _opener.open(request, timeout=timeout) as response:
            response.read(1024)
            return True, False, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        status = exc.code
        try:
            body = _one_line(exc.read(200).decode("utf-8", "replace")).strip()
        except Exception:  # noqa: BLE001 - the status alone is enough
            body = ""
        finally:
            exc.close()
        detail = f"HTTP {status} {exc.reason}" + (f": {body[:120]}" if body else "")
        return False, status == 429 or status >= 500, detail
    except urllib.error.URLError as exc:
        retry = not isinstance(exc.reason, ssl.SSLCertVerificationError)
        return False, retry, _describe_exception(exc)
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, malformed responses
        return False, True, _describe_exception(exc)
    except Exception as exc:  # noqa: BLE001 - e.g. InvalidURL for a bad port: a config error, never raised
        return False, False, _describe_exception(exc)


def notify(
    event: str,
    message: str,
    fields: dict[str, FieldValue] | None = None,
    *,
    timeout: float = 5.0,
) -> bool:
    """POST one chat message to the webhook in ``$CRYPTO_SIGNALS_WEBHOOK_URL``; True when delivered.

    Off (False, no request) when the variable is unset or empty. At most 3 attempts, 0.5 s and 1 s apart,
    retrying connection errors, 5xx and 429 only. On failure: a WARNING on the ``models.notify`` logger
    and one line on stderr, then False; network and HTTP errors never raise. TypeError/ValueError are
    raised for bad arguments, whether or not notifications are on.
    """
    _check_args(event, message, fields, timeout)
    url = _configured_url()
    if not url:
        return False
    what = f"notification {event!r}"
    try:
        parts = urllib.parse.urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises ValueError for a non-numeric port
    except ValueError:
        _warn(f"{what} not sent: {WEBHOOK_ENV} is not a valid URL")
        return False
    if parts.scheme.lower() not in ("http", "https") or not host:
        _warn(f"{what} not sent: {WEBHOOK_ENV} must be an http(s) URL with a host")
        return False
    target = f"webhook (host {host})"

    body = json.dumps(build_payload(event, message, fields), ensure_ascii=False).encode("utf-8")
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT}
    attempts = len(BACKOFF_S) + 1
    detail = ""
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        delivered, retry, detail = _attempt(request, timeout)
        if delivered:
            logger.debug("%s sent to %s (%s, attempt %d)", what, target, detail, attempt)
            return True
        if not retry or attempt == attempts:
            break
        logger.debug("%s to %s failed (%s), retrying", what, target, redact(detail))
        _sleep(BACKOFF_S[attempt - 1])
    _warn(f"{what} not sent to {target} after {attempt} attempt(s): {detail}")
    return False
