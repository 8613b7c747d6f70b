"""The served model on candles a bot might send (no tracking store needed)."""

import numpy as np
import pandas as pd
import pytest

from features.data import DataError
from features.indicators import compute_features, warmup_bars
from models.base import build_model
from models.ensemble import WeightedSoftVoting
from models.policy import DecisionPolicy
from models.pyfunc import NOT_READY, InvalidCandles, SignalModel
from tests.helpers import SERVED_COLUMNS, make_regime_candles


@pytest.fixture(scope="module")
def served():
    candles = make_regime_candles(800, seed=3)
    X = compute_features(candles).dropna()
    y = np.random.default_rng(0).integers(0, 3, len(X))
    ens = WeightedSoftVoting(
        [("lgbm", build_model("lightgbm", {"n_estimators": 10}, n_jobs=1))], weights=[1.0]
    ).fit(X, y)
    return SignalModel(ens, "default", pd.Timedelta("30min")), candles, ens


def _bot_frame(candles):
    frame = candles.reset_index()
    frame["timestamp"] = frame["timestamp"].dt.tz_localize(None)
    return frame


def test_signals_match_the_ensemble_on_the_same_features(served):
    model, candles, ens = served
    out = model.predict(None, _bot_frame(candles))
    assert list(out.columns) == SERVED_COLUMNS
    ready = out["ready"].to_numpy()
    assert (~ready[: warmup_bars("default")]).all() and ready[warmup_bars("default") :].all()
    expected = ens.predict_proba(compute_features(candles).dropna())
    assert np.allclose(out.loc[ready, ["p_sell", "p_hold", "p_buy"]].to_numpy(), expected)
    assert (out.loc[ready, "label"].to_numpy() == expected.argmax(axis=1)).all()
    assert (out.loc[~ready, "signal"] == NOT_READY).all() and (out.loc[~ready, "label"] == -1).all()
    assert out.loc[~ready, ["p_sell", "p_hold", "p_buy"]].isna().all().all()
    assert model.min_history == warmup_bars("default") + 1
    assert (out.loc[~ready, "action"] == NOT_READY).all() and (out.loc[~ready, "position"] == 0).all()


@pytest.mark.parametrize(
    "policy",
    [
        DecisionPolicy(),
        DecisionPolicy(mode="long_only", on_hold="flat", min_proba=0.4, min_margin=0.05),
        DecisionPolicy(on_hold="keep", min_proba=0.5, min_margin=0.1),
    ],
)
def test_action_and_position_follow_the_models_decision_policy(served, policy):
    _, candles, ens = served
    model = SignalModel(ens, "default", pd.Timedelta("30min"), policy=policy)
    out = model.predict(None, _bot_frame(candles))
    ready = out["ready"].to_numpy()
    proba = out.loc[ready, ["p_sell", "p_hold", "p_buy"]].to_numpy()
    codes = policy.actions(proba)
    assert (out.loc[ready, "action"].to_numpy() == np.array(["sell", "hold", "buy"])[codes]).all()
    assert (out.loc[ready, "position"].to_numpy() == policy.positions(proba)).all()
    assert out["position"].dtype == np.int64 and set(out["position"]) <= {-1, 0, 1}
    assert (out.loc[ready, "action"] != "hold").any()
    if policy.mode == "long_only":
        assert (out["position"] >= 0).all()


def test_a_model_pickled_without_a_policy_acts_on_its_argmax_flat_on_hold(served):
    _, candles, ens = served
    model = SignalModel(ens, "default", pd.Timedelta("30min"))
    del model.policy  # as unpickled from a version logged before decision policies existed
    out = model.predict(None, _bot_frame(candles))
    ready = out["ready"]
    assert (out.loc[ready, "action"] == out.loc[ready, "signal"]).all()
    expected = out.loc[ready, "signal"].map({"sell": -1, "hold": 0, "buy": 1})
    assert (out.loc[ready, "position"] == expected).all()


