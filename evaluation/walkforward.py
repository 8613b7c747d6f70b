"""Walk-forward replay of the whole system: the windows, trading a window, stitching the windows together.

The orchestration (train each window, gate, promote) is ``train.walkforward``; this module holds what it
measures with, and nothing here trains anything:

- :func:`schedule`: the retraining cuts. Window k trains on candles that *closed* by its cut (open time
  < cut) and trades from its cut to the next one.
- :func:`check_known`: the guard every window's inputs pass through; a candle at or after the cut raises
  :class:`LeakError`.
- :func:`trade_window`: one model's decision policy on one window, after costs, with the same backtest as
  the pipeline's holdout (signal of bar t trades from open[t+1] to open[t+2]). Each window's backtest
  starts flat, so a window's result depends on nothing outside it; the stitched curve is the plain
  concatenation of the windows' period returns (:func:`stitch`).
- :func:`plot_walkforward`: the stitched equity curves of every strategy, window cuts and promotions marked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from evaluation.backtest import BacktestConfig, backtest, compute_metrics
from evaluation.metrics import classification_metrics
from evaluation.monitoring import WITHDRAW, MonitorConfig, action_for, live_numbers
from evaluation.plots import _pyplot, _save, drawdown
from evaluation.scoring import MIN_SCORED_ROWS
from features.candles import fmt_td
from models.policy import ACTION_CODES, DecisionPolicy
from models.pyfunc import as_model_input

STRATEGIES = ("gated", "gated_monitored", "always_promote", "never_retrain")
STRATEGY_NAMES = {
    "gated": "retrain + gate (this system)",
    "gated_monitored": "retrain + gate + monitor",
    "always_promote": "always promote (no gate)",
    "never_retrain": "never retrain (first model)",
    "buy_and_hold": "buy and hold",
}
COLOURS = {
    "gated": "#1f77b4",
    "gated_monitored": "#9467bd",
    "always_promote": "#ff7f0e",
    "never_retrain": "#2ca02c",
    "buy_and_hold": "#7f7f7f",
}


class LeakError(RuntimeError):
    """Something a window trains or decides on reaches past its training cut."""


@dataclass(frozen=True)
class Window:
    """Window ``k``: trains on candles with ``train_start <= open time < cut``, trades from ``cut`` to
    ``end`` (signals of candles opening in [cut, end))."""

    k: int
    train_start: pd.Timestamp
    cut: pd.Timestamp
    end: pd.Timestamp

    @property
    def label(self) -> str:
        return f"window {self.k:02d} {self.cut:%Y-%m-%d}..{self.end:%Y-%m-%d}"


def schedule(
    index: pd.DatetimeIndex,
    bar: pd.Timedelta,
    retrain_every: pd.Timedelta,
    min_train: pd.Timedelta,
    train_window: pd.Timedelta | None = None,
) -> list[Window]:
    """Cuts every ``retrain_every`` from ``index[0] + min_train`` to the end of the candles.

    ``train_window``: None trains each window on all history before its cut (expanding); a duration keeps
    only that much. The last window ends with the last candle: a remainder shorter than a quarter of
    ``retrain_every`` (too short to say anything about a model of its own) is traded by the window before.
    """
    if retrain_every <= pd.Timedelta(0) or min_train <= pd.Timedelta(0):
        raise ValueError("retrain_every and min_train must be positive durations")
    start, stop = index[0], index[-1] + bar  # the last candle closes at stop
    first = start + min_train
    if first + retrain_every / 4 > stop:
        raise ValueError(
            f"the candles ({start:%Y-%m-%d} .. {index[-1]:%Y-%m-%d}) are too short for {fmt_td(min_train)} "
            f"of first training history and at least a quarter of a {fmt_td(retrain_every)} window to "
            "trade; give more candles or lower min_train_days / retrain_every"
        )
    cuts = []
    cut = first
    while cut + retrain_every / 4 <= stop:
        cuts.append(cut)
        cut = cut + retrain_every
    windows = []
    for k, cut in enumerate(cuts):
        # the last window also trades a remainder too short for a window of its own
        end = stop if k == len(cuts) - 1 else cut + retrain_every
        train_start = start if train_window is None else max(start, cut - train_window)
        windows.append(Window(k, train_start, cut, end))
    return windows


def check_known(index: pd.DatetimeIndex, cut: pd.Timestamp, what: str) -> None:
    """Raise :class:`LeakError` unless every candle in ``index`` opened before ``cut``."""
    if len(index) and index[-1] >= cut:
        late = int((index >= cut).sum())
        raise LeakError(
            f"{what} holds {late} candle(s) from {index[index >= cut][0]} on, at or after the cut {cut}: "
            "a window may only use candles that closed by its cut"
        )


def training_candles(candles: pd.DataFrame, window: Window) -> pd.DataFrame:
    """The candles window ``window`` may train on."""
    return candles.loc[(candles.index >= window.train_start) & (candles.index < window.cut)]


@dataclass
class WindowTrade:
    """One model trading one window: its period returns and positions after costs, and its scores."""

    returns: pd.Series
    position: pd.Series
    metrics: dict[str, float]
    classification: dict | None  # macro-F1 etc. on the window's rows whose labels matured; None: too few
    rows: pd.DatetimeIndex | None = None  # the signal rows (ready, in the window)
    proba: np.ndarray | None = None  # the model's class probabilities on them
    labels: np.ndarray | None = None  # their labels (NaN where the candles end before the horizon)


def trade_window(
    model,
    candles: pd.DataFrame,
    window: Window,
    bar: pd.Timedelta,
    labels: pd.Series,
    fee_bps: float,
    slippage_bps: float,
    min_scored: int = 30,
) -> WindowTrade:
    """``model`` (a :class:`models.pyfunc.SignalModel`) trading ``window`` through its own decision policy.

    The model sees candles that opened before ``window.end`` only (:func:`check_known`); the backtest
    executes at the opens of the two candles after each signal, so the last signals of a window trade over
    the first bar of the next one, exactly as a bot would. ``labels`` (every candle's label, computed on
    the full history) only score the calls afterwards; rows whose label has not matured are NaN there and
    not scored.
    """
    seen = candles.loc[candles.index < window.end]
    check_known(seen.index, window.end, f"{window.label}: the candles its model is given")
    out = model.predict_candles(as_model_input(seen))
    stamps = pd.DatetimeIndex(out["timestamp"]).tz_localize(candles.index.tz)
    rows = (stamps >= window.cut) & out["ready"].to_numpy()
    actions = pd.Series(out.loc[rows, "action"].map(ACTION_CODES).to_numpy(), index=stamps[rows])
    policy = model.policy or DecisionPolicy()
    config = BacktestConfig(mode=policy.mode, hold=policy.on_hold, fee_bps=fee_bps, slippage_bps=slippage_bps)
    end_pos = candles.index.searchsorted(window.end)
    execution = candles.iloc[: end_pos + 2]  # opens to execute its last signals at; the model never sees them
    if not len(actions):
        raise ValueError(
            f"{window.label}: the model gave no ready signal (too little history before the window, or a "
            "gap covering it)"
        )
    sizes = out.loc[rows, "position"].abs().to_numpy()  # a bet-sized policy's sizes (1 otherwise)
    bt = backtest(execution, actions, config, bar=bar, sizes=sizes)
    y = labels.reindex(actions.index)
    proba = out.loc[rows, ["p_sell", "p_hold", "p_buy"]].to_numpy()
    matured = y.notna().to_numpy()
    classification = None
    if matured.sum() >= min_scored:
        classification = classification_metrics(y.to_numpy()[matured].astype(np.int64), proba[matured])
    return WindowTrade(
        bt.returns,
        bt.position,
        bt.metrics,
        classification,
        rows=actions.index,
        proba=proba,
        labels=y.to_numpy(dtype=float),
    )


def flat_trade(like: WindowTrade) -> WindowTrade:
    """No model in production: the bot stays out of the market for the window, over the same periods as
    ``like`` (another strategy's trade of the window)."""
    zero = pd.Series(0.0, index=like.returns.index)
    return WindowTrade(zero, zero, compute_metrics(zero.to_numpy(), zero.to_numpy(), 1.0), None)


def window_live(
    trade: WindowTrade, window: Window, bar: pd.Timedelta, horizon: int, config: MonitorConfig
) -> dict:
    """The monitor's live numbers (:func:`evaluation.monitoring.live_numbers`, with ``enough`` and
    ``rows_scored`` as :func:`evaluation.monitoring.live_performance` gives them) of a window a model traded,
    using only what was known at the window's end: rows whose label matured by then (the candle ``horizon``
    bars later had closed) and periods whose exit price had been seen."""
    if trade.rows is None or trade.proba is None or trade.labels is None:
        raise ValueError("window_live needs a model's trade_window: its rows, probabilities and labels")
    known = (trade.rows + (horizon + 1) * bar <= window.end) & np.isfinite(trade.labels)
    n = int(known.sum())
    if n < MIN_SCORED_ROWS:
        return {"enough": False, "rows_scored": n}
    returns = trade.returns.loc[trade.returns.index + bar <= window.end].to_numpy(dtype=float)
    live = live_numbers(
        trade.labels[known].astype(np.int64),
        trade.proba[known],
        returns,
        max(20, 10 * horizon),
        pd.Timedelta(days=365.25) / bar,
        config,
    )
    return {"enough": True, "rows_scored": n, **live}


def degraded_window(
    trade: WindowTrade,
    window: Window,
    bar: pd.Timedelta,
    horizon: int,
    promised_f1: float | None,
    config: MonitorConfig,
) -> list[str] | None:
    """Why ``monitor --on-degraded withdraw`` would withdraw the model that traded this window, judging
    what was known at its end (:func:`window_live`, :func:`evaluation.monitoring.action_for`): None when too
    few rows could be judged, an empty list when it would not."""
    action = action_for(window_live(trade, window, bar, horizon, config), promised_f1, config, WITHDRAW)
    return list(action.reasons) if action.judged else None


def stitch(trades: list[dict[str, WindowTrade]], candles: pd.DataFrame, bar: pd.Timedelta, cost: float):
    """The stitched out-of-sample curves: each strategy's period returns (and positions) are the windows',
    in order, concatenated (nothing is recomputed); buy-and-hold is long over exactly the gated strategy's
    periods, paying the entry cost once. Returns (returns frame, equity frame, metrics per strategy)."""
    returns, positions = {}, {}
    for name in STRATEGIES:
        returns[name] = pd.concat([t[name].returns for t in trades])
        positions[name] = pd.concat([t[name].position for t in trades])
        if not returns[name].index.is_unique or not returns[name].index.is_monotonic_increasing:
            raise AssertionError(f"{name}: stitched windows overlap or are out of order")
    frame = pd.DataFrame(returns)
    if frame.isna().any().any():
        raise AssertionError("the strategies traded different periods")
    opens = candles["open"].to_numpy(dtype=float)
    pos = candles.index.get_indexer(frame.index)
    hold = opens[pos + 1] / opens[pos] - 1.0
    hold[0] -= cost
    frame["buy_and_hold"] = hold
    positions["buy_and_hold"] = pd.Series(1.0, index=frame.index)
    equity = (1.0 + frame).cumprod()
    bars_per_year = pd.Timedelta(days=365.25) / bar
    metrics = {
        name: compute_metrics(frame[name].to_numpy(), positions[name].to_numpy(), bars_per_year)
        for name in frame
    }
    return frame, equity, metrics


def plot_walkforward(equity: pd.DataFrame, windows: pd.DataFrame, path, title: str):
    """Stitched equity of every strategy (top, on a log scale when the curves end far apart) and the
    drawdowns of the two gated strategies (bottom); dotted lines at the retraining cuts, a marker where
    the gate promoted a new model."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(9.0, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08}
    )
    for name in equity:
        series = equity[name]
        total = series.iloc[-1] - 1.0
        top.plot(
            series.index,
            series.to_numpy(),
            lw=1.6 if name == "gated" else 1.1,
            color=COLOURS.get(name),
            label=f"{STRATEGY_NAMES.get(name, name)} ({total:+.1%})",
        )
    for cut in pd.to_datetime(windows["cut"]):
        top.axvline(cut, color="grey", lw=0.4, ls=":")
    promoted = windows.loc[windows["promoted"].astype(bool)]
    if len(promoted) and "gated" in equity:
        at = equity["gated"].reindex(pd.to_datetime(promoted["cut"]), method="nearest")
        top.scatter(at.index, at.to_numpy(), marker="^", color=COLOURS["gated"], zorder=3, label="promoted")
    top.axhline(1.0, color="black", lw=0.6, ls=":")
    # Compounded curves that end far apart (x100 and -99%) only read on a log scale.
    values = equity.to_numpy(dtype=float)
    if (values > 0).all() and values.max() / values.min() > 20:
        top.set_yscale("log")
    top.set_ylabel("equity (start = 1)")
    top.set_title(title, fontsize=10)
    top.legend(fontsize=8, loc="best")
    for name in ("gated", "gated_monitored"):
        if name in equity:
            dd = drawdown(equity[name]) * 100.0
            bottom.fill_between(dd.index, dd.to_numpy(), 0.0, color=COLOURS[name], alpha=0.3, lw=0)
            bottom.plot(dd.index, dd.to_numpy(), color=COLOURS[name], lw=0.7)
    bottom.set_ylabel("drawdown %\n(gated, +monitor)")
    fig.autofmt_xdate()
    return _save(fig, path)
