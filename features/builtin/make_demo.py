"""Generate features/builtin/demo_daily.csv.gz: synthetic daily candles with a planted, learnable edge.

    python features/builtin/make_demo.py            # rewrite the file (byte-for-byte the same)
    python features/builtin/make_demo.py --check    # exit 1 if the committed file differs

NOT MARKET DATA. The candles exist so that a newcomer sees the whole loop (gate passes, ``production``
moves, ``predict`` gives a signal, ``rollback``) in a few minutes: the built-in BTC candles rightly fail
the gate. The edge, stated plainly: a hidden down / flat / up drift, kept from one day to the next with
probability ``PERSISTENCE`` (else drawn anew), moves each day's close by ``TREND`` x drift plus noise, and
each day's traded volume is scaled by exp(``FLOW`` x the *next* day's drift). So today's volume tells
tomorrow's direction, which a model reading the ``volume`` features learns and price-only rules cannot
see. (The same mechanism as ``flow_edge`` in bench/gate_error_rates.py, made stronger.)

Deterministic: NumPy's PCG64 stream from ``SEED``, values written with fixed decimals, gzip without a
timestamp. features/builtin/DEMO.md records the sha256 that features/data.py checks on every load.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
from pathlib import Path

import numpy as np

PATH = Path(__file__).resolve().parent / "demo_daily.csv.gz"
SEED = 20240101
ROWS = 3000
START = "2015-01-01"
VOL = 0.004  # daily noise of the log return
TREND = 0.003  # drift per day in a down / up state (0.3%; the noise is 0.4% a day)
PERSISTENCE = 0.5
FLOW = 1.0  # log-volume shift per unit of the next day's drift


def generate() -> str:
    """The demo candles as CSV text (header timestamp,open,high,low,close,volume)."""
    rng = np.random.default_rng(SEED)
    switch = rng.random(ROWS + 1) > PERSISTENCE
    draws = rng.integers(-1, 2, ROWS + 1)
    drift = draws[np.maximum.accumulate(np.where(switch, np.arange(ROWS + 1), 0))]
    log_ret = drift[:ROWS] * TREND + VOL * rng.standard_normal(ROWS)
    close = 100.0 * np.exp(np.cumsum(log_ret))
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) * (1.0 + np.abs(rng.standard_normal(ROWS)) * VOL * 0.5)
    low = np.minimum(open_, close) * (1.0 - np.abs(rng.standard_normal(ROWS)) * VOL * 0.5)
    volume = rng.lognormal(mean=12.0, sigma=0.5, size=ROWS) * np.exp(FLOW * drift[1:])
    days = np.datetime64(START) + np.arange(ROWS).astype("timedelta64[D]")
    out = io.StringIO()
    out.write("timestamp,open,high,low,close,volume\n")
    for row in zip(days.astype(str), open_, high, low, close, volume, strict=True):
        out.write(f"{row[0]},{row[1]:.6f},{row[2]:.6f},{row[3]:.6f},{row[4]:.6f},{row[5]:.2f}\n")
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file, write nothing")
    args = parser.parse_args()
    text = generate().encode()
    print(f"sha256 of the uncompressed CSV: {hashlib.sha256(text).hexdigest()}")
    if args.check:
        same = PATH.is_file() and gzip.decompress(PATH.read_bytes()) == text
        print("the committed file matches" if same else f"{PATH} differs from the generator's output")
        return 0 if same else 1
    PATH.write_bytes(gzip.compress(text, compresslevel=9, mtime=0))
    print(f"wrote {PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
