"""Technical-indicator features computed from OHLCV candles.

Three feature sets: ``seed15`` and ``default`` share the same 15 column names (``FEATURE_NAMES``);
``extended`` is ``default`` plus ``EXTENDED_NAMES`` (``set_feature_names`` gives a set's columns):

``seed15``
    The formulas of the old system, reproduced as-is so its results can be compared: raw price levels,
    simple-moving-average RSI/ATR/ADX, Bollinger std with ddof=1.

``default``
    Scale-free (price-level features are expressed relative to the current close, volume is a log
    deviation from its own recent mean) so a model trained on one market or exchange is not fed
    inputs whose magnitude depends on the price level, and RSI/ATR/DI/ADX use Wilder smoothing as
    TA-Lib defines it.

``extended``
    The 15 ``default`` columns, then 14 more, all scale-free, with every window at most 48 bars so the
    warm-up stays the default's 49 bars (a bot needs no more history). Windows count bars, so their
    span in time follows the timeframe (48 bars: a day at 30m, eight days at 4h).

    * ``logret_3``, ``logret_12``, ``logret_48``: log(close_t / close_{t-k}), momentum over k bars
      (``close`` is already the 1-bar log return).
    * ``rvol_6``, ``rvol_12``, ``rvol_48``: realised volatility per bar, sqrt(mean of r^2) of the last n
      1-bar log returns r (not demeaned; 0 for a flat window).
    * ``rvol_ratio_6_48``, ``rvol_ratio_12_48``: short over long realised volatility (about 1 in a
      steady regime, > 1 when volatility expands; 1 when the 48-bar window is flat).
    * ``volume_rel_48``: log1p(volume / median volume of the last 48 bars, this one included); where
      that median is 0 the 48-bar mean stands in, and where both are 0 the ratio is 1 (log1p(1)).
    * ``volume_z_48``: (volume - 48-bar mean) / 48-bar std (ddof=0), 0 for a constant window; a window
      member, so bounded by sqrt(47).
    * ``tod_sin``, ``tod_cos``: sin/cos(2 pi f), f = the bar's open time of day in UTC as a fraction of
      24 h; ``dow_sin``, ``dow_cos``: sin/cos(2 pi d / 7), d = its UTC weekday (Monday 0). A bar's
      features are computed at its close, when its open time is long known: no look-ahead. These need
      the candles indexed by open time (a DatetimeIndex; naive means UTC).

Every value at row t uses rows <= t only; rows without enough history are NaN (never backfilled), so the
leading ``warmup_bars(feature_set)`` rows are NaN and everything after is finite for finite candles.
Degenerate denominators (flat prices, zero volume) map to a defined neutral value instead of NaN/inf so
a flat stretch does not punch holes into the data set.

Checked against TA-Lib 0.8.2: RSI, ATR and the Bollinger bands of the ``default`` set agree to float
precision (pinned by golden values in tests/test_indicators.py). Deliberate differences from TA-Lib:

* PLUS_DI / MINUS_DI: TA-Lib seeds the running DM and TR sums with the sum of the first ``period - 1``
  values and applies one Wilder update on bar ``period``. Here all three (+DM, -DM, TR) use the same
  Wilder smoothing as ATR: the seed is the simple mean of the first ``period`` values (bars 1..14), so
  the first DI value (bar 14) and everything after differ slightly from TA-Lib; the difference decays
  geometrically (factor 13/14 per bar). The first valid bar is the same (14).
* ADX: Wilder smoothing of DX seeded with the mean of the first 14 DX values, as TA-Lib does; its DX
  inputs inherit the DI difference above. First valid bar 27, as in TA-Lib.
* MACD: EMA12 - EMA26 via pandas ``ewm(span, adjust=False)`` started at the first close, not TA-Lib's
  SMA-seeded EMAs, and it is the MACD line only (no signal/histogram), divided by close. First valid
  bar 25 (TA-Lib MACD reports from bar 33 because it also waits for the signal line).
* EMA 20/50: same pandas ``ewm`` convention as MACD (TA-Lib seeds EMA with an SMA); the difference
  decays with the EMA's own factor.

Not TA-Lib indicators, so our own definitions: bb_position (position within TA-Lib-style ddof=0
bands), channel_position, volume_ratio, and the default volume feature, ``log1p(volume / 50-bar mean
volume)``: exactly scale-free, finite for zero volume, and 1 (log1p(1)) when the whole window is zero.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FEATURE_NAMES: tuple[str, ...] = (
    "close",
    "volume",
    "rsi_14",
    "macd",
    "atr_14",
    "bb_position",
    "ema_20",
    "ema_50",
    "volume_ratio",
    "donchian_high_20",
    "donchian_low_20",
    "channel_position",
    "adx_14",
    "plus_di_14",
    "minus_di_14",
)

# The columns ``extended`` adds after the 15 ``default`` ones (see the module docstring).
EXTENDED_NAMES: tuple[str, ...] = (
    "logret_3",
    "logret_12",
    "logret_48",
    "rvol_6",
    "rvol_12",
    "rvol_48",
    "rvol_ratio_6_48",
    "rvol_ratio_12_48",
    "volume_rel_48",
    "volume_z_48",
    "tod_sin",
    "tod_cos",
    "dow_sin",
    "dow_cos",
)

FEATURE_SETS: tuple[str, ...] = ("default", "seed15", "extended")

REQUIRED_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")

_RSI_PERIOD = 14
_ATR_PERIOD = 14
_ADX_PERIOD = 14
_BB_PERIOD = 20
_BB_K = 2.0
_DONCHIAN_PERIOD = 20
_VOLUME_RATIO_PERIOD = 20
_VOLUME_LOG_PERIOD = 50
_MACD_FAST, _MACD_SLOW = 12, 26
_RETURN_HORIZONS = (3, 12, 48)
_RVOL_WINDOWS = (6, 12, 48)
_RVOL_RATIOS = ((6, 48), (12, 48))
_VOLUME_REL_PERIOD = 48

# Index of the first non-NaN row of each feature, per set. These follow from the lookbacks above
# (row 0 has no previous close, so diff-based series start at row 1); tests check them against the
# actual output, and warmup_bars() is their maximum.
_FIRST_VALID: dict[str, dict[str, int]] = {
    "seed15": {
        "close": 0,
        "volume": 0,
        "rsi_14": _RSI_PERIOD,
        "macd": _MACD_SLOW - 1,
        "atr_14": _ATR_PERIOD,
        "bb_position": _BB_PERIOD - 1,
        "ema_20": 20 - 1,
        "ema_50": 50 - 1,
        "volume_ratio": _VOLUME_RATIO_PERIOD - 1,
        "donchian_high_20": _DONCHIAN_PERIOD - 1,
        "donchian_low_20": _DONCHIAN_PERIOD - 1,
        "channel_position": _DONCHIAN_PERIOD - 1,
        "adx_14": 2 * _ADX_PERIOD - 1,
        "plus_di_14": _ADX_PERIOD,
        "minus_di_14": _ADX_PERIOD,
    },
}
_FIRST_VALID["default"] = {**_FIRST_VALID["seed15"], "close": 1, "volume": _VOLUME_LOG_PERIOD - 1}
# A k-bar return needs row t - k; n 1-bar returns start at row n (row 0 has none); a volume window of n
# starts at row n - 1; the time encoding needs only the row's own timestamp.
_FIRST_VALID["extended"] = {
    **_FIRST_VALID["default"],
    **{f"logret_{k}": k for k in _RETURN_HORIZONS},
    **{f"rvol_{n}": n for n in _RVOL_WINDOWS},
    **{f"rvol_ratio_{a}_{b}": max(a, b) for a, b in _RVOL_RATIOS},
    f"volume_rel_{_VOLUME_REL_PERIOD}": _VOLUME_REL_PERIOD - 1,
    f"volume_z_{_VOLUME_REL_PERIOD}": _VOLUME_REL_PERIOD - 1,
    **{name: 0 for name in ("tod_sin", "tod_cos", "dow_sin", "dow_cos")},
}
assert tuple(_FIRST_VALID["extended"]) == FEATURE_NAMES + EXTENDED_NAMES


def _check_feature_set(feature_set: str) -> None:
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature_set {feature_set!r}; valid feature sets are {list(FEATURE_SETS)}")


def set_feature_names(feature_set: str) -> tuple[str, ...]:
    """The columns ``compute_features(candles, feature_set)`` returns, in order."""
    _check_feature_set(feature_set)
    return FEATURE_NAMES + EXTENDED_NAMES if feature_set == "extended" else FEATURE_NAMES


def warmup_bars(feature_set: str) -> int:
    """Number of leading rows that are NaN in ``compute_features`` output (the longest lookback).

    A caller must send at least this many bars of history before the first bar it wants features for.
    """
    _check_feature_set(feature_set)
    return max(_FIRST_VALID[feature_set].values())


# The computations below work on plain float64 numpy arrays: a bot's predict computes every feature on each
# call, and for a few hundred candles pandas' per-operation overhead would cost more than the arithmetic.
# Each step is the same floating-point operation, in the same order, as its pandas formulation (noted where
# it is not obvious), so the values are bit-for-bit those of pandas; pandas still computes what has no exact
# numpy twin (rolling means, std and median, exponentially weighted means).


def _series(x: np.ndarray) -> pd.Series:
    return pd.Series(x, copy=False)


def _diff(x: np.ndarray, k: int = 1) -> np.ndarray:
    """``x_t - x_{t-k}`` (pandas ``diff``); NaN for the first ``k`` rows."""
    out = np.full(len(x), np.nan)
    out[k:] = x[k:] - x[:-k]
    return out


def _shift(x: np.ndarray) -> np.ndarray:
    """``x_{t-1}`` (pandas ``shift(1)``); NaN on row 0."""
    out = np.full(len(x), np.nan)
    out[1:] = x[:-1]
    return out


def _rolling_mean(x: np.ndarray, n: int) -> np.ndarray:
    return _series(x).rolling(n).mean().to_numpy()


def _sma_nonneg(x: np.ndarray, period: int) -> np.ndarray:
    """Rolling mean of a non-negative series, exactly 0 when the whole window is 0.

    pandas' online rolling aggregations are only exact for constant windows by a special case (which
    its rolling std does not always hit, see bb_position); a residue like 1e-16 in a flat stretch would
    turn "no gains, no losses" (RSI 50) into "only gains" (RSI 100), so zero is made explicit.
    """
    # A window holding a NaN has a NaN max (pandas: too few observations), never 0: the mean stays NaN.
    return np.where(_window_reduce(x, period, np.max) == 0, 0.0, _rolling_mean(x, period))


def _nanmean(x: np.ndarray) -> float:
    """pandas' ``Series.mean()`` (skipna): the sum with NaN as 0, over the count of the others."""
    missing = np.isnan(x)
    count = float(len(x) - missing.sum())
    total = np.where(missing, 0.0, x).sum() if missing.any() else x.sum()
    return float(total / count) if count > 0 else np.nan


