"""r is state of θ: one accumulator per trained variable, pooled over every application of θ
in a step, shared between rewrites when asked, saved and restored by name."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import svgd_rewrite
import svgd_rewrite.probe
from helpers import assert_close

rng = np.random.default_rng(0)
W1_INIT = rng.normal(size=(6, 8)).astype(np.float32) * 0.5
W2_INIT = rng.normal(size=(8, 3)).astype(np.float32) * 0.5


def _model():
    return (tf.Variable(W1_INIT, name="w1"), tf.Variable(W2_INIT, name="w2"))


def _loss(w1, w2, x, y):
    logits = tf.matmul(tf.tanh(tf.matmul(x, w1)), w2)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))


SPECS = [tf.TensorSpec((16, 6)), tf.TensorSpec((16,), tf.int32)]


def _whole_step(w1, w2, jit_compile=None):
    @tf.function(input_signature=SPECS, jit_compile=jit_compile)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = _loss(w1, w2, x, y)
        g1, g2 = tape.gradient(loss, [w1, w2])
        w1.assign_sub(0.1 * g1)
        w2.assign_sub(0.1 * g2)
        return loss

    return step


def _micro_batch_step(w1, w2):
    """Two micro-batches of 8 accumulated inside one step (each loss halved)."""
    @tf.function(input_signature=SPECS)
    def step(x, y):
        total = [tf.zeros_like(w1), tf.zeros_like(w2)]
        losses = []
        for half in (slice(0, 8), slice(8, 16)):
            with tf.GradientTape() as tape:
                loss = _loss(w1, w2, x[half], y[half]) / 2
            total = [t + g for t, g in zip(total, tape.gradient(loss, [w1, w2]))]
            losses.append(loss)
        w1.assign_sub(0.1 * total[0])
        w2.assign_sub(0.1 * total[1])
        return losses[0] + losses[1]

    return step


def _batches(n=3):
    r = np.random.default_rng(1)
    return [(tf.constant(r.normal(size=(16, 6)).astype(np.float32)),
             tf.constant(r.integers(0, 3, 16).astype(np.int32))) for _ in range(n)]


def test_micro_batches_inside_a_step_train_like_the_whole_batch():
    """One accumulator per kernel fed by both micro-batches' rows: the step equals the same
    step on the whole batch (≤1e-5 after each of 3 steps), accumulators included."""
    whole_vars, micro_vars = _model(), _model()
    whole = svgd_rewrite.rewrite(_whole_step(*whole_vars))
    micro = svgd_rewrite.rewrite(_micro_batch_step(*micro_vars))
    assert len(micro.accumulators) == len(whole.accumulators) == 2
    assert [len(s.applications) for s in micro.report.sites] == [2, 2]
    for i, (x, y) in enumerate(_batches()):
        assert float(micro(x, y)) == pytest.approx(float(whole(x, y)), rel=1e-5)
        assert_close({f"w{k}": v.numpy() for k, v in enumerate(micro_vars)},
                     {f"w{k}": v.numpy() for k, v in enumerate(whole_vars)}, 1e-5, f"step {i}")
        assert_close(micro.state.values(), whole.state.values(), 1e-5, f"r, step {i}")


def test_rewrites_share_one_state_when_asked():
    """Two rewrites of the same step over one state read and update the same accumulators:
    alternating them trains like one rewrite."""
    a_vars, b_vars = _model(), _model()
    first = svgd_rewrite.rewrite(_whole_step(*a_vars))
    second = svgd_rewrite.rewrite(_whole_step(*a_vars), state=first.state)
    assert [id(v) for v in second.accumulators] == [id(v) for v in first.accumulators]
    single = svgd_rewrite.rewrite(_whole_step(*b_vars))
    for i, (x, y) in enumerate(_batches(4)):
        (first if i % 2 else second)(x, y)
        single(x, y)
    assert_close(first.state.values(), single.state.values(), 1e-6, "shared r")
    assert sorted(first.state.accumulators) == ["w1", "w2"]
    with pytest.raises(svgd_rewrite.InvalidOptionError, match="AccumulatorState"):
        svgd_rewrite.rewrite(_whole_step(*a_vars), state={})


def test_a_checkpoint_restores_accumulators_by_name(tmp_path):
    """tf.train.Checkpoint of a rewritten step, restored into a fresh rewrite before its
    first call: the accumulators come back by key, whatever order they are created in."""
    variables = _model()
    step = svgd_rewrite.rewrite(_whole_step(*variables))
    for x, y in _batches(2):
        step(x, y)
    path = tf.train.Checkpoint(step=step).write(str(tmp_path / "ckpt"))
    fresh_vars = _model()
    fresh = svgd_rewrite.rewrite(_whole_step(*fresh_vars))
    tf.train.Checkpoint(step=fresh).read(path).assert_existing_objects_matched()
    assert_close(fresh.state.values(), step.state.values(), 0, "restored r")
    assert all(a.name.startswith("svgd/") for a in fresh.accumulators)


# --- s, ρ, ε as state: schedules, changes between steps, resume ------------------------------

def _oracle_run(batches, scales, rho=0.9, eps=1e-6, lr=0.1):
    """Algorithm 1 on the two MatMul outputs, eagerly (independent of the rewriter): step k
    uses scales[k]; returns the weights after the run."""
    w1, w2 = (tf.Variable(W1_INIT, dtype=tf.float64), tf.Variable(W2_INIT, dtype=tf.float64))
    r = [tf.zeros(8, tf.float64), tf.zeros(3, tf.float64)]
    for (x, y), s in zip(batches, scales):
        x = tf.cast(x, tf.float64)
        with tf.GradientTape() as tape:
            h_pre = tf.matmul(x, w1)
            h = tf.tanh(h_pre)
            logits = tf.matmul(h, w2)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        g1, g2 = tape.gradient(loss, [h_pre, logits])
        for k, g in enumerate((g1, g2)):
            r[k] = rho * r[k] + (1 - rho) * tf.reduce_mean(tf.square(g), axis=0)
        ghat1, ghat2 = (s * g / tf.sqrt(r[k] + eps) for k, g in enumerate((g1, g2)))
        w1.assign_sub(lr * tf.matmul(x, ghat1, transpose_a=True))
        w2.assign_sub(lr * tf.matmul(h, ghat2, transpose_a=True))
    return w1.numpy(), w2.numpy()


def _weights(variables):
    return {f"w{k}": v.numpy() for k, v in enumerate(variables)}


def test_a_schedule_of_s_trains_step_k_with_s_of_k_in_one_trace():
    variables = _model()
    step = svgd_rewrite.rewrite(_whole_step(*variables), scale=lambda k: 0.2 * 0.5 ** k)
    batches = _batches(4)
    for x, y in batches:
        step(x, y)
    want = _oracle_run(batches, [0.2 * 0.5 ** k for k in range(4)])
    assert_close(_weights(variables), {"w0": want[0], "w1": want[1]}, 1e-5, "schedule")
    assert int(step.state.steps.numpy()) == 4
    assert step.state.hyperparameter_variables["scale"].numpy() == pytest.approx(0.025)
    assert len(step.function._list_all_concrete_functions_for_serialization()) == 1
    assert "(a schedule of the step)" in str(step.report).splitlines()[0]


def test_s_assigned_between_steps_takes_effect_without_a_retrace():
    variables = _model()
    step = svgd_rewrite.rewrite(_whole_step(*variables), scale=0.1)
    batches = _batches(4)
    for k, (x, y) in enumerate(batches):
        if k == 2:
            step.state.hyperparameter_variables["scale"].assign(0.03)
        step(x, y)
    want = _oracle_run(batches, [0.1, 0.1, 0.03, 0.03])
    assert_close(_weights(variables), {"w0": want[0], "w1": want[1]}, 1e-5, "assigned s")
    assert len(step.function._list_all_concrete_functions_for_serialization()) == 1


def test_a_resumed_schedule_continues_from_the_saved_step(tmp_path):
    """The steps trained are saved with the accumulators: a fresh rewrite restored from a
    checkpoint after 2 steps runs steps 2 and 3 of the schedule."""
    schedule = lambda k: 0.2 * 0.5 ** k  # noqa: E731
    batches = _batches(4)
    first_vars = _model()
    first = svgd_rewrite.rewrite(_whole_step(*first_vars), scale=schedule)
    for x, y in batches[:2]:
        first(x, y)
    path = tf.train.Checkpoint(step=first, w=list(first_vars)).write(str(tmp_path / "ckpt"))
    fresh_vars = _model()
    fresh = svgd_rewrite.rewrite(_whole_step(*fresh_vars), scale=schedule)
    tf.train.Checkpoint(step=fresh, w=list(fresh_vars)).read(path).assert_consumed()
    assert int(fresh.state.steps.numpy()) == 2
    for x, y in batches[2:]:
        fresh(x, y)
    want = _oracle_run(batches, [schedule(k) for k in range(4)])
    assert_close(_weights(fresh_vars), {"w0": want[0], "w1": want[1]}, 1e-5, "resumed")


def test_schedules_are_checked_when_given():
    with pytest.raises(svgd_rewrite.InvalidOptionError, match="scale's schedule at step 0"):
        svgd_rewrite.rewrite(_whole_step(*_model()), scale=lambda k: -1.0)
    with pytest.raises(svgd_rewrite.InvalidOptionError, match="fails at step 0"):
        svgd_rewrite.rewrite(_whole_step(*_model()), rho=lambda k: 1 / 0)


@pytest.mark.parametrize("forms", [(), ("columns",), ("gram",)],
                         ids=["direct", "columns", "gram"])
@pytest.mark.parametrize("post_scale", [True, False], ids=["post-scaled", "pre-scaled"])
def test_diagnostics_ratio_is_the_oracles_and_trains_nothing(post_scale, forms, monkeypatch):
    """``SVGDStep.diagnostics(x, y)``: per kernel, r's figures and ‖virtual gradient of θ‖ /
    ‖plain gradient of θ‖ on the batch, as Algorithm 1 computes them eagerly from the same r;
    no variable changes. ``run_with_taps`` then trains on the batch as a call of the step
    does, and ``ratios`` of its taps gives the same ratio. Both ways of norming a gradient:
    read directly, read once (post-scaled sites) and from the batch's Gram matrices (forced
    here for every kernel)."""
    monkeypatch.setattr(svgd_rewrite.probe, "FORMS", forms)
    monkeypatch.setattr(svgd_rewrite.probe, "GRAM_RATIO", 10 ** 9)
    variables = _model()
    step = svgd_rewrite.rewrite(_whole_step(*variables), scale=0.1, post_scale=post_scale)
    assert bool(step.edits.scaled) == post_scale and bool(step.edits.rerouted) != post_scale
    batches = _batches(3)
    for x, y in batches[:2]:
        step(x, y)
    x, y = batches[2]
    before = [v.numpy().copy() for v in variables] + [a.numpy().copy() for a in step.accumulators]
    figures = step.diagnostics(x, y)
    after = [v.numpy() for v in variables] + [a.numpy() for a in step.accumulators]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert int(step.state.steps.numpy()) == 2
    w1, w2 = (tf.constant(v.numpy(), tf.float64) for v in variables)
    r = step.state.values()
    xd = tf.cast(x, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch([w1, w2])
        h_pre = tf.matmul(xd, w1)
        h = tf.tanh(h_pre)
        logits = tf.matmul(h, w2)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
    g1, g2, d1, d2 = tape.gradient(loss, [h_pre, logits, w1, w2])
    wanted = {}
    for name, g, plain, inputs in (("w1", g1, d1, xd), ("w2", g2, d2, h)):
        r_step = 0.9 * r[name] + 0.1 * tf.reduce_mean(tf.square(g), axis=0)
        virtual = tf.matmul(inputs, 0.1 * g / tf.sqrt(r_step + 1e-6), transpose_a=True)
        wanted[name] = float(tf.norm(virtual) / tf.norm(plain))
        assert figures[name]["ratio"] == pytest.approx(wanted[name], rel=1e-4), name
        assert figures[name]["r_max"] == pytest.approx(float(np.max(r[name])))
        assert figures[name]["scale"] == pytest.approx(0.1)

    @tf.function
    def tapped(x, y):
        loss, taps = step.run_with_taps(x, y)
        return loss, step.ratios(taps)

    _, ratios = tapped(x, y)
    assert {k: float(v) for k, v in ratios.items()} == pytest.approx(wanted, rel=1e-4)
    added = [n for n in step._wiring.ratio_graph_def.node
             if n.name.startswith(svgd_rewrite.probe.RATIO_SCOPE)]
    ops = {n.op for n in added}
    assert any("gram" in n.name for n in added) == (forms == ("gram",))
    assert ("EuclideanNorm" in ops) == (forms == ("columns",) and post_scale)
    assert int(step.state.steps.numpy()) == 3
    want = _oracle_run(batches, [0.1] * 3)
    assert_close(_weights(variables), {"w0": want[0], "w1": want[1]}, 1e-5, "tapped step")


_WRITES = ("AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp")


def _post_scaled_after_two_steps(jit_compile):
    """The model's variables, its post-scaled step, and three batches, the first two run."""
    variables = _model()
    step = svgd_rewrite.rewrite(_whole_step(*variables, jit_compile), scale=0.1,
                                post_scale=True)
    batches = _batches(3)
    for x, y in batches[:2]:
        step(x, y)
    return variables, step, batches


