"""The report: what was transformed, what kept the identity transform and why, memory figures."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .errors import one_line


@dataclass(frozen=True)
class SiteReport:
    """One transformed site σ' and its accumulator."""

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
    """What a rewrite did (or would do). ``str(report)`` is a readable table."""

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
            rows = [("#", "site σ'", "op", "variable θ", "gradient op P", "accumulator", "note")]
            for s in self.sites:
                rows.append((str(s.index), s.node, s.op, s.variable,
                             f"{s.gradient_op} [in {s.gradient_input}]",
                             "x".join(map(str, s.accumulator_shape)) or "scalar", s.note))
            lines += _table(rows)
        if self.skipped:
            lines.append("kept as identity:")
            rows = [("node", "op", "variable θ", "reason")]
            rows += [(k.node, k.op, k.variable, k.reason) for k in self.skipped]
            lines += _table(rows)
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


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    rows = [tuple(one_line(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for k, r in enumerate(rows):
        out.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if k == 0:
            out.append("  " + "  ".join("-" * w for w in widths))
    return out
