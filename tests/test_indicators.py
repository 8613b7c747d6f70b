"""Tests for features/indicators.py."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest

from features.indicators import (
    EXTENDED_NAMES,
    FEATURE_NAMES,
    FEATURE_SETS,
    compute_features,
    set_feature_names,
    warmup_bars,
)
from tests.helpers import make_candles

# ---------------------------------------------------------------------------------------------------
# Independent reference: plain Python loops over lists (None = undefined), written from the spec and
# sharing no code with the module under test.
# ---------------------------------------------------------------------------------------------------


def _window(xs: list, t: int, n: int) -> list | None:
    if t - n + 1 < 0:
        return None
    win = xs[t - n + 1 : t + 1]
    return None if any(x is None for x in win) else win


def _sma(xs: list, n: int) -> list:
    out = []
    for t in range(len(xs)):
        win = _window(xs, t, n)
        out.append(None if win is None else sum(win) / n)
    return out


def _rolling_sum(xs: list, n: int) -> list:
    out = []
    for t in range(len(xs)):
        win = _window(xs, t, n)
        out.append(None if win is None else sum(win))
    return out


def _std(xs: list, n: int, ddof: int) -> list:
    out = []
    for t in range(len(xs)):
        win = _window(xs, t, n)
        if win is None:
            out.append(None)
            continue
        mean = sum(win) / n
        out.append(math.sqrt(sum((x - mean) ** 2 for x in win) / (n - ddof)))
    return out


def _wilder_ref(xs: list, n: int) -> list:
    out: list = [None] * len(xs)
    p0 = next(i for i, x in enumerate(xs) if x is not None)
    seed = p0 + n - 1
    prev = sum(xs[p0 : seed + 1]) / n
    out[seed] = prev
    for t in range(seed + 1, len(xs)):
        prev = prev + (xs[t] - prev) / n
        out[t] = prev
    return out


def _ema_ref(xs: list, span: int, min_periods: int) -> list:
    alpha = 2.0 / (span + 1)
    out = []
    e = None
    for t, x in enumerate(xs):
        e = x if e is None else alpha * x + (1 - alpha) * e
        out.append(e if t + 1 >= min_periods else None)
    return out


def _div(a, b, when_zero: float):
    if a is None or b is None:
        return None
    return when_zero if b == 0 else a / b


def _sub(a, b):
    return None if a is None or b is None else a - b


def reference_features(frame: pd.DataFrame, feature_set: str) -> dict[str, list]:
    o, h, lo, c, v = (frame[k].tolist() for k in ("open", "high", "low", "close", "volume"))
    del o  # not used by any feature
    n = len(c)
    wilder = feature_set == "default"
    gains, losses, tr, pdm, mdm = [None], [None], [None], [None], [None]
    for i in range(1, n):
        d = c[i] - c[i - 1]
        gains.append(d if d > 0 else 0.0)
        losses.append(-d if d < 0 else 0.0)
        tr.append(max(h[i] - lo[i], abs(h[i] - c[i - 1]), abs(lo[i] - c[i - 1])))
        up, down = h[i] - h[i - 1], lo[i - 1] - lo[i]
        pdm.append(up if (up > down and up > 0) else 0.0)
        mdm.append(down if (down > up and down > 0) else 0.0)

    avg = (lambda xs: _wilder_ref(xs, 14)) if wilder else (lambda xs: _sma(xs, 14))
    g, lss = avg(gains), avg(losses)
    rsi = []
    for gi, li in zip(g, lss, strict=True):
        if gi is None:
            rsi.append(None)
        elif li == 0:
            rsi.append(50.0 if gi == 0 else 100.0)
        else:
            rsi.append(100.0 - 100.0 / (1.0 + gi / li))
    atr = avg(tr)
    smooth = (lambda xs: _wilder_ref(xs, 14)) if wilder else (lambda xs: _rolling_sum(xs, 14))
    ps, ms, ts = smooth(pdm), smooth(mdm), smooth(tr)
    pdi = [None if p is None else _div(100 * p, t, 0.0) for p, t in zip(ps, ts, strict=True)]
    mdi = [None if m is None else _div(100 * m, t, 0.0) for m, t in zip(ms, ts, strict=True)]
    dx = [None if p is None else _div(100 * abs(p - m), p + m, 0.0) for p, m in zip(pdi, mdi, strict=True)]
    adx = _wilder_ref(dx, 14) if wilder else _sma(dx, 14)

    macd = [_sub(a, b) for a, b in zip(_ema_ref(c, 12, 1), _ema_ref(c, 26, 26), strict=True)]
    ema20, ema50 = _ema_ref(c, 20, 20), _ema_ref(c, 50, 50)
    mid, sd = _sma(c, 20), _std(c, 20, 0 if wilder else 1)
    bb = []
    for t in range(n):
        if mid[t] is None:
            bb.append(None)
            continue
        lower, upper = mid[t] - 2 * sd[t], mid[t] + 2 * sd[t]
        bb.append(_div(c[t] - lower, upper - lower, 0.5))
    vr = [_div(v[t], m, 1.0) for t, m in enumerate(_sma(v, 20))]
    dh = [None if _window(h, t, 20) is None else max(_window(h, t, 20)) for t in range(n)]
    dl = [None if _window(lo, t, 20) is None else min(_window(lo, t, 20)) for t in range(n)]
    ch = [_div(_sub(c[t], dl[t]), _sub(dh[t], dl[t]), 0.5) for t in range(n)]

    out = {
        "close": list(c),
        "volume": list(v),
        "rsi_14": rsi,
        "macd": macd,
        "atr_14": atr,
        "bb_position": bb,
        "ema_20": ema20,
        "ema_50": ema50,
        "volume_ratio": vr,
        "donchian_high_20": dh,
        "donchian_low_20": dl,
        "channel_position": ch,
        "adx_14": adx,
        "plus_di_14": pdi,
        "minus_di_14": mdi,
    }
    if wilder:
        rel = lambda xs: [None if x is None else x / c[t] for t, x in enumerate(xs)]  # noqa: E731
        rel1 = lambda xs: [None if x is None else x / c[t] - 1 for t, x in enumerate(xs)]  # noqa: E731
        out["close"] = [None] + [math.log(c[t] / c[t - 1]) for t in range(1, n)]
        out["volume"] = [
            None if m is None else math.log1p(v[t] / m if m != 0 else 1.0) for t, m in enumerate(_sma(v, 50))
        ]
        out["macd"], out["atr_14"] = rel(macd), rel(atr)
        out["ema_20"], out["ema_50"] = rel1(ema20), rel1(ema50)
        out["donchian_high_20"], out["donchian_low_20"] = rel1(dh), rel1(dl)
    return out


def tiny_frame(n: int = 60) -> pd.DataFrame:
    """Deterministic, non-trivial OHLCV on a RangeIndex (features must not need a DatetimeIndex)."""
    i = np.arange(n)
    close = 100 + 5 * np.sin(i * 0.7) + 0.3 * i
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) + 0.5 + 0.25 * (i % 3)
    low = np.minimum(open_, close) - 0.4 - 0.2 * (i % 4)
    volume = 1000.0 + 150 * (i % 5) + 7 * i
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume})


@pytest.mark.parametrize("feature_set", ["default", "seed15"])
def test_matches_loop_reference_for_every_feature(feature_set: str) -> None:
    frame = tiny_frame()
    got = compute_features(frame, feature_set)
    ref = reference_features(frame, feature_set)
    assert list(got.columns) == list(FEATURE_NAMES)
    assert isinstance(got.index, pd.RangeIndex)
    for name in FEATURE_NAMES:
        expected = np.array([np.nan if x is None else x for x in ref[name]], dtype=float)
        assert np.isfinite(expected[-5:]).all(), name  # the reference really produced values
        np.testing.assert_allclose(got[name].to_numpy(), expected, rtol=1e-10, atol=1e-12, err_msg=name)


def reference_extended(frame: pd.DataFrame) -> dict[str, list]:
    """The ``extended`` set's extra columns, from the module docstring's definitions, in plain loops."""
    c, v = frame["close"].tolist(), frame["volume"].tolist()
    n = len(c)
    r = [None] + [math.log(c[t] / c[t - 1]) for t in range(1, n)]
    out: dict[str, list] = {}
    for k in (3, 12, 48):
        out[f"logret_{k}"] = [None if t < k else math.log(c[t] / c[t - k]) for t in range(n)]
    for w in (6, 12, 48):
        out[f"rvol_{w}"] = [
            None if _window(r, t, w) is None else math.sqrt(sum(x * x for x in _window(r, t, w)) / w)
            for t in range(n)
        ]
    for a, b in ((6, 48), (12, 48)):
        out[f"rvol_ratio_{a}_{b}"] = [
            _div(x, y, 1.0) for x, y in zip(out[f"rvol_{a}"], out[f"rvol_{b}"], strict=True)
        ]
    rel, z = [], []
    for t in range(n):
        win = _window(v, t, 48)
        if win is None:
            rel.append(None)
            z.append(None)
            continue
        mean = sum(win) / 48
        typical = statistics.median(win) or mean
        rel.append(math.log1p(v[t] / typical if typical != 0 else 1.0))
        sd = math.sqrt(sum((x - mean) ** 2 for x in win) / 48)
        z.append(0.0 if max(win) == min(win) else (v[t] - mean) / sd)
    out["volume_rel_48"], out["volume_z_48"] = rel, z
    for ts in frame.index:
        ts = ts.tz_convert("UTC")
        day = (ts.hour * 3600 + ts.minute * 60 + ts.second) / 86400
        out.setdefault("tod_sin", []).append(math.sin(2 * math.pi * day))
        out.setdefault("tod_cos", []).append(math.cos(2 * math.pi * day))
        out.setdefault("dow_sin", []).append(math.sin(2 * math.pi * ts.dayofweek / 7))
        out.setdefault("dow_cos", []).append(math.cos(2 * math.pi * ts.dayofweek / 7))
    return out


def timed_tiny_frame(n: int = 60) -> pd.DataFrame:
    """tiny_frame() on 30-minute open times from Sunday 21:00 UTC (so the day and the weekday turn)."""
    frame = tiny_frame(n)
    frame.index = pd.date_range("2024-03-10 21:00", periods=n, freq="30min", tz="UTC", name="timestamp")
    return frame


def test_extended_matches_default_and_a_loop_reference() -> None:
    frame = timed_tiny_frame()
    got = compute_features(frame, "extended")
    assert list(got.columns) == list(FEATURE_NAMES + EXTENDED_NAMES) == list(set_feature_names("extended"))
    assert got.index.equals(frame.index) and got.dtypes.eq("float64").all()
    pd.testing.assert_frame_equal(got[list(FEATURE_NAMES)], compute_features(frame, "default"))
    ref = reference_extended(frame)
    for name in EXTENDED_NAMES:
        expected = np.array([np.nan if x is None else x for x in ref[name]], dtype=float)
        assert np.isfinite(expected[-5:]).all(), name
        np.testing.assert_allclose(got[name].to_numpy(), expected, rtol=1e-10, atol=1e-12, err_msg=name)


def test_extended_time_encoding_hand_worked() -> None:
    """sin/cos of the bar's open time: day fraction in UTC, weekday (Monday 0) / 7."""
    stamps = ["2024-01-01 00:00", "2024-01-01 06:00", "2024-01-03 18:00", "2024-01-07 12:00"]
    frame = _flat(len(stamps))
    frame.index = pd.DatetimeIndex(stamps, tz="UTC")
    got = compute_features(frame, "extended")
    s7, c7 = math.sin(2 * math.pi / 7), math.cos(2 * math.pi / 7)
    expected = {
        # Monday midnight: both angles 0.
        "2024-01-01 00:00": (0.0, 1.0, 0.0, 1.0),
        # 06:00 is a quarter of the day.
        "2024-01-01 06:00": (1.0, 0.0, 0.0, 1.0),
        # Wednesday (2) 18:00: three quarters of the day, 4 pi / 7 of the week.
        "2024-01-03 18:00": (-1.0, 0.0, 2 * s7 * c7, c7 * c7 - s7 * s7),
        # Sunday (6) noon: half the day; 12 pi / 7 = 2 pi - 2 pi / 7.
        "2024-01-07 12:00": (0.0, -1.0, -s7, c7),
    }
    cols = ["tod_sin", "tod_cos", "dow_sin", "dow_cos"]
    for stamp, values in expected.items():
        row = got.loc[pd.Timestamp(stamp, tz="UTC"), cols].to_numpy()
        np.testing.assert_allclose(row, values, atol=1e-12, err_msg=stamp)
    # The same instants naive (= UTC) or in another time zone give the same encoding.
    naive = frame.tz_localize(None)
    tokyo = frame.tz_convert("Asia/Tokyo")
    for other in (naive, tokyo):
        np.testing.assert_array_equal(
            compute_features(other, "extended")[cols].to_numpy(), got[cols].to_numpy()
        )


