"""A local webhook receiver for notification tests: pytest fixture ``hook`` (registered in conftest)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from models import notify as nt

SECRET = "SECRETTOKEN"
PATH = f"/api/webhooks/123/{SECRET}"


@dataclass
class Hook:
    """A local webhook: answers with ``statuses`` in turn (the last one repeats) and records requests."""

    port: int
    statuses: list[int] = field(default_factory=lambda: [204])
    requests: list[dict] = field(default_factory=list)

    def url(self, path: str = PATH) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hook]:
    """Server on 127.0.0.1:0 in a thread, env var pointing at it, proxies off, backoff sleeps recorded."""
    state = Hook(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length", 0))
            state.requests.append(
                {"path": self.path, "headers": dict(self.headers), "body": self.rfile.read(length)}
            )
            status = state.statuses[min(len(state.requests), len(state.statuses)) - 1]
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", "/elsewhere")
            # error bodies echo the path, as some servers do: the warning must still not show it
            reply = b"" if status == 204 else json.dumps({"message": "nope", "at": self.path}).encode()
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep stderr clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(nt.WEBHOOK_ENV, state.url())
    state.sleeps = []  # type: ignore[attr-defined]
    monkeypatch.setattr(nt, "_sleep", state.sleeps.append)  # type: ignore[attr-defined]
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)
