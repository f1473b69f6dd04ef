"""TF1 training graphs (GraphDef / MetaGraph): rewritten, run in a Session, against the oracle."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import svgd_rewrite
from fixtures import tf1_graphs
from fixtures.models import random_batch
from helpers import STAGE_LINE, assert_close, make_module
from oracle import Oracle
from svgd_rewrite.graphdef import rewrite_graph_def

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LR = 0.05


def _batches(spec, n=3):
    return [tuple(t.numpy() for t in random_batch(spec, 8, seed=i)) for i in range(n)]


def _run_session(graph_def, g: tf1_graphs.TF1Graph, train_op: str, batches, fetch_extra=(),
                 feeds=None):
    """Import ``graph_def``, run the graph's init op, then the train op once per batch (with
    ``feeds`` added); the parameter values after each step (and the extra fetches at the
    end)."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    snaps = []
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(g.init_op)
        for x, y in batches:
            sess.run(train_op, {g.x: x, g.y: y, g.learning_rate: LR, **(feeds or {})})
            snaps.append({k: sess.run(v) for k, v in g.params.items()})
        extra = sess.run(list(fetch_extra))
    return snaps, extra


@pytest.mark.parametrize("resource", [False, True], ids=["ref", "resource"])
def test_tf1_paper_mlp_matches_oracle(resource):
    g = tf1_graphs.build("paper_mlp", seed=3, resource=resource)
    result = rewrite_graph_def(g.graph.as_graph_def())
    assert result.train_op == "train" and result.graph_init_ops == ["init"]
    assert result.variable_kind == ("resource" if resource else "ref")
    assert [s.op for s in result.report.sites] == ["MatMul"] * 5
    assert {k.op for k in result.report.skipped} >= {"Abs"}  # the L1 penalty keeps the identity
    reference = make_module("paper_mlp", seed=3, lr=LR)
    batches = _batches(reference.spec)
    snaps, accs = _run_session(result.graph_def, g, result.train_op, batches,
                               result.accumulator_reads)
    oracle = Oracle(reference.spec, reference.params, reference.state, learning_rate=LR)
    for i, (x, y) in enumerate(batches):
        oracle.step(tf.constant(x), tf.constant(y))
        assert_close(snaps[i], {k: v.numpy() for k, v in reference.params.items()}, 1e-5,
                     f"step {i}")
    assert_close(dict(enumerate(accs)), {i: a.numpy() for i, a in enumerate(oracle.accumulators)},
                 1e-5, "accumulators")


def test_tf1_identity_transform_matches_original_graph():
    g = tf1_graphs.build("mlp_l1", seed=1)
    batches = _batches(make_module("mlp_l1").spec)
    original, _ = _run_session(g.graph.as_graph_def(), g, g.train_op, batches)
    result = rewrite_graph_def(g.graph.as_graph_def(), transform="identity")
    rewritten, accs = _run_session(result.graph_def, g, result.train_op, batches,
                                   result.accumulator_reads)
    for a, b in zip(rewritten, original):
        assert_close(a, b, 1e-7, "identity")
    assert all(np.any(a > 0) for a in accs)


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "svgd_rewrite", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def tf1_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("tf1")
    env = {**os.environ, "PYTHONPATH": ROOT}
    subprocess.run([sys.executable, "-m", "fixtures.tf1_graphs", str(out), "--model", "mlp_l1"],
                   check=True, env=env, cwd=ROOT, capture_output=True, timeout=300)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["model.pb", "model.pbtxt"])
def test_cli_graph_def_round_trip(tf1_files, tmp_path, name):
    proc = _cli(tf1_files / name, tmp_path / "out", "-q")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path / "out")) == sorted([name, "svgd_manifest.json", "svgd_report.json"])
    g = tf1_graphs.build("mlp_l1")
    from svgd_rewrite.graphdef import read_graph_file

    _, gd = read_graph_file(str(tmp_path / "out" / name))
    batches = _batches(make_module("mlp_l1").spec, 2)
    snaps, accs = _run_session(gd, g, "train", batches, ["svgd_rewrite/site_0/r:0"])
    assert all(np.all(np.isfinite(v)) for s in snaps for v in s.values()) and np.any(accs[0] > 0)


