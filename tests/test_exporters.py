"""Graph visualization export: each format read back; exporting changes nothing."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import networkx as nx
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import graph_pb2

import svgd_rewrite
from fixtures import keras_models
from helpers import make_module
from svgd_rewrite.exporters import dot as dot_module
from svgd_rewrite.exporters.overview import FOLD_ABOVE

# The overview: one box per row (a site, or a folded block), at most 48 rows, the loss: ...
OVERVIEW_MAX_BOXES = 60
OVERVIEW_MAX_BYTES = 500_000   # ... and an SVG under 500 kB, whatever the graph's size
PX_PER_PT = 96 / 72  # a browser at 100 % draws one SVG point as 4/3 px
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    step = svgd_rewrite.rewrite(make_module("small_cnn").train)
    out = tmp_path_factory.mktemp("export")
    before = (step.graph_def.SerializeToString(deterministic=True), step.report.to_json())
    result = svgd_rewrite.export(step, str(out), formats="all")
    after = (step.graph_def.SerializeToString(deterministic=True), step.report.to_json())
    return step, out / "graphs", result, before, after


def test_export_changes_nothing(exported):
    _, _, _, before, after = exported
    assert before == after


def test_tensorboard_event_files_hold_both_graphs(exported):
    step, graphs, result, _, _ = exported
    found = {}
    for run in ("rewritten", "original"):
        (path,) = glob.glob(str(graphs / "tensorboard" / run / "events.out.tfevents.*"))
        for event in tf.compat.v1.train.summary_iterator(path):
            if event.graph_def:
                gd = graph_pb2.GraphDef.FromString(event.graph_def)
                found[run] = {n.name for n in gd.node}
    inserted = {n.name for n in step.graph_def.node if n.name.startswith("svgd_rewrite/")}
    assert inserted and inserted <= found["rewritten"]
    assert not inserted & found["original"]


def test_graphml_roles_match_report(exported):
    step, graphs, _, _, _ = exported
    g = nx.read_graphml(graphs / "rewritten.graphml")
    assert g.number_of_nodes() == len(step.graph_def.node)
    roles = nx.get_node_attributes(g, "role")
    count = lambda r: sum(1 for v in roles.values() if v == r)  # noqa: E731
    assert count("site") == len(step.report.sites) == 4
    assert count("param_gradient_op") == 4 and count("leaf") == 5
    assert count("inserted") == sum(1 for n in step.graph_def.node
                                    if n.name.startswith("svgd_rewrite/"))
    for site in step.report.sites:
        assert roles[site.node] == "site" and roles[site.gradient_op] == "param_gradient_op"
        assert g.nodes[site.node]["op"] == "Conv2D" or g.nodes[site.node]["op"] == "MatMul"
    assert all({"op", "dtype", "shape", "role"} <= set(d) for _, d in g.nodes(data=True))


def test_graphs_tuple_loads_with_graph_nets(exported):
    from graph_nets import utils_np

    step, graphs, _, _, _ = exported
    data = dict(np.load(graphs / "rewritten_graphs_tuple.npz"))
    vocab = json.loads((graphs / "rewritten_graphs_tuple.json").read_text())
    tuple_ = utils_np.data_dicts_to_graphs_tuple([data])
    g = nx.read_graphml(graphs / "rewritten.graphml")
    assert int(tuple_.n_node[0]) == g.number_of_nodes()
    assert int(tuple_.n_edge[0]) == g.number_of_edges()
    assert tuple_.nodes.shape[1] == len(vocab["op_types"]) + len(vocab["roles"])
    site_col = len(vocab["op_types"]) + vocab["roles"].index("site")
    assert int(tuple_.nodes[:, site_col].sum()) == len(step.report.sites)


def test_svg_pictures_name_the_site_nodes(exported):
    step, graphs, result, _, _ = exported
    for site in step.report.sites:
        for which in ("before", "after"):
            text = (graphs / "svg" / f"site_{site.index}_{which}.svg").read_text()
            ET.fromstring(text)  # well-formed XML
            if which == "before":
                for name in (site.node, site.gradient_op):
                    assert f"<title>{name}</title>" in text
        after = (graphs / "svg" / f"site_{site.index}_after.svg").read_text()
        post = site.applications[0].scaling == "post"  # small_cnn: Dense post-, Conv2D pre-scaled
        assert "rerouted" in after and ("P·f" if post else "rerouted ĝ") in after
    # before, compact after, detailed after per site, and the overview
    assert len(result.files["svg"]) == 3 * len(step.report.sites) + 1
    assert (graphs / "dot" / "overview.dot").exists()


@pytest.fixture(scope="module")
def resnet20_step():
    return svgd_rewrite.rewrite(keras_models.train_step(keras_models.resnet(20), l1=0))


def _chromium_flags(tmp_path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("CI"), reason="chromium not installed")
def test_html_page_renders_in_headless_chromium(exported, tmp_path):
    step, graphs, _, _, _ = exported
    page = (graphs / "index.html").resolve().as_uri()
    flags = _chromium_flags(tmp_path)
    shot = tmp_path / "page.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1400,2000", f"--screenshot={shot}", page],
                   capture_output=True, timeout=120, check=True)
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert f'data-sites="{len(step.report.sites)}"' in dom
    assert 'data-broken-images="0"' in dom
    assert dom.count("<section class=\"site\"") == len(step.report.sites)
    assert dom.count("<svg") >= 2 * len(step.report.sites) + 1


def test_without_graphviz_dot_files_are_written(monkeypatch, tmp_path):
    monkeypatch.setattr(dot_module.shutil, "which", lambda name: None)
    step = svgd_rewrite.rewrite(make_module("mlp_l1").train)
    result = svgd_rewrite.export(step, str(tmp_path), formats=["svg", "html"])
    assert any("Graphviz" in n for n in result.notes)
    assert sorted(os.listdir(tmp_path / "graphs" / "dot")) == sorted(
        [f"site_{i}_{w}.dot" for i in range(3) for w in ("before", "after", "after_detail")]
        + ["overview.dot"])
    assert "<pre>" in (tmp_path / "graphs" / "index.html").read_text()


def test_graphs_tuple_without_graph_nets_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "graph_nets", None)
    step = svgd_rewrite.rewrite(make_module("mlp_l1").train)
    with pytest.raises(svgd_rewrite.ExportError) as exc:
        svgd_rewrite.export(step, str(tmp_path), formats="graphs-tuple")
    assert "svgd-rewrite[graphs]" in str(exc.value)
    assert not (tmp_path / "graphs").exists()


def test_unknown_format_is_refused(tmp_path):
    step = svgd_rewrite.rewrite(make_module("mlp_l1").train)
    with pytest.raises(svgd_rewrite.ExportError) as exc:
        svgd_rewrite.export(step, str(tmp_path), formats="png")
    assert "choose from" in str(exc.value)


# --- pictures a person can read (the overview, Figure-6-sized site pictures) ---------------

def _dot_nodes_and_edges(text: str):
    import re

    nodes = dict(re.findall(r'^  ("[^"]+"|\w+) \[label=(<<.*?>>|"(?:[^"\\]|\\.)*")', text, re.M))
    edges = re.findall(r'^  ("[^"]+"|\w+) -> ("[^"]+"|\w+)', text, re.M)
    return nodes, edges


def svg_geometry(path) -> dict:
    """Width and height in px at 100 % zoom, the smallest text in px, and the node boxes of a
    Graphviz SVG."""
    import re

    root = ET.parse(str(path)).getroot()
    width = float(root.get("width").removesuffix("pt")) * PX_PER_PT
    height = float(root.get("height").removesuffix("pt")) * PX_PER_PT
    text = path.read_text()
    scale = re.search(r'transform="scale\(([\d.]+)', text)
    factor = float(scale.group(1)) if scale else 1.0
    sizes = [float(x) for x in re.findall(r'font-size="([\d.]+)"', text)]
    return {"width": width, "height": height,
            "min_text": min(sizes) * factor * PX_PER_PT if sizes else None,
            "boxes": text.count('class="node"')}


@pytest.fixture(scope="module")
def paper_mlp_export(tmp_path_factory):
    step = svgd_rewrite.rewrite(make_module("paper_mlp").train)
    out = tmp_path_factory.mktemp("mlp")
    result = svgd_rewrite.export(step, str(out), formats=["dot", "svg", "html"])
    return step, out / "graphs", result


def test_overview_of_the_paper_mlp_has_its_five_layers_in_order(paper_mlp_export):
    step, graphs, result = paper_mlp_export
    nodes, edges = _dot_nodes_and_edges((graphs / "dot" / "overview.dot").read_text())
    units = [n for n in nodes if n.startswith("unit_")]
    assert units == [f"unit_{i}" for i in range(5)]
    for i, site in enumerate(step.report.sites):
        assert f"θ = {site.variable}" in nodes[f"unit_{i}"]
        assert "T: r" in nodes[f"unit_{i}"] and "P: MatMul" in nodes[f"unit_{i}"]
    assert [(a, b) for a, b in edges if a.startswith("unit_") and b.startswith("unit_")] == [
        (f"unit_{i}", f"unit_{i + 1}") for i in range(4)]
    assert "dense0/bias" in nodes["unit_0"]  # other variables attached to the nearest site
    geometry = svg_geometry(graphs / "svg" / "overview.svg")
    assert geometry["width"] <= 1400 and geometry["min_text"] >= 10
    assert not [n for n in result.notes if n.startswith("Graphviz:")]
    standalone = (graphs / "svg" / "overview.svg").read_text()
    assert 'href="site_0_after.svg"' in standalone  # the standalone SVG links to the files
    assert (graphs / "svg" / "site_0_after.svg").exists()


def test_compact_site_picture_and_detailed_one(paper_mlp_export):
    step, graphs, _ = paper_mlp_export
    for site in step.report.sites:
        nodes, edges = _dot_nodes_and_edges(
            (graphs / "dot" / f"site_{site.index}_after.dot").read_text())
        assert len(nodes) <= 10
        assert f"θ = {site.variable}" in " ".join(nodes.values())
        assert ("P", "T") in edges and ("T", "update") in edges  # post-scaled: T after P
        detail = (graphs / "dot" / f"site_{site.index}_after_detail.dot").read_text()
        inserted = [n.name for n in step.graph_def.node
                    if n.name.startswith(f"svgd_rewrite/site_{site.index}/")]
        assert inserted and all(f'"{name}"' in detail for name in inserted)
        before = (graphs / "dot" / f"site_{site.index}_before.dot").read_text()
        assert "θ = " in before and "[784, 256]" in before or site.index  # θ with its shape
        assert "g = ∂J/∂σ′" in before


def test_before_pictures_label_slots_only_where_a_node_has_several_inputs(paper_mlp_export):
    import re

    _, graphs, _ = paper_mlp_export
    text = (graphs / "dot" / "site_0_before.dot").read_text()
    targets = re.findall(r'-> ("[^"]+") \[label="\d+"', text)
    for target in targets:
        assert len(re.findall(rf'-> {re.escape(target)}', text)) > 1


def test_tensorboard_marks_each_rerouted_p(exported):
    step, graphs, _, _, _ = exported
    (path,) = glob.glob(str(graphs / "tensorboard" / "rewritten" / "events.out.tfevents.*"))
    for event in tf.compat.v1.train.summary_iterator(path):
        if event.graph_def:
            gd = graph_pb2.GraphDef.FromString(event.graph_def)
    marked = {n.name: n.attr["_svgd_rewrite"].s.decode() for n in gd.node
              if "_svgd_rewrite" in n.attr}
    assert sorted(marked) == sorted(s.gradient_op for s in step.report.sites)
    for site in step.report.sites:  # small_cnn: Dense sites post-scaled, Conv2D pre-scaled
        want = "output scaled by f" if site.applications[0].scaling == "post" else "rerouted to ĝ"
        assert want in marked[site.gradient_op], marked[site.gradient_op]


def _overview_checks(step, tmp_path) -> dict:
    svgd_rewrite.export(step, str(tmp_path), formats="svg")
    result = svgd_rewrite.export(step, str(tmp_path / "html"), formats="html")
    path = tmp_path / "graphs" / "svg" / "overview.svg"
    geometry = svg_geometry(path)
    assert geometry["width"] <= 1400, geometry
    assert geometry["min_text"] >= 10, geometry
    assert 0 < geometry["boxes"] <= OVERVIEW_MAX_BOXES, geometry
    assert len(path.read_bytes()) <= OVERVIEW_MAX_BYTES
    text = path.read_text()
    if len(step.report.sites) <= FOLD_ABOVE:  # one box per site, each linking to its picture
        assert all(f"site_{s.index}_after.svg" in text for s in step.report.sites)
    assert not [n for n in result.notes if n.startswith("Graphviz:")], result.notes
    return geometry


def test_overview_of_resnet20_shows_each_site_and_its_skips(resnet20_step, tmp_path):
    """22 sites: one row each (no folding below FOLD_ABOVE), the residual skips dashed."""
    step = resnet20_step
    assert len(step.graph_def.node) > 2500
    svgd_rewrite.export(step, str(tmp_path), formats="dot")
    text = (tmp_path / "graphs" / "dot" / "overview.dot").read_text()
    nodes, edges = _dot_nodes_and_edges(text)
    units = [n for n in nodes if n.startswith("unit_")]
    assert len(units) == len(step.report.sites) == 22
    assert text.count('label="skip"') >= 6  # a skip around most residual blocks
    _overview_checks(step, tmp_path / "svg")


def test_folding_keeps_forward_order_and_every_site():
    """Past FOLD_ABOVE sites, repeated runs become ×N blocks; every site stays in one unit."""
    from svgd_rewrite.exporters.overview import FOLD_ABOVE, fold_units
    from svgd_rewrite.report import SiteReport

    def site(i, op, width):
        return SiteReport(index=i, node=f"n{i}", op=op, variable=f"v{i}", param_input=1,
                          gradient_op=f"p{i}", gradient_op_type="Conv2DBackpropFilter",
                          gradient_input=2, upstream_gradient=f"g{i}:0",
                          output_shape=[None, 8, 8, width], accumulator_shape=[8, 8, width],
                          granularity="full")

    ops = [("Conv2D", 16)] + [("Conv2D", 16), ("DepthwiseConv2dNative", 16)] * 20 + [
        ("MatMul", 10)]
    sites = [site(i, op, w) for i, (op, w) in enumerate(ops)]
    assert len(sites) > FOLD_ABOVE
    units = fold_units(sites)
    assert [s.index for u in units for s in u.sites] == list(range(len(sites)))
    blocks = [u for u in units if u.kind == "block"]
    assert max((u.count for u in blocks if u.period == 2), default=0) >= 19
    assert [(u.kind, u.sites) for u in fold_units(sites[:FOLD_ABOVE])] == [
        ("site", [s]) for s in sites[:FOLD_ABOVE]]


@pytest.mark.slow
def test_overview_of_resnet56_mobilenet_v2_and_bert_fit_a_browser_window(tmp_path):
    """ResNet-56 (built in code), MobileNetV2 (weights=None, 32×32) and a small keras_hub BERT
    from a config: each overview ≤1400 px wide at 100 %, text ≥10 px, ≤60 boxes, no Graphviz
    warning."""
    models = {"resnet56": keras_models.resnet(56), "mobilenet_v2": keras_models.mobilenet_v2()}
    steps = {name: svgd_rewrite.rewrite(keras_models.train_step(m, l1=0), scale=0.01)
             for name, m in models.items()}
    pytest.importorskip("keras_hub")
    steps["bert"] = svgd_rewrite.rewrite(keras_models.bert_train_step(), scale=0.01)
    for name, step in steps.items():
        geometry = _overview_checks(step, tmp_path / name)
        assert geometry["height"] > 0, name
    assert len(steps["resnet56"].report.sites) == 58


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM and not os.environ.get("CI"), reason="chromium not installed")
def test_html_page_shows_the_overview_at_its_natural_size_in_chromium(resnet20_step, tmp_path):
    """ResNet-20's page in a 1400 px window: the overview is drawn (not a thin strip), its
    boxes link to the site and block sections, and the sections link back."""
    import matplotlib.image

    svgd_rewrite.export(resnet20_step, str(tmp_path), formats="html")
    page = (tmp_path / "graphs" / "index.html").resolve().as_uri()
    flags = _chromium_flags(tmp_path)
    shot = tmp_path / "page.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1400,1400", f"--screenshot={shot}", page],
                   capture_output=True, timeout=120, check=True)
    pixels = matplotlib.image.imread(str(shot))[..., :3]
    band = pixels[200:1300]  # the overview comes right after the header and legend
    assert (band < 0.95).any(axis=2).mean() > 0.05, "the overview area is blank"
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert 'id="overview"' in dom and 'href="#site-' in dom
    assert dom.count('href="#overview"') == 22  # each site's section links back


@pytest.mark.parametrize("error", ["failed", "timeout"])
def test_graphviz_failing_is_an_export_error_and_leaves_nothing(monkeypatch, tmp_path, error):
    """Graphviz exiting non-zero or hanging on a picture: ExportError with one line, and no
    half-written graphs/ folder."""
    import subprocess

    step = svgd_rewrite.rewrite(make_module("mlp_l1").train)
    real = subprocess.run
    calls = []

    def flaky(cmd, *args, **kwargs):
        calls.append(cmd)
        if cmd[0] == "dot" and len(calls) == 3:
            if error == "timeout":
                raise subprocess.TimeoutExpired(cmd, 300)
            raise subprocess.CalledProcessError(1, cmd, stderr=b"Error: syntax error in line 1")
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(dot_module.subprocess, "run", flaky)
    monkeypatch.setattr(dot_module, "have_graphviz", lambda: True)
    with pytest.raises(svgd_rewrite.ExportError) as exc:
        svgd_rewrite.export(step, str(tmp_path), formats="svg")
    assert "\n" not in str(exc.value) and "Graphviz" in str(exc.value)
    assert not (tmp_path / "graphs").exists()


def test_html_page_shows_r_after_training(tmp_path):
    """A step object that has trained: ``index.html`` gains r's mean, min and max per
    layer after the steps run; an untrained one has no such section."""
    from fixtures.models import random_batch

    module = make_module("mlp_l1")
    step = svgd_rewrite.rewrite(module.train)
    svgd_rewrite.export(step, str(tmp_path / "before"), formats="html")
    assert "r after training" not in (tmp_path / "before" / "graphs" / "index.html").read_text()
    for seed in range(3):
        step(*random_batch(module.spec, 8, seed=seed))
    svgd_rewrite.export(step, str(tmp_path / "after"), formats="html")
    page = (tmp_path / "after" / "graphs" / "index.html").read_text()
    assert "r after training (3 step(s))" in page
    figures = step.diagnostics()
    for name, f in figures.items():
        assert f"<td>{name}</td><td>{f['r_mean']:.4g}</td>" in page
