"""`predict` step: signals and class probabilities for candles, exactly as a trading bot gets them.

    python -m models.predict --data candles.csv --output signals.csv
    python -m models.predict --model-uri models:/crypto-signal-ensemble/3 --data builtin --days 7

Loads the model from the registry (default: the ``production`` alias), feeds it the candles and writes
one row per candle (CSV, or Parquet when the output ends in .parquet). Nothing is logged or registered.
Errors (bad candles, an unknown model, model files missing or corrupt, a ``production`` alias the
monitor withdrew, an unreachable store) exit 1 with one ``error: ...`` line on stderr (a withdrawal: when,
by whom and which run, and why); the model is loaded first (:func:`models.loading.load_model`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlflow.exceptions import MlflowException

from features.data import SNAPSHOT_PREFIXES, DataError, load_candles, match_bar
from models import tracking
from models.loading import ModelUnavailable, load_model
from models.pyfunc import FUTURE, as_model_input, model_bar

# Model URIs resolved through the tracking server / model registry (a local path or s3:// is not).
TRACKED_URIS = ("models:/", "runs:/", "mlflow-artifacts:/")


def main(argv: list[str] | None = None) -> int:
    tracking.redaction.install()  # credentials masked in all output from here on (models.redaction)
    parser = argparse.ArgumentParser(prog="python -m models.predict", description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", default="models:/crypto-signal-ensemble@production")
    parser.add_argument("--data", default="builtin", help="'builtin' or a CSV/Parquet candle file")
    parser.add_argument(
        "--timeframe", default="", help="resample first (default: to the model's own bar size)"
    )
    parser.add_argument("--days", type=tracking.parse_int, default=0, help="only the last N days (0 = all)")
    parser.add_argument("--output", default="signals.csv", help="output file (.csv or .parquet)")
    args = parser.parse_args(argv)
    output = Path(args.output)
    if output.suffix not in (".csv", ".parquet"):
        print(f"error: --output must end in .csv or .parquet, got {args.output!r}", file=sys.stderr)
        return 1
    try:
        # In seconds, before any work: a dead server would otherwise take MLflow's minutes of retries.
        if args.model_uri.startswith(TRACKED_URIS) or args.data.startswith(SNAPSHOT_PREFIXES):
            tracking.check_reachable()
        model = load_model(args.model_uri)  # missing or corrupt model files: one line, before any download
        candles, info = load_candles(args.data, args.timeframe or None, args.days or None)
        candles, info, resampled = match_bar(candles, info, model_bar(model), args.timeframe)
        if resampled:  # finer candles and no --timeframe: aggregated to the model's bars
            print(resampled)
        signals = model.predict(as_model_input(candles))
    except (DataError, ValueError, tracking.TrackingUnavailable, ModelUnavailable, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except MlflowException as exc:
        print(f"error: {tracking.error_message(exc)}", file=sys.stderr)
        return 1
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".parquet":
        signals.to_parquet(output, index=False)
    else:
        signals.to_csv(output, index=False)
    ready = signals[signals["ready"]]
    print(
        f"{args.model_uri}: {len(signals):,} candles ({info.describe()}), {len(ready):,} with a signal "
        f"-> {output}"
    )
    future = int((signals["signal"] == FUTURE).sum())
    if future:
        print(
            f"  {future:,} candles stamped after now + one bar are marked not ready ({FUTURE!r}): "
            "check the timestamps (time zone, epoch unit) or the clock"
        )
    if len(ready):
        last = ready.iloc[-1]
        print(
            f"  last: {last['timestamp']}  {last['signal']}  (sell {last['p_sell']:.3f}, "
            f"hold {last['p_hold']:.3f}, buy {last['p_buy']:.3f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
