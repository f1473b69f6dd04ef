"""Pictures a person can read: the layer-level overview and the Figure-6-sized site picture.

The overview is derived from the graph's structure, never from names: one column per site
(F with its θ, labelled with the variable's name; the other trainable variables' consumers
attached to the nearest site before them), the forward data path between sites (an edge
i → j when site j reads site i's output through ops that are not sites: skip connections
show as edges between non-consecutive columns), the loss, and the backward side as the mirror
chain of P ops with each site's inserted T as one green box on the ĝ → P edge. Graphs with many
sites fold runs of consecutive sites into one column and say so in the title.
"""
from __future__ import annotations

import math
from collections import deque

from ..ir import GraphIR, Tensor
from ..report import SiteReport
from ..surgery import inserted_name
from .dot import _q
from .roles import ExportSource

MAX_COLUMNS = 40  # more sites than this are folded, a run of consecutive sites per column
T_LABEL = "T: r ← ρr + (1−ρ)·mean(g²)\nĝ = s·g / √(r + ε)"
COLORS = {"site": "#93c5fd", "leaf": "#fde68a", "T": "#86efac", "P": "#c4b5fd",
          "loss": "#fca5a5", "other": "#f3f4f6", "g": "#fca5a5"}


def _short(name: str, n: int = 34) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1):]


def site_edges(ir: GraphIR, sites: list[SiteReport]) -> set[tuple[int, int]]:
    """(i, j): site j reads site i's output through non-site forward ops (backward ops, i.e.
    the descendants of every g, are not walked)."""
    by_node = {s.node: s.index for s in sites}
    gs = [Tensor.parse(s.upstream_gradient) for s in sites]
    backward = ir.descendants(gs) | {g[0] for g in gs}
    edges = set()
    for s in sites:
        inputs = [t for k, t in enumerate(ir.data_inputs(s.node)) if k != s.param_input]
        queue, seen = deque(t[0] for t in inputs), set()
        while queue:
            name = queue.popleft()
            if name in seen or name in backward:
                continue
            seen.add(name)
            if name in by_node:
                if by_node[name] != s.index:
                    edges.add((by_node[name], s.index))
                continue
            queue.extend(t[0] for t in ir.data_inputs(name))
    return edges


def _attachments(ir: GraphIR, source: ExportSource) -> dict[int | None, list[str]]:
    """The other trainable variables' consumers (the report's skipped V_θ→σ nodes), by the
    nearest site before them (None: the loss, e.g. an L1 penalty on a kernel)."""
    by_node = {s.node: s.index for s in source.report.sites}
    out: dict[int | None, list[str]] = {}
    for k in source.report.skipped:
        if k.node not in ir.order:
            continue
        queue, seen, found = deque([k.node]), set(), None
        while queue and found is None and len(seen) < 2000:
            name = queue.popleft()
            if name in seen:
                continue
            seen.add(name)
            if name in by_node and name != k.node:
                found = by_node[name]
                break
            queue.extend(t[0] for t in ir.data_inputs(name))
        label = f"{k.variable} ({k.op})"
        if label not in out.setdefault(found, []):
            out[found].append(label)
    return out


def _columns(sites: list[SiteReport]) -> list[list[SiteReport]]:
    per = max(1, math.ceil(len(sites) / MAX_COLUMNS))
    return [sites[i:i + per] for i in range(0, len(sites), per)]


def _attached_line(names: list[str]) -> str:
    if not names:
        return ""
    shown = ", ".join(names[:3]) + (f" +{len(names) - 3} more" if len(names) > 3 else "")
    return f"\n+ {shown}"


