"""features.exchange against a local bitbank replay server (tests/replay.py); never the internet."""

from __future__ import annotations

import logging
import random

import numpy as np
import pandas as pd
import pytest

from features.data import DataError
from features.exchange import main
from features.exchange_candles import (
    DEFAULT_TIMEOUT_MS,
    ExchangeSpec,
    FetchResult,
    RetryPolicy,
    cache_file,
    default_cache_dir,
    fetch_candles,
    make_exchange,
    parse_spec,
    read_cache,
)
from tests.helpers import make_candles
from tests.replay import ReplayServer

SPEC = ExchangeSpec("bitbank", "BTC/JPY", "15m")
DATA = "exchange:bitbank:BTC/JPY:15m"
BAR = pd.Timedelta("15min")
DAY = pd.Timedelta(days=1)
T0 = pd.Timestamp("2024-01-01", tz="UTC")
NOW = T0 + 5 * DAY + pd.Timedelta("7min")  # 2024-01-06 00:07: Jan 1..5 are complete days
FAST = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.005)


def day_path(day: int, month: str = "202401") -> str:
    return f"/btc_jpy/candlestick/15min/{month}{day:02d}"


def window(truth: pd.DataFrame, now: pd.Timestamp, days: int | None) -> pd.DataFrame:
    """What fetch_candles must return: closed candles with open time >= now - days."""
    keep = truth.index + BAR <= now
    if days is not None:
        keep &= truth.index >= now - days * DAY
    return truth.loc[keep]


