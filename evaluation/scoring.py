"""Scoring a served model on candles, out of sample: its output, its own labels, the rows that may be
scored, its decision policy's backtest, and the evaluate step's numbers. No tracking calls here.

``python -m evaluation.evaluate`` (:mod:`evaluation.evaluate`) logs :func:`score_model` as a run; the
monitor (:mod:`evaluation.monitoring`) and the walk-forward judge live rows with the same pieces.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from evaluation.backtest import BacktestConfig, BacktestResult, backtest
from evaluation.baselines import informed_baselines
from evaluation.economics import directional_edge
from evaluation.metrics import baseline_predictions, classification_metrics
from features.labels import HOLD, label_function, meta_labels
from features.primary import primary_side
from models.policy import ACTION_CODES, DecisionPolicy
from models.pyfunc import as_model_input

MIN_SCORED_ROWS = 100
PROBA = ["p_sell", "p_hold", "p_buy"]


@dataclass
class Scoring:
    """A model's output on candles, its own labels for them, and which rows may be scored.

    ``scored`` marks rows the model is ready on, whose label has matured (``make_labels`` is NaN until
    the horizon has passed) and that lie after the model's training window (``trained_until``).
    """

    meta: dict
    out: pd.DataFrame  # the served model's output, one row per candle
    labels: pd.Series  # the model's own labels (NaN where not matured)
    scored: np.ndarray  # bool per candle
    trained_until: pd.Timestamp

    @property
    def n_scored(self) -> int:
        return int(self.scored.sum())

    @property
    def horizon(self) -> int:
        return int(self.meta["horizon"])

    @property
    def y(self) -> np.ndarray:
        return self.labels.to_numpy()[self.scored].astype(np.int64)

    @property
    def proba(self) -> np.ndarray:
        return self.out.loc[self.scored, PROBA].to_numpy()

    @property
    def block(self) -> int:
        """Moving-block bootstrap block: 10 horizons (at least 20 rows), as the gate uses."""
        return max(20, 10 * self.horizon)


def prepare_scoring(model, candles: pd.DataFrame) -> Scoring:
    """Run a loaded pyfunc model on ``candles`` and label them with its own label definition.

    Raises ValueError when the model lacks the metadata to label the candles.
    """
    meta = model.metadata.metadata or {}
    missing = [k for k in ("horizon", "threshold", "vol_window", "trained_until") if k not in meta]
    if missing:
        raise ValueError(
            f"the model's metadata lacks {missing}: it was not logged by this project's pipeline"
        )
    # A model logged before label kinds existed was trained on threshold labels.
    labels = label_function(meta.get("label", "threshold"))(
        candles["close"], int(meta["horizon"]), float(meta["threshold"]), int(meta["vol_window"])
    )
    primary = meta.get("primary", "none")  # a model logged before meta-labeling: no primary side
    if primary != "none":
        # It learned whether acting on its primary side pays: score it on those meta-labels.
        labels = meta_labels(labels, primary_side(candles["close"], int(meta["horizon"]), primary))
    out = model.predict(as_model_input(candles))
    trained_until = pd.Timestamp(meta["trained_until"])
    after = (out["timestamp"] > trained_until).to_numpy()
    scored = out["ready"].to_numpy() & labels.notna().to_numpy() & after
    return Scoring(meta, out, labels, scored, trained_until)


def policy_backtest(
    scoring: Scoring, candles: pd.DataFrame, fee_bps: float = 10.0, slippage_bps: float = 5.0
) -> tuple[DecisionPolicy, BacktestConfig, BacktestResult]:
    """Backtest of the model's decision policy (its ``action`` column; a model logged before policies
    existed: its most probable class, flat on hold) on the scored rows, after costs."""
    out, scored = scoring.out, scoring.scored
    policy = scoring.meta.get("policy")
    sizes = None
    if "action" in out and policy:
        rule = DecisionPolicy.from_dict(policy)
        actions = out.loc[scored, "action"].map(ACTION_CODES).to_numpy()
        if "position" in out:  # a bet-sized policy's sizes (1 otherwise)
            sizes = out.loc[scored, "position"].abs().to_numpy()
    else:
        rule = DecisionPolicy(on_hold="flat")
        actions = out.loc[scored, "label"].to_numpy()
    config = BacktestConfig(mode=rule.mode, hold=rule.on_hold, fee_bps=fee_bps, slippage_bps=slippage_bps)
    signals = pd.Series(actions, index=candles.index[scored])
    return rule, config, backtest(candles, signals, config, sizes=sizes)


def score_model(
    model, candles: pd.DataFrame, seed: int = 0, fee_bps: float = 10.0, slippage_bps: float = 5.0
) -> dict:
    """Out-of-sample metrics of a loaded pyfunc model on ``candles``, with baselines, and the backtest of
    its decision policy (its ``action`` column; a model logged before policies existed: its most
    probable class, flat on hold) after costs, beside buy-and-hold.

    Raises ValueError when the model lacks the metadata to label the candles or too few candles fall
    after its training window.
    """
    s = prepare_scoring(model, candles)
    meta, out, labels, scored, trained_until = s.meta, s.out, s.labels, s.scored, s.trained_until
    timestamps = out["timestamp"]
    if s.n_scored < MIN_SCORED_ROWS:
        raise ValueError(
            f"only {s.n_scored} candles can be scored out of sample (need {MIN_SCORED_ROWS}): "
            f"the model saw data up to {trained_until}, these candles end at {timestamps.iloc[-1]}; "
            "give newer candles"
        )
    y = s.y
    metrics = classification_metrics(y, s.proba)
    # Baselines learn class frequencies from labelled candles before the scored window when there are
    # enough of them, else from the scored labels themselves (which only flatters the baselines).
    # Labelled candles whose label matured by the training cut: the model's own development rows.
    matured = (candles.index + int(meta["horizon"]) * pd.Timedelta(meta["bar"])).tz_localize(None)
    known = out["ready"].to_numpy() & labels.notna().to_numpy() & (matured <= trained_until)
    before = labels.to_numpy()[known]
    prior = before.astype(np.int64) if len(before) >= MIN_SCORED_ROWS else y
    baselines = {
        k: classification_metrics(y, p) for k, p in baseline_predictions(prior, len(y), seed).items()
    }
    notes = []
    if len(before) >= MIN_SCORED_ROWS:
        # The informed baselines learn from labelled candles up to the model's training cut only.
        informed = informed_baselines(
            candles,
            np.arange(len(candles)),
            np.nan_to_num(labels.to_numpy(), nan=HOLD).astype(np.int64),
            np.flatnonzero(known),
            np.flatnonzero(scored),
            int(meta["horizon"]),
            float(meta["threshold"]),
            int(meta["vol_window"]),
            seed,
        )
        baselines |= {k: classification_metrics(y, b["proba"], b["pred"]) for k, b in informed.items()}
    else:
        notes.append(
            f"informed baselines left out: only {len(before)} labelled candles up to the model's training "
            f"cut to fit them on (need {MIN_SCORED_ROWS}); give candles that start earlier"
        )
    rule, config, bt = policy_backtest(s, candles, fee_bps, slippage_bps)
    calls = s.proba.argmax(axis=1)
    edge = directional_edge(y, calls, block=s.block, seed=seed)
    return {
        "metrics": metrics,
        "baselines": baselines,
        "policy": rule.to_dict(),
        "backtest": bt.metrics,
        "buyhold": bt.benchmark_metrics,
        "backtest_config": asdict(config),
        "directional_edge": asdict(edge),
        "notes": notes,
        "rows_scored": s.n_scored,
        "window": [str(timestamps[scored].iloc[0]), str(timestamps[scored].iloc[-1])],
        "trained_until": str(trained_until),
    }
