"""Pictures a person can read: the overview of a whole model and the Figure-6-sized site
picture.

The overview runs top to bottom (as Netron and TensorBoard do), one row per unit in forward
order. A unit is one site drawn as a single box of three cells — F with its θ and σ', the
inserted T with r's shape and how f reaches P, and P — or a *loop* (every site inside one
While loop, e.g. an LSTM's kernels, in one box "loop ×T"), or, for models of more than
``FOLD_ABOVE`` sites, a *folded block*: a run of identical segments drawn once as "×N".

Segments come from the forward graph's post-dominators: a *cut* is a node every forward path
from the sites before it passes through; the sites between two cuts form a segment (a
residual block with its merge node, a projection-shortcut block, or a single layer). A
segment whose sites an identity path bypasses is drawn with its merge node and a dashed skip
into it. Everything is derived from the graph's structure, never from names, and the
picture stays one narrow column whatever the model: at most ``MAX_UNITS`` rows (beyond that
runs of units are merged into ranges).
"""
from __future__ import annotations

import html
from collections import deque
from dataclasses import dataclass
from typing import Callable

import networkx as nx

from ..ir import GraphIR, Tensor
from ..report import SiteReport
from .dot import _q
from .roles import ExportSource

MAX_UNITS = 48  # rows of the overview; with the input and the loss, at most 50 boxes
MAX_PERIOD = 8  # the longest repeated run looked for, in segments
FOLD_ABOVE = 32  # up to this many sites no block is folded
SHAPE_OPS = {"Shape", "ShapeN", "Size", "Rank"}  # read a tensor's shape, not its values
MAX_NAMED = 3  # the loss box names this many other uses of θ, then "+N more"
T_LABEL = "T: r ← ρr + (1−ρ)·mean(g²)\nĝ = s·g / √(r + ε)"
T_POST_LABEL = "T: r ← ρr + (1−ρ)·mean(g²)\nP·f, f = s / √(r + ε)"
COLORS = {"site": "#93c5fd", "leaf": "#fde68a", "T": "#86efac", "P": "#c4b5fd",
          "loss": "#e5e7eb", "other": "#f3f4f6", "g": "#fca5a5", "scaled": "#fcd34d",
          "loop": "#e0f2fe", "block": "#ede9fe"}


