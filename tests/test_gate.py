"""The promotion gate (evaluation/gate.py) and the holdout metrics it rests on (evaluation/metrics.py).

The gate's economic checks look at what the bot traded (``evaluation.nulls.Traded``); here the traded
series are made by hand: a market, a strategy's positions on it, and the informed baselines' positions
traded the same way. The class calls (for macro-F1) are a separate, independent input.
"""

import math

import numpy as np
import pytest

from evaluation.backtest import deflated_sharpe
from evaluation.gate import ChampionComparison, GateConfig, compare_with_champion, evaluate_gate
from evaluation.metrics import baseline_predictions, block_bootstrap_gain, classification_metrics, macro_f1
from evaluation.nulls import Traded
from features.labels import BUY, HOLD, SELL

ALL_CHECKS = [
    "macro_f1_floor",
    "macro_f1_vs_baselines",
    "directional_edge",
    "timing_skill",
    "beats_flat_after_costs",
    "beats_baselines_traded",
    "beats_buy_and_hold",
    "deflated_sharpe",
    "not_worse_than_production",
]
INFORMATION = {"macro_f1_floor", "macro_f1_vs_baselines", "directional_edge", "beats_buy_and_hold"}
N = 3000
COST = 0.0001


def _setup(accuracy, n=N, seed=0):
    """Holdout labels, a candidate that is right with probability `accuracy`, and the baselines' calls."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.25, 0.5, 0.25])
    pred = np.where(rng.random(n) < accuracy, y, rng.integers(0, 3, n))
    base = baseline_predictions(rng.choice(3, size=5000, p=[0.25, 0.5, 0.25]), n, seed)
    base_pred = {k: p.argmax(axis=1) for k, p in base.items()}
    return y, pred, base_pred


def _market(drift=0.0, seed=0, n=N):
    return drift + 0.004 * np.random.default_rng(seed).standard_normal(n)


def _skilled(market, noise, seed=5):
    """Positions from a noisy view of each period's own move: timing skill whose strength falls with
    ``noise`` (0.03: certain to show; 0.1: a p-value near 2.5% over 3,000 periods)."""
    view = market + noise * np.random.default_rng(seed).standard_normal(len(market))
    return Traded(np.sign(view), market, COST)


def _no_skill(market, seed, run=20):
    """A baseline traded without skill: a random side held for runs of about ``run`` periods."""
    rng = np.random.default_rng(seed)
    switch = rng.random(len(market)) < 1 / run
    side = rng.choice([-1.0, 1.0], len(market))
    return Traded(side[np.maximum.accumulate(np.where(switch, np.arange(len(market)), 0))], market, COST)


MARKET = _market()
GOOD = _skilled(MARKET, 0.03)
BASELINES = {k: _no_skill(MARKET, seed) for seed, k in enumerate(("volatility", "momentum", "reversal"))}
GOOD_DSR = deflated_sharpe(GOOD.net, n_trials=20) | {"measured": False}


def _gate(y, pred, base_pred, config=None, **kw):
    kw = {"traded": GOOD, "baselines_traded": BASELINES, "dsr": GOOD_DSR, "actions": pred} | kw
    return evaluate_gate(y, pred, base_pred, config or GateConfig(), **kw)


def _comparison(cand_f1, champ_f1, cand_ret, champ_ret, rows=500, version="3"):
    return ChampionComparison(
        version,
        rows=rows,
        candidate_macro_f1=cand_f1,
        champion_macro_f1=champ_f1,
        candidate_return=cand_ret,
        champion_return=champ_ret,
    )


def test_skilled_candidate_passes_every_check():
    assert GOOD_DSR["dsr"] > 0.99  # the fixture really is a strong backtest
    report = _gate(*_setup(accuracy=0.5))
    assert report.passed and report.result == "passed" and report.failed_checks() == []
    assert [c.name for c in report.checks] == ALL_CHECKS
    assert {c.name for c in report.checks if not c.blocking} == INFORMATION
    assert all(c.passed for c in report.checks)
    assert report.baseline_name == "stratified"  # majority-only has macro-F1 ~0.22 here
    assert report.looks == 1 and report.alpha == pytest.approx(0.05) and report.block >= 1
    assert report.check("timing_skill").value == pytest.approx(1 / N)  # it beat every shifted path
    assert report.check("deflated_sharpe").value == GOOD_DSR["dsr"]
    assert "no production" in report.check("not_worse_than_production").detail
    assert '"blocking": false' in report.to_json() and '"looks": 1' in report.to_json()


def test_steady_drift_without_timing_fails_the_timing_check():
    """Always long on a market that drifts up: it beats flat (and random baselines) on drift alone."""
    market = _market(drift=0.0005)
    long = Traded(np.ones(N), market, COST)
    assert np.prod(1 + long.net) > 2.5  # +150% and more: flat is no null for this
    baselines = {k: _no_skill(market, seed) for seed, k in enumerate(("volatility", "momentum", "reversal"))}
    report = _gate(*_setup(accuracy=0.5), traded=long, baselines_traded=baselines)
    assert report.failed_checks() == ["timing_skill"]
    timing = report.check("timing_skill")
    assert (
        timing.value == 1.0 and "shifted in time" in timing.detail and "in the market 100%" in timing.detail
    )
    assert report.check("beats_flat_after_costs").passed  # the old null would have let it through


def test_an_edge_close_in_macro_f1_to_a_rule_passes_when_it_trades_better():
    """The planted edge whose macro-F1 was within 0.02 of the reversal rule's: the rule traded the same
    way earns nothing, the candidate a lot. Macro-F1 is reported, the money decides."""
    y, pred, base_pred = _setup(accuracy=0.5)
    close = pred.copy()
    wrong = np.flatnonzero(close != y)[:40]
    close[wrong] = y[wrong]  # a rule that calls the same classes, a little more often right
    report = _gate(y, pred, base_pred | {"reversal": close})
    assert report.baseline_name == "reversal"
    assert abs(report.candidate_macro_f1 - report.baseline_macro_f1) < 0.02
    f1 = report.check("macro_f1_vs_baselines")
    assert not f1.passed and not f1.blocking and "Information" in f1.detail
    assert report.passed and report.check("beats_baselines_traded").passed
    # A user who wants the old blocking margin asks for it.
    strict = _gate(y, pred, base_pred | {"reversal": close}, GateConfig(min_margin=0.02))
    assert strict.failed_checks() == ["macro_f1_vs_baselines"]
    assert "Blocking" in strict.check("macro_f1_vs_baselines").detail


def test_trading_worse_than_a_baseline_traded_the_same_way_fails_naming_it():
    better = _skilled(MARKET, 0.02, seed=9)  # the reversal rule's trades time the market better
    assert better.net.mean() > GOOD.net.mean()
    report = _gate(*_setup(accuracy=0.5), baselines_traded=BASELINES | {"reversal": better})
    assert report.failed_checks() == ["beats_baselines_traded"]
    check = report.check("beats_baselines_traded")
    assert "not beaten: reversal" in check.detail and check.value > 0.05
    assert "momentum" in check.detail and "volatility" in check.detail  # each baseline with its numbers


def test_more_looks_at_the_holdout_raise_the_required_significance():
    moderate = Traded(_skilled(MARKET, 0.08).position, MARKET, 0.0)  # timing p near 1%
    y, pred, base_pred = _setup(accuracy=0.5)
    once = _gate(y, pred, base_pred, traded=moderate, baselines_traded={})
    p = once.check("timing_skill").value
    assert once.passed and 0.002 < p < 0.05
    looks = int(0.05 / p) + 1  # enough earlier looks to put the level below this p-value
    again = _gate(y, pred, base_pred, traded=moderate, baselines_traded={}, looks=looks)
    assert again.looks == looks and again.alpha == pytest.approx(0.05 / looks)
    assert "timing_skill" in again.failed_checks()
    assert again.check("timing_skill").threshold == pytest.approx(0.05 / looks)
    assert again.check("timing_skill").value == pytest.approx(p)  # the evidence is the same; the bar rose
    with pytest.raises(ValueError, match="looks"):
        _gate(y, pred, base_pred, looks=0)


@pytest.mark.parametrize(
    "positions",
    [-np.sign(GOOD.market), np.zeros(N)],
    ids=["losing", "never-trades"],
)
def test_losing_or_idle_strategies_fail_timing_and_flat(positions):
    report = _gate(*_setup(accuracy=0.5), traded=GOOD.with_position(positions))
    assert {"timing_skill", "beats_flat_after_costs"} <= set(report.failed_checks())
    assert report.check("beats_flat_after_costs").value >= 0.95  # not above flat in almost every resample


def test_volatility_drag_fails_flat_although_the_mean_period_return_is_positive():
    # Every resample's mean period return is positive (+2.5%), but the compounded total is a loss
    # (1.5 * 0.55 < 1 per pair of periods). The bot loses money: it must fail.
    market = np.tile([0.5, -0.45], 200)
    report = _gate(
        *_setup(accuracy=0.5, n=400), traded=Traded(np.ones(400), market, 0.0), baselines_traded={}
    )
    check = report.check("beats_flat_after_costs")
    assert not check.passed and "-" in check.detail.split("returned ")[1][:2]


def test_buy_and_hold_is_reported_and_blocks_only_when_asked():
    market = _market(drift=0.0006)  # buy-and-hold makes about +190%
    neutral = Traded(_skilled(market - 0.0006, 0.05).position, market, COST)  # times the moves, not drift
    bh_total = np.prod(1 + neutral.with_position(np.ones(N)).net) - 1  # pays its entry once
    assert 0.5 < np.prod(1 + neutral.net) - 1 < bh_total  # skilled, but below a strongly rising market
    y, pred, base_pred = _setup(accuracy=0.5)
    default = _gate(y, pred, base_pred, traded=neutral)
    check = default.check("beats_buy_and_hold")
    assert not check.passed and not check.blocking and default.passed
    assert f"{bh_total:+.2%}" in check.detail
    long_only_bot = _gate(y, pred, base_pred, GateConfig(benchmark="buy_and_hold"), traded=neutral)
    assert long_only_bot.failed_checks() == ["beats_buy_and_hold"]


def test_economic_checks_need_a_backtest_and_can_be_left_out():
    y, pred, base_pred = _setup(accuracy=0.5)
    for traded in (None, Traded([1.0, 1.0], [0.01, 0.02], 0.0)):
        report = _gate(y, pred, base_pred, traded=traded)
        assert report.failed_checks() == ["timing_skill", "beats_flat_after_costs"]
        assert report.check("timing_skill").detail == "no holdout backtest" and report.block is None
    off = _gate(y, pred, base_pred, GateConfig(economic=False), traded=None)
    names = {c.name for c in off.checks}
    assert not names & {
        "timing_skill",
        "beats_flat_after_costs",
        "beats_baselines_traded",
        "beats_buy_and_hold",
    }
    assert off.passed


def test_direction_is_scored_on_the_signals_the_bot_acted_on():
    y, pred, base_pred = _setup(accuracy=0.5)
    # The argmax calls are right half the time; the policy acted on none of them.
    idle = _gate(y, pred, base_pred, actions=np.full(N, HOLD))
    check = idle.check("directional_edge")
    assert "acted on 0 buy/sell signals" in check.detail and not check.passed and not check.blocking
    assert idle.passed  # information only: the timing check tests what the trades earned
    acted = np.where(np.isin(pred, (BUY, SELL)), pred, HOLD)
    assert _gate(y, pred, base_pred, actions=acted).check("directional_edge").passed


def test_floor_is_configurable_and_zero_makes_it_information():
    y, pred, base_pred = _setup(accuracy=0.5)
    f1 = macro_f1(y, pred)
    strict = _gate(y, pred, base_pred, GateConfig(min_macro_f1=f1 + 0.01))
    assert strict.failed_checks() == ["macro_f1_floor"]
    assert strict.check("macro_f1_floor").value == pytest.approx(f1)
    assert '"result": "failed"' in strict.to_json()
    assert _gate(y, pred, base_pred, GateConfig(min_macro_f1=f1)).passed  # the floor itself passes
    off = _gate(y, pred, base_pred, GateConfig(min_macro_f1=0.0))
    assert not off.check("macro_f1_floor").blocking and off.passed


def test_deflated_sharpe_check_uses_dsr_value():
    y, pred, base_pred = _setup(accuracy=0.5)
    strict = GateConfig(min_dsr=0.95)
    ok = _gate(y, pred, base_pred, strict, dsr=GOOD_DSR | {"dsr": 0.97})
    assert ok.passed and ok.check("deflated_sharpe").value == 0.97
    for dsr in (GOOD_DSR | {"dsr": 0.5}, GOOD_DSR | {"dsr": float("nan")}, None):  # luck, no trades, none
        report = _gate(y, pred, base_pred, strict, dsr=dsr)
        assert report.failed_checks() == ["deflated_sharpe"]
    # The required level is configurable.
    assert _gate(y, pred, base_pred, GateConfig(min_dsr=0.4), dsr=GOOD_DSR | {"dsr": 0.5}).passed
    # The detail says what was counted and where the spread came from.
    assert "assumed" in ok.check("deflated_sharpe").detail
    counted = GOOD_DSR | {"counted": "3 trials x 28 policy rules", "variance_source": "measured: shifts"}
    detail = _gate(y, pred, base_pred, strict, dsr=counted).check("deflated_sharpe").detail
    assert "3 trials x 28 policy rules" in detail and "measured: shifts" in detail


def test_deflated_sharpe_check_left_out_when_min_dsr_is_zero():
    y, pred, base_pred = _setup(accuracy=0.5)
    report = _gate(y, pred, base_pred, GateConfig(min_dsr=0.0), dsr=None)
    assert "deflated_sharpe" not in [c.name for c in report.checks]
    assert report.passed


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"min_macro_f1": "0.4"}, TypeError, "min_macro_f1"),
        ({"min_macro_f1": True}, TypeError, "min_macro_f1"),
        ({"min_macro_f1": float("nan")}, TypeError, "min_macro_f1"),
        ({"min_margin": float("nan")}, TypeError, "min_margin"),
        ({"min_confidence": float("nan")}, TypeError, "min_confidence"),
        ({"min_dsr": float("nan")}, TypeError, "min_dsr"),
        ({"champion_tolerance": float("inf")}, TypeError, "champion_tolerance"),
        ({"min_macro_f1": -0.01}, ValueError, "gate_min_f1"),
        ({"min_macro_f1": 1.01}, ValueError, "gate_min_f1"),
        ({"min_margin": -0.01}, ValueError, "gate_margin"),
        ({"min_margin": 1.0}, ValueError, "gate_margin"),
        ({"min_confidence": 1.5}, ValueError, "gate_confidence"),
        ({"min_confidence": 1.0}, ValueError, "gate_confidence"),
        ({"min_confidence": 0.49}, ValueError, "gate_confidence"),
        ({"min_dsr": 1.0}, ValueError, "gate_min_dsr"),
        ({"min_dsr": 1.5}, ValueError, "gate_min_dsr"),
        ({"min_dsr": -0.1}, ValueError, "gate_min_dsr"),
        ({"benchmark": "nasdaq"}, ValueError, "gate_benchmark"),
    ],
)
def test_gate_config_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        GateConfig(**kwargs)


def test_gate_config_accepts_the_range_ends():
    GateConfig(min_macro_f1=0.0, min_margin=0.0, min_confidence=0.5, min_dsr=0.0)
    GateConfig(min_macro_f1=1.0, min_margin=0.999, min_confidence=0.999, min_dsr=0.999)
    GateConfig(min_macro_f1=0, min_margin=0, min_confidence=0.5, min_dsr=0)  # ints are numbers


def test_bootstrap_gain_agrees_with_direct_computation():
    y, pred, base_pred = _setup(accuracy=0.6)
    p, p5 = block_bootstrap_gain(y, pred, base_pred["stratified"], block=25, n_boot=200)
    assert p == 1.0 and p5 > 0.1
    # identical predictions: the gain is exactly zero in every resample
    p_same, p5_same = block_bootstrap_gain(y, pred, pred, block=25, n_boot=50)
    assert p_same == 0.0 and p5_same == 0.0
    # one block covering every row: each resample is the data itself, so the gain is the direct one
    direct = macro_f1(y, pred) - macro_f1(y, base_pred["stratified"])
    p_one, p5_one = block_bootstrap_gain(y, pred, base_pred["stratified"], block=len(y), n_boot=20)
    assert p_one == 1.0 and p5_one == pytest.approx(direct)


def test_metrics_on_hand_made_case():
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.eye(3)[[0, 1, 1, 1, 2, 0]]
    m = classification_metrics(y, proba)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision_sell"] == pytest.approx(0.5) and m["recall_sell"] == pytest.approx(0.5)
    assert m["precision_hold"] == pytest.approx(2 / 3) and m["recall_hold"] == 1.0
    assert m["precision_buy"] == 1.0 and m["recall_buy"] == 0.5
    assert m["macro_f1"] == pytest.approx(np.mean([0.5, 0.8, 2 / 3]))
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["support_sell"] == 2 and m["support_hold"] == 2 and m["support_buy"] == 2


def test_metrics_use_given_predictions_instead_of_argmax():
    # A baseline whose call is not its most probable class (e.g. a random direction): the scores follow
    # the calls, the log loss the probabilities.
    y = np.array([0, 2, 1, 1])
    proba = np.tile([0.2, 0.6, 0.2], (4, 1))  # argmax: hold everywhere
    calls = np.array([0, 2, 1, 1])
    m = classification_metrics(y, proba, y_pred=calls)
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.2, 0.2, 0.6, 0.6])))
    assert classification_metrics(y, proba)["accuracy"] == 0.5


def test_macro_f1_counts_never_predicted_class_as_zero():
    y = np.array([0, 1, 2, 1])
    assert macro_f1(y, np.array([1, 1, 1, 1])) == pytest.approx((0 + 2 / 3 + 0) / 3)


def test_baselines_use_training_labels_only():
    base = baseline_predictions(np.array([1] * 70 + [0] * 20 + [2] * 10), 500, seed=0)
    assert np.all(base["majority"].argmax(axis=1) == 1)
    assert np.allclose(base["majority"][0], [0.2, 0.7, 0.1])
    share = np.bincount(base["stratified"].argmax(axis=1), minlength=3) / 500
    assert share[1] == pytest.approx(0.7, abs=0.07)
    # Other training labels, other baselines: the holdout size is all they know of the holdout.
    other = baseline_predictions(np.array([2] * 80 + [0] * 20), 500, seed=0)
    assert np.all(other["majority"].argmax(axis=1) == 2)
    assert np.allclose(other["majority"][0], [0.2, 0.0, 0.8])


# --------------------------------------------------------------------------------------------------
# Production (champion)


def test_no_champion_passes_and_says_so():
    report = _gate(*_setup(accuracy=0.5), champion=None)
    check = report.check("not_worse_than_production")
    assert check.passed and "no production" in check.detail
    assert report.champion_version is None and report.champion_macro_f1 is None


def test_production_that_cannot_be_scored_blocks_promotion():
    champion = ChampionComparison("4", comparable=False, note="trained on 4h bars")
    report = _gate(*_setup(accuracy=0.5), champion=champion)
    assert report.failed_checks() == ["not_worse_than_production"]
    detail = report.check("not_worse_than_production").detail
    assert "v4" in detail and "4h bars" in detail


def test_champion_with_too_few_unseen_rows_is_not_compared():
    # Far better on paper, but on only 40 rows after its training window (fewer than 100).
    champion = _comparison(0.2, 0.9, -0.5, 0.5, rows=40, version="7")
    report = _gate(*_setup(accuracy=0.5), champion=champion)
    check = report.check("not_worse_than_production")
    assert check.passed and report.passed
    assert "not compared" in check.detail and "v7" in check.detail
    assert check.value == 40 and check.threshold == 100
    # The row requirement is configurable: with min_champion_rows=40 the same champion is compared.
    strict = _gate(*_setup(accuracy=0.5), GateConfig(min_champion_rows=40), champion=champion)
    assert strict.failed_checks() == ["not_worse_than_production"]


def test_no_unseen_rows_is_not_compared():
    report = _gate(*_setup(accuracy=0.5), champion=ChampionComparison("2", rows=0))
    assert report.passed and "not compared" in report.check("not_worse_than_production").detail


@pytest.mark.parametrize(
    ("cand_f1", "champ_f1", "cand_ret", "champ_ret", "passed"),
    [
        (0.45, 0.50, 0.10, 0.05, False),  # worse classifier, more money
        (0.50, 0.45, 0.05, 0.10, False),  # better classifier, less money
        (0.45, 0.50, 0.05, 0.10, False),  # worse in both
        (0.50, 0.45, 0.10, 0.05, True),  # better in both
        (0.50, 0.50, 0.05, 0.05, True),  # equal is not worse
    ],
)
def test_champion_comparison_needs_both_score_and_money(cand_f1, champ_f1, cand_ret, champ_ret, passed):
    champion = _comparison(cand_f1, champ_f1, cand_ret, champ_ret, rows=500)
    report = _gate(*_setup(accuracy=0.5), champion=champion)
    check = report.check("not_worse_than_production")
    assert check.passed is passed
    assert report.failed_checks() == ([] if passed else ["not_worse_than_production"])
    assert check.value == pytest.approx(cand_f1 - champ_f1)
    assert "v3" in check.detail and "500" in check.detail
    assert report.champion_version == "3" and report.champion_macro_f1 == champ_f1


def test_champion_tolerance_allows_a_slightly_lower_score():
    champion = _comparison(0.48, 0.50, 0.10, 0.05)
    assert not _gate(*_setup(accuracy=0.5), champion=champion).passed
    assert _gate(*_setup(accuracy=0.5), GateConfig(champion_tolerance=0.03), champion=champion).passed


def _masked_case(n=600, unseen_from=400, seed=0):
    """The champion is perfect (and rich) on the rows it trained on, poor on the rows after them."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.25, 0.5, 0.25])
    unseen = np.arange(n) >= unseen_from
    candidate = np.where(rng.random(n) < 0.45, y, rng.integers(0, 3, n))
    champion = np.where(unseen, rng.integers(0, 3, n), y)
    cand_r = 0.001 + 0.001 * rng.standard_normal(n)
    champ_r = np.where(unseen, -0.001, 0.01) + 0.001 * rng.standard_normal(n)
    cand_r[-1] = champ_r[-1] = np.nan  # the last holdout row has no period to trade
    return y, unseen, candidate, champion, cand_r, champ_r


