"""The TensorFlow internals wrapped in svgd_rewrite/tf_compat.py still behave as used."""
import tensorflow as tf

from svgd_rewrite.inline import inline_calls
from svgd_rewrite.tf_compat import (capture, function_def_to_graph_def, traced_concrete_functions,
                                    write_summaries)


def test_traced_concrete_functions_lists_traces():
    @tf.function
    def f(x):
        return x * 2

    assert traced_concrete_functions(f) == []
    f(tf.constant(1.0))
    f(tf.constant([1.0, 2.0]))
    assert len(traced_concrete_functions(f)) == 2


def test_function_def_to_graph_def_and_inline_calls():
    @tf.function
    def inner(x):
        return tf.nn.relu(x) + 1.0

    @tf.function(input_signature=[tf.TensorSpec([None])])
    def outer(x):
        return inner(x) * 3.0

    gd = outer.get_concrete_function().graph.as_graph_def()
    (fdef,) = [f for f in gd.library.function if "inner" in f.signature.name]
    body, mapping = function_def_to_graph_def(fdef)
    assert any(n.op == "Relu" for n in body.node) and mapping
    flat = inline_calls(gd)
    assert not any(n.op in ("PartitionedCall", "StatefulPartitionedCall") for n in flat.node)
    assert any(n.op == "Relu" for n in flat.node)
    # the inlined graph computes the same thing
    with tf.Graph().as_default() as g:
        (out,) = tf.graph_util.import_graph_def(flat, return_elements=["Identity:0"], name="")
        with tf.compat.v1.Session(graph=g) as sess:
            x = g.get_tensor_by_name("x:0")
            assert list(sess.run(out, {x: [-1.0, 2.0]})) == [3.0, 9.0]


def test_capture_inside_a_function():
    v = tf.Variable(2.0)

    @tf.function
    def f():
        handle = capture(v.handle)
        return tf.raw_ops.ReadVariableOp(resource=handle, dtype=tf.float32) * 3.0

    assert float(f()) == 6.0


def test_checkpoint_restored_also_when_the_restoration_is_deferred(tmp_path):
    """``_self_update_uid``: set by a restore, also one deferred until the dependency is
    added (a model loaded before ``enable`` adds its accumulators)."""
    from svgd_rewrite.tf_compat import checkpoint_restored

    saved = tf.Module()
    saved.child = tf.Module()
    saved.child.v = tf.Variable(1.0)
    path = tf.train.Checkpoint(root=saved).save(str(tmp_path / "ckpt"))
    fresh, child = tf.Module(), tf.Module()
    assert not checkpoint_restored(child)
    tf.train.Checkpoint(root=fresh).restore(path)
    fresh._track_trackable(child, name="child")
    assert checkpoint_restored(child)


def test_write_summaries_writes_each_proto_as_an_event_and_does_not_flush(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))

    @tf.function
    def log(k):
        parts = [tf.raw_ops.ScalarSummary(tags=tf.constant(["a", "b"]), values=[1.0, 2.0]),
                 tf.raw_ops.HistogramSummary(tag="h", values=[1.0, 3.0])]
        write_summaries(writer, k, tf.stack(parts))

    log(tf.constant(7, tf.int64))
    graph = log.get_concrete_function(tf.constant(7, tf.int64)).graph
    ops = {op.type for op in graph.get_operations()}
    assert "WriteRawProtoSummary" in ops and "FlushSummaryWriter" not in ops
    writer.flush()
    (path,) = tmp_path.iterdir()
    values = [(e.step, v.tag) for e in tf.compat.v1.train.summary_iterator(str(path))
              for v in e.summary.value]
    assert sorted(values) == [(7, "a"), (7, "b"), (7, "h")]


def test_write_summaries_falls_back_to_the_public_api_for_a_writer_without_a_resource():
    writer = tf.summary.create_noop_writer()  # no resource: as_default and write_raw_pb

    @tf.function
    def log(k):
        return write_summaries(writer, k, tf.stack([tf.raw_ops.ScalarSummary(
            tags=tf.constant(["a"]), values=[1.0])]))

    assert not bool(log(tf.constant(1, tf.int64)))  # a no-op writer records nothing
