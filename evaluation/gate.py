"""The promotion gate: every check, its numbers and the decision, as a report a person can read."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from evaluation.metrics import block_bootstrap_gain


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the gate (all on the holdout, all configurable from the CLI / MLproject)."""

    min_macro_f1: float = 0.36
    min_margin: float = 0.02
    min_confidence: float = 0.95
    champion_tolerance: float = 0.0
    n_boot: int = 500
    # Minimum deflated Sharpe ratio of the holdout backtest after costs; 0 leaves the check out.
    min_dsr: float = 0.0

    def __post_init__(self):
        for name in ("min_macro_f1", "min_margin", "champion_tolerance", "min_dsr"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not np.isfinite(value):
                raise TypeError(f"gate setting {name} must be a finite number, got {value!r}")
        if not 0.0 <= self.min_confidence < 1.0:
            raise ValueError(f"gate_confidence must be in [0, 1), got {self.min_confidence!r}")
        if not 0.0 <= self.min_dsr < 1.0:
            raise ValueError(f"gate_min_dsr must be in [0, 1) (0 = off), got {self.min_dsr!r}")


@dataclass
class GateCheck:
    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str


@dataclass
class GateReport:
    passed: bool
    checks: list[GateCheck] = field(default_factory=list)
    candidate_macro_f1: float = float("nan")
    baseline_name: str = ""
    baseline_macro_f1: float = float("nan")
    champion_version: str | None = None
    champion_macro_f1: float | None = None
    config: dict = field(default_factory=dict)

    @property
    def result(self) -> str:
        return "passed" if self.passed else "failed"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["result"] = self.result
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=float)

    def failed_checks(self) -> list[str]:
        return [c.name for c in self.checks if not c.passed]


def evaluate_gate(
    y_true,
    candidate_pred,
    baseline_preds: dict[str, np.ndarray],
    baseline_f1: dict[str, float],
    candidate_f1: float,
    config: GateConfig,
    block: int,
    champion_f1: float | None = None,
    champion_version: str | None = None,
    champion_note: str = "",
    seed: int = 0,
    dsr: float | None = None,
) -> GateReport:
    """Decide whether the candidate may become ``production``.

    Checks: (1) holdout macro-F1 >= a floor; (2) it beats the best trivial baseline by a margin;
    (3) a moving-block bootstrap says the gain over that baseline is positive with the required
    confidence (so a lucky holdout does not pass); (4) it is not worse than the current production
    version scored on the same holdout (passes trivially when there is none); and, when
    ``config.min_dsr`` > 0, (5) the holdout backtest's deflated Sharpe ratio ``dsr`` reaches it.
    """
    best_name = max(baseline_f1, key=baseline_f1.get)
    best_f1 = baseline_f1[best_name]
    checks = [
        GateCheck(
            "macro_f1_floor",
            candidate_f1 >= config.min_macro_f1,
            candidate_f1,
            config.min_macro_f1,
            f"holdout macro-F1 {candidate_f1:.4f} vs floor {config.min_macro_f1:.4f}",
        ),
        GateCheck(
            "beats_best_baseline",
            candidate_f1 - best_f1 >= config.min_margin,
            candidate_f1 - best_f1,
            config.min_margin,
            f"macro-F1 {candidate_f1:.4f} - best baseline '{best_name}' {best_f1:.4f} "
            f"= {candidate_f1 - best_f1:+.4f}, margin required {config.min_margin:.4f}",
        ),
    ]
    p_gain, gain_p5 = block_bootstrap_gain(
        y_true, candidate_pred, baseline_preds[best_name], block=block, n_boot=config.n_boot, seed=seed
    )
    checks.append(
        GateCheck(
            "gain_is_significant",
            p_gain >= config.min_confidence,
            p_gain,
            config.min_confidence,
            f"moving-block bootstrap ({config.n_boot} resamples, blocks of {block} rows): gain over "
            f"'{best_name}' > 0 in {p_gain:.1%} of resamples (5th percentile {gain_p5:+.4f})",
        )
    )
    if champion_version is None:
        checks.append(
            GateCheck(
                "not_worse_than_production",
                True,
                None,
                None,
                champion_note or "no production version yet: nothing to compare against",
            )
        )
    elif champion_f1 is None:
        # A production version exists but could not be scored on these candles: an incomparable
        # comparison must not let the candidate replace it silently.
        checks.append(
            GateCheck(
                "not_worse_than_production",
                False,
                None,
                None,
                f"production v{champion_version} could not be compared: {champion_note}",
            )
        )
    else:
        checks.append(
            GateCheck(
                "not_worse_than_production",
                candidate_f1 >= champion_f1 - config.champion_tolerance,
                candidate_f1 - champion_f1,
                -config.champion_tolerance,
                f"candidate {candidate_f1:.4f} vs production v{champion_version} {champion_f1:.4f} on the "
                f"same holdout (tolerance {config.champion_tolerance:.4f}). {champion_note}".strip(),
            )
        )
    if config.min_dsr > 0:
        value = float("nan") if dsr is None else float(dsr)
        checks.append(
            GateCheck(
                "backtest_deflated_sharpe",
                bool(value >= config.min_dsr),  # NaN (no trades, no variance) fails
                value,
                config.min_dsr,
                f"deflated Sharpe ratio of the holdout backtest after costs {value:.3f} vs required "
                f"{config.min_dsr:.3f}",
            )
        )
    return GateReport(
        passed=all(c.passed for c in checks),
        checks=checks,
        candidate_macro_f1=candidate_f1,
        baseline_name=best_name,
        baseline_macro_f1=best_f1,
        champion_version=champion_version,
        champion_macro_f1=champion_f1,
        config=asdict(config),
    )
