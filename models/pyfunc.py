"""The model a trading bot loads: candles in, per-candle signal and class probabilities out.

The logged model carries its own feature code (``features/`` and ``models/`` are shipped as MLflow
``code_paths``), so the bot computes exactly the features the ensemble was trained on, in a process that
has never seen this repository.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from features.candles import check_bar_sizes, infer_bar, normalize_candles, segment_ids
from features.context import check_context, compute_model_features, feature_names, min_history_bars
from features.labels import CLASS_NAMES
from models.policy import DecisionPolicy

NOT_READY = "insufficient_history"
AFTER_GAP = "after_gap"  # not ready because a gap in the candles restarted the indicators' warm-up
CLASS_ARRAY = np.asarray(CLASS_NAMES, dtype=object)
OUTPUT_COLUMNS = ("timestamp", "signal", "label", "p_sell", "p_hold", "p_buy", "ready", "action", "position")


class InvalidCandles(MlflowException, ValueError):
    """Candles the model refuses. An MlflowException so a model server answers 400 with this message
    (a plain exception's text is replaced by a generic one), and a ValueError for Python callers."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def as_model_input(candles: pd.DataFrame) -> pd.DataFrame:
    """Candles in the convention of ``features.data`` as the served model takes them: a ``timestamp``
    column of timezone-naive UTC datetimes (MLflow's schema check refuses timezone-aware ones)."""
    frame = candles.reset_index()
    frame["timestamp"] = frame["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None)
    return frame


class SignalModel(PythonModel):
    """Wraps a fitted ensemble with the feature set, context timeframe and bar size it was trained on."""

    def __init__(
        self,
        ensemble,
        feature_set: str,
        bar: pd.Timedelta,
        metadata: dict | None = None,
        context_timeframe: str | None = None,
        policy: DecisionPolicy | None = None,
    ):
        self.ensemble = ensemble
        self.policy = policy or DecisionPolicy()
        self.feature_set = feature_set
        self.bar = pd.Timedelta(bar)
        self.metadata = dict(metadata or {})
        self.context_timeframe = context_timeframe or None
        if self.context_timeframe:
            check_context(self.context_timeframe, self.bar)  # refuse a model it could never serve

    @property
    def _context(self) -> str | None:
        # Models pickled before context features existed have no such attribute: no context.
        return getattr(self, "context_timeframe", None)

    @property
    def feature_names(self) -> list[str]:
        """The ensemble's input columns, in order: 15 base features, then any ``ctx_*`` ones."""
        return feature_names(self.feature_set, self._context)

    @property
    def min_history(self) -> int:
        """Candles a window needs so that its last row gets a signal, wherever the window starts."""
        return min_history_bars(self.feature_set, self._context, self.bar)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        try:
            return self.predict_candles(model_input)
        except ValueError as exc:  # bad candles (features.data.DataError is one): say why, loudly
            raise InvalidCandles(str(exc)) from exc

    def predict_candles(self, model_input: pd.DataFrame) -> pd.DataFrame:
        """Signals for ``model_input`` candles (timestamp, open, high, low, close, volume), oldest first.

        Rows with too little history get ``ready=False``, ``signal='insufficient_history'``,
        ``label=-1`` and NaN probabilities: they are marked, never guessed.

        ``signal``/``label`` are the most probable class; ``action`` is what the decision policy does
        (``buy``/``sell`` only when confident enough, else ``hold``) and ``position`` (-1/0/+1) the
        position it holds after the candle, from the window's actions starting flat: the backtest that
        gated this model traded exactly these. Rows without history are flat.
        """
        candles = normalize_candles(model_input)
        if len(candles) >= 2:
            bar = infer_bar(candles.index)
            if bar != self.bar:
                raise ValueError(
                    f"these candles are {bar} bars but the model was trained on {self.bar} bars; "
                    f"resample the candles to {self.bar} before calling predict"
                )
            check_bar_sizes(candles.index, bar)
        # After a gap the indicators start again (features.candles.segments): those rows are not ready.
        features = compute_model_features(candles, self.feature_set, self._context, bar=self.bar)
        features = features[self.feature_names]
        ready = features.notna().all(axis=1).to_numpy()
        proba = np.full((len(candles), len(CLASS_NAMES)), np.nan)
        if ready.any():
            proba[ready] = self.ensemble.predict_proba(features[ready])
        label = np.where(ready, np.nan_to_num(proba).argmax(axis=1), -1).astype(np.int64)
        after_gap = ~ready & (segment_ids(candles.index, self.bar) > 0)
        why = np.where(after_gap, AFTER_GAP, NOT_READY)
        # A model pickled before decision policies existed has none: it acts on its most probable class,
        # flat on hold, as its backtest did then. Rows that are not ready are flat either way.
        policy = getattr(self, "policy", None)
        action = label if policy is None else policy.actions(proba)
        position = (policy or DecisionPolicy(on_hold="flat")).positions_from_actions(action)
        return pd.DataFrame(
            {
                # MLflow's schema enforcement only accepts timezone-naive datetimes: naive UTC out, as in.
                "timestamp": candles.index.tz_convert("UTC").tz_localize(None),
                "signal": np.where(ready, CLASS_ARRAY[np.maximum(label, 0)], why),
                "label": label,
                "p_sell": proba[:, 0],
                "p_hold": proba[:, 1],
                "p_buy": proba[:, 2],
                "ready": ready,
                "action": np.where(ready, CLASS_ARRAY[np.maximum(action, 0)], why),
                "position": position.astype(np.int64),
            }
        ).reset_index(drop=True)
