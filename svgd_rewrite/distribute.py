"""tf.distribute: the replicated step's sites as logical sites, and the all-reduce of r's
statistics.

A step traced under ``MirroredStrategy`` holds one copy of the forward and backward pass per
local replica (``replica_K/`` scopes, one device each) and reads each replica's own component
of every mirrored variable. Each copy of a forward op is a site of its own (its g, its P), but
the copies of one op form one *logical* site with one mirrored accumulator: every replica
squares its own g, the per-replica sums and counts are all-reduced (an r-sized reduction per
site, not a g-sized one), and every replica updates its component of r from the global mean
— the same r as single-device SVGD on the global batch. Local replicas add the partial sums
with one ``AddN`` in replica order (so every component of r is bit-identical); replicas on
other workers are reached with a ``CollectiveReduceV2`` in the group of the step's own
gradient all-reduce.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, replace

from tensorflow.core.framework import graph_pb2

from .errors import UnsupportedError
from .ir import parse_input, tensor_name
from .registry import COLLECTIVE_REDUCE_OP
from .report import SkippedNode

_REPLICA_SCOPE = re.compile(r"^replica_\d+/")
# Instance keys of the inserted collectives: far above the keys tf.distribute hands out (a
# counter from 1 per strategy), one per logical site and rewrite, never reused in a process (a
# collective instance keeps its first shape). Every worker runs the same rewrites in the same
# order, so they agree on the keys, as tf.distribute's own counters assume.
_INSTANCE_KEYS = itertools.count(1 << 30)


def logical_name(node: str) -> str:
    """A node's name without its replica scope (``replica_1/dense/MatMul`` → ``dense/MatMul``)."""
    return _REPLICA_SCOPE.sub("", node)


@dataclass(frozen=True)
class CollectiveTemplate:
    """The group of the step's own gradient all-reduce on one device: the tensors giving the
    group size and key, the ordering token (if any), and the communication attributes."""

    group_size: str
    group_key: str
    ordering_token: str | None
    communication_hint: str
    timeout_seconds: float
    instance_key: int = 0  # set per logical site by ``reduce_for``


def collective_templates(graph_def: graph_pb2.GraphDef) -> dict[str, CollectiveTemplate]:
    """The first ``CollectiveReduceV2`` of the graph on each device, as a template."""
    out: dict[str, CollectiveTemplate] = {}
    for node in graph_def.node:
        if node.op != COLLECTIVE_REDUCE_OP or node.device in out:
            continue
        data = [i for i in node.input if not i.startswith("^")]
        n_tokens = node.attr["Nordering_token"].i
        out[node.device] = CollectiveTemplate(
            group_size=tensor_name(parse_input(data[1])[:2]),
            group_key=tensor_name(parse_input(data[2])[:2]),
            ordering_token=tensor_name(parse_input(data[4])[:2]) if n_tokens else None,
            communication_hint=node.attr["communication_hint"].s.decode() or "auto",
            timeout_seconds=node.attr["timeout_seconds"].f)
    return out


def group_replicas(sites: list, reports: list, skipped: list, variables: dict,
                   n_local: int) -> tuple[list, list, list]:
    """Group per-replica sites (one accumulator per θ on each replica) into logical sites.

    Returns the planned sites (the copy on replica k of logical site i gets index
    ``k·n + i`` and knows its group's indices as ``peers``), one report row per logical site,
    and the skipped nodes of replica 0 (plus sites not found on every replica).
    """
    groups: dict[tuple[str, str], list] = {}
    for site, rep in zip(sites, reports):
        info = variables[site.variable]
        groups.setdefault((info.logical_name, site.key), []).append((site, rep))
    complete, partial = [], []
    for members in groups.values():
        members.sort(key=lambda m: variables[m[0].variable].replica)
        replicas = [variables[s.variable].replica for s, _ in members]
        (complete if replicas == list(range(n_local)) else partial).append(members)
    if partial and not complete:
        raise UnsupportedError(
            f"the step reads mirrored variables but holds one copy of its forward ops, not "
            f"one per replica ({n_local}): a replica function traced on its own is not "
            "supported: rewrite the tf.function that calls strategy.run instead")
    kept = [k for k in skipped if n_local == 1 or not _REPLICA_SCOPE.match(k.node)]
    for members in partial:
        site, rep = members[0]
        kept.append(SkippedNode(logical_name(rep.node), rep.op,
                                variables[site.variable].logical_name,
                                f"found on {len(members)} of {n_local} replicas"))
    n = len(complete)
    planned, rows = [], []
    for i, members in enumerate(complete):
        peers = tuple(k * n + i for k in range(n_local))
        for k, (site, _) in enumerate(members):
            planned.append(replace(site, index=peers[k], replica=k, peers=peers))
        lead, rep = members[0]
        apps = [replace(a, node=logical_name(a.node)) for a in rep.applications]
        rows.append(replace(rep, index=i, node=logical_name(rep.node),
                            variable=variables[lead.variable].logical_name, replicas=n_local,
                            applications=apps))
    planned.sort(key=lambda s: s.index)
    return planned, rows, kept


def reduce_for(distribution, templates: dict[str, CollectiveTemplate], device: str,
               keys: dict[tuple[int, ...], int], peers: tuple[int, ...]):
    """How a replica on ``device`` sums the partial statistics: None (``AddN`` over the local
    replicas) or the collective template of its device (replicas on other workers) with the
    logical site's instance key (``keys``: one per ``peers`` group, allocated here)."""
    if not distribution.multi_worker:
        return None
    template = templates.get(device)
    if template is None:
        raise UnsupportedError(
            f"the step runs on {distribution.replicas} replicas over several workers but no "
            f"CollectiveReduceV2 of its gradients is on {device or 'the replica device'}; "
            "supported: MultiWorkerMirroredStrategy with collective communication")
    if peers not in keys:
        keys[peers] = next(_INSTANCE_KEYS)
    return replace(template, instance_key=keys[peers])
