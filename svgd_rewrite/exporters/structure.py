"""The forward graph's structure behind the overview: which sites read which (``site_edges``)
and the segments they form (``structure``).

Segments come from the forward graph's post-dominators: a *cut* is a node every forward path
from the sites before it passes through; the sites between two cuts form a segment (a
residual block with its merge node, a projection-shortcut block, or a single layer). A
segment whose sites an identity path bypasses has a *skip* into its merge node. Everything is
derived from the graph's structure, never from names.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import networkx as nx

from ..ir import GraphIR, Tensor
from ..report import SiteReport
from .roles import ExportSource

SHAPE_OPS = {"Shape", "ShapeN", "Size", "Rank"}  # read a tensor's shape, not its values
SINK = ("sink",)  # the post-dominator tree's root; not a node name


def shape_text(dims) -> str:
    """A shape as ``32x32x16`` (``?`` for an unknown dimension, ``scalar`` for none)."""
    return "x".join("?" if d is None else str(d) for d in dims) or "scalar"


def flat_node(site: SiteReport) -> str:
    """The node of the flat graph that holds the site's F (its loop, for a loop site)."""
    app = site.applications[0] if site.applications else None
    return app.loop if app is not None and app.loop else site.node


def backward_ops(ir: GraphIR, sites: list[SiteReport]) -> set[str]:
    """The backward ops: every g and its descendants."""
    gs = [Tensor.parse(s.upstream_gradient) for s in sites if s.node in ir.order]
    return ir.descendants(gs) | {g[0] for g in gs}


def _forward_inputs(ir: GraphIR, site: SiteReport, node: str) -> list[str]:
    """The nodes ``node`` (the site's flat node) reads, θ's input of the site's F left out."""
    return [t[0] for k, t in enumerate(ir.data_inputs(node))
            if node != site.node or k != site.param_input]


def _sites_read(ir: GraphIR, start: list[str], by_node: dict[str, int],
                backward: set[str]) -> set[int]:
    """The sites whose flat nodes are the first ones reached walking up from ``start``
    through non-site forward ops (backward ops and shape reads are not walked)."""
    found, queue, seen = set(), deque(start), set()
    while queue:
        name = queue.popleft()
        if name in seen or name in backward or ir.op(name) in SHAPE_OPS:
            continue
        seen.add(name)
        if name in by_node:
            found.add(by_node[name])
            continue
        queue.extend(t[0] for t in ir.data_inputs(name))
    return found


def site_edges(ir: GraphIR, sites: list[SiteReport]) -> set[tuple[int, int]]:
    """(i, j): site j reads site i's output through non-site forward ops (backward ops, i.e.
    the descendants of every g, and shape reads are not walked)."""
    by_node: dict[str, int] = {}
    for s in sites:
        by_node.setdefault(flat_node(s), s.index)
    backward = backward_ops(ir, sites)
    edges = set()
    for s in sites:
        node = flat_node(s)
        if node in ir.order:
            edges |= {(i, s.index) for i in _sites_read(ir, _forward_inputs(ir, s, node),
                                                        by_node, backward) if i != s.index}
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

    @classmethod
    def one_per_site(cls, sites: list[SiteReport], edges: set[tuple[int, int]] | None = None,
                     detail: dict[int, str] | None = None) -> Structure:
        """One segment per site, in the given order, and no merges."""
        return cls({s.index: k for k, s in enumerate(sites)}, {}, set(),
                   set() if edges is None else edges, {} if detail is None else detail)


def _details(source: ExportSource, ir: GraphIR) -> dict[int, str]:
    """θ's shape and F's stride (when above 1) per site."""
    out = {}
    for s in source.report.sites:
        info = source.variables.get(s.variable_node)
        text = f"θ {shape_text(info.shape)}" if info is not None else ""
        if s.node in ir.order and "strides" in ir.node(s.node).attr:
            stride = max(ir.node(s.node).attr["strides"].list.i or [1])
            text += f", stride {stride}" if stride > 1 else ""
        out[s.index] = text
    return out


def _entry(ir: GraphIR, sites: list[SiteReport], node_of: dict[int, str],
           backward: set[str]) -> tuple[str, str | None]:
    """The first site's flat node and what that site reads (None: a backward op or
    nothing, e.g. the first site is a loop)."""
    first = min(node_of.values(), key=ir.order.get)
    first_site = next(s for s in sites if node_of.get(s.index) == first)
    xs = [t[0] for k, t in enumerate(ir.data_inputs(first))
          if first == first_site.node and k != first_site.param_input]
    return first, (xs[0] if xs and xs[0] not in backward else None)


def _forward_region(ir: GraphIR, site_nodes: set[str], entry: str | None,
                    backward: set[str]) -> nx.DiGraph:
    """What the sites' outputs (and ``entry``) reach over forward data edges."""
    fwd, queue = nx.DiGraph(), deque(site_nodes | ({entry} if entry else set()))
    fwd.add_nodes_from(queue)
    while queue:
        name = queue.popleft()
        for _, dst, data in ir.g.out_edges(name, data=True):
            if (not data["control"] and dst not in backward and ir.op(dst) not in SHAPE_OPS
                    and not fwd.has_edge(name, dst)):
                queue.extend([] if dst in fwd else [dst])
                fwd.add_edge(name, dst)
    return fwd


