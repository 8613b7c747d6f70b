"""A local stand-in for bitbank's public API, for ccxt tests without the internet (``tests.replay``).

:class:`ReplayServer` is a threaded ``http.server`` on 127.0.0.1 (a free port) that serves, in bitbank's
response formats, candles the test generated, so the test knows the truth:

* ``GET /spot/pairs``: the market list (format of the comment in ccxt's ``bitbank.fetch_markets``);
* ``GET /{pair}/candlestick/{type}/{YYYYMMDD}``: one UTC day of candles, prices as strings
  (``{"success":1,"data":{"candlestick":[{"type":"15min","ohlcv":[["o","h","l","c","v",ts_ms],...]}],
  "timestamp":...}}``); ``YYYY`` (a whole year) for 4hour and longer types, as bitbank documents it;
  a wrong date form, unknown pair or type answers 404 ``{"success":0,"data":{"code":10000}}``.

Only candles that opened at or before ``server.now`` are served (None: the clock). The candle still
forming at ``now`` is served with provisional values (open=high=low=close, half the volume), as an
exchange would, so a client that keeps it gets wrong data.

Scriptable faults, each for requests whose path contains ``match`` ("" = every request), ``times`` times
(None = always): :meth:`~ReplayServer.rate_limit` (HTTP 429), :meth:`~ReplayServer.server_error` (5xx),
:meth:`~ReplayServer.timeout` (answer after ``delay`` s, longer than the client's timeout),
:meth:`~ReplayServer.exchange_error` (bitbank's JSON error body), :meth:`~ReplayServer.garbage` (HTTP 200
with an HTML page), :meth:`~ReplayServer.always_fail`.

Every request is logged (:attr:`~ReplayServer.requests`: path, monotonic arrival time, status), so tests
can assert what was asked and how requests were spaced. Point a ccxt exchange at it with
:meth:`~ReplayServer.point`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

HOST = "127.0.0.1"

# bitbank candle types and their length; 4hour and longer take a YYYY date, the others YYYYMMDD.
CANDLE_TYPES = {
    "1min": pd.Timedelta(minutes=1),
    "5min": pd.Timedelta(minutes=5),
    "15min": pd.Timedelta(minutes=15),
    "30min": pd.Timedelta(minutes=30),
    "1hour": pd.Timedelta(hours=1),
    "4hour": pd.Timedelta(hours=4),
    "8hour": pd.Timedelta(hours=8),
    "12hour": pd.Timedelta(hours=12),
    "1day": pd.Timedelta(days=1),
    "1week": pd.Timedelta(days=7),
}
YEARLY_TYPES = frozenset({"4hour", "8hour", "12hour", "1day", "1week"})
_CANDLE_PATH = re.compile(r"^/([a-z0-9_]+)/candlestick/([0-9a-z]+)/(\d{4}|\d{8})$")


@dataclass
class Fault:
    """One scripted misbehaviour; ``remaining`` None means for ever."""

    match: str
    kind: str  # "status" | "timeout" | "json_error" | "garbage"
    remaining: int | None
    status: int = 503
    code: int = 10001
    delay: float = 1.0


@dataclass
class Request:
    """One request as the server saw it: path, ``time.monotonic()`` on arrival, the status answered
    (None while the answer is pending). The log is in order of arrival."""

    path: str
    time: float
    status: int | None = None


def bitbank_pair(base: str, quote: str) -> dict[str, Any]:
    """A pair entry of bitbank's /spot/pairs response."""
    return {
        "name": f"{base}_{quote}",
        "base_asset": base,
        "quote_asset": quote,
        "maker_fee_rate_base": "0",
        "taker_fee_rate_base": "0",
        "maker_fee_rate_quote": "-0.0002",
        "taker_fee_rate_quote": "0.0012",
        "unit_amount": "0.0001",
        "limit_max_amount": "1000",
        "market_max_amount": "10",
        "market_allowance_rate": "0.2",
        "price_digits": 0,
        "amount_digits": 4,
        "is_enabled": True,
        "stop_order": False,
        "stop_order_and_cancel": False,
    }


