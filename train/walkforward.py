"""`walkforward` step: replay the whole system (retrain, gate, promote, trade) over a long candle history.

    python -m train.walkforward --data builtin --timeframe 4h --retrain-every 30 --n-trials 6

Every ``retrain_every`` days from ``min_train_days`` after the first candle (the *cut*), a window trains a
candidate exactly as the pipeline does (Optuna studies per model on purged folds, the weighted ensemble,
the decision policy on out-of-fold predictions, the gate on the window's own holdout, against the model
then in production) on the candles that closed by the cut, and nothing later. The following
``retrain_every`` days are then traded, after costs, by:

- ``gated``: whatever is in production after this window's gate (the candidate if it passed, else the
  model promoted earlier; flat before anything passed): this system;
- ``gated_monitored``: the same, and at the end of each window the monitor's ``degraded`` rule
  (``evaluation.monitor``: live macro-F1 clearly below what the model was promoted with, or an
  after-cost loss beyond luck) is applied to what the production model did in it, on the rows whose
  outcome was known by then; a degraded model is withdrawn and the bot is flat until a candidate passes
  (the decision is :func:`evaluation.monitoring.action_for`, the one ``monitor --on-degraded withdraw``
  and ``retrain --on-degraded withdraw`` act on);
- ``always_promote``: this window's candidate, gate or no gate;
- ``never_retrain``: the first window's candidate, forever;
- ``buy_and_hold``: long over the same periods.

Each window's studies can start from the previous window's best parameter sets (``--warm-start``), which
makes the next study's first trials good ones. Studies live in ``--optuna-storage``: rerunning resumes.

One parent run (step ``walkforward``) holds the stitched equity curves, the per-window table, a plot and an
HTML report; one child run per window holds that window's gate, scores and trades (``trades.csv``). The
registry is never touched: production here is simulated, window by window.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from types import SimpleNamespace

import mlflow
import optuna
import pandas as pd

from evaluation.monitoring import WITHDRAW, MonitorConfig, action_for
from evaluation.walkforward import (
    STRATEGIES,
    STRATEGY_NAMES,
    LeakError,
    Window,
    check_known,
    flat_trade,
    plot_walkforward,
    schedule,
    stitch,
    trade_window,
    training_candles,
    window_live,
)
from features.candles import count_gaps, fmt_td
from features.data import DataInfo, candles_sha256, load_candles
from features.dataset import InsufficientDataError
from features.labels import label_function
from models import cli, tracking
from models.base import default_n_jobs
from models.pyfunc import SignalModel
from models.redaction import redact, redact_obj
from train.config import ERRORS, PipelineConfig, pipeline_config, pipeline_parser
from train.prepare import prepare_candles, with_pair
from train.stages.assess import Evaluation, assess, compare_champion
from train.stages.fit import fit_candidate, serving_model
from train.stages.tune import Tuned, study_for
from train.tune import check_storage

log = logging.getLogger("train.walkforward")
REPORT = "walkforward.html"


@dataclass(frozen=True)
class WalkForwardConfig:
    retrain_every: float = 30.0  # days between retrainings
    min_train_days: float = 180.0  # history before the first cut
    train_days: float = 0.0  # 0: each window trains on all history before its cut; else this many days
    warm_start: bool = True
    warm_start_trials: int = 3  # best parameter sets of the previous window's study to try first

    def __post_init__(self):
        if not self.retrain_every > 0 or not self.min_train_days > 0:
            raise ValueError("retrain_every and min_train_days must be > 0 days")
        if self.train_days < 0:
            raise ValueError("train_days must be >= 0 (0 = all history before each cut)")
        if self.warm_start_trials < 1:
            raise ValueError("warm_start_trials must be >= 1")


class _Deployed:
    """A model in simulated production, with the interface of a loaded pyfunc model (``predict`` and
    ``metadata.metadata``) that the champion comparison expects."""

    def __init__(self, model: SignalModel):
        self.model = model
        self.metadata = SimpleNamespace(metadata=model.metadata)

    def predict(self, candles: pd.DataFrame) -> pd.DataFrame:
        return self.model.predict_candles(candles)


@dataclass
class WindowResult:
    row: dict  # the window's line in the table
    trades: dict  # strategy -> evaluation.walkforward.WindowTrade
    best: dict  # model -> best parameter sets of its study (for the next window's warm start)


def _window_info(info, frame: pd.DataFrame):
    gaps, largest = count_gaps(frame.index, info.bar)
    return replace(
        info,
        sha256=candles_sha256(frame),
        rows=len(frame),
        start=frame.index[0],
        end=frame.index[-1],
        gaps=gaps,
        largest_gap=largest,
    )


def _best_params(study: optuna.Study, k: int) -> list[dict]:
    # (value, parameters) of the completed trials: a completed trial of a single-objective study has a value
    done = [
        (t.value, t.params)
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None
    ]
    return [params for _, params in sorted(done, key=lambda d: d[0], reverse=True)[:k]]


def trained_until(model: SignalModel) -> pd.Timestamp:
    """The last candle (open time, UTC) any of the model's training labels looked at."""
    return pd.Timestamp(model.metadata["trained_until"]).tz_localize("UTC")


