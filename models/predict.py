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
from dataclasses import dataclass
from pathlib import Path

from features.data import SNAPSHOT_PREFIXES
from models import cli, tracking
from models.loading import ModelUnavailable, candles_for, load_model
from models.pyfunc import FUTURE, as_model_input

# Model URIs resolved through the tracking server / model registry (a local path or s3:// is not).
TRACKED_URIS = ("models:/", "runs:/", "mlflow-artifacts:/")


@dataclass(frozen=True)
class PredictOptions(cli.ModelCandles):
    """The predict command's options and their defaults."""

    output: str = "signals.csv"


HELP = cli.COMMON_HELP | {
    "timeframe": "resample first ('' = to the model's own bar size)",
    "output": "output file (.csv or .parquet)",
}


def build_parser() -> cli.Parser:
    parser = cli.Parser("python -m models.predict", __doc__.splitlines()[0])
    cli.add_options(parser, PredictOptions, HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    errors = (ValueError, tracking.TrackingUnavailable, ModelUnavailable, OSError)
    return cli.main(build_parser(), argv, predict, errors)


def predict(args: argparse.Namespace) -> int:
    """Signals for the candles, written to ``--output``; a summary on stdout."""
    output = Path(args.output)
    if output.suffix not in (".csv", ".parquet"):
        raise ValueError(f"--output must end in .csv or .parquet, got {args.output!r}")
    # In seconds, before any work: a dead server would otherwise take MLflow's minutes of retries.
    if args.model_uri.startswith(TRACKED_URIS) or args.data.startswith(SNAPSHOT_PREFIXES):
        tracking.check_reachable()
    model = load_model(args.model_uri)  # missing or corrupt model files: one line, before any download
    candles, info = candles_for(model, args.data, args.timeframe, args.days)
    signals = model.predict(as_model_input(candles))
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
    cli.run(main)
