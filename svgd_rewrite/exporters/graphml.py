"""GraphML: the whole rewritten graph for Gephi, yEd or networkx."""
from __future__ import annotations

import os

import networkx as nx


def write_graphml(graph: nx.MultiDiGraph, out_dir: str) -> str:
    path = os.path.join(out_dir, "rewritten.graphml")
    nx.write_graphml(graph, path)
    return path
