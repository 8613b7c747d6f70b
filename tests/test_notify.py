"""Webhook notifications against a local HTTP server: payload, switch-off, retries, failures, secrecy."""

from __future__ import annotations

import json
import logging
import socket
import time

import pytest

from models import notify as nt
from tests.webhook import PATH, SECRET, Hook


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _assert_loud_and_redacted(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> str:
    err = capsys.readouterr().err
    records = [r for r in caplog.records if r.name == "models.notify" and r.levelno == logging.WARNING]
    assert "WARNING" in err and len(err.strip().splitlines()) == 1
    assert records
    logged = " ".join(r.getMessage() for r in caplog.records)
    for text in (err, logged):
        assert SECRET not in text and "/api/webhooks" not in text
    return err


def test_payload_has_content_and_text_with_event_message_and_fields(hook: Hook) -> None:
    fields = {"version": 7, "macro_f1": 0.41234, "run": "abc123", "previous": None}
    assert nt.notify("promotion", "model promoted\nto production", fields) is True
    assert len(hook.requests) == 1
    req = hook.requests[0]
    assert req["path"] == PATH
    assert req["headers"]["Content-Type"].startswith("application/json")
    assert req["headers"]["User-Agent"] == nt.USER_AGENT
    payload = json.loads(req["body"])
    expected = (
        "[promotion] model promoted to production | version=7 | macro_f1=0.4123 | run=abc123 | previous=-"
    )
    assert payload["content"] == payload["text"] == expected
    assert payload["username"] == "crypto-signals" and payload["event"] == "promotion"
    assert payload["fields"] == fields
    assert hook.sleeps == []  # type: ignore[attr-defined]


def test_unset_or_empty_env_means_off(
    hook: Hook, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(nt.WEBHOOK_ENV)
    assert nt.notify("gate_passed", "ok") is False
    monkeypatch.setenv(nt.WEBHOOK_ENV, "  ")
    assert nt.notify("gate_passed", "ok") is False
    assert hook.requests == []
    assert capsys.readouterr().err == ""  # off is silent, not a failure


def test_two_500s_then_204_is_delivered_on_third_attempt(hook: Hook) -> None:
    hook.statuses = [500, 500, 204]
    assert nt.notify("gate_failed", "holdout F1 below floor") is True
    assert len(hook.requests) == 3
    assert hook.sleeps == [0.5, 1.0]  # type: ignore[attr-defined]


def test_429_is_retried(hook: Hook) -> None:
    hook.statuses = [429, 200]
    assert nt.notify("rollback", "back to v3") is True
    assert len(hook.requests) == 2


def test_always_500_warns_without_leaking_the_url(
    hook: Hook, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    hook.statuses = [500]
    caplog.set_level(logging.DEBUG, logger="models.notify")
    assert nt.notify("promotion", "v9") is False
    assert len(hook.requests) == 3
    err = _assert_loud_and_redacted(capsys, caplog)
    assert "HTTP 500" in err and "webhook (host 127.0.0.1)" in err and "'promotion'" in err


def test_400_is_not_retried(
    hook: Hook, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    hook.statuses = [400]
    assert nt.notify("promotion", "v9") is False
    assert len(hook.requests) == 1
    assert hook.sleeps == []  # type: ignore[attr-defined]
    assert "HTTP 400" in _assert_loud_and_redacted(capsys, caplog)


def test_redirect_is_a_failure_not_followed(hook: Hook, capsys: pytest.CaptureFixture[str]) -> None:
    hook.statuses = [302, 204]
    assert nt.notify("promotion", "v9") is False
    assert len(hook.requests) == 1
    assert "HTTP 302" in capsys.readouterr().err


def test_connection_refused_fails_quickly(
    hook: Hook,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(nt.WEBHOOK_ENV, f"http://127.0.0.1:{_closed_port()}{PATH}")
    start = time.monotonic()
    assert nt.notify("promotion", "v9", timeout=1.0) is False
    assert time.monotonic() - start < 2.0
    assert hook.sleeps == [0.5, 1.0]  # type: ignore[attr-defined] - connection errors are retried
    assert "ConnectionRefusedError" in _assert_loud_and_redacted(capsys, caplog)


@pytest.mark.parametrize(
    "url",
    [f"ftp://127.0.0.1{PATH}", f"file://{PATH}", f"discord.com{PATH}", f"http://127.0.0.1:notaport{PATH}"],
)
def test_non_http_or_malformed_url_is_refused(
    hook: Hook,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    url: str,
) -> None:
    monkeypatch.setenv(nt.WEBHOOK_ENV, url)
    assert nt.notify("promotion", "v9") is False
    assert hook.requests == []
    assert nt.WEBHOOK_ENV in _assert_loud_and_redacted(capsys, caplog)


def test_redact(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"https://discord.com{PATH}"
    monkeypatch.setenv(nt.WEBHOOK_ENV, url)
    text = f"POST {url} failed; path {PATH}; token {SECRET}"
    assert nt.redact(text) == "POST <webhook> failed; path <webhook>; token <webhook>"
    monkeypatch.setenv(nt.WEBHOOK_ENV, "https://hooks.example/")
    assert nt.redact("a/b https://hooks.example/") == "a/b <webhook>"  # a bare "/" is not a secret
    monkeypatch.delenv(nt.WEBHOOK_ENV)
    assert nt.redact(text) == text
    with pytest.raises(TypeError):
        nt.redact(None)  # type: ignore[arg-type]


def test_long_message_is_truncated_to_2000_chars(hook: Hook) -> None:
    assert nt.notify("gate_failed", "x" * 5000, {"k": "v"}) is True
    payload = json.loads(hook.requests[0]["body"])
    assert len(payload["content"]) == nt.MAX_CHARS == 2000
    assert payload["content"] == payload["text"]
    assert payload["content"].startswith("[gate_failed] xxx") and payload["content"].endswith("…")


def test_secret_in_message_is_not_sent_or_echoed(hook: Hook) -> None:
    assert nt.notify("promotion", f"failed to reach {hook.url()}") is True
    assert SECRET.encode() not in hook.requests[0]["body"]


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((1, "m"), {}, TypeError),
        (("", "m"), {}, ValueError),
        (("promotion", b"m"), {}, TypeError),
        (("promotion", "m", {"k": [1]}), {}, TypeError),
        (("promotion", "m"), {"timeout": 0}, ValueError),
    ],
)
def test_programming_errors_raise_even_when_off(
    monkeypatch: pytest.MonkeyPatch, args: tuple, kwargs: dict, error: type[Exception]
) -> None:
    monkeypatch.delenv(nt.WEBHOOK_ENV, raising=False)
    with pytest.raises(error):
        nt.notify(*args, **kwargs)
