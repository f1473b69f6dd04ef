"""The report: what was transformed, what kept the identity transform and why, memory figures."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .errors import one_line

WIDTH = 100  # the text report's tables fit this many columns
LEGEND = [  # under the sites table: its words, and the paper's symbols they stand for
    "  forward op: the op whose output's gradient g is rescaled (σ' in the paper); variable: θ;",
    "  gradient op [in k]: the op computing θ's gradient (P), reading g as its input k; scaling:",
    "  pre = g rescaled before P, post = P's output rescaled; accumulator: the shape of r (mean g²)",
]


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
        return self.text()

    def text(self, planned: bool = False) -> str:
        """The readable report; ``planned``: a dry run's (what a rewrite *would* do)."""
        lines = [self._headline(planned)]
        if self.sites:
            lines += _table(self._rows(), shrink=(1, 4, 3)) + LEGEND
        if self.skipped:
            lines += self._skipped_lines(planned)
        m = self.memory
        lines.append(f"optimizer state: SVGD accumulators {m.accumulator_floats:,} floats "
                     f"({_bytes(m.accumulator_bytes)}); for the {m.params:,} trained parameters "
                     f"Adam would hold {_bytes(m.adam_bytes)}, RMSProp {_bytes(m.rmsprop_bytes)}")
        for w in self.warnings:
            lines.append(f"warning: {one_line(w)}")
        return "\n".join(lines)

    def _headline(self, planned: bool) -> str:
        o = self.options
        sites, kept = len(self.sites), len(self.skipped)
        what = (f"would transform {sites} site(s); {kept} other op(s) reading a trained variable "
                "would keep plain gradients" if planned else
                f"{sites} site(s) transformed; {kept} other op(s) reading a trained variable "
                "keep plain gradients")
        return (f"svgd-rewrite: {what}  (transform={o['transform']}, scale={_g(o['scale'])}, "
                f"rho={_g(o['rho'])}, epsilon={_g(o['epsilon'])}, "
                f"granularity={o['granularity']})")

    def _rows(self) -> list[tuple[str, ...]]:
        rows = [("#", "forward op", "type", "variable", "gradient op [in k]", "uses", "scaling",
                 "accumulator", "note")]
        for s in self.sites:
            apps = s.applications
            scaling = ",".join(sorted({a.scaling for a in apps})) if apps else "pre"
            loop = " (loop)" if any(a.loop for a in apps) else ""
            rows.append((str(s.index), s.node, s.op, s.variable,
                         f"{s.gradient_op} [in {s.gradient_input}]",
                         str(max(len(apps), 1)) + loop, scaling,
                         "x".join(map(str, s.accumulator_shape)) or "scalar", s.note))
        return rows

    def _skipped_lines(self, planned: bool) -> list[str]:
        lines = [f"{'would keep' if planned else 'kept'} plain gradients (identity transform; "
                 "by op and reason, the JSON report lists each node):"]
        groups: dict[tuple[str, str], list[SkippedNode]] = {}
        for k in self.skipped:
            groups.setdefault((k.op, k.reason), []).append(k)
        for (op, reason), members in groups.items():
            text = reason[len(op) + 1:] if reason.startswith(op + " ") else reason
            lines.append(_middle(one_line(f"  {len(members)} × {op}: {text}"), WIDTH))
            names = list(dict.fromkeys(one_line(m.variable) for m in members))
            examples = ", ".join(fit_names(names[:3], 24))  # the line fits WIDTH
            lines.append(f"      variables: {examples}" + (", ..." if len(names) > 3 else ""))
        return lines


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


def _cut(name: str, width: int) -> str:
    """``name`` in ``width`` characters: a path loses its leading components (``…/dense/kernel``,
    the layer path's end), a single long component its middle."""
    if len(name) <= width:
        return name
    parts = name.split("/")
    for k in range(1, len(parts)):
        tail = "…/" + "/".join(parts[k:])
        if len(tail) <= width:
            return tail
    return _middle(name, width)


def fit_names(names: list[str], width: int) -> list[str]:
    """``names`` each cut to ``width`` (``_cut``, else from the middle), widened as needed so
    that distinct names never look the same."""
    longest = max((len(n) for n in names), default=0)
    distinct = len(set(names))
    while True:
        for cut in ([_cut(n, width) for n in names], [_middle(n, width) for n in names]):
            if len(set(cut)) == distinct:
                return cut
        if width >= longest:
            return list(names)
        width += 1


def _table(rows: list[tuple[str, ...]], shrink: tuple[int, ...] = ()) -> list[str]:
    """A text table: columns empty in every data row are left out; the ``shrink`` columns are
    shortened (``fit_names``: the end of a path kept, widest column first) until a line fits
    ``WIDTH``, never so far that two different names look the same."""
    rows = [tuple(one_line(c) for c in r) for r in rows]
    keep = [i for i in range(len(rows[0])) if any(r[i] for r in rows[1:])]
    rows = [tuple(r[i] for i in keep) for r in rows]
    shrink = [keep.index(i) for i in shrink if i in keep]
    columns = [[r[i] for r in rows[1:]] for i in range(len(rows[0]))]
    targets = [max(len(c) for c in col) for col in columns]
    while True:
        fitted = [fit_names(col, t) if i in shrink else col
                  for i, (col, t) in enumerate(zip(columns, targets))]
        widths = [max([len(rows[0][i])] + [len(c) for c in col]) for i, col in enumerate(fitted)]
        wide = [i for i in shrink if targets[i] > 12]
        if 2 + sum(widths) + 2 * (len(widths) - 1) <= WIDTH or not wide:
            break
        col = max(wide, key=lambda i: widths[i])
        targets[col] = min(targets[col], widths[col]) - 1
    out = []
    for k, r in enumerate([rows[0]] + [tuple(col[k] for col in fitted)
                                       for k in range(len(rows) - 1)]):
        out.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if k == 0:
            out.append("  " + "  ".join("-" * w for w in widths))
    return out


def _g(value) -> str:
    """A number in ``%g`` form; a schedule's description as it is."""
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)
