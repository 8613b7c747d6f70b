"""The promotion gate: every check, its numbers and the decision, as a report a person can read.

"Passed" means: on holdout rows that no choice was made on, the candidate's calls beat the best of the
trivial *and informed* baselines by a margin more than luck explains, its buy/sell calls pick the right
direction more often than the base rates, the bot acting on its signals through the logged decision
policy beats doing nothing after fees and slippage (block bootstrap) with a deflated Sharpe ratio that
counts every tuning trial, and it is not worse than the production version on rows that version never
trained on. Nothing here computes features or talks to MLflow: the pipeline hands in the numbers.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field

import numpy as np

from evaluation.economics import bootstrap_mean_positive, directional_edge
from evaluation.metrics import block_bootstrap_gain, macro_f1


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the gate (all on the holdout, all configurable from the CLI / MLproject)."""

    min_macro_f1: float = 0.36
    min_margin: float = 0.02
    min_confidence: float = 0.95
    champion_tolerance: float = 0.0
    n_boot: int = 500
    # Minimum deflated Sharpe ratio of the decision policy's holdout backtest; 0 leaves the check out.
    min_dsr: float = 0.95
    # The policy's holdout backtest must beat doing nothing after costs (block bootstrap).
    economic: bool = True
    # Fewer holdout rows after the champion's training window than this: it is not compared (see below).
    min_champion_rows: int = 100

    def __post_init__(self):
        for name in ("min_macro_f1", "min_margin", "champion_tolerance", "min_dsr", "min_confidence"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise TypeError(f"gate setting {name} must be a finite number, got {value!r}")
        if not 0.0 <= self.min_macro_f1 <= 1.0:
            raise ValueError(f"gate_min_f1 must be in [0, 1], got {self.min_macro_f1!r}")
        if not 0.0 <= self.min_margin < 1.0:
            raise ValueError(f"gate_margin must be in [0, 1), got {self.min_margin!r}")
        if not 0.5 <= self.min_confidence < 1.0:
            raise ValueError(f"gate_confidence must be in [0.5, 1), got {self.min_confidence!r}")
        if not 0.0 <= self.min_dsr < 1.0:
            raise ValueError(f"gate_min_dsr must be in [0, 1) (0 = off), got {self.min_dsr!r}")
        if not isinstance(self.economic, bool):
            raise TypeError(f"gate setting economic must be true or false, got {self.economic!r}")
        for name in ("n_boot", "min_champion_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"gate setting {name} must be an int >= 1, got {value!r}")


@dataclass
class GateCheck:
    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str


@dataclass
class ChampionComparison:
    """The production version against the candidate on holdout rows that version never trained on.

    ``comparable`` is False when it predicts another label or cannot score these candles (``note`` says
    why). ``rows`` counts holdout rows after its ``trained_until`` plus its horizon; the scores and
    after-cost returns of both models are on exactly those rows (None when there are none).
    """

    version: str
    comparable: bool = True
    note: str = ""
    rows: int = 0
    candidate_macro_f1: float | None = None
    champion_macro_f1: float | None = None
    candidate_return: float | None = None
    champion_return: float | None = None


def compare_with_champion(
    version: str,
    rows: np.ndarray,
    y_true,
    candidate_pred,
    champion_pred,
    candidate_returns,
    champion_returns,
    note: str = "",
) -> ChampionComparison:
    """Scores and compounded after-cost returns of both models on the holdout rows selected by ``rows``.

    Predictions are per holdout row; returns are per holdout row too (NaN where a row has no period to
    trade, e.g. the last one), each from the model's own decision policy run over the whole holdout.
    """
    rows = np.asarray(rows, dtype=bool)
    if not rows.any():
        return ChampionComparison(version, note=note, rows=0)
    y = np.asarray(y_true)[rows]
    cand_r, champ_r = np.asarray(candidate_returns)[rows], np.asarray(champion_returns)[rows]
    tradable = np.isfinite(cand_r) & np.isfinite(champ_r)
    return ChampionComparison(
        version,
        note=note,
        rows=int(rows.sum()),
        candidate_macro_f1=macro_f1(y, np.asarray(candidate_pred)[rows]),
        champion_macro_f1=macro_f1(y, np.asarray(champion_pred)[rows]),
        candidate_return=float(np.prod(1 + cand_r[tradable]) - 1),
        champion_return=float(np.prod(1 + champ_r[tradable]) - 1),
    )


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

    def check(self, name: str) -> GateCheck:
        return next(c for c in self.checks if c.name == name)


def _champion_check(champion: ChampionComparison | None, config: GateConfig) -> GateCheck:
    name = "not_worse_than_production"
    if champion is None:
        return GateCheck(name, True, None, None, "no production version yet: nothing to compare against")
    v = champion.version
    if not champion.comparable:
        # An incomparable champion must not be replaced silently: promote by hand if the change is meant.
        return GateCheck(name, False, None, None, f"production v{v} could not be compared: {champion.note}")
    if champion.rows < config.min_champion_rows:
        # Scores on the champion's own training rows would flatter it: they are never used. With too few
        # unseen rows the candidate's own out-of-sample checks decide.
        return GateCheck(
            name,
            True,
            float(champion.rows),
            float(config.min_champion_rows),
            f"production v{v} trained on candles up to (or past) most of this holdout: only "
            f"{champion.rows} holdout rows come after its training window plus horizon (need "
            f"{config.min_champion_rows}), so it is not compared; rule: the candidate's own out-of-sample "
            f"checks decide. {champion.note}".strip(),
        )
    f1_ok = champion.candidate_macro_f1 >= champion.champion_macro_f1 - config.champion_tolerance
    money_ok = champion.candidate_return >= champion.champion_return
    return GateCheck(
        name,
        bool(f1_ok and money_ok),
        champion.candidate_macro_f1 - champion.champion_macro_f1,
        -config.champion_tolerance,
        f"on the {champion.rows} holdout rows after production v{v}'s training window: macro-F1 "
        f"{champion.candidate_macro_f1:.4f} vs {champion.champion_macro_f1:.4f} (tolerance "
        f"{config.champion_tolerance:.4f}), after-cost return {champion.candidate_return:+.2%} vs "
        f"{champion.champion_return:+.2%}; both must be at least production's. {champion.note}".strip(),
    )


def evaluate_gate(
    y_true,
    candidate_pred,
    baseline_preds: dict[str, np.ndarray],
    config: GateConfig,
    block: int,
    seed: int = 0,
    returns=None,
    dsr: dict | None = None,
    champion: ChampionComparison | None = None,
) -> GateReport:
    """Decide whether the candidate may become ``production``.

    ``candidate_pred`` and ``baseline_preds`` are class calls on the holdout rows ``y_true``; ``returns``
    are the decision policy's after-cost returns per holdout period (the backtest); ``dsr`` is
    ``evaluation.backtest.deflated_sharpe`` output with the measured trial statistics.

    Checks: (1) macro-F1 >= a floor; (2) it beats the best baseline (trivial and informed) by a margin;
    (3) a moving-block bootstrap finds the gain over that baseline positive with the required confidence;
    (4) its buy/sell calls on rows that moved pick the right direction more often than the base rates
    (bootstrap, same confidence); (5) the policy's backtest beats doing nothing after costs (bootstrap of
    the mean period return, same confidence); (6) its deflated Sharpe ratio reaches ``min_dsr``; (7) it is
    not worse than production on rows production never trained on (classification and money).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    candidate_pred = np.asarray(candidate_pred, dtype=np.int64)
    candidate_f1 = macro_f1(y_true, candidate_pred)
    baseline_f1 = {k: macro_f1(y_true, p) for k, p in baseline_preds.items()}
    best_name = max(baseline_f1, key=baseline_f1.get)
    best_f1 = baseline_f1[best_name]
    conf = config.min_confidence
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
            f"= {candidate_f1 - best_f1:+.4f}, margin required {config.min_margin:.4f} (baselines: "
            + ", ".join(f"{k} {v:.4f}" for k, v in baseline_f1.items())
            + ")",
        ),
    ]
    p_gain, gain_p5 = block_bootstrap_gain(
        y_true, candidate_pred, baseline_preds[best_name], block=block, n_boot=config.n_boot, seed=seed
    )
    checks.append(
        GateCheck(
            "gain_is_significant",
            p_gain >= conf,
            p_gain,
            conf,
            f"moving-block bootstrap ({config.n_boot} resamples, blocks of {block} rows): gain over "
            f"'{best_name}' > 0 in {p_gain:.1%} of resamples (5th percentile {gain_p5:+.4f})",
        )
    )
    edge = directional_edge(y_true, candidate_pred, block=block, n_boot=config.n_boot, seed=seed)
    checks.append(
        GateCheck(
            "directional_edge",
            edge.p_positive >= conf,
            edge.p_positive,
            conf,
            f"of {edge.n_calls} buy/sell calls, {edge.n_called_moves} fell on rows that moved; the direction "
            f"was right in {edge.precision:.1%} of them vs {edge.base_rate:.1%} by the base rates of the "
            f"directions called (buy {edge.buy_precision:.1%} vs {edge.buy_base_rate:.1%}, sell "
            f"{edge.sell_precision:.1%} vs {edge.sell_base_rate:.1%}); better in {edge.p_positive:.1%} of "
            "block-bootstrap resamples",
        )
    )
    if config.economic:
        if returns is None or len(returns) < 3:
            checks.append(GateCheck("beats_flat_after_costs", False, None, conf, "no holdout backtest"))
        else:
            r = np.asarray(returns, dtype=float)
            boot = bootstrap_mean_positive(r, block=block, n_boot=config.n_boot, seed=seed)
            total = float(np.prod(1 + r) - 1)
            checks.append(
                GateCheck(
                    "beats_flat_after_costs",
                    bool(boot["p_positive"] >= conf and total > 0),
                    boot["p_positive"],
                    conf,
                    f"the decision policy's holdout backtest after fees and slippage returned {total:+.2%} "
                    f"over {len(r)} periods; its mean period return beat doing nothing (0) in "
                    f"{boot['p_positive']:.1%} of {config.n_boot} block-bootstrap resamples (blocks of "
                    f"{boot['block']}; 5th percentile {boot['mean_p5']:+.2e})",
                )
            )
    if config.min_dsr > 0:
        value = float("nan") if dsr is None else float(dsr["dsr"])
        detail = "no deflated Sharpe ratio computed"
        if dsr is not None:
            measured = "measured over their out-of-fold backtests" if dsr.get("measured") else "assumed"
            detail = (
                f"deflated Sharpe ratio {value:.3f} vs required {config.min_dsr:.3f}: holdout Sharpe per "
                f"period {dsr['sharpe_per_period']:.4f} against {dsr['sr0']:.4f}, the best expected by luck "
                f"from {dsr['n_trials']} trials whose Sharpe ratios vary by {dsr['sr_variance']:.2e} "
                f"({measured})"
            )
        checks.append(
            GateCheck("deflated_sharpe", bool(value >= config.min_dsr), value, config.min_dsr, detail)
        )
    checks.append(_champion_check(champion, config))
    return GateReport(
        passed=all(c.passed for c in checks),
        checks=checks,
        candidate_macro_f1=candidate_f1,
        baseline_name=best_name,
        baseline_macro_f1=best_f1,
        champion_version=None if champion is None else champion.version,
        champion_macro_f1=None if champion is None else champion.champion_macro_f1,
        config=asdict(config),
    )
