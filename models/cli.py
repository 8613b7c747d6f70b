"""The command-line helper every entry point uses, so that each ``main`` is its own work only.

* :class:`Parser`: an ``argparse.ArgumentParser`` with ``--version``, ``--config FILE.toml`` (keys are the
  MLproject parameter names; the precedence rule is :data:`PRECEDENCE`), each option's real default in
  ``--help``, and options that are required unless the config file gives them.
* :func:`add_options`: one ``--kebab-case`` option per field of a dataclass of defaults (the one place a
  default is written), typed by the field's annotation.
* :func:`main`: what an entry point's ``main(argv)`` does around its work: credentials masked in all
  output (:func:`models.redaction.install`), the options parsed, the console set up
  (:func:`configure_logging`), every MLflow run it starts tagged with the version, and a known error
  turned into one ``error: ...`` line on stderr and exit code 1 (bad options: argparse's exit 2).
* :func:`run`: the ``if __name__ == "__main__"`` block: SIGTERM unwinds like Ctrl-C (open MLflow runs
  end FAILED, the Optuna trial in flight is failed, locks are released), exit code 130.

Standard library only (and ``models.redaction``, ``models.version``): ``features.exchange`` uses it
without importing MLflow. ``python -m models.cli`` prints ``docs/parameters.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import math
import os
import re
import signal
import sys
import tomllib
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from models.redaction import install, redact
from models.version import __version__

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

PRECEDENCE = (
    "read parameters from a TOML file whose keys are the MLproject parameter names (n_trials = 2, "
    "gate_confidence = 0.9). A flag given with a value other than its default wins over the file; "
    "otherwise the file's value wins; otherwise the default. (`mlflow run -P config=FILE.toml` passes every "
    "other parameter with its default, so the file's values apply.)"
)


# ------------------------------------------------------------------------------------------ converters
def parse_bool(text: str) -> bool:
    """argparse ``type`` for true/false flags: true/1/yes/y and false/0/no/n/"" (any case)."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "y"):
        return True
    if value in ("false", "0", "no", "n", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_int(text: str) -> int:
    """argparse ``type`` for whole numbers: "6", and "6.0" as `mlflow run` may pass it; not "6.5"."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def parse_level(text: str) -> str:
    """argparse ``type`` of ``--log-level``: any case."""
    return text.upper()


# What a dataclass field's annotation asks of its option, and of a config file's value.
CONVERTERS: dict[str, Callable[[str], Any]] = {
    "int": parse_int,
    "float": float,
    "bool": parse_bool,
    "str": str,
}
_KIND_OF: dict[Any, str] = {
    parse_int: "int",
    float: "float",
    parse_bool: "bool",
    None: "str",
    str: "str",
    parse_level: "str",
}
_TOML_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int, float),  # 6.0 is 6; the converter refuses 6.5
    "float": (int, float),
    "bool": (bool, str),  # true, or "true" as the MLproject writes it
    "str": (str,),
    "any": (str, int, float),  # an option with its own converter ("auto" or a number ...) checks the value
    "flag": (bool,),
}
_KIND_TEXT = {
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "str": "a string (in quotes)",
    "any": "a string or a number",
    "flag": "true or false",
}


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line, without the SQL statement, bound parameters, link and autoflush
    note that SQLAlchemy appends (a failed INSERT of a run prints dozens of lines otherwise)."""
    text = str(exc)
    for marker in ("\n[SQL: ", "\n[parameters: "):
        text = text.split(marker, 1)[0]
    text = re.sub(r"\(Background on this error at: [^)]*\)", "", text)
    text = re.sub(r"\(raised as a result of Query-invoked autoflush;[^)]*\)", "", text)
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


# --------------------------------------------------------------------------------------------- parser
class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with ``--version``, ``--config FILE.toml`` (:data:`PRECEDENCE`), every
    option's default shown in ``--help`` (read when help is printed, so a later ``set_defaults`` shows),
    and ``required=True`` options that the config file may give instead of the command line.

    ``options`` lists the options added (``--help``, ``--version`` and ``--config`` aside),
    ``required_later`` the required ones, and ``subcommands`` the sub-parsers by name."""

    def __init__(
        self,
        prog: str,
        description: str = "",
        *,
        version: bool = True,
        config: bool = True,
        epilog: str | None = None,
        **kwargs: Any,
    ):
        self.options: list[argparse.Action] = []
        self.subcommands: dict[str, Parser] = {}
        self.required_later: list[argparse.Action] = []
        self._reads_config = False
        super().__init__(prog=prog, description=description, epilog=epilog, **kwargs)
        if version:
            self.add_argument("--version", action="version", version=f"crypto-signals {__version__}")
        if config:
            help_text = f"{PRECEDENCE} (default: none)"
            self.add_argument("--config", metavar="FILE.toml", default="", help=help_text)
            self._reads_config = True
        self.options.clear()  # --help, --version and --config are no parameters

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        required = bool(kwargs.get("required")) and self._reads_config
        if required:
            kwargs["required"], kwargs["default"] = False, None  # checked after the config file is read
        help_text = kwargs.get("help")
        shown = kwargs.get("default") is not None and kwargs.get("action") not in ("help", "version")
        if help_text and shown and "(default: " not in help_text:
            kwargs["help"] = f"{help_text} (default: %(default)r)"
        action = super().add_argument(*args, **kwargs)
        self.options.append(action)
        if required:
            self.required_later.append(action)
        return action

    def add_subcommand(self, subparsers: Any, name: str, help: str, **kwargs: Any) -> Parser:
        """``subparsers.add_parser(name, ...)`` (``subparsers`` from ``add_subparsers``), remembered."""
        parser = subparsers.add_parser(
            name, help=help, description=help, prog=f"{self.prog} {name}", version=False, **kwargs
        )
        self.subcommands[name] = parser
        return parser

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, extras = super().parse_known_args(args, namespace)
        if self._reads_config:
            path = vars(ns).pop("config", "")  # not a parameter of the run: what it gave is in the namespace
            if path:
                self._apply_config(ns, path)
            missing = [a for a in self.required_later if getattr(ns, a.dest, None) is None]
            if missing:
                self.error("the following arguments are required: " + ", ".join(_flag(a) for a in missing))
        return ns, extras

    # ----------------------------------------------------------------------------------- the config
    def _apply_config(self, ns: argparse.Namespace, path: str) -> None:
        for key, value in self._read_config(path).items():
            action = next((a for a in self.options if a.dest == key), None)
            if action is None:
                self._config_error(path, f"unknown key {key!r}{self._suggestion(key)}")
            assert action is not None
            converted = self._config_value(path, action, value)
            if getattr(ns, key) == default_value(action):  # not given, or given as the default
                setattr(ns, key, converted)

    def _read_config(self, path: str) -> dict[str, Any]:
        try:
            with open(path, "rb") as f:
                return tomllib.load(f)
        except OSError as exc:
            self._config_error(path, f"cannot read it: {exc.strerror or exc}")
        except tomllib.TOMLDecodeError as exc:
            self._config_error(path, f"not valid TOML: {exc}")
        raise AssertionError("unreachable")

    def _config_value(self, path: str, action: argparse.Action, value: Any) -> Any:
        kind = _kind(action)
        wrong_bool = isinstance(value, bool) and kind not in ("bool", "flag")
        if wrong_bool or not isinstance(value, _TOML_TYPES[kind]):
            self._config_error(path, f"{action.dest} must be {_KIND_TEXT[kind]}, got {value!r}")
        if kind == "flag":
            return value
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        try:
            converted = action.type(text) if callable(action.type) else text
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            self._config_error(path, f"{action.dest}: {exc}")
        if action.choices is not None and converted not in action.choices:
            choices = ", ".join(repr(c) for c in action.choices)
            self._config_error(path, f"{action.dest}: invalid choice {value!r} (choose from {choices})")
        return converted

    def _suggestion(self, key: str) -> str:
        close = difflib.get_close_matches(key, [a.dest for a in self.options], n=1)
        return f" (did you mean {close[0]!r}?)" if close else f"; the keys are the parameters of {self.prog}"

    def _config_error(self, path: str, message: str) -> NoReturn:
        """One line, and exit 2 like every other error in the options."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: --config {path}: {message}\n")