def assert_candles(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Same timestamps and exactly the same values, in the project convention."""
    assert isinstance(actual.index, pd.DatetimeIndex) and str(actual.index.tz) == "UTC"
    assert (
        actual.index.name == "timestamp" and actual.index.is_unique and actual.index.is_monotonic_increasing
    )
    assert list(actual.columns) == ["open", "high", "low", "close", "volume"]
    assert (actual.dtypes == "float64").all()
    pd.testing.assert_frame_equal(actual, expected, check_exact=True, check_freq=False)


@pytest.fixture
def truth() -> pd.DataFrame:
    """Six days of 15-minute candles from 2024-01-01 UTC: what the exchange 'has'."""
    return make_candles(6 * 96, seed=3, start="2024-01-01", freq="15min")


@pytest.fixture
def server(truth):
    with ReplayServer() as srv:
        srv.add_series("btc_jpy", "15min", truth)
        srv.now = NOW
        yield srv


def connect(server: ReplayServer, **config) -> object:
    """A ccxt bitbank built by features.exchange_candles.make_exchange, pointed at the replay server."""
    return server.point(make_exchange(SPEC, {"rateLimit": 1, "timeout": 2000} | config))


def fetch(server: ReplayServer, tmp_path, days: int | None, now: pd.Timestamp = NOW, **kw) -> FetchResult:
    server.now = now
    exchange = kw.pop("exchange", None) or connect(server)
    return fetch_candles(SPEC, days=days, cache_dir=tmp_path, exchange=exchange, now=now, retry=FAST, **kw)


# ------------------------------------------------------------------------------------------------ spec


def test_parse_spec():
    assert parse_spec(DATA) == SPEC
    assert parse_spec(" exchange:Bitbank:BTC/JPY:15m ") == SPEC
    assert str(SPEC) == DATA and SPEC.bar == BAR
    swap = parse_spec("exchange:binance:BTC/USDT:USDT:1h")  # a derivative symbol keeps its ':SETTLE'
    assert swap == ExchangeSpec("binance", "BTC/USDT:USDT", "1h")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("bitbank:BTC/JPY:15m", ["Not an exchange data source", "exchange:<exchange>:<symbol>:<timeframe>"]),
        ("exchange:bitbank:BTC/JPY", ["Malformed", "exchange:bitbank:BTC/JPY:15m"]),
        ("exchange::BTC/JPY:15m", ["Malformed"]),
        ("exchange:bitbank:BTCJPY:15m", ["Malformed symbol", "BASE/QUOTE"]),
        ("exchange:bitbankk:BTC/JPY:15m", ["Unknown exchange", "'bitbank'", "ccxt.exchanges"]),
        ("exchange:bitbank:BTC/JPY:2h", ["does not offer timeframe '2h'", "1m, 5m, 15m, 30m, 1h"]),
        ("exchange:bitbank:BTC/JPY:4h", ["YYYY", "resample", "'1h'"]),
        ("exchange:binance:BTC/USDT:1M", ["calendar period"]),
    ],
)
def test_parse_spec_errors(text, expected):
    with pytest.raises(DataError) as err:
        parse_spec(text)
    for part in expected:
        assert part in str(err.value)


@pytest.mark.parametrize("days", [0, -3, 1.5, True])
def test_days_must_be_a_positive_whole_number(tmp_path, days):
    with pytest.raises(DataError, match="days must be a positive whole number"):
        fetch_candles(SPEC, days=days, cache_dir=tmp_path, exchange=object(), now=NOW)


def test_cache_layout_and_default_dir(tmp_path, monkeypatch):
    assert cache_file(SPEC, tmp_path) == tmp_path / "bitbank" / "BTC-JPY" / "15m.parquet"
    swap = ExchangeSpec("binance", "BTC/USDT:USDT", "1h")
    assert cache_file(swap, tmp_path) == tmp_path / "binance" / "BTC-USDT_USDT" / "1h.parquet"

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CRYPTO_SIGNALS_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "crypto-signals" / "ohlcv"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "crypto-signals" / "ohlcv"
    monkeypatch.setenv("CRYPTO_SIGNALS_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    assert cache_file(SPEC) == tmp_path / "mine" / "bitbank" / "BTC-JPY" / "15m.parquet"
    assert not (tmp_path / "mine").exists()  # computing paths creates nothing


def test_make_exchange_throttles_with_finite_timeout():
    exchange = make_exchange(SPEC)
    assert exchange.id == "bitbank" and exchange.enableRateLimit is True
    assert exchange.timeout == DEFAULT_TIMEOUT_MS and exchange.rateLimit == 100  # bitbank's own pacing


def test_retry_delays_grow_exponentially_with_jitter_and_cap():
    policy = RetryPolicy(attempts=6, base_delay=1.0, max_delay=5.0)
    rng = random.Random(0)
    for failures, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (5, 5.0)]:
        delays = [policy.delay(failures, rng) for _ in range(200)]
        assert min(delays) >= cap / 2 and max(delays) < cap
        assert len(set(delays)) > 1  # jittered
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


# ------------------------------------------------------------------------------------------- fetching


def test_full_fetch_pages_day_by_day_and_returns_the_exact_candles(server, truth, tmp_path):
    result = fetch(server, tmp_path, days=5)

    expected = window(truth, NOW, 5)  # 2024-01-01 00:15 .. 2024-01-05 23:45
    assert_candles(result.candles, expected)
    assert server.paths("/spot/pairs") == ["/spot/pairs"]
    assert server.candle_paths() == [day_path(d) for d in range(1, 6)]  # one request per UTC day
    assert result.requests == 5 and result.retries == 0
    assert result.new_rows == len(expected) == result.cache_rows
    assert result.cache_path == tmp_path / "bitbank" / "BTC-JPY" / "15m.parquet"
    assert_candles(read_cache(result.cache_path, SPEC), expected)


def test_only_closed_candles_are_returned_and_cached(server, truth, tmp_path):
    now = T0 + 2 * DAY + pd.Timedelta("10:20:00")  # the 10:15 candle is still forming
    result = fetch(server, tmp_path, days=2, now=now)
    assert result.candles.index[-1] == T0 + 2 * DAY + pd.Timedelta("10:00:00")
    assert_candles(result.candles, window(truth, now, 2))
    assert read_cache(result.cache_path).index[-1] == result.candles.index[-1]

    # Later the 10:15 bar has closed: it comes with its final values, from the same day's page only.
    server.clear_log()
    later = now + pd.Timedelta("30min")
    again = fetch(server, tmp_path, days=2, now=later)
    assert server.candle_paths() == [day_path(3)]
    assert again.new_rows == 2 and again.updated_rows == 0  # 10:15 and 10:30
    assert_candles(again.candles, window(truth, later, 2))


def test_second_call_asks_only_for_new_days_and_appends(server, truth, tmp_path):
    first_now = T0 + 3 * DAY + pd.Timedelta("7min")
    first = fetch(server, tmp_path, days=3, now=first_now)
    assert first.candles.index[-1] == T0 + 3 * DAY - BAR

    server.clear_log()
    second = fetch(server, tmp_path, days=3, now=NOW)
    assert server.candle_paths() == [day_path(4), day_path(5)]  # nothing already cached is asked again
    assert second.requests == 2 and second.new_rows == 2 * 96
    assert_candles(second.candles, window(truth, NOW, 3))
    assert_candles(read_cache(second.cache_path), window(truth, NOW, None).loc[first.candles.index[0] :])

    server.clear_log()
    third = fetch(server, tmp_path, days=3, now=NOW)  # up to date: no OHLCV request at all
    assert server.candle_paths() == [] and third.requests == 0 and third.new_rows == 0


def test_more_days_than_cached_fetch_the_missing_head_once(server, truth, tmp_path):
    fetch(server, tmp_path, days=2)  # cache from 2024-01-04 00:07
    server.clear_log()
    result = fetch(server, tmp_path, days=4)
    assert server.candle_paths() == [day_path(2), day_path(3), day_path(4)]
    assert result.new_rows == 95 + 96 + 1  # Jan 2 00:15 .. Jan 4 00:00
    assert_candles(result.candles, window(truth, NOW, 4))

    server.clear_log()
    again = fetch(server, tmp_path, days=4)
    assert server.candle_paths() == [] and again.requests == 0
    assert_candles(again.candles, window(truth, NOW, 4))


def test_history_before_the_first_candle_is_walked_once(server, truth, tmp_path):
    """A pair listed on Jan 3: empty days before it are stepped over, and not asked again next time."""
    server.add_series("btc_jpy", "15min", truth.loc[T0 + 2 * DAY :])
    first = fetch(server, tmp_path, days=5)
    assert server.candle_paths() == [day_path(d) for d in range(1, 6)]
    assert_candles(first.candles, window(truth, NOW, 5).loc[T0 + 2 * DAY :])
    server.clear_log()
    fetch(server, tmp_path, days=5)
    assert server.candle_paths() == []


def test_days_without_candles_are_stepped_over_without_skipping_data(server, truth, tmp_path):
    """No trades on Jan 3, none after Jan 4 12:00 and none on Jan 5: gaps stay gaps, nothing is lost."""
    gone = (
        ((truth.index >= T0 + 2 * DAY) & (truth.index < T0 + 3 * DAY))
        | ((truth.index >= T0 + 3 * DAY + pd.Timedelta("12h")) & (truth.index < T0 + 4 * DAY))
        | (truth.index >= T0 + 4 * DAY)
    )
    server.add_series("btc_jpy", "15min", truth.loc[~gone])
    server.now = NOW
    result = fetch(server, tmp_path, days=5)
    # Jan 4 is asked twice: after its 11:45 candle the walk asks from 12:00, gets nothing, moves on.
    assert server.candle_paths() == [
        day_path(1),
        day_path(2),
        day_path(3),
        day_path(4),
        day_path(4),
        day_path(5),
    ]
    assert_candles(result.candles, window(truth.loc[~gone], NOW, 5))


def test_revised_candle_keeps_the_new_values_and_warns(server, truth, tmp_path, caplog):
    fetch(server, tmp_path, days=2)  # caches Jan 4 00:15 onwards
    revised = truth.copy()
    when = T0 + 3 * DAY + pd.Timedelta("12h")
    revised.loc[when, "volume"] += 1.0
    server.add_series("btc_jpy", "15min", revised)
    with caplog.at_level(logging.WARNING, logger="features.exchange_candles"):
        result = fetch(server, tmp_path, days=4)  # the head's last page (Jan 4) overlaps the cache
    assert result.updated_rows == 1
    assert "different values for 1 cached candle(s) (first 2024-01-04 12:00 UTC)" in caplog.text
    assert_candles(result.candles, window(revised, NOW, 4))
    assert read_cache(result.cache_path).loc[when, "volume"] == revised.loc[when, "volume"]


def test_days_none_updates_what_the_cache_has(server, truth, tmp_path):
    with pytest.raises(DataError, match=r"No cached candles for exchange:bitbank:BTC/JPY:15m yet.*pass days"):
        fetch(server, tmp_path, days=None)
    assert server.candle_paths() == []
    fetch(server, tmp_path, days=1, now=T0 + 3 * DAY)
    result = fetch(server, tmp_path, days=None)
    assert_candles(result.candles, window(truth, NOW, None).loc[T0 + 2 * DAY :])


def test_requests_are_throttled_at_the_rate_limit(server, tmp_path):
    exchange = connect(server, rateLimit=50)
    fetch(server, tmp_path, days=5, exchange=exchange)
    times = np.array([r.time for r in server.requests])
    assert len(times) == 6  # markets + 5 days
    # ccxt's throttler spaces requests rateLimit (50 ms) apart as sent; their arrival here jitters by a
    # few ms either way, so each gap is checked loosely and the whole span tightly (unthrottled: ~2 ms).
    assert np.diff(times).min() >= 0.040
    assert times[-1] - times[0] >= 5 * 0.050 - 0.010


# --------------------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    "inject, times",
    [
        (lambda s: s.rate_limit(day_path(2), times=2), 2),
        (lambda s: s.timeout(day_path(2), times=1, delay=3.0), 1),
        (lambda s: s.server_error(day_path(2), times=2, status=502), 2),
        (lambda s: s.exchange_error(day_path(2), code=10005, times=1), 1),  # bitbank's JSON "timeout"
        (lambda s: s.garbage(day_path(2), times=1), 1),  # not mistaken for a day without trades
    ],
    ids=["429-twice", "timeout-once", "502-twice", "bitbank-busy-json", "html-page"],
)
def test_transient_errors_are_retried(server, truth, tmp_path, inject, times):
    inject(server)
    # 1.5 s: far above a local answer even on a loaded machine (an extra retry would break the counts
    # below), far below the timeout fault's 3 s
    exchange = connect(server, timeout=1500)
    result = fetch(server, tmp_path, days=5, exchange=exchange)
    assert_candles(result.candles, window(truth, NOW, 5))
    assert server.candle_paths().count(day_path(2)) == 1 + times
    assert result.requests == 5 + times and result.retries == times


def test_always_failing_raises_keeps_the_verified_prefix_and_resumes(server, truth, tmp_path):
    server.always_fail(day_path(3), status=503)
    with pytest.raises(DataError) as err:
        fetch(server, tmp_path, days=5)
    message = str(err.value)
    for part in [
        "bitbank BTC/JPY 15m",
        "candles since 2024-01-03 00:00 UTC",
        "after 3 attempt(s)",
        "ExchangeNotAvailable",
        "run again",
    ]:
        assert part in message
    assert server.candle_paths() == [day_path(1), day_path(2)] + [day_path(3)] * 3
    # Jan 1 and 2 were verified before the failure: cached, so the next run does not ask for them again.
    cached = read_cache(cache_file(SPEC, tmp_path))
    assert_candles(cached, window(truth, NOW, 5).loc[: T0 + 2 * DAY - BAR])

    server.clear_faults()
    server.clear_log()
    result = fetch(server, tmp_path, days=5)
    assert server.candle_paths() == [day_path(3), day_path(4), day_path(5)]
    assert_candles(result.candles, window(truth, NOW, 5))


def test_failed_head_fetch_is_not_saved(server, truth, tmp_path):
    fetch(server, tmp_path, days=2)
    before = read_cache(cache_file(SPEC, tmp_path))
    server.always_fail(day_path(3))
    with pytest.raises(DataError, match="failed after 3 attempt"):
        fetch(server, tmp_path, days=4)
    assert_candles(read_cache(cache_file(SPEC, tmp_path)), before)  # Jan 2 alone would leave a hole
    server.clear_faults()
    assert_candles(fetch(server, tmp_path, days=4).candles, window(truth, NOW, 4))


def test_non_transient_errors_fail_at_once(server, tmp_path):
    spec = ExchangeSpec("bitbank", "ETH/JPY", "15m")
    with pytest.raises(DataError, match=r"bitbank has no market 'ETH/JPY' \(1 markets listed\)"):
        fetch_candles(spec, days=5, cache_dir=tmp_path, exchange=connect(server), now=NOW, retry=FAST)
    assert server.paths() == ["/spot/pairs"]  # no candle request, nothing retried

    server.clear_log()
    server.exchange_error(day_path(2), code=10000, times=None, status=404)  # "URL does not exist"
    with pytest.raises(DataError) as err:
        fetch(server, tmp_path, days=5)
    assert "rejected by the exchange (ExchangeError" in str(err.value) and "not retried" in str(err.value)
    assert server.candle_paths() == [day_path(1), day_path(2)]


def test_market_list_failure_is_a_clear_error(server, tmp_path):
    server.always_fail("/spot/pairs", status=500)
    with pytest.raises(DataError, match=r"bitbank BTC/JPY 15m: loading the market list failed after 3"):
        fetch(server, tmp_path, days=5)
    assert server.paths() == ["/spot/pairs"] * 3
    assert not cache_file(SPEC, tmp_path).exists()


def test_bad_candles_from_the_exchange_raise(server, truth, tmp_path):
    bad = truth.copy()
    when = T0 + DAY + pd.Timedelta("5h")
    bad.loc[when, ["high", "low"]] = bad.loc[when, ["low", "high"]].to_numpy()  # swapped: high < low
    server.add_series("btc_jpy", "15min", bad)
    with pytest.raises(DataError) as err:
        fetch(server, tmp_path, days=5)
    message = str(err.value)
    assert "bitbank BTC/JPY 15m: the exchange returned invalid candles" in message
    assert "high < low" in message and "2024-01-02 05:00" in message
    assert server.candle_paths() == [day_path(1), day_path(2)]
    assert read_cache(cache_file(SPEC, tmp_path)).index[-1] == T0 + DAY - BAR  # only the verified day


def test_corrupt_cache_file_is_reported_with_its_path(server, tmp_path):
    path = cache_file(SPEC, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError) as err:
        fetch(server, tmp_path, days=5)
    assert str(path) in str(err.value) and "corrupt" in str(err.value) and "Delete" in str(err.value)
    assert server.candle_paths() == []


def test_cache_of_another_series_is_refused(server, tmp_path):
    result = fetch(server, tmp_path, days=1)
    other = ExchangeSpec("bitbank", "BTC/JPY", "5m")
    with pytest.raises(
        DataError, match="holds exchange:bitbank:BTC/JPY:15m, not exchange:bitbank:BTC/JPY:5m"
    ):
        read_cache(result.cache_path, other)


def test_a_crash_while_writing_leaves_the_old_cache_intact(server, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    fetch(server, tmp_path, days=2, now=NOW - DAY)
    path = cache_file(SPEC, tmp_path)
    before = path.read_bytes()

    def crash(table, where, **kwargs):
        where.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(DataError, match="Could not write the cache file .*disk full"):
        fetch(server, tmp_path, days=2)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["15m.parquet"]  # no temporary file left


# -------------------------------------------------------------------------------------------- CLI


def test_cli_updates_the_cache_and_reports(tmp_path, capsys):
    # The CLI uses the real clock, so the exchange's candles end now.
    now = pd.Timestamp.now(tz="UTC")
    start = now.floor("D") - 3 * DAY
    truth = make_candles(
        int((now + DAY - start) / BAR), seed=5, start=str(start.tz_localize(None)), freq="15min"
    )
    with ReplayServer() as srv:
        srv.add_series("btc_jpy", "15min", truth)
        factory = lambda spec: connect(srv)  # noqa: E731

        code = main(["--data", DATA, "--days", "2", "--cache-dir", str(tmp_path)], exchange_factory=factory)
        out = capsys.readouterr().out
        assert code == 0
        cached = read_cache(cache_file(SPEC, tmp_path))
        assert_candles(cached, truth.loc[cached.index])
        assert cached.index[-1] + BAR <= pd.Timestamp.now(tz="UTC")
        assert f"{len(cached):,} new rows" in out and str(cache_file(SPEC, tmp_path)) in out
        assert f"requests: {len(srv.candle_paths())} OHLCV" in out

        srv.always_fail("/candlestick/")
        code = main(
            [
                "--data",
                DATA,
                "--days",
                "3",
                "--cache-dir",
                str(tmp_path),
                "--attempts",
                "2",
                "--retry-delay",
                "0.001",
            ],
            exchange_factory=factory,
        )
        captured = capsys.readouterr()
        assert code == 1
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: bitbank BTC/JPY 15m:")
        assert "failed after 2 attempt(s)" in lines[0] and "Traceback" not in captured.err


def test_cli_rejects_a_bad_spec_without_network(tmp_path, capsys):
    assert main(["--data", "exchange:nosuchex:BTC/JPY:15m", "--cache-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown exchange 'nosuchex'") and err.count("\n") == 1