@dataclass(frozen=True)
class Deployment:
    """A model in simulated production: the window that trained it, the model, and the holdout macro-F1
    it was promoted with (what the monitor holds it to)."""

    k: int
    model: SignalModel
    promised_f1: float

    @property
    def label(self) -> str:
        return f"window {self.k:02d}"


# The two strategies with a production alias, each its own: ``gated`` keeps a model until a candidate
# beats it; ``gated_monitored`` also withdraws it (flat) when the monitor's degraded rule fires.
TRACKS = ("gated", "gated_monitored")


def run_window(
    cfg: PipelineConfig,
    wf: WalkForwardConfig,
    candles: pd.DataFrame,
    info,
    labels: pd.Series,
    window: Window,
    production: dict[str, Deployment | None],
    first: SignalModel | None,
    warm: dict,
    n_jobs: int,
) -> tuple[WindowResult, SignalModel, dict[str, Deployment | None]]:
    """Train, gate and trade one window; returns its result, its candidate, and what each track has in
    production for the next window."""
    started = time.monotonic()
    data = window_data(cfg, candles, info, window)
    tuned, best = tune_window(cfg, wf, data, window, warm, n_jobs)
    fitted = fit_candidate(cfg, data, tuned, n_jobs)
    candidate = serving_model(cfg, data, fitted)
    now, evs = gate_tracks(cfg, data, fitted, tuned, window, candidate, production)
    traders: dict[str, SignalModel | None] = {
        "gated": _model_of(now["gated"]),
        "gated_monitored": _model_of(now["gated_monitored"]),
        "always_promote": candidate,
        "never_retrain": first or candidate,
    }
    check_traders(traders, window)
    trades = trade_traders(cfg, traders, candles, info, labels, window)
    after, monitor_note = monitor_window(cfg, trades, window, info, now)
    row = window_row(window, data, evs, now, monitor_note, round(time.monotonic() - started, 1))
    row |= strategy_columns(trades, candles)
    return WindowResult(row, trades, best), candidate, after


def _model_of(deployment: Deployment | None) -> SignalModel | None:
    return None if deployment is None else deployment.model


def window_data(cfg: PipelineConfig, candles: pd.DataFrame, info, window: Window):
    """The window's dataset, prepared as the pipeline prepares it from the candles closed by its cut
    (checked: nothing later)."""
    frame = training_candles(candles, window)
    check_known(frame.index, window.cut, f"{window.label}: its training candles")
    try:
        data = prepare_candles(cfg, frame, _window_info(info, frame))
    except InsufficientDataError as exc:
        raise InsufficientDataError(
            f"{window.label} trains on candles from {frame.index[0]} to the cut: {exc} For a walk-forward, "
            "raise --min-train-days (or --train-days) so that the first window has enough history."
        ) from None
    check_known(data.candles.index, window.cut, f"{window.label}: its training dataset")
    return data


def tune_window(
    cfg: PipelineConfig, wf: WalkForwardConfig, data, window: Window, warm: dict, n_jobs: int
) -> tuple[dict[str, Tuned], dict[str, list[dict]]]:
    """Stage `tune` for the window (no runs logged): each model's best trial, and the best parameter sets
    of its study (the next window's warm start)."""
    tuned, best = {}, {}
    for name in cfg.model_list:
        oof: dict = {}
        study = study_for(
            cfg,
            data,
            name,
            n_jobs,
            description={"walkforward_cut": str(window.cut)},
            warm_start=warm.get(name) if wf.warm_start else None,
            keep_oof=oof,
        )
        tuned[name] = Tuned.from_study("", study, oof)
        best[name] = _best_params(study, wf.warm_start_trials)
    return tuned, best


