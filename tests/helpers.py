"""Synthetic candle generator shared by the tests (importable as ``tests.helpers``)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def make_candles(
    n: int,
    seed: int = 7,
    start: str = "2024-01-01",
    freq: str = "30min",
    drift: float = 0.0,
    vol: float = 0.01,
) -> pd.DataFrame:
    """Seeded OHLCV frame in the features/data.py convention (UTC DatetimeIndex named "timestamp").

    close is a geometric random walk, open is the previous close, high/low enclose open and close with
    a random wick, volume is positive (lognormal, large so that log1p(volume) ~ log(volume)).
    """
    rng = np.random.default_rng(seed)
    log_ret = drift + vol * rng.standard_normal(n)
    close = 100.0 * np.exp(np.cumsum(log_ret))
    open_ = np.concatenate([[100.0], close[:-1]])
    wick_hi = np.abs(rng.standard_normal(n)) * vol * 0.5
    wick_lo = np.abs(rng.standard_normal(n)) * vol * 0.5
    high = np.maximum(open_, close) * (1.0 + wick_hi)
    low = np.minimum(open_, close) * (1.0 - wick_lo)
    volume = rng.lognormal(mean=12.0, sigma=0.5, size=n)
    index = pd.date_range(start=start, periods=n, freq=freq, tz="UTC", name="timestamp")
    return pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume},
        index=index,
        dtype="float64",
    )
