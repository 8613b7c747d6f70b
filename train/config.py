"""Pipeline configuration: one dataclass, one CLI parser, the same names as the MLproject parameters.

Each default is written once, as a :class:`PipelineConfig` field (the gate's and the costs' from
``evaluation.gate.GateConfig`` and ``evaluation.backtest.BacktestConfig``); the parser, ``--help``,
``docs/parameters.md`` and the MLproject are tested against it (``tests/test_config.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from evaluation.backtest import BacktestConfig
from evaluation.gate import BENCHMARKS, GateConfig
from features.context import context_label, parse_context_timeframe
from features.data import DataError
from features.indicators import FEATURE_SETS
from features.labels import LABELS, SAMPLE_WEIGHTS, resolve_sample_weights
from features.primary import PRIMARIES, PRIMARY_COLUMN
from models import cli, tracking
from models.base import MODEL_NAMES, check_model_names
from models.cli import LOG_LEVELS, PROJECT_LOGGERS, configure_logging, quiet_library_noise
from models.policy import MODES, ON_HOLD, SIZINGS
from train.tune import OBJECTIVES, TuningError

# The console set-up of every entry point lives in models.cli; these names stay importable from here.
__all__ = [
    "ERRORS",
    "HELP",
    "LOG_LEVELS",
    "MAX_FOLDS",
    "PROJECT_LOGGERS",
    "PipelineConfig",
    "build_parser",
    "configure_logging",
    "parse_args",
    "pipeline_config",
    "pipeline_parser",
    "quiet_library_noise",
]

MAX_FOLDS = 20
# What the pipeline's commands report in one ``error: ...`` line (exit 1): bad settings or candles
# (ValueError, TypeError: DataError and InsufficientDataError among them), a store out of reach, a study
# that cannot be used. MLflow's own errors too (models.cli.main).
ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, tracking.TrackingUnavailable, TuningError)


@dataclass(frozen=True)
class PipelineConfig:
    data: str = "builtin"
    timeframe: str = ""
    days: int = 0
    horizon: int = 6
    threshold: float = 0.005
    vol_window: int = 0
    label: str = "threshold"
    sample_weights: str = "auto"
    features: str = "default"
    context_timeframe: str = ""
    pair_data: str = ""
    n_trials: int = 12
    # A safety net, not a budget: n_trials ends each study, so the same command gives the same model on
    # any machine; a default run on 2 cores tunes each model in well under this.
    timeout: float = 600.0
    objective: str = "macro_f1"
    models: str = ",".join(MODEL_NAMES)
    model_name: str = "crypto-signal-ensemble"
    seed: int = 42
    dry_run: bool = False
    n_folds: int = 5
    holdout_frac: float = 0.2
    # The gate's and the backtest's own defaults (evaluation.gate, evaluation.backtest): written once.
    gate_min_f1: float = GateConfig.min_macro_f1
    gate_margin: float = GateConfig.min_margin
    gate_confidence: float = GateConfig.min_confidence
    gate_min_dsr: float = GateConfig.min_dsr
    gate_economic: bool = GateConfig.economic
    gate_benchmark: str = GateConfig.benchmark
    optuna_storage: str = "sqlite:///optuna.db"
    n_jobs: int = 0
    backtest_mode: str = "long_short"
    on_hold: str = "auto"
    sizing: str = "full"
    primary: str = "none"
    fee_bps: float = BacktestConfig.fee_bps
    slippage_bps: float = BacktestConfig.slippage_bps

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            expected = {"int": int, "float": (int, float), "bool": bool, "str": str}[f.type]
            if not isinstance(value, expected) or (f.type != "bool" and isinstance(value, bool)):
                raise TypeError(f"{f.name} must be {f.type}, got {value!r} ({type(value).__name__})")
            if f.type == "float" and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        checks = [
            (self.days >= 0, "days must be >= 0 (0 = all history)"),
            (self.horizon >= 1, "horizon must be >= 1 bar"),
            (0 < self.threshold < 1, "threshold must be a fraction in (0, 1), e.g. 0.005 for 0.5%"),
            (self.vol_window == 0 or self.vol_window >= 2, "vol_window must be 0 (fixed threshold) or >= 2"),
            (self.label in LABELS, f"label must be one of {list(LABELS)}"),
            (self.sample_weights in SAMPLE_WEIGHTS, f"sample_weights must be one of {list(SAMPLE_WEIGHTS)}"),
            (self.features in FEATURE_SETS, f"features must be one of {list(FEATURE_SETS)}"),
            (self.n_trials >= 1, "n_trials must be >= 1"),
            (self.timeout >= 0, "timeout must be >= 0 seconds (0 = no limit)"),
            (self.objective in OBJECTIVES, f"objective must be one of {list(OBJECTIVES)}"),
            # More folds than 20 leave validation blocks of a few dozen rows at the minimum data size.
            (2 <= self.n_folds <= MAX_FOLDS, f"n_folds must be in [2, {MAX_FOLDS}]"),
            (0 < self.holdout_frac < 0.5, "holdout_frac must be in (0, 0.5)"),
            (0 <= self.gate_min_f1 <= 1, "gate_min_f1 must be a macro-F1 in [0, 1]"),
            (0 <= self.gate_margin < 1, "gate_margin must be in [0, 1)"),
            (0.5 <= self.gate_confidence < 1, "gate_confidence must be a probability in [0.5, 1)"),
            (0 <= self.gate_min_dsr < 1, "gate_min_dsr must be in [0, 1) (0 = off)"),
            (self.gate_benchmark in BENCHMARKS, f"gate_benchmark must be one of {list(BENCHMARKS)}"),
            (self.n_jobs >= 0, "n_jobs must be >= 0 (0 = all cores)"),
            (self.backtest_mode in MODES, f"backtest_mode must be one of {list(MODES)}"),
            (self.on_hold in ("auto", *ON_HOLD), f"on_hold must be one of {['auto', *ON_HOLD]}"),
            (self.sizing in SIZINGS, f"sizing must be one of {list(SIZINGS)}"),
            (self.primary in PRIMARIES, f"primary must be one of {list(PRIMARIES)}"),
            (self.fee_bps >= 0, "fee_bps must be >= 0 basis points"),
            (self.slippage_bps >= 0, "slippage_bps must be >= 0 basis points"),
            (bool(self.model_name.strip()), "model_name must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}; got {self._value_for(message)}")
        check_model_names(self.model_list)
        try:
            parse_context_timeframe(self.context_timeframe)
        except DataError as exc:
            raise ValueError(str(exc)) from None  # the message names context_timeframe and the fix

    def _value_for(self, message: str) -> str:
        name = message.split(" ", 1)[0]
        return f"{name}={getattr(self, name)!r}"

    @property
    def cost(self) -> float:
        """Fees plus slippage per unit of notional traded, as a fraction (15 bps -> 0.0015)."""
        return (self.fee_bps + self.slippage_bps) / 1e4

    @property
    def side_column(self) -> str | None:
        """The primary side's feature column under meta-labeling (``features.primary``), else None."""
        return None if self.primary == "none" else PRIMARY_COLUMN

    @property
    def hold(self) -> str:
        """``on_hold`` with "auto" resolved: "keep" without a primary; "flat" with one, where a hold is the
        secondary model saying the primary's bet does not pay now (so no bet is carried against the side)."""
        if self.on_hold != "auto":
            return self.on_hold
        return "flat" if self.primary != "none" else "keep"

    @property
    def size_null(self) -> float:
        """What probability sizing measures p against: 1/2 for a primary's pays / does not, else 1/3."""
        return 0.5 if self.primary != "none" else 1.0 / 3.0

    @property
    def weighting(self) -> str:
        """``sample_weights`` with "auto" resolved: "uniqueness" for triple_barrier, "none" for threshold."""
        return resolve_sample_weights(self.label, self.sample_weights)

    @property
    def model_list(self) -> list[str]:
        return [m.strip() for m in self.models.split(",") if m.strip()]

    def to_dict(self) -> dict:
        return asdict(self)

    def fingerprint(self, data_sha256: str, model: str, space_version: int) -> str:
        """Identity of a study: everything that changes what a trial measures (not n_trials/timeout)."""
        keys = (
            "data",
            "timeframe",
            "days",
            "horizon",
            "threshold",
            "vol_window",
            "features",
            "n_folds",
            "holdout_frac",
            "seed",
            # trials backtest their out-of-fold predictions with the policy's rules and these costs
            "backtest_mode",
            "fee_bps",
            "slippage_bps",
        )
        payload = {k: getattr(self, k) for k in keys} | {
            "on_hold": self.hold,  # resolved: "auto" and its value are one study
            "data_sha256": data_sha256,
            "model": model,
            "space_version": space_version,
        }
        if self.label != "threshold":
            payload["label"] = self.label  # only when set, so threshold studies keep their names
        if self.weighting != "none":
            payload["sample_weights"] = self.weighting  # resolved: "auto" and its value are one study
        if self.context_timeframe.strip():
            # Only when set, so studies without context keep their names; "4h" and "240min" are one study.
            payload["context_timeframe"] = context_label(self.context_timeframe)
        if self.pair_data.strip():
            payload["pair_data"] = self.pair_data.strip()  # only when set: studies without keep their names
        if self.sizing != "full":
            payload["sizing"] = self.sizing  # the trials' out-of-fold Sharpe ratios trade sized positions
        if self.primary != "none":
            payload["primary"] = self.primary  # other labels (meta-labels) and a side feature
        if self.objective != "macro_f1":
            # What the trials' values mean: never one study for two objectives (macro_f1 studies keep
            # their names). run_study also refuses a study whose metric name is another objective's.
            payload["objective"] = self.objective
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