class ReplayServer:
    """bitbank's public API on 127.0.0.1, serving the candles given to :meth:`add_series`."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, str], pd.DataFrame] = {}
        self.now: pd.Timestamp | None = None
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self) -> ReplayServer:
        replay = self

        class Handler(_Handler):
            server_state = replay

        self._httpd = _QuietServer((HOST, 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="replay-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes handlers sleeping in a timeout fault
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "start() the server first"
        return f"http://{HOST}:{self._httpd.server_address[1]}"

    def point(self, exchange: Any) -> Any:
        """Send all of a ccxt bitbank exchange's API hosts (public, private, markets) here; returns it."""
        base = self.base_url
        exchange.urls["api"] = {"public": base, "private": base, "markets": base}
        return exchange

    # ----------------------------------------------------------------------------------------- data

    def add_series(self, pair: str, candle_type: str, frame: pd.DataFrame) -> None:
        """Serve ``frame`` (project candle convention) as ``pair`` (e.g. 'btc_jpy') candles of a type."""
        if candle_type not in CANDLE_TYPES:
            raise ValueError(f"unknown bitbank candle type {candle_type!r}")
        with self._lock:
            self.series[(pair, candle_type)] = frame.copy()

    # --------------------------------------------------------------------------------------- faults

    def _add(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def rate_limit(self, match: str = "", times: int | None = 1) -> None:
        """Answer HTTP 429 Too Many Requests (plain-text body, as a front proxy would)."""
        self._add(Fault(match, "status", times, status=429))

    def server_error(self, match: str = "", times: int | None = 1, status: int = 503) -> None:
        """Answer an HTTP 5xx with a plain-text body."""
        self._add(Fault(match, "status", times, status=status))

    def timeout(self, match: str = "", times: int | None = 1, delay: float = 1.0) -> None:
        """Answer (correctly) only after ``delay`` seconds: longer than the client's timeout."""
        self._add(Fault(match, "timeout", times, delay=delay))

    def exchange_error(
        self, match: str = "", code: int = 10001, times: int | None = 1, status: int = 200
    ) -> None:
        """Answer bitbank's JSON error body ``{"success":0,"data":{"code":code}}``."""
        self._add(Fault(match, "json_error", times, status=status, code=code))

    def garbage(self, match: str = "", times: int | None = 1) -> None:
        """Answer HTTP 200 with an HTML page instead of JSON (a misbehaving proxy or CDN)."""
        self._add(Fault(match, "garbage", times, status=200))

    def always_fail(self, match: str = "", status: int = 503) -> None:
        """Answer every matching request with an HTTP ``status`` error."""
        self._add(Fault(match, "status", None, status=status))

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    # ------------------------------------------------------------------------------------------ log

    def paths(self, contains: str = "") -> list[str]:
        with self._lock:
            return [r.path for r in self.requests if contains in r.path]

    def candle_paths(self) -> list[str]:
        return self.paths("/candlestick/")

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    # ----------------------------------------------------------------------------------- internals

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.match in path and fault.remaining != 0:
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return fault
        return None

    def _route(self, path: str) -> tuple[int, dict[str, Any]]:
        not_found = (404, {"success": 0, "data": {"code": 10000}})
        if path == "/spot/pairs":
            with self._lock:
                pairs = sorted({pair for pair, _ in self.series})
            return 200, {"success": 1, "data": {"pairs": [bitbank_pair(*p.split("_", 1)) for p in pairs]}}
        match = _CANDLE_PATH.match(path)
        if not match:
            return not_found
        pair, ctype, date = match.groups()
        with self._lock:
            frame = self.series.get((pair, ctype))
        if frame is None or (len(date) == 4) != (ctype in YEARLY_TYPES):
            return not_found
        if len(date) == 8:
            lo = pd.Timestamp(f"{date[:4]}-{date[4:6]}-{date[6:]}", tz="UTC")
            hi = lo + pd.Timedelta(days=1)
        else:
            lo, hi = pd.Timestamp(f"{date}-01-01", tz="UTC"), pd.Timestamp(f"{int(date) + 1}-01-01", tz="UTC")
        now = pd.Timestamp.now(tz="UTC") if self.now is None else pd.Timestamp(self.now)
        rows = frame.loc[(frame.index >= lo) & (frame.index < hi) & (frame.index <= now)].copy()
        forming = rows.index + CANDLE_TYPES[ctype] > now
        if forming.any():  # provisional values of the bar still open at `now`
            rows.loc[forming, ["high", "low", "close"]] = rows.loc[forming, "open"].to_numpy()[:, None]
            rows.loc[forming, "volume"] = rows.loc[forming, "volume"] / 2
        stamps = rows.index.as_unit("ms").asi8.tolist()
        ohlcv = [
            [repr(float(o)), repr(float(h)), repr(float(lo_)), repr(float(c)), repr(float(v)), int(ts)]
            for o, h, lo_, c, v, ts in zip(
                rows["open"], rows["high"], rows["low"], rows["close"], rows["volume"], stamps, strict=True
            )
        ]
        body = {"candlestick": [{"type": ctype, "ohlcv": ohlcv}], "timestamp": int(time.time() * 1000)}
        return 200, {"success": 1, "data": body}


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out closes its socket; the late answer's BrokenPipe is expected


class _Handler(BaseHTTPRequestHandler):
    server_state: ReplayServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (BaseHTTPRequestHandler's name)
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's method name)
        state = self.server_state
        path = urlsplit(self.path).path
        request = Request(path, time.monotonic())
        with state._lock:
            state.requests.append(request)
        fault = state._take_fault(path)
        if fault is not None and fault.kind == "status":
            status, payload = fault.status, f"HTTP {fault.status} from the replay server".encode()
            content_type = "text/plain"
        elif fault is not None and fault.kind == "garbage":
            status, payload = 200, b"<html><body>Service temporarily unavailable</body></html>"
            content_type = "text/html"
        elif fault is not None and fault.kind == "json_error":
            status, payload = fault.status, json.dumps({"success": 0, "data": {"code": fault.code}}).encode()
            content_type = "application/json"
        else:
            if fault is not None and fault.kind == "timeout":
                state._stop.wait(fault.delay)
            status, body = state._route(path)
            payload, content_type = json.dumps(body).encode(), "application/json"
        request.status = status
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
