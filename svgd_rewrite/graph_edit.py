"""A small graph editor beside the IR: insert nodes, reroute an input, reroute every reader
of a tensor, grow gradient loops, add control inputs — each edit recorded in an
``edits.EditLog``.

The surgery and the front ends' finishing steps write through it, so the log is the one
account of what changed (validation and the pictures read it)."""
from __future__ import annotations

from typing import Iterable

from tensorflow.core.framework import graph_pb2, node_def_pb2

from .edits import ControlAdded, EditLog, Grown, Inserted, Replaced, Rerouted, Scaled
from .ir import parse_input, tensor_name
from .loop_statistics import LoopStatistic, add_statistics


def input_string(tensor: str) -> str:
    """``node:0`` as the NodeDef input ``node``; other ports kept."""
    node, port, _ = parse_input(tensor)
    return tensor_name((node, port))


class GraphEditor:
    """Edits a copy of a GraphDef (or, with ``log``, continues editing an edited one)."""

    def __init__(self, graph_def: graph_pb2.GraphDef, log: EditLog | None = None,
                 copy: bool = True):
        if copy:
            self.graph_def = graph_pb2.GraphDef()
            self.graph_def.CopyFrom(graph_def)
        else:
            self.graph_def = graph_def
        self.log = log or EditLog()
        self._by_name = {n.name: n for n in self.graph_def.node}

    def node(self, name: str) -> node_def_pb2.NodeDef:
        return self._by_name[name]

    def insert(self, nodes: Iterable[node_def_pb2.NodeDef], site: int | None = None) -> None:
        """Append ``nodes`` (already named and wired)."""
        for n in nodes:
            self.graph_def.node.append(n)
            added = self.graph_def.node[-1]
            self._by_name[added.name] = added
            self.log.inserted.append(Inserted(added.name, site))

    def reroute(self, node: str, slot: int, new: str, site: int, application: int) -> str:
        """Input ``slot`` of ``node`` reads ``new`` instead; returns the old input."""
        nd = self._by_name[node]
        old = nd.input[slot]
        nd.input[slot] = new
        self.log.rerouted.append(Rerouted(site, application, node, slot, old, new))
        return old

    def reroute_readers(self, targets: dict[str, tuple[str, int]]) -> None:
        """Every data input reading a target tensor (``target -> (scaled, site)``) outside the
        inserted nodes reads the scaled tensor instead (the inserted op scaling it keeps
        reading the target)."""
        if not targets:
            return
        inserted = self.log.inserted_nodes()
        readers: dict[str, list[str]] = {t: [] for t in targets}
        for node in self.graph_def.node:
            if node.name in inserted:
                continue
            for i, inp in enumerate(node.input):
                if inp.startswith("^"):
                    continue
                key = input_string(inp)
                if key in targets:
                    node.input[i] = targets[key][0]
                    readers[key].append(node.name)
        for target, (scaled, site) in targets.items():
            self.log.scaled.append(Scaled(site, target, scaled, tuple(readers[target])))

    def grow_loops(self, stats: list[LoopStatistic],
                   sites: list[int]) -> dict[int, tuple[str, str]]:
        """Give gradient loops the statistics' loop variables (``loop_statistics``); the
        loops' new inputs are logged as inserted nodes of the statistic's site."""
        before = set(self._by_name)
        outputs = add_statistics(self.graph_def, stats)
        self._by_name = {n.name: n for n in self.graph_def.node}
        prefixes = {st.name + "/": site for st, site in zip(stats, sites)}
        for name in sorted(set(self._by_name) - before):
            site = next((s for p, s in prefixes.items() if name.startswith(p)), None)
            self.log.inserted.append(Inserted(name, site))
        loops: dict[str, list[int]] = {}
        for st, site in zip(stats, sites):
            loops.setdefault(st.backward_loop, []).append(site)
        self.log.grown += [Grown(loop, tuple(s)) for loop, s in sorted(loops.items())]
        return outputs

    def replace(self, new: node_def_pb2.NodeDef) -> None:
        """Swap the node named ``new.name`` for ``new`` (same place in the graph)."""
        old = self._by_name[new.name]
        old_op = old.op
        old.CopyFrom(new)
        self.log.replaced.append(Replaced(new.name, old_op, new.op))

    def add_control_inputs(self, node: str, inputs: Iterable[str]) -> None:
        added = tuple("^" + i.lstrip("^") for i in inputs)
        self._by_name[node].input.extend(added)
        self.log.control.append(ControlAdded(node, added))
