"""One self-contained HTML page per run: the decision first, then the numbers behind it. No tracking calls.

The page has no external CSS, JavaScript, fonts or images (pictures are embedded as base64 data URIs),
so it reads the same when downloaded from the MLflow UI, mailed, or opened offline years later. Every
string taken from ``ctx`` is HTML-escaped (run names, paths, data sources and gate reasons are user data)
and has its credentials masked (:func:`models.redaction.redact`).

Expected ``ctx`` (keys marked optional may be absent or None; their section is then left out)::

    ctx = {
        "title": str,                       # optional, default "Training report"
        "run_id": str,
        "created": str,                     # optional, default: now (UTC, ISO 8601)
        "gate": dict,                       # GateReport.to_dict() (a GateReport is accepted too):
                                            #   {"passed": bool, "result": "passed"|"failed",
                                            #    "checks": [{"name", "passed", "value", "threshold",
                                            #                "detail"}],
                                            #    "candidate_macro_f1", "baseline_name", "baseline_macro_f1",
                                            #    "champion_version", "champion_macro_f1", "config"}
        "data": dict,                       # optional: {"source": str, "description": str, ...any scalars}
        "plan": dict,                       # optional: train.prepare.describe_plan() output, at least
                                            #   {"development": {"rows": int, "time": [start, end]},
                                            #    "holdout": {"rows": int, "time": [start, end]},
                                            #    "folds": [{"fold", "n_train", "n_validation",
                                            #               "train_time": [start, end],
                                            #               "validation_time": [start, end]}],
                                            #    "purge_gap_rows": int (optional),
                                            #    "class_counts": {class: count} (optional),
                                            #    "rows_after_features_and_labels": int (optional)}
        "models": {name: {"cv_macro_f1_mean": float, "cv_macro_f1_std": float,
                          "holdout": metrics-dict}},
        "ensemble": {"weights": {name: float}, "holdout": metrics-dict},
        "baselines": {name: metrics-dict},
        "backtest": {                       # optional
            "config": dict,                 #   fees, position rule, ... (shown as given)
            "metrics": {name: number},      #   strategy
            "benchmark_metrics": {name: number},  # buy and hold, same names where comparable
            "deflated_sharpe": {"dsr": float, "n_trials": int, ...any other numbers},
            "baseline_metrics": {name: {name: number}},  # optional: baselines traded by the same rules
            "policy": dict,                 #   optional: the decision policy's settings
            "policy_search": [dict],        #   optional: one row per confidence rule tried (out of fold)
        },
        "lookahead": dict,                  # optional: {"passed": bool, "detail": str, ...any scalars}
        "images": [(caption: str, path: str | Path)],  # optional; PNG, JPEG, GIF or SVG files
        "config": dict,                     # optional: the run configuration, shown as a table
    }

``metrics-dict`` is ``evaluation.metrics.classification_metrics`` output: ``macro_f1``, ``accuracy``,
``log_loss``, ``precision_<class>``, ``recall_<class>``, ``f1_<class>``, ``support_<class>`` for
every class in ``CLASS_NAMES``, and ``confusion_matrix`` (rows actual, columns predicted).
"""

from __future__ import annotations

import base64
import html
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from features.labels import CLASS_NAMES
from models.redaction import redact_obj