def _last_sites_region(fwd: nx.DiGraph, site_nodes: set[str]) -> tuple[nx.DiGraph, set[str]]:
    """The last sites (those that reach no other site) and the part of ``fwd`` that reaches
    one of them."""
    reaches_site, reaches_last = {}, {}
    for name in reversed(list(nx.topological_sort(fwd))):
        reaches_site[name] = any(d in site_nodes or reaches_site[d] for d in fwd.succ[name])
    last = {n for n in site_nodes if not reaches_site[n]}
    for name in reversed(list(nx.topological_sort(fwd))):
        reaches_last[name] = name in last or any(reaches_last[d] for d in fwd.succ[name])
    return fwd.subgraph(n for n, r in reaches_last.items() if r), last


def _post_dominators(region: nx.DiGraph, last: set[str], start: str
                     ) -> tuple[list, dict]:
    """The chain of post-dominators of ``start`` down to ``SINK`` (every last site feeds
    ``SINK``) and the immediate post-dominator of each node."""
    rev = region.reverse(copy=True)
    rev.add_edges_from((SINK, n) for n in last)
    ipdom = nx.immediate_dominators(rev, SINK)
    chain = [start]
    while chain[-1] != SINK:
        chain.append(ipdom[chain[-1]])
    return chain, ipdom


def _last_chain_node_before(node: str, region: nx.DiGraph, index: dict) -> int:
    """The position on the chain of the last chain node before ``node`` (-1: none)."""
    before, queue, seen = -1, deque([node]), set()
    while queue:
        name = queue.popleft()
        if name in seen:
            continue
        seen.add(name)
        if name in index:
            before = max(before, index[name])
            continue
        queue.extend(region.pred[name])
    return before


def _first_post_dominator(node: str, ipdom: dict, index: dict) -> int:
    """The position of the first chain node that post-dominates ``node``."""
    walk = node
    while walk not in index:
        walk = ipdom[walk]
    return index[walk]


def _cuts(chain: list, ipdom: dict, region: nx.DiGraph, site_nodes: set[str]
          ) -> tuple[list[int], dict[str, int]]:
    """The chain positions that are cuts (no site's span, from the last chain node before it
    to its first post-dominator on the chain, straddles them; the chain's end always is one),
    and each site node's first post-dominator on the chain."""
    index = {n: k for k, n in enumerate(chain)}
    not_cut = [0] * (len(chain) + 1)
    first_pdom = {}
    for node in site_nodes:
        first_pdom[node] = _first_post_dominator(node, ipdom, index)
        before = _last_chain_node_before(node, region, index)
        if before + 1 < first_pdom[node]:
            not_cut[before + 1] += 1
            not_cut[first_pdom[node]] -= 1
    cuts, running = [], 0
    for k in range(len(chain)):
        running += not_cut[k]
        if running == 0 or k == len(chain) - 1:
            cuts.append(k)
    return cuts, first_pdom


def _merges(ir: GraphIR, region: nx.DiGraph, chain: list, used: list[int],
            site_nodes: set[str]) -> tuple[dict[int, str], set[int]]:
    """``join`` and ``skip`` of ``Structure`` for the segments ending at the cuts ``used``."""
    join, skip = {}, set()
    for k, cut in enumerate(used):
        merge = chain[cut]
        if merge == SINK or merge in site_nodes:
            continue
        join[k] = ir.op(merge)
        if _bypassed(region, chain[used[k - 1]] if k else chain[0], merge, site_nodes):
            skip.add(k)  # the first segment's skip starts at what the first site reads
    return join, skip


def structure(source: ExportSource, ir: GraphIR) -> Structure:
    """Segments of the sites (see the module docstring). A graph whose forward part has a
    cycle (a v1 loop) gets one segment per site and no merges."""
    sites = source.report.sites
    edges, detail = site_edges(ir, sites), _details(source, ir)
    trivial = Structure.one_per_site(sites, edges, detail)
    node_of = {s.index: flat_node(s) for s in sites if flat_node(s) in ir.order}
    site_nodes = set(node_of.values())
    if not site_nodes:
        return trivial
    backward = backward_ops(ir, sites)
    first, entry = _entry(ir, sites, node_of, backward)
    fwd = _forward_region(ir, site_nodes, entry, backward)
    if not nx.is_directed_acyclic_graph(fwd):
        return trivial
    region, last = _last_sites_region(fwd, site_nodes)
    chain, ipdom = _post_dominators(region, last, entry or first)
    cuts, first_pdom = _cuts(chain, ipdom, region, site_nodes)
    first_cut = {n: next(c for c in cuts if c >= first_pdom[n]) for n in site_nodes}
    used = sorted(set(first_cut.values()))
    segment = {i: used.index(first_cut[n]) for i, n in node_of.items()}
    for s in sites:  # sites outside the flat graph: one segment each, at the end
        segment.setdefault(s.index, len(used) + s.index)
    join, skip = _merges(ir, region, chain, used, site_nodes)
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
