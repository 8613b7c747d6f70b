"""The candle convention and its checks: validation, bar size, gaps, timeframes and resampling.

Convention shared by the whole project: a DataFrame indexed by a tz-aware UTC ``DatetimeIndex`` named
``"timestamp"`` (microsecond unit, the pandas 3 default; ``freq`` None), strictly increasing and unique,
with float64 columns exactly ``OHLCV``. The bar at ``t`` is the bar that opened at ``t``.

Nothing here ever fills, interpolates or re-sorts data: bad input raises :class:`DataError` with a message
that names the problem, shows a few offending rows and says how to fix it.

The base module of ``features``: it imports only numpy and pandas. The loaders (:mod:`features.data`),
the exchange fetcher (:mod:`features.exchange_candles`) and the context features
(:mod:`features.context`) build on it; :mod:`features.data` imports :mod:`features.exchange_candles`,
never the reverse, and re-exports the names
here that most callers use (``DataError``, ``OHLCV``, ``normalize_candles``, ``infer_bar``, ``count_gaps``).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "OHLCV",
    "PRICES",
    "TIME_UNIT",
    "GAP_TOLERANCE_BARS",
    "DataError",
    "check_bar_sizes",
    "count_gaps",
    "fmt_td",
    "fmt_ts",
    "infer_bar",
    "normalize_candles",
    "parse_timeframe",
    "resample",
    "segment_ids",
    "segments",
]

OHLCV = ("open", "high", "low", "close", "volume")
PRICES = ("open", "high", "low", "close")
TIME_UNIT = "us"

# Accepted spellings after lower-casing, stripping and mapping spaces/hyphens to underscores.
_ALIASES: dict[str, tuple[str, ...]] = {
    "timestamp": ("timestamp", "time", "date", "datetime", "open_time", "opentime", "ts"),
    "open": ("open", "o"),
    "high": ("high", "h"),
    "low": ("low", "l"),
    "close": ("close", "c"),
    "volume": ("volume", "vol", "v"),
}
_ALIAS_TO_CANON = {alias: canon for canon, aliases in _ALIASES.items() for alias in aliases}

# Epoch magnitude windows: each covers 1973 .. 5138 AD in its unit, so the windows never overlap.
_EPOCH_UNITS = (("s", 1e8, 1e11), ("ms", 1e11, 1e14), ("us", 1e14, 1e17), ("ns", 1e17, 1e20))

_MAX_EXAMPLES = 5


class DataError(ValueError):
    """Raised for any candle data problem; the message says what is wrong and how to fix it."""


# --------------------------------------------------------------------------------------------------
# Message helpers


def fmt_ts(ts: pd.Timestamp) -> str:
    try:
        if ts.tzinfo is None:
            return ts.strftime("%Y-%m-%d %H:%M:%S")
        utc = ts.utcoffset() == pd.Timedelta(0)
        return ts.strftime("%Y-%m-%d %H:%M:%S UTC") if utc else ts.isoformat(sep=" ")
    except (ValueError, NotImplementedError):  # years Python's datetime cannot format (e.g. year -1)
        return ts.isoformat()


def _examples(labels: pd.Index | np.ndarray | list[Any], extra: list[str] | None = None) -> str:
    """First few offending labels (timestamps or row numbers), each optionally with a detail string."""
    shown = []
    for i, label in enumerate(list(labels[:_MAX_EXAMPLES])):
        text = fmt_ts(label) if isinstance(label, pd.Timestamp) else f"row {label}"
        if extra is not None:
            text += f" ({extra[i]})"
        shown.append(text)
    more = len(labels) - len(shown)
    return ", ".join(shown) + (f", ... and {more} more" if more > 0 else "")


def _show(value: object) -> str:
    """repr of a cell without numpy's np.float64(...) wrapping."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def fmt_td(td: pd.Timedelta) -> str:
    """Short human form of a duration: 30min, 3h, 1d, 2h30min, 45s."""
    total = int(td.total_seconds())
    if total <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        n, total = divmod(total, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


# --------------------------------------------------------------------------------------------------
# Bar size and gaps


def infer_bar(index: pd.DatetimeIndex) -> pd.Timedelta:
    """The bar size of ``index``: the median spacing between consecutive timestamps."""
    if len(index) < 2:
        raise DataError(
            f"Cannot infer the bar size from {len(index)} row(s); at least 2 candles are needed. "
            "Provide more candles."
        )
    diffs = np.diff(index.asi8)
    if (diffs <= 0).any():
        raise DataError(
            "Cannot infer the bar size: the timestamps are not strictly increasing. "
            "Pass candles through normalize_candles() first."
        )
    # asi8 counts in the index's own unit (us, ns, ...).
    return pd.Timedelta(int(np.median(diffs)), unit=index.unit)


def count_gaps(index: pd.DatetimeIndex, bar: pd.Timedelta) -> tuple[int, pd.Timedelta]:
    """Missing bars in ``index`` for bar size ``bar``, and the largest spacing that contains a gap.

    A spacing ``d > bar`` counts ``d // bar - 1`` missing bars (exactly ``d / bar - 1`` for regular data;
    flooring keeps the count an integer when a spacing is not a whole number of bars). Returns
    ``(0, Timedelta(0))`` when there are no gaps.
    """
    bar = pd.Timedelta(bar)
    if bar <= pd.Timedelta(0):
        raise DataError(f"Bar size must be positive, got {bar}.")
    if len(index) < 2:
        return 0, pd.Timedelta(0)
    diffs = pd.TimedeltaIndex(index[1:] - index[:-1])
    over = diffs[diffs > bar]
    if len(over) == 0:
        return 0, pd.Timedelta(0)
    missing = int((over // bar).to_numpy().sum() - len(over))
    return missing, pd.Timedelta(over.max())


# --------------------------------------------------------------------------------------------------
# Gaps: one rule everywhere (training, serving, the look-ahead check)

# A spacing of up to this many missing bars is tolerated (an exchange that printed no candle for a quiet
# bar); more is a gap. No indicator window and no label window spans a gap: features restart their
# warm-up after it, rows whose label would reach across it are dropped, and the served model marks the
# rows after it not ready until the indicators have their history again.
GAP_TOLERANCE_BARS = 1
# This many consecutive spacings of the same size other than the bar are another bar size, not gaps.
MIXED_BAR_RUN = 10


def segment_ids(index: pd.DatetimeIndex, bar: pd.Timedelta) -> np.ndarray:
    """Per row, the number of gaps before it (0 for every row of gap-free candles)."""
    if len(index) < 2:
        return np.zeros(len(index), dtype=np.int64)
    limit = (GAP_TOLERANCE_BARS + 1) * pd.Timedelta(bar).value
    spacing = np.diff(index.as_unit("ns").asi8)
    return np.concatenate(([0], np.cumsum(spacing > limit))).astype(np.int64)


def segments(index: pd.DatetimeIndex, bar: pd.Timedelta) -> list[slice]:
    """Row slices of the gap-free stretches of ``index``, oldest first."""
    ids = segment_ids(index, bar)
    starts = np.flatnonzero(np.diff(ids, prepend=-1))
    ends = np.append(starts[1:], len(ids))
    return [slice(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def check_bar_sizes(index: pd.DatetimeIndex, bar: pd.Timedelta) -> None:
    """Refuse candles whose bar size changes: spacings shorter than ``bar``, or a run of
    ``MIXED_BAR_RUN`` consecutive equal spacings other than ``bar`` (bars of another size, not a gap).
    Raises DataError naming the offending time ranges."""
    if len(index) < 2:
        return
    bar = pd.Timedelta(bar)
    spacing = pd.TimedeltaIndex(index[1:] - index[:-1])
    short = np.flatnonzero(spacing < bar)
    if len(short):
        shown = ", ".join(f"{fmt_ts(index[i])} -> {fmt_ts(index[i + 1])}" for i in short[:3])
        raise DataError(
            f"Mixed bar sizes: the candles are mostly {fmt_td(bar)} bars, but {len(short)} spacing(s) "
            f"between {fmt_ts(index[short[0]])} and {fmt_ts(index[short[-1] + 1])} are shorter than the "
            f"bar, e.g. {shown}. One file must hold one bar size: resample the finer part (or split the "
            "file)."
        )
    values = spacing.asi8
    change = np.flatnonzero(np.diff(values)) + 1
    starts = np.concatenate(([0], change))
    lengths = np.diff(np.append(starts, len(values)))
    ranges = [(int(a), int(n)) for a, n in zip(starts, lengths, strict=True) if n >= MIXED_BAR_RUN]
    ranges = [(a, n) for a, n in ranges if spacing[a] != bar]
    if ranges:
        shown = "; ".join(
            f"{fmt_ts(index[a])} .. {fmt_ts(index[a + n])} are {fmt_td(spacing[a])} apart"
            for a, n in ranges[:3]
        )
        raise DataError(
            f"Mixed bar sizes: the candles are mostly {fmt_td(bar)} bars, but {shown}"
            f"{f' (and {len(ranges) - 3} more ranges)' if len(ranges) > 3 else ''}. One file must hold one "
            f"bar size: resample it to the larger one (e.g. timeframe={fmt_td(spacing[ranges[0][0]])}) or "
            "split the file."
        )


# --------------------------------------------------------------------------------------------------
# Normalisation and validation


def _canon_name(name: object) -> str:
    text = re.sub(r"[\s\-]+", "_", str(name).strip().lower())
    # Dotted prefixes such as "BTC.open" name the asset; the part after the last dot is the field.
    return text.rsplit(".", 1)[-1]


def _match_columns(raw: pd.DataFrame) -> dict[str, object]:
    """Map canonical names to the user's column labels; refuse ambiguous spellings."""
    found: dict[str, list[object]] = {}
    for col in raw.columns:
        canon = _ALIAS_TO_CANON.get(_canon_name(col))
        if canon is not None:
            found.setdefault(canon, []).append(col)
    ambiguous = {canon: cols for canon, cols in found.items() if len(cols) > 1}
    if ambiguous:
        detail = "; ".join(f"{canon}: {cols}" for canon, cols in ambiguous.items())
        raise DataError(
            f"Ambiguous columns, several spellings of the same field were found ({detail}). "
            "Keep exactly one column per field (drop or rename the others)."
        )
    return {canon: cols[0] for canon, cols in found.items()}


def _timestamp_source(raw: pd.DataFrame, columns: dict[str, object]) -> tuple[pd.Series | None, str]:
    """The raw timestamps (column or index) and a label for messages."""
    index_is_time = isinstance(raw.index, pd.DatetimeIndex) or (
        raw.index.name is not None and _canon_name(raw.index.name) in _ALIASES["timestamp"]
    )
    if "timestamp" in columns:
        if index_is_time:
            raise DataError(
                f"Timestamps are given twice: as column {columns['timestamp']!r} and as the index "
                f"({raw.index.name!r}). Keep only one (e.g. reset_index(drop=True) or drop the column)."
            )
        col = columns["timestamp"]
        return raw[col].reset_index(drop=True), f"column {col!r}"
    if index_is_time:
        return raw.index.to_series(index=pd.RangeIndex(len(raw))), "the index"
    return None, ""


def _parse_timestamps(values: pd.Series, where: str) -> pd.DatetimeIndex:
    """Parse timestamps to a UTC index; epoch numbers are detected by magnitude.

    Integers/floats are epoch seconds (~1e9), milliseconds (~1e12), microseconds (~1e15) or nanoseconds
    (~1e18), chosen by magnitude (each window spans 1973 .. 5138 AD). Strings must be ISO 8601; strings
    without an offset are taken as UTC, strings with one are converted to UTC. Datetimes without a
    time zone are taken as UTC.
    """
    missing = values.isna().to_numpy()
    if missing.any():
        rows = np.flatnonzero(missing)
        raise DataError(
            f"{len(rows)} missing timestamp(s) in {where}: {_examples(rows)}. "
            "Every candle needs a timestamp; remove those rows or fix the file."
        )
    if pd.api.types.is_bool_dtype(values.dtype):
        raise DataError(f"Timestamps in {where} are booleans; give epoch seconds/milliseconds or ISO 8601.")

    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        parsed = pd.DatetimeIndex(values)
        parsed = parsed.tz_localize("UTC") if parsed.tz is None else parsed.tz_convert("UTC")
        return parsed.as_unit(TIME_UNIT)

    numeric = values if pd.api.types.is_numeric_dtype(values.dtype) else None
    if numeric is None and (
        pd.api.types.is_string_dtype(values.dtype) or pd.api.types.is_object_dtype(values.dtype)
    ):
        # Epoch numbers that arrive as text (JSON from a bot, CSV read as strings) are still epochs.
        as_num = pd.to_numeric(values, errors="coerce")
        if as_num.notna().all():
            numeric = as_num
    if numeric is not None:
        return _parse_epoch(numeric, where)

    parsed = pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        samples = [_show(values.iloc[i]) for i in bad[:_MAX_EXAMPLES]]
        raise DataError(
            f"{len(bad)} unparseable timestamp(s) in {where}: {_examples(bad, samples)}. "
            "Use ISO 8601 (e.g. '2024-01-31 13:30:00', naive means UTC, or with an offset like '+00:00') "
            "or integer epoch seconds / milliseconds."
        )
    return _in_range(pd.DatetimeIndex(parsed).as_unit(TIME_UNIT), values, where)


# Candle times a file may hold: from the Unix epoch to the last day pandas' nanosecond timestamps (and
# so MLflow's schema checks and most tools downstream) can represent.
_EARLIEST, _LATEST = pd.Timestamp("1970-01-01", tz="UTC"), pd.Timestamp("2262-04-11", tz="UTC")


def _in_range(parsed: pd.DatetimeIndex, values: pd.Series, where: str) -> pd.DatetimeIndex:
    bad = np.flatnonzero(np.asarray((parsed < _EARLIEST) | (parsed >= _LATEST)))
    if len(bad):
        samples = [_show(values.iloc[i]) for i in bad[:_MAX_EXAMPLES]]
        raise DataError(
            f"{len(bad)} timestamp(s) in {where} are outside 1970-01-01 .. 2262-04-10 UTC: "
            f"{_examples(bad, samples)}. Check the column holds dates (a value like '-1' reads as year -1)."
        )
    return parsed


def _parse_epoch(numbers: pd.Series, where: str) -> pd.DatetimeIndex:
    # Integers stay int64: float64 cannot hold every epoch-nanosecond value exactly.
    dtype = "int64" if pd.api.types.is_integer_dtype(numbers.dtype) else "float64"
    arr = numbers.to_numpy(dtype=dtype)
    for unit, lo, hi in _EPOCH_UNITS:
        if ((arr >= lo) & (arr < hi)).all():
            try:
                parsed = pd.to_datetime(arr, unit=unit, utc=True)
            except (OverflowError, pd.errors.OutOfBoundsDatetime):
                parsed = pd.DatetimeIndex([_LATEST] * len(arr))  # reported as out of range below
            return _in_range(pd.DatetimeIndex(parsed).as_unit(TIME_UNIT), numbers, where)
    units = np.full(len(arr), "?", dtype=object)
    for unit, lo, hi in _EPOCH_UNITS:
        units[(arr >= lo) & (arr < hi)] = unit
    seen = sorted(set(units) - {"?"})
    bad = np.flatnonzero(units == "?")
    if len(bad):
        samples = [_show(numbers.iloc[i]) for i in bad[:_MAX_EXAMPLES]]
        problem = (
            f"{len(bad)} numeric timestamp(s) in {where} are not epoch times: {_examples(bad, samples)}."
        )
    else:
        problem = f"Numeric timestamps in {where} mix epoch units ({', '.join(seen)})."
    raise DataError(
        f"{problem} Numbers are read as epoch seconds (~1e9), milliseconds (~1e12), microseconds (~1e15) "
        "or nanoseconds (~1e18) by magnitude, one unit per file. Convert the column to one epoch unit "
        "or to ISO 8601 strings."
    )


def _to_float(values: pd.Series, name: str, index: pd.DatetimeIndex) -> np.ndarray:
    """A float64 copy of one value column; non-numeric entries raise (NaN/inf pass, checked later)."""
    dtype = values.dtype
    if pd.api.types.is_numeric_dtype(dtype) and not (
        pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_complex_dtype(dtype)
    ):
        return values.to_numpy(dtype="float64", na_value=np.nan, copy=True)
    fix = "Fix the file so prices and volume are plain numbers (no thousands separators, currency or text)."
    if not (pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype)):
        # Booleans, datetimes, categories...: refuse rather than guess a numeric meaning.
        raise DataError(
            f"Column {name!r} has dtype {dtype} (e.g. {_show(values.iloc[0])}), not numbers. {fix}"
        )
    coerced = pd.to_numeric(values, errors="coerce")
    bad = np.flatnonzero((coerced.isna() & values.notna()).to_numpy())
    if not len(bad):
        return coerced.to_numpy(dtype="float64", na_value=np.nan, copy=True)
    samples = [_show(values.iloc[i]) for i in bad[:_MAX_EXAMPLES]]
    raise DataError(
        f"Column {name!r} (dtype {dtype}) is not numeric: {len(bad)} value(s) cannot be read as numbers, "
        f"e.g. {_examples(index[bad], samples)}. {fix}"
    )


def _check_values(frame: pd.DataFrame) -> None:
    """Value checks on a typed candle frame; the first failing check raises."""

    def check(mask: np.ndarray, cols: tuple[str, ...], problem: str, fix: str) -> None:
        rows = np.flatnonzero(mask)
        if not len(rows):
            return
        shown = frame.iloc[rows[:_MAX_EXAMPLES]]
        detail = [", ".join(f"{c}={float(row[c])!r}" for c in cols) for _, row in shown.iterrows()]
        raise DataError(f"{problem} in {len(rows)} row(s): {_examples(frame.index[rows], detail)}. {fix}")

    clean = "The data must be cleaned before use; candles are never filled in. Remove or repair those rows."
    prices = frame[list(PRICES)].to_numpy()
    for i, col in enumerate(PRICES):
        check(~np.isfinite(prices[:, i]), (col,), f"NaN/inf {col} price", clean)
    for i, col in enumerate(PRICES):
        check(prices[:, i] <= 0, (col,), f"Non-positive {col} price", "Prices must be > 0. " + clean)
    volume = frame["volume"].to_numpy()
    check(np.isnan(volume), ("volume",), "NaN volume", clean + " Use 0 only if the bar truly had no trades.")
    check(np.isinf(volume), ("volume",), "Infinite volume", clean)
    check(volume < 0, ("volume",), "Negative volume", "Volume must be >= 0. " + clean)
    high, low = frame["high"].to_numpy(), frame["low"].to_numpy()
    check(high < low, ("high", "low"), "high < low", clean + " Check that high and low are not swapped.")
    for col in ("open", "close"):
        v = frame[col].to_numpy()
        check(
            (v < low) | (v > high),
            (col, "low", "high"),
            f"{col} outside [low, high]",
            clean + " Check that the columns are mapped correctly (e.g. a header with close before high).",
        )


def normalize_candles(raw: pd.DataFrame) -> pd.DataFrame:
    """Return a new, validated candle frame in the project convention (the input is never modified).

    Columns are matched case-insensitively: timestamp/time/date/datetime/open_time/ts (or a
    ``DatetimeIndex``), open/o, high/h, low/l, close/c, volume/vol/v; a dotted prefix such as
    ``"BTC.open"`` is ignored and other columns are dropped. Numeric timestamps are epoch seconds,
    milliseconds, microseconds or nanoseconds detected by magnitude (~1e9 / ~1e12 / ~1e15 / ~1e18);
    strings must be ISO 8601 (naive means UTC). Raises :class:`DataError` on any problem: nothing is
    filled, deduplicated or sorted here.
    """
    if not isinstance(raw, pd.DataFrame):
        raise DataError(f"Expected a pandas DataFrame of candles, got {type(raw).__name__}.")
    if len(raw) == 0:
        raise DataError(
            f"The candle frame is empty (columns found: {[str(c) for c in raw.columns]}). "
            "Provide at least one candle."
        )

    columns = _match_columns(raw)
    ts_values, ts_where = _timestamp_source(raw, columns)
    missing = [c for c in OHLCV if c not in columns] + (["timestamp"] if ts_values is None else [])
    if missing:
        accepted = "; ".join(f"{c}: {'/'.join(_ALIASES[c])}" for c in missing)
        raise DataError(
            f"Missing column(s): {', '.join(missing)}. Columns found: {[str(c) for c in raw.columns]} "
            f"(index: {type(raw.index).__name__}, name {raw.index.name!r}). Accepted spellings, "
            f"case-insensitive, optionally with a dotted prefix like 'BTC.': {accepted}; "
            "timestamps may also be a DatetimeIndex. "
            "Rename the columns."
        )
    assert ts_values is not None  # narrows the type: the missing check above raised if it was None

    index = _parse_timestamps(ts_values, ts_where)
    dup = index.duplicated(keep=False)
    if dup.any():
        first_dups = index[index.duplicated(keep="first")]
        raise DataError(
            f"Duplicate timestamps: {len(first_dups)} extra row(s) share a timestamp with an earlier row "
            f"({int(dup.sum())} rows involved), e.g. {_examples(index[dup].unique())}. "
            "Deduplicate the file (keep one candle per timestamp), e.g. "
            "df.drop_duplicates(subset=<timestamp column>, keep='last')."
        )
    backwards = np.flatnonzero(np.diff(index.asi8) < 0) + 1
    if len(backwards):
        shown = [f"after {fmt_ts(index[i - 1])}" for i in backwards[:_MAX_EXAMPLES]]
        raise DataError(
            f"Timestamps are not sorted: {len(backwards)} place(s) where time goes backwards, e.g. "
            f"{_examples(index[backwards], shown)}. Sort the file by timestamp (ascending) before loading; "
            "it is not sorted silently because disorder often means a broken export."
        )

    # freq is always None: candles may have gaps, and a stale freq would mislead index arithmetic.
    index = pd.DatetimeIndex(index, freq=None, name="timestamp")
    data = {c: _to_float(raw[columns[c]], c, index) for c in OHLCV}
    frame = pd.DataFrame(data, index=index, columns=list(OHLCV))
    _check_values(frame)
    return frame


# --------------------------------------------------------------------------------------------------
# Timeframes and resampling


def parse_timeframe(timeframe: str) -> tuple[str, pd.Timedelta]:
    """Canonical pandas alias and length of a fixed timeframe; "30m"-style minutes become "30min"."""
    accepted = "Use a fixed pandas offset alias such as '15min', '30m', '1h', '4h' or '1d'."
    if not isinstance(timeframe, str) or not timeframe.strip():
        raise DataError(f"Invalid timeframe {timeframe!r}. {accepted}")
    text = timeframe.strip()
    match = re.fullmatch(r"(\d+)?\s*([A-Za-z]+)", text)
    units = {
        "s": "s", "sec": "s", "secs": "s", "second": "s", "seconds": "s",
        "m": "min", "min": "min", "mins": "min", "minute": "min", "minutes": "min", "t": "min",
        "h": "h", "hr": "h", "hrs": "h", "hour": "h", "hours": "h",
        "d": "D", "day": "D", "days": "D",
    }  # fmt: skip
    if match and match.group(2) == "M":
        raise DataError(
            f"Ambiguous timeframe {timeframe!r} ('M' could mean minutes or months). Use e.g. '30min'."
        )
    if match and match.group(2).lower() in units:
        alias = f"{int(match.group(1) or 1)}{units[match.group(2).lower()]}"
    else:
        alias = text  # compound aliases such as "1h30min" go straight to pandas
    try:
        offset = pd.tseries.frequencies.to_offset(alias)
    except (ValueError, TypeError) as exc:
        raise DataError(f"Invalid timeframe {timeframe!r} ({exc}). {accepted}") from exc
    try:
        length = pd.Timedelta(offset)
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"Invalid timeframe {timeframe!r}: {offset!r} has no fixed length (weeks and months are anchored "
            f"to calendar days). {accepted} For a week use '7d'."
        ) from exc
    if length <= pd.Timedelta(0):
        raise DataError(f"Invalid timeframe {timeframe!r}: it must be longer than zero. {accepted}")
    return alias, length


def resample(frame: pd.DataFrame, length: pd.Timedelta, bar: pd.Timedelta) -> pd.DataFrame:
    """OHLCV bins of ``length``; empty bins and edge bins with too few source bars are dropped."""
    # origin="epoch" makes bin edges independent of where the (possibly days-trimmed) data starts.
    bins = frame.resample(length, label="left", closed="left", origin="epoch")
    out = bins.agg({"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"})
    counts = bins["close"].count().to_numpy()
    keep = counts > 0
    # An edge bin cut short by the start of the data (or of the days window) or by a still-forming last bar
    # would carry a wrong open/close and a partial volume, so both edges must be full. Interior bins that
    # are short because of a gap hold real data and stay.
    full = int(length // bar)
    if len(keep) and counts[-1] < full:
        keep[-1] = False
    if len(keep) and counts[0] < full:
        keep[0] = False
    out = out.loc[keep, list(OHLCV)].astype("float64")
    out.index = pd.DatetimeIndex(out.index, freq=None, name="timestamp")
    return out
