"""TensorBoard: the rewritten graph and the original as two runs, for the Graphs tab."""
from __future__ import annotations

import errno
import os

import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from .roles import ExportSource


MARK_ATTR = "_svgd_rewrite"  # shown in the node's card of TensorBoard's graph dashboard


def marked(source: ExportSource) -> graph_pb2.GraphDef:
    """The rewritten graph with each rerouted P marked (attribute ``_svgd_rewrite``: which
    site, and whether it reads ĝ or its output is scaled); the inserted nodes are already in
    one ``svgd_rewrite/site_K`` scope per site."""
    gd = graph_pb2.GraphDef()
    gd.CopyFrom(source.rewritten)
    by_name = {n.name: n for n in gd.node}
    for site in source.report.sites:
        for app in site.applications:
            node = by_name.get(app.gradient_loop or app.gradient_op)
            if node is None:
                continue
            text = (f"svgd-rewrite site {site.index} ({site.variable}): "
                    + (f"output scaled by f (svgd_rewrite/site_{site.index}/scaled_*)"
                       if app.scaling == "post" else
                       f"input {app.gradient_input} rerouted to ĝ "
                       f"(svgd_rewrite/site_{site.index}/g_hat_*)"))
            node.attr[MARK_ATTR].s = text.encode()
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
