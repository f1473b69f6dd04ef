"""The code's shape holds: the stages point one way (the import-linter contract), no function
is over 80 lines or above cyclomatic complexity 30, and the exporters read what changed from
the edit log, never from node-name conventions."""
import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "svgd_rewrite").rglob("*.py")) + sorted((ROOT / "cli").rglob("*.py"))


def test_import_layers_contract_is_kept():
    done = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command;"
                           " lint_imports_command()"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def test_no_function_over_80_lines():
    long = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    long.append(f"{path.relative_to(ROOT)}:{node.name} {length}")
    assert not long, long


def test_no_function_above_complexity_30():
    cc = pytest.importorskip("radon.complexity")
    complex_ = [f"{path.relative_to(ROOT)}:{block.name} {block.complexity}"
                for path in SOURCES for block in cc.cc_visit(path.read_text())
                if block.complexity > 30]
    assert not complex_, complex_


def test_exporters_read_no_name_convention():
    for path in sorted((ROOT / "svgd_rewrite" / "exporters").glob("*.py")):
        text = path.read_text()
        assert "SCOPE" not in text and "g_hat_" not in text.replace("g_hat_*", ""), path.name