def gate_tracks(
    cfg: PipelineConfig,
    data,
    fitted,
    tuned: dict[str, Tuned],
    window: Window,
    candidate: SignalModel,
    production: dict[str, Deployment | None],
) -> tuple[dict[str, Deployment | None], dict]:
    """Each track's gate (stage `assess` against what it has in production) and what it has in production
    after it: the candidate if it passed, else what it had. The gate runs once per distinct champion (the
    two tracks usually hold the same one)."""
    evaluations: dict[int | None, Evaluation] = {}
    now, evs = {}, {}
    for track in TRACKS:
        champion = production[track]
        key = None if champion is None else id(champion)
        if key not in evaluations:
            evaluations[key] = assess(cfg, data, fitted, tuned, _champion_of(cfg, data, champion))
        evs[track] = ev = evaluations[key]
        passed = Deployment(window.k, candidate, ev.gate.candidate_macro_f1)
        now[track] = passed if ev.gate.passed else champion
    return now, evs


def _champion_of(cfg: PipelineConfig, data, champion: Deployment | None):
    """The champion comparison stage `assess` asks for (None: nothing in production)."""
    if champion is None:
        return None

    def champion_of(pred, returns):
        return compare_champion(
            champion.label, {}, lambda: _Deployed(champion.model), data, cfg, pred, returns
        )

    return champion_of


def check_traders(traders: dict[str, SignalModel | None], window: Window) -> None:
    """:class:`LeakError` when a model that trades the window trained on candles from after its cut."""
    for name, model in traders.items():
        if model is not None and trained_until(model) >= window.cut:
            raise LeakError(
                f"{window.label}: the {name} model trained on candles up to {trained_until(model)}, "
                f"not before the cut {window.cut}"
            )


def trade_traders(
    cfg: PipelineConfig,
    traders: dict[str, SignalModel | None],
    candles: pd.DataFrame,
    info,
    labels: pd.Series,
    window: Window,
) -> dict:
    """Each strategy's trades over the window, after costs; a track with nothing in production stays out
    (flat)."""
    trades = {
        name: trade_window(model, candles, window, info.bar, labels, cfg.fee_bps, cfg.slippage_bps)
        for name, model in traders.items()
        if model is not None
    }
    for track in TRACKS:
        if traders[track] is None:  # nothing in production: the bot stays out
            trades[track] = flat_trade(trades["always_promote"])
    return trades


def monitor_window(
    cfg: PipelineConfig, trades: dict, window: Window, info, now: dict[str, Deployment | None]
) -> tuple[dict[str, Deployment | None], str]:
    """The monitor, at the end of the window, on what it could know by then, deciding as
    `monitor --on-degraded withdraw` does (evaluation.monitoring.action_for): a production model whose
    live numbers are degraded is withdrawn (flat) until a candidate passes the gate. Returns what each
    track has in production for the next window, and what the monitor did."""
    after = dict(now)
    deployed = now["gated_monitored"]
    if deployed is None:
        return after, ""
    config = MonitorConfig(seed=cfg.seed, fee_bps=cfg.fee_bps, slippage_bps=cfg.slippage_bps)
    live = window_live(trades["gated_monitored"], window, info.bar, cfg.horizon, config)
    action = action_for(live, deployed.promised_f1, config, WITHDRAW)
    if not action.judged:
        return after, "not judged (too few matured rows)"
    if action.kind == WITHDRAW:
        after["gated_monitored"] = None
        return after, f"withdrew {deployed.label}: " + "; ".join(action.reasons)
    return after, "ok"


def window_row(
    window: Window, data, evs: dict, now: dict[str, Deployment | None], monitor_note: str, seconds: float
) -> dict:
    """The window's line in the table: its candidate's gate (track ``gated``) and production."""
    ev = evs["gated"]
    return {
        "window": window.k,
        "train_start": str(window.train_start),
        "cut": str(window.cut),
        "end": str(window.end),
        "train_rows": data.ds.n_rows,
        "holdout_macro_f1": ev.gate.candidate_macro_f1,
        "baseline_macro_f1": ev.gate.baseline_macro_f1,
        "holdout_return": ev.backtest.metrics["total_return"],
        "holdout_dsr": ev.deflated_sharpe["dsr"],
        "gate": ev.gate.result,
        "failed_checks": ",".join(ev.gate.failed_checks()),
        "promoted": bool(ev.gate.passed),
        "production": "" if now["gated"] is None else now["gated"].label,
        "monitored_gate": evs["gated_monitored"].gate.result,
        "monitored_production": "" if now["gated_monitored"] is None else now["gated_monitored"].label,
        "monitor": monitor_note,
        "seconds": seconds,
    }