def _short(name: str, n: int = 34) -> str:
    return name if len(name) <= n else name[: n // 2 - 1] + "…" + name[-(n - n // 2):]


def _tail(name: str, parts: int = 2) -> str:
    """The last ``parts`` components of a scoped name (``lstm_cell/kernel``)."""
    return "/".join(name.split("/")[-parts:])


def _shape(dims) -> str:
    return "x".join("?" if d is None else str(d) for d in dims) or "scalar"


def _flat_node(site: SiteReport) -> str:
    """The node of the flat graph that holds the site's F (its loop, for a loop site)."""
    app = site.applications[0] if site.applications else None
    return app.loop if app is not None and app.loop else site.node


def _loop(site: SiteReport) -> str:
    app = site.applications[0] if site.applications else None
    return app.loop if app is not None else ""


def _backward(ir: GraphIR, sites: list[SiteReport]) -> set[str]:
    """The backward ops: every g and its descendants."""
    gs = [Tensor.parse(s.upstream_gradient) for s in sites if s.node in ir.order]
    return ir.descendants(gs) | {g[0] for g in gs}


def site_edges(ir: GraphIR, sites: list[SiteReport]) -> set[tuple[int, int]]:
    """(i, j): site j reads site i's output through non-site forward ops (backward ops, i.e.
    the descendants of every g, and shape reads are not walked)."""
    by_node: dict[str, int] = {}
    for s in sites:
        by_node.setdefault(_flat_node(s), s.index)
    backward = _backward(ir, sites)
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
            if name in seen or name in backward or ir.op(name) in SHAPE_OPS:
                continue
            seen.add(name)
            if name in by_node:
                if by_node[name] != s.index:
                    edges.add((by_node[name], s.index))
                continue
            queue.extend(t[0] for t in ir.data_inputs(name))
    return edges


@dataclass
class Structure:
    """The forward graph's segments: ``segment`` (site index → segment, in forward order),
    ``join`` (segment → the op of its merge node, for a segment that ends at a merge),
    ``skip`` (segments an identity path bypasses), ``edges`` (``site_edges``) and
    ``detail`` (site index → θ's shape and stride, e.g. ``θ 1x1x16x32, stride 2``)."""

    segment: dict[int, int]
    join: dict[int, str]
    skip: set[int]
    edges: set[tuple[int, int]]
    detail: dict[int, str]


def _details(source: ExportSource, ir: GraphIR) -> dict[int, str]:
    """θ's shape and F's stride (when above 1) per site."""
    out = {}
    for s in source.report.sites:
        info = source.variables.get(s.variable_node)
        text = f"θ {_shape(info.shape)}" if info is not None else ""
        if s.node in ir.order and "strides" in ir.node(s.node).attr:
            stride = max(ir.node(s.node).attr["strides"].list.i or [1])
            text += f", stride {stride}" if stride > 1 else ""
        out[s.index] = text
    return out


def structure(source: ExportSource, ir: GraphIR) -> Structure:
    """Segments of the sites (see the module docstring). A graph whose forward part has a
    cycle (a v1 loop) gets one segment per site and no merges."""
    sites = source.report.sites
    edges, detail = site_edges(ir, sites), _details(source, ir)
    trivial = Structure({s.index: k for k, s in enumerate(sites)}, {}, set(), edges, detail)
    node_of = {s.index: _flat_node(s) for s in sites if _flat_node(s) in ir.order}
    site_nodes = set(node_of.values())
    if not site_nodes:
        return trivial
    backward = _backward(ir, sites)
    first = min(site_nodes, key=ir.order.get)
    first_site = next(s for s in sites if node_of.get(s.index) == first)
    xs = [t[0] for k, t in enumerate(ir.data_inputs(first))
          if first == first_site.node and k != first_site.param_input]
    entry = xs[0] if xs and xs[0] not in backward else None  # what the first site reads
    fwd, queue = nx.DiGraph(), deque(site_nodes | ({entry} if entry else set()))
    fwd.add_nodes_from(queue)
    while queue:  # the forward region: what the sites' outputs reach
        name = queue.popleft()
        for _, dst, data in ir.g.out_edges(name, data=True):
            if (not data["control"] and dst not in backward and ir.op(dst) not in SHAPE_OPS
                    and not fwd.has_edge(name, dst)):
                queue.extend([] if dst in fwd else [dst])
                fwd.add_edge(name, dst)
    if not nx.is_directed_acyclic_graph(fwd):
        return trivial
    reaches_site, reaches_last = {}, {}
    for name in reversed(list(nx.topological_sort(fwd))):
        reaches_site[name] = any(d in site_nodes or reaches_site[d] for d in fwd.succ[name])
    last = {n for n in site_nodes if not reaches_site[n]}
    for name in reversed(list(nx.topological_sort(fwd))):
        reaches_last[name] = name in last or any(reaches_last[d] for d in fwd.succ[name])
    region = fwd.subgraph(n for n, r in reaches_last.items() if r)
    sink = ("sink",)  # not a node name
    rev = region.reverse(copy=True)
    rev.add_edges_from((sink, n) for n in last)
    ipdom = nx.immediate_dominators(rev, sink)
    chain = [entry or first]
    while chain[-1] != sink:
        chain.append(ipdom[chain[-1]])
    index = {n: k for k, n in enumerate(chain)}
    not_cut = [0] * (len(chain) + 1)
    first_pdom = {}
    for node in site_nodes:
        walk = node
        while walk not in index:
            walk = ipdom[walk]
        first_pdom[node] = index[walk]
        before, queue, seen = -1, deque([node]), set()
        while queue:  # the last chain node before the site
            name = queue.popleft()
            if name in seen:
                continue
            seen.add(name)
            if name in index:
                before = max(before, index[name])
                continue
            queue.extend(region.pred[name])
        if before + 1 < first_pdom[node]:
            not_cut[before + 1] += 1
            not_cut[first_pdom[node]] -= 1
    cuts, running = [], 0
    for k in range(len(chain)):
        running += not_cut[k]
        if running == 0 or k == len(chain) - 1:
            cuts.append(k)
    first_cut = {n: next(c for c in cuts if c >= first_pdom[n]) for n in site_nodes}
    used = sorted(set(first_cut.values()))
    segment = {i: used.index(first_cut[n]) for i, n in node_of.items()}
    for s in sites:  # sites outside the flat graph: one segment each, at the end
        segment.setdefault(s.index, len(used) + s.index)
    join, skip = {}, set()
    for k, cut in enumerate(used):
        merge = chain[cut]
        if merge == sink or merge in site_nodes:
            continue
        join[k] = ir.op(merge)
        if _bypassed(region, chain[used[k - 1]] if k else chain[0], merge, site_nodes):
            skip.add(k)  # the first segment's skip starts at what the first site reads
    return Structure(segment, join, skip, edges, detail)


def _bypassed(region: nx.DiGraph, start: str, target: str, site_nodes: set[str]) -> bool:
    """Whether a forward path from ``start`` reaches ``target`` through no site."""
    queue, seen = deque([start]), {start}
    while queue:
        for dst in region.succ[queue.popleft()]:
            if dst == target:
                return True
            if dst not in seen and dst not in site_nodes:
                seen.add(dst)
                queue.append(dst)
    return False


def _attachments(ir: GraphIR, source: ExportSource) -> dict[int | None, list[str]]:
    """The other trainable variables' consumers (the report's skipped V_θ→σ nodes), by the
    nearest site before them, else the nearest site they feed (an embedding lookup), else
    None: the loss (e.g. an L1 penalty on a kernel)."""
    by_node = {_flat_node(s): s.index for s in source.report.sites}
    backward = _backward(ir, source.report.sites)
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


def fold_units(sites: list[SiteReport], max_units: int = MAX_UNITS,
               st: Structure | None = None) -> list[Unit]:
    """Sites in forward order as overview rows (one per site, one per loop). Past
    ``FOLD_ABOVE`` sites, each run of up to ``MAX_PERIOD`` identical segments (same ops,
    shapes, θ shapes, strides, wiring and skip) repeated is one block unit; past ``max_units``
    rows consecutive units are merged into ranges. ``st``: the segments (default: one per
    site, no merges)."""
    st = st or Structure({s.index: k for k, s in enumerate(sites)}, {}, set(), set(), {})
    groups: list[list[SiteReport]] = []
    for s in sites:
        if groups and st.segment[groups[-1][0].index] == st.segment[s.index]:
            groups[-1].append(s)
        else:
            groups.append([s])
    sig = [_segment_signature(g, st) for g in groups]
    units: list[Unit] = []
    i, n = 0, len(groups)
    while i < n:
        best_period, best_count = 1, 1
        for p in range(1, MAX_PERIOD + 1) if len(sites) > FOLD_ABOVE else ():
            if i + 2 * p > n:
                break
            k = 1
            while i + (k + 1) * p <= n and sig[i + k * p:i + (k + 1) * p] == sig[i:i + p]:
                k += 1
            if k >= 2 and k * p > best_period * best_count:
                best_period, best_count = p, k
        if best_count >= 2:
            run = groups[i:i + best_period * best_count]
            segs = [st.segment[g[0].index] for g in run[:best_period]]
            single = best_period == 1
            units.append(Unit([s for g in run for s in g], sum(map(len, run[:best_period])),
                              best_count, "block", segment=segs[0],
                              join=st.join.get(segs[0], "") if single else "",
                              skip=single and segs[0] in st.skip,
                              skips=sum(1 for s in segs if s in st.skip)))
            i += best_period * best_count
        else:
            units += _segment_units(st.segment[groups[i][0].index], groups[i], st)
            i += 1
    if len(units) > max_units:
        per = -(-len(units) // max_units)
        merged = []
        for j in range(0, len(units), per):
            group = units[j:j + per]
            merged.append(group[0] if len(group) == 1 else
                          Unit([s for u in group for s in u.sites], kind="range",
                               segment=-1 - j))
        units = merged
    return units


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
              + f"\nσ′ {_shape(site.output_shape)}")
    if extra:
        f_text += "\n+ " + ", ".join(_more([_short(e, 30) for e in extra], 2))
    return (_cell(f_text, COLORS["site"])
            + _cell(f"T: r {_shape(site.accumulator_shape)}\n{_scaling(site)}", COLORS["T"])
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
        st.segment[s.index], ir.order.get(_flat_node(s), 0), s.index)), st=st)


