"""The README stays true: its command-line reference is the parser's help, its performance
tables are the ones ``benchmarks/tables.py`` renders from ``benchmarks/results``, and every
figure it shows exists."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block(name: str) -> str:
    match = re.search(rf"<!-- begin {name} -->\n(.*?)<!-- end {name} -->", README, re.S)
    assert match, f"README has no {name} block"
    return match.group(1)


@pytest.mark.parametrize("name,show", [("cli_help", False), ("cli_show_help", True)])
def test_cli_section_is_the_help_text(name, show, monkeypatch):
    from svgd_rewrite.cli.main import build_parser, build_show_parser

    monkeypatch.setenv("COLUMNS", "100")
    parser = build_show_parser() if show else build_parser()
    help_text = parser.format_help()
    assert " ".join(_block(name).split()) == " ".join(f"```text {help_text} ```".split())


def test_performance_tables_are_rendered_from_the_results():
    from benchmarks.tables import fill_readme, rendered

    tables = rendered()
    assert {"step_time", "recurrent_step_time", "rewrite_time", "convergence"} <= set(tables)
    assert fill_readme(README, tables) == README, "run python -m benchmarks.tables --readme README.md"


def test_every_picture_the_readme_shows_exists():
    for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (ROOT / path).is_file(), path