def strategy_columns(trades: dict, candles: pd.DataFrame) -> dict:
    """The window's columns per strategy: return, trades and macro-F1 of the traded calls, and
    buy-and-hold's return over the same periods."""
    row = {}
    for name in STRATEGIES:
        t = trades[name]
        row[f"{name}_return"] = t.metrics["total_return"]
        row[f"{name}_trades"] = t.metrics["n_trades"]
        row[f"{name}_macro_f1"] = t.classification["macro_f1"] if t.classification else float("nan")
    opens = candles["open"]
    span = trades["gated"].returns.index
    if len(span):
        first_open, last_open = opens.index.get_loc(span[0]), opens.index.get_loc(span[-1]) + 1
        row["buy_and_hold_return"] = float(opens.iloc[last_open] / opens.iloc[first_open] - 1.0)
    return row


def log_window(result: WindowResult) -> None:
    """The window's child run: its gate, scores and trades."""
    row = result.row
    mlflow.set_tags(
        {
            "step": "walkforward_window",
            "gate": row["gate"],
            "gate_failed_checks": row["failed_checks"],
            "production": row["production"] or "none",
            "monitored_production": row["monitored_production"] or "none",
            "monitor": row["monitor"][:500] or "-",
        }
    )
    mlflow.log_params({k: row[k] for k in ("window", "train_start", "cut", "end")})
    mlflow.log_metrics(
        {k: float(v) for k, v in row.items() if isinstance(v, int | float | bool) and k != "window"}
        | {"gate_passed": float(row["gate"] == "passed")}
    )
    frame = pd.DataFrame({name: t.returns for name, t in result.trades.items()})
    mlflow.log_text(frame.to_csv(index_label="period_start"), "trades.csv")


def report_html(summary: dict, table: pd.DataFrame, image: str) -> str:
    """A one-page HTML report: the verdict, the stitched comparison, the plot, the per-window table."""
    rows = "".join(
        f"<tr><td>{STRATEGY_NAMES[k]}</td><td>{m['total_return']:+.1%}</td><td>{m['sharpe']:.2f}</td>"
        f"<td>{m['max_drawdown']:.1%}</td><td>{m['n_trades']}</td></tr>"
        for k, m in summary["strategies"].items()
    )
    shown = table.drop(columns=["train_start"]).copy()
    for c in shown.columns:
        if c.endswith("_return"):
            shown[c] = shown[c].map(lambda v: f"{v:+.1%}" if pd.notna(v) else "")
        elif shown[c].dtype.kind == "f":
            shown[c] = shown[c].map(lambda v: f"{v:.3f}" if pd.notna(v) else "")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>walk-forward</title>"
        "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;"
        "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head><body>"
        f"<h1>Walk-forward: {summary['data']}</h1><p>{summary['description']}</p>"
        "<h2>Stitched out-of-sample results, after costs</h2><table><tr><th>strategy</th><th>return</th>"
        f"<th>Sharpe</th><th>max drawdown</th><th>trades</th></tr>{rows}</table>"
        f"<p><img src='{image}' style='max-width:100%'></p><h2>Windows</h2>"
        f"{shown.to_html(index=False, border=0)}</body></html>"
    )


def run_walkforward(cfg: PipelineConfig, wf: WalkForwardConfig) -> dict:
    """Every window in order; returns the summary (also logged to the parent run)."""
    tracking.check_reachable()
    check_storage(cfg.optuna_storage)
    n_jobs = cfg.n_jobs or default_n_jobs()
    candles, info, windows, labels = load_history(cfg, wf)
    tracking.use_experiment()
    tracking.track_liveness()
    for closed in tracking.close_orphaned_runs():
        log.info("orphan    %s", closed)
    started = time.monotonic()
    with mlflow.start_run(run_name=run_name(cfg, wf, info)) as parent:
        mlflow.set_tags(
            {"step": "walkforward", "git_commit": tracking.git_commit(), "data_source": info.source}
        )
        tracking.log_params_once(cfg.to_dict() | asdict(wf))
        tracking.log_candles_snapshot(candles, info)
        results = replay_windows(cfg, wf, candles, info, labels, windows, n_jobs)
        returns, equity, metrics = stitch([r.trades for r in results], candles, info.bar, cfg.cost)
        table = pd.DataFrame([r.row for r in results])
        summary = summarise(cfg, wf, parent.info.run_id, info, windows, table, metrics, started)
        log_walkforward(summary, table, returns, equity, info)
    summary["table"] = table
    summary["returns"] = returns
    summary["trades"] = [r.trades for r in results]
    return summary


