"""One configuration, one source of defaults (issue 19).

For every MLproject entry point: each ``--flag {param}`` of its command is an option of that entry point's
parser, with the MLproject default as its default (type-coerced) and the same default in ``--help``; the
pipeline's parser defaults are :class:`train.config.PipelineConfig`'s. A ``--config FILE.toml`` gives the
same parameters as the same flags; a flag given with a value other than its default wins over the file,
the file over the default. Unknown keys and wrong types stop in one line naming the key and the file.
``--version`` on every entry point; ``docs/parameters.md`` is what the parsers say.
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from models import cli
from models.version import __version__
from train.config import PipelineConfig

REPO = Path(__file__).resolve().parents[1]
PROJECT = yaml.safe_load((REPO / "MLproject").read_text(encoding="utf-8"))
ENTRY_POINTS = sorted(PROJECT["entry_points"])
PARSERS = cli.entry_point_parsers(REPO)


def _flags(command: str) -> dict[str, str]:
    """``--flag {param}`` pairs of an MLproject command: param -> flag."""
    return {param: flag for flag, param in re.findall(r"(--[\w-]+) \{(\w+)\}", command)}


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    found = [a for a in parser.options if flag in a.option_strings]
    assert found, f"{parser.prog}: the MLproject passes {flag}, which the parser does not take"
    return found[0]


def _value(action: argparse.Action, text: str):
    """``text`` as the parser turns a command-line string into the option's value."""
    return action.type(text) if callable(action.type) else text


@pytest.fixture(autouse=True)
def _wide_help(monkeypatch):
    """--help on one line per option (argparse wraps at the terminal's width, and within words at '-')."""
    monkeypatch.setenv("COLUMNS", "1000")


def _help(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_help().split())  # wrapped lines joined


def _option_help(parser: argparse.ArgumentParser, flag: str) -> str:
    """The help ``--help`` prints for ``flag``, its wrapped lines joined."""
    lines = parser.format_help().split("\n")
    start = next(i for i, line in enumerate(lines) if re.match(rf"\s+{re.escape(flag)}\b(?!-)", line))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith(" " * 8) or line.lstrip().startswith("-"):
            break
        block.append(line)
    return " ".join(" ".join(block).split())


# ------------------------------------------------------------------------------- one source of defaults
def test_every_entry_point_has_a_parser_and_a_config_parameter():
    assert set(PARSERS) == set(ENTRY_POINTS)
    for name, entry in PROJECT["entry_points"].items():
        assert entry["parameters"]["config"] == {"type": "string", "default": ""}, name
        assert _flags(entry["command"])["config"] == "--config", name


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_mlproject_defaults_are_the_parser_defaults_and_help_shows_them(entry_point):
    entry, parser = PROJECT["entry_points"][entry_point], PARSERS[entry_point]
    for param, flag in _flags(entry["command"]).items():
        if param == "config":
            continue
        action = _option(parser, flag)
        assert action.dest == param, f"{entry_point}: {flag} sets {action.dest}, the parameter is {param}"
        spec = entry["parameters"][param]
        if "default" not in spec:  # required in the MLproject: required here too
            assert action in parser.required_later, (entry_point, param)
            continue
        mlproject = _value(action, str(spec["default"]))  # as `mlflow run` passes it: a string
        assert mlproject == cli.default_value(action), (entry_point, param, spec, action.default)
        assert _option_help(parser, flag).endswith(f"(default: {action.default!r})"), (entry_point, param)


def test_the_pipeline_parser_defaults_are_the_pipeline_config_defaults():
    parser = PARSERS["main"]
    for f in fields(PipelineConfig):
        (action,) = [a for a in parser.options if a.dest == f.name]
        assert action.default == f.default and type(action.default) is type(f.default), f.name
    assert {a.dest for a in parser.options} == {f.name for f in fields(PipelineConfig)} | {"log_level"}


# Parameters whose default is deliberately not the pipeline's: cheaper tuning per walk-forward window and
# per tune worker, every feature set and a fixed seed for the look-ahead check, an exchange series to fetch.
OWN_DEFAULTS = {
    ("walkforward", "n_trials"),
    ("walkforward", "timeout"),
    ("tune", "timeout"),
    ("lookahead", "features"),
    ("lookahead", "seed"),
    ("fetch", "data"),
}


