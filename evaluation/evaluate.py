"""`evaluate` step: score any registered version or alias on candles, out of sample, logged as a run.

    python -m evaluation.evaluate --model-uri models:/crypto-signal-ensemble@production --data new.csv

The model computes its own features; labels follow the model's own definition (horizon, threshold,
volatility window, from its metadata). Only candles after the model's training window
(``trained_until`` in its metadata) are scored, so the numbers are out of sample by construction.

Errors (bad candles, an unknown model, model files missing or corrupt, an unreachable store) exit 1 with
one ``error: ...`` line on stderr; the model is loaded first (:func:`models.loading.load_model`).
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow

from evaluation.backtest import BacktestConfig
from evaluation.metrics import plot_confusion_matrix
from evaluation.scoring import score_model
from models import cli, tracking
from models.loading import ModelUnavailable, candles_for, load_model


@dataclass(frozen=True)
class EvaluateOptions(cli.ModelCandles):
    """The evaluate command's options and their defaults (the backtest's costs from BacktestConfig)."""

    seed: int = 42
    fee_bps: float = BacktestConfig.fee_bps
    slippage_bps: float = BacktestConfig.slippage_bps


def build_parser() -> cli.Parser:
    parser = cli.Parser("python -m evaluation.evaluate", __doc__.splitlines()[0])
    cli.add_options(parser, EvaluateOptions, cli.COMMON_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    return cli.main(
        build_parser(), argv, evaluate, (ValueError, tracking.TrackingUnavailable, ModelUnavailable)
    )


def evaluate(args: argparse.Namespace) -> int:
    """Score the model, log the evaluate run, print the numbers."""
    tracking.check_reachable()
    model = load_model(args.model_uri)  # missing or corrupt model files: one line, before any download
    candles, info = candles_for(model, args.data, args.timeframe, args.days)
    result = score_model(model, candles, args.seed, args.fee_bps, args.slippage_bps)
    tracking.use_experiment()
    with mlflow.start_run(run_name=f"evaluate {args.model_uri}"):
        mlflow.set_tags(
            {
                "step": "evaluate",
                "model_uri": args.model_uri,
                "data_source": info.source,
                "data_sha256": info.sha256,
                "model_id": model.metadata.model_id or "",
            }
        )
        tracking.log_params_once(vars(args))  # every option, as given
        tracking.log_dataset(candles, "candles", info.source, "evaluation")
        tracking.log_metrics("holdout_", result["metrics"])
        for name, m in result["baselines"].items():
            tracking.log_metrics(f"baseline_{name}_", m)
        best = max(m["macro_f1"] for m in result["baselines"].values())
        mlflow.log_metrics({"baseline_macro_f1": best, "rows_scored": result["rows_scored"]})
        tracking.log_metrics("backtest_", result["backtest"])
        tracking.log_metrics("buyhold_", result["buyhold"])
        mlflow.log_dict(result, "evaluation.json")
        with tempfile.TemporaryDirectory() as tmp:
            path = plot_confusion_matrix(
                result["metrics"]["confusion_matrix"], f"{args.model_uri}", Path(tmp) / "cm_evaluated.png"
            )
            mlflow.log_artifact(str(path), "confusion_matrix")
    m = result["metrics"]
    print(
        f"{args.model_uri}: {result['rows_scored']:,} candles {result['window'][0]} .. {result['window'][1]} "
        f"(model trained until {result['trained_until']})"
    )
    print(f"  macro-F1 {m['macro_f1']:.4f}  accuracy {m['accuracy']:.4f}  log loss {m['log_loss']:.4f}")
    for name, b in result["baselines"].items():
        print(f"  baseline {name:<11} macro-F1 {b['macro_f1']:.4f}")
    bt, bh, edge = result["backtest"], result["buyhold"], result["directional_edge"]
    print(
        f"  directional precision on rows that moved {edge['precision']:.1%} vs {edge['base_rate']:.1%} "
        f"by the base rates ({edge['n_called_moves']} calls)"
    )
    print(
        f"  decision policy after costs: return {bt['total_return']:+.2%}, Sharpe {bt['sharpe']:.2f}, "
        f"{bt['n_trades']} trades; buy-and-hold {bh['total_return']:+.2%}"
    )
    for note in result["notes"]:
        print(f"  note: {note}")
    return 0


if __name__ == "__main__":
    cli.run(main)
