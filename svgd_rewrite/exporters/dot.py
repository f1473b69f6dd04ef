"""Graphviz pictures of each site before/after its rewrite at full detail (the paper's
Figure 6, every inserted node drawn); the compact pictures and the overview are in
``layers``."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import networkx as nx

from ..errors import one_line
from ..ir import GraphIR, Tensor
from ..report import SiteReport
from ..edits import EditLog
from .roles import ExportSource

COLORS = {"leaf": "#fde68a", "site": "#93c5fd", "upstream_gradient": "#fca5a5",
          "param_gradient_op": "#c4b5fd", "inserted": "#86efac", "other": "#f3f4f6",
          "consumer": "#e5e7eb", "x": "#dbeafe"}


MAX_TEXT = 2000  # Graphviz refuses quoted strings over 16384 bytes


def _q(s: str) -> str:
    """A DOT quoted string per the DOT grammar: backslashes and quotes escaped, a newline in
    ``s`` becomes a DOT line break, other control characters are dropped; a text over
    ``MAX_TEXT`` characters is cut in the middle (an ellipsis and a hash of the whole keep
    two long names apart)."""
    if len(s) > MAX_TEXT:
        digest = hashlib.sha1(s.encode("utf-8", "replace")).hexdigest()[:8]
        half = (MAX_TEXT - 12) // 2
        s = f"{s[:half]}…{digest}…{s[-half:]}"
    s = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + "".join(c for c in s if c.isprintable()) + '"'


def _label(graph: nx.MultiDiGraph, name: str, role_text: str = "") -> str:
    d = graph.nodes[name]
    short = name if len(name) <= 40 else name[:14] + "…" + name[-25:]
    shape = f"\n{d['dtype']} {d['shape']}" if d.get("dtype") else ""
    head = f"{role_text}\n" if role_text else ""
    return f"{head}{d['op']}\n{one_line(short)}{shape}"


def _site_nodes(ir: GraphIR, site: SiteReport) -> dict[str, str]:
    """The nodes of one site's picture, by role (before the rewrite). A site inside a loop
    is drawn by its loops: the forward While reading θ, and the gradient While."""
    app = site.applications[0] if site.applications else None
    if site.node not in ir.order and app is not None and app.loop:
        nodes = {app.loop: "site"}
        if app.gradient_loop and app.gradient_loop in ir.order:
            nodes[app.gradient_loop] = "param_gradient_op"
            for consumer, _ in ir.consumers((app.gradient_loop, app.gradient_output))[:2]:
                nodes.setdefault(consumer, "consumer")
        for t in ir.data_inputs(app.loop):
            if t[0] == site.variable_node:
                nodes[t[0]] = "leaf"
        return nodes
    nodes: dict[str, str] = {site.node: "site", site.gradient_op: "param_gradient_op"}
    g = Tensor.parse(site.upstream_gradient)
    nodes[g.node] = "upstream_gradient"
    # θ's view chain up to its placeholder, and F's other operands
    for slot, t in enumerate(ir.data_inputs(site.node)):
        cur = t[0]
        if slot == site.param_input:
            while cur not in nodes and ir.op(cur) != "Placeholder" and ir.data_inputs(cur):
                nodes[cur] = "other"
                cur = ir.data_inputs(cur)[0][0]
            nodes.setdefault(cur, "leaf")
        elif ir.op(cur) != "Const":
            nodes.setdefault(cur, "x")
    # other consumers of g (the input-gradient op among them) keep g
    for consumer, _ in ir.consumers(g)[:3]:
        nodes.setdefault(consumer, "consumer")
    for t in ir.data_inputs(site.gradient_op):
        if ir.op(t[0]) != "Const":
            nodes.setdefault(t[0], "x")
    for consumer, _ in ir.consumers((site.gradient_op, 0))[:2]:  # where P's output goes
        nodes.setdefault(consumer, "consumer")
    return nodes


ROLE_TEXT = {"site": "F (σ′)", "param_gradient_op": "P", "upstream_gradient": "g = ∂J/∂σ′",
             "x": "x", "consumer": "", "other": "", "inserted": ""}


def site_dot(source: ExportSource, graphs: dict[str, nx.MultiDiGraph], site: SiteReport,
             which: str, original_ir: GraphIR | None = None) -> str:
    """DOT text of one site ``before`` or ``after`` the rewrite (``original_ir``: the
    original graph's IR, built once by the caller). Nodes are labelled by their role (θ by
    its variable's name and shape); an edge carries its input slot only where its node
    reads several inputs from the picture."""
    original_ir = original_ir or GraphIR(source.original)
    members = _site_nodes(original_ir, site)
    graph = graphs["original" if which == "before" else "rewritten"]
    edits = source.edits
    if which == "after":
        _add_inserted(members, graph, edits, site.index)
    lines = [f"digraph {_q(f'site_{site.index}_{which}')} {{", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9, color="#6b7280"];',
             f'  label={_q(f"site {site.index} {which}: {site.op} on {site.variable}")}; '
             'labelloc=t; fontname="Helvetica";']
    lines += [_node_line(source, graph, name, role) for name, role in members.items()
              if name in graph.nodes]
    lines += _edge_lines(graph, members, site, which, edits)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _add_inserted(members: dict[str, str], graph: nx.MultiDiGraph, edits: EditLog,
                  site: int) -> None:
    """Every node the site inserted (constants ρ, ε, s and the axes included), and where a
    scaled output goes now (from the edit log)."""
    members.update({n: "inserted" for n in edits.inserted_nodes(site) if n in graph.nodes})
    for e in edits.scaled_at(site):
        for reader in e.readers[:2]:
            members.setdefault(reader, "consumer")


def _node_line(source: ExportSource, graph: nx.MultiDiGraph, name: str, role: str) -> str:
    pen = ', penwidth=2, color="#15803d"' if role == "inserted" else ""
    if role == "leaf" and name in source.variables:  # θ by its variable's name and shape
        info = source.variables[name]
        label = f"θ = {one_line(info.name)}\n{info.dtype.name} {list(info.shape)}"
    else:
        label = _label(graph, name, ROLE_TEXT.get(role, ""))
    fill = COLORS.get(role, COLORS["other"])
    return f"  {_q(name)} [label={_q(label)}, fillcolor=\"{fill}\"{pen}];"


def _edge_lines(graph: nx.MultiDiGraph, members: dict[str, str], site: SiteReport, which: str,
                edits: EditLog) -> list[str]:
    inside = [(u, v, d) for u, v, d in graph.edges(data=True)
              if u in members and v in members and not d["control"]]
    fan_in: dict[str, int] = {}
    for _, v, _ in inside:
        fan_in[v] = fan_in.get(v, 0) + 1
    rerouted = {(e.new, e.node) for e in edits.rerouted_at(site.index)}
    scaled = {(e.scaled, r) for e in edits.scaled_at(site.index) for r in e.readers}
    lines = []
    for u, v, d in inside:
        attrs = [f'label="{d["input_index"]}"'] if fan_in[v] > 1 else []
        attrs += _edge_mark(u, v, d, site, which, rerouted, scaled)
        lines.append(f"  {_q(u)} -> {_q(v)}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    return lines


def _edge_mark(u: str, v: str, d: dict, site: SiteReport, which: str,
               rerouted: set[tuple[str, str]], scaled: set[tuple[str, str]]) -> list[str]:
    """The red marks (from the edit log): the rerouted ĝ and P·f after, g → P before."""
    if which == "after" and (u, v) in rerouted:
        return ['color="#dc2626"', "penwidth=3", 'xlabel="rerouted ĝ"', 'fontcolor="#dc2626"']
    if which == "after" and (u, v) in scaled:
        return ['color="#dc2626"', "penwidth=3", 'xlabel="P·f"', 'fontcolor="#dc2626"']
    if which == "before" and v == site.gradient_op and d["input_index"] == site.gradient_input:
        return ['color="#dc2626"', 'style=dashed', 'xlabel="g → P"', 'fontcolor="#dc2626"']
    return []


def have_graphviz() -> bool:
    return shutil.which("dot") is not None


def render_svg(dot_path: str, warnings: list[str] | None = None) -> str | None:
    """Render ``dot_path`` to SVG beside it with Graphviz; None when ``dot`` is missing.
    Graphviz's warnings are appended to ``warnings``."""
    if not have_graphviz():
        return None
    svg = os.path.splitext(dot_path)[0] + ".svg"
    proc = subprocess.run(["dot", "-Tsvg", dot_path, "-o", svg], check=True,
                          capture_output=True, timeout=300)
    for line in proc.stderr.decode(errors="replace").splitlines():
        if line.strip() and warnings is not None:
            warnings.append(f"{os.path.basename(dot_path)}: {one_line(line.strip())[:200]}")
    return svg


