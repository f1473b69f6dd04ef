"""Pictures a person can read: the overview of a whole model and the Figure-6-sized site
picture.

The overview runs top to bottom (as Netron and TensorBoard do), one row per unit in forward
order. A unit is one site drawn as a single box of three cells — F with its θ and σ', the
inserted T with r's shape and how f reaches P, and P — or, for models of more than
``FOLD_ABOVE`` sites, a *folded block*: consecutive sites whose op sequence and shapes repeat (ResNet stages, Transformer layers, MobileNet inverted
residuals), drawn once as "×N". Forward edges join the units; skip connections (an edge past
the next unit) stay visible; the loss closes the column. Everything is derived from the
graph's structure, never from names, and the picture stays one narrow column whatever the
model: at most ``MAX_UNITS`` rows (runs of units beyond that are folded into ranges).
"""
from __future__ import annotations

import html
from collections import deque
from dataclasses import dataclass

from ..ir import GraphIR, Tensor
from ..report import SiteReport
from .dot import _q
from .roles import ExportSource

MAX_UNITS = 48  # rows of the overview; with the input and the loss, at most 50 boxes
MAX_PERIOD = 8  # the longest repeated block looked for, in sites
MAX_SKIP = 4  # the longest skip drawn, in rows (residual connections span 2–4)
FOLD_ABOVE = 32  # up to this many sites every site has its own row (skips between them drawn)
T_LABEL = "T: r ← ρr + (1−ρ)·mean(g²)\nĝ = s·g / √(r + ε)"
T_POST_LABEL = "T: r ← ρr + (1−ρ)·mean(g²)\nP·f, f = s / √(r + ε)"
COLORS = {"site": "#93c5fd", "leaf": "#fde68a", "T": "#86efac", "P": "#c4b5fd",
          "loss": "#e5e7eb", "other": "#f3f4f6", "g": "#fca5a5", "scaled": "#fcd34d"}


