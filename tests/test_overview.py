"""The overview keeps a model's structure: residual blocks folded ×N with their skips (the
stride-2 and 1×1 shortcut convolutions unfolded), a recurrent layer as one loop box, a loss box
that counts every other use of θ, and no Graphviz warning."""
from __future__ import annotations

import re
import subprocess

import pytest
import tensorflow as tf

import svgd_rewrite
from fixtures import keras_models
from svgd_rewrite.exporters.overview import _more, overview_units, structure
from svgd_rewrite.exporters.roles import source_of
from svgd_rewrite.ir import GraphIR


def _overview(step, tmp_path) -> tuple[str, dict[str, str], list[tuple[str, str, str]]]:
    """Export the overview; its DOT text, nodes (name → label) and edges (a, b, attributes).
    Graphviz must print nothing on it."""
    result = svgd_rewrite.export(step, str(tmp_path), formats=["dot", "svg"])
    assert not [n for n in result.notes if n.startswith("Graphviz:")], result.notes
    path = tmp_path / "graphs" / "dot" / "overview.dot"
    proc = subprocess.run(["dot", "-Tsvg", str(path), "-o", "/dev/null"], capture_output=True,
                          text=True, timeout=120, check=True)
    assert proc.stderr == "", proc.stderr
    text = path.read_text().replace("&#160;", "")
    nodes = dict(re.findall(r'^  (\w+) \[label=(<<.*?>>|"(?:[^"\\]|\\.)*")', text, re.M))
    edges = re.findall(r'^  (\w+) -> (\w+)(?: \[(.*)\])?;', text, re.M)
    return text, nodes, edges


def _units(step):
    source = source_of(step)
    ir = GraphIR(source.original)
    st = structure(source, ir)
    return overview_units(source, ir, st), st


def test_more_counts_what_it_leaves_out():
    assert _more(["a", "b", "c", "d", "e"], 3) == ["a", "b", "c", "+2 more"]
    assert _more(["a", "b"], 3) == ["a", "b"]


def test_lstm_is_one_loop_box_with_its_kernels_and_the_head_below(tmp_path):
    """Embedding → LSTM → Dense: one box "loop ×T" holds both LSTM kernels (and the embedding
    that feeds it), the Dense head is the next row, joined by a solid edge from the loop box;
    no dashed skip. The loss box counts all 4 L1 terms (3 named, "+1 more")."""
    model = keras_models.lstm_classifier()
    step = svgd_rewrite.rewrite(keras_models.train_step(model, x_dtype=tf.int32), scale=0.01)
    text, nodes, edges = _overview(step, tmp_path)
    loops = [n for n, label in nodes.items() if "loop ×T" in label]
    assert len(loops) == 1, nodes
    loop = nodes[loops[0]]
    for name in ("lstm_cell/kernel", "recurrent_kernel"):
        assert name in loop
    assert loop.count("F: MatMul") == 2 and loop.count("T: r 64") == 2
    assert "embedding/embeddings (GatherV2)" in loop
    (head,) = [n for n, label in nodes.items() if "dense/kernel" in label]
    assert head != loops[0] and (loops[0], head, "") in edges
    assert not [e for e in edges if "dashed" in e[2] or "skip" in e[2]]
    assert [e for e in edges if e[2] != "style=invis"] == [(loops[0], head, ""),
                                                          (head, "loss", "")]
    l1 = [k for k in step.report.skipped if k.op == "Abs"]
    assert len(l1) == 4
    loss = nodes["loss"]
    assert f"+ {len(l1)} other use(s) of θ" in loss and "+1 more" in loss
    assert sum(f"{'/'.join(k.variable.split('/')[-2:])} (Abs)" in loss for k in l1) == 3
    units, _ = _units(step)
    assert [(u.kind, len(u.sites)) for u in units] == [("loop", 2), ("site", 1)]


