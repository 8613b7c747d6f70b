"""The promotion gate: every check, its numbers and the decision, as a report a trader can read.

"Passed" means: the bot, acting on this model through its logged decision policy, made money after fees and
slippage on holdout rows that no choice was made on, and its timing earned more than the same positions
held at other times (drift and "always long" fall inside that null), more than the informed baselines
traded by the same rules, by more than luck, the trials tried and the earlier looks at this holdout explain;
and it is not worse than the production version on rows that version never trained on. Macro-F1 against
the baselines is reported beside it, and blocks only where the user asks (``min_macro_f1``, ``min_margin``).
Nothing here computes features or talks to MLflow: the pipeline hands in the traded series and the numbers.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field

import numpy as np

from evaluation.economics import directional_edge
from evaluation.metrics import block_bootstrap_gain, macro_f1
from evaluation.nulls import (
    MIN_OFFSETS,
    Traded,
    block_length,
    paired_bootstrap,
    politis_white,
    resamples_for,
    timing_null,
)
from features.labels import HOLD

BENCHMARKS: tuple[str, ...] = ("none", "buy_and_hold")


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the gate (all configurable from the CLI / MLproject)."""

    # Macro-F1 floor; 0 = information only (the gate bench: a floor of 0.36 stopped no false promotion
    # and blocked a true one).
    min_macro_f1: float = 0.0
    # Macro-F1 margin over the best baseline; 0 = information only, > 0 makes it a blocking check.
    min_margin: float = 0.0
    # 1 - the significance level of every test, before it is divided by the number of holdout looks.
    min_confidence: float = 0.95
    champion_tolerance: float = 0.0
    # Bootstrap resamples at the least (more when many looks call for a smaller significance level).
    n_boot: int = 1000
    # Minimum deflated Sharpe ratio of the chosen strategy out of fold, every strategy tried counted (the
    # pipeline computes it); 0 leaves the check out.
    min_dsr: float = 0.95
    # The economic checks (timing, flat, the baselines traded, the benchmark); False: classifier only.
    economic: bool = True
    # Fewer holdout rows after the champion's training window than this: it is not compared (see below).
    min_champion_rows: int = 100
    # A market the strategy must beat too ("buy_and_hold"), or "none" (reported, never blocking).
    benchmark: str = "none"

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
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"gate_benchmark must be one of {list(BENCHMARKS)}, got {self.benchmark!r}")
        for name in ("n_boot", "min_champion_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"gate setting {name} must be an int >= 1, got {value!r}")

    @property
    def alpha(self) -> float:
        """Significance level of one test on a holdout looked at once."""
        return 1.0 - self.min_confidence


@dataclass
class GateCheck:
    """One check. ``blocking`` False: reported for information, never decides."""

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str
    blocking: bool = True


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
    looks: int = 1  # times this holdout has been scored, this run included
    alpha: float = 0.05  # the significance level every test used: (1 - confidence) / looks
    block: int | None = None  # mean block length of the resampling, measured from the traded series

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
        """Blocking checks that failed (what decided a refusal)."""
        return [c.name for c in self.checks if c.blocking and not c.passed]

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
    f1, f1_prod = champion.candidate_macro_f1, champion.champion_macro_f1
    ret, ret_prod = champion.candidate_return, champion.champion_return
    if f1 is None or f1_prod is None or ret is None or ret_prod is None:  # comparable ones have all four
        return GateCheck(
            name, False, None, None, f"production v{v} has no comparable numbers: {champion.note}"
        )
    f1_ok = f1 >= f1_prod - config.champion_tolerance
    money_ok = ret >= ret_prod
    return GateCheck(
        name,
        bool(f1_ok and money_ok),
        f1 - f1_prod,
        -config.champion_tolerance,
        f"on the {champion.rows} holdout rows after production v{v}'s training window: macro-F1 "
        f"{f1:.4f} vs {f1_prod:.4f} (tolerance {config.champion_tolerance:.4f}), after-cost return "
        f"{ret:+.2%} vs {ret_prod:+.2%}; both must be at least production's. {champion.note}".strip(),
    )


def _pct(p: float) -> str:
    """A p-value as a trader reads it."""
    return f"{p:.2%}" if p >= 0.001 else f"{p:.2e}"


def _classification_checks(
    y_true: np.ndarray,
    candidate_pred: np.ndarray,
    baseline_preds: dict[str, np.ndarray],
    config: GateConfig,
    alpha: float,
    block: int,
    horizon: int,
    n_boot: int,
    seed: int,
) -> tuple[list[GateCheck], str, float, float, int]:
    candidate_f1 = macro_f1(y_true, candidate_pred)
    baseline_f1 = {k: macro_f1(y_true, p) for k, p in baseline_preds.items()}
    best_name = max(baseline_f1, key=lambda k: baseline_f1[k])
    best_f1 = baseline_f1[best_name]
    margin_blocks = config.min_margin > 0
    # Rows' labels overlap by the horizon, and right calls cluster: resample blocks at least that long.
    hits = (candidate_pred == y_true).astype(float) - (baseline_preds[best_name] == y_true)
    block = int(min(max(block, horizon, math.ceil(politis_white(hits))), max(1, len(y_true) // 4)))
    p_gain, gain_p5 = block_bootstrap_gain(
        y_true, candidate_pred, baseline_preds[best_name], block=block, n_boot=n_boot, seed=seed
    )
    others = ", ".join(f"{k} {v:.4f}" for k, v in baseline_f1.items())
    checks = [
        GateCheck(
            "macro_f1_floor",
            candidate_f1 >= config.min_macro_f1,
            candidate_f1,
            config.min_macro_f1,
            f"holdout macro-F1 {candidate_f1:.4f} vs floor {config.min_macro_f1:.4f}",
            blocking=config.min_macro_f1 > 0,
        ),
        GateCheck(
            "macro_f1_vs_baselines",
            bool(candidate_f1 - best_f1 >= config.min_margin and 1 - p_gain <= alpha),
            candidate_f1 - best_f1,
            config.min_margin,
            f"macro-F1 {candidate_f1:.4f} - best baseline '{best_name}' {best_f1:.4f} = "
            f"{candidate_f1 - best_f1:+.4f}; the gain is positive in {p_gain:.1%} of {n_boot} "
            f"block-bootstrap resamples (blocks of {block}; 5th percentile {gain_p5:+.4f}); "
            f"baselines: {others}. "
            + (
                f"Blocking: margin {config.min_margin:.4f} and significance {_pct(alpha)} required."
                if margin_blocks
                else "Information: the calls' scores, not what the bot earns (gate_margin > 0 blocks)."
            ),
            blocking=margin_blocks,
        ),
    ]
    return checks, best_name, candidate_f1, best_f1, block


def _direction_check(y_true: np.ndarray, actions: np.ndarray | None, block: int, n_boot: int, seed: int):
    """How often the directions the bot acted on were right, against the base rates (information)."""
    if actions is None:
        return None
    calls = np.asarray(actions, dtype=np.int64)
    calls = np.where(calls < 0, HOLD, calls)  # not ready: no call
    edge = directional_edge(y_true, calls, block=block, n_boot=n_boot, seed=seed)
    return GateCheck(
        "directional_edge",
        edge.p_positive >= 0.95,
        edge.p_positive,
        0.95,
        f"the policy acted on {edge.n_calls} buy/sell signals; {edge.n_called_moves} fell on rows that "
        f"moved, and the direction was right in {edge.precision:.1%} of them vs {edge.base_rate:.1%} "
        f"by the base rates (better in {edge.p_positive:.1%} of block-bootstrap resamples). "
        "Information: the timing check below tests what these trades earned.",
        blocking=False,
    )


def _timing_check(traded: Traded, alpha: float) -> GateCheck:
    null = timing_null(traded)
    enough = null.n_offsets >= MIN_OFFSETS
    detail = (
        f"the same positions (held {null.holding_period:.1f} periods on average, in the market "
        f"{np.mean(traded.position != 0):.0%} of the time) shifted in time against the market by every "
        f"offset, circularly ({null.n_offsets} shifts: same exposure, holding times and turnover, no "
        f"timing): the strategy earned {null.mean_return:+.2e} "
        f"per period after costs, more than {null.percentile:.1%} of the shifted paths (their median "
        f"{null.null_median:+.2e}, 95th percentile {null.null_p95:+.2e}); p = {_pct(null.p_value)}, "
        f"required <= {_pct(alpha)}"
    )
    if not enough:
        detail += f"; too few periods to judge (need {MIN_OFFSETS + 1})"
    return GateCheck("timing_skill", bool(enough and null.p_value <= alpha), null.p_value, alpha, detail)


def _paired_checks(
    traded: Traded,
    baselines_traded: dict[str, Traded],
    config: GateConfig,
    alpha: float,
    block: int,
    n_boot: int,
    seed: int,
) -> list[GateCheck]:
    s = traded.net
    buy_hold = traded.with_position(np.ones(len(traded))).net
    alternatives = {"flat": np.zeros(len(s)), "buy_and_hold": buy_hold} | {
        k: t.net for k, t in baselines_traded.items()
    }
    res = paired_bootstrap(s, alternatives, block=block, n_boot=n_boot, seed=seed)
    how = f"stationary bootstrap, {n_boot} resamples, mean block {block} periods"
    flat = res["flat"]
    checks = [
        GateCheck(
            "beats_flat_after_costs",
            bool(flat.p_value <= alpha and flat.strategy_total > 0),
            flat.p_value,
            alpha,
            f"the decision policy's holdout backtest after fees and slippage returned "
            f"{flat.strategy_total:+.2%} over {len(s)} periods; its mean period return was not "
            f"above doing nothing in {flat.p_value:.2%} of resamples "
            f"({how}; 5th percentile {flat.difference_p5:+.2e}), "
            f"required <= {_pct(alpha)}",
        )
    ]
    if baselines_traded:
        worst = max(baselines_traded, key=lambda k: res[k].p_value)
        beaten = [k for k in baselines_traded if res[k].p_value <= alpha]
        lost = [k for k in baselines_traded if k not in beaten]
        each = "; ".join(
            f"{k} {res[k].alternative_total:+.2%} (p = {_pct(res[k].p_value)})" for k in baselines_traded
        )
        checks.append(
            GateCheck(
                "beats_baselines_traded",
                not lost,
                res[worst].p_value,
                alpha,
                f"the strategy ({flat.strategy_total:+.2%}) against each informed baseline traded by the "
                f"same policy rules, period by period ({how}): {each}; required "
                f"p <= {_pct(alpha)} for every one" + (f"; not beaten: {', '.join(lost)}" if lost else ""),
            )
        )
    bh = res["buy_and_hold"]
    blocking = config.benchmark == "buy_and_hold"
    checks.append(
        GateCheck(
            "beats_buy_and_hold",
            bool(bh.p_value <= alpha),
            bh.p_value,
            alpha,
            f"buy-and-hold made {bh.alternative_total:+.2%} over the same periods, the strategy "
            f"{bh.strategy_total:+.2%}; the strategy was not ahead in {bh.p_value:.2%} of resamples ({how}). "
            + (
                "Blocking (gate_benchmark=buy_and_hold)."
                if blocking
                else "Information: the timing check already removes the market's drift "
                "(gate_benchmark=buy_and_hold makes this block)."
            ),
            blocking=blocking,
        )
    )
    return checks


def _dsr_check(dsr: dict | None, config: GateConfig) -> GateCheck:
    value = float("nan") if dsr is None else float(dsr["dsr"])
    detail = "no deflated Sharpe ratio computed"
    if dsr is not None:
        counted = dsr.get("counted")
        count = f"{dsr['n_trials']:,} strategies tried" + (f" ({counted})" if counted else "")
        measured = dsr.get("variance_source") or (
            "measured over their out-of-fold backtests" if dsr.get("measured") else "assumed"
        )
        detail = (
            f"deflated Sharpe ratio {value:.3f} vs required {config.min_dsr:.3f}: "
            f"{dsr.get('sample', 'holdout')} Sharpe per period {dsr['sharpe_per_period']:.4f} over "
            f"{dsr['T']:,} periods against {dsr['sr0']:.4f}, the best expected by luck from "
            f"{count}, whose Sharpe ratios vary by {dsr['sr_variance']:.2e} ({measured})"
        )
    return GateCheck("deflated_sharpe", bool(value >= config.min_dsr), value, config.min_dsr, detail)


def evaluate_gate(
    y_true,
    candidate_pred,
    baseline_preds: dict[str, np.ndarray],
    config: GateConfig,
    traded: Traded | None = None,
    baselines_traded: dict[str, Traded] | None = None,
    actions=None,
    dsr: dict | None = None,
    champion: ChampionComparison | None = None,
    looks: int = 1,
    seed: int = 0,
    horizon: int = 1,
) -> GateReport:
    """Decide whether the candidate may become ``production``.

    ``candidate_pred`` and ``baseline_preds`` are class calls on the holdout rows ``y_true``. ``traded``
    is what the bot did on the holdout (the decision policy's positions, the market's period returns, the
    cost); ``baselines_traded`` the informed baselines' calls traded by the same policy rules over the same
    periods; ``actions`` the policy's action per holdout row; ``dsr`` is ``evaluation.backtest.
    deflated_sharpe`` output with every strategy tried counted; ``looks`` how many times this holdout has
    been scored, this run included: every test's significance level is (1 - confidence) / looks;
    ``horizon`` the label's, in rows (the classification checks resample blocks at least that long).

    Blocking checks: the timing null, beating flat, beating every informed baseline traded the same way,
    the deflated Sharpe ratio, not worse than production; buy-and-hold when ``config.benchmark`` says so;
    the macro-F1 floor and margin where configured. The rest is reported as information.
    """
    if isinstance(looks, bool) or not isinstance(looks, int) or looks < 1:
        raise ValueError(f"looks must be an int >= 1, got {looks!r}")
    y_true = np.asarray(y_true, dtype=np.int64)
    candidate_pred = np.asarray(candidate_pred, dtype=np.int64)
    alpha = config.alpha / looks
    n_boot = resamples_for(alpha, config.n_boot)
    has_backtest = traded is not None and len(traded) >= 3
    block = block_length(traded) if traded is not None and has_backtest else 1
    checks, best_name, candidate_f1, best_f1, label_block = _classification_checks(
        y_true, candidate_pred, baseline_preds, config, alpha, block, horizon, n_boot, seed
    )
    if (direction := _direction_check(y_true, actions, label_block, n_boot, seed)) is not None:
        checks.append(direction)
    if config.economic:
        if traded is None or not has_backtest:
            checks.append(GateCheck("timing_skill", False, None, alpha, "no holdout backtest"))
            checks.append(GateCheck("beats_flat_after_costs", False, None, alpha, "no holdout backtest"))
        else:
            checks.append(_timing_check(traded, alpha))
            checks += _paired_checks(traded, baselines_traded or {}, config, alpha, block, n_boot, seed)
    if config.min_dsr > 0:
        checks.append(_dsr_check(dsr, config))
    checks.append(_champion_check(champion, config))
    return GateReport(
        passed=all(c.passed for c in checks if c.blocking),
        checks=checks,
        candidate_macro_f1=candidate_f1,
        baseline_name=best_name,
        baseline_macro_f1=best_f1,
        champion_version=None if champion is None else champion.version,
        champion_macro_f1=None if champion is None else champion.champion_macro_f1,
        config=asdict(config),
        looks=looks,
        alpha=alpha,
        block=block if has_backtest else None,
    )
