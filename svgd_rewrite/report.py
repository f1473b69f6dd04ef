"""The report: what was transformed, what kept the identity transform and why, memory figures."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .errors import one_line

WIDTH = 100  # the text report's tables fit this many columns


@dataclass(frozen=True)
class ApplicationReport:
    """One application of θ scaled by its site's r: F, its P and g, and how f reaches P
    (``scaling``: ``pre`` — ĝ = g·f feeds P; ``post`` — P's output is scaled)."""

    node: str
    gradient_op: str
    gradient_op_type: str
    gradient_input: int
    upstream_gradient: str
    output_shape: list[int | None]
    scaling: str = "pre"
    loop: str = ""  # the forward While holding F, for a site inside a loop
    gradient_loop: str = ""  # ... and the gradient While holding P
    gradient_output: int = 0  # ... whose output is θ's accumulated gradient


@dataclass(frozen=True)
class SiteReport:
    """One accumulator r (one per trained variable θ) and the applications of θ it scales.

    The top-level ``node``/``gradient_op``/... fields describe the first application."""

    index: int
    node: str
    op: str
    variable: str
    param_input: int
    gradient_op: str
    gradient_op_type: str
    gradient_input: int
    upstream_gradient: str
    output_shape: list[int | None]
    accumulator_shape: list[int]
    granularity: str
    note: str = ""
    variable_node: str = ""  # θ's resource placeholder in the graph
    replicas: int = 1  # tf.distribute: the local replicas holding a copy of this site
    accumulator: str = ""  # r's name in the training state (``svgd/<θ>``)
    applications: list[ApplicationReport] = field(default_factory=list)

    @property
    def accumulator_size(self) -> int:
        n = 1
        for d in self.accumulator_shape:
            n *= d
        return n


@dataclass(frozen=True)
class SkippedNode:
    """A member of V_θ→σ that keeps the identity transform, with the reason."""

    node: str
    op: str
    variable: str
    reason: str


@dataclass(frozen=True)
class MemoryReport:
    """Optimizer-state sizes: SVGD accumulators vs Adam (2 × params) and RMSProp (1 × params).

    ``params`` counts the trainable variables the step updates; Adam/RMSProp figures use
    each variable's dtype size, the accumulators are float32.
    """

    accumulator_floats: int
    accumulator_bytes: int
    params: int
    transformed_params: int
    adam_bytes: int
    rmsprop_bytes: int


@dataclass
class Report:
    """What a rewrite did (or would do). ``str(report)`` is a readable table (100 columns;
    skipped nodes grouped by op and reason); ``to_dict``/``to_json`` keep every row."""

    sites: list[SiteReport]
    skipped: list[SkippedNode]
    memory: MemoryReport
    options: dict
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        for s, site in zip(d["sites"], self.sites):
            s["accumulator_size"] = site.accumulator_size
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def __str__(self) -> str:
        lines = []
        o = self.options
        lines.append(f"svgd-rewrite: {len(self.sites)} site(s) transformed, {len(self.skipped)} "
                     f"V_θ→σ node(s) kept as identity  (transform={o['transform']}, "
                     f"scale={o['scale']:g}, rho={o['rho']:g}, epsilon={o['epsilon']:g}, "
                     f"granularity={o['granularity']})")
        if self.sites:
            rows = [("#", "site σ'", "op", "variable θ", "gradient op P", "uses", "scaling",
                     "accumulator", "note")]
            for s in self.sites:
                apps = s.applications
                scaling = ",".join(sorted({a.scaling for a in apps})) if apps else "pre"
                loop = " (loop)" if any(a.loop for a in apps) else ""
                rows.append((str(s.index), s.node, s.op, s.variable,
                             f"{s.gradient_op} [in {s.gradient_input}]",
                             str(max(len(apps), 1)) + loop, scaling,
                             "x".join(map(str, s.accumulator_shape)) or "scalar", s.note))
            lines += _table(rows, shrink=(1, 4, 3))
        if self.skipped:
            lines.append("kept as identity (grouped by op and reason; the JSON report lists "
                         "every node):")
            groups: dict[tuple[str, str], list[SkippedNode]] = {}
            for k in self.skipped:
                groups.setdefault((k.op, k.reason), []).append(k)
            for (op, reason), members in groups.items():
                text = reason[len(op) + 1:] if reason.startswith(op + " ") else reason
                lines.append(_middle(one_line(f"  {len(members)} × {op}: {text}"), WIDTH))
                examples = ", ".join(_middle(m.variable, 40) for m in members[:3])
                lines.append(_middle(one_line(f"      θ: {examples}"
                                              + (", ..." if len(members) > 3 else "")), WIDTH))
        m = self.memory
        lines.append(f"optimizer state: SVGD accumulators {m.accumulator_floats:,} floats "
                     f"({_bytes(m.accumulator_bytes)}); for the {m.params:,} trained parameters "
                     f"Adam would hold {_bytes(m.adam_bytes)}, RMSProp {_bytes(m.rmsprop_bytes)}")
        for w in self.warnings:
            lines.append(f"warning: {one_line(w)}")
        return "\n".join(lines)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def _middle(text: str, width: int) -> str:
    """``text`` shortened from the middle to ``width`` characters (an ellipsis marks the cut)."""
    if len(text) <= width:
        return text
    keep = max(width - 1, 2)
    head = keep // 2
    return text[:head] + "…" + text[len(text) - (keep - head):]


def _table(rows: list[tuple[str, ...]], shrink: tuple[int, ...] = ()) -> list[str]:
    """A text table: columns empty in every data row are left out; the ``shrink`` columns are
    shortened from the middle (widest first) until a line fits ``WIDTH``."""
    rows = [tuple(one_line(c) for c in r) for r in rows]
    keep = [i for i in range(len(rows[0])) if any(r[i] for r in rows[1:])]
    rows = [tuple(r[i] for i in keep) for r in rows]
    shrink = [keep.index(i) for i in shrink if i in keep]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    while 2 + sum(widths) + 2 * (len(widths) - 1) > WIDTH:
        col = max(shrink, key=lambda i: widths[i], default=None)
        if col is None or widths[col] <= 12:
            break
        widths[col] -= 1
    out = []
    for k, r in enumerate(rows):
        cells = [_middle(c, w) for c, w in zip(r, widths)]
        out.append("  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
        if k == 0:
            out.append("  " + "  ".join("-" * w for w in widths))
    return out