def test_extended_relative_volume_hand_worked() -> None:
    frame = _flat(60)
    frame["volume"] = np.arange(1.0, 61.0)  # volume t + 1 at row t
    got = compute_features(frame, "extended")
    # Row 47: window 1..48, median 24.5, mean 24.5, population std sqrt((48^2 - 1) / 12).
    assert got["volume_rel_48"].iloc[47] == pytest.approx(math.log1p(48 / 24.5), rel=1e-12)
    assert got["volume_z_48"].iloc[47] == pytest.approx(23.5 / math.sqrt((48**2 - 1) / 12), rel=1e-12)
    # Row 59: window 13..60, median 36.5.
    assert got["volume_rel_48"].iloc[59] == pytest.approx(math.log1p(60 / 36.5), rel=1e-12)
    assert got["volume_rel_48"].iloc[:47].isna().all() and got["volume_z_48"].iloc[:47].isna().all()

    # More than half the window without trades: the median is 0 and the mean stands in.
    frame["volume"] = np.where(np.arange(60) < 50, 0.0, 10.0)  # rows 50..59 trade 10
    got = compute_features(frame, "extended")
    assert got["volume_rel_48"].iloc[49] == pytest.approx(math.log(2.0))  # all zero: ratio 1
    assert got["volume_z_48"].iloc[49] == 0.0
    assert got["volume_rel_48"].iloc[50] == pytest.approx(math.log1p(10 / (10 / 48)), rel=1e-12)
    assert got["volume_rel_48"].iloc[59] == pytest.approx(math.log1p(10 / (10 * 10 / 48)), rel=1e-12)


