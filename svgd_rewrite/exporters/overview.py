"""Pictures a person can read: the overview of a whole model and the Figure-6-sized site
picture.

The overview runs top to bottom (as Netron and TensorBoard do), one row per unit in forward
order. A unit is one site drawn as a single box of three cells — F with its θ and σ', the
inserted T with r's shape and how f reaches P, and P — or a *loop* (every site inside one
While loop, e.g. an LSTM's kernels, in one box "loop ×T"), or, for models of more than
``FOLD_ABOVE`` sites, a *folded block*: a run of identical segments drawn once as "×N".

Segments come from the forward graph's post-dominators (``structure.structure``): the sites
between two cuts form a segment (a residual block with its merge node, a projection-shortcut
block, or a single layer). A segment whose sites an identity path bypasses is drawn with its
merge node and a dashed skip into it. Everything is derived from the graph's structure, never
from names, and the picture stays one narrow column whatever the model: at most
``MAX_UNITS`` rows (beyond that runs of units are merged into ranges).
"""
from __future__ import annotations

import html
from collections import deque
from dataclasses import dataclass
from typing import Callable

from ..ir import GraphIR
from ..report import SiteReport
from .dot import _q
from .roles import ExportSource
from .structure import Structure, backward_ops, flat_node, shape_text, site_edges, structure

__all__ = ["FOLD_ABOVE", "MAX_UNITS", "Structure", "Unit", "compact_site_dot", "fold_units",
           "overview_dot", "overview_units", "site_edges", "structure"]

MAX_UNITS = 48  # rows of the overview; with the input and the loss, at most 50 boxes
MAX_PERIOD = 8  # the longest repeated run looked for, in segments
FOLD_ABOVE = 32  # up to this many sites no block is folded
MAX_NAMED = 3  # the loss box names this many other uses of θ, then "+N more"
T_LABEL = "T: r ← ρr + (1−ρ)·mean(g²)\nĝ = s·g / √(r + ε)"
T_POST_LABEL = "T: r ← ρr + (1−ρ)·mean(g²)\nP·f, f = s / √(r + ε)"
COLORS = {"site": "#93c5fd", "leaf": "#fde68a", "T": "#86efac", "P": "#c4b5fd",
          "loss": "#e5e7eb", "other": "#f3f4f6", "g": "#fca5a5", "scaled": "#fcd34d",
          "loop": "#e0f2fe", "block": "#ede9fe"}
SKIP_EDGE = ' [style=dashed, constraint=false, label="skip", color="#7c3aed"]'