@pytest.mark.parametrize("entry_point", [e for e in ENTRY_POINTS if e != "main"])
def test_a_parameter_shared_with_the_pipeline_has_the_pipelines_default(entry_point):
    """The label, data and cost options of the other commands default to the pipeline's values (written
    once in PipelineConfig, or checked against it here where a package below train/ defines its own)."""
    pipeline = {a.dest: cli.default_value(a) for a in PARSERS["main"].options}
    for action in PARSERS[entry_point].options:
        if action.dest in pipeline and (entry_point, action.dest) not in OWN_DEFAULTS:
            assert cli.default_value(action) == pipeline[action.dest], (entry_point, action.dest)


def test_cheaper_commands_say_their_own_defaults_in_help():
    """The walk-forward tunes 6 trials without a time limit, the tune command without a time limit: what
    --help says is what runs (it once printed the pipeline's 12 and 90)."""
    walkforward, tune = PARSERS["walkforward"], PARSERS["tune"]
    for parser, trials, timeout in ((walkforward, 6, 0.0), (tune, 12, 0.0), (PARSERS["main"], 12, 600.0)):
        args = parser.parse_args(["--model", "lightgbm"] if parser is tune else [])
        assert (args.n_trials, args.timeout) == (trials, timeout), parser.prog
        assert _option_help(parser, "--n-trials").endswith(f"(default: {trials})")
        assert _option_help(parser, "--timeout").endswith(f"(default: {timeout})")


# --------------------------------------------------------------------------------------- --config
def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "params.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


# Non-default settings per entry point, as flags; the same as a TOML file must parse the same.
FLAG_RUNS = {
    "main": {
        "data": "prices.csv",
        "n_trials": 2,
        "timeout": 0.0,
        "gate_confidence": 0.9,
        "dry_run": True,
        "models": "lightgbm",
        "label": "triple_barrier",
        "log_level": "WARNING",
    },
    "retrain": {
        "days": 365,
        "timeframe": "1h",
        "lock_timeout": 600.0,
        "min_new_candles": 100,
        "refresh": False,
    },
    "monitor": {"days": 60, "drift_share": 0.5, "on_degraded": "withdraw", "seed": 7},
    "walkforward": {"retrain_every": 14.0, "warm_start": False, "n_trials": 3},
    "lookahead": {"cuts": 10, "features": "default", "label": "triple_barrier", "primary": "momentum"},
}


@pytest.mark.parametrize("entry_point", sorted(FLAG_RUNS))
def test_a_toml_config_gives_the_parameters_of_the_same_flags(entry_point, tmp_path):
    parser, settings = PARSERS[entry_point], FLAG_RUNS[entry_point]
    flags = []
    for key, value in settings.items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        flags += [f"--{key.replace('_', '-')}", text]
    config = _write(tmp_path, "\n".join(f"{k} = {_toml_value(v)}" for k, v in settings.items()))
    from_flags, from_file = parser.parse_args(flags), parser.parse_args(["--config", config])
    assert from_file == from_flags
    assert from_file != parser.parse_args([])  # the settings are not the defaults
    assert not hasattr(from_file, "config")  # not a run parameter
    if entry_point == "main":
        from train.config import parse_args

        assert parse_args(["--config", config]) == parse_args(flags)


def test_flags_win_over_the_file_unless_given_with_their_default(tmp_path):
    """What `mlflow run -P config=...` needs: it passes every parameter, with its MLproject default."""
    parser = PARSERS["main"]
    config = _write(tmp_path, 'n_trials = 2\ngate_confidence = 0.9\nfeatures = "extended"\n')
    args = parser.parse_args(["--config", config, "--n-trials", "5", "--gate-confidence", "0.95"])
    assert args.n_trials == 5  # a flag with another value than its default wins
    assert args.gate_confidence == 0.9  # a flag with its default value does not
    assert args.features == "extended"  # not on the command line: the file's
    assert args.seed == 42  # in neither: the default
    assert "otherwise the file's value wins; otherwise the default" in _help(parser)

    # as `mlflow run . -P config=...` calls it: every flag of the command, each with its MLproject default
    entry = PROJECT["entry_points"]["main"]
    defaults = {p: s.get("default", "") for p, s in entry["parameters"].items()} | {"config": config}
    argv = entry["command"].format(**{k: f"'{v}'" for k, v in defaults.items()})
    argv = [w.strip("'") for w in argv.split()[3:]]
    args = parser.parse_args(argv)
    assert (args.n_trials, args.gate_confidence, args.features) == (2, 0.9, "extended")