def test_extended_needs_open_times() -> None:
    with pytest.raises(ValueError, match=r"'extended'.*DatetimeIndex.*RangeIndex"):
        compute_features(tiny_frame(), "extended")


# Golden values from TA-Lib 0.8.2 (talib.RSI / ATR / BBANDS with timeperiod 14/14/20, nbdev 2) on
# tiny_frame(), computed once outside the project (TA-Lib is not a dependency). They pin the claim that
# the default set's Wilder RSI/ATR and ddof=0 Bollinger match TA-Lib exactly.
_TALIB_RSI = {14: 53.84437462489976, 15: 49.8904826582424, 30: 64.17823889889915, 59: 52.38862208300017}
_TALIB_ATR = {14: 3.6673643865112586, 15: 3.6744157270175064, 30: 3.551867991526158, 59: 3.689461260923863}
_TALIB_BB_POSITION = {19: 0.9342045519058848, 30: 0.900882375171574, 59: 0.5405696402221043}


def test_default_matches_talib_golden_values() -> None:
    frame = tiny_frame()
    feats = compute_features(frame, "default")
    for row, value in _TALIB_RSI.items():
        assert feats["rsi_14"].iloc[row] == pytest.approx(value, rel=1e-12), row
    for row, value in _TALIB_ATR.items():
        assert feats["atr_14"].iloc[row] * frame["close"].iloc[row] == pytest.approx(value, rel=1e-12), row
    for row, value in _TALIB_BB_POSITION.items():
        assert feats["bb_position"].iloc[row] == pytest.approx(value, rel=1e-10), row