DSR_SIGNIFICANCE = 0.95
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
IMAGE_TYPES[".svg"] = "image/svg+xml"

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1f2328;
max-width:1040px;margin:24px auto;padding:0 16px;line-height:1.4;font-size:14px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;
padding-bottom:4px}h3{font-size:14px;margin:14px 0 6px}
.meta{color:#59636e;font-size:13px}.muted{color:#59636e}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.decision{border:2px solid;border-radius:6px;padding:10px 14px;margin:16px 0}
.decision.pass{border-color:#1a7f37;background:#dafbe1}.decision.fail{border-color:#cf222e;background:#ffebe9}
.verdict{font-size:20px;font-weight:700}.pass .verdict{color:#1a7f37}.fail .verdict{color:#cf222e}
.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}
.decision table{background:#fff}
figure{margin:12px 0 22px}figure img{max-width:100%;height:auto;border:1px solid #d0d7de}
figcaption{color:#59636e;font-size:13px;margin-top:4px}
"""


# ------------------------------------------------------------------------------------------ formatting
def esc(value: Any) -> str:
    """HTML-escape anything, quotes included (safe in text and in attribute values)."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int | None = 4) -> str:
    """A value as escaped display text: numbers rounded (``digits=None``: exact), None as a dash, containers
    as JSON."""
    if value is None:
        return "&ndash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "&infin;" if value > 0 else "&minus;&infin;"
        return esc(repr(value)) if digits is None else f"{value:,.{digits}f}"
    if hasattr(value, "item") and not isinstance(value, list | tuple | dict):  # numpy scalar
        try:
            return fmt(value.item(), digits)
        except (TypeError, ValueError):
            pass
    if isinstance(value, list | tuple | dict):
        return esc(json.dumps(value, default=str))
    return esc(value)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return hasattr(value, "item") and hasattr(value, "dtype")


def _cell(value: Any, digits: int | None = 4) -> str:
    cls = ' class="num"' if _is_number(value) else ""
    return f"<td{cls}>{fmt(value, digits)}</td>"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Rows are lists of ready-made ``<td>`` strings; the header is plain text (escaped here)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv_table(mapping: dict, digits: int | None = 4) -> str:
    rows = [[f"<th>{esc(k)}</th>", _cell(v, digits)] for k, v in mapping.items()]
    body = "".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    return f"<table><tbody>{body}</tbody></table>"


def _span(times: Any) -> str:
    if isinstance(times, list | tuple) and len(times) == 2:
        return f"{esc(times[0])} &rarr; {esc(times[1])}"
    return fmt(times)


def _passfail(passed: Any) -> str:
    return '<span class="ok">&#10003; pass</span>' if passed else '<span class="bad">&#10007; fail</span>'


# ---------------------------------------------------------------------------------------------- sections
def _decision(gate: Any) -> str:
    if hasattr(gate, "to_dict"):
        gate = gate.to_dict()
    passed = bool(gate.get("passed"))
    result = gate.get("result", "passed" if passed else "failed")
    summary = (
        f"ensemble holdout macro-F1 {fmt(gate.get('candidate_macro_f1'))} vs best baseline "
        f"&lsquo;{esc(gate.get('baseline_name', ''))}&rsquo; {fmt(gate.get('baseline_macro_f1'))}"
    )
    if gate.get("looks") is not None:
        looks, alpha = int(gate["looks"]), gate.get("alpha")
        summary += (
            f". This holdout has been looked at {looks} time{'s' if looks != 1 else ''} (this run "
            f"included), so each test needs p &le; {fmt(alpha)}"
        )
        if gate.get("block"):
            summary += (
                f"; resampling blocks of {int(gate['block'])} periods on average, measured from the data"
            )
    if gate.get("champion_version") is not None:
        summary += (
            f"; production v{esc(gate['champion_version'])} "
            f"{fmt(gate.get('champion_macro_f1'))} on the same holdout"
        )
    rows = [
        [
            f"<td>{esc(c.get('name', ''))}</td>",
            f"<td>{_passfail(c.get('passed'))}"
            + ("" if c.get("blocking", True) else " <small>(information)</small>")
            + "</td>",
            _cell(c.get("value")),
            _cell(c.get("threshold")),
            f"<td>{esc(c.get('detail', ''))}</td>",
        ]
        for c in gate.get("checks", [])
    ]
    verdict = "promotion allowed" if passed else "not promoted to production"
    return (
        f'<section id="decision" class="decision {"pass" if passed else "fail"}">'
        f'<div class="verdict">Gate {esc(result)}: {verdict}</div>'
        f"<p>{summary}</p>" + _table(["check", "result", "value", "threshold", "detail"], rows) + "</section>"
    )


def _data_and_plan(data: dict | None, plan: dict | None) -> str:
    if not data and not plan:
        return ""
    parts = ['<section id="data"><h2>Data and plan</h2>']
    if data:
        parts.append(_kv_table(dict(data)))
    if plan:
        rows = []
        for key in ("development", "holdout"):
            if key in plan:
                part = plan[key]
                rows.append(
                    [f"<td>{esc(key)}</td>", _cell(part.get("rows")), f"<td>{_span(part.get('time'))}</td>"]
                )
        if rows:
            parts.append(_table(["set", "rows", "time"], rows))
        extra = {
            "usable rows (after features and labels)": plan.get("rows_after_features_and_labels"),
            "purge gap (rows)": plan.get("purge_gap_rows"),
            "class counts": plan.get("class_counts"),
        }
        extra = {k: v for k, v in extra.items() if v is not None}
        if extra:
            parts.append(_kv_table(extra))
        folds = plan.get("folds") or []
        if folds:
            parts.append("<h3>Walk-forward folds (development rows only)</h3>")
            fold_rows = [
                [
                    _cell(f.get("fold")),
                    _cell(f.get("n_train")),
                    f"<td>{_span(f.get('train_time'))}</td>",
                    _cell(f.get("n_validation")),
                    f"<td>{_span(f.get('validation_time'))}</td>",
                ]
                for f in folds
            ]
            parts.append(
                _table(["fold", "train rows", "train time", "validation rows", "validation time"], fold_rows)
            )
    parts.append("</section>")
    return "".join(parts)


def _models(models: dict, ensemble: dict | None, baselines: dict | None) -> str:
    if not models and not ensemble:
        return ""
    weights = (ensemble or {}).get("weights", {})
    rows = []
    for name, m in (models or {}).items():
        hold = m.get("holdout") or {}
        cv = f"{fmt(m.get('cv_macro_f1_mean'))} &plusmn; {fmt(m.get('cv_macro_f1_std'))}"
        rows.append(
            [
                f"<td>{esc(name)}</td>",
                f'<td class="num">{cv}</td>',
                _cell(hold.get("macro_f1")),
                _cell(hold.get("accuracy")),
                _cell(hold.get("log_loss")),
                _cell(weights.get(name), 2),
            ]
        )
    if ensemble:
        hold = ensemble.get("holdout") or {}
        rows.append(
            [
                "<td><b>ensemble</b></td>",
                '<td class="num">&ndash;</td>',
                _cell(hold.get("macro_f1")),
                _cell(hold.get("accuracy")),
                _cell(hold.get("log_loss")),
                '<td class="num">&ndash;</td>',
            ]
        )
    parts = [
        '<section id="models"><h2>Models</h2>',
        '<p class="muted">CV = purged walk-forward folds on the development rows (mean &plusmn; std); '
        "holdout = the untouched last rows. Weights were fitted on out-of-fold predictions.</p>",
        _table(["model", "CV macro-F1", "holdout macro-F1", "accuracy", "log loss", "weight"], rows),
    ]
    if baselines:
        base_rows = [
            [
                f"<td>{esc(name)}</td>",
                _cell(m.get("macro_f1")),
                _cell(m.get("accuracy")),
                _cell(m.get("log_loss")),
            ]
            for name, m in baselines.items()
        ]
        parts.append("<h3>Baselines (fitted on the development labels, scored on the holdout)</h3>")
        parts.append(_table(["baseline", "macro-F1", "accuracy", "log loss"], base_rows))
    if ensemble and ensemble.get("holdout"):
        parts.append(_per_class(ensemble["holdout"]))
    parts.append("</section>")
    return "".join(parts)


def _per_class(metrics: dict) -> str:
    rows = [
        [
            f"<td>{esc(c)}</td>",
            _cell(metrics.get(f"precision_{c}")),
            _cell(metrics.get(f"recall_{c}")),
            _cell(metrics.get(f"f1_{c}")),
            _cell(metrics.get(f"support_{c}")),
        ]
        for c in CLASS_NAMES
    ]
    out = "<h3>Ensemble per class (holdout)</h3>" + _table(
        ["class", "precision", "recall", "F1", "support"], rows
    )
    cm = metrics.get("confusion_matrix")
    if cm:
        cm_rows = [
            [f"<th>actual {esc(CLASS_NAMES[i]) if i < len(CLASS_NAMES) else i}</th>"]
            + [_cell(v) for v in row]
            for i, row in enumerate(cm)
        ]
        out += _table([""] + [f"predicted {c}" for c in CLASS_NAMES[: len(cm)]], cm_rows)
    return out


def dsr_reading(ds: dict) -> str:
    """One plain sentence on the deflated Sharpe ratio (escaped HTML)."""
    dsr = ds.get("dsr")
    n = ds.get("n_trials")
    trials = f"{fmt(n)} trials" if n is not None else "the number of trials tried"
    if not _is_number(dsr) or math.isnan(float(cast(float, dsr))):
        return (
            "The deflated Sharpe ratio could not be computed: the Sharpe ratio has no significance reading."
        )
    dsr = float(cast(float, dsr))  # a number (checked above): a float or a numpy scalar
    if dsr < DSR_SIGNIFICANCE:
        return (
            f"Deflated Sharpe ratio {dsr:.2f} &lt; {DSR_SIGNIFICANCE:.2f}: the strategy&rsquo;s Sharpe ratio "
            f"is not distinguishable from luck given {trials}."
        )
    return (
        f"Deflated Sharpe ratio {dsr:.2f} &ge; {DSR_SIGNIFICANCE:.2f}: the Sharpe ratio remains significant "
        f"after correcting for {trials}."
    )


def _policy(bt: dict) -> str:
    """The decision policy and the confidence rules it was chosen from (out-of-fold, development rows)."""
    policy = bt.get("policy")
    if not policy:
        return ""
    parts = [
        "<h3>Decision policy</h3>",
        "<p>How the bot acts on the model: buy / sell only when that class&rsquo;s probability reaches "
        "<code>min_proba</code> and beats the other direction by <code>min_margin</code>; otherwise hold "
        "(keep the position, or go flat). The rule was chosen by after-cost Sharpe ratio on out-of-fold "
        "predictions of the development rows; the holdout played no part.</p>",
        _kv_table(policy, digits=None),
    ]
    search = bt.get("policy_search") or []
    if search:
        header = list(search[0])
        parts.append(_table(header, [[_cell(row.get(k)) for k in header] for row in search]))
    return "".join(parts)


def _backtest(bt: dict | None) -> str:
    if not bt:
        return ""
    strategy = bt.get("metrics") or {}
    bench = bt.get("benchmark_metrics") or {}
    others = bt.get("baseline_metrics") or {}
    names = list(strategy) + [k for k in bench if k not in strategy]
    rows = [
        [f"<td>{esc(k)}</td>", _cell(strategy.get(k)), _cell(bench.get(k))]
        + [_cell(m.get(k)) for m in others.values()]
        for k in names
    ]
    parts = ['<section id="backtest"><h2>Backtest on the holdout</h2>']
    if bt.get("config"):
        parts.append(_kv_table(bt["config"], digits=None))  # settings shown exactly as given
    header = ["metric", "strategy", "buy and hold"] + [f"{k} baseline, same rules" for k in others]
    parts.append(_table(header, rows))
    parts.append(_policy(bt))
    ds = bt.get("deflated_sharpe")
    if ds:
        parts.append("<h3>Deflated Sharpe ratio</h3>")
        parts.append(f"<p><b>{dsr_reading(ds)}</b></p>")
        parts.append(_kv_table(ds))
    parts.append("</section>")
    return "".join(parts)


def _lookahead(la: dict | None) -> str:
    if not la:
        return ""
    head = ""
    if "passed" in la:
        head = f"<p>{_passfail(la['passed'])}</p>"
    return (
        '<section id="lookahead"><h2>Look-ahead check</h2>'
        + head
        + _kv_table({k: v for k, v in la.items() if k != "passed"})
        + "</section>"
    )


def _data_uri(path: Path) -> str | None:
    mime = IMAGE_TYPES.get(path.suffix.lower())
    if mime is None or not path.is_file():
        return None
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _images(images: list | None) -> str:
    if not images:
        return ""
    parts = ['<section id="figures"><h2>Figures</h2>']
    for caption, path in images:
        uri = _data_uri(Path(path))
        if uri is None:  # a missing plot must not cost the rest of the report
            parts.append(f'<p class="muted">(figure not available: {esc(caption)}, {esc(path)})</p>')
            continue
        parts.append(
            f'<figure><img src="{uri}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'
        )
    parts.append("</section>")
    return "".join(parts)


def _config(config: dict | None) -> str:
    if not config:
        return ""
    return '<section id="config"><h2>Configuration</h2>' + _kv_table(config, digits=None) + "</section>"


# -------------------------------------------------------------------------------------------------- API
def render_report(ctx: dict) -> str:
    """The whole report as one HTML string (see the module docstring for ``ctx``). Credentials in any
    string of ``ctx`` (a password in a storage URI of the configuration) are masked first."""
    ctx = redact_obj(ctx)
    title = ctx.get("title") or "Training report"
    created = ctx.get("created") or datetime.now(UTC).isoformat(timespec="seconds")
    body = [
        f"<h1>{esc(title)}</h1>",
        f'<div class="meta">run <code>{esc(ctx.get("run_id", ""))}</code> &middot; {esc(created)}</div>',
        _decision(ctx.get("gate") or {}),
        _data_and_plan(ctx.get("data"), ctx.get("plan")),
        _models(ctx.get("models") or {}, ctx.get("ensemble"), ctx.get("baselines")),
        _backtest(ctx.get("backtest")),
        _lookahead(ctx.get("lookahead")),
        _images(ctx.get("images")),
        _config(ctx.get("config")),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body></html>\n"
    )


def write_report(ctx: dict, path: str | Path) -> Path:
    """Render ``ctx`` and write it as UTF-8 to ``path`` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(ctx), encoding="utf-8")
    return path