def test_a_subcommand_reads_its_own_keys(tmp_path):
    parser = importlib.import_module("models.lifecycle").build_parser()
    config = _write(tmp_path, 'model_name = "other"\nversion = "3"\nreason = "checked by hand"\n')
    args = parser.parse_args(["promote", "--config", config])
    assert (args.command, args.model_name, args.version, args.reason, args.force) == (
        "promote",
        "other",
        "3",
        "checked by hand",
        False,
    )
    tune = PARSERS["tune"]  # a required option may come from the file
    assert tune.parse_args(["--config", _write(tmp_path, 'model = "xgboost"\n')]).model == "xgboost"


def _error(parser: argparse.ArgumentParser, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(argv)
    assert exc.value.code == 2  # like every other mistake in the options
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("n_trial = 2\n", "unknown key 'n_trial' (did you mean 'n_trials'?)"),
        ("zzz = 1\n", "unknown key 'zzz'; the keys are the parameters of python -m train.pipeline"),
        ('n_trials = "two"\n', "n_trials must be a whole number, got 'two'"),
        ("n_trials = 2.5\n", "n_trials: expected a whole number, got '2.5'"),
        ("gate_confidence = true\n", "gate_confidence must be a number, got True"),
        ('dry_run = "perhaps"\n', "dry_run: expected true or false, got 'perhaps'"),
        ("data = 5\n", "data must be a string (in quotes), got 5"),
        ('models = ["lightgbm"]\n', "models must be a string (in quotes), got ['lightgbm']"),
        ('log_level = "chatty"\n', "log_level: invalid choice 'chatty'"),
        ("n_trials = \n", "not valid TOML"),
    ],
)
def test_unknown_keys_and_wrong_types_stop_in_one_line_naming_key_and_file(text, expected, tmp_path, capsys):
    path = _write(tmp_path, text)
    line = _error(PARSERS["main"], ["--config", path], capsys)
    assert line.startswith(f"python -m train.pipeline: error: --config {path}: "), line
    assert expected in line, line


def test_a_missing_config_file_and_a_missing_required_option(tmp_path, capsys):
    line = _error(PARSERS["main"], ["--config", str(tmp_path / "nope.toml")], capsys)
    assert "nope.toml: cannot read it: No such file or directory" in line
    with pytest.raises(SystemExit) as exc:
        PARSERS["tune"].parse_args([])
    assert exc.value.code == 2
    assert "the following arguments are required: --model" in capsys.readouterr().err


def test_a_bad_value_in_the_file_fails_the_run_like_the_same_flag(tmp_path, capsys):
    """Values the parser accepts but the configuration refuses: exit 1 and one ``error:`` line, as a flag."""
    from train.pipeline import main

    assert main(["--config", _write(tmp_path, "n_folds = 2000\n"), "--data", "nope.csv"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: n_folds must be in [2, 20]; got n_folds=2000"], err


def test_the_deploy_examples_use_the_retrain_config():
    config = REPO / "docs" / "deploy" / "retrain.toml"
    settings = tomllib.loads(config.read_text(encoding="utf-8"))
    args = PARSERS["retrain"].parse_args(["--config", str(config)])
    for key, value in settings.items():
        assert getattr(args, key) == value, key
    for name in ("crypto-signals-retrain.service", "retrain.yml"):
        text = (REPO / "docs" / "deploy" / name).read_text(encoding="utf-8")
        assert "--config docs/deploy/retrain.toml" in text, name
        assert "--days" not in text and "--timeframe" not in text, name


# ---------------------------------------------------------------------------------------- --version
def test_the_version_is_defined_once():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["version"] == __version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    assert f"## [{__version__}]" in (REPO / "CHANGELOG.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_every_entry_point_prints_its_version(entry_point, capsys):
    module = PROJECT["entry_points"][entry_point]["command"].split()[2]
    with pytest.raises(SystemExit) as exc:
        importlib.import_module(module).main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"crypto-signals {__version__}"


@pytest.mark.slow
@pytest.mark.parametrize("module", ["train.pipeline", "models.lifecycle"])
def test_version_from_the_command_line(module):
    proc = subprocess.run(
        [sys.executable, "-m", module, "--version"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == f"crypto-signals {__version__}", proc.stderr


# ----------------------------------------------------------------------------------- the parameter page
def test_docs_parameters_md_is_current():
    page = (REPO / "docs" / "parameters.md").read_text(encoding="utf-8")
    assert page == cli.parameters_markdown(REPO), "regenerate: python -m models.cli > docs/parameters.md"
    for name in ENTRY_POINTS:
        assert f"## `{name}`:" in page