def alternating_frame(n: int = 30) -> pd.DataFrame:
    """close +2, -1, +2, -1, ... from 10; high/low = close +- 1; volume 1..n."""
    steps = np.where(np.arange(1, n) % 2 == 1, 2.0, -1.0)
    close = np.concatenate([[10.0], 10.0 + np.cumsum(steps)])
    open_ = np.concatenate([[10.0], close[:-1]])
    return pd.DataFrame(
        {"open": open_, "high": close + 1, "low": close - 1, "close": close, "volume": np.arange(1.0, n + 1)}
    )


def test_hand_computed_values() -> None:
    # Diffs on rows 1..14: seven +2 and seven -1; TR is 3 on up bars (|high - prev close| = 2 + 1) and
    # 2 on down bars (|low - prev close| = 1 + 1); +DM = 2 on up bars, -DM = 1 on down bars.
    frame = alternating_frame()
    seed, wild = compute_features(frame, "seed15"), compute_features(frame, "default")

    # RSI row 14: avg gain 1, avg loss 0.5 -> 100 - 100/3. Row 15 (diff +2): Wilder gain 1 + (2-1)/14,
    # loss 0.5 - 0.5/14, i.e. 15/14 and 6.5/14 -> 100 * 15/21.5; the SMA window still holds 7 and 7.
    assert seed["rsi_14"].iloc[14] == pytest.approx(200 / 3)
    assert wild["rsi_14"].iloc[14] == pytest.approx(200 / 3)
    assert wild["rsi_14"].iloc[15] == pytest.approx(100 * 15 / 21.5)
    assert seed["rsi_14"].iloc[15] == pytest.approx(200 / 3)
    assert np.isnan(seed["rsi_14"].iloc[13]) and np.isnan(wild["rsi_14"].iloc[13])

    # ATR row 14: mean of seven 3s and seven 2s = 2.5; row 15 (TR 3): Wilder 2.5 + 0.5/14.
    assert seed["atr_14"].iloc[14] == pytest.approx(2.5)
    assert wild["atr_14"].iloc[14] == pytest.approx(2.5 / frame["close"].iloc[14])
    assert wild["atr_14"].iloc[15] == pytest.approx((2.5 + 0.5 / 14) / frame["close"].iloc[15])

    # DI row 14: +DM mean 1, -DM mean 0.5, TR mean 2.5 -> +DI 40, -DI 20, DX 100*20/60.
    for f in (seed, wild):
        assert f["plus_di_14"].iloc[14] == pytest.approx(40.0)
        assert f["minus_di_14"].iloc[14] == pytest.approx(20.0)
    # SMA windows always hold 7 up and 7 down bars, so DX is constant and ADX (first at row 27) = DX.
    assert seed["adx_14"].iloc[27] == pytest.approx(100 / 3)
    assert np.isnan(seed["adx_14"].iloc[26]) and np.isnan(wild["adx_14"].iloc[26])
    assert np.isfinite(wild["adx_14"].iloc[27])

    # Donchian over rows 0..19: high/low are close +- 1, so the channel is [min close - 1, max close + 1].
    closes = frame["close"].iloc[:20]
    assert seed["donchian_high_20"].iloc[19] == pytest.approx(closes.max() + 1)
    assert seed["donchian_low_20"].iloc[19] == pytest.approx(closes.min() - 1)
    assert seed["channel_position"].iloc[19] == pytest.approx(
        (closes.iloc[-1] - closes.min() + 1) / (closes.max() - closes.min() + 2)
    )
    # Volume 1..20 -> mean 10.5 at row 19; default close is the 1-bar log return.
    assert seed["volume_ratio"].iloc[19] == pytest.approx(20 / 10.5)
    assert wild["close"].iloc[1] == pytest.approx(math.log(12 / 10))
    assert np.isnan(wild["close"].iloc[0])


