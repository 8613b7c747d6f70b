"""The documentation holds together: a README a newcomer reads in minutes, every docs page reachable from
it, and no link in README.md or docs/*.md that leads nowhere (files, and #anchors by GitHub's rules)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
MAX_README_LINES = 300

LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _outside_fences(text: str) -> list[str]:
    """The lines of a markdown text, those inside fenced code blocks blanked (numbering kept)."""
    lines, fence = [], None
    for line in text.splitlines():
        stripped = line.lstrip()
        marker = re.match(r"(`{3,}|~{3,})", stripped)
        if marker and (fence is None or stripped.startswith(fence)):
            fence = None if fence else marker.group(1)
            lines.append("")
        else:
            lines.append("" if fence else line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: inline markup dropped, lower case, punctuation removed (letters,
    digits, ``_``, ``-`` and spaces kept), spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"(\*\*|__|\*)", "", text)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, duplicates numbered as GitHub does (-1, -2 ...)."""
    counts: dict[str, int] = {}
    found = set()
    for line in _outside_fences(path.read_text()):
        if match := HEADING.match(line):
            base = slug(match.group(2))
            n = counts.get(base, 0)
            found.add(base if n == 0 else f"{base}-{n}")
            counts[base] = n + 1
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every markdown link and image outside code (code shows examples)."""
    found = []
    for number, line in enumerate(_outside_fences(path.read_text()), 1):
        line = re.sub(r"(`+)(?:(?!\1).)+\1", "``", line)
        found += [(number, m.group(1)) for m in LINK.finditer(line)]
    return found


def broken_links(path: Path, root: Path = REPO) -> list[str]:
    """One line per relative link whose file, or whose #anchor in a markdown file, does not exist."""
    problems = []
    for line, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...: not checked
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{line}: {target}"
        if not dest.exists():
            problems.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and unquote(anchor).lower() not in anchors(dest):
            problems.append(f"{where}: no heading with that anchor in {dest.name}")
    return problems


def test_slug_follows_githubs_rules():
    assert slug("The gate's error rates (`python bench/gate_error_rates.py`)") == (
        "the-gates-error-rates-python-benchgate_error_ratespy"
    )
    assert slug("Tuning for the money: `objective`") == "tuning-for-the-money-objective"
    assert slug("Walk-forward: the whole system over history") == "walk-forward-the-whole-system-over-history"
    assert slug("1. Real BTC candles: the gate refuses") == "1-real-btc-candles-the-gate-refuses"


def test_the_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move depth to docs/"


def test_every_docs_page_is_linked_from_the_readme():
    assert PAGES, "docs/*.md"
    linked = {
        (README.parent / target.partition("#")[0]).resolve()
        for _, target in links(README)
        if target.partition("#")[0]
    }
    missing = [p.relative_to(REPO).as_posix() for p in PAGES if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link to: {missing}"


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_broken_relative_links(path: Path):
    assert not broken_links(path), "\n".join(broken_links(path))


def test_the_link_check_catches_a_broken_file_and_anchor(tmp_path: Path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## A `code` heading: yes\n\n## Twice\n\n## Twice\n")
    page.write_text(
        "# Page\n\n[ok](other.md#a-code-heading-yes) [ok](other.md#twice-1) [ok](#page)\n"
        "[bad](missing.md) [bad](other.md#nowhere) [bad](#nowhere)\n"
        "```\n[in code](ignored.md)\n```\n`[inline](ignored.md)` [web](https://example.com/x)\n"
    )
    problems = broken_links(page, root=tmp_path)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "missing.md: no such file",
        "other.md#nowhere: no heading with that anchor in other.md",
        "#nowhere: no heading with that anchor in page.md",
    ], problems


def test_ci_runs_the_readmes_test_command():
    readme = README.read_text()
    tests = [line for line in readme.splitlines() if "requirements-dev.txt" in line and "pytest" in line]
    assert tests, "README: the command that runs the tests"
    command = tests[0]
    assert command.strip() in (REPO / ".ci" / "run").read_text()


def _table_default(text: str) -> object:
    """A default as docs/pipeline.md's table writes it (`""`, `false`, `0.005`) in the parser's type."""
    if text == '""':
        return ""
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text)
    except ValueError:
        return text


def test_the_pipeline_pages_parameter_table_shows_the_real_defaults():
    """docs/pipeline.md's hand-written table (meanings at length) against the one source of defaults:
    every parameter it names, with the default the parser really uses, and none missing."""
    from train.config import pipeline_parser

    defaults = {
        a.dest: a.default for a in pipeline_parser()._actions if a.option_strings and a.dest != "help"
    }
    table = (REPO / "docs" / "pipeline.md").read_text().split("## Parameters", 1)[1].split("\n## ", 1)[0]
    seen = set()
    for row in re.findall(r"^\| (`[^|]+) \| (`[^|]+) \|", table, re.M):
        names = re.findall(r"`([^`]+)`", row[0])
        values = re.findall(r"`([^`]*)`", row[1])
        assert len(names) == len(values), f"docs/pipeline.md row {row}: one default per parameter"
        for name, value in zip(names, values, strict=True):
            expected = defaults[name]
            if isinstance(expected, bool) or isinstance(expected, str):
                assert _table_default(value if value else '""') == expected, (
                    f"{name}: {value} vs {expected!r}"
                )
            else:
                assert _table_default(value) == float(expected), f"{name}: docs {value}, parser {expected}"
            seen.add(name)
    missing = set(defaults) - seen - {"config", "version"}
    assert not missing, f"docs/pipeline.md's table lacks {sorted(missing)}"
