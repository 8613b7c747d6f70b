"""`monitor` step: is a promoted model still doing what it was promoted for, on the candles of today?

    python -m evaluation.monitor --model-uri models:/crypto-signal-ensemble@production \\
        --data exchange:bitbank:BTC/JPY:30m --days 60

For a registered version (``models:/<name>/<version>`` or ``models:/<name>@<alias>``) and candles: live
performance on the candles after its training window whose labels have matured, and feature drift
against its training candles, judged as :mod:`evaluation.monitoring` says (verdict ``ok``, ``degraded``
or ``drifted``, and its thresholds).

Acting on it (``--on-degraded``, :func:`action_for`; the walk-forward's monitored track decides with the
same function): when the degraded rule fires (whatever the verdict: a drifted model whose live numbers
are also degraded counts) and the monitored version is ``production``,

* ``alert`` (default): nothing moves; the verdict, its exit code and the webhook message, as always;
* ``withdraw``: ``production`` is removed (:func:`models.registry.withdraw`): bots loading it are told it
  was withdrawn and stay flat until a version is promoted;
* ``rollback``: ``production`` moves to the newest earlier holder of it (the registry's rollback stack)
  that passed its gate and is *not* degraded by the same rule on the same live rows (each candidate is
  loaded and judged; one that cannot be judged on those rows is skipped too). If none qualifies,
  production stays where it is (a bad model is not swapped for an unknown one, nor withdrawn unasked):
  the output says so and the exit code is :data:`EXIT_NOT_ACTED`.

Either move goes through the registry's lock, audit record, version tags and notification like a manual
one, names the verdict's numbers in its reason, and is logged with the monitor run (``audit.json``, tags
``monitor_action`` ...). Re-running on the same state changes nothing: a withdrawn ``production`` is
reported (exit :data:`EXIT_NO_PRODUCTION`), a rolled-back one is judged ok.

Exit codes, for a scheduler: 0 ok, 1 error (bad input, unknown model, model files missing or corrupt,
missing training snapshot, unreachable tracking store; one line on stderr), 2 bad command-line usage
(argparse), 3 degraded (and acted on, if asked), 4 drifted, 5 ``production`` was withdrawn: nothing to
monitor (one line saying when, why and by what), 6 degraded but the requested action was not taken
(nothing qualifies for a rollback, production moved meanwhile, or the alias lock stayed busy). Each
successful call logs one ``monitor`` run, tags the model version (``last_monitored``,
``monitor_verdict``, ``monitor_run_id``) and, on a verdict other than ok, posts a webhook message.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from evaluation.drift import DriftConfig
from evaluation.monitor_step import run_monitor
from evaluation.monitoring import (
    ALERT,
    EXIT_DEGRADED,
    EXIT_DRIFTED,
    EXIT_ERROR,
    EXIT_OK,
    ON_DEGRADED,
    MonitorConfig,
)
from models import cli


@dataclass(frozen=True)
class MonitorOptions(cli.ModelCandles):
    """The monitor command's options; their defaults are the monitor's and the drift check's own."""

    psi_threshold: float = DriftConfig.psi_threshold
    ks_alpha: float = DriftConfig.ks_alpha
    drift_share: float = DriftConfig.drift_share
    f1_tolerance: float = MonitorConfig.f1_tolerance
    confidence: float = MonitorConfig.confidence
    seed: int = MonitorConfig.seed
    fee_bps: float = MonitorConfig.fee_bps
    slippage_bps: float = MonitorConfig.slippage_bps
    on_degraded: str = ALERT


HELP = cli.COMMON_HELP | {
    "model_uri": "models:/<name>/<version> or models:/<name>@<alias>",
    "psi_threshold": "PSI above which a feature moved",
    "ks_alpha": "KS test level, divided by the number of features",
    "drift_share": "share of drifted features that makes the model drifted",
    "f1_tolerance": "macro-F1 below promised that is tolerated",
    "confidence": "confidence of the intervals",
    "on_degraded": "when the live numbers are degraded and the version is production: alert only, "
    "withdraw production (the bot stays flat), or roll back to the newest earlier production version "
    "that passed its gate and is not degraded on the same rows",
}


def build_parser() -> cli.Parser:
    parser = cli.Parser(
        "python -m evaluation.monitor",
        __doc__.splitlines()[0],
        epilog=(
            f"exit codes: {EXIT_OK} ok, {EXIT_ERROR} error (bad input, unknown model, model files missing "
            f"or corrupt, missing training snapshot, unreachable store), 2 usage error, {EXIT_DEGRADED} "
            f"degraded (live numbers significantly worse than promoted), {EXIT_DRIFTED} drifted (feature "
            "distributions moved; wins over degraded)"
        ),
    )
    cli.add_options(parser, MonitorOptions, HELP, choices={"on_degraded": ON_DEGRADED})
    return parser


def main(argv: list[str] | None = None) -> int:
    return cli.main(build_parser(), argv, _main)


def _main(args: argparse.Namespace) -> int:
    config = MonitorConfig(
        f1_tolerance=args.f1_tolerance,
        confidence=args.confidence,
        seed=args.seed,
        fee_bps=args.fee_bps,
        slippage_bps=args.slippage_bps,
        drift=DriftConfig(args.psi_threshold, args.ks_alpha, args.drift_share),
    )
    params = dict(vars(args))  # the run's parameters: every option, as given
    return run_monitor(args.model_uri, args.data, args.timeframe, args.days, config, args.on_degraded, params)


if __name__ == "__main__":
    cli.run(main)