@pytest.mark.parametrize("jit_compile", [None, True], ids=["graph", "xla"])
def test_run_with_taps_then_uses_the_ratio_before_the_step_writes(jit_compile):
    """``run_with_taps(..., then=f)``: f gets the ratio inside the step's own function, where
    nothing it builds waits for the step's variable writes (a ``tf.function``'s outputs wait
    for all of them, so a summary written from the returned ratio runs only after the step's
    last update); what f writes is the ratio ``ratios`` reads, and the step trains as a call
    does. A step compiled with XLA calls f after the step, in the caller's graph."""
    variables, step, batches = _post_scaled_after_two_steps(jit_compile)
    got = tf.Variable(tf.zeros([2]))
    built = {}

    def then(taps):
        built["graph"] = tf.compat.v1.get_default_graph()
        built["op"] = got.assign(taps[0], read_value=False)

    @tf.function
    def tapped(x, y):
        built["outer"] = tf.compat.v1.get_default_graph()
        loss, taps = step.run_with_taps(x, y, then=then)
        return loss, step.ratios(taps)

    _, ratios = tapped(*batches[2])
    assert got.numpy() == pytest.approx([float(ratios[n]) for n in ("w1", "w2")], rel=1e-6)
    assert (built["graph"] is built["outer"]) == bool(jit_compile)
    if not jit_compile:
        ops = {op.name: op for op in built["graph"].get_operations()}
        ancestors, todo = set(), [built["op"]]
        while todo:
            for parent in [t.op for t in todo[-1].inputs] + list(todo.pop().control_inputs):
                if parent.name not in ancestors:
                    ancestors.add(parent.name)
                    todo.append(parent)
        writes = [n for n, op in ops.items() if op.type in _WRITES]
        assert len(writes) > 2  # the step's own updates are in this graph
        assert not ancestors & set(writes), sorted(ancestors & set(writes))
    want = _oracle_run(batches, [0.1] * 3)
    assert_close(_weights(variables), {"w0": want[0], "w1": want[1]}, 1e-5, "tapped step")