def load_history(
    cfg: PipelineConfig, wf: WalkForwardConfig
) -> tuple[pd.DataFrame, DataInfo, list[Window], pd.Series]:
    """The candles (with the second instrument's pair_* columns), their info, the windows, and every
    candle's label (for scoring the traded calls after the fact, never for a decision)."""
    candles, info = load_candles(cfg.data, cfg.timeframe or None, cfg.days or None)
    candles = with_pair(cfg, candles, info)  # the second instrument's pair_* columns ride along
    windows = schedule(
        candles.index,
        info.bar,
        pd.Timedelta(days=wf.retrain_every),
        pd.Timedelta(days=wf.min_train_days),
        pd.Timedelta(days=wf.train_days) if wf.train_days else None,
    )
    labels = label_function(cfg.label)(candles["close"], cfg.horizon, cfg.threshold, cfg.vol_window)
    log.info(
        "walk-forward %s: %d windows of %g days from %s, %s",
        info.describe(),
        len(windows),
        wf.retrain_every,
        f"{windows[0].cut:%Y-%m-%d}",
        "expanding history" if not wf.train_days else f"last {wf.train_days:g} days of history",
    )
    return candles, info, windows, labels


def run_name(cfg: PipelineConfig, wf: WalkForwardConfig, info) -> str:
    """The parent run's name, e.g. ``walkforward builtin 4h every 30d 2025-01-31 12:00``."""
    # builtin, a file's name, exchange:..., runs:/... (as the pipeline names its runs)
    return (
        f"walkforward {info.describe().split(': ', 1)[0]} {cfg.timeframe or fmt_td(info.bar)} "
        f"every {wf.retrain_every:g}d "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )


def replay_windows(
    cfg: PipelineConfig,
    wf: WalkForwardConfig,
    candles: pd.DataFrame,
    info,
    labels: pd.Series,
    windows: list[Window],
    n_jobs: int,
) -> list[WindowResult]:
    """Every window in order, each in its child run, production carried from one to the next."""
    results: list[WindowResult] = []
    production: dict[str, Deployment | None] = dict.fromkeys(TRACKS)
    first: SignalModel | None = None
    warm: dict[str, list[dict]] = {}  # model -> the previous window's best parameter sets (warm start)
    for window in windows:
        with mlflow.start_run(run_name=window.label, nested=True):
            result, candidate, production = run_window(
                cfg, wf, candles, info, labels, window, production, first, warm, n_jobs
            )
            log_window(result)
        results.append(result)
        first = first or candidate
        warm = result.best
        print_window(window, result.row)
    return results


def print_window(window: Window, r: dict) -> None:
    log.info(
        "%s  %d rows, gate %s%s; production %s; traded: gated %+.1f%%, gated+monitor %+.1f%%, "
        "always %+.1f%%, never %+.1f%%, buy-and-hold %+.1f%% (%.0fs)%s",
        window.label,
        r["train_rows"],
        r["gate"],
        f" ({r['failed_checks']})" if r["failed_checks"] else "",
        r["production"] or "none",
        100 * r["gated_return"],
        100 * r["gated_monitored_return"],
        100 * r["always_promote_return"],
        100 * r["never_retrain_return"],
        100 * r.get("buy_and_hold_return", float("nan")),
        r["seconds"],
        f"; monitor: {r['monitor']}" if r["monitor"].startswith("withdrew") else "",
    )


def summarise(
    cfg: PipelineConfig,
    wf: WalkForwardConfig,
    run_id: str,
    info,
    windows: list[Window],
    table: pd.DataFrame,
    metrics: dict,
    started: float,
) -> dict:
    """The walk-forward's summary: the verdict in one paragraph and the stitched metrics per strategy."""
    promoted = int(table["promoted"].sum())
    g, m, a, n, b = (
        metrics[k]["total_return"]
        for k in ("gated", "gated_monitored", "always_promote", "never_retrain", "buy_and_hold")
    )
    withdrawn = int(table["monitor"].str.startswith("withdrew").sum())
    description = (
        f"{len(windows)} windows of {wf.retrain_every:g} days from {windows[0].cut:%Y-%m-%d} to "
        f"{windows[-1].end:%Y-%m-%d}; the gate promoted {promoted} of {len(windows)} candidates. "
        f"Stitched after costs: retrain + gate {g:+.1%}, retrain + gate + monitor {m:+.1%} "
        f"({withdrawn} withdrawal(s)), always promote {a:+.1%}, never retrain {n:+.1%}, "
        f"buy and hold {b:+.1%}."
    )
    return {
        "run_id": run_id,
        "data": info.describe(),
        "description": description,
        "windows": len(windows),
        "promoted": promoted,
        "strategies": metrics,
        "seconds": round(time.monotonic() - started, 1),
        "config": redact_obj(cfg.to_dict() | asdict(wf)),  # a storage URI's password masked
    }


