"""The text report: plain words (a legend for the paper's symbols), "would transform" for a
plan, and names cut only where they stay unique."""
from __future__ import annotations

from svgd_rewrite.report import WIDTH, MemoryReport, Report, SiteReport, SkippedNode, fit_names

OPTIONS = {"transform": "svgd", "scale": 0.1, "rho": 0.9, "epsilon": 1e-6, "granularity": "full"}
KERAS = ["sequential_with_a_long_name/bidirectional/forward_lstm/lstm_cell/kernel",
         "sequential_with_a_long_name/bidirectional/forward_lstm/lstm_cell/recurrent_kernel",
         "sequential_with_a_long_name/bidirectional/backward_lstm/lstm_cell/kernel",
         "sequential_with_a_long_name/bidirectional/backward_lstm/lstm_cell/recurrent_kernel"]


def _site(i: int, variable: str) -> SiteReport:
    node = variable + "/MatMul"
    return SiteReport(index=i, node=node, op="MatMul", variable=variable, param_input=1,
                      gradient_op=f"gradient_tape/{node}/MatMul_1", gradient_op_type="MatMul",
                      gradient_input=1, upstream_gradient="g:0", output_shape=[None, 8],
                      accumulator_shape=[8], granularity="full")


def _report() -> Report:
    return Report(sites=[_site(i, v) for i, v in enumerate(KERAS)],
                  skipped=[SkippedNode("Abs", "Abs", v, "Abs is not linear") for v in KERAS],
                  memory=MemoryReport(32, 128, 100, 80, 800, 400), options=OPTIONS)


def test_keras_names_are_never_cut_into_look_alikes():
    text = _report().text()
    rows = [line.split() for line in text.splitlines()
            if line.startswith("  ") and line.split()[0].isdigit() and "×" not in line]
    assert len(rows) == 4
    for column in (1, 3):  # forward op, variable
        shown = [r[column] for r in rows]
        assert len(set(shown)) == 4, shown
        assert all(s.endswith(("/kernel", "/recurrent_kernel", "/MatMul")) for s in shown)
    examples = next(line for line in text.splitlines() if "variables:" in line)
    shown = examples.split("variables:")[1].rstrip(", .").split(", ")
    assert len(set(shown)) == 3, examples


def test_fit_names_keeps_the_layer_path_end_and_stays_unique():
    assert len(set(fit_names(KERAS, 20))) == 4
    assert fit_names(["model/dense/kernel", "model/dense_1/kernel"], 16) == [
        "…/dense/kernel", "…/dense_1/kernel"]


def test_plain_words_legend_and_would_transform_for_a_plan():
    report = _report()
    done, planned = report.text(), report.text(planned=True)
    assert "4 site(s) transformed" in done and "would transform" not in done
    assert "would transform 4 site(s)" in planned and " transformed" not in planned
    assert "would keep plain gradients" in planned
    for text in (done, planned):
        assert "V_θ→σ" not in text
        header = next(line for line in text.splitlines() if line.lstrip().startswith("#"))
        assert "σ" not in header and "θ" not in header and "[in k]" in header
        assert "σ' in the paper" in text and "reading g as its input k" in text
    assert str(report) == done
    short = Report(sites=[_site(0, "d/kernel")], skipped=[], options=OPTIONS,
                   memory=MemoryReport(8, 32, 10, 8, 80, 40)).text(planned=True)
    assert all(len(line) <= WIDTH for line in short.splitlines() if line[:2] == "  "), short