HELP = {
    "data": "'builtin' (BTC/USD 30m, 2017-10..2019-10), 'demo' (synthetic, with a planted edge), a "
    "CSV/Parquet OHLCV file, exchange:<exchange>:<symbol>:<timeframe> or runs:/<run id>/...",
    "timeframe": "resample to this bar size, e.g. 1h or 4h ('' = keep the native bars)",
    "days": "keep only the last N days (0 = all)",
    "horizon": "label horizon in bars (forward return over this many bars)",
    "threshold": "label threshold: fraction (fixed mode) or multiple of sigma*sqrt(horizon) (vol mode)",
    "vol_window": "0 = fixed threshold; N>=2 = scale the threshold by the volatility of the last N bars",
    "label": "threshold (forward return after horizon bars beyond +-threshold) or triple_barrier (first of "
    "profit-take / stop-loss at +-threshold, or the time barrier at horizon bars: hold)",
    "sample_weights": "weigh rows by their labels' average uniqueness (uniqueness), or not (none); auto = "
    "uniqueness for triple_barrier, none for threshold",
    "features": f"feature set: {', '.join(FEATURE_SETS)}",
    "context_timeframe": "also feed the same indicators computed on this coarser timeframe, e.g. 4h, as "
    "ctx_4h_* columns; a whole multiple >= 2 of the bar ('' = none)",
    "pair_data": "a second instrument's candles (same sources as data, e.g. a CSV of ETH/BTC), loaded at the "
    "same timeframe, whose pair_* features (returns, volatility, volume, correlation) are added ('' = none)",
    "n_trials": "finished Optuna trials per model study (an interrupted study resumes up to this)",
    "timeout": "seconds of tuning per model, a safety net: n_trials ends a study; when this cuts one short, "
    "the run says so and its model depends on the machine's speed (0 = no limit)",
    "objective": "what tuning maximises: macro_f1 (mean over the folds) or sharpe (after-cost Sharpe of "
    "the decision policy chosen on the pooled out-of-fold predictions)",
    "models": f"comma list from {', '.join(MODEL_NAMES)}",
    "model_name": "registered model name",
    "seed": "random seed (samplers, models, baselines)",
    "dry_run": "validate data and print the plan; train nothing, register nothing",
    "n_folds": f"purged walk-forward folds (2 to {MAX_FOLDS})",
    "holdout_frac": "share of the rows, at the end, kept as the untouched holdout",
    "gate_min_f1": "gate: minimum holdout macro-F1 (0 = information only)",
    "gate_margin": "gate: macro-F1 margin over the best baseline that blocks (0 = information only)",
    "gate_confidence": "gate: 1 - significance level of each test, before dividing by the holdout's looks",
    "gate_min_dsr": "gate: minimum deflated Sharpe ratio of the chosen strategy's out-of-fold after-cost "
    "returns, counting trials x effective policy rules x ensemble members x holdout looks (0 = no check)",
    "gate_economic": "gate: judge what the bot trades: timing (shifted positions), flat and the informed "
    "baselines traded the same way, after costs (false = classifier only)",
    "gate_benchmark": "gate: none (buy-and-hold reported only) or buy_and_hold (must beat it too)",
    "optuna_storage": "Optuna storage URL (sqlite:///optuna.db, or postgresql://... to share studies)",
    "n_jobs": "cores to use: LightGBM and XGBoost fit this many folds at once, one thread each; the random "
    "forest fits one fold at a time on this many threads (0 = all cores)",
    "backtest_mode": "decision policy and backtest: long_short (sell = short) or long_only (sell = flat)",
    "on_hold": "decision policy: on hold (no confident signal) keep the current position, or go flat; "
    "auto: flat with a primary, else keep",
    "primary": "meta-labeling: none, or momentum (a primary side, the sign of the trailing horizon-bar "
    "return, is a feature; the models learn whether acting on it pays, and probability sizing sizes "
    "against 1/2)",
    "sizing": "decision policy: full (a buy or sell holds 1) or probability (bet sizing: 2*Phi(z)-1 of "
    "the side's probability, in steps of 0.25)",
    "fee_bps": "holdout backtest: fee per unit of notional traded, in basis points",
    "slippage_bps": "holdout backtest: slippage per unit of notional traded, in basis points",
}


def pipeline_parser(
    prog: str = "python -m train.pipeline",
    description: str = "Tune, ensemble, evaluate, gate and register a buy/sell/hold classifier.",
    **defaults: Any,
) -> cli.Parser:
    """The pipeline's options, one per :class:`PipelineConfig` field (its defaults, or ``defaults`` for a
    command that runs the pipeline cheaper, e.g. the walk-forward), and ``--log-level``."""
    parser = cli.Parser(prog, description)
    cli.add_options(parser, replace(PipelineConfig(), **defaults) if defaults else PipelineConfig, HELP)
    # How much the command says; not a PipelineConfig field (not a run parameter, not in the fingerprint).
    cli.add_log_level(parser)
    return parser


# `python -m train.pipeline`'s parser under the name the tests know (the entry points import pipeline_parser).
build_parser = pipeline_parser


def pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    """The :class:`PipelineConfig` of parsed options (a command's other options are left out)."""
    return PipelineConfig(**{f.name: getattr(args, f.name) for f in fields(PipelineConfig)})


def parse_args(argv: list[str] | None = None) -> PipelineConfig:
    return pipeline_config(pipeline_parser().parse_args(argv))