# ---------------------------------------------------------------------------------------------------
# Look-ahead: values at rows <= t must not depend on rows > t.
# ---------------------------------------------------------------------------------------------------

# Include the first-valid rows (14 RSI/ATR/DI seed, 19, 25 MACD, 27 ADX seed, 49) where seeds are formed.
_CUTS = (10, 14, 19, 25, 27, 30, 49, 55, 120, 300)


@pytest.fixture(scope="module")
def lookahead_runs() -> dict[tuple[str, int], tuple[pd.DataFrame, pd.DataFrame]]:
    base = make_candles(400, seed=7)
    other = make_candles(400, seed=1234, vol=0.03)
    runs = {}
    for cut in _CUTS:
        changed = base.copy()
        # Different path, price level and volume after the cut, so any peek ahead changes the value.
        changed.iloc[cut + 1 :] = other.iloc[cut + 1 :].to_numpy() * np.array([1.7, 1.7, 1.7, 1.7, 5.0])
        for fs in FEATURE_SETS:
            runs[(fs, cut)] = (compute_features(base, fs), compute_features(changed, fs))
    return runs


_TIME_NAMES = ("tod_sin", "tod_cos", "dow_sin", "dow_cos")


@pytest.mark.parametrize(
    ("feature_set", "name"), [(fs, name) for fs in FEATURE_SETS for name in set_feature_names(fs)]
)
def test_no_lookahead(lookahead_runs, feature_set: str, name: str) -> None:
    for cut in _CUTS:
        before, after = lookahead_runs[(feature_set, cut)]
        # Exact equality, NaN positions included: the computation for rows <= cut must be identical.
        np.testing.assert_array_equal(
            before[name].iloc[: cut + 1].to_numpy(), after[name].iloc[: cut + 1].to_numpy(), err_msg=f"{cut}"
        )
        tail_b, tail_a = before[name].iloc[cut + 60 :], after[name].iloc[cut + 60 :]
        if name in _TIME_NAMES:
            # A function of the row's own open time: the candles' values never move it.
            np.testing.assert_array_equal(tail_b.to_numpy(), tail_a.to_numpy())
            continue
        # The perturbation must actually be visible after the cut, or the check above proves nothing.
        assert not np.allclose(tail_b.to_numpy(), tail_a.to_numpy(), equal_nan=True)


