"""TensorBoard: the rewritten graph and the original as two runs, for the Graphs tab."""
from __future__ import annotations

import errno
import os

import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from .roles import ExportSource


MARK_ATTR = "_svgd_rewrite"  # shown in the node's card of TensorBoard's graph dashboard


def marked(source: ExportSource) -> graph_pb2.GraphDef:
    """The rewritten graph with each rerouted P and each post-scaled P (or gradient loop)
    marked from the edit log (attribute ``_svgd_rewrite``: which site, and what changed)."""
    gd = graph_pb2.GraphDef()
    gd.CopyFrom(source.rewritten)
    by_name = {n.name: n for n in gd.node}
    variables = {s.index: s.variable for s in source.report.sites}

    def mark(node: str, site: int, what: str) -> None:
        if node in by_name:
            text = f"svgd-rewrite site {site} ({variables.get(site, '')}): {what}"
            by_name[node].attr[MARK_ATTR].s = text.encode()

    for e in source.edits.rerouted:
        mark(e.node, e.site, f"input {e.slot} rerouted to ĝ ({e.new}, was {e.old})")
    for e in source.edits.scaled:
        mark(e.target.split(":")[0], e.site,
             f"output scaled by f: {', '.join(e.readers) or 'its readers'} read {e.scaled}")
    return gd


def write_tensorboard(source: ExportSource, out_dir: str) -> list[str]:
    """Write ``out_dir/tensorboard/{rewritten,original}/events.*``; return the run folders."""
    runs = []
    for run, gd in (("rewritten", marked(source)), ("original", source.original)):
        path = os.path.join(out_dir, "tensorboard", run)
        writer = tf.summary.create_file_writer(path)
        with writer.as_default():
            tf.summary.graph(gd)
        writer.flush()
        writer.close()
        written = [f for f in os.listdir(path) if f.startswith("events.")] if os.path.isdir(
            path) else []
        if not written or not any(os.path.getsize(os.path.join(path, f)) for f in written):
            raise OSError(errno.ENOSPC, f"the TensorBoard event file in {path} was not written "
                                        "(no space left?)")
        runs.append(path)
    return runs
