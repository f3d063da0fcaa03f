"""The README and docs/ promise only what exists: every relative link and image points at
a file, every `make` target is in the Makefile, every `hybrid` flag is in the parser,
every `python experiments/...` script and `python -m` module exists (issue 18)."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 250

_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)
_INLINE = re.compile(r"`([^`\n]+)`")


def _code(text: str) -> list[str]:
    """Lines of fenced code blocks and inline code spans."""
    blocks = [line for block in _FENCE.findall(text) for line in block.splitlines()]
    return blocks + _INLINE.findall(_FENCE.sub("", text))


def _ids(paths):
    return [str(p.relative_to(REPO)) for p in paths]


def test_readme_is_a_front_page():
    n = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move " \
                                  "detail into docs/"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_relative_links_point_at_files(page):
    missing = []
    for target in _LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"(https?:|mailto:|#)", target):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert not missing, f"{page.name} links to missing files: {missing}"


def _make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, re.M))
    for phony in re.findall(r"^\.PHONY:(.*)$", text, re.M):
        targets |= set(phony.split())
    return targets


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_make_targets_exist(page):
    targets = _make_targets()
    named = set()
    for line in _code(page.read_text(encoding="utf-8")):
        for m in re.finditer(r"(?:^|[\s;&(])make((?:\s+[a-z][\w-]*)+)", line):
            named |= {w for w in m.group(1).split() if "=" not in w}
    unknown = sorted(named - targets)
    assert not unknown, f"{page.name} names make targets the Makefile lacks: {unknown}"


def _parsers() -> dict[str, set[str]]:
    from hybrid.cli import build_parser

    top = build_parser()
    flags = {"": {o for a in top._actions for o in a.option_strings}}
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                flags[name] = {o for a in sub._actions for o in a.option_strings}
    return flags


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_command_line_flags_exist(page):
    flags = _parsers()
    bad = []
    for line in _code(page.read_text(encoding="utf-8")):
        m = re.match(r"\s*(?:\$\s*)?(?:\.venv/bin/)?hybrid((?:\s+-[-\w]+)*)\s+([a-z]+)?(.*)", line)
        if not m:
            continue
        top_flags, sub, rest = m.group(1).split(), m.group(2), m.group(3)
        if sub is not None and sub not in flags:
            bad.append(f"hybrid {sub} (no such subcommand)")
            continue
        for flag in top_flags:
            if flag not in flags[""]:
                bad.append(f"hybrid {flag}")
        rest = rest.split("#")[0]
        for flag in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", rest):
            if flag not in flags.get(sub or "", set()) | flags[""]:
                bad.append(f"hybrid {sub} {flag}")
    assert not bad, f"{page.name} names command-line options that do not exist: {bad}"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_scripts_and_modules_exist(page):
    bad = []
    for line in _code(page.read_text(encoding="utf-8")):
        for script in re.findall(r"python3?\s+((?:experiments|tests)/[\w/.-]+\.py)", line):
            if not (REPO / script).is_file():
                bad.append(script)
        for module in re.findall(r"python3?\s+-m\s+([\w.]+)", line):
            if module.split(".")[0] == "hybrid" and importlib.util.find_spec(module) is None:
                bad.append(f"-m {module}")
    assert not bad, f"{page.name} names scripts or modules that do not exist: {bad}"