def test_extended_on_a_truncated_history_is_the_same(candles: pd.DataFrame) -> None:
    """The data ending at t (a bot's window, a truncated file) gives the same rows <= t, time columns too."""
    full = compute_features(candles, "extended")
    for cut in (0, 2, 11, 47, 48, 49, 50, 333, len(candles) - 1):
        part = compute_features(candles.iloc[: cut + 1], "extended")
        pd.testing.assert_frame_equal(part, full.iloc[: cut + 1], check_exact=True)


# ---------------------------------------------------------------------------------------------------
# NaN only in the warm-up head, no inf, warmup_bars correct.
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("feature_set", FEATURE_SETS)
def test_nan_only_in_head_and_warmup_bars(candles: pd.DataFrame, feature_set: str) -> None:
    feats = compute_features(candles, feature_set)
    values = feats.to_numpy()
    assert feats.dtypes.eq("float64").all()
    assert feats.index.equals(candles.index)
    assert not np.isinf(values).any()
    finite_rows = np.isfinite(values).all(axis=1)
    first_finite = int(np.argmax(finite_rows))
    assert warmup_bars(feature_set) == first_finite
    assert finite_rows[first_finite:].all()  # nothing undefined after the warm-up
    assert list(feats.columns) == list(set_feature_names(feature_set))
    for name in feats.columns:
        ok = feats[name].notna().to_numpy()
        first = int(np.argmax(ok))
        assert ok[first:].all() and not ok[:first].any(), name  # NaN is a pure prefix


