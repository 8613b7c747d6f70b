"""`fetch` step: update the local candle cache of one exchange series (no training), e.g. for a scheduled
job before training::

    python -m features.exchange --data exchange:bitbank:BTC/JPY:15m --days 365 [--cache-dir DIR]

Fetching, the cache and their failure semantics are :mod:`features.exchange_candles`.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from typing import Any

from features.exchange_candles import CACHE_ENV, ExchangeSpec, RetryPolicy, fetch_candles, parse_spec
from features.exchange_candles import SPEC_FORMAT as _SPEC_FORMAT
from models import cli

__all__ = ["build_parser", "main"]


# The series the fetch step updates when none is named (bitbank's BTC/JPY, 15-minute candles).
DEFAULT_SERIES = "exchange:bitbank:BTC/JPY:15m"


def build_parser() -> cli.Parser:
    parser = cli.Parser(
        "python -m features.exchange", "Update the local candle cache of one exchange series (no training)."
    )
    parser.add_argument("--data", default=DEFAULT_SERIES, help=f"the series: {_SPEC_FORMAT}")
    parser.add_argument(
        "--days",
        type=cli.parse_int,
        default=0,
        help="history to keep fetched, in days (0 = update the cache)",
    )
    parser.add_argument(
        "--cache-dir",
        default="",
        help=f"cache root ('' = ${CACHE_ENV}, else $XDG_CACHE_HOME/crypto-signals/ohlcv, "
        "else ~/.cache/crypto-signals/ohlcv)",
    )
    parser.add_argument(
        "--attempts", type=cli.parse_int, default=RetryPolicy.attempts, help="tries per request"
    )
    parser.add_argument(
        "--retry-delay",
        type=float,
        default=RetryPolicy.base_delay,
        help="seconds before the first retry, doubling after each failure",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and retries")
    return parser


def main(
    argv: Sequence[str] | None = None, *, exchange_factory: Callable[[ExchangeSpec], Any] | None = None
) -> int:
    """``python -m features.exchange --data exchange:<ex>:<symbol>:<tf> [--days N] [--cache-dir DIR]``.

    Updates the cache and prints what was fetched; exit code 0 on success, 1 with a one-line error on
    stderr when fetching fails. ``exchange_factory`` (tests) builds the exchange from the spec.
    """
    # Progress and retries only with -v; without it, the result or one error line.
    body = functools.partial(fetch, exchange_factory=exchange_factory)
    return cli.main(build_parser(), argv, body, (ValueError,), runs=False, quiet="ERROR")


def fetch(args: argparse.Namespace, exchange_factory: Callable[[ExchangeSpec], Any] | None = None) -> int:
    """Bring the cache of ``args.data`` up to date and say what was fetched."""
    spec = parse_spec(args.data)
    result = fetch_candles(
        spec,
        days=args.days or None,  # 0 (MLproject's default) = update what the cache has
        cache_dir=args.cache_dir or None,
        exchange=exchange_factory(spec) if exchange_factory is not None else None,
        retry=RetryPolicy(args.attempts, args.retry_delay),
    )
    print(result.describe())
    return 0


if __name__ == "__main__":
    cli.run(main)