def _flag(action: argparse.Action) -> str:
    return max(action.option_strings, key=len) if action.option_strings else action.dest


def _kind(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "flag"  # store_true and the like
    return _KIND_OF.get(action.type, "any")


def default_value(action: argparse.Action) -> Any:
    """The value an option has when not given: argparse converts a string default with the option's type."""
    if isinstance(action.default, str) and callable(action.type):
        return action.type(action.default)
    return action.default


def add_options(
    parser: argparse.ArgumentParser,
    defaults: Any,
    help: Mapping[str, str],
    *,
    choices: Mapping[str, Sequence[Any]] | None = None,
    types: Mapping[str, Callable[[str], Any]] | None = None,
    only: Iterable[str] | None = None,
) -> None:
    """One ``--kebab-case`` option per field of the dataclass ``defaults`` (a class, or an instance whose
    values are this command's defaults), of the field's type (``int``, ``float``, ``bool``, ``str``; or
    ``types[name]``), with ``help[name]`` and ``choices[name]``; only the fields in ``only`` if given."""
    names = None if only is None else set(only)
    for f in dataclasses.fields(defaults):
        if names is not None and f.name not in names:
            continue
        default = getattr(defaults, f.name) if not isinstance(defaults, type) else f.default
        converter = (types or {}).get(f.name) or CONVERTERS[str(f.type)]
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            type=converter,
            default=default,
            choices=(choices or {}).get(f.name),
            help=help[f.name],
        )