@pytest.mark.slow
def test_cli_meta_graph_with_checkpoint(tf1_files, tmp_path):
    proc = _cli(tf1_files / "model.ckpt.meta", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "train op: train" in proc.stdout
    out = tmp_path / "out"
    assert (out / "model.ckpt.meta").exists() and (out / "model.ckpt.index").exists()
    original = tf.train.load_checkpoint(str(tf1_files / "model.ckpt"))
    x, y = _batches(make_module("mlp_l1").spec, 1)[0]
    graph = tf.Graph()
    with graph.as_default():
        saver = tf.compat.v1.train.import_meta_graph(str(out / "model.ckpt.meta"))
        names = [v.name for v in tf.compat.v1.global_variables()]
        assert sum("svgd_rewrite" in n for n in names) == 3  # in the variables collection
        with tf.compat.v1.Session() as sess:
            saver.restore(sess, str(out / "model.ckpt"))
            np.testing.assert_array_equal(sess.run("w0:0"), original.get_tensor("w0"))
            assert not np.any(sess.run("svgd_rewrite/site_0/r:0"))
            sess.run("train", {"images:0": x, "labels:0": y, "learning_rate:0": LR})
            assert np.any(sess.run("svgd_rewrite/site_0/r:0"))
            sess.run(tf.compat.v1.global_variables_initializer())  # covers the accumulators
            assert not np.any(sess.run("svgd_rewrite/site_0/r:0"))


def _frozen_graph_def():
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 3), name="x")
        tf.matmul(x, tf.constant(np.ones((3, 2), np.float32)), name="logits")
    return g.as_graph_def()


def _two_train_ops_graph_def():
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 3), name="x")
        w = tf.compat.v1.Variable(np.ones((3, 2), np.float32), name="w")
        loss = tf.reduce_sum(tf.matmul(x, w) ** 2)
        tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(loss, name="train_a")
        tf.compat.v1.train.GradientDescentOptimizer(0.2).minimize(loss, name="train_b")
    return g.as_graph_def()


