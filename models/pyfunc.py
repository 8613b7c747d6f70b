"""The model a trading bot loads: candles in, per-candle signal and class probabilities out.

The logged model carries its own feature code (the project's modules are pickled by value into it,
see ``train.stages.register.model_code_by_value``), so the bot computes exactly the features the
ensemble was trained on, in a process that has never seen this repository and whose own ``features``
or ``models`` packages are left alone.

Input schema: the logged signature declares the six candle columns with MLflow's ``Any`` type, optional
(:func:`input_schema`), so MLflow's schema enforcement passes every timestamp form a bot sends (naive or
timezone-aware datetimes, ISO 8601 strings with or without an offset, epoch seconds or milliseconds) and
every check is :func:`features.candles.normalize_candles`', whose refusal names the problem first. A
typed schema would refuse timezone-aware datetimes, ISO strings (in Python) and epoch numbers before
``predict`` ran, with a dump of the whole input before the reason. A model trained with ``pair_data``
also declares ``pair_open`` .. ``pair_volume``: the second instrument's candles on the same rows (NaN where
it has none; ``features.pair``), refused in one line when absent.

Column names: MLflow keeps only the signature's exact lower-case names (``timestamp``, ``open``,
``high``, ``low``, ``close``, ``volume``) and drops every other column before ``predict`` runs, so a
missing column is reported with those names only (:func:`check_columns`), never with the
spellings :func:`features.candles.normalize_candles` accepts from files (``vol``, ``Close`` ...), which
never reach the served model.

Candles from the future: a candle stamped beyond now (UTC, the serving machine's clock) plus one bar
cannot have closed, so it is **marked, not refused**: ``ready=False``, ``signal``/``action``
``"future_timestamp"``, ``label=-1``, NaN probabilities, ``position`` 0, like every row that is not
ready; the rows before it are scored as usual (a bot whose clock or time zone is off sees why it gets
no signal, and a server log shows no error for a whole batch because of one bad stamp).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import AnyType, ColSpec, Schema

from features.candles import (
    OHLCV,
    DataError,
    check_bar_sizes,
    fmt_td,
    infer_bar,
    normalize_candles,
    segment_ids,
)
from features.context import check_context, compute_model_features, feature_names, min_history_bars
from features.labels import CLASS_NAMES
from features.pair import PAIR_INPUT_COLUMNS, pair_input
from features.primary import check_primary
from models.policy import DecisionPolicy
from models.version import version_tags

NOT_READY = "insufficient_history"
AFTER_GAP = "after_gap"  # not ready because a gap in the candles restarted the indicators' warm-up
FUTURE = "future_timestamp"  # not ready: stamped beyond now plus one bar, it cannot have closed
CLASS_ARRAY = np.asarray(CLASS_NAMES, dtype=object)
OUTPUT_COLUMNS = ("timestamp", "signal", "label", "p_sell", "p_hold", "p_buy", "ready", "action", "position")
INPUT_COLUMNS = ("timestamp", *OHLCV)


def input_schema(pair: bool = False) -> Schema:
    """The logged model's input signature: the candle columns, any type, none required by MLflow (with
    ``pair``, also the second instrument's ``pair_open`` .. ``pair_volume``, which MLflow would drop
    otherwise).

    MLflow enforces a signature before ``predict`` runs and words its refusals as a dump of the input
    followed by the reason; with ``Any`` columns that are not required it only selects these columns
    (dropping others) and ``predict`` checks them (a missing column, an unparseable timestamp, text
    prices ...), with a message that starts with the problem.
    """
    names = INPUT_COLUMNS + (PAIR_INPUT_COLUMNS if pair else ())
    return Schema([ColSpec(AnyType(), name, required=False) for name in names])


class InvalidCandles(MlflowException, ValueError):
    """Candles the model refuses. An MlflowException so a model server answers 400 with this message
    (a plain exception's text is replaced by a generic one), and a ValueError for Python callers."""

    def __init__(self, message: str):
        # One line, the problem first: a server puts it in the JSON `message`, a log shows one line.
        super().__init__(" ".join(str(message).split()), error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        # `mlflow models serve` rewrites the message of an MlflowException raised by predict as
        # "Failed to predict data '<the whole input, ~1,400 characters>'. \nError: <message>": a client
        # would read a data dump before the reason. Keep the reason alone, which names the rows.
        # Only public names: `message` is MlflowException's public attribute, `_message` is ours. MLflow has
        # no public way to keep its scoring server from rewriting it (guard: tests/test_public_apis.py).
        current = getattr(self, "_message", None)
        if current is not None and str(value).endswith(current):
            return
        self._message = str(value)


def model_bar(model) -> pd.Timedelta | None:
    """The bar size a loaded model (an MLflow pyfunc of this project) was trained on, from its metadata;
    None when it does not record one."""
    meta = getattr(getattr(model, "metadata", None), "metadata", None) or {}
    try:
        return pd.Timedelta(meta["bar"])
    except (KeyError, TypeError, ValueError):
        return None


def as_model_input(candles: pd.DataFrame) -> pd.DataFrame:
    """Candles in the convention of ``features.data`` as the served model takes them: a ``timestamp``
    column of timezone-naive UTC datetimes (the form every model version accepts; versions logged
    before the ``Any`` input schema refuse timezone-aware ones)."""
    frame = candles.reset_index()
    frame["timestamp"] = frame["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None)
    return frame


def check_columns(model_input, pair: bool = False) -> None:
    """Raise :class:`DataError` naming the missing candle columns and only the spellings the served
    model accepts. Nothing to check when ``model_input`` holds columns MLflow would have dropped (a
    direct call of :meth:`SignalModel.predict`): :func:`features.candles.normalize_candles` matches
    other spellings there and says which it accepts. With ``pair`` the ``pair_*`` columns count too."""
    accepted = INPUT_COLUMNS + (PAIR_INPUT_COLUMNS if pair else ())
    if not isinstance(model_input, pd.DataFrame) or not set(model_input.columns) <= set(accepted):
        return
    exact = (
        f"the model takes candles with columns {', '.join(accepted)} (these exact lower-case names; "
        "other columns, such as 'Close', 'vol' or 'time', are dropped before the model sees them"
    )
    if len(model_input.columns) == 0:
        # MLflow keeps only the signature's columns: none of them was sent (e.g. 'Open', 'Close').
        raise DataError(f"Missing columns: {exact}).")
    # Timestamps in the index (which MLflow keeps) are normalize_candles' to judge.
    index = model_input.index
    time_index = isinstance(index, pd.DatetimeIndex) or index.name is not None
    missing = [] if "timestamp" in model_input.columns or time_index else ["timestamp"]
    missing += [c for c in OHLCV if c not in model_input.columns]
    missing += [c for c in accepted[len(INPUT_COLUMNS) :] if c not in model_input.columns]
    if missing:
        received = ", ".join(map(str, model_input.columns))
        raise DataError(
            f"Missing column(s): {', '.join(missing)}. Columns received: {received}; {exact}; in Python "
            "the timestamps may instead be a DatetimeIndex). Rename the columns."
        )


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
        pair: str | bool | None = None,
        primary: str = "none",
        horizon: int | None = None,
    ):
        self.ensemble = ensemble
        self.policy = policy or DecisionPolicy()
        self.feature_set = feature_set
        self.bar = pd.Timedelta(bar)
        # What it was trained on, and which version of this code built it (models.version).
        self.metadata = dict(metadata or {}) | version_tags()
        self.context_timeframe = context_timeframe or None
        if self.context_timeframe:
            check_context(self.context_timeframe, self.bar)  # refuse a model it could never serve
        # The second instrument (its label, e.g. the pair_data source) when trained with pair_* features.
        self.pair = pair or None
        # Meta-labeling's primary side (features.primary) and the label horizon it looks back over.
        self.primary = check_primary(primary)
        self.primary_horizon = horizon
        min_history_bars(self.feature_set, None, self.bar, primary=self.primary, horizon=horizon)  # checks

    @property
    def _primary(self) -> tuple[str, int | None]:
        # Models pickled before meta-labeling existed have no such attributes: no primary side.
        return getattr(self, "primary", "none"), getattr(self, "primary_horizon", None)

    @property
    def _context(self) -> str | None:
        # Models pickled before context features existed have no such attribute: no context.
        return getattr(self, "context_timeframe", None)

    @property
    def _pair(self) -> bool:
        # Models pickled before pair features existed have no such attribute: no pair features.
        return bool(getattr(self, "pair", None))

    @property
    def feature_names(self) -> list[str]:
        """The ensemble's input columns, in order: the set's base features, then any ``ctx_*`` ones."""
        return feature_names(self.feature_set, self._context, self._pair, self._primary[0])

    @property
    def min_history(self) -> int:
        """Candles a window needs so that its last row gets a signal, wherever the window starts."""
        primary, horizon = self._primary
        return min_history_bars(self.feature_set, self._context, self.bar, self._pair, primary, horizon)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        try:
            check_columns(model_input, self._pair)
            return self.predict_candles(model_input)
        except ValueError as exc:  # bad candles (features.data.DataError is one): say why, loudly
            raise InvalidCandles(str(exc)) from exc

    def predict_candles(self, model_input: pd.DataFrame) -> pd.DataFrame:
        """Signals for ``model_input`` candles (timestamp, open, high, low, close, volume), oldest first.

        ``timestamp`` may be naive UTC or timezone-aware datetimes, ISO 8601 strings (naive means UTC,
        an offset such as ``Z`` or ``+09:00`` is converted), or epoch seconds / milliseconds (ints);
        the output ``timestamp`` is naive UTC datetimes whatever the input form.

        Rows with too little history get ``ready=False``, ``signal='insufficient_history'``,
        ``label=-1`` and NaN probabilities: they are marked, never guessed. So are rows after a gap
        (``'after_gap'``) and rows stamped beyond now (UTC) plus one bar (``'future_timestamp'``: a
        candle that cannot have closed yet, e.g. from a bot whose clock or time zone is wrong).

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
                    f"these candles are {fmt_td(bar)} bars but the model was trained on {fmt_td(self.bar)} "
                    f"bars; resample the candles to {fmt_td(self.bar)} before calling predict"
                )
            check_bar_sizes(candles.index, bar)
        # After a gap the indicators start again (features.candles.segments): those rows are not ready.
        if self._pair:
            # The second instrument's candles on the same rows (normalize_candles keeps only OHLCV).
            candles = candles.join(pair_input(model_input, candles.index))
        primary, horizon = self._primary
        features = compute_model_features(
            candles,
            self.feature_set,
            self._context,
            bar=self.bar,
            pair=self._pair,
            primary=primary,
            horizon=horizon,
        )
        names = self.feature_names
        if list(features.columns) != names:  # usually already the model's columns in its order: no copy
            features = features[names]
        # A candle that opened after now plus one bar cannot have closed: never scored (see the docstring).
        future = np.asarray(candles.index > pd.Timestamp.now(tz="UTC") + self.bar)
        ready = features.notna().all(axis=1).to_numpy() & ~future
        proba = np.full((len(candles), len(CLASS_NAMES)), np.nan)
        if ready.any():
            proba[ready] = self.ensemble.predict_proba(features[ready])
        label = np.where(ready, np.nan_to_num(proba).argmax(axis=1), -1).astype(np.int64)
        after_gap = ~ready & (segment_ids(candles.index, self.bar) > 0)
        why = np.where(future, FUTURE, np.where(after_gap, AFTER_GAP, NOT_READY))
        # A model pickled before decision policies existed has none: it acts on its most probable class,
        # flat on hold, as its backtest did then. Rows that are not ready are flat either way.
        policy = getattr(self, "policy", None)
        action = label if policy is None else policy.actions(proba)
        sized = policy is not None and getattr(policy, "sizing", "full") != "full"
        sizes = None if policy is None or not sized else policy.sizes(proba)
        position = (policy or DecisionPolicy(on_hold="flat")).positions_from_actions(action, sizes)
        return pd.DataFrame(
            {
                # Naive UTC out, whatever the input form (MLflow serializes naive datetimes as ISO strings).
                "timestamp": candles.index.tz_convert("UTC").tz_localize(None),
                "signal": np.where(ready, CLASS_ARRAY[np.maximum(label, 0)], why),
                "label": label,
                "p_sell": proba[:, 0],
                "p_hold": proba[:, 1],
                "p_buy": proba[:, 2],
                "ready": ready,
                "action": np.where(ready, CLASS_ARRAY[np.maximum(action, 0)], why),
                # Whole units (int) unless the policy sizes its bets (fractions of 1, steps of 0.25).
                "position": position if sized else position.astype(np.int64),
            }
        ).reset_index(drop=True)
