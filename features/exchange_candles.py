"""Candles from a crypto exchange through ccxt, kept in an incremental local Parquet cache.

``data=exchange:<exchange>:<symbol>:<timeframe>`` (e.g. ``exchange:bitbank:BTC/JPY:15m``) names one
series; :func:`parse_spec` checks it and :func:`fetch_candles` brings the cache up to date and returns the
last ``days`` days of closed candles in the :mod:`features.candles` convention. The command line,
``python -m features.exchange`` (:mod:`features.exchange`), only updates the cache (for a scheduled job
before training).

Fetching
    ccxt's unified ``fetch_ohlcv(symbol, timeframe, since, limit)`` is paged forward: the next ``since`` is
    the last returned open time plus one bar, until the last closed candle. Most exchanges return up to
    ``limit`` candles from ``since`` (the page size is ccxt's ``features[...]["fetchOHLCV"]["limit"]``
    when it declares one, else 500). bitbank returns one UTC calendar day per request
    (``/{pair}/candlestick/{type}/{yyyymmdd}``, which ccxt filters to ``>= since``), so ``limit`` is not
    sent there (a day's page starts at 00:00 UTC: ``.../1hour/20260201`` begins with 1769904000000).
    An empty page is not taken as "no more data": it may be a day without trades, so the walk
    steps to the next page window (the next UTC midnight on bitbank, ``limit`` bars elsewhere) and goes on
    until the last closed candle. ``since`` grows at every request, so the walk always ends.

    ccxt's own throttler paces requests at the exchange's ``rateLimit`` (``enableRateLimit=True``).
    Transient failures (ccxt ``NetworkError``: timeouts, HTTP 429/5xx, DDoS protection, maintenance;
    ``BadResponse``, e.g. a proxy's HTML page instead of JSON; and the few "system error/busy" codes that
    bitbank sends as a JSON body, which ccxt raises as a plain ``ExchangeError``) are retried with
    exponential backoff and jitter (:class:`RetryPolicy`). Other ccxt errors (unknown symbol, rejected
    request, authentication) fail at once.

Window and closed candles
    ``days`` selects candles whose open time is at or after ``now - days``. A candle whose open time +
    timeframe is after ``now`` is still forming; it is never cached or returned.

Failure semantics
    A call either returns the complete requested window or raises :class:`~features.candles.DataError`;
    a partial dataset is never returned. Candles fetched and validated before the failure (a contiguous
    run right after the cached ones) are still saved, so the next call resumes where this one stopped.
    A failed fetch of older history (``days`` reaching before what the cache covers) is discarded whole,
    because saving part of it would leave a hole between it and the cached candles.

Cache
    ``<cache_dir>/<exchange>/<symbol with / -> - and : -> _>/<timeframe>.parquet`` (see
    :func:`cache_file`): a ``timestamp`` column (UTC, microseconds; the bar's open time) and float64
    ``open high low close volume``, closed candles only, sorted and unique, plus Parquet metadata naming the
    series and the earliest time from which its history is known to be complete (so history from before
    the pair was listed is walked once, not at every call). Writes go to a temporary file in the same
    directory followed by ``os.replace``, so a crash leaves the previous file intact. A later call only
    asks for candles after the last cached one, and for older history when ``days`` reaches further back
    than the cache. If the exchange returns a cached candle with different values, its new values win and
    a warning is logged. An unreadable cache file raises DataError naming it and saying to delete it.

bitbank long candles
    bitbank's candlestick endpoint wants ``YYYY`` instead of ``YYYYMMDD`` for ``4hour`` and longer types
    (its public-api.md), but ccxt 4.5.90 always sends ``YYYYMMDD``, so ``4h``, ``8h``, ``12h``, ``1d`` and
    ``1w`` on bitbank are refused by :func:`parse_spec`: fetch ``15m`` or ``1h`` and resample with the
    project's ``timeframe`` setting.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.candles import OHLCV, DataError, normalize_candles

__all__ = [
    "CACHE_ENV",
    "DEFAULT_TIMEOUT_MS",
    "ExchangeSpec",
    "FetchResult",
    "RetryPolicy",
    "SPEC_FORMAT",
    "cache_file",
    "default_cache_dir",
    "fetch_candles",
    "make_exchange",
    "parse_spec",
    "read_cache",
]

log = logging.getLogger(__name__)

PREFIX = "exchange:"
DEFAULT_TIMEOUT_MS = 20_000
DEFAULT_PAGE_LIMIT = 500
DAY_MS = 86_400_000
CACHE_ENV = "CRYPTO_SIGNALS_CACHE_DIR"
SPEC_FORMAT = "exchange:<exchange>:<symbol>:<timeframe>, e.g. exchange:bitbank:BTC/JPY:15m"
_META_KEY = b"crypto_signals.ohlcv_cache"
_CACHE_FORMAT = 1
_PROGRESS_SECONDS = 5.0  # at most one progress line this often while pages are fetched

# Exchanges whose OHLCV endpoint serves one UTC calendar day per request whatever `limit` says.
_DAY_PAGED = frozenset({"bitbank"})
# Timeframes ccxt lists but requests wrongly (see the module docstring), with the reason.
_BROKEN_TIMEFRAMES: dict[str, tuple[frozenset[str], str]] = {
    "bitbank": (
        frozenset({"4h", "8h", "12h", "1d", "1w"}),
        "bitbank's candlestick API wants a YYYY date for 4hour and longer candles, but ccxt 4.5.90 sends "
        "YYYYMMDD, so the request would fail or return the wrong range. Fetch '15m' or '1h' instead and "
        "let the project's `timeframe` setting resample it (e.g. timeframe=4h).",
    )
}
# Error codes that some exchanges return as a JSON body (which ccxt raises as a plain ExchangeError,
# whatever the HTTP status) although they mean "temporarily unavailable": retried like NetworkError.
_TRANSIENT_CODES: dict[str, frozenset[str]] = {
    # bitbank errors.md: 10001/10003 system error, 10005 timeout waiting for response, 70011 system busy.
    "bitbank": frozenset({"10001", "10003", "10005", "70011"}),
}
_CODE_RE = re.compile(r'"code"\s*:\s*"?(\d+)')


# --------------------------------------------------------------------------------------------------
# Spec


@dataclass(frozen=True)
class ExchangeSpec:
    """One candle series: a ccxt exchange id, a unified symbol and a ccxt timeframe."""

    exchange: str
    symbol: str
    timeframe: str

    def __str__(self) -> str:
        return f"{PREFIX}{self.exchange}:{self.symbol}:{self.timeframe}"

    @property
    def label(self) -> str:
        """Short form for messages: 'bitbank BTC/JPY 15m'."""
        return f"{self.exchange} {self.symbol} {self.timeframe}"

    @property
    def timeframe_ms(self) -> int:
        """Bar length in milliseconds."""
        from ccxt.base.exchange import Exchange

        return int(Exchange.parse_timeframe(self.timeframe)) * 1000

    @property
    def bar(self) -> pd.Timedelta:
        return pd.Timedelta(milliseconds=self.timeframe_ms)


def parse_spec(text: str) -> ExchangeSpec:
    """Parse ``exchange:<exchange>:<symbol>:<timeframe>`` and check it against ccxt (no network).

    The exchange id must be a ccxt id (case-insensitive), the symbol a unified ``BASE/QUOTE`` symbol
    (derivatives may add ``:SETTLE``; whether the exchange lists it is checked when fetching), and the
    timeframe one the exchange offers for OHLCV. Raises :class:`DataError` naming what is wrong.
    """
    import ccxt

    if not isinstance(text, str) or not text.strip().startswith(PREFIX):
        raise DataError(f"Not an exchange data source: {text!r}. Expected {SPEC_FORMAT}.")
    parts = [p.strip() for p in text.strip()[len(PREFIX) :].split(":")]
    if len(parts) < 3 or not all(parts):
        raise DataError(
            f"Malformed exchange data source {text!r}: it needs an exchange, a symbol and a timeframe "
            f"separated by ':'. Expected {SPEC_FORMAT}."
        )
    exchange_id, symbol, timeframe = parts[0].lower(), ":".join(parts[1:-1]), parts[-1]
    if not re.fullmatch(r"[^/\s:]+/[^/\s:]+(:[^/\s:]+)?", symbol):
        raise DataError(
            f"Malformed symbol {symbol!r} in {text!r}: use ccxt's unified BASE/QUOTE form such as "
            "'BTC/JPY' (derivatives: 'BTC/USDT:USDT')."
        )

    if exchange_id not in ccxt.exchanges:
        close = difflib.get_close_matches(exchange_id, ccxt.exchanges, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise DataError(
            f"Unknown exchange {parts[0]!r} in {text!r}.{hint} ccxt {ccxt.__version__} knows "
            f"{len(ccxt.exchanges)} exchanges; list them with "
            "`python -c \"import ccxt; print('\\n'.join(ccxt.exchanges))\"`."
        )
    probe = getattr(ccxt, exchange_id)()  # constructing an exchange makes no request
    if not probe.has.get("fetchOHLCV"):
        raise DataError(f"ccxt's {exchange_id} does not provide OHLCV candles (has['fetchOHLCV'] is false).")
    offered = list(probe.timeframes or {})
    broken, reason = _BROKEN_TIMEFRAMES.get(exchange_id, (frozenset(), ""))
    usable = [tf for tf in offered if tf not in broken and _fixed_length(tf)]
    if timeframe not in offered:
        raise DataError(
            f"{exchange_id} does not offer timeframe {timeframe!r} (in {text!r}). Timeframes it offers: "
            f"{', '.join(usable) or 'none'}."
        )
    if timeframe in broken:
        raise DataError(f"Timeframe {timeframe!r} cannot be fetched from {exchange_id}: {reason}")
    if not _fixed_length(timeframe):
        raise DataError(
            f"Timeframe {timeframe!r} (in {text!r}) is a calendar period without a fixed length; use one "
            f"of {', '.join(usable)}."
        )
    return ExchangeSpec(exchange=exchange_id, symbol=symbol, timeframe=timeframe)


def _fixed_length(timeframe: str) -> bool:
    """Months and years (ccxt 'M', 'y') have no fixed length; seconds..weeks do."""
    return re.fullmatch(r"\d+[smhdw]", timeframe) is not None


# --------------------------------------------------------------------------------------------------
# Exchange and retries


CCXT_CONFIG_ENV = "CRYPTO_SIGNALS_CCXT_CONFIG"


def _env_config() -> dict[str, Any]:
    text = os.environ.get(CCXT_CONFIG_ENV, "").strip()
    if not text:
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{CCXT_CONFIG_ENV} is not valid JSON ({exc}); give a JSON object, e.g. "
            "'{\"timeout\": 60000}', or unset it."
        ) from exc
    if not isinstance(config, dict):
        raise DataError(f"{CCXT_CONFIG_ENV} must be a JSON object of ccxt settings, got {text!r}.")
    return config


def make_exchange(spec: ExchangeSpec, config: dict[str, Any] | None = None) -> Any:
    """The ccxt exchange for ``spec`` with the throttler on and a finite timeout.

    ``config`` (or, when it is None, the JSON object in ``$CRYPTO_SIGNALS_CCXT_CONFIG``) overrides
    ccxt's settings, deep-merged by ccxt into the exchange's own: e.g. ``{"timeout": 60000}``,
    ``{"httpsProxy": "http://proxy:3128"}`` or ``{"urls": {"api": {"public": "..."}}}`` for a mirror.
    """
    import ccxt

    extra = _env_config() if config is None else dict(config)
    settings = {"enableRateLimit": True, "timeout": DEFAULT_TIMEOUT_MS} | extra
    return getattr(ccxt, spec.exchange)(settings)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries for transient errors: wait ``base_delay * 2**(n-1)`` s after the n-th failure,
    capped at ``max_delay``, times a random factor in [0.5, 1) so that clients do not retry in step."""

    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError(f"RetryPolicy needs attempts >= 1 and delays >= 0, got {self}.")

    def delay(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait after ``failures`` consecutive failures (1, 2, ...)."""
        cap = min(self.max_delay, self.base_delay * 2.0 ** (failures - 1))
        return cap * (0.5 + 0.5 * rng.random())


def _is_transient(exchange_id: str, exc: BaseException) -> bool:
    import ccxt

    if isinstance(exc, ccxt.NetworkError | ccxt.BadResponse):
        return True
    if type(exc) is ccxt.ExchangeError:  # subclasses (BadSymbol, AuthenticationError...) are definite
        match = _CODE_RE.search(str(exc))
        return match is not None and match.group(1) in _TRANSIENT_CODES.get(exchange_id, frozenset())
    return False


def _fmt_ms(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M UTC")


class _Session:
    """One fetch_candles call: the exchange, the retry policy and the request count."""

    def __init__(self, spec: ExchangeSpec, exchange: Any, retry: RetryPolicy, seed: int | None) -> None:
        self.spec, self.exchange, self.retry = spec, exchange, retry
        self.rng = random.Random(seed)
        self.requests = 0
        self.retries = 0
        self.tf_ms = spec.timeframe_ms
        self.day_paged = spec.exchange in _DAY_PAGED
        self.limit: int | None = None

    def call(self, what: str, fn: Callable[[], Any], count: bool) -> Any:
        """``fn()`` with retries on transient errors; anything else, or the last failure, -> DataError."""
        import ccxt

        for attempt in range(1, self.retry.attempts + 1):
            if count:
                self.requests += 1
            try:
                return fn()
            except ccxt.BaseError as exc:
                error = f"{type(exc).__name__}: {exc}"
                if not _is_transient(self.spec.exchange, exc):
                    raise DataError(
                        f"{self.spec.label}: {what} was rejected by the exchange ({error}). This is not a "
                        "transient error, so it was not retried; check the symbol and timeframe (and that "
                        "the exchange still lists the market)."
                    ) from exc
                if attempt == self.retry.attempts:
                    raise DataError(
                        f"{self.spec.label}: {what} failed after {attempt} attempt(s) ({error}). The network "
                        "or the exchange is unavailable or throttling us; check the connection and the "
                        "exchange's status page and run again later (it resumes from the cache)."
                    ) from exc
                wait = self.retry.delay(attempt, self.rng)
                self.retries += 1
                log.warning(
                    "%s: %s failed (%s), attempt %d/%d; retrying in %.2f s",
                    self.spec.label, what, type(exc).__name__, attempt, self.retry.attempts, wait,
                )  # fmt: skip
                time.sleep(wait)
        raise AssertionError("unreachable")  # the loop returns or raises

    def load_market(self) -> None:
        """Load the exchange's markets, check the symbol and pick the page size."""
        markets = self.call("loading the market list", self.exchange.load_markets, count=False)
        market = markets.get(self.spec.symbol)
        if market is None:
            symbols = list(markets)
            lower = {s.lower(): s for s in symbols}
            close = [lower[m] for m in difflib.get_close_matches(self.spec.symbol.lower(), list(lower), n=5)]
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise DataError(
                f"{self.spec.exchange} has no market {self.spec.symbol!r} "
                f"({len(symbols)} markets listed).{hint} "
                f"Use ccxt's unified symbol; list them with `python -c \"import ccxt; "
                f'print(ccxt.{self.spec.exchange}().load_markets().keys())"`.'
            )
        self.limit = None if self.day_paged else _page_limit(self.exchange, market)

    def page(self, since: int) -> list[list[Any]]:
        """One fetch_ohlcv call (with retries)."""
        import ccxt

        def request() -> list[list[Any]]:
            rows = self.exchange.fetch_ohlcv(self.spec.symbol, self.spec.timeframe, since, self.limit)
            # ccxt turns a body that is not JSON (a proxy's error page served with HTTP 200) into an empty
            # list; taken for a day without trades, that day would be skipped for good.
            body = getattr(self.exchange, "last_http_response", None)
            if not rows and isinstance(body, str) and not _is_json_document(body):
                raise ccxt.BadResponse(
                    f"{self.spec.exchange} answered a body that is not JSON: {body[:80]!r}"
                )
            return rows

        return self.call(f"the request for candles since {_fmt_ms(since)}", request, count=True)

    def next_window(self, since: int) -> int:
        """Where to continue after an empty page: the next page window, never ``since`` itself."""
        if self.day_paged:
            return (since // DAY_MS + 1) * DAY_MS
        return since + (self.limit or DEFAULT_PAGE_LIMIT) * self.tf_ms

    def walk(self, since: int, until: int, closed_end: int, out: list[pd.DataFrame]) -> None:
        """Append validated closed candles with open time in [since, ...) to ``out`` page by page, while
        ``since < until``. The last page may run past ``until`` (overlap is merged by the caller)."""
        noted, pages, candles = time.monotonic(), 0, 0
        while since < until:
            rows = self.page(since)
            frame = self._to_frame(rows, since)
            if len(frame):
                last = int(frame.index[-1].value // 1_000_000)
                closed = frame.loc[frame.index <= pd.Timestamp(closed_end, unit="ms", tz="UTC")]
                if len(closed):
                    out.append(closed)
                    candles += len(closed)
                since = last + self.tf_ms
            else:
                since = self.next_window(since)
            pages += 1
            if time.monotonic() - noted >= _PROGRESS_SECONDS and since < until:
                noted = time.monotonic()
                log.info(
                    "fetching  %s: %d page(s), %d candle(s) so far, reached %s (until %s)",
                    self.spec.label,
                    pages,
                    candles,
                    _fmt_ms(min(since, until)),
                    _fmt_ms(until),
                )

    def _to_frame(self, rows: list[list[Any]], since: int) -> pd.DataFrame:
        """One page as a validated candle frame (open time >= since); bad data -> DataError."""
        if not rows:
            return _empty_frame()
        try:
            table = np.asarray(rows, dtype=object)
            if table.ndim != 2 or table.shape[1] < 6:
                raise ValueError(
                    f"expected rows of [timestamp, open, high, low, close, volume], got {rows[0]!r}"
                )
            stamps = table[:, 0].astype("int64")
            values = table[:, 1:6].astype("float64")
        except (TypeError, ValueError) as exc:
            raise DataError(
                f"{self.spec.label}: the exchange returned malformed candles for the request since "
                f"{_fmt_ms(since)} ({exc}). Nothing from that page was used."
            ) from exc
        keep = stamps >= since
        index = pd.DatetimeIndex(pd.to_datetime(stamps[keep], unit="ms", utc=True), name="timestamp")
        frame = pd.DataFrame(values[keep], index=index, columns=list(OHLCV))
        if not len(frame):
            return _empty_frame()
        try:
            return normalize_candles(frame)
        except DataError as exc:
            raise DataError(
                f"{self.spec.label}: the exchange returned invalid candles for the request since "
                f"{_fmt_ms(since)}: {exc} Nothing from that page was cached; if it persists, report it to "
                "the exchange or fetch a range that avoids it."
            ) from exc


def _is_json_document(body: str) -> bool:
    try:
        return isinstance(json.loads(body), dict | list)
    except ValueError:
        return False


def _page_limit(exchange: Any, market: dict[str, Any]) -> int:
    """ccxt's declared OHLCV page size for this market type, else DEFAULT_PAGE_LIMIT."""
    features = getattr(exchange, "features", None) or {}
    section = features.get(market.get("type") or "spot")
    if isinstance(section, dict) and "fetchOHLCV" not in section:
        section = section.get("linear" if market.get("linear") else "inverse")
    ohlcv = section.get("fetchOHLCV") if isinstance(section, dict) else None
    limit = ohlcv.get("limit") if isinstance(ohlcv, dict) else None
    return int(limit) if isinstance(limit, int | float) and limit > 0 else DEFAULT_PAGE_LIMIT


def _empty_frame() -> pd.DataFrame:
    index = pd.DatetimeIndex([], dtype="datetime64[us, UTC]", name="timestamp")
    return pd.DataFrame({c: pd.Series(dtype="float64") for c in OHLCV}, index=index)


# --------------------------------------------------------------------------------------------------
# Cache


def default_cache_dir() -> Path:
    """The cache root: $CRYPTO_SIGNALS_CACHE_DIR, else $XDG_CACHE_HOME/crypto-signals/ohlcv, else
    ~/.cache/crypto-signals/ohlcv (nothing is created here)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "crypto-signals" / "ohlcv"


def cache_file(spec: ExchangeSpec, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<cache_dir>/<exchange>/<symbol, '/'->'-' and ':'->'_'>/<timeframe>.parquet``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", spec.symbol.replace("/", "-"))
    return root / spec.exchange / safe / f"{spec.timeframe}.parquet"


def read_cache(path: str | os.PathLike[str], spec: ExchangeSpec | None = None) -> pd.DataFrame | None:
    """The cached candles (None when there is no file); a corrupt file -> DataError saying to delete it."""
    frame, _ = _read_cache(Path(path), spec)
    return frame


def _read_cache(path: Path, spec: ExchangeSpec | None) -> tuple[pd.DataFrame | None, int | None]:
    """(candles, covered_from_ms) from the cache file, or (None, None) if it does not exist."""
    import pyarrow.parquet as pq

    if not path.exists():
        return None, None
    delete = "Delete the file and run again; the candles will be downloaded again."
    try:
        table = pq.read_table(path)
        raw = table.to_pandas()
        meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
    except Exception as exc:  # pyarrow, OS and JSON errors all mean the same: unusable file
        raise DataError(
            f"Cache file {path} is corrupt or unreadable ({type(exc).__name__}: {exc}). {delete}"
        ) from exc
    if spec is not None and meta.get("spec") not in (None, str(spec)):
        raise DataError(f"Cache file {path} holds {meta['spec']}, not {spec}. {delete}")
    try:
        frame = normalize_candles(raw)
    except DataError as exc:
        raise DataError(f"Cache file {path} holds invalid candles: {exc} {delete}") from exc
    covered = meta.get("covered_from_ms")
    first = int(frame.index[0].value // 1_000_000)
    return frame, min(int(covered), first) if isinstance(covered, int) else first


def _write_cache(path: Path, frame: pd.DataFrame, spec: ExchangeSpec, covered_from: int) -> None:
    """Atomically replace the cache file: temporary file in the same directory, fsync, os.replace."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    # Built from arrays (not Table.from_pandas): a plain 'timestamp' column any Parquet reader understands.
    columns = {"timestamp": pa.array(frame.index.as_unit("us").asi8, type=pa.timestamp("us", tz="UTC"))}
    columns |= {c: pa.array(frame[c].to_numpy(dtype="float64")) for c in OHLCV}
    table = pa.table(columns)
    meta = {"format": _CACHE_FORMAT, "spec": str(spec), "covered_from_ms": int(covered_from)}
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), _META_KEY: json.dumps(meta).encode()}
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _merge(
    cached: pd.DataFrame | None, fresh: list[pd.DataFrame], spec: ExchangeSpec
) -> tuple[pd.DataFrame, int, int]:
    """Cache + fetched pages -> (merged, new_rows, updated_rows); fetched values win on overlap."""
    if not fresh:
        return (cached if cached is not None else _empty_frame()), 0, 0
    new = pd.concat(fresh)
    new = new.loc[~new.index.duplicated(keep="last")]
    if cached is None or not len(cached):
        return new.sort_index(), len(new), 0
    common = new.index.intersection(cached.index)
    changed = (new.loc[common, list(OHLCV)] != cached.loc[common, list(OHLCV)]).any(axis=1)
    updated = int(changed.sum())
    if updated:
        log.warning(
            "%s: the exchange now returns different values for %d cached candle(s) (first %s); "
            "kept the new values.",
            spec.label, updated, changed.index[changed.to_numpy()][0].strftime("%Y-%m-%d %H:%M UTC"),
        )  # fmt: skip
    merged = pd.concat([cached.drop(index=common), new]).sort_index()
    merged.index = pd.DatetimeIndex(merged.index, freq=None, name="timestamp")
    return merged, len(merged) - len(cached), updated


# --------------------------------------------------------------------------------------------------
# Fetch


@dataclass(frozen=True, eq=False)
class FetchResult:
    """What :func:`fetch_candles` returned and did.

    ``candles``: the closed candles of the requested window; ``cache_path``: the Parquet file;
    ``requests``: OHLCV HTTP requests made by this call (retried attempts included); ``new_rows``: candles
    added to the cache; ``updated_rows``: cached candles whose values the exchange changed;
    ``cache_rows``: candles in the cache afterwards; ``retries``: transient failures retried.
    """

    candles: pd.DataFrame
    cache_path: Path
    requests: int
    new_rows: int
    updated_rows: int = 0
    cache_rows: int = 0
    retries: int = 0
    spec: ExchangeSpec | None = None

    def describe(self) -> str:
        """Lines for humans: what was fetched, the range, the cache path and the request count."""
        c = self.candles
        span = f"{_fmt_ts(c.index[0])} .. {_fmt_ts(c.index[-1])} UTC" if len(c) else "no candles"
        retried = f" ({self.retries} retried)" if self.retries else ""
        updated = f", {self.updated_rows:,} revised" if self.updated_rows else ""
        return (
            f"{self.spec or 'exchange'}: {self.new_rows:,} new rows{updated}, "
            f"{self.cache_rows:,} in the cache\n"
            f"returned {len(c):,} closed candles {span}\n"
            f"requests: {self.requests} OHLCV{retried}\n"
            f"cache: {self.cache_path}"
        )


def _fmt_ts(ts: pd.Timestamp) -> str:
    return ts.strftime("%Y-%m-%d %H:%M")


def fetch_candles(
    spec: ExchangeSpec | str,
    days: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    exchange: Any = None,
    now: pd.Timestamp | None = None,
    *,
    retry: RetryPolicy | None = None,
    seed: int | None = None,
) -> FetchResult:
    """Bring the cache of ``spec`` up to date and return its closed candles of the last ``days`` days.

    ``days``: candles whose open time is >= ``now - days``; history the cache lacks is fetched.
    None means everything the cache holds, updated with the new candles (the cache must exist then).
    ``exchange``: a ready ccxt exchange (tests point one at a local server); None builds one with
    :func:`make_exchange`. ``now``: the current time (default: the clock), naive means UTC.
    ``retry``: the :class:`RetryPolicy` for transient errors; ``seed`` seeds its jitter.

    Raises :class:`DataError` when the spec, the cache, the exchange's data or the exchange itself fails;
    candles verified before such a failure are kept in the cache (see the module docstring), but nothing
    partial is returned.
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    _check_days(days)
    plan = _plan(spec, days, cache_dir, _utc_ms(now))
    session = _Session(spec, _exchange_for(spec, exchange), retry or RetryPolicy(), seed)
    tail, head, covered = _fetch_missing(session, plan)
    merged, new_rows, updated = _merge(plan.cached, tail + head, spec)
    _update_cache(plan, merged, spec, covered, changed=bool(new_rows or updated))
    window = _window(merged, plan, spec, days)
    log.info(
        "%s: %d request(s), %d new candle(s), cache %s", spec.label, session.requests, new_rows, plan.path
    )
    return FetchResult(
        candles=window.copy(),
        cache_path=plan.path,
        requests=session.requests,
        new_rows=new_rows,
        updated_rows=updated,
        cache_rows=len(merged),
        retries=session.retries,
        spec=spec,
    )


def _check_days(days: object) -> None:
    if days is not None and (isinstance(days, bool) or not isinstance(days, int | np.integer) or days <= 0):
        raise DataError(
            f"days must be a positive whole number (or None for what the cache has), got {days!r}."
        )


def _utc_ms(now: pd.Timestamp | None) -> int:
    """``now`` (default: the clock; naive means UTC) in milliseconds since the epoch."""
    now_ts = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    now_ts = now_ts.tz_localize("UTC") if now_ts.tzinfo is None else now_ts.tz_convert("UTC")
    return int(now_ts.value // 1_000_000)


@dataclass(frozen=True, eq=False)
class _Plan:
    """What one :func:`fetch_candles` call has and must fetch; times are ms since the epoch (UTC)."""

    path: Path  # the cache file
    cached: pd.DataFrame | None  # its candles (None: no file yet)
    covered_from: int | None  # the cache's history is complete from here
    now_ms: int
    closed_end: int  # a candle that opened at or before this has closed
    start: int | None  # the requested window's first open time; None: what the cache has
    tail_from: int  # new candles are fetched from here
    need_head: bool  # the window reaches before what the cache covers: older history is fetched too


def _plan(
    spec: ExchangeSpec, days: int | None, cache_dir: str | os.PathLike[str] | None, now_ms: int
) -> _Plan:
    """What the cache has and what is missing."""
    tf_ms = spec.timeframe_ms
    path = cache_file(spec, cache_dir)
    cached, covered_from = _read_cache(path, spec)
    if days is None and cached is None:
        raise DataError(
            f"No cached candles for {spec} yet ({path}); pass days (e.g. --days 365) to say how much "
            "history to fetch the first time."
        )
    start = now_ms - int(days) * DAY_MS if days is not None else None
    tail_from = int(cached.index[-1].value // 1_000_000) + tf_ms if cached is not None else start
    need_head = cached is not None and start is not None and covered_from is not None and start < covered_from
    assert tail_from is not None
    return _Plan(path, cached, covered_from, now_ms, now_ms - tf_ms, start, tail_from, need_head)


def _exchange_for(spec: ExchangeSpec, exchange: Any) -> Any:
    """The given exchange after checking it is the spec's (None: :func:`make_exchange`)."""
    if exchange is None:
        exchange = make_exchange(spec)
    elif getattr(exchange, "id", spec.exchange) != spec.exchange:
        raise DataError(f"The exchange object is {exchange.id!r} but the spec names {spec.exchange!r}.")
    if not getattr(exchange, "enableRateLimit", True):
        log.warning("%s: the exchange object has enableRateLimit off; requests are not throttled", spec.label)
    return exchange


def _fetch_missing(
    session: _Session, plan: _Plan
) -> tuple[list[pd.DataFrame], list[pd.DataFrame], int | None]:
    """Fetch new candles first (kept even if a later step fails), then older history: (tail pages, head
    pages, the time from which the cache's history is complete afterwards)."""
    tail: list[pd.DataFrame] = []
    head: list[pd.DataFrame] = []
    covered = plan.covered_from if plan.covered_from is not None else plan.start
    try:
        if plan.tail_from <= plan.closed_end or plan.need_head:
            session.load_market()
        if plan.tail_from <= plan.closed_end:
            session.walk(plan.tail_from, plan.closed_end + 1, plan.closed_end, tail)
        if plan.need_head:
            assert plan.covered_from is not None and plan.start is not None
            session.walk(plan.start, plan.covered_from, plan.closed_end, head)
            covered = plan.start
    except BaseException:
        _save_verified(session.spec, plan, tail, covered)
        raise
    return tail, head, covered


def _save_verified(spec: ExchangeSpec, plan: _Plan, tail: list[pd.DataFrame], covered: int | None) -> None:
    """After a failure: keep the verified run of new candles (contiguous with the cache), drop any partial
    head; a failure to save is only logged (the original error is what the caller sees)."""
    merged, new_rows, _ = _merge(plan.cached, tail, spec)
    if new_rows and covered is not None:
        try:
            _write_cache(plan.path, merged, spec, covered)
            log.warning(
                "%s: saved %d verified new candle(s) to %s before failing", spec.label, new_rows, plan.path
            )
        except OSError as exc:
            log.warning("%s: could not save the verified candles to %s: %s", spec.label, plan.path, exc)


def _update_cache(
    plan: _Plan, merged: pd.DataFrame, spec: ExchangeSpec, covered: int | None, changed: bool
) -> None:
    """Write the merged candles when they (or the covered range) changed."""
    assert covered is not None
    if changed or covered != plan.covered_from:
        if len(merged):
            try:
                _write_cache(plan.path, merged, spec, covered)
            except OSError as exc:
                raise DataError(
                    f"Could not write the cache file {plan.path}: {exc}. Check the directory."
                ) from exc


def _window(merged: pd.DataFrame, plan: _Plan, spec: ExchangeSpec, days: int | None) -> pd.DataFrame:
    """The closed candles of the requested window; none at all -> DataError."""
    window = merged.loc[merged.index <= pd.Timestamp(plan.closed_end, unit="ms", tz="UTC")]
    if plan.start is not None:
        window = window.loc[window.index >= pd.Timestamp(plan.start, unit="ms", tz="UTC")]
    if not len(window):
        span = f"in the last {days} days" if days is not None else "in the cache"
        raise DataError(
            f"{spec.exchange} returned no closed candles for {spec.symbol} {spec.timeframe} {span} "
            f"(up to {_fmt_ms(plan.now_ms)}). The market may be inactive or delisted; check the symbol or "
            "ask for more days."
        )
    return window