def test_warmup_bars_values() -> None:
    # EMA-50 (and, in default, the 50-bar volume mean) is the longest lookback: rows 0..48 are NaN.
    assert warmup_bars("default") == 49
    assert warmup_bars("seed15") == 49
    # extended keeps every window <= 48 bars, so the default's lookbacks stay the longest.
    assert warmup_bars("extended") == 49


def test_extended_first_valid_row_of_each_new_column(candles: pd.DataFrame) -> None:
    # k-bar return: row k; n 1-bar returns: row n; 48 volumes: row 47; time: row 0.
    expected = {"logret_3": 3, "logret_12": 12, "logret_48": 48, "rvol_6": 6, "rvol_12": 12, "rvol_48": 48}
    expected |= {"rvol_ratio_6_48": 48, "rvol_ratio_12_48": 48, "volume_rel_48": 47, "volume_z_48": 47}
    expected |= dict.fromkeys(_TIME_NAMES, 0)
    feats = compute_features(candles, "extended")
    assert set(expected) == set(EXTENDED_NAMES)
    for name, first in expected.items():
        assert int(np.argmax(feats[name].notna().to_numpy())) == first, name


# ---------------------------------------------------------------------------------------------------
# Degenerate inputs.
# ---------------------------------------------------------------------------------------------------


def _flat(n: int, price: float = 100.0, volume: float = 5.0) -> pd.DataFrame:
    index = pd.date_range("2024-01-01", periods=n, freq="30min", tz="UTC", name="timestamp")
    return pd.DataFrame(
        {"open": price, "high": price, "low": price, "close": price, "volume": volume}, index=index
    ).astype("float64")


@pytest.mark.parametrize("feature_set", FEATURE_SETS)
@pytest.mark.parametrize("volume", [5.0, 0.0])
def test_flat_prices_give_defined_values(feature_set: str, volume: float) -> None:
    feats = compute_features(_flat(80, volume=volume), feature_set)
    tail = feats.iloc[warmup_bars(feature_set) :]
    assert np.isfinite(tail.to_numpy()).all()
    assert (tail["rsi_14"] == 50.0).all()
    assert (tail["bb_position"] == 0.5).all()
    assert (tail["channel_position"] == 0.5).all()
    assert (tail["volume_ratio"] == 1.0).all()
    for name in ("adx_14", "plus_di_14", "minus_di_14", "atr_14", "macd"):
        assert (tail[name] == 0.0).all(), name
    if feature_set == "extended":
        for name in ("logret_3", "logret_12", "logret_48", "rvol_6", "rvol_12", "rvol_48", "volume_z_48"):
            assert (tail[name] == 0.0).all(), name
        assert (tail["rvol_ratio_6_48"] == 1.0).all() and (tail["rvol_ratio_12_48"] == 1.0).all()
        assert np.allclose(tail["volume_rel_48"], math.log(2.0))  # volume equal to its median (or all 0)


def test_rsi_only_gains_is_100() -> None:
    frame = _flat(40)
    frame["close"] = 100.0 + np.arange(40.0)
    frame["high"], frame["low"] = frame["close"] + 1, frame["close"] - 1
    for fs in FEATURE_SETS:
        assert (compute_features(frame, fs)["rsi_14"].iloc[14:] == 100.0).all()


