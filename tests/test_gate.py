"""The promotion gate (evaluation/gate.py) and the holdout metrics it rests on (evaluation/metrics.py)."""

import math

import numpy as np
import pytest

from evaluation.backtest import deflated_sharpe
from evaluation.gate import ChampionComparison, GateConfig, compare_with_champion, evaluate_gate
from evaluation.metrics import baseline_predictions, block_bootstrap_gain, classification_metrics, macro_f1

ALL_CHECKS = [
    "macro_f1_floor",
    "beats_best_baseline",
    "gain_is_significant",
    "directional_edge",
    "beats_flat_after_costs",
    "deflated_sharpe",
    "not_worse_than_production",
]
BLOCK = 20


def _setup(accuracy, n=3000, seed=0):
    """Holdout labels, a candidate that is right with probability `accuracy`, and the baselines' calls."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.25, 0.5, 0.25])
    pred = np.where(rng.random(n) < accuracy, y, rng.integers(0, 3, n))
    base = baseline_predictions(rng.choice(3, size=5000, p=[0.25, 0.5, 0.25]), n, seed)
    base_pred = {k: p.argmax(axis=1) for k, p in base.items()}
    return y, pred, base_pred


def _returns(mean, n=3000, seed=0, sd=0.002):
    return mean + sd * np.random.default_rng(seed).standard_normal(n)


GOOD_RETURNS = _returns(0.0005)
GOOD_DSR = deflated_sharpe(GOOD_RETURNS, n_trials=20) | {"measured": False}


def _gate(y, pred, base_pred, config=None, **kw):
    kw = {"returns": GOOD_RETURNS, "dsr": GOOD_DSR} | kw
    return evaluate_gate(y, pred, base_pred, config or GateConfig(), block=BLOCK, **kw)


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
    assert report.baseline_name == "stratified"  # majority-only has macro-F1 ~0.22 here
    assert report.check("directional_edge").value >= 0.95
    assert report.check("deflated_sharpe").value == GOOD_DSR["dsr"]
    assert "no production" in report.check("not_worse_than_production").detail


def test_no_skill_candidate_fails():
    y, _, base_pred = _setup(accuracy=0.0)
    rng = np.random.default_rng(1)
    pred = rng.choice(3, size=len(y), p=[0.25, 0.5, 0.25])  # a random guesser like the baseline
    report = _gate(y, pred, base_pred)
    assert not report.passed and report.result == "failed"
    assert {"beats_best_baseline", "gain_is_significant", "directional_edge"} <= set(report.failed_checks())


def test_best_baseline_includes_informed_ones():
    y, pred, base_pred = _setup(accuracy=0.5)
    # An informed baseline as good as the candidate: no margin, no significant gain.
    report = _gate(y, pred, base_pred | {"momentum": pred.copy()})
    assert report.baseline_name == "momentum"
    assert report.baseline_macro_f1 == pytest.approx(macro_f1(y, pred))
    assert {"beats_best_baseline", "gain_is_significant"} <= set(report.failed_checks())
    assert "momentum" in report.check("beats_best_baseline").detail


def test_floor_is_configurable():
    y, pred, base_pred = _setup(accuracy=0.5)
    f1 = macro_f1(y, pred)
    strict = _gate(y, pred, base_pred, GateConfig(min_macro_f1=f1 + 0.01))
    assert strict.failed_checks() == ["macro_f1_floor"]
    assert strict.check("macro_f1_floor").value == pytest.approx(f1)
    assert '"result": "failed"' in strict.to_json()
    assert _gate(y, pred, base_pred, GateConfig(min_macro_f1=f1)).passed  # the floor itself passes


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
# After costs: beating flat, deflated Sharpe ratio


@pytest.mark.parametrize(
    "returns",
    [_returns(-0.0005), _returns(0.0, sd=0.0), np.zeros(500), _returns(-0.00002, sd=0.0)],
    ids=["losing", "zero", "never-trades", "small-steady-loss"],
)
def test_economic_check_fails_without_positive_returns(returns):
    report = _gate(*_setup(accuracy=0.5), returns=returns)
    assert report.failed_checks() == ["beats_flat_after_costs"]
    assert report.check("beats_flat_after_costs").value <= 0.05


def test_economic_check_needs_significance_and_a_positive_total():
    y, pred, base_pred = _setup(accuracy=0.5)
    # Lucky: a positive total from noise, not significant.
    lucky = _returns(0.0, n=400, seed=0, sd=0.01)
    lucky = lucky - lucky.mean() + 0.0001
    assert np.prod(1 + lucky) - 1 > 0
    check = _gate(y, pred, base_pred, returns=lucky).check("beats_flat_after_costs")
    assert not check.passed and check.value < 0.95
    # Volatility drag: every resample's mean period return is positive (+2.5%), but the compounded
    # total is a loss (1.5 * 0.55 < 1 per pair of periods). The bot loses money: it must fail.
    drag = np.tile([0.5, -0.45], 200)
    assert drag.mean() > 0 and np.prod(1 + drag) - 1 < 0
    check = _gate(y, pred, base_pred, returns=drag).check("beats_flat_after_costs")
    assert check.value == 1.0 and not check.passed


def test_economic_check_passes_on_clearly_positive_returns():
    check = _gate(*_setup(accuracy=0.5), returns=_returns(0.0003, seed=3)).check("beats_flat_after_costs")
    assert check.passed and check.value >= 0.95 and check.threshold == 0.95
    assert "+" in check.detail  # the total return is reported with its sign


def test_economic_check_needs_a_backtest():
    for returns in (None, np.array([0.01, 0.02])):
        report = _gate(*_setup(accuracy=0.5), returns=returns)
        assert report.failed_checks() == ["beats_flat_after_costs"]


def test_economic_check_left_out_when_disabled():
    report = _gate(*_setup(accuracy=0.5), GateConfig(economic=False), returns=_returns(-0.001))
    assert "beats_flat_after_costs" not in [c.name for c in report.checks]
    assert report.passed


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
    # The detail says whether the trials' spread was measured or assumed.
    assert "assumed" in ok.check("deflated_sharpe").detail
    measured = _gate(y, pred, base_pred, strict, dsr=GOOD_DSR | {"measured": True})
    assert "measured" in measured.check("deflated_sharpe").detail


def test_deflated_sharpe_check_left_out_when_min_dsr_is_zero():
    y, pred, base_pred = _setup(accuracy=0.5)
    report = _gate(y, pred, base_pred, GateConfig(min_dsr=0.0), dsr=None)
    assert "deflated_sharpe" not in [c.name for c in report.checks]
    assert report.passed


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
