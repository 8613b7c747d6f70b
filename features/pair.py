"""Features of a second instrument (e.g. ETH/BTC beside BTC/USDT), aligned without look-ahead.

FreqAI's "correlated pairs" idea: the model also sees what a related market did. ``pair_data`` names a
second candle source (anything ``features.data.load_candles`` accepts, loaded with the same
``timeframe``); :func:`align_pair` puts its candles on the base candles' rows as the columns
``pair_open`` .. ``pair_volume`` (``PAIR_INPUT_COLUMNS``), and :func:`pair_features` turns them into the
``PAIR_FEATURE_NAMES`` columns:

* ``pair_ret_1``, ``pair_ret_6``, ``pair_ret_24``: log(pair close_t / pair close_{t-k});
* ``pair_rvol_24``: standard deviation of the pair's last 24 one-bar log returns;
* ``pair_volume_rel_48``: log1p(pair volume / its 48-bar median, this bar included); 1 where the median is 0;
* ``pair_corr_48``: correlation of the two instruments' last 48 one-bar log returns (0 when either is
  flat over the window);
* ``pair_rel_strength_6``: base 6-bar log return minus the pair's.

Alignment (no look-ahead)
    Base row t (the candle opened at t, closing at t + bar) takes the pair candle opened in (t - bar, t]:
    an as-of join on open time, backward, so never a pair candle that opened after t. Both must have the
    same bar size (else :class:`DataError`).

Staleness rule
    Where a base row has no pair candle of its own, the previous row's pair candle is repeated for **one**
    bar only (its close repeated, so ``pair_ret_1`` is 0 there). Two or more missing pair candles in a
    row leave the pair columns NaN from the second one on, and every pair window that contains such a
    row is NaN too: those rows have no features, so training drops them and the served model marks them
    not ready until 48 fresh pair bars exist again. The same rule runs in training and serving
    (:func:`pair_features` applies it to NaN ``pair_*`` values it is given), so a bot sends NaN (or
    nothing) where it has no pair candle and gets exactly what training saw.

Every value at row t uses rows <= t of both instruments. The module never imports mlflow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.candles import OHLCV, DataError, check_bar_sizes, fmt_td, infer_bar

__all__ = [
    "PAIR_FEATURE_NAMES",
    "PAIR_INPUT_COLUMNS",
    "PAIR_WARMUP_BARS",
    "align_pair",
    "load_pair",
    "pair_features",
]

PAIR_PREFIX = "pair"
PAIR_INPUT_COLUMNS = tuple(f"{PAIR_PREFIX}_{c}" for c in OHLCV)
PAIR_FEATURE_NAMES = (
    "pair_ret_1",
    "pair_ret_6",
    "pair_ret_24",
    "pair_rvol_24",
    "pair_volume_rel_48",
    "pair_corr_48",
    "pair_rel_strength_6",
)
# The longest window: 48 one-bar returns need 49 rows, so row 48 (0-based) is the first complete one.
PAIR_WARMUP_BARS = 48
# A missing pair candle is bridged by the previous one for at most this many rows (the staleness rule).
STALE_BARS = 1


def load_pair(pair_data: str, timeframe: str | None, bar: pd.Timedelta) -> pd.DataFrame:
    """The second instrument's candles from ``pair_data`` (any ``load_candles`` source), at ``timeframe``.

    All its history is loaded (``days`` is the base data's window; the alignment keeps what it needs).
    Raises :class:`DataError` naming ``pair_data`` and what to do.
    """
    from features.data import load_candles  # features.data imports the exchange code: only when needed

    try:
        candles, _ = load_candles(pair_data, timeframe)
    except DataError as exc:
        raise DataError(
            f"pair_data {pair_data!r} could not be loaded: {exc} Point pair_data at the second instrument's "
            "candles (a .csv/.csv.gz/.parquet file or another source `data` accepts), or leave it empty for "
            "no pair features."
        ) from exc
    check_pair_bar(candles.index, bar, f"pair_data {pair_data!r}")
    return candles


def check_pair_bar(index: pd.DatetimeIndex, bar: pd.Timedelta, what: str) -> None:
    """DataError unless ``index`` (the pair candles' open times) has bars of size ``bar``."""
    if len(index) < 2:
        raise DataError(f"{what} has {len(index)} candle(s); at least 2 are needed.")
    pair_bar = infer_bar(index)
    if pair_bar != pd.Timedelta(bar):
        raise DataError(
            f"{what} has {fmt_td(pair_bar)} bars but the base data has {fmt_td(bar)} bars; both instruments "
            f"must have the same bar size. Resample the pair candles to {fmt_td(bar)} (or set timeframe)."
        )
    check_bar_sizes(index, pair_bar)


def align_pair(candles: pd.DataFrame, pair: pd.DataFrame, bar: pd.Timedelta) -> pd.DataFrame:
    """``candles`` plus the columns ``pair_open`` .. ``pair_volume``: for base row t the pair candle
    opened in (t - bar, t] (as-of join on open time, backward), NaN where there is none."""
    bar = pd.Timedelta(bar)
    index = candles.index
    if not isinstance(pair.index, pd.DatetimeIndex) or not (
        pair.index.is_monotonic_increasing and pair.index.is_unique
    ):
        raise DataError("The pair candles need sorted, unique open times; load them with load_candles.")
    check_pair_bar(pair.index, bar, "the pair candles")
    left = pd.DataFrame({"_at": pd.DatetimeIndex(index).tz_convert("UTC").as_unit("ns")})
    right = pair.loc[:, list(OHLCV)].astype("float64").set_axis(list(PAIR_INPUT_COLUMNS), axis=1)
    right = right.reset_index(drop=True).assign(
        _at=pd.DatetimeIndex(pair.index).tz_convert("UTC").as_unit("ns")
    )
    # Tolerance one nanosecond short of a bar: the pair candle of this bar, never an older one.
    merged = pd.merge_asof(left, right, on="_at", direction="backward", tolerance=bar - pd.Timedelta(1, "ns"))
    if merged[list(PAIR_INPUT_COLUMNS)].isna().all().all():
        raise DataError(
            f"pair_data has no candle within the base data's time range ({index[0]} .. {index[-1]}); "
            "use pair candles covering the same period."
        )
    out = candles.copy()
    for col in PAIR_INPUT_COLUMNS:
        out[col] = merged[col].to_numpy()
    return out


def pair_input(frame: pd.DataFrame, index: pd.Index) -> pd.DataFrame:
    """The ``pair_*`` columns of ``frame`` as float64 on ``index``; DataError naming missing or bad ones.
    NaN (no pair candle for that row) is allowed; prices must be > 0 and volume >= 0 otherwise."""
    missing = [c for c in PAIR_INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"Missing column(s): {', '.join(missing)}. This model was trained with a second instrument's "
            f"features: send its candles for the same timestamps in the columns "
            f"{', '.join(PAIR_INPUT_COLUMNS)} (NaN where it has no candle)."
        )
    out = {}
    for col in PAIR_INPUT_COLUMNS:
        column = frame[col]
        if pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype):
            out[col] = column.to_numpy(dtype="float64", na_value=np.nan)  # the usual case: fast
            continue
        raw = pd.Series(np.asarray(column), dtype=object)
        values = pd.to_numeric(raw, errors="coerce")
        bad = raw.notna() & values.isna()
        if bad.any():
            raise DataError(f"Column {col!r} has {int(bad.sum())} value(s) that are not numbers.")
        out[col] = values.to_numpy(dtype="float64")
    values = np.column_stack([out[c] for c in PAIR_INPUT_COLUMNS])
    if (values[:, :4] <= 0).any() or (values[:, 4] < 0).any() or np.isinf(values).any():
        raise DataError("pair_* candles need prices > 0 and volume >= 0 (NaN where the pair has no candle).")
    return pd.DataFrame(values, index=index, columns=list(PAIR_INPUT_COLUMNS))


def pair_features(close: pd.Series, pair: pd.DataFrame) -> pd.DataFrame:
    """The ``PAIR_FEATURE_NAMES`` columns for one gap-free stretch: ``close`` the base closes, ``pair``
    its ``pair_*`` columns on the same rows (NaN where the pair has no candle). Row t uses rows <= t."""
    # A row whose pair candle is incomplete counts as missing; then the staleness rule (module docstring).
    values = pair.loc[:, list(PAIR_INPUT_COLUMNS)].to_numpy(dtype="float64", copy=True)
    values[np.isnan(values).any(axis=1)] = np.nan
    filled = pd.DataFrame(values[:, 3:5], index=close.index, columns=["c", "v"]).ffill(limit=STALE_BARS)
    p_close, p_volume = filled["c"], filled["v"]
    p_log = np.log(p_close)
    b_log = np.log(close.astype("float64"))
    p_r1 = p_log.diff()
    b_r1 = b_log.diff()
    median = p_volume.rolling(48, min_periods=48).median()
    ratio = (p_volume / median.where(median != 0)).mask((median == 0) & p_volume.notna(), 1.0)
    corr = b_r1.rolling(48, min_periods=48).corr(p_r1)
    complete = (b_r1 + p_r1).rolling(48).count() == 48
    # A flat window has no correlation (0); rolling sums' rounding may step just outside [-1, 1].
    corr = corr.where(np.isfinite(corr), 0.0).clip(-1.0, 1.0).where(complete)
    p_r6 = p_log.diff(6)
    out = pd.DataFrame(
        {
            "pair_ret_1": p_r1,
            "pair_ret_6": p_r6,
            "pair_ret_24": p_log.diff(24),
            "pair_rvol_24": p_r1.rolling(24, min_periods=24).std(),
            "pair_volume_rel_48": np.log1p(ratio),
            "pair_corr_48": corr,
            "pair_rel_strength_6": b_log.diff(6) - p_r6,
        },
        index=close.index,
    )
    return out.astype("float64")