def add_log_level(parser: argparse.ArgumentParser, default: str = "INFO") -> None:
    """``--log-level``: how much the command says (not a run parameter)."""
    parser.add_argument(
        "--log-level",
        dest="log_level",
        type=parse_level,
        choices=LOG_LEVELS,
        default=default,
        help="INFO: progress and results; DEBUG: also detail; WARNING: only warnings and errors",
    )


# The registered model every command defaults to (the pipeline registers it, the others read it).
MODEL_NAME = "crypto-signal-ensemble"


@dataclasses.dataclass(frozen=True)
class ModelCandles:
    """The options of the commands that run a registered model on candles (evaluate, monitor, predict)."""

    model_uri: str = f"models:/{MODEL_NAME}@production"
    data: str = "builtin"
    timeframe: str = ""
    days: int = 0


# Help of the options several entry points share (the candles and the model they read).
COMMON_HELP = {
    "model_uri": "the model: models:/<name>/<version>, models:/<name>@<alias>, runs:/... or a path",
    "data": "candles: 'builtin', 'demo', a CSV/Parquet file, exchange:<ex>:<symbol>:<tf> or runs:/...",
    "timeframe": "resample to this bar size, e.g. 1h ('' = the model's bars, or the native ones)",
    "days": "keep only the last N days (0 = all)",
    "seed": "random seed (bootstrap resamples, baselines)",
    "fee_bps": "backtest: fee per unit of notional traded, in basis points",
    "slippage_bps": "backtest: slippage per unit of notional traded, in basis points",
    "model_name": "registered model name",
}


# -------------------------------------------------------------------------------------------- console
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Loggers of this project (``logging.getLogger(__name__)`` in each module): they get the chosen level.
# "__main__" is the entry point module itself under `python -m train.tune` and the like.
PROJECT_LOGGERS = ("train", "features", "models", "evaluation", "__main__")


