"""The project's set-up files agree with each other and with what is installed."""

import re
from importlib.metadata import version
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_conda_env_pins_the_same_packages_as_requirements_txt_and_they_are_installed():
    requirements = _pins((REPO / "requirements.txt").read_text().splitlines())
    project = yaml.safe_load((REPO / "MLproject").read_text())
    conda = yaml.safe_load((REPO / project["conda_env"]).read_text())
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert _pins(pip_section) == requirements
    assert "ccxt" in requirements and "mlflow" in requirements
    for name, pinned in requirements.items():
        assert version(name) == pinned, f"{name}: installed {version(name)}, pinned {pinned}"


def test_every_entry_point_command_uses_each_of_its_parameters():
    project = yaml.safe_load((REPO / "MLproject").read_text())
    assert {"main", "fetch", "tune", "evaluate", "predict", "lookahead"} <= set(project["entry_points"])
    for name, entry in project["entry_points"].items():
        for param in entry.get("parameters", {}):
            assert f"{{{param}}}" in entry["command"], f"entry point {name}: parameter {param} is unused"