@pytest.mark.slow
def test_resnet56_folds_residual_blocks_per_stage_and_keeps_shortcuts(tmp_path):
    """ResNet-56 (58 sites): per stage one residual block of two convolutions ×9, ×8, ×8, each
    with its AddV2 merge and a dashed skip; the stride-2 and 1×1 shortcut convolutions of the
    projection blocks stay rows of their own, with their r shapes; no Graphviz warning."""
    step = svgd_rewrite.rewrite(keras_models.train_step(keras_models.resnet(56)), scale=0.01)
    units, st = _units(step)
    blocks = [u for u in units if u.kind == "block"]
    assert [(u.count, u.period, u.skip, u.join) for u in blocks] == [
        (9, 2, True, "AddV2"), (8, 2, True, "AddV2"), (8, 2, True, "AddV2")]
    assert all(s.op == "Conv2D" for u in blocks for s in u.sites)
    assert [s.accumulator_shape for u in blocks for s in u.sites[:2]] == [
        [32, 32, 16]] * 2 + [[16, 16, 32]] * 2 + [[8, 8, 64]] * 2
    single = {s.index: u for u in units if u.kind == "site" for s in u.sites}
    strided = [i for i, d in st.detail.items() if "stride 2" in d]
    shortcuts = [i for i, d in st.detail.items() if d.startswith("θ 1x1")]
    assert len(strided) == 4 and len(shortcuts) == 2 and set(shortcuts) <= set(strided)
    assert set(strided) <= set(single)  # never folded into a repeat
    assert sum(u.kind == "site" for u in units) == 8  # stem, 2 × (stride-2, conv, 1×1), head
    text, nodes, edges = _overview(step, tmp_path)
    for u, unit in enumerate(units):
        if unit.kind == "block":
            assert f"×{unit.count} residual block" in nodes[f"unit_{u}"]
            assert (f"unit_{u}", f"join_{u}", "") in edges
            skips = [e for e in edges if e[1] == f"join_{u}" and 'label="skip"' in e[2]]
            assert len(skips) == 1 and "dashed" in skips[0][2]
    for i in strided:
        label = nodes[f"unit_{units.index(single[i])}"]
        assert "stride 2" in label and "T: r 16x16x32" in label or "T: r 8x8x64" in label
    assert text.count('label="skip"') == 3
    assert "+ 58 other use(s) of θ" in nodes["loss"] and "+55 more" in nodes["loss"]


@pytest.mark.slow
def test_mobilenet_v2_and_bert_overviews_keep_their_blocks_without_graphviz_warnings(tmp_path):
    """MobileNetV2 (weights=None, 32×32, 10 classes): its inverted residual blocks (expand 1×1,
    depthwise, project 1×1) are segments; repeated ones fold ×N with a skip. A small keras_hub
    BERT (2 layers): each layer's attention and feed-forward are skipped segments (4 skips)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10)
    step = svgd_rewrite.rewrite(keras_models.train_step(model, l1=0), scale=0.01)
    units, _ = _units(step)
    assert sorted(s.index for u in units for s in u.sites) == list(range(53))
    blocks = [u for u in units if u.kind == "block"]
    assert blocks and all(u.period == 3 and u.skip and u.count >= 2 for u in blocks)
    assert all([s.op for s in u.sites[:3]] == ["Conv2D", "DepthwiseConv2dNative", "Conv2D"]
               for u in blocks)
    text, nodes, _ = _overview(step, tmp_path / "mobilenet")
    skipped = {u.segment for u in units if u.skip}
    assert text.count('label="skip"') == len(skipped) >= len(blocks) + 1
    pytest.importorskip("keras_hub")
    step = svgd_rewrite.rewrite(keras_models.bert_train_step(length=16, vocabulary=100),
                                scale=0.01)
    units, _ = _units(step)
    assert len(step.report.sites) == 14 and not [u for u in units if u.kind == "block"]
    text, nodes, edges = _overview(step, tmp_path / "bert")
    skips = [e for e in edges if 'label="skip"' in e[2]]
    assert len(skips) == 4 and {e[1] for e in skips} <= {n for n in nodes if n.startswith("join")}
    head = [n for n, label in nodes.items() if "head/kernel" in label]
    assert head and (head[0], "loss", "") in edges
