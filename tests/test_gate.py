import numpy as np
import pytest

from evaluation.gate import GateConfig, evaluate_gate
from evaluation.metrics import baseline_predictions, block_bootstrap_gain, classification_metrics, macro_f1


def _setup(accuracy, n=3000, seed=0):
    """Holdout labels, a candidate that is right with probability `accuracy`, and the baselines."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.25, 0.5, 0.25])
    pred = np.where(rng.random(n) < accuracy, y, rng.integers(0, 3, n))
    base = baseline_predictions(rng.choice(3, size=5000, p=[0.25, 0.5, 0.25]), n, seed)
    base_pred = {k: p.argmax(axis=1) for k, p in base.items()}
    base_f1 = {k: macro_f1(y, p) for k, p in base_pred.items()}
    return y, pred, base_pred, base_f1


def _gate(y, pred, base_pred, base_f1, **kw):
    return evaluate_gate(y, pred, base_pred, base_f1, macro_f1(y, pred), GateConfig(), block=20, **kw)


def test_skilled_candidate_passes_every_check():
    report = _gate(*_setup(accuracy=0.5))
    assert report.passed and report.result == "passed"
    assert [c.name for c in report.checks] == [
        "macro_f1_floor",
        "beats_best_baseline",
        "gain_is_significant",
        "not_worse_than_production",
    ]
    assert report.baseline_name == "stratified"  # majority-only has macro-F1 ~0.22 here


def test_no_skill_candidate_fails():
    y, _, base_pred, base_f1 = _setup(accuracy=0.0)
    rng = np.random.default_rng(1)
    pred = rng.choice(3, size=len(y), p=[0.25, 0.5, 0.25])  # a random guesser like the baseline
    report = _gate(y, pred, base_pred, base_f1)
    assert not report.passed
    assert "beats_best_baseline" in report.failed_checks()
    assert "gain_is_significant" in report.failed_checks()


def test_worse_than_production_fails_and_reports_numbers():
    y, pred, base_pred, base_f1 = _setup(accuracy=0.5)
    f1 = macro_f1(y, pred)
    report = _gate(y, pred, base_pred, base_f1, champion_f1=f1 + 0.05, champion_version="3")
    assert report.failed_checks() == ["not_worse_than_production"]
    check = report.checks[-1]
    assert check.value == pytest.approx(-0.05) and "v3" in check.detail
    assert _gate(y, pred, base_pred, base_f1, champion_f1=f1 - 0.01, champion_version="3").passed


def test_floor_is_configurable():
    y, pred, base_pred, base_f1 = _setup(accuracy=0.5)
    f1 = macro_f1(y, pred)
    strict = evaluate_gate(y, pred, base_pred, base_f1, f1, GateConfig(min_macro_f1=f1 + 0.01), block=20)
    assert strict.failed_checks() == ["macro_f1_floor"]
    assert '"result": "failed"' in strict.to_json()


def test_gate_config_validates_types():
    with pytest.raises(TypeError, match="min_macro_f1"):
        GateConfig(min_macro_f1="0.4")
    with pytest.raises(ValueError, match="gate_confidence"):
        GateConfig(min_confidence=1.5)


def test_bootstrap_gain_agrees_with_direct_computation():
    y, pred, base_pred, _ = _setup(accuracy=0.6)
    p, p5 = block_bootstrap_gain(y, pred, base_pred["stratified"], block=25, n_boot=200)
    assert p == 1.0 and p5 > 0.1
    # identical predictions: the gain is exactly zero in every resample
    p_same, p5_same = block_bootstrap_gain(y, pred, pred, block=25, n_boot=50)
    assert p_same == 0.0 and p5_same == 0.0


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


def test_macro_f1_counts_never_predicted_class_as_zero():
    y = np.array([0, 1, 2, 1])
    assert macro_f1(y, np.array([1, 1, 1, 1])) == pytest.approx((0 + 2 / 3 + 0) / 3)


def test_baselines_use_training_labels_only():
    base = baseline_predictions(np.array([1] * 70 + [0] * 20 + [2] * 10), 500, seed=0)
    assert np.all(base["majority"].argmax(axis=1) == 1)
    assert np.allclose(base["majority"][0], [0.2, 0.7, 0.1])
    share = np.bincount(base["stratified"].argmax(axis=1), minlength=3) / 500
    assert share[1] == pytest.approx(0.7, abs=0.07)


def test_production_that_cannot_be_scored_blocks_promotion():
    y, pred, base_pred, base_f1 = _setup(accuracy=0.5)
    report = _gate(y, pred, base_pred, base_f1, champion_version="4", champion_note="trained on 4h bars")
    assert report.failed_checks() == ["not_worse_than_production"]
    assert "v4" in report.checks[-1].detail and "4h bars" in report.checks[-1].detail


def test_backtest_check_only_when_asked_for():
    y, pred, base_pred, base_f1 = _setup(accuracy=0.5)
    f1 = macro_f1(y, pred)
    assert "backtest_deflated_sharpe" not in [c.name for c in _gate(y, pred, base_pred, base_f1).checks]
    strict = GateConfig(min_dsr=0.95)
    ok = evaluate_gate(y, pred, base_pred, base_f1, f1, strict, block=20, dsr=0.97)
    assert ok.passed and ok.checks[-1].name == "backtest_deflated_sharpe"
    for dsr in (0.5, float("nan"), None):  # luck, no trades, nothing computed: all fail
        report = evaluate_gate(y, pred, base_pred, base_f1, f1, strict, block=20, dsr=dsr)
        assert report.failed_checks() == ["backtest_deflated_sharpe"]
    with pytest.raises(ValueError, match="gate_min_dsr"):
        GateConfig(min_dsr=1.5)