def overview_dot(source: ExportSource, ir: GraphIR | None = None) -> str:
    """The layer-level overview of a rewrite (see the module docstring); ``ir``: the original
    graph's IR, when the caller has it."""
    ir = ir or GraphIR(source.original)
    sites = sorted(source.report.sites, key=lambda s: ir.order.get(s.node, 0))
    columns = _columns(sites)
    column_of = {s.index: c for c, col in enumerate(columns) for s in col}
    edges = {(column_of[i], column_of[j]) for i, j in site_edges(ir, sites)
             if column_of[i] != column_of[j]}
    attached = _attachments(ir, source)
    folded = len(columns) < len(sites)
    title = (f"{len(sites)} site(s)" + (f", folded into {len(columns)} columns of up to "
                                         f"{len(columns[0])} consecutive sites" if folded else "")
             + ": forward (top, blue), T (green) on each ĝ → P edge, P (purple, the backward "
             "mirror)")
    lines = ["digraph overview {", "  rankdir=TB; newrank=true; nodesep=0.3; ranksep=0.45;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
             '  edge [color="#6b7280", fontname="Helvetica", fontsize=9];',
             f"  label={_q(title)}; labelloc=t; fontname=\"Helvetica\";"]
    for c, col in enumerate(columns):
        first, last = col[0], col[-1]
        if len(col) == 1:
            label = (f"{first.op}\nθ = {_short(first.variable)}\nσ' {first.output_shape}"
                     + _attached_line(attached.get(first.index, [])))
            t_label = T_LABEL + f"\nr: {'x'.join(map(str, first.accumulator_shape)) or '1'}"
            p_label = f"P: {first.gradient_op_type}"
            url = f"#site-{first.index}"
        else:
            ops = {}
            for s in col:
                ops[s.op] = ops.get(s.op, 0) + 1
            names = [n for s in col for n in attached.get(s.index, [])]
            label = (f"sites {first.index}–{last.index} (folded)\n"
                     + ", ".join(f"{n}× {op}" for op, n in ops.items())
                     + f"\nθ = {_short(first.variable, 24)} … {_short(last.variable, 24)}"
                     + _attached_line(names))
            t_label = f"T × {len(col)}"
            p_label = f"P × {len(col)}"
            url = f"#site-{first.index}"
        lines.append(f"  site_{c} [label={_q(label)}, fillcolor=\"{COLORS['site']}\", "
                     f"URL={_q(url)}, tooltip={_q(first.node)}];")
        lines.append(f"  {_q(inserted_name(first.index, 'g_hat'))} [label={_q(t_label)}, "
                     f"fillcolor=\"{COLORS['T']}\", penwidth=2, color=\"#15803d\", URL={_q(url)}];")
        lines.append(f"  p_{c} [label={_q(p_label)}, fillcolor=\"{COLORS['P']}\", "
                     f"URL={_q(url)}, tooltip={_q(first.gradient_op)}];")
        lines.append(f"  site_{c} -> {_q(inserted_name(first.index, 'g_hat'))} "
                     '[style=dashed, label="g"];')
        lines.append(f"  {_q(inserted_name(first.index, 'g_hat'))} -> p_{c} "
                     '[color="#dc2626", penwidth=2, label="ĝ"];')
    rows = {"site": [f"site_{c}" for c in range(len(columns))] + ["loss"],
            "T": [_q(inserted_name(col[0].index, "g_hat")) for col in columns],
            "P": [f"p_{c}" for c in range(len(columns))]}
    for row in rows.values():
        lines.append(f"  {{rank=same; {'; '.join(row)};}}")
    sinks = [c for c in range(len(columns)) if not any(a == c for a, _ in edges)]
    loss_label = "loss" + _attached_line(attached.get(None, []))
    lines.append(f"  loss [label={_q(loss_label)}, fillcolor=\"{COLORS['loss']}\"];")
    for a, b in sorted(edges):
        skip = b - a > 1
        attrs = ['color="#2563eb"', "penwidth=1.5"] + (['label="skip"'] if skip else [])
        lines.append(f"  site_{a} -> site_{b} [{', '.join(attrs)}];")
        lines.append(f"  p_{a} -> p_{b} [style=dashed, color=\"#7c3aed\", dir=back];")
    for c in sinks:
        lines.append(f"  site_{c} -> loss [color=\"#2563eb\"];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def compact_site_dot(source: ExportSource, site: SiteReport, ir: GraphIR) -> str:
    """Figure 6 (right) at its own size: θ (by variable name), x, F (σ'), g, the single T box
    (its formula as the label, with r), and P, with the red ĝ → P edge; at most 10 nodes.
    ``ir``: the original graph's IR."""
    g_node = Tensor.parse(site.upstream_gradient).node
    ghat = inserted_name(site.index, "g_hat")
    acc = inserted_name(site.index, "accumulator")
    inputs = ir.data_inputs(site.node)
    x_nodes = [t[0] for k, t in enumerate(inputs) if k != site.param_input][:1]
    title = f"site {site.index} after (compact): {site.op} on {site.variable}"
    lines = [f"digraph {_q(f'site_{site.index}_after')} {{", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9, color="#6b7280"];',
             f"  label={_q(title)}; labelloc=t; fontname=\"Helvetica\";",
             f"  theta [label={_q('θ = ' + site.variable)}, fillcolor=\"{COLORS['leaf']}\"];",
             f"  {_q(site.node)} [label={_q(f'F: {site.op}' + chr(10) + 'σ′ ' + str(site.output_shape))}, "
             f"fillcolor=\"{COLORS['site']}\"];",
             f"  {_q(g_node)} [label={_q('g = ∂J/∂σ′' + chr(10) + _short(g_node))}, "
             f"fillcolor=\"{COLORS['g']}\"];",
             f"  {_q(ghat)} [label={_q(T_LABEL)}, fillcolor=\"{COLORS['T']}\", penwidth=2, "
             'color="#15803d"];',
             f"  {_q(acc)} [label={_q('r ' + ('x'.join(map(str, site.accumulator_shape)) or '1'))}, "
             f"shape=cylinder, fillcolor=\"{COLORS['T']}\"];",
             f"  {_q(site.gradient_op)} [label={_q(f'P: {site.gradient_op_type}')}, "
             f"fillcolor=\"{COLORS['P']}\"];",
             f"  update [label={_q('update of θ')}, fillcolor=\"{COLORS['other']}\"];",
             f"  theta -> {_q(site.node)};"]
    for x in x_nodes:
        lines += [f"  {_q(x)} [label={_q('x: ' + _short(x))}, fillcolor=\"{COLORS['other']}\"];",
                  f"  {_q(x)} -> {_q(site.node)};", f"  {_q(x)} -> {_q(site.gradient_op)};"]
    lines += [f"  {_q(site.node)} -> {_q(g_node)} [style=dashed, label=\"loss, backprop\"];",
              f"  {_q(g_node)} -> {_q(ghat)};",
              f"  {_q(acc)} -> {_q(ghat)} [dir=both];",
              f"  {_q(ghat)} -> {_q(site.gradient_op)} [color=\"#dc2626\", penwidth=3, "
              'xlabel="rerouted ĝ", fontcolor="#dc2626"];',
              f"  {_q(site.gradient_op)} -> update;", "}"]
    return "\n".join(lines) + "\n"