class _ConsoleHandler(logging.Handler):
    """Progress and results (INFO, DEBUG) on stdout, where the plan and the summary always were;
    warnings and errors on stderr. The streams are looked up at each line (a test may swap them)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


class _ConsoleFormat(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno < logging.WARNING:
            return text
        ours = record.name.split(".")[0] in PROJECT_LOGGERS
        return (
            f"{record.levelname.lower()}: {text}"
            if ours
            else f"{record.levelname.lower()} {record.name}: {text}"
        )


def _console_configured() -> bool:
    return any(isinstance(h, _ConsoleHandler) for h in logging.getLogger().handlers)


def configure_logging(level: str = "INFO") -> None:
    """Set up the console once per entry point (``main``): our loggers at ``level``, every library
    at WARNING (MLflow's INFO lines, e.g. "Creating initial MLflow database tables", only at DEBUG),
    and the library warnings a user cannot act on silenced (``quiet_library_noise``). Credentials are
    masked in every log record and in stdout and stderr (``models.redaction.install``; the entry points
    call it first, a spawned worker process here)."""
    install()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ConsoleHandler)]:
        root.removeHandler(handler)  # a second main() in one process (tests) replaces, never doubles
    handler = _ConsoleHandler()
    handler.setFormatter(_ConsoleFormat("%(message)s"))
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level)
    # MLflow logs through its own handler (it does not propagate): INFO from it only when asked for DEBUG.
    logging.getLogger("mlflow").setLevel(logging.INFO if level == "DEBUG" else logging.WARNING)
    quiet_library_noise()


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_library_noise() -> None:
    """Silence, narrowly (by message, category and module), library warnings that are benign here and
    that a user cannot act on. Any other warning still shows."""
    # MLflow infers a schema for every logged dataset and for the model's output: our `label` columns
    # are integers by design (class codes, -1 for rows without history) and never missing, which is
    # all the hint warns about.
    warnings.filterwarnings(
        "ignore",
        message="Hint: Inferred schema contains integer column",
        category=UserWarning,
        module="mlflow",
    )
    # MLflow warns that a python_model object is pickled (CloudPickle) rather than logged as code: that
    # is how the served model is built on purpose, and only our own runs' models are ever loaded.
    pyfunc = logging.getLogger("mlflow.pyfunc")
    if not any(isinstance(f, _DropMessage) for f in pyfunc.filters):
        pyfunc.addFilter(_DropMessage("Passing a Python object as `python_model`"))


# ----------------------------------------------------------------------------------------- main, run
def _is_mlflow_error(exc: BaseException) -> bool:
    exceptions = sys.modules.get("mlflow.exceptions")  # loaded whenever MLflow can have raised
    return exceptions is not None and isinstance(exc, exceptions.MlflowException)


def error_text(exc: BaseException) -> str:
    """What follows ``error: ``: one line, credentials masked; for an MLflow error, the store's URI and
    what to check when its database refused (:func:`models.tracking.error_message`)."""
    if _is_mlflow_error(exc):
        from models.tracking import error_message

        return error_message(exc)
    return redact(one_line(exc))


def fail(exc: BaseException) -> int:
    """Say ``error: <what>`` in one line on stderr; the exit code of a failed command."""
    print(f"error: {error_text(exc)}", file=sys.stderr)
    return EXIT_FAILED


def main(
    parser: argparse.ArgumentParser,
    argv: Iterable[str] | None,
    body: Callable[[argparse.Namespace], int],
    errors: tuple[type[BaseException], ...] = (ValueError, TypeError),
    *,
    runs: bool = True,
    quiet: str = "WARNING",
) -> int:
    """An entry point's ``main(argv)``: mask credentials, parse ``argv`` (bad options or config: argparse's
    exit 2), set up the console (``--log-level``, else ``-v``/``--verbose`` for INFO, else ``quiet``
    unless another command in this process set it up, e.g. the retrain running the monitor), tag
    the MLflow runs this process starts with the version (``runs``; else only `mlflow run`'s own), then
    ``body(args)``: its exit code, or 1 with one ``error: ...`` line for an error of ``errors`` or from
    MLflow. Anything else is a bug and shows its traceback."""
    install()  # credentials masked in every line printed or logged from here on (models.redaction)
    args = parser.parse_args(None if argv is None else list(argv))
    level = getattr(args, "log_level", None) or ("INFO" if getattr(args, "verbose", False) else None)
    if level or not _console_configured():  # a command run by another in-process keeps its console
        configure_logging(level or quiet)
    if runs or os.environ.get("MLFLOW_RUN_ID"):
        from models.tracking import record_version

        record_version()
    try:
        return body(args)
    except errors as exc:
        return fail(exc)
    except Exception as exc:
        if _is_mlflow_error(exc):  # one line naming the store, not the SQL statement it refused
            return fail(exc)
        raise


def terminate_as_interrupt(signum: int, frame: object) -> None:
    """SIGTERM (a scheduler stopping the job) unwinds like Ctrl-C: open MLflow runs are ended (FAILED)
    and the Optuna trial in flight is marked FAILED, instead of both being left RUNNING."""
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def run(entry: Callable[[], int]) -> NoReturn:
    """The ``if __name__ == "__main__":`` block of every entry point: SIGTERM as Ctrl-C, and either
    interrupts the command with one line on stderr and exit code 130."""
    signal.signal(signal.SIGTERM, terminate_as_interrupt)
    try:
        code = entry()
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc or 'Ctrl-C'}", file=sys.stderr)
        code = EXIT_INTERRUPTED
    sys.exit(code)


# -------------------------------------------------------------------------------- parameter tables
def entry_point_parsers(project: Path) -> dict[str, Parser]:
    """Each MLproject entry point's parser, by entry point name: the module its command runs (``python -m
    <module> [<subcommand>]``), its ``build_parser()``, and the sub-parser of the subcommand if any."""
    import importlib

    import yaml

    spec = yaml.safe_load((project / "MLproject").read_text(encoding="utf-8"))
    parsers = {}
    for name, entry in spec["entry_points"].items():
        words = entry["command"].split()
        module = words[words.index("-m") + 1]
        parser = importlib.import_module(module).build_parser()
        subcommand = words[words.index("-m") + 2]
        parsers[name] = parser.subcommands.get(subcommand, parser)
    return parsers


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def parameters_markdown(project: Path) -> str:
    """``docs/parameters.md``: a table per MLproject entry point (name, flag, default, meaning), read
    from the parsers, so the page shows what ``--help`` shows."""
    lines = [
        "# Parameters of every entry point",
        "",
        "Generated from the parsers by `python -m models.cli > docs/parameters.md` (a test checks it is "
        "current). Each parameter is an MLproject parameter (`mlflow run . -e <entry point> -P name=value`) "
        "and a flag of `python -m <module>` (`--name-with-dashes value`).",
        "",
        "Every entry point also takes `--version` (prints the version) and `--config FILE.toml`: "
        + PRECEDENCE.replace("read parameters", "reads parameters", 1),
        "",
        "```toml",
        "# retrain.toml",
        'data = "exchange:bitbank:BTC/JPY:15m"',
        "days = 365",
        "n_trials = 12",
        "gate_confidence = 0.95",
        "```",
        "",
    ]
    for name, parser in entry_point_parsers(project).items():
        lines += [f"## `{name}`: `{parser.prog}`", "", _cell(parser.description or ""), ""]
        lines += ["| name | flag | default | meaning |", "| --- | --- | --- | --- |"]
        for action in parser.options:
            default = "(required)" if action.default is None else f"`{action.default!r}`"
            meaning = (action.help or "").replace(" (default: %(default)r)", "").replace("%%", "%")
            if action.choices is not None:
                meaning += " (one of " + ", ".join(f"`{c}`" for c in action.choices) + ")"
            lines.append(f"| `{action.dest}` | `{_flag(action)}` | {_cell(default)} | {_cell(meaning)} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(parameters_markdown(Path(__file__).resolve().parents[1]), end="")