def _short(name: str, n: int = 34) -> str:
    return name if len(name) <= n else name[: n // 2 - 1] + "…" + name[-(n - n // 2):]


def _tail(name: str, parts: int = 2) -> str:
    """The last ``parts`` components of a scoped name (``lstm_cell/kernel``)."""
    return "/".join(name.split("/")[-parts:])


def _loop(site: SiteReport) -> str:
    app = site.applications[0] if site.applications else None
    return app.loop if app is not None else ""


def _attachments(ir: GraphIR, source: ExportSource) -> dict[int | None, list[str]]:
    """The other trainable variables' consumers (the report's skipped V_θ→σ nodes), by the
    nearest site before them, else the nearest site they feed (an embedding lookup), else
    None: the loss (e.g. an L1 penalty on a kernel)."""
    by_node = {flat_node(s): s.index for s in source.report.sites}
    backward = backward_ops(ir, source.report.sites)
    out: dict[int | None, list[str]] = {}
    for k in source.report.skipped:
        if k.node not in ir.order:
            continue
        found = _nearest(k.node, lambda n: [t[0] for t in ir.data_inputs(n)], by_node)
        if found is None:
            found = _nearest(k.node, lambda n: [d for _, d, e in ir.g.out_edges(n, data=True)
                                                if not e["control"] and d not in backward],
                             by_node)
        label = f"{_tail(k.variable)} ({k.op})"
        if label not in out.setdefault(found, []):
            out[found].append(label)
    return out


def _nearest(start: str, step: Callable[[str], list[str]], by_node: dict[str, int]
             ) -> int | None:
    """The first site reached from ``start`` walking ``step`` (at most 2000 nodes)."""
    queue, seen = deque([start]), set()
    while queue and len(seen) < 2000:
        name = queue.popleft()
        if name in seen:
            continue
        seen.add(name)
        if name in by_node and name != start:
            return by_node[name]
        queue.extend(step(name))
    return None


@dataclass
class Unit:
    """One row of the overview: one site; a loop (the sites in one While, ``loop``); a folded
    block (``period`` sites repeated ``count`` times); or (past ``MAX_UNITS``) a range of
    units. ``segment``: the units of one segment share it; ``join``: the op of the segment's
    merge node, drawn after its last unit; ``skip``: an identity path bypasses the segment;
    ``skips``: a block's bypassed segments per repeat."""

    sites: list[SiteReport]
    period: int = 1
    count: int = 1
    kind: str = "site"  # site, loop, block, range
    segment: int = -1
    join: str = ""
    skip: bool = False
    skips: int = 0
    loop: str = ""

    @property
    def first(self) -> SiteReport:
        return self.sites[0]


def _signature(site: SiteReport, detail: str = "") -> tuple:
    return (site.op, tuple(site.output_shape[1:]), tuple(site.accumulator_shape),
            site.granularity, bool(_loop(site)), detail)


def _segment_units(seg: int, sites: list[SiteReport], st: Structure) -> list[Unit]:
    """A segment's units: one per site, one per loop."""
    units: list[Unit] = []
    join, skip = st.join.get(seg, ""), seg in st.skip
    for s in sites:
        loop = _loop(s)
        if loop and units and units[-1].loop == loop:
            units[-1].sites.append(s)
        else:
            units.append(Unit([s], kind="loop" if loop else "site", segment=seg, join=join,
                              skip=skip, loop=loop))
    return units


def _segment_groups(sites: list[SiteReport], st: Structure) -> list[list[SiteReport]]:
    """The sites cut into runs of consecutive sites of one segment."""
    groups: list[list[SiteReport]] = []
    for s in sites:
        if groups and st.segment[groups[-1][0].index] == st.segment[s.index]:
            groups[-1].append(s)
        else:
            groups.append([s])
    return groups


def _longest_repeat(sig: list[tuple], i: int) -> tuple[int, int]:
    """(period, count) of the run of identical repeats (of up to ``MAX_PERIOD`` segments)
    starting at segment ``i`` that covers the most segments; (1, 1) when none repeats."""
    best_period, best_count, n = 1, 1, len(sig)
    for p in range(1, MAX_PERIOD + 1):
        if i + 2 * p > n:
            break
        k = 1
        while i + (k + 1) * p <= n and sig[i + k * p:i + (k + 1) * p] == sig[i:i + p]:
            k += 1
        if k >= 2 and k * p > best_period * best_count:
            best_period, best_count = p, k
    return best_period, best_count


def _block_unit(run: list[list[SiteReport]], period: int, count: int, st: Structure) -> Unit:
    """The folded block of ``run``: ``count`` repeats of its first ``period`` segments."""
    segs = [st.segment[g[0].index] for g in run[:period]]
    single = period == 1
    return Unit([s for g in run for s in g], sum(map(len, run[:period])), count, "block",
                segment=segs[0], join=st.join.get(segs[0], "") if single else "",
                skip=single and segs[0] in st.skip, skips=sum(1 for s in segs if s in st.skip))


def _merge_ranges(units: list[Unit], max_units: int) -> list[Unit]:
    """``units`` in at most ``max_units`` rows: past that, consecutive units merged into
    ranges."""
    if len(units) <= max_units:
        return units
    per = -(-len(units) // max_units)
    merged = []
    for j in range(0, len(units), per):
        group = units[j:j + per]
        merged.append(group[0] if len(group) == 1 else
                      Unit([s for u in group for s in u.sites], kind="range", segment=-1 - j))
    return merged


def fold_units(sites: list[SiteReport], max_units: int = MAX_UNITS,
               st: Structure | None = None) -> list[Unit]:
    """Sites in forward order as overview rows (one per site, one per loop). Past
    ``FOLD_ABOVE`` sites, each run of up to ``MAX_PERIOD`` identical segments (same ops,
    shapes, θ shapes, strides, wiring and skip) repeated is one block unit; past ``max_units``
    rows consecutive units are merged into ranges. ``st``: the segments (default: one per
    site, no merges)."""
    st = st or Structure.one_per_site(sites)
    groups = _segment_groups(sites, st)
    sig = [_segment_signature(g, st) for g in groups]
    units: list[Unit] = []
    i = 0
    while i < len(groups):
        period, count = _longest_repeat(sig, i) if len(sites) > FOLD_ABOVE else (1, 1)
        if count >= 2:
            units.append(_block_unit(groups[i:i + period * count], period, count, st))
            i += period * count
        else:
            units += _segment_units(st.segment[groups[i][0].index], groups[i], st)
            i += 1
    return _merge_ranges(units, max_units)


def _segment_signature(group: list[SiteReport], st: Structure) -> tuple:
    pos = {s.index: k for k, s in enumerate(group)}
    wiring = tuple(sorted({(pos.get(i, -1), pos[j]) for i, j in st.edges if j in pos}))
    seg = st.segment[group[0].index]
    return (tuple(_signature(s, st.detail.get(s.index, "")) for s in group), wiring,
            st.join.get(seg, ""), seg in st.skip)


def _cell(text: str, color: str, bold_first: bool = True, span: int = 1) -> str:
    # Browsers draw Graphviz's text up to ~10 % wider than Graphviz measured it: pad each line.
    lines = [html.escape(line) + "&#160;" * (len(line) // 10 + 1) for line in text.split("\n")]
    if bold_first and lines:
        lines[0] = f"<B>{lines[0]}</B>"
    colspan = f' COLSPAN="{span}"' if span > 1 else ""
    return (f'<TD BGCOLOR="{color}" ALIGN="LEFT" BALIGN="LEFT"{colspan}>'
            f'{"<BR/>".join(lines)}</TD>')


def _scaling(site: SiteReport) -> str:
    kinds = {a.scaling for a in site.applications} or {"pre"}
    loop = " (loop)" if any(a.loop for a in site.applications) else ""
    if kinds == {"post"}:
        return "P's output × f" + loop
    if kinds == {"pre"}:
        return "ĝ = g·f feeds P" + loop
    return "ĝ and P·f" + loop


def _more(items: list[str], shown: int) -> list[str]:
    """The first ``shown`` items, then "+N more" counting the rest."""
    return items[:shown] + ([f"+{len(items) - shown} more"] if len(items) > shown else [])


def _site_cells(site: SiteReport, detail: str, extra: list[str], name_width: int = 34) -> str:
    uses = len(site.applications)
    f_text = (f"F: {site.op}" + (f" ×{uses} uses" if uses > 1 else "")
              + f"\nθ = {_short(site.variable, name_width)}" + (f"\n{detail}" if detail else "")
              + f"\nσ′ {shape_text(site.output_shape)}")
    if extra:
        f_text += "\n+ " + ", ".join(_more([_short(e, 30) for e in extra], 2))
    return (_cell(f_text, COLORS["site"])
            + _cell(f"T: r {shape_text(site.accumulator_shape)}\n{_scaling(site)}", COLORS["T"])
            + _cell(f"P: {_short(site.gradient_op_type, 30)}", COLORS["P"]))


def _unit_label(unit: Unit, attached: dict, detail: dict[int, str] | None = None) -> str:
    detail = detail or {}
    first, last = unit.first, unit.sites[-1]
    rows = []
    if unit.kind == "site":
        rows.append(_site_cells(first, detail.get(first.index, ""),
                                attached.get(first.index, [])))
    elif unit.kind == "loop":
        extra = [e for s in unit.sites for e in attached.get(s.index, [])]
        head = (f"loop ×T: {_short(_tail(unit.loop, 2), 40)} (While)\n{len(unit.sites)} "
                "kernel(s) applied at every step, one r each")
        if extra:
            head += "\n+ " + ", ".join(_more(extra, 2))
        rows.append(_cell(head, COLORS["loop"], span=3))
        rows += [_site_cells(s, detail.get(s.index, ""), []) for s in unit.sites]
    elif unit.kind == "block":
        what = "residual block" if unit.skip else "block"
        skips = f", {unit.skips} skip(s) each" if unit.skips and not unit.skip else ""
        head = (f"×{unit.count} {what} (sites {first.index}–{last.index})\n{unit.period} "
                f"site(s) each{skips}; the first repeat:")
        rows.append(_cell(head, COLORS["block"], span=3))
        rows += [_site_cells(s, detail.get(s.index, ""), [], 28)
                 for s in unit.sites[:unit.period]]
    else:
        f_text = (f"sites {first.index}–{last.index} (folded)\n{len(unit.sites)} sites"
                  f"\nθ = {_short(first.variable, 18)} … {_short(last.variable, 18)}")
        rows.append(_cell(f_text, COLORS["site"]) + _cell(f"T ×{len(unit.sites)}", COLORS["T"])
                    + _cell(f"P ×{len(unit.sites)}", COLORS["P"]))
    return ('<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="4">'
            + "".join(f"<TR>{r}</TR>" for r in rows) + "</TABLE>>")


def overview_units(source: ExportSource, ir: GraphIR,
                   st: Structure | None = None) -> list[Unit]:
    """The overview's rows: the sites in forward order (by segment, then the original graph's
    node order), folded by ``fold_units``."""
    st = st or structure(source, ir)
    return fold_units(sorted(source.report.sites, key=lambda s: (
        st.segment[s.index], ir.order.get(flat_node(s), 0), s.index)), st=st)


class _Column:
    """The overview's DOT lines as they are written: ``column`` holds the nodes top to bottom,
    ``drawn`` the visible edges."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.column: list[str] = []
        self.drawn: set[tuple[str, str]] = set()

    def node(self, name: str, attrs: str) -> None:
        """A node, appended to the bottom of the column."""
        self.lines.append(f"  {name} [{attrs}];")
        self.column.append(name)

    def edge(self, a: str, b: str, attrs: str = "") -> None:
        """A visible edge (once); one that skips rows of the column does not constrain the
        ranks."""
        if (a, b) not in self.drawn:
            self.drawn.add((a, b))
            adjacent = (self.column.index(b) == self.column.index(a) + 1
                        if b in self.column else True)
            extra = attrs or ("" if adjacent else " [constraint=false]")
            self.lines.append(f"  {a} -> {b}{extra};")


def _unit_preds(units: list[Unit], st: Structure) -> dict[int, set[int]]:
    """Unit → the other units it reads (from ``st.edges``)."""
    unit_of = {s.index: u for u, unit in enumerate(units) for s in unit.sites}
    preds: dict[int, set[int]] = {}
    for i, j in st.edges:
        if i in unit_of and j in unit_of and unit_of[i] != unit_of[j]:
            preds.setdefault(unit_of[j], set()).add(unit_of[i])
    return preds


def _header(units: list[Unit]) -> list[str]:
    """The graph's opening lines: layout, default styles and the title."""
    blocks = sum(1 for u in units if u.kind == "block")
    title = (f"{sum(len(unit.sites) for unit in units)} site(s) in {len(units)} row(s)"
             + (f", {blocks} repeated block(s) folded (×N)" if blocks else "")
             + "\nF (blue) · inserted T (green) · P (purple); forward edges blue, skips dashed")
    return ["digraph overview {", "  rankdir=TB; nodesep=0.3; ranksep=0.3;",
            '  node [shape=plain, fontname="Helvetica", fontsize=10];',
            '  edge [color="#2563eb", fontname="Helvetica", fontsize=9, arrowsize=0.7];',
            f"  label={_q(title)}; labelloc=t; fontname=\"Helvetica\"; fontsize=11;"]


def _segment_rows(units: list[Unit], u: int) -> list[int]:
    """The positions of unit ``u`` and the units after it in the same segment."""
    group = [u]
    while group[-1] + 1 < len(units) and units[group[-1] + 1].segment == units[u].segment:
        group.append(group[-1] + 1)
    return group


def _draw_segment_nodes(dot: _Column, units: list[Unit], group: list[int], attached: dict,
                        detail: dict[int, str]) -> str:
    """The segment's unit boxes and its merge node; returns the node its output leaves
    from (the merge node, else its last unit)."""
    for v in group:
        unit = units[v]
        target = f"site_{unit.first.index}_after.svg" + (
            "" if unit.kind == "site" else f"#block-{v}")
        dot.node(f"unit_{v}", f"label={_unit_label(unit, attached, detail)}, "
                 f"URL={_q(target)}, tooltip={_q(_short(unit.first.node, 200))}")
    join = units[group[0]].join
    if not join:
        return f"unit_{group[-1]}"
    dot.node(f"join_{group[-1]}", f"label={_q(join)}, shape=box, style=rounded, "
             "fontsize=9, margin=\"0.05,0.02\"")
    return f"join_{group[-1]}"


def _draw_segment_edges(dot: _Column, units: list[Unit], group: list[int],
                        preds: dict[int, set[int]], prev_out: str | None, out: str) -> None:
    """The edges into the segment's units (from units inside it, else from ``prev_out``, the
    previous segment's output) and into its merge node (from the units no other unit of the
    segment reads, and the dashed skip from ``prev_out``)."""
    for v in group:
        inside = sorted(p for p in preds.get(v, ()) if p in group)
        for p in inside:
            dot.edge(f"unit_{p}", f"unit_{v}")
        if prev_out and (preds.get(v, set()) - set(inside) or not inside):
            dot.edge(prev_out, f"unit_{v}")
    if not units[group[0]].join:
        return
    for v in group:
        if not any(v in preds.get(w, ()) for w in group):
            dot.edge(f"unit_{v}", out)
    if units[group[0]].skip and prev_out:
        dot.edge(prev_out, out, SKIP_EDGE)


def _draw_loss(dot: _Column, named: list[str]) -> None:
    """The loss box (counting the other uses of θ, ``named``), the invisible edges that keep
    the column in forward order and the edges into the loss from the nodes nothing leaves."""
    loss_label = "loss" + (f"\n+ {len(named)} other use(s) of θ:\n" + "\n".join(
        _more([_short(e, 40) for e in named], MAX_NAMED)) if named else "")
    dot.lines.append(f"  loss [label={_q(loss_label)}, shape=box, style=\"rounded,filled\", "
                     f"fillcolor=\"{COLORS['loss']}\"];")
    column = dot.column
    for a, b in zip(column, column[1:]):
        if (a, b) not in dot.drawn:
            dot.lines.append(f"  {a} -> {b} [style=invis];")
    sources = {a for a, _ in dot.drawn}
    for name in [n for n in column if n not in sources] or column[-1:]:
        dot.lines.append(f"  {name} -> loss;")


def overview_dot(source: ExportSource, ir: GraphIR | None = None,
                 units: list[Unit] | None = None, st: Structure | None = None) -> str:
    """The overview (see the module docstring). Boxes link to ``site_K_after.svg`` (the
    standalone SVG; the HTML page turns the links into its own anchors). ``ir``: the
    original graph's IR, ``units`` and ``st`` (its ``structure``), when the caller has them."""
    ir = ir or GraphIR(source.original)
    st = st or structure(source, ir)
    units = units if units is not None else overview_units(source, ir, st)
    preds, attached = _unit_preds(units, st), _attachments(ir, source)
    dot = _Column(_header(units))
    prev_out, u = None, 0
    if units and units[0].skip:  # a skip around the first segment starts at the input
        prev_out = "input"
        dot.node(prev_out, 'label="input", shape=box, style=rounded')
    while u < len(units):
        group = _segment_rows(units, u)
        out = _draw_segment_nodes(dot, units, group, attached, st.detail)
        _draw_segment_edges(dot, units, group, preds, prev_out, out)
        prev_out, u = out, group[-1] + 1
    _draw_loss(dot, attached.get(None, []))
    dot.lines.append("}")
    return "\n".join(dot.lines) + "\n"


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
    f_label = f"F: {site.op}\nσ′ {shape_text(site.output_shape)}"
    lines = [f"digraph {_q(f'site_{site.index}_after')} {{", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9, color="#6b7280"];',
             f"  label={_q(title)}; labelloc=t; fontname=\"Helvetica\";",
             f"  theta [label={_q('θ = ' + _short(site.variable, 60))}, "
             f"fillcolor=\"{COLORS['leaf']}\"];",
             f"  F [label={_q(f_label)}, fillcolor=\"{COLORS['site']}\"];",
             f"  g [label={_q('g = ∂J/∂σ′')}, fillcolor=\"{COLORS['g']}\"];",
             f"  T [label={_q(t_label)}, fillcolor=\"{COLORS['T']}\", penwidth=2, "
             'color="#15803d"];',
             f"  r [label={_q('r ' + shape_text(site.accumulator_shape))}, shape=cylinder, "
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
