import numpy as np
import pytest

from train.split import PurgedWalkForward, check_no_label_overlap, holdout_split


@pytest.mark.parametrize("n_rows,horizon,frac", [(2000, 6, 0.2), (3001, 1, 0.25), (10_000, 48, 0.1)])
def test_holdout_is_last_part_after_purge_gap(n_rows, horizon, frac):
    split = holdout_split(n_rows, horizon, frac)
    assert split.holdout[-1] == n_rows - 1
    assert len(split.holdout) == int(np.ceil(n_rows * frac))
    # every development row's label window (row + 1 .. row + horizon) ends before the holdout
    assert split.dev[-1] + horizon < split.holdout[0]
    assert split.holdout[0] - split.dev[-1] - 1 == horizon  # exactly `horizon` rows purged
    assert np.array_equal(split.dev, np.arange(split.dev[-1] + 1))


def test_holdout_gap_shorter_than_horizon_is_refused():
    with pytest.raises(ValueError, match="at least the label horizon"):
        holdout_split(1000, horizon=10, gap=5)


def test_holdout_too_few_rows():
    with pytest.raises(ValueError, match="too few"):
        holdout_split(10, horizon=8, holdout_frac=0.2)


@pytest.mark.parametrize("horizon", [1, 6, 30])
def test_walk_forward_folds_are_expanding_purged_and_ordered(horizon):
    n = 1200
    cv = PurgedWalkForward(n_splits=5, horizon=horizon)
    folds = list(cv.split(np.zeros((n, 2))))
    assert len(folds) == cv.get_n_splits() == 5
    prev_train_end = -1
    for train, test in folds:
        assert train[0] == 0  # expanding window
        assert train[-1] > prev_train_end
        prev_train_end = train[-1]
        assert np.all(np.diff(train) == 1) and np.all(np.diff(test) == 1)
        assert test[0] - train[-1] - 1 == horizon  # purge gap of exactly the horizon
        assert train[-1] + horizon < test[0]  # no label window reaches the validation block
    assert folds[-1][1][-1] == n - 1
    # validation blocks tile the end of the series without overlapping
    tests = np.concatenate([t for _, t in folds])
    assert len(np.unique(tests)) == len(tests)


def test_overlap_check_catches_leak():
    with pytest.raises(AssertionError, match="label leakage"):
        check_no_label_overlap(np.arange(100), np.arange(102, 150), horizon=3)  # row 99 labels use 100..102
    check_no_label_overlap(np.arange(100), np.arange(103, 150), horizon=3)


def test_gap_shorter_than_horizon_is_refused():
    with pytest.raises(ValueError, match="at least the label horizon"):
        list(PurgedWalkForward(n_splits=3, horizon=6, gap=2).split(np.zeros(500)))


def test_describe_matches_split():
    cv = PurgedWalkForward(n_splits=3, horizon=4)
    desc = cv.describe(600)
    for d, (train, test) in zip(desc, cv.split(np.zeros(600)), strict=True):
        assert d["train"] == [train[0], train[-1]] and d["validation"] == [test[0], test[-1]]
        assert d["n_train"] == len(train)
