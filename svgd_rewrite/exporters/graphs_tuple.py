"""graph_nets GraphsTuple data dict (``.npz``) plus its vocabulary (``.json``).

Node features: one-hot op type then one-hot role; edge features: [input index, control flag].
Load with ``graph_nets.utils_np.data_dicts_to_graphs_tuple([dict(np.load(path))])``.
"""
from __future__ import annotations

import json
import os

import networkx as nx
import numpy as np

from ..errors import ExportError
from .roles import ROLES


def _graph_nets():
    try:
        from graph_nets import utils_np
    except ImportError:
        raise ExportError("the graphs-tuple export needs graph-nets: pip install "
                          "'svgd-rewrite[graphs]' (or pick other formats)") from None
    return utils_np


def check_available() -> None:
    _graph_nets()


def write_graphs_tuple(graph: nx.MultiDiGraph, out_dir: str) -> tuple[str, str]:
    utils_np = _graph_nets()
    ops = sorted({d["op"] for _, d in graph.nodes(data=True)})
    names = list(graph.nodes)
    index = {n: i for i, n in enumerate(names)}
    g = nx.MultiDiGraph()
    for n, d in graph.nodes(data=True):
        feat = np.zeros(len(ops) + len(ROLES), np.float32)
        feat[ops.index(d["op"])] = 1.0
        feat[len(ops) + ROLES.index(d["role"])] = 1.0
        g.add_node(index[n], features=feat)
    for u, v, d in graph.edges(data=True):
        g.add_edge(index[u], index[v],
                   features=np.array([d["input_index"], float(d["control"])], np.float32))
    g.graph["features"] = np.zeros(1, np.float32)
    data = utils_np.networkx_to_data_dict(g)
    npz = os.path.join(out_dir, "rewritten_graphs_tuple.npz")
    np.savez(npz, **{k: np.asarray(v) for k, v in data.items() if v is not None})
    vocab = os.path.join(out_dir, "rewritten_graphs_tuple.json")
    with open(vocab, "w") as f:
        json.dump({"op_types": ops, "roles": list(ROLES), "nodes": names,
                   "node_features": "one-hot op type (op_types) then one-hot role (roles)",
                   "edge_features": ["input_index", "control"]}, f, indent=1)
    return npz, vocab