@pytest.mark.slow
def test_cli_bad_graph_inputs(tf1_files, tmp_path):
    pb = (tf1_files / "model.pb").read_bytes()
    (tmp_path / "truncated.pb").write_bytes(pb[: len(pb) // 3])
    (tmp_path / "garbage.pb").write_bytes(np.random.default_rng(1).bytes(3000))
    (tmp_path / "garbage.pbtxt").write_text("node { name: ")
    (tmp_path / "frozen.pb").write_bytes(_frozen_graph_def().SerializeToString())
    (tmp_path / "two.pb").write_bytes(_two_train_ops_graph_def().SerializeToString())
    cases = {"truncated.pb": "corrupt", "garbage.pb": "corrupt", "garbage.pbtxt": "corrupt",
             "frozen.pb": "training graph", "two.pb": "train_a"}
    for name, expected in cases.items():
        proc = _cli(tmp_path / name, tmp_path / f"out_{name}")
        lines = [ln for ln in proc.stderr.strip().splitlines() if not STAGE_LINE.match(ln)]
        assert proc.returncode == 2 and len(lines) == 1, (name, proc.stderr)
        assert expected in lines[0] and "Traceback" not in proc.stderr, (name, lines)
        assert not (tmp_path / f"out_{name}").exists()
    ok = _cli(tmp_path / "two.pb", tmp_path / "out_two", "--train-op", "train_b", "-q")
    assert ok.returncode == 0, ok.stderr
    assert not [p for p in os.listdir(tmp_path) if ".svgd-tmp-" in p]


def test_rewriting_a_rewritten_graph_is_refused():
    g = tf1_graphs.build("mlp_l1")
    result = rewrite_graph_def(g.graph.as_graph_def())
    with pytest.raises(svgd_rewrite.AlreadyRewrittenError):
        rewrite_graph_def(result.graph_def)


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_tf1_stateful_optimizers_match_oracle(optimizer):
    """TF1 MomentumOptimizer / AdamOptimizer (fused ApplyMomentum / ApplyAdam): the oracle feeds
    the virtual gradients to the Keras optimizer with the same update rule."""
    import keras

    g = tf1_graphs.build("mlp_l1", seed=4, optimizer=optimizer)
    result = rewrite_graph_def(g.graph.as_graph_def())
    assert [s.variable for s in result.report.sites] == ["w0", "w1", "w2"]
    assert result.report.memory.params == sum(
        int(np.prod(v.shape)) for v in make_module("mlp_l1").params.values())
    warning = next(w for w in result.report.warnings if "optimizer with state" in w)
    assert ("Momentum" if optimizer == "momentum" else "Adam") in warning
    reference = make_module("mlp_l1", seed=4, lr=LR)
    keras_opt = (keras.optimizers.SGD(LR, momentum=0.9) if optimizer == "momentum"
                 else keras.optimizers.Adam(LR, epsilon=1e-7))
    batches = _batches(reference.spec, 4)
    snaps, accs = _run_session(result.graph_def, g, result.train_op, batches,
                               result.accumulator_reads)
    oracle = Oracle(reference.spec, reference.params, reference.state, learning_rate=LR,
                    optimizer=keras_opt)
    for i, (x, y) in enumerate(batches):
        oracle.step(tf.constant(x), tf.constant(y))
        assert_close(snaps[i], {k: v.numpy() for k, v in reference.params.items()},
                     1e-5 if i == 0 else 1e-4, f"step {i}")
    assert_close(dict(enumerate(accs)), {i: a.numpy() for i, a in enumerate(oracle.accumulators)},
                 1e-4, "accumulators")


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_tf1_formats_count_the_same_parameters(tmp_path, optimizer):
    """.pb, .pbtxt and .meta of one graph: the same trained parameters (slots are state, not
    parameters) and the same warnings."""
    from svgd_rewrite.runner import rewrite_graph_file

    g = tf1_graphs.build("mlp_l1", optimizer=optimizer)
    with g.graph.as_default(), tf.compat.v1.Session() as sess:
        sess.run(g.init_op)
        tf.compat.v1.train.Saver().save(sess, str(tmp_path / "model.ckpt"))
        gd = g.graph.as_graph_def()
    tf.io.write_graph(gd, str(tmp_path), "model.pb", as_text=False)
    tf.io.write_graph(gd, str(tmp_path), "model.pbtxt", as_text=True)
    reports = [rewrite_graph_file(str(tmp_path / name), None, dry_run=True).report
               for name in ("model.pb", "model.pbtxt", "model.ckpt.meta")]
    params = sum(int(np.prod(v.shape)) for v in make_module("mlp_l1").params.values())
    assert [r.memory.params for r in reports] == [params] * 3
    assert reports[0].warnings == reports[1].warnings == reports[2].warnings
    assert any("optimizer with state" in w for w in reports[0].warnings)


def test_meta_checkpoint_state_resolves_after_a_move(tmp_path):
    """``tf.train.latest_checkpoint(OUT)`` names a checkpoint inside OUT, also after ``mv``;
    restoring it gives the original values and zero accumulators."""
    from svgd_rewrite.runner import rewrite_graph_file

    g = tf1_graphs.build("mlp_l1", optimizer="momentum")
    with g.graph.as_default(), tf.compat.v1.Session() as sess:
        sess.run(g.init_op)
        tf.compat.v1.train.Saver().save(sess, str(tmp_path / "in" / "model.ckpt"))
        original = {k: sess.run(v) for k, v in g.params.items()}
    result = rewrite_graph_file(str(tmp_path / "in" / "model.ckpt.meta"), str(tmp_path / "out"))
    os.rename(tmp_path / "out", tmp_path / "moved")
    latest = tf.train.latest_checkpoint(str(tmp_path / "moved"))
    assert latest is not None and latest.startswith(str(tmp_path / "moved"))
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        saver = tf.compat.v1.train.import_meta_graph(latest + ".meta")
        saver.restore(sess, latest)
        for k, v in g.params.items():
            np.testing.assert_array_equal(sess.run(v), original[k])
        for read in result.accumulator_reads:
            assert not np.any(sess.run(read))


def test_tf1_v1_while_loop_graph():
    """A tf.compat.v1.while_loop (Enter/Merge/NextIteration back edge): the sites outside the
    loop are rewritten, the kernel used inside it is reported, and the result runs."""
    tf.compat.v1.disable_control_flow_v2()
    try:
        graph = tf.Graph()
        with graph.as_default():
            x = tf.compat.v1.placeholder(tf.float32, (4, 3), name="x")
            w1 = tf.compat.v1.get_variable("w1", (3, 3))
            w2 = tf.compat.v1.get_variable("w2", (3, 2))
            h = tf.matmul(x, w1)
            _, h2 = tf.compat.v1.while_loop(
                lambda i, a: i < 2, lambda i, a: (i + 1, tf.tanh(tf.matmul(a, w1))),
                [tf.constant(0), h])
            loss = tf.reduce_mean(tf.square(tf.matmul(h2, w2)))
            tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(loss, name="train")
            tf.compat.v1.global_variables_initializer()
        graph_def = graph.as_graph_def()
    finally:
        tf.compat.v1.enable_control_flow_v2()
    assert any(n.op == "NextIteration" for n in graph_def.node)
    result = rewrite_graph_def(graph_def)
    assert sorted(s.variable for s in result.report.sites) == ["w1", "w2"]
    inside = [k for k in result.report.skipped if "while_loop" in k.reason]
    assert [k.variable for k in inside] == ["w1"]
    run = tf.Graph()
    with run.as_default():
        tf.compat.v1.import_graph_def(result.graph_def, name="")
    with tf.compat.v1.Session(graph=run) as sess:
        sess.run("init")
        for _ in range(2):
            sess.run("train", {"x:0": np.ones((4, 3), np.float32)})
        assert all(np.any(sess.run(r)) for r in result.accumulator_reads)


def test_meta_output_keeps_devices(tmp_path):
    """Devices of the input MetaGraph stay on its nodes in the output, and the inserted nodes
    take g's device; the output still restores and trains on this machine."""
    from svgd_rewrite.runner import rewrite_graph_file

    g = tf1_graphs.build("mlp_l1")
    placed = [op.name for op in g.graph.get_operations()]
    for op in g.graph.get_operations():
        op._set_device("/device:CPU:0")  # as tf.device("/cpu:0") around 2018 model code does
    with g.graph.as_default(), tf.compat.v1.Session() as sess:
        sess.run(g.init_op)
        tf.compat.v1.train.Saver().save(sess, str(tmp_path / "in" / "model.ckpt"))
    rewrite_graph_file(str(tmp_path / "in" / "model.ckpt.meta"), str(tmp_path / "out"))
    meta = tf.compat.v1.MetaGraphDef()
    meta.ParseFromString((tmp_path / "out" / "model.ckpt.meta").read_bytes())
    nodes = {n.name: n for n in meta.graph_def.node}
    inserted = [n for name, n in nodes.items() if name.startswith("svgd_rewrite/site_")]
    assert inserted and all(n.device == "/device:CPU:0" for n in inserted)
    assert all(nodes[name].device == "/device:CPU:0" for name in placed)
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        saver = tf.compat.v1.train.import_meta_graph(str(tmp_path / "out" / "model.ckpt.meta"))
        saver.restore(sess, str(tmp_path / "out" / "model.ckpt"))


def test_tf1_graph_takes_s_rho_epsilon_as_inputs_with_defaults():
    """s, ρ, ε are ``PlaceholderWithDefault`` nodes holding the options' values: feeding
    ``svgd_rewrite/scale:0`` trains as a rewrite made with that scale; a schedule is refused
    (a TF1 graph cannot call it)."""
    g = tf1_graphs.build("mlp_l1", seed=1)
    batches = _batches(make_module("mlp_l1").spec)
    result = rewrite_graph_def(g.graph.as_graph_def(), scale=0.1)
    nodes = {n.name: n for n in result.graph_def.node}
    for name, value in (("scale", 0.1), ("rho", 0.9), ("epsilon", 1e-6)):
        node = nodes[f"svgd_rewrite/{name}"]
        assert node.op == "PlaceholderWithDefault"
        default = nodes[node.input[0]].attr["value"].tensor
        assert tf.make_ndarray(default) == pytest.approx(value)
    fed, _ = _run_session(result.graph_def, g, result.train_op, batches,
                          feeds={"svgd_rewrite/scale:0": 0.03})
    made = rewrite_graph_def(g.graph.as_graph_def(), scale=0.03)
    want, _ = _run_session(made.graph_def, g, made.train_op, batches)
    default, _ = _run_session(result.graph_def, g, result.train_op, batches)
    assert_close(fed[-1], want[-1], 1e-6, "fed scale")
    assert max(np.max(np.abs(default[-1][k] - want[-1][k])) for k in want[-1]) > 1e-4
    with pytest.raises(svgd_rewrite.InvalidOptionError, match="feed svgd_rewrite/scale:0"):
        rewrite_graph_def(g.graph.as_graph_def(), scale=lambda k: 0.1)