def _wilder(x: np.ndarray, period: int) -> np.ndarray:
    """Wilder smoothing as TA-Lib defines it, vectorised.

    The first output is the simple mean of the first ``period`` valid values of ``x`` (at the position
    of the last of them); after that s_t = s_{t-1} + (x_t - s_{t-1}) / period, which is exactly
    ``ewm(alpha=1/period, adjust=False)`` started from the seed. Earlier positions are NaN.
    """
    valid = ~np.isnan(x)
    out = np.full(len(x), np.nan)
    if not valid.any():
        return out
    # The first valid position depends only on rows up to itself, so this stays causal.
    seed_pos = int(np.argmax(valid)) + period - 1
    if seed_pos >= len(x):
        return out
    seeded = x.copy()
    seeded[:seed_pos] = np.nan
    seeded[seed_pos] = _nanmean(x[seed_pos - period + 1 : seed_pos + 1])
    # Leading NaNs are skipped by ewm(adjust=False): the recursion starts at the seed value.
    return _series(seeded).ewm(alpha=1.0 / period, adjust=False).mean().to_numpy()


def _true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """max(high-low, |high-prev close|, |low-prev close|); NaN on row 0 where there is no prev close."""
    prev_close = _shift(close)
    # fmax skips a NaN operand, as pandas' row-wise max does.
    tr = np.fmax(np.fmax(high - low, np.abs(high - prev_close)), np.abs(low - prev_close))
    return np.where(np.isnan(prev_close), np.nan, tr)


