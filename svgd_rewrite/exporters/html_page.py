"""``index.html``: one self-contained page (the overview, the report's tables, a section per
folded block and per site with its before/after pictures inline) that opens from disk with
no server. Pictures keep their natural size: the overview scrolls vertically, never shrinks,
and every site picture is drawn at the same scale."""
from __future__ import annotations

import html
import os
import re

from ..report import Report

_STYLE = """
body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#111827;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 16px;table-layout:auto;max-width:100%}
td,th{border:1px solid #d1d5db;padding:3px 8px;font-size:13px;text-align:left;
overflow-wrap:anywhere;word-break:break-word;vertical-align:top}th{background:#f3f4f6}
section.site,section.block{border-top:2px solid #e5e7eb;padding-top:8px;margin-top:16px}
.pair{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
.pair figure{margin:0;border:1px solid #e5e7eb;padding:6px;max-width:100%;overflow-x:auto}
.overview{overflow-x:auto}figure{margin:0}
.warn{color:#b45309}pre{background:#f9fafb;padding:8px;overflow:auto;font-size:11px}
.legend span{display:inline-block;padding:2px 8px;margin-right:6px;border-radius:4px;font-size:12px}
"""

# Marks the page once loaded: how many sections and how many images failed to load.
_CHECK = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-broken-images', String(broken.length));
  document.body.setAttribute('data-sites', String(document.querySelectorAll('section.site').length));
});
"""


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _inline_svg(path: str | None, dot_source: str) -> str:
    """The SVG at its natural size (Graphviz's width and height in points kept), or the DOT
    source when Graphviz is missing."""
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            svg = f.read()
        return re.sub(r"^.*?(<svg)", r"\1", svg, count=1, flags=re.S)
    return f"<pre>{_esc(dot_source)}</pre><p class=warn>Graphviz (dot) was not found: DOT source shown.</p>"


def _page_links(svg: str) -> str:
    """The standalone overview's links (``site_K_after.svg``, ``…#block-U``) as the page's
    anchors."""
    svg = re.sub(r'href="site_\d+_after\.svg#(block-\d+)"', r'href="#\1"', svg)
    return re.sub(r'href="site_(\d+)_after\.svg"', r'href="#site-\1"', svg)


def _kept_table(report: Report) -> list[str]:
    """The ops kept as identity, grouped by op and reason."""
    if not report.skipped:
        return []
    groups: dict[tuple[str, str], list] = {}
    for k in report.skipped:
        groups.setdefault((k.op, k.reason), []).append(k)
    return ["<h2>Kept as identity</h2><table><tr><th>count</th><th>op</th>"
            "<th>reason</th><th>variables θ (nodes)</th></tr>" + "".join(
                f"<tr><td>{len(ks)}</td><td>{_esc(op)}</td><td>{_esc(reason)}</td>"
                f"<td>{_esc(', '.join(f'{k.variable} ({k.node})' for k in ks[:20]))}"
                f"{' …' if len(ks) > 20 else ''}</td></tr>"
                for (op, reason), ks in groups.items()) + "</table>"]


def _trained_table(trained: dict | None) -> list[str]:
    """The accumulators after training, per layer (a step object that has run)."""
    if not trained:
        return []
    steps = trained.get("steps")
    rows = "".join(f"<tr><td>{_esc(name)}</td><td>{f['r_mean']:.4g}</td><td>{f['r_min']:.4g}"
                   f"</td><td>{f['r_max']:.4g}</td></tr>"
                   for name, f in trained["sites"].items())
    return [f"<h2 id='trained'>r after training"
            f"{f' ({steps} step(s))' if steps is not None else ''}</h2><table><tr>"
            "<th>variable θ</th><th>r mean</th><th>r min</th><th>r max</th></tr>"
            f"{rows}</table>"]


def write_html(report: Report, pictures: dict, out_dir: str, colors: dict[str, str]) -> str:
    """``pictures``: {"sites": [(site, before_svg, before_dot, after_svg, after_dot,
    detail_svg, detail_dot)], "overview": (svg, dot), "units": overview rows, "trained": r after
    training per site or None}. The overview
    comes first; its boxes link to each site's or block's section, and each links back."""
    o, m = report.options, report.memory
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
             "<title>svgd-rewrite report</title>", f"<style>{_STYLE}</style>",
             f"<script>{_CHECK}</script></head><body>",
             "<h1>svgd-rewrite: what was found and what was rewired</h1>",
             f"<p>{len(report.sites)} site(s) transformed; {len(report.skipped)} other op(s) "
             f"reading a trained variable keep plain gradients. transform={_esc(o['transform'])}, "
             f"s={_esc(o['scale'])}, ρ={_esc(o['rho'])}, ε={_esc(o['epsilon'])}, "
             f"granularity={_esc(o['granularity'])}, ops={_esc(', '.join(o['ops']))}.</p>",
             "<p class=legend>" + "".join(
                 f"<span style='background:{c}'>{_esc(r)}</span>" for r, c in colors.items())
             + "</p>"]
    svg, dot = pictures["overview"]
    parts.append("<section class='overview' id='overview'><h2>Overview: the layers, what was "
                 "inserted and where (click a box for its site or block)</h2>"
                 f"<figure>{_page_links(_inline_svg(svg, dot))}</figure></section>")
    parts += ["<h2>Sites</h2><table><tr><th>#</th><th>site σ'</th><th>op</th>"
              "<th>variable θ</th><th>uses</th><th>gradient op P [g input]</th>"
              "<th>σ' shape</th><th>accumulator</th><th>scaling</th><th>note</th></tr>"]
    for s in report.sites:
        scaling = ", ".join(sorted({a.scaling for a in s.applications})) or "pre"
        parts.append(f"<tr><td><a href='#site-{s.index}'>{s.index}</a></td>"
                     f"<td>{_esc(s.node)}</td><td>{_esc(s.op)}</td><td>{_esc(s.variable)}</td>"
                     f"<td>{max(len(s.applications), 1)}</td>"
                     f"<td>{_esc(s.gradient_op)} [{s.gradient_input}]</td>"
                     f"<td>{_esc(s.output_shape)}</td><td>{_esc(s.accumulator_shape)}</td>"
                     f"<td>{_esc(scaling)}</td><td>{_esc(s.note)}</td></tr>")
    parts.append("</table><h2>Optimizer state</h2><table><tr><th>method</th><th>bytes</th></tr>"
                 f"<tr><td>SVGD accumulators ({m.accumulator_floats:,} floats)</td>"
                 f"<td>{m.accumulator_bytes:,}</td></tr>"
                 f"<tr><td>RMSProp (1 × {m.params:,} params)</td><td>{m.rmsprop_bytes:,}</td></tr>"
                 f"<tr><td>Adam (2 × {m.params:,} params)</td><td>{m.adam_bytes:,}</td></tr></table>")
    parts += _trained_table(pictures.get("trained"))
    if report.warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(
            f"<li class=warn>{_esc(w)}</li>" for w in report.warnings) + "</ul>")
    parts += _kept_table(report)
    for u, unit in enumerate(pictures.get("units", [])):
        if unit.kind == "site":
            continue
        first, last = unit.sites[0], unit.sites[-1]
        what = (f"×{unit.count} repeated block of {unit.period} site(s)" if unit.kind == "block"
                else f"the loop {unit.loop}: {len(unit.sites)} site(s) applied at every step"
                if unit.kind == "loop" else f"{len(unit.sites)} consecutive sites")
        parts.append(f"<section class='block' id='block-{u}'><h2>Sites {first.index}–"
                     f"{last.index}: {_esc(what)}</h2><p><a href='#overview'>↑ overview</a></p>"
                     "<ul>" + "".join(f"<li><a href='#site-{s.index}'>site {s.index}</a>: "
                                      f"{_esc(s.op)} on {_esc(s.variable)}, σ' "
                                      f"{_esc(s.output_shape)}</li>" for s in unit.sites)
                     + "</ul></section>")
    for (site, before_svg, before_dot, after_svg, after_dot, detail_svg,
         detail_dot) in pictures["sites"]:
        parts.append(f"<section class='site' id='site-{site.index}'><h2>Site {site.index}: "
                     f"{_esc(site.op)} on {_esc(site.variable)}</h2><p>σ' = {_esc(site.node)}; "
                     f"P = {_esc(site.gradient_op)}; g = {_esc(site.upstream_gradient)}; "
                     f"accumulator {_esc(site.accumulator_shape)} ({_esc(site.accumulator)}) · "
                     "<a href='#overview'>↑ overview</a></p><div class=pair>"
                     f"<figure><figcaption>before</figcaption>{_inline_svg(before_svg, before_dot)}"
                     f"</figure><figure><figcaption>after (T as one box)</figcaption>"
                     f"{_inline_svg(after_svg, after_dot)}</figure></div>"
                     f"<details><summary>after, every inserted node</summary>"
                     f"{_inline_svg(detail_svg, detail_dot)}</details></section>")
    parts.append("</body></html>")
    path = os.path.join(out_dir, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    return path