def test_compare_with_champion_uses_only_the_unseen_rows():
    y, unseen, candidate, champion, cand_r, champ_r = _masked_case()
    result = compare_with_champion("5", unseen, y, candidate, champion, cand_r, champ_r, note="n")
    assert result.rows == 200 and result.comparable and result.note == "n"
    assert result.champion_macro_f1 == pytest.approx(macro_f1(y[unseen], champion[unseen]))
    assert result.candidate_macro_f1 == pytest.approx(macro_f1(y[unseen], candidate[unseen]))
    tradable = unseen & np.isfinite(cand_r)
    assert result.candidate_return == pytest.approx(np.prod(1 + cand_r[tradable]) - 1)
    assert result.champion_return == pytest.approx(np.prod(1 + champ_r[tradable]) - 1)
    assert math.isfinite(result.candidate_return) and math.isfinite(result.champion_return)

    # On all rows the champion would win both ways (its training rows flatter it) ...
    everything = compare_with_champion("5", np.ones(len(y), bool), y, candidate, champion, cand_r, champ_r)
    assert everything.champion_macro_f1 > everything.candidate_macro_f1
    assert everything.champion_return > everything.candidate_return
    # ... on the unseen rows the candidate is better in both, and the gate passes.
    assert result.candidate_macro_f1 > result.champion_macro_f1
    assert result.candidate_return > result.champion_return
    assert _gate(*_setup(accuracy=0.5), champion=result).passed
    assert not _gate(*_setup(accuracy=0.5), champion=everything).passed

    # Whatever the champion does on masked-out rows cannot change the comparison.
    rng = np.random.default_rng(9)
    other_pred, other_r = champion.copy(), champ_r.copy()
    other_pred[~unseen] = rng.integers(0, 3, (~unseen).sum())
    other_r[~unseen] = -0.05
    again = compare_with_champion("5", unseen, y, candidate, other_pred, cand_r, other_r, note="n")
    assert again == result


def test_compare_with_champion_scores_both_returns_on_the_same_periods():
    y, unseen, candidate, champion, cand_r, champ_r = _masked_case()
    row = int(np.flatnonzero(unseen)[10])
    cand_r, champ_r = cand_r.copy(), champ_r.copy()
    cand_r[row], champ_r[row] = 0.5, np.nan  # a period only the candidate has a return for
    result = compare_with_champion("5", unseen, y, candidate, champion, cand_r, champ_r)
    both = unseen & np.isfinite(cand_r) & np.isfinite(champ_r)
    assert result.candidate_return == pytest.approx(np.prod(1 + cand_r[both]) - 1)
    assert result.candidate_return < 0.5  # the +50% period is not counted for one side only


def test_compare_with_champion_without_unseen_rows():
    y, _, candidate, champion, cand_r, champ_r = _masked_case()
    result = compare_with_champion("5", np.zeros(len(y), bool), y, candidate, champion, cand_r, champ_r)
    assert result.rows == 0 and result.comparable
    assert result.champion_macro_f1 is None and result.candidate_return is None