def _short(name: str, n: int = 34) -> str:
    return name if len(name) <= n else name[: n // 2 - 1] + "…" + name[-(n - n // 2):]


def _shape(dims) -> str:
    return "x".join("?" if d is None else str(d) for d in dims) or "scalar"


def _flat_node(site: SiteReport) -> str:
    """The node of the flat graph that holds the site's F (its loop, for a loop site)."""
    app = site.applications[0] if site.applications else None
    return app.loop if app is not None and app.loop else site.node


def site_edges(ir: GraphIR, sites: list[SiteReport]) -> set[tuple[int, int]]:
    """(i, j): site j reads site i's output through non-site forward ops (backward ops, i.e.
    the descendants of every g, are not walked)."""
    by_node = {}
    for s in sites:
        by_node.setdefault(_flat_node(s), s.index)
    gs = [Tensor.parse(s.upstream_gradient) for s in sites if s.node in ir.order]
    backward = ir.descendants(gs) | {g[0] for g in gs}
    edges = set()
    for s in sites:
        node = _flat_node(s)
        if node not in ir.order:
            continue
        inputs = [t for k, t in enumerate(ir.data_inputs(node))
                  if node != s.node or k != s.param_input]
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
    by_node = {_flat_node(s): s.index for s in source.report.sites}
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


@dataclass
class Unit:
    """One row of the overview: one site, a folded block (``period`` sites repeated
    ``count`` times), or (past ``MAX_UNITS``) a range of units."""

    sites: list[SiteReport]
    period: int = 1
    count: int = 1
    kind: str = "site"  # site, block, range

    @property
    def first(self) -> SiteReport:
        return self.sites[0]


def _signature(site: SiteReport) -> tuple:
    return (site.op, tuple(site.output_shape[1:]), tuple(site.accumulator_shape),
            site.granularity)


def fold_units(sites: list[SiteReport], max_units: int = MAX_UNITS) -> list[Unit]:
    """Sites in forward order as overview rows: one per site up to ``FOLD_ABOVE`` sites; beyond,
    each run of a repeated block of up to ``MAX_PERIOD`` sites (same ops and shapes) is one
    unit, and past ``max_units`` rows consecutive units are merged into ranges."""
    if len(sites) <= FOLD_ABOVE:
        return [Unit([s]) for s in sites]
    sig = [_signature(s) for s in sites]
    units, i, n = [], 0, len(sites)
    while i < n:
        best_period, best_count = 1, 1
        for p in range(1, MAX_PERIOD + 1):
            if i + 2 * p > n:
                break
            k = 1
            while i + (k + 1) * p <= n and sig[i + k * p:i + (k + 1) * p] == sig[i:i + p]:
                k += 1
            if k >= 2 and k * p > best_period * best_count:
                best_period, best_count = p, k
        if best_count >= 2:
            span = best_period * best_count
            units.append(Unit(sites[i:i + span], best_period, best_count, "block"))
            i += span
        else:
            units.append(Unit([sites[i]]))
            i += 1
    if len(units) > max_units:
        per = -(-len(units) // max_units)
        merged = []
        for j in range(0, len(units), per):
            group = units[j:j + per]
            merged.append(group[0] if len(group) == 1 else
                          Unit([s for u in group for s in u.sites], kind="range"))
        units = merged
    return units


def _cell(text: str, color: str, bold_first: bool = True) -> str:
    # Browsers draw Graphviz's text up to ~10 % wider than Graphviz measured it: pad each line.
    lines = [html.escape(line) + "&#160;" * (len(line) // 10 + 1) for line in text.split("\n")]
    if bold_first and lines:
        lines[0] = f"<B>{lines[0]}</B>"
    return f'<TD BGCOLOR="{color}" ALIGN="LEFT" BALIGN="LEFT">{"<BR/>".join(lines)}</TD>'


def _scaling(site: SiteReport) -> str:
    kinds = {a.scaling for a in site.applications} or {"pre"}
    loop = " (loop)" if any(a.loop for a in site.applications) else ""
    if kinds == {"post"}:
        return "P's output × f" + loop
    if kinds == {"pre"}:
        return "ĝ = g·f feeds P" + loop
    return "ĝ and P·f" + loop


def _unit_label(unit: Unit, attached: dict) -> str:
    first, last = unit.first, unit.sites[-1]
    if unit.kind == "site":
        uses = len(first.applications)
        f_text = (f"F: {first.op}" + (f" ×{uses} uses" if uses > 1 else "")
                  + f"\nθ = {_short(first.variable)}\nσ′ {_shape(first.output_shape)}")
        extra = attached.get(first.index, [])
        if extra:
            f_text += "\n+ " + ", ".join(_short(e, 30) for e in extra[:2]) + (
                f" +{len(extra) - 2}" if len(extra) > 2 else "")
        t_text = f"T: r {_shape(first.accumulator_shape)}\n{_scaling(first)}"
        p_text = f"P: {_short(first.gradient_op_type, 30)}"
    elif unit.kind == "block":
        ops = " → ".join(s.op for s in unit.sites[:unit.period])
        f_text = (f"×{unit.count} block (sites {first.index}–{last.index})\n{_short(ops, 40)}"
                  f"\nθ = {_short(first.variable, 18)} … {_short(last.variable, 18)}")
        t_text = f"T ×{len(unit.sites)}\n{_scaling(first)}"
        p_text = f"P ×{len(unit.sites)}"
    else:
        f_text = (f"sites {first.index}–{last.index} (folded)\n{len(unit.sites)} sites"
                  f"\nθ = {_short(first.variable, 18)} … {_short(last.variable, 18)}")
        t_text = f"T ×{len(unit.sites)}"
        p_text = f"P ×{len(unit.sites)}"
    cells = (_cell(f_text, COLORS["site"]) + _cell(t_text, COLORS["T"])
             + _cell(p_text, COLORS["P"]))
    return ('<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="4"><TR>'
            + cells + "</TR></TABLE>>")


def overview_units(source: ExportSource, ir: GraphIR) -> list[Unit]:
    """The overview's rows: the sites in forward order (the original graph's node order),
    folded by ``fold_units``."""
    return fold_units(sorted(source.report.sites,
                             key=lambda s: (ir.order.get(_flat_node(s), 0), s.index)))


def overview_dot(source: ExportSource, ir: GraphIR | None = None,
                 units: list[Unit] | None = None) -> str:
    """The overview (see the module docstring). Boxes link to ``site_K_after.svg`` (the
    standalone SVG; the HTML page turns the links into its own anchors). ``ir``: the
    original graph's IR, when the caller has it."""
    ir = ir or GraphIR(source.original)
    units = units if units is not None else overview_units(source, ir)
    sites = [s for unit in units for s in unit.sites]
    unit_of = {s.index: u for u, unit in enumerate(units) for s in unit.sites}
    edges = {(unit_of[i], unit_of[j]) for i, j in site_edges(ir, sites)
             if unit_of[i] != unit_of[j]}
    attached = _attachments(ir, source)
    blocks = sum(1 for u in units if u.kind == "block")
    title = (f"{len(sites)} site(s) in {len(units)} row(s)"
             + (f", {blocks} repeated block(s) folded (×N)" if blocks else "")
             + "\nF (blue) · inserted T (green) · P (purple); forward edges blue, skips dashed")
    lines = ["digraph overview {", "  rankdir=TB; nodesep=0.3; ranksep=0.3;",
             '  node [shape=plain, fontname="Helvetica", fontsize=10];',
             '  edge [color="#2563eb", fontname="Helvetica", fontsize=9, arrowsize=0.7];',
             f"  label={_q(title)}; labelloc=t; fontname=\"Helvetica\"; fontsize=11;"]
    for u, unit in enumerate(units):
        target = f"site_{unit.first.index}_after.svg" + (
            "" if unit.kind == "site" else f"#block-{u}")
        lines.append(f"  unit_{u} [label={_unit_label(unit, attached)}, URL={_q(target)}, "
                     f"tooltip={_q(_short(unit.first.node, 200))}];")
    loss_label = "loss" + ("\n+ " + ", ".join(_short(e, 30) for e in attached[None][:2])
                           if attached.get(None) else "")
    lines.append(f"  loss [label={_q(loss_label)}, shape=box, style=\"rounded,filled\", "
                 f"fillcolor=\"{COLORS['loss']}\"];")
    skips = {}  # one skip per unit, the shortest (a residual), at most MAX_SKIP rows long
    for a, b in sorted(edges):
        if b == a + 1:
            lines.append(f"  unit_{a} -> unit_{b};")
        elif a + 1 < b <= a + MAX_SKIP and a not in skips:
            skips[a] = b
    for a, b in sorted(skips.items()):
        lines.append(f"  unit_{a} -> unit_{b} [style=dashed, constraint=false, "
                     'label="skip", color="#7c3aed"];')
    for u in range(len(units) - 1):  # keep the column in forward order
        if (u, u + 1) not in edges:
            lines.append(f"  unit_{u} -> unit_{u + 1} [style=invis];")
    sinks = [u for u in range(len(units)) if not any(a == u for a, _ in edges)]
    for u in sinks or [len(units) - 1]:
        lines.append(f"  unit_{u} -> loss;")
    lines.append("}")
    return "\n".join(lines) + "\n"


def compact_site_dot(source: ExportSource, site: SiteReport, ir: GraphIR) -> str:
    """Figure 6 (right) at its own size: θ (by variable name), x, F (σ'), g, the single T box
    (its formula as the label, with r) and P; pre-scaled, T sits on the red ĝ → P edge,
    post-scaled on P → update. At most 10 nodes. ``ir``: the original graph's IR."""
    app = site.applications[0] if site.applications else None
    post = app is not None and app.scaling == "post"
    loop = app.loop if app is not None else ""
    title = (f"site {site.index} after (compact): {site.op} on {site.variable}"
             + (f", inside the loop {_short(loop, 40)}" if loop else ""))
    t_label = (T_POST_LABEL if post else T_LABEL)
    lines = [f"digraph {_q(f'site_{site.index}_after')} {{", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9, color="#6b7280"];',
             f"  label={_q(title)}; labelloc=t; fontname=\"Helvetica\";",
             f"  theta [label={_q('θ = ' + _short(site.variable, 60))}, "
             f"fillcolor=\"{COLORS['leaf']}\"];",
             f"  F [label={_q(f'F: {site.op}' + chr(10) + 'σ′ ' + _shape(site.output_shape))}, "
             f"fillcolor=\"{COLORS['site']}\"];",
             f"  g [label={_q('g = ∂J/∂σ′')}, fillcolor=\"{COLORS['g']}\"];",
             f"  T [label={_q(t_label)}, fillcolor=\"{COLORS['T']}\", penwidth=2, "
             'color="#15803d"];',
             f"  r [label={_q('r ' + _shape(site.accumulator_shape))}, shape=cylinder, "
             f"fillcolor=\"{COLORS['T']}\"];",
             f"  P [label={_q(f'P: {site.gradient_op_type}')}, fillcolor=\"{COLORS['P']}\"];",
             f"  update [label={_q('update of θ')}, fillcolor=\"{COLORS['other']}\"];",
             f"  x [label={_q('x (F’s other input)')}, fillcolor=\"{COLORS['other']}\"];",
             "  theta -> F;", "  x -> F;", "  x -> P;",
             '  F -> g [style=dashed, label="loss, backprop"];', "  r -> T [dir=both];"]
    if post:
        lines += ["  g -> P;",
                  '  P -> T [color="#dc2626", penwidth=3, xlabel="P(x, g) rerouted", '
                  'fontcolor="#dc2626"];',
                  '  T -> update [color="#dc2626", penwidth=3, xlabel="P·f", '
                  'fontcolor="#dc2626"];', "  g -> T [style=dotted, label=\"mean(g²)\"];"]
    else:
        lines += ["  g -> T;",
                  '  T -> P [color="#dc2626", penwidth=3, xlabel="rerouted ĝ", '
                  'fontcolor="#dc2626"];', "  P -> update;"]
    lines.append("}")
    return "\n".join(lines) + "\n"