def _directional_movement(high: np.ndarray, low: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """+DM and -DM per Wilder; NaN on row 0 (np.where would otherwise turn the NaN diff into 0)."""
    up = _diff(high)
    down = -_diff(low)
    plus_dm = np.where(np.isnan(up), np.nan, np.where((up > down) & (up > 0), up, 0.0))
    minus_dm = np.where(np.isnan(down), np.nan, np.where((down > up) & (down > 0), down, 0.0))
    return plus_dm, minus_dm


def _rsi_from_averages(avg_gain: np.ndarray, avg_loss: np.ndarray) -> np.ndarray:
    # 100 - 100/(1+G/L) == 100*G/(G+L): this form needs no special case for L == 0 (-> 100) and
    # only G == L == 0 (no movement at all) needs the neutral 50.
    return _ratio(100.0 * avg_gain, avg_gain + avg_loss, 50.0)


def _dx(plus_di: np.ndarray, minus_di: np.ndarray) -> np.ndarray:
    return _ratio(100.0 * np.abs(plus_di - minus_di), plus_di + minus_di, 0.0)


def _validate_candles(candles: pd.DataFrame) -> dict[str, np.ndarray]:
    """The candle columns as float64 arrays (``REQUIRED_COLUMNS``), after checking them."""
    if not isinstance(candles, pd.DataFrame):
        raise TypeError(f"candles must be a pandas DataFrame, got {type(candles).__name__}")
    for col in REQUIRED_COLUMNS:
        if col not in candles.columns:
            raise ValueError(
                f"candles is missing required column {col!r}; need columns {list(REQUIRED_COLUMNS)}, "
                f"got {list(candles.columns)}"
            )
    frame = candles.loc[:, list(REQUIRED_COLUMNS)].astype("float64")
    columns = {col: frame[col].to_numpy() for col in REQUIRED_COLUMNS}
    # Non-positive prices would turn the log return and the /close ratios into +-inf.
    for col in ("open", "high", "low", "close"):
        bad = columns[col] <= 0
        if bad.any():
            first_bad = frame.index[bad.argmax()]
            raise ValueError(f"candles column {col!r} must be > 0; first bad row {first_bad}")
    bad = columns["volume"] < 0
    if bad.any():
        raise ValueError(f"candles column 'volume' must be >= 0; first bad row {frame.index[bad.argmax()]}")
    return columns


def _utc_open_times(candles: pd.DataFrame) -> pd.DatetimeIndex:
    index = candles.index
    if not isinstance(index, pd.DatetimeIndex):
        raise ValueError(
            "feature_set 'extended' encodes the time of day and day of week, so candles must be indexed "
            f"by open time (a DatetimeIndex; naive means UTC), got {type(index).__name__}"
        )
    return index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")


def _window_reduce(x: np.ndarray, n: int, reduce) -> np.ndarray:
    """``reduce`` over each window of the last ``n`` values (row t: rows t-n+1 .. t); NaN before row n-1.

    Each window is reduced on its own (a strided view, no copy), so unlike an online rolling sum there is
    no residue: a window of zeros sums to exactly 0, and row t never depends on rows after it. A window
    holding a NaN gives NaN.
    """
    out = np.full(len(x), np.nan)
    if len(x) >= n:
        out[n - 1 :] = reduce(np.lib.stride_tricks.sliding_window_view(x, n), axis=1)
    return out


def _ratio(num: np.ndarray, den: np.ndarray, when_zero: float) -> np.ndarray:
    """num / den with ``when_zero`` where den == 0; NaN inputs stay NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    return np.where((den == 0) & ~np.isnan(num), when_zero, out)


def _extended_columns(candles: pd.DataFrame, close: np.ndarray, volume: np.ndarray) -> dict[str, np.ndarray]:
    """The ``EXTENDED_NAMES`` columns (see the module docstring); row t uses rows <= t only.

    Plain numpy on whole arrays; only the rolling median and std use pandas.
    """
    open_times = _utc_open_times(candles)
    out: dict[str, np.ndarray] = {}
    log_close = np.log(close)
    n_rows = len(log_close)
    for k in _RETURN_HORIZONS:
        ret = np.full(n_rows, np.nan)
        ret[k:] = log_close[k:] - log_close[:-k]
        out[f"logret_{k}"] = ret
    log_ret = np.concatenate([[np.nan], np.diff(log_close)])
    squared = log_ret * log_ret
    rvol = {n: np.sqrt(_window_reduce(squared, n, np.mean)) for n in _RVOL_WINDOWS}
    for n in _RVOL_WINDOWS:
        out[f"rvol_{n}"] = rvol[n]
    for a, b in _RVOL_RATIOS:
        # The long window holds the short one, so a flat long window means a flat short one: neutral 1.
        out[f"rvol_ratio_{a}_{b}"] = _ratio(rvol[a], rvol[b], 1.0)

    n = _VOLUME_REL_PERIOD
    v = volume
    mean = _window_reduce(v, n, np.mean)
    median = _series(v).rolling(n).median().to_numpy()
    typical = np.where(median != 0, median, mean)  # over half the window without trades: the mean
    out[f"volume_rel_{n}"] = np.log1p(_ratio(v, typical, 1.0))
    # max == min detects a constant window exactly (an online rolling std can leave a residue there).
    flat = _window_reduce(v, n, np.max) == _window_reduce(v, n, np.min)
    std = np.where(flat, 0.0, _series(v).rolling(n).std(ddof=0).to_numpy())
    out[f"volume_z_{n}"] = _ratio(v - mean, std, 0.0)

    # The bar's open time is known when the bar closes, which is when its features are computed.
    seconds = open_times.hour * 3600 + open_times.minute * 60 + open_times.second
    day_angle = 2.0 * np.pi * np.asarray(seconds, dtype="float64") / 86400.0
    week_angle = 2.0 * np.pi * np.asarray(open_times.dayofweek, dtype="float64") / 7.0
    out["tod_sin"], out["tod_cos"] = np.sin(day_angle), np.cos(day_angle)
    out["dow_sin"], out["dow_cos"] = np.sin(week_angle), np.cos(week_angle)
    return out


def compute_features(candles: pd.DataFrame, feature_set: str = "default") -> pd.DataFrame:
    """Compute the ``set_feature_names(feature_set)`` columns (float64, same index as ``candles``).

    ``candles`` needs float columns open, high, low, close, volume; any index (datetime or not) for
    ``default`` and ``seed15``, a DatetimeIndex of open times for ``extended``.
    Row t uses rows <= t only; the first ``warmup_bars(feature_set)`` rows contain NaN.
    """
    _check_feature_set(feature_set)
    c = _validate_candles(candles)
    high, low, close, volume = c["high"], c["low"], c["close"], c["volume"]
    wilder = feature_set in ("default", "extended")
    columns = {
        "close": close,
        "volume": volume,
        **_strength(high, low, close, wilder),
        **_averages(close),
        "bb_position": _bb_position(close, wilder),
        "volume_ratio": _ratio(volume, _sma_nonneg(volume, _VOLUME_RATIO_PERIOD), 1.0),
        **_donchian(high, low, close),
    }
    if wilder:
        columns |= _scale_free(columns, close, volume)
    if feature_set == "extended":
        columns |= _extended_columns(candles, close, volume)
    names = list(set_feature_names(feature_set))
    values = np.empty((len(close), len(names)))
    for i, name in enumerate(names):
        values[:, i] = columns[name]
    return pd.DataFrame(values, index=candles.index, columns=names)


def _strength(high: np.ndarray, low: np.ndarray, close: np.ndarray, wilder: bool) -> dict[str, np.ndarray]:
    """RSI, ATR, +DI/-DI and ADX: Wilder smoothing (TA-Lib's definitions) or, for ``seed15``, simple
    moving averages."""
    delta = _diff(close)
    # pandas' clip(lower=0.0): x where x >= 0 or NaN (so the row-0 NaN stays), else 0.
    gains = np.where(np.isnan(delta) | (delta >= 0.0), delta, 0.0)
    neg = -delta
    losses = np.where(np.isnan(neg) | (neg >= 0.0), neg, 0.0)
    tr = _true_range(high, low, close)
    plus_dm, minus_dm = _directional_movement(high, low)
    smooth = (lambda x, n: _wilder(x, n)) if wilder else (lambda x, n: _sma_nonneg(x, n))
    avg_gain, avg_loss = smooth(gains, _RSI_PERIOD), smooth(losses, _RSI_PERIOD)
    # Ratios of Wilder averages equal TA-Lib's ratios of Wilder sums (the factor `period` cancels); DI
    # is a ratio of 14-bar sums, and for seed15 the ratio of 14-bar means is the same number.
    tr_s, plus_s, minus_s = (smooth(s, _ADX_PERIOD) for s in (tr, plus_dm, minus_dm))
    atr = tr_s if _ATR_PERIOD == _ADX_PERIOD else smooth(tr, _ATR_PERIOD)  # the same smoothing of tr
    plus_di = _ratio(100.0 * plus_s, tr_s, 0.0)
    minus_di = _ratio(100.0 * minus_s, tr_s, 0.0)
    dx = _dx(plus_di, minus_di)
    return {
        "rsi_14": _rsi_from_averages(avg_gain, avg_loss),
        "atr_14": atr,
        "adx_14": smooth(dx, _ADX_PERIOD),
        "plus_di_14": plus_di,
        "minus_di_14": minus_di,
    }


def _ewm(x: np.ndarray, span: int, min_periods: int = 0) -> np.ndarray:
    return _series(x).ewm(span=span, adjust=False, min_periods=min_periods).mean().to_numpy()


def _averages(close: np.ndarray) -> dict[str, np.ndarray]:
    """The MACD line and the 20- and 50-bar EMAs (pandas ``ewm``, started at the first close)."""
    ema_fast = _ewm(close, _MACD_FAST)
    ema_slow = _ewm(close, _MACD_SLOW, min_periods=_MACD_SLOW)
    return {
        "macd": ema_fast - ema_slow,
        "ema_20": _ewm(close, 20, min_periods=20),
        "ema_50": _ewm(close, 50, min_periods=50),
    }


def _bb_position(close: np.ndarray, wilder: bool) -> np.ndarray:
    """Position of the close within the Bollinger bands (std ddof=0 as TA-Lib; ddof=1 for ``seed15``)."""
    rolling = _series(close).rolling(_BB_PERIOD)
    bb_mid = rolling.mean().to_numpy()
    bb_std = rolling.std(ddof=0 if wilder else 1).to_numpy()
    # The online rolling std of a constant window can come out as ~1e-6 instead of 0, which would make
    # the position of a flat window numerical noise; max == min detects a flat window exactly.
    flat = _window_reduce(close, _BB_PERIOD, np.max) == _window_reduce(close, _BB_PERIOD, np.min)
    bb_std = np.where(flat, 0.0, bb_std)
    bb_lower = bb_mid - _BB_K * bb_std
    # (upper - lower) == 2 * k * std; a flat window has zero width -> the middle of the band.
    return _ratio(close - bb_lower, 2.0 * _BB_K * bb_std, 0.5)


def _donchian(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> dict[str, np.ndarray]:
    """The Donchian channel's high and low and the close's position within it."""
    # A window holding a NaN gives NaN, as pandas' rolling max/min (too few observations) does.
    dc_high = _window_reduce(high, _DONCHIAN_PERIOD, np.max)
    dc_low = _window_reduce(low, _DONCHIAN_PERIOD, np.min)
    return {
        "donchian_high_20": dc_high,
        "donchian_low_20": dc_low,
        "channel_position": _ratio(close - dc_low, dc_high - dc_low, 0.5),
    }


def _scale_free(
    columns: dict[str, np.ndarray], close: np.ndarray, volume: np.ndarray
) -> dict[str, np.ndarray]:
    """The ``default`` set's versions of the price-level columns: relative to the close, the close as its
    1-bar log return, and volume as a log ratio to its own 50-bar mean."""
    return {
        "close": np.log(close / _shift(close)),
        # A ratio to its own 50-bar mean makes volume exactly scale-free; log1p keeps zero volume finite.
        "volume": np.log1p(_ratio(volume, _sma_nonneg(volume, _VOLUME_LOG_PERIOD), 1.0)),
        "macd": columns["macd"] / close,
        "atr_14": columns["atr_14"] / close,
        "ema_20": columns["ema_20"] / close - 1.0,
        "ema_50": columns["ema_50"] / close - 1.0,
        "donchian_high_20": columns["donchian_high_20"] / close - 1.0,
        "donchian_low_20": columns["donchian_low_20"] / close - 1.0,
    }
