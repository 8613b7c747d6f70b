"""Registry lifecycle commands: promote, rollback, status, history.

    python -m models.lifecycle promote  --model-name NAME --version 3 --reason "why" [--force true]
    python -m models.lifecycle rollback --model-name NAME [--version 2] [--reason "why"]
    python -m models.lifecycle status   --model-name NAME [--json true]
    python -m models.lifecycle history  --model-name NAME [--json true]

Each move opens one MLflow run (step tag ``promote`` / ``rollback``) that logs the audit record, so the
registry history names the run that made the move; its name says what it did (``promote v3 -> production``,
``rollback v5 -> v4``). A refused move leaves a FAILED run named ``refused promote v3`` with the reason,
and changes nothing in the registry. ``status`` and ``history`` only read: they open no run (under
`mlflow run`, whose launcher opens one anyway, that run is named ``status <model>`` / ``history <model>``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

import mlflow
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from models import cli, tracking
from models.registry import (
    OUTSIDE,
    WITHDRAW,
    AliasMove,
    RegistryError,
    full_history,
    history,
    promote,
    rollback,
    status,
    unrecorded_warning,
)


def move_run_name(move: AliasMove) -> str:
    """What a move run did: ``promote v3 -> production``, ``force_promote v4 -> production``,
    ``rollback v5 -> v4``."""
    if move.action == "rollback":
        return f"rollback v{move.from_version} -> v{move.to_version}"
    if move.action == WITHDRAW:
        return f"withdraw v{move.from_version} from production"
    return f"{move.action} v{move.to_version} -> production"


def _move(kind: str, args: argparse.Namespace) -> int:
    version = args.version or None
    asked = f"{kind} v{version}" if version else kind
    with mlflow.start_run(run_name=asked) as run:
        mlflow.set_tags(
            {
                "step": kind,
                "model_name": args.model_name,
                "requested_version": version or "",
                "reason": args.reason[:500],
                "force": str(getattr(args, "force", False)).lower(),
            }
        )
        try:
            if kind == "promote":
                if version is None:  # --version is required, but may be given empty
                    raise RegistryError("promote needs a version number (--version N)")
                move = promote(
                    args.model_name, version, args.reason, force=args.force, run_id=run.info.run_id
                )
            else:
                move = rollback(args.model_name, version, args.reason, run_id=run.info.run_id)
        except RegistryError as exc:
            mlflow.set_tags(
                {"refused": tracking.redaction.redact(str(exc))[:500], MLFLOW_RUN_NAME: f"refused {asked}"}
            )
            mlflow.end_run(status="FAILED")
            raise
        mlflow.log_dict(asdict(move), "audit.json")
        mlflow.set_tags(
            {
                "from_version": move.from_version or "",
                "to_version": move.to_version,
                MLFLOW_RUN_NAME: move_run_name(move),
            }
        )
    print(
        f"{move.action}: {args.model_name} production v{move.from_version or '-'} -> v{move.to_version} "
        f"(move #{move.seq}, run {run.info.run_id})"
    )
    before = [m for m in history(args.model_name) if m.seq < move.seq]
    if kind == "rollback" and before and before[-1].action == OUTSIDE:
        print(
            f"  production had been moved outside this tool (v{before[-1].from_version or '-'} -> "
            f"v{before[-1].to_version or '-'}); rolled back to v{move.to_version}, the version it held "
            "before that"
        )
    return 0


def _print_history(moves: list[dict]) -> None:
    if not moves:
        print("no recorded moves of production")
    for m in moves:
        print(
            f"#{m['seq']:<3} {m['at']}  {m['action']:<13} v{m['from_version'] or '-'} -> "
            f"v{m['to_version'] or '-'}  by {m['by']}  run {m['run_id'] or '-'}  reason: {m['reason']}"
            + (
                f"  ({'not recorded yet: ' if not m.get('recorded', True) else ''}{m['note']})"
                if m.get("note")
                else ""
            )
        )


def _name_launcher_run(command: str, model_name: str) -> None:
    """Read-only commands open no run; `mlflow run` opens one before they start: say what it was."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        client = MlflowClient()
        client.set_tag(run_id, MLFLOW_RUN_NAME, f"{command} {model_name}")
        client.set_tag(run_id, "step", command)
        client.set_tag(run_id, "model_name", model_name)


def _status(args: argparse.Namespace) -> int:
    info = status(args.model_name)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    prod = info["production"]
    if prod is None and "withdrawn" in info:
        print(f"{args.model_name}: no production version: {info['withdrawn']['message']}")
    elif prod is None:
        print(f"{args.model_name}: no production version")
    else:
        print(
            f"{args.model_name}: production v{prod['version']}  gate {prod['gate']}  holdout macro-F1 "
            f"{prod['holdout_macro_f1']} (baseline {prod['baseline_macro_f1']}) features {prod['features']} "
            f"bars {prod['bar']}"
        )
        print(f"  since {prod['promoted_at']} by {prod['promoted_by']}: {prod['promotion_reason']}")
    if "warning" in info:
        print(f"warning: {info['warning']}")
    _print_history(info["history"] + [m | {"recorded": False} for m in info["unrecorded"]])
    return 0


def _history(args: argparse.Namespace) -> int:
    """Every move, the recorded ones and after them those nobody recorded yet (``"recorded": false``),
    with a warning line on stderr when there are any."""
    recorded, missing = full_history(args.model_name)
    moves = [asdict(m) | {"recorded": True} for m in recorded]
    moves += [asdict(m) | {"recorded": False} for m in missing]
    if missing:
        print(f"warning: {unrecorded_warning(missing)}", file=sys.stderr)
    if args.json:
        print(json.dumps(moves, indent=2))
    else:
        _print_history(moves)
    return 0


COMMANDS = {
    "promote": "point production at a version",
    "rollback": "move production back to the version that held it before",
    "status": "the production version, its numbers and the history",
    "history": "the ordered moves of production",
}


def build_parser() -> cli.Parser:
    """One sub-parser per command (each takes ``--config``; ``--version`` of the program is the top's)."""
    parser = cli.Parser("python -m models.lifecycle", __doc__.splitlines()[0], config=False)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        p = parser.add_subcommand(sub, name, help_text)
        p.add_argument("--model-name", default=cli.MODEL_NAME, help=cli.COMMON_HELP["model_name"])
        if name in ("promote", "rollback"):
            p.add_argument(
                "--version",
                default="",
                required=name == "promote",
                help="version number"
                + (" ('' = the previous production version)" if name == "rollback" else ""),
            )
            p.add_argument(
                "--reason", default="", help="why; recorded in the history (required with --force)"
            )
        if name == "promote":
            p.add_argument(
                "--force",
                type=cli.parse_bool,
                default=False,
                help="promote a version that failed its gate (needs --reason)",
            )
        if name in ("status", "history"):
            p.add_argument("--json", type=cli.parse_bool, default=False, help="print JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    return cli.main(build_parser(), argv, _main, (RegistryError, tracking.TrackingUnavailable))


def _main(args: argparse.Namespace) -> int:
    tracking.check_reachable()
    if args.command in ("promote", "rollback"):
        tracking.use_experiment()
        return _move(args.command, args)
    _name_launcher_run(args.command, args.model_name)
    return _status(args) if args.command == "status" else _history(args)


if __name__ == "__main__":
    cli.run(main)
