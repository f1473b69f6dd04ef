"""The edit log: what the surgery changed in a graph, per site and per application.

Every change goes through ``graph_edit.GraphEditor``, which records it here. Validation
checks the rewritten graph against the log, and the exporters draw from it: they never
recover what changed from node names.

- ``Inserted``: a node the rewrite added (T's nodes, accumulators, loop statistics, a copy of
  the gradient's position ops, an init op), with its site (``None``: not a site's).
- ``Rerouted``: an input of an existing node that now reads another tensor — a pre-scaled
  P's g input now reading ĝ (``site``, ``application``, ``node``, ``slot``, ``old``, ``new``).
- ``Scaled``: a post-scaled tensor: every reader outside the inserted nodes now reads
  ``scaled`` instead of ``target``.
- ``Grown``: a gradient ``While`` loop given new loop variables (Σ g², rows).
- ``ControlAdded``: control inputs added to an existing node (a TF1 train op running the
  accumulator updates, an init op running their initializers).
- ``Replaced``: an inserted node swapped for another of the same name (a TF1 graph's
  accumulator placeholder materialized as a variable node of the graph's kind).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Inserted:
    node: str
    site: int | None = None


@dataclass(frozen=True)
class Rerouted:
    site: int
    application: int
    node: str
    slot: int
    old: str
    new: str


@dataclass(frozen=True)
class Scaled:
    site: int
    target: str
    scaled: str
    readers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Grown:
    loop: str
    sites: tuple[int, ...]


@dataclass(frozen=True)
class ControlAdded:
    node: str
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class Replaced:
    node: str
    old_op: str
    new_op: str


@dataclass
class EditLog:
    """Every edit of one rewrite, in order of kind."""

    inserted: list[Inserted] = field(default_factory=list)
    rerouted: list[Rerouted] = field(default_factory=list)
    scaled: list[Scaled] = field(default_factory=list)
    grown: list[Grown] = field(default_factory=list)
    control: list[ControlAdded] = field(default_factory=list)
    replaced: list[Replaced] = field(default_factory=list)

    def inserted_nodes(self, site: int | None = None) -> set[str]:
        """The inserted nodes (of one site, when given)."""
        return {e.node for e in self.inserted if site is None or e.site == site}

    def rerouted_at(self, site: int) -> list[Rerouted]:
        return [e for e in self.rerouted if e.site == site]

    def scaled_at(self, site: int) -> list[Scaled]:
        return [e for e in self.scaled if e.site == site]

    def to_dict(self) -> dict:
        return asdict(self)