@pytest.mark.parametrize("feature_set", FEATURE_SETS)
def test_flat_stretch_inside_random_data_drops_no_rows(feature_set: str) -> None:
    frame = make_candles(300, seed=3)
    flat_price = frame["close"].iloc[99]
    frame.iloc[100:200, :4] = flat_price  # 100 bars with no movement at all
    frame.iloc[150:170, 4] = 0.0  # and some with no volume
    feats = compute_features(frame, feature_set)
    tail = feats.iloc[warmup_bars(feature_set) :].to_numpy()
    assert np.isfinite(tail).all()
    # Deep inside the flat stretch every window is flat: the neutral values apply.
    row = feats.iloc[199]
    assert row["bb_position"] == 0.5
    assert row["channel_position"] == 0.5
    if feature_set == "seed15":
        # Simple windows have forgotten the earlier movement completely (Wilder averages only decay).
        assert row["rsi_14"] == 50.0
        assert row["atr_14"] == row["plus_di_14"] == row["minus_di_14"] == row["adx_14"] == 0.0
    assert feats["volume_ratio"].iloc[160] == 0.0  # zero volume over a non-zero mean is a real 0
    assert feats["volume_ratio"].iloc[169] == 1.0  # window 150..169 is all zero volume: neutral 1
    if feature_set == "extended":
        assert row["rvol_6"] == row["logret_48"] == 0.0  # 48 flat bars before 199: no returns at all
        assert row["rvol_ratio_6_48"] == 1.0
        assert feats["volume_rel_48"].iloc[160] == 0.0  # log1p(0 / a non-zero median)


# ---------------------------------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------------------------------


def test_unknown_feature_set_message(candles: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match=r"'nope'.*default.*seed15"):
        compute_features(candles, "nope")
    with pytest.raises(ValueError, match=r"'nope'.*default.*seed15"):
        warmup_bars("nope")


@pytest.mark.parametrize("missing", ["open", "high", "low", "close", "volume"])
def test_missing_column_message(candles: pd.DataFrame, missing: str) -> None:
    with pytest.raises(ValueError, match=rf"missing required column '{missing}'"):
        compute_features(candles.drop(columns=missing))


def test_non_positive_price_rejected(candles: pd.DataFrame) -> None:
    candles.iloc[10, candles.columns.get_loc("low")] = 0.0
    with pytest.raises(ValueError, match=r"'low' must be > 0.*2024-01-01 05:00"):
        compute_features(candles)


# ---------------------------------------------------------------------------------------------------
# Scale freedom of the default and extended sets.
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("feature_set", ["default", "extended"])
def test_default_set_is_price_scale_free(candles: pd.DataFrame, feature_set: str) -> None:
    scaled = candles.copy()
    scaled[["open", "high", "low", "close"]] *= 1000.0
    base, big = compute_features(candles, feature_set), compute_features(scaled, feature_set)
    for name in set_feature_names(feature_set):
        np.testing.assert_allclose(big[name], base[name], rtol=1e-9, atol=1e-12, err_msg=name)
    # Sanity: the same scaling does change the raw-price seed15 features, so the check has teeth.
    raw_base, raw_big = compute_features(candles, "seed15"), compute_features(scaled, "seed15")
    np.testing.assert_allclose(raw_big["close"], raw_base["close"] * 1000.0)


@pytest.mark.parametrize("feature_set", ["default", "extended"])
def test_default_set_is_volume_scale_free(candles: pd.DataFrame, feature_set: str) -> None:
    scaled = candles.copy()
    scaled["volume"] *= 1000.0
    base, big = compute_features(candles, feature_set), compute_features(scaled, feature_set)
    for name in set_feature_names(feature_set):
        np.testing.assert_allclose(big[name], base[name], rtol=1e-9, atol=1e-12, err_msg=name)
    assert not np.allclose(
        compute_features(scaled, "seed15")["volume"], compute_features(candles, "seed15")["volume"]
    )


def test_every_feature_set_is_accepted_by_the_pipeline_options() -> None:
    """``--features extended`` flows through the one config every entry point (main, tune, walkforward,
    retrain, evaluate) parses, like the other sets; an unknown one is refused naming all three."""
    from train.config import parse_args

    for feature_set in FEATURE_SETS:
        assert parse_args(["--features", feature_set]).features == feature_set
    with pytest.raises(ValueError, match=r"features must be one of \['default', 'seed15', 'extended'\]"):
        parse_args(["--features", "extendd"])
