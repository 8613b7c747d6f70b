"""Higher-timeframe context: the same indicators computed on coarser candles, aligned without look-ahead.

The old system read 4h indicators beside its 15m ones. ``compute_model_features(candles, feature_set,
"4h")`` returns the 15 base features of ``features.indicators`` followed by the same 15 indicators
computed on 4h candles, named ``ctx_4h_<name>`` (``ctx_4h_rsi_14`` ...). With ``extended`` the base
part is its 29 columns and the context part the 15 ``default`` indicators (``context_feature_set``): the
extra returns, volatilities and volume measures already span 48 base bars, and a time-of-day encoding
of a coarser bin would repeat the base row's own.

Binning
    Context candles are built exactly as ``features.data.load_candles`` resamples: bins closed and
    labelled on the left, anchored at the Unix epoch (so a 4h bin always starts at 00:00, 04:00 ...
    UTC, wherever the candles start). A leading bin that lacks some of its base candles (the data, or a
    bot's window, starts inside it) is dropped, because its open/volume would differ from the complete
    bin that training saw; so is a trailing one (it is still forming, and never visible anyway).
    Interior bins left short by a gap in the data are kept, as ``load_candles`` keeps them: they hold
    real trades, and dropping them would only lengthen the gap.

Alignment
    A base candle with open time t closes at t + bar, and its features use candles opened at <= t. A
    context bin with open time T covers base candles [T, T + ctx) and closes at T + ctx: it is complete
    once the base candle opened at T + ctx - bar has closed. Base row t therefore sees the latest
    context bin with T + ctx - bar <= t (an as-of join on that "available at" time). At 15m / 1h, rows
    00:00 .. 00:30 see the 23:00 bin and row 00:45 (closing at 01:00) sees the 00:00 bin. Across a gap
    in the data a row sees the last complete bin before it, however old (never a later one).

Rows without a complete context history are NaN, so ``min_history_bars`` candles guarantee a complete
last row wherever a window starts (see there). The whole module never imports mlflow.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pandas as pd

from features.candles import OHLCV, DataError, fmt_td, infer_bar, parse_timeframe, resample, segments
from features.indicators import FEATURE_NAMES, compute_features, set_feature_names, warmup_bars
from features.pair import PAIR_FEATURE_NAMES, PAIR_WARMUP_BARS, pair_features, pair_input
from features.primary import primary_names, primary_side
from features.primary import warmup_bars as primary_warmup

__all__ = [
    "CONTEXT_PREFIX",
    "align_to_base",
    "check_context",
    "compute_model_features",
    "context_feature_set",
    "context_features",
    "context_label",
    "context_names",
    "feature_function",
    "feature_names",
    "min_history_bars",
    "parse_context_timeframe",
    "resample_context",
]

CONTEXT_PREFIX = "ctx"


def parse_context_timeframe(context_timeframe: str | pd.Timedelta | None) -> pd.Timedelta | None:
    """Length of a context timeframe ("4h", "1d", "240min" ...); ``None`` or ``""`` means no context.

    Raises :class:`features.data.DataError` for text that is not a fixed-length timeframe.
    """
    if context_timeframe is None:
        return None
    if isinstance(context_timeframe, pd.Timedelta):
        length = context_timeframe
    elif isinstance(context_timeframe, str):
        if not context_timeframe.strip():
            return None
        try:
            length = parse_timeframe(context_timeframe)[1]
        except DataError as exc:
            raise DataError(f"context_timeframe: {exc} Or leave it empty for no context features.") from exc
    else:
        raise DataError(
            f"context_timeframe must be a string such as '4h' (or empty for none), got {context_timeframe!r}."
        )
    if length <= pd.Timedelta(0):
        raise DataError(f"context_timeframe must be longer than zero, got {context_timeframe!r}.")
    return length


def context_label(context_timeframe: str | pd.Timedelta | None) -> str:
    """Canonical short form of a context timeframe ("4h" for "4h", "240min" or "4 hours"); "" for none."""
    length = parse_context_timeframe(context_timeframe)
    return "" if length is None else fmt_td(length)


def context_names(context_timeframe: str | pd.Timedelta | None) -> list[str]:
    """The 15 context column names, e.g. ``ctx_4h_rsi_14`` (none without context).

    Every spelling of one duration gives the same names, so a model trained with "240min" serves "4h".
    """
    label = context_label(context_timeframe)
    return [f"{CONTEXT_PREFIX}_{label}_{name}" for name in FEATURE_NAMES] if label else []


def context_feature_set(feature_set: str) -> str:
    """The set computed on the context candles: the set itself, ``default`` for ``extended``."""
    warmup_bars(feature_set)  # validates the feature set
    return "default" if feature_set == "extended" else feature_set


def feature_names(
    feature_set: str = "default",
    context_timeframe: str | pd.Timedelta | None = None,
    pair: bool = False,
    primary: str = "none",
) -> list[str]:
    """Columns of :func:`compute_model_features`: the set's base names, then the context names if any,
    then with ``pair`` the second instrument's ``pair_*`` names (``features.pair``), then with a primary
    its ``primary_side`` column (``features.primary``)."""
    names = list(set_feature_names(feature_set)) + context_names(context_timeframe)
    return (names + list(PAIR_FEATURE_NAMES) if pair else names) + primary_names(primary)


def check_context(context_timeframe: str | pd.Timedelta, bar: pd.Timedelta) -> int:
    """Base candles per context bin; DataError unless the context is a whole multiple >= 2 of ``bar``."""
    length = parse_context_timeframe(context_timeframe)
    if length is None:
        raise DataError("check_context needs a context timeframe, got none.")
    bar = pd.Timedelta(bar)
    if bar <= pd.Timedelta(0):
        raise DataError(f"The candles' bar must be positive, got {bar}.")
    shown = f"context_timeframe {context_timeframe!r} ({fmt_td(length)})"
    fix = (
        f"Use a whole multiple of {fmt_td(bar)} of at least twice it (e.g. {fmt_td(2 * bar)} or "
        f"{fmt_td(8 * bar)}), or leave context_timeframe empty for no context features."
    )
    if length <= bar:
        raise DataError(
            f"{shown} is not coarser than the candles' {fmt_td(bar)} bars, so it adds no context. {fix}"
        )
    if length % bar != pd.Timedelta(0):
        raise DataError(
            f"{shown} is not a whole multiple of the candles' {fmt_td(bar)} bars, so its bins would hold "
            f"uneven numbers of candles. {fix}"
        )
    return int(length // bar)


def min_history_bars(
    feature_set: str = "default",
    context_timeframe: str | pd.Timedelta | None = None,
    bar: pd.Timedelta | None = None,
    pair: bool = False,
    primary: str = "none",
    horizon: int | None = None,
) -> int:
    """Candles a gap-free window needs so that its last row has every feature, wherever it starts.

    Without context: ``warmup_bars + 1``. With m base candles per context bin, the context set needs
    ``warmup_bars(context set) + 1`` complete bins; a window may start one bar after a bin boundary
    (losing m - 1 candles to the dropped partial bin), and the last complete bin becomes visible at its
    last base candle: ``(warmup_bars(context set) + 2) * m - 1`` candles in the worst case.
    """
    # With pair features, their own warm-up (features.pair.PAIR_WARMUP_BARS) on the same rows counts too.
    w = max(warmup_bars(feature_set), PAIR_WARMUP_BARS if pair else 0)
    w = max(w, primary_warmup(primary, horizon))  # a primary side needs horizon + 1 candles
    if parse_context_timeframe(context_timeframe) is None:
        return w + 1
    if bar is None:
        raise ValueError("min_history_bars needs the candles' bar size when a context timeframe is set")
    m = check_context(context_timeframe, bar)
    return max(w + 1, (warmup_bars(context_feature_set(feature_set)) + 2) * m - 1)


def _check_index(candles: pd.DataFrame) -> pd.DatetimeIndex:
    index = candles.index
    if not isinstance(index, pd.DatetimeIndex):
        raise DataError(
            f"Context features need candles indexed by open time (a DatetimeIndex), got "
            f"{type(index).__name__}. Load them with features.data.load_candles / normalize_candles."
        )
    if not (index.is_monotonic_increasing and index.is_unique):
        raise DataError(
            "Context features need strictly increasing, unique candle timestamps. "
            "Pass the candles through features.data.normalize_candles first."
        )
    return index


def resample_context(
    candles: pd.DataFrame, context_timeframe: str | pd.Timedelta, bar: pd.Timedelta
) -> pd.DataFrame:
    """Context candles indexed by bin open time: epoch-anchored bins, partial edge bins dropped."""
    _check_index(candles)
    m = check_context(context_timeframe, bar)
    length = pd.Timedelta(bar) * m
    if len(candles) == 0:
        return candles.loc[:, list(OHLCV)].astype("float64")
    return resample(candles.loc[:, list(OHLCV)], length, pd.Timedelta(bar))


def align_to_base(
    values: pd.DataFrame, available_at: pd.DatetimeIndex, index: pd.DatetimeIndex
) -> pd.DataFrame:
    """For each time in ``index``, the row of ``values`` with the latest ``available_at`` <= that time.

    ``values`` is one row per context bin in time order and ``available_at`` the time from which each
    row may be used; rows of ``index`` before the first available time get NaN. Vectorised as-of join.
    """
    if len(values) != len(available_at):
        raise ValueError(f"values has {len(values)} rows but available_at has {len(available_at)}")
    # One key dtype on both sides (the unit of a DatetimeIndex can differ between pandas builds).
    left = pd.DataFrame({"_at": pd.DatetimeIndex(index).as_unit("ns")})
    right = values.reset_index(drop=True).assign(_at=pd.DatetimeIndex(available_at).as_unit("ns"))
    merged = pd.merge_asof(left, right, on="_at", direction="backward", allow_exact_matches=True)
    out = merged.drop(columns="_at")
    out.index = index
    return out.loc[:, list(values.columns)].astype("float64")


def context_features(
    candles: pd.DataFrame,
    feature_set: str,
    context_timeframe: str | pd.Timedelta,
    bar: pd.Timedelta,
) -> pd.DataFrame:
    """The 15 indicators of ``context_feature_set(feature_set)`` on context candles, one row per base
    candle, each from the latest complete bin."""
    index = _check_index(candles)
    names = context_names(context_timeframe)
    bins = resample_context(candles, context_timeframe, bar)
    if len(bins) == 0:
        return pd.DataFrame(float("nan"), index=index, columns=names)
    values = compute_features(bins, context_feature_set(feature_set))
    values.columns = names
    length = parse_context_timeframe(context_timeframe)
    # A bin opened at T is complete when the base candle opened at T + ctx - bar has closed.
    available_at = bins.index + (length - pd.Timedelta(bar))
    return align_to_base(values, available_at, index)


def compute_model_features(
    candles: pd.DataFrame,
    feature_set: str = "default",
    context_timeframe: str | pd.Timedelta | None = None,
    bar: pd.Timedelta | None = None,
    pair: bool = False,
    primary: str = "none",
    horizon: int | None = None,
) -> pd.DataFrame:
    """The model's inputs: ``compute_features`` plus, with a context timeframe, its ``ctx_*`` columns,
    and with ``pair`` the ``pair_*`` features of the second instrument whose candles ride in the
    ``pair_open`` .. ``pair_volume`` columns of ``candles`` (``features.pair``).

    ``bar`` is the candles' bar size; inferred from the index when omitted (pass it for windows of
    fewer than 2 candles). Raises DataError when the context is not a whole multiple >= 2 of the bar.
    Row t uses candles opened at <= t only, like ``compute_features``, and none before a gap
    (``features.candles.segments``): after a gap the indicators start their warm-up again. With a
    ``primary`` (``features.primary``), its ``primary_side`` of label horizon ``horizon`` comes last.
    """
    if primary_names(primary):
        primary_warmup(primary, horizon)  # a missing horizon fails before any feature is computed
        assert horizon is not None
        out = compute_model_features(candles, feature_set, context_timeframe, bar, pair)
        return out.assign(**{primary_names(primary)[0]: _side(candles, bar, primary, horizon)})
    index = getattr(candles, "index", None)
    parts = []
    if isinstance(index, pd.DatetimeIndex) and len(index) >= 2 and index.is_monotonic_increasing:
        bar = infer_bar(index) if bar is None else bar
        parts = segments(index, bar)
    if len(parts) > 1:
        # No indicator window spans a gap: each gap-free stretch starts its own warm-up.
        return pd.concat(
            [_model_features(candles.iloc[p], feature_set, context_timeframe, bar, pair) for p in parts]
        )
    return _model_features(candles, feature_set, context_timeframe, bar, pair)


def _side(candles: pd.DataFrame, bar, primary: str, horizon: int) -> pd.Series:
    """The primary side, restarted after each gap like the indicators."""
    index = getattr(candles, "index", None)
    if isinstance(index, pd.DatetimeIndex) and len(index) >= 2 and index.is_monotonic_increasing:
        parts = segments(index, infer_bar(index) if bar is None else bar)
        if len(parts) > 1:
            return pd.concat([primary_side(candles["close"].iloc[p], horizon, primary) for p in parts])
    return primary_side(candles["close"], horizon, primary)


def _model_features(
    candles: pd.DataFrame,
    feature_set: str,
    context_timeframe: str | pd.Timedelta | None,
    bar,
    pair: bool = False,
) -> pd.DataFrame:
    if pair:
        extra = pair_features(candles["close"], pair_input(candles, candles.index))
        return pd.concat([_model_features(candles, feature_set, context_timeframe, bar), extra], axis=1)
    base = compute_features(candles, feature_set)
    if parse_context_timeframe(context_timeframe) is None:
        return base
    if bar is None:
        bar = infer_bar(_check_index(candles))
    return pd.concat([base, context_features(candles, feature_set, context_timeframe, bar)], axis=1)


def feature_function(
    context_timeframe: str | pd.Timedelta | None,
    bar: pd.Timedelta | None,
    pair: bool = False,
    primary: str = "none",
    horizon: int | None = None,
) -> Callable[[pd.DataFrame, str], pd.DataFrame]:
    """``compute(candles, feature_set)`` with the context fixed, as
    ``evaluation.lookahead_analysis.analyse`` takes it.

    ``bar`` is fixed too, so a truncated history of one candle (where no bar can be inferred) works.
    With ``pair`` the candles carry the second instrument's ``pair_*`` columns, truncated with them.
    With a ``primary`` its ``primary_side`` column (label horizon ``horizon``) is computed too.
    """
    if primary_names(primary):
        primary_warmup(primary, horizon)  # a missing horizon fails here, not inside the first computation
        if context_label(context_timeframe) and bar is not None:
            check_context(context_timeframe, bar)
        return functools.partial(
            compute_model_features,
            context_timeframe=context_timeframe or None,
            bar=bar,
            pair=pair,
            primary=primary,
            horizon=horizon,
        )
    if pair:
        if context_label(context_timeframe) and bar is not None:
            check_context(context_timeframe, bar)
        return functools.partial(
            compute_model_features, context_timeframe=context_timeframe or None, bar=bar, pair=True
        )
    if parse_context_timeframe(context_timeframe) is None:
        # With the bar known, the same gap rule as training and serving (a warm-up after each gap).
        return compute_features if bar is None else functools.partial(compute_model_features, bar=bar)
    if bar is not None:
        check_context(context_timeframe, bar)  # fail here, not inside the first computation
    return functools.partial(compute_model_features, context_timeframe=context_timeframe, bar=bar)