def log_walkforward(
    summary: dict, table: pd.DataFrame, returns: pd.DataFrame, equity: pd.DataFrame, info
) -> None:
    """The stitched metrics, the tables, the plot, the HTML report and the description, to the active
    (parent) run."""
    for name, m in summary["strategies"].items():
        tracking.log_metrics(f"{name}_", m)
    mlflow.log_metrics(
        {
            "n_windows": summary["windows"],
            "n_promoted": summary["promoted"],
            "total_seconds": summary["seconds"],
        }
    )
    mlflow.log_text(table.to_csv(index=False), "windows.csv")
    mlflow.log_text(returns.to_csv(index_label="period_start"), "returns.csv")
    mlflow.log_text(equity.to_csv(index_label="period_start"), "equity.csv")
    mlflow.log_dict(summary, "walkforward.json")
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_walkforward(
            equity, table, Path(tmp) / "walkforward_equity.png", f"Walk-forward, {info.describe()}"
        )
        mlflow.log_artifact(str(png))
        (Path(tmp) / REPORT).write_text(redact(report_html(summary, table, png.name)), encoding="utf-8")
        mlflow.log_artifact(str(Path(tmp) / REPORT))
    mlflow.set_tag(
        "mlflow.note.content",
        f"**walk-forward**: {summary['description']}\n\nPer window: `windows.csv` and the child runs; plot "
        f"and table: `{REPORT}`.",
    )


# Cheaper than a single pipeline run: one study per model per window, with no time limit (a time budget
# would make the replay depend on the machine's load).
PIPELINE_DEFAULTS = {"n_trials": 6, "timeout": 0.0}
WALKFORWARD_HELP = {
    "retrain_every": "days between retrainings",
    "min_train_days": "history before the first cut, in days",
    "train_days": "days of history each window trains on (0 = all history before its cut)",
    "warm_start": "start each window's studies from the previous window's best parameter sets",
    "warm_start_trials": "how many of the previous window's best parameter sets to try first",
}


def build_parser() -> cli.Parser:
    """The pipeline's options (with :data:`PIPELINE_DEFAULTS`) and :class:`WalkForwardConfig`'s."""
    parser = pipeline_parser("python -m train.walkforward", __doc__.splitlines()[0], **PIPELINE_DEFAULTS)
    cli.add_options(parser, WalkForwardConfig, WALKFORWARD_HELP)
    return parser


def print_summary(s: dict) -> None:
    log.info("\n== walk-forward " + "=" * 55)
    log.info(s["description"])
    log.info(f"{'strategy':<32}{'return':>9}{'Sharpe':>8}{'max DD':>8}{'trades':>8}")
    for name, m in s["strategies"].items():
        log.info(
            f"{STRATEGY_NAMES[name]:<32}{m['total_return']:>+9.1%}{m['sharpe']:>8.2f}"
            f"{m['max_drawdown']:>8.1%}{m['n_trades']:>8}"
        )
    log.info(f"run       {s['run_id']}  ({s['seconds']:.0f}s)")


def main(argv: list[str] | None = None) -> int:
    return cli.main(build_parser(), argv, _main, (*ERRORS, LeakError))


def _main(args: argparse.Namespace) -> int:
    wf = WalkForwardConfig(**{f.name: getattr(args, f.name) for f in fields(WalkForwardConfig)})
    if args.log_level == "INFO":  # a line per trial of every window's studies is too much; DEBUG shows them
        logging.getLogger("train.tune").setLevel(logging.WARNING)
    summary = run_walkforward(pipeline_config(args), wf)
    print_summary(summary)
    print(json.dumps({k: summary["strategies"][k]["total_return"] for k in summary["strategies"]}))
    return 0


if __name__ == "__main__":
    cli.run(main)
