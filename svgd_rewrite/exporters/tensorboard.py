"""TensorBoard: the rewritten graph and the original as two runs, for the Graphs tab."""
from __future__ import annotations

import errno
import os

import tensorflow as tf

from .roles import ExportSource


def write_tensorboard(source: ExportSource, out_dir: str) -> list[str]:
    """Write ``out_dir/tensorboard/{rewritten,original}/events.*``; return the run folders."""
    runs = []
    for run, gd in (("rewritten", source.rewritten), ("original", source.original)):
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