def test_a_short_window_gives_the_same_signal_as_the_full_history_for_its_last_row(served):
    """What a bot does every cycle: send the recent candles, read the last row."""
    model, candles, _ = served
    full = model.predict(None, _bot_frame(candles))
    recent = model.predict(None, _bot_frame(candles.iloc[-400:]))
    assert recent["ready"].iloc[-1]
    # the EMAs start later in the short window, so values converge rather than match exactly
    assert recent[["p_sell", "p_hold", "p_buy"]].iloc[-1].to_numpy() == pytest.approx(
        full[["p_sell", "p_hold", "p_buy"]].iloc[-1].to_numpy(), abs=1e-2
    )


def test_too_few_candles_are_marked_not_guessed(served):
    model, candles, _ = served
    out = model.predict(None, _bot_frame(candles.iloc[:10]))
    assert not out["ready"].any() and (out["signal"] == NOT_READY).all()


def test_wrong_bar_size_is_refused(served):
    model, candles, _ = served
    hourly = candles.iloc[::2]
    with pytest.raises(InvalidCandles, match="trained on 30min bars"):
        model.predict(None, _bot_frame(hourly))


@pytest.mark.parametrize(
    "breakage,message",
    [
        (lambda f: f.drop(columns="volume"), "volume"),
        (lambda f: f.iloc[::-1], "sort"),
        (lambda f: f.assign(close=f["close"].where(f.index != 5)), "NaN"),
    ],
)
def test_bad_candles_are_refused(served, breakage, message):
    model, candles, _ = served
    with pytest.raises(InvalidCandles, match=message) as exc:
        model.predict(None, breakage(_bot_frame(candles)))
    assert isinstance(exc.value.__cause__, DataError)


def test_an_extended_feature_model_round_trips_through_mlflow(tmp_path):
    """Logged with its code by value (as the pipeline logs it), loaded back, fed a bot's naive-UTC frame:
    the 29 ``extended`` columns in order, the same probabilities as the ensemble on them, and the same
    warm-up as ``default`` (every extended window is <= 48 bars)."""
    import mlflow
    from mlflow.models import ModelSignature

    from features.indicators import set_feature_names
    from models.pyfunc import input_schema
    from tests.helpers import throwaway_store
    from train.stages.register import model_code_by_value

    candles = make_regime_candles(600, seed=5)
    X = compute_features(candles, "extended").dropna()
    y = np.random.default_rng(1).integers(0, 3, len(X))
    ens = WeightedSoftVoting(
        [("lgbm", build_model("lightgbm", {"n_estimators": 10}, n_jobs=1))], weights=[1.0]
    ).fit(X, y)
    model = SignalModel(ens, "extended", pd.Timedelta("30min"))
    assert model.feature_names == list(set_feature_names("extended")) and len(model.feature_names) == 29
    assert model.min_history == warmup_bars("extended") + 1 == warmup_bars("default") + 1
    with throwaway_store(tmp_path):
        with mlflow.start_run(), model_code_by_value():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=model,
                signature=ModelSignature(input_schema()),
                pip_requirements=[],
            )
        loaded = mlflow.pyfunc.load_model(info.model_uri)
        out = loaded.predict(_bot_frame(candles))
        recent = loaded.predict(_bot_frame(candles.iloc[-model.min_history :]))
    assert list(out.columns) == SERVED_COLUMNS
    ready = out["ready"].to_numpy()
    w = warmup_bars("extended")
    assert (~ready[:w]).all() and ready[w:].all()
    expected = ens.predict_proba(X)
    np.testing.assert_allclose(out.loc[ready, ["p_sell", "p_hold", "p_buy"]].to_numpy(), expected, rtol=1e-12)
    # A bot's minimal window gets a signal for its last candle; the time columns do not depend on it.
    assert recent["ready"].iloc[-1] and not recent["ready"].iloc[:-1].any()