@pytest.mark.parametrize("forms", [(), ("columns",), ("gram",)],
                         ids=["direct", "columns", "gram"])
def test_an_xla_steps_ratio_is_compiled_and_the_same(forms, monkeypatch):
    """A step declared with ``jit_compile=True`` (rewritten in the portable form) computes
    its ratio under XLA too: a post-scaled gradient read once without ``EuclideanNorm``
    (XLA has no kernel for it); the ratio is the one of the same step without XLA."""
    monkeypatch.setattr(svgd_rewrite.probe, "FORMS", forms)
    monkeypatch.setattr(svgd_rewrite.probe, "GRAM_RATIO", 10 ** 9)
    ratios = []
    for jit_compile in (None, True):
        _, step, batches = _post_scaled_after_two_steps(jit_compile)

        @tf.function(jit_compile=jit_compile)
        def tapped(x, y):
            loss, taps = step.run_with_taps(x, y)
            return loss, step.ratios(taps)

        ratios.append({k: float(v) for k, v in tapped(*batches[2])[1].items()})
        ops = {n.op for n in step._wiring.ratio_graph_def.node
               if n.name.startswith(svgd_rewrite.probe.RATIO_SCOPE)}
        assert ("EuclideanNorm" in ops) == (forms == ("columns",) and not jit_compile)
    assert ratios[1] == pytest.approx(ratios[0], rel=1e-4)
