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

# The overview draws three boxes per site column (F, T, P) and folds runs of consecutive sites
# beyond 40 columns: at most 3·40 + 1 boxes ...
OVERVIEW_MAX_BOXES = 3 * 40 + 1
OVERVIEW_MAX_BYTES = 500_000   # ... and an SVG under 500 kB, whatever the graph's size
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
            for name in (site.node, site.gradient_op):
                assert f"<title>{name}</title>" in text
        after = (graphs / "svg" / f"site_{site.index}_after.svg").read_text()
        assert f"svgd_rewrite/site_{site.index}/g_hat" in after and "rerouted" in after
    # before, compact after, detailed after per site, and the overview
    assert len(result.files["svg"]) == 3 * len(step.report.sites) + 1
    assert (graphs / "dot" / "overview.dot").exists()


@pytest.fixture(scope="module")
def resnet20_step():
    return svgd_rewrite.rewrite(keras_models.train_step(keras_models.resnet(20), l1=0))


def test_overview_of_resnet20_stays_small(resnet20_step, tmp_path):
    step = resnet20_step
    assert len(step.graph_def.node) > 2500
    svgd_rewrite.export(step, str(tmp_path), formats="svg")
    text = (tmp_path / "graphs" / "svg" / "overview.svg").read_text()
    assert 0 < text.count('class="node"') <= OVERVIEW_MAX_BOXES
    assert len(text.encode()) <= OVERVIEW_MAX_BYTES
    assert "svgd_rewrite" in text


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


# --- pictures a person can read (the layer-level overview, Figure-6-sized site pictures) ---

def _dot_nodes_and_edges(text: str):
    import re

    nodes = dict(re.findall(r'^  ("[^"]+"|\w+) \[label="((?:[^"\\]|\\.)*)"', text, re.M))
    edges = re.findall(r'^  ("[^"]+"|\w+) -> ("[^"]+"|\w+)', text, re.M)
    return nodes, edges


@pytest.fixture(scope="module")
def paper_mlp_export(tmp_path_factory):
    step = svgd_rewrite.rewrite(make_module("paper_mlp").train)
    out = tmp_path_factory.mktemp("mlp")
    svgd_rewrite.export(step, str(out), formats=["dot", "svg", "html"])
    return step, out / "graphs"


def test_overview_of_the_paper_mlp_has_its_five_layers_in_order(paper_mlp_export):
    step, graphs = paper_mlp_export
    nodes, edges = _dot_nodes_and_edges((graphs / "dot" / "overview.dot").read_text())
    sites = [n for n in nodes if n.startswith("site_")]
    assert sites == [f"site_{i}" for i in range(5)]
    for i, site in enumerate(step.report.sites):
        assert f"θ = {site.variable}" in nodes[f"site_{i}"]
    assert [(a, b) for a, b in edges if a.startswith("site_") and b.startswith("site_")] == [
        (f"site_{i}", f"site_{i + 1}") for i in range(4)]
    t_boxes = [n for n in nodes if n.endswith('/g_hat"')]
    assert len(t_boxes) == 5 and all("mean(g²)" in nodes[t] for t in t_boxes)
    assert "dense0/bias" in nodes["site_0"]  # other variables attached to the nearest site


def test_compact_site_picture_and_detailed_one(paper_mlp_export):
    step, graphs = paper_mlp_export
    for site in step.report.sites:
        nodes, edges = _dot_nodes_and_edges(
            (graphs / "dot" / f"site_{site.index}_after.dot").read_text())
        assert len(nodes) <= 10
        assert f"θ = {site.variable}" in " ".join(nodes.values())
        assert (f'"svgd_rewrite/site_{site.index}/g_hat"', f'"{site.gradient_op}"') in edges
        detail = (graphs / "dot" / f"site_{site.index}_after_detail.dot").read_text()
        inserted = [n.name for n in step.graph_def.node
                    if n.name.startswith(f"svgd_rewrite/site_{site.index}/")]
        assert inserted and all(f'"{name}"' in detail for name in inserted)


def test_overview_of_resnet20_shows_every_site_and_a_skip_connection(resnet20_step, tmp_path):
    step = resnet20_step
    svgd_rewrite.export(step, str(tmp_path), formats="dot")
    nodes, edges = _dot_nodes_and_edges((tmp_path / "graphs" / "dot" / "overview.dot").read_text())
    columns = [n for n in nodes if n.startswith("site_")]
    assert len(columns) == len(step.report.sites) == 22
    forward = [(int(a[5:]), int(b[5:])) for a, b in edges
               if a.startswith("site_") and b.startswith("site_")]
    assert any(b - a > 1 for a, b in forward), forward


def test_overview_folds_many_sites_and_says_so(resnet20_step, monkeypatch):
    from svgd_rewrite.exporters import layers
    from svgd_rewrite.exporters.roles import source_of

    step = resnet20_step
    monkeypatch.setattr(layers, "MAX_COLUMNS", 8)
    text = layers.overview_dot(source_of(step))
    nodes, _ = _dot_nodes_and_edges(text)
    assert len([n for n in nodes if n.startswith("site_")]) == 8
    assert "folded into 8 columns" in text and "(folded)" in text


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("CI"), reason="chromium not installed")
def test_html_page_shows_the_overview_in_chromium(paper_mlp_export, tmp_path):
    import matplotlib.image

    _, graphs = paper_mlp_export
    page = (graphs / "index.html").resolve().as_uri()
    flags = _chromium_flags(tmp_path)
    shot = tmp_path / "page.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1400,1200", f"--screenshot={shot}", page],
                   capture_output=True, timeout=120, check=True)
    pixels = matplotlib.image.imread(str(shot))[..., :3]
    band = pixels[150:600]  # the overview comes right after the header and legend
    assert (band < 0.95).any(axis=2).mean() > 0.02, "the overview area is blank"
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert "Overview: the layers" in dom and 'id="overview"' in dom
    assert dom.count('href="#site-') >= 5 and dom.count('href="#overview"') == 5
