"""The registry is the one place of op knowledge: docs/algorithm.md's op table, the command line's
help and the documented defaults are checked against it (and against ``Options``)."""
import re
import sys
from pathlib import Path

import pytest

from svgd_rewrite.options import Options
from svgd_rewrite.registry import DEFAULT_OPS, OPT_IN_OPS, REGISTRY, GradOp, OpSpec

DOCS = Path(__file__).resolve().parents[1] / "docs"
ALGORITHM = (DOCS / "algorithm.md").read_text()  # the supported-ops table
LIBRARY = (DOCS / "library.md").read_text()  # rewrite()'s signature


def _op_table() -> list[str]:
    section = ALGORITHM.split("## Supported ops", 1)[1].split("\n\n", 2)[2]
    table = section.split("\n\n", 1)[0]
    rows = [r for r in table.splitlines() if r.startswith("| `")]
    return rows


def test_readme_op_table_is_the_registry():
    rows = _op_table()
    # "`BatchMatMulV2` / `V3`" abbreviates BatchMatMulV3
    named = {f"BatchMatMul{op}" if re.fullmatch(r"V\d", op) else op
             for r in rows for op in re.findall(r"`([A-Za-z0-9]+)`", r.split("|")[1])}
    assert named == set(REGISTRY)
    opt_in = {op for r in rows if "(opt-in)" in r.split("|")[1]
              for op in re.findall(r"`([A-Za-z0-9]+)`", r.split("|")[1])}
    assert opt_in == set(OPT_IN_OPS)
    assert f"`{'`, `'.join(OPT_IN_OPS)}` is opt-in" in ALGORITHM


def test_cli_help_names_the_registry_defaults_and_options():
    from svgd_rewrite.cli.main import build_parser

    text = " ".join(build_parser().format_help().split())
    for op in DEFAULT_OPS + OPT_IN_OPS:
        assert op in text
    assert f"opt-in: {', '.join(OPT_IN_OPS)}" in text
    for flag, value in (("scale", Options.scale), ("rho", Options.rho),
                        ("epsilon", Options.epsilon)):
        assert f"default {value:g}" in text, flag


@pytest.mark.parametrize("name", ["rewrite", "analyze_step", "rewrite_saved_model",
                                  "keras.enable", "keras.VirtualGradients"])
def test_every_public_parameter_is_documented(name):
    """Each parameter of the public entry points is named in its docstring (``help()``)."""
    import inspect

    import svgd_rewrite
    import svgd_rewrite.keras  # noqa: F401

    obj = svgd_rewrite
    for part in name.split("."):
        obj = getattr(obj, part)
    target = obj.__init__ if inspect.isclass(obj) else obj
    doc = inspect.getdoc(obj) or ""
    params = [p for p in inspect.signature(target).parameters if p not in ("self",)]
    params = [p for p in params if inspect.signature(target).parameters[p].kind
              != inspect.Parameter.VAR_KEYWORD]
    missing = [p for p in params if f"``{p}``" not in doc]
    assert not missing, f"{name}: {missing} not documented"


def test_cli_reads_the_defaults_without_importing_tensorflow():
    import subprocess

    code = ("import sys; from svgd_rewrite.cli.main import build_parser; build_parser(); "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_readme_library_signature_shows_the_defaults():
    o = Options()
    epsilon = f"{o.epsilon:.0e}".replace("e-0", "e-")  # 1e-6
    assert f"scale={o.scale:g}, rho={o.rho:g}, epsilon={epsilon}," in LIBRARY
    assert f'granularity="{o.granularity}", transform="{o.transform}"' in LIBRARY


def test_entries_are_built_with_keywords():
    with pytest.raises(TypeError):
        GradOp("MatMul", ((0, 1),))  # positional arguments are refused
    spec = REGISTRY["MatMul"]
    with pytest.raises(TypeError):
        OpSpec(spec.op, spec.param_slots, spec.grad_ops, spec.batch_axis, spec.channel_axis,
               spec.x_slot)