def overview_dot(source: ExportSource, ir: GraphIR | None = None,
                 units: list[Unit] | None = None, st: Structure | None = None) -> str:
    """The overview (see the module docstring). Boxes link to ``site_K_after.svg`` (the
    standalone SVG; the HTML page turns the links into its own anchors). ``ir``: the
    original graph's IR, ``units`` and ``st`` (its ``structure``), when the caller has them."""
    ir = ir or GraphIR(source.original)
    st = st or structure(source, ir)
    units = units if units is not None else overview_units(source, ir, st)
    sites = [s for unit in units for s in unit.sites]
    unit_of = {s.index: u for u, unit in enumerate(units) for s in unit.sites}
    preds: dict[int, set[int]] = {}
    for i, j in st.edges:
        if i in unit_of and j in unit_of and unit_of[i] != unit_of[j]:
            preds.setdefault(unit_of[j], set()).add(unit_of[i])
    attached = _attachments(ir, source)
    blocks = sum(1 for u in units if u.kind == "block")
    title = (f"{len(sites)} site(s) in {len(units)} row(s)"
             + (f", {blocks} repeated block(s) folded (×N)" if blocks else "")
             + "\nF (blue) · inserted T (green) · P (purple); forward edges blue, skips dashed")
    lines = ["digraph overview {", "  rankdir=TB; nodesep=0.3; ranksep=0.3;",
             '  node [shape=plain, fontname="Helvetica", fontsize=10];',
             '  edge [color="#2563eb", fontname="Helvetica", fontsize=9, arrowsize=0.7];',
             f"  label={_q(title)}; labelloc=t; fontname=\"Helvetica\"; fontsize=11;"]
    column, drawn = [], set()  # the nodes top to bottom; the visible edges

    def edge(a: str, b: str, attrs: str = "") -> None:
        if (a, b) not in drawn:
            drawn.add((a, b))
            adjacent = column.index(b) == column.index(a) + 1 if b in column else True
            extra = attrs or ("" if adjacent else " [constraint=false]")
            lines.append(f"  {a} -> {b}{extra};")

    prev_out, u = None, 0
    if units and units[0].skip:  # a skip around the first segment starts at the input
        prev_out = "input"
        lines.append('  input [label="input", shape=box, style=rounded];')
        column.append(prev_out)
    while u < len(units):
        group = [u]
        while group[-1] + 1 < len(units) and units[group[-1] + 1].segment == units[u].segment:
            group.append(group[-1] + 1)
        for v in group:
            unit = units[v]
            target = f"site_{unit.first.index}_after.svg" + (
                "" if unit.kind == "site" else f"#block-{v}")
            lines.append(f"  unit_{v} [label={_unit_label(unit, attached, st.detail)}, "
                         f"URL={_q(target)}, tooltip={_q(_short(unit.first.node, 200))}];")
            column.append(f"unit_{v}")
        out = f"join_{group[-1]}" if units[u].join else f"unit_{group[-1]}"
        if units[u].join:
            lines.append(f"  {out} [label={_q(units[u].join)}, shape=box, style=rounded, "
                         "fontsize=9, margin=\"0.05,0.02\"];")
            column.append(out)
        for v in group:
            inside = sorted(p for p in preds.get(v, ()) if p in group)
            for p in inside:
                edge(f"unit_{p}", f"unit_{v}")
            if prev_out and (preds.get(v, set()) - set(inside) or not inside):
                edge(prev_out, f"unit_{v}")
        if units[u].join:
            for v in group:
                if not any(v in preds.get(w, ()) for w in group):
                    edge(f"unit_{v}", out)
            if units[u].skip and prev_out:
                edge(prev_out, out, ' [style=dashed, constraint=false, label="skip", '
                     'color="#7c3aed"]')
        prev_out, u = out, group[-1] + 1
    named = attached.get(None, [])
    loss_label = "loss" + (f"\n+ {len(named)} other use(s) of θ:\n" + "\n".join(
        _more([_short(e, 40) for e in named], MAX_NAMED)) if named else "")
    lines.append(f"  loss [label={_q(loss_label)}, shape=box, style=\"rounded,filled\", "
                 f"fillcolor=\"{COLORS['loss']}\"];")
    for a, b in zip(column, column[1:]):  # keep the column in forward order
        if (a, b) not in drawn:
            lines.append(f"  {a} -> {b} [style=invis];")
    sources = {a for a, _ in drawn}
    for name in [n for n in column if n not in sources] or column[-1:]:
        lines.append(f"  {name} -> loss;")
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
