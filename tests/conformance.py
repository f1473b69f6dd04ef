"""The layer-configuration conformance suite, generated from tables: every Keras 3 layer that
owns a kernel × the options that change its graph × precision and loss scaling.

Each case is a model ``Input → layer → tanh → Flatten → Dense(3)`` trained by ``fit`` for three
batches with SGD, three ways: plain Keras; ``enable(transform="identity")`` (must equal plain
Keras bit for bit); and SVGD, compared with ``LayerOracle`` — Algorithm 1 computed eagerly on
the outputs of the model's own layers (g = ∂J/∂(layer output), ĝ = s·g·rsqrt(r+ε), θ's virtual
gradient = the VJP of the layer at ĝ), sharing no code with the rewriter. A kernel the tool
leaves on plain gradients must be named in the report's skipped list with a reason and in a
warning; the oracle then gives it its plain gradient.

``python tests/conformance.py`` prints the table in docs/algorithm.md.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

L = keras.layers
BATCH, STEPS, LR, SCALE = 8, 3, 0.05, 0.1
LORA = ("lora_kernel_a", "lora_kernel_b")  # A·B has no data batch: plain gradients


@dataclass(frozen=True)
class Case:
    """One configuration: ``make()`` builds the layer under test for ``input_shape``;
    ``reduce``: how r's rows are counted for a kernel of that layer (``batch``: σ' without its
    batch axis; ``rows``: every axis but the last — a Dense on sequences, whose MatMul sees
    batch × positions as rows); ``plain``: kernels expected on plain gradients (with the
    reason's key words)."""

    layer: str
    option: str
    input_shape: tuple[int, ...]
    make: Callable[[], keras.layers.Layer]
    reduce: str = "batch"
    plain: tuple[str, ...] = ()
    precision: str = "float32"  # float32 | mixed_float16
    optimizer: str = "sgd"  # sgd | loss_scale_optimizer | loss_scale_factor
    slow: bool = True

    @property
    def id(self) -> str:
        extra = "" if (self.precision, self.optimizer) == ("float32", "sgd") else (
            f"-{self.precision}-{self.optimizer}")
        return f"{self.layer}-{self.option}{extra}".replace(" ", "_").replace("=", "")


# layer → (input shape, builder taking the option's keyword arguments, options)
_LAYERS: dict[str, tuple[tuple[int, ...], Callable[..., keras.layers.Layer], dict[str, dict]]] = {
    "Dense": ((6,), lambda **k: L.Dense(5, **k),
              {"default": {}, "use_bias=False": {"use_bias": False}}),
    "Conv1D": ((12, 2), lambda **k: L.Conv1D(4, 3, **k),
               {"default": {}, "strides=2": {"strides": 2}, "padding=same": {"padding": "same"},
                "causal": {"padding": "causal"}, "dilation_rate=2": {"dilation_rate": 2},
                "causal dilation_rate=2": {"padding": "causal", "dilation_rate": 2},
                "groups=2": {"groups": 2}, "causal groups=2": {"padding": "causal", "groups": 2}}),
    "Conv2D": ((8, 8, 2), lambda **k: L.Conv2D(4, 3, **k),
               {"default": {}, "strides=2": {"strides": 2}, "padding=same": {"padding": "same"},
                "dilation_rate=2": {"dilation_rate": 2},
                "dilation_rate=2 padding=same": {"dilation_rate": 2, "padding": "same"},
                "groups=2": {"groups": 2}, "use_bias=False": {"use_bias": False}}),
    "Conv3D": ((6, 6, 6, 2), lambda **k: L.Conv3D(4, 2, **k),
               {"default": {}, "strides=2": {"strides": 2},
                "dilation_rate=2": {"dilation_rate": 2}, "groups=2": {"groups": 2}}),
    "DepthwiseConv1D": ((12, 2), lambda **k: L.DepthwiseConv1D(3, **k),
                        {"default": {}, "dilation_rate=2": {"dilation_rate": 2}}),
    "DepthwiseConv2D": ((8, 8, 2), lambda **k: L.DepthwiseConv2D(3, **k),
                        {"default": {}, "depth_multiplier=2": {"depth_multiplier": 2},
                         "strides=2": {"strides": 2}, "dilation_rate=2": {"dilation_rate": 2},
                         "depth_multiplier=2 dilation_rate=2": {"depth_multiplier": 2,
                                                                "dilation_rate": 2}}),
    "SeparableConv2D": ((8, 8, 2), lambda **k: L.SeparableConv2D(4, 3, **k),
                        {"default": {}, "depth_multiplier=2": {"depth_multiplier": 2},
                         "dilation_rate=2": {"dilation_rate": 2}}),
    "Conv1DTranspose": ((6, 2), lambda **k: L.Conv1DTranspose(3, 3, **k),
                        {"default": {}, "strides=2": {"strides": 2}}),
    "Conv2DTranspose": ((5, 5, 2), lambda **k: L.Conv2DTranspose(3, 3, **k),
                        {"default": {}, "strides=2 padding=same": {"strides": 2,
                                                                   "padding": "same"}}),
    "EinsumDense": ((6,), lambda **k: L.EinsumDense("ab,bc->ac", output_shape=5, **k),
                    {"default": {}}),
}

_FAST = {"Conv2D-groups=2", "Conv2D-dilation_rate=2", "Conv1D-causal_dilation_rate=2",
         "Dense-lora", "Dense-default-float32-loss_scale_factor"}


def _lora(make: Callable[[], keras.layers.Layer], input_shape: tuple[int, ...]):
    """A layer with LoRA enabled (rank 2): its kernel frozen, A and B trained."""
    def build():
        layer = make()
        layer.build((None,) + input_shape)
        layer.enable_lora(2)
        return layer
    return build


def cases() -> list[Case]:
    """Every layer × option, then the sequence, wrapper, LoRA and precision cases."""
    out = []
    for name, (shape, build, options) in _LAYERS.items():
        for option, kwargs in options.items():
            out.append(Case(name, option, shape, lambda b=build, k=kwargs: b(**k)))
    out += [
        Case("Dense", "rank-3 input", (4, 6), lambda: L.Dense(5), reduce="rows"),
        Case("Dense", "rank-4 input", (3, 2, 6), lambda: L.Dense(5), reduce="rows"),
        Case("TimeDistributed", "Dense", (4, 6), lambda: L.TimeDistributed(L.Dense(5)),
             reduce="rows"),
        # an EinsumDense keeps the sequence axis in σ' (BatchMatMul): r is [T, units]
        Case("EinsumDense", "sequence", (4, 6),
             lambda: L.EinsumDense("abc,cd->abd", output_shape=(4, 5))),
        Case("Dense", "lora", (6,), _lora(lambda: L.Dense(5), (6,)), plain=LORA),
        Case("Conv2D", "lora", (8, 8, 2), _lora(lambda: L.Conv2D(4, 3), (8, 8, 2)), plain=LORA),
        Case("EinsumDense", "lora", (6,),
             _lora(lambda: L.EinsumDense("ab,bc->ac", output_shape=5), (6,)), plain=LORA),
        Case("Dense", "lora", (6,), _lora(lambda: L.Dense(5), (6,)), plain=LORA,
             precision="mixed_float16", optimizer="loss_scale_optimizer"),
    ]
    for (precision, optimizer), (name, shape, build) in itertools.product(
            (("float32", "loss_scale_optimizer"), ("float32", "loss_scale_factor"),
             ("mixed_float16", "loss_scale_optimizer")),
            (("Dense", (6,), lambda: L.Dense(5)), ("Conv2D", (8, 8, 2), lambda: L.Conv2D(4, 3)))):
        out.append(Case(name, "default", shape, build, precision=precision,
                        optimizer=optimizer))
    return [c if c.id not in _FAST else _fast(c) for c in out]


def _fast(case: Case) -> Case:
    return Case(**{**case.__dict__, "slow": False})


# --- building and training --------------------------------------------------------------

def _optimizer(case: Case):
    if case.optimizer == "loss_scale_factor":
        return keras.optimizers.SGD(LR, loss_scale_factor=1024.0)
    sgd = keras.optimizers.SGD(LR)
    if case.optimizer == "loss_scale_optimizer" or case.precision == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(sgd, initial_scale=1024.0)
    return sgd


def build_model(case: Case, seed: int = 0) -> keras.Model:
    """The case's model, compiled; the same seed gives the same weights."""
    keras.mixed_precision.set_global_policy(case.precision)
    try:
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input(case.input_shape), case.make(),
                                  L.Activation("tanh"), L.Flatten(),
                                  L.Dense(3, dtype="float32", name="head")])
        model.compile(_optimizer(case),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return model


def data(case: Case) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(BATCH * STEPS,) + case.input_shape).astype(np.float32)
    return x, (np.arange(BATCH * STEPS) % 3).astype(np.int64)


def fit(model: keras.Model, case: Case) -> None:
    x, y = data(case)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)


def weights(model: keras.Model) -> dict[str, np.ndarray]:
    """The trainable weights by position and name (Keras numbers layer names per process)."""
    return {f"{i}.{w.name}": np.asarray(w.numpy(), np.float64)
            for i, w in enumerate(model.trainable_weights)}


# --- the oracle ---------------------------------------------------------------------------

@dataclass
class LayerOracle:
    """SVGD by Algorithm 1 on a model's own layers, eagerly: each kernel's σ' is the output of
    the layer applying it (the inner depthwise output of SeparableConv2D), g = ∂J/∂σ' and the
    virtual gradient the layer's VJP at ĝ; every other variable (biases, kernels in
    ``plain``) gets its plain gradient. SGD updates."""

    model: keras.Model
    reduce: str
    plain: tuple[str, ...] = ()
    r: dict[str, tf.Tensor] = field(default_factory=dict)

    def _site_layers(self):
        return [layer for layer in self.model.layers if layer.trainable_weights]

    @staticmethod
    def _kernels(layer) -> list:
        return [w for w in layer.trainable_weights if len(w.shape) >= 2]

    def _apply(self, layer, x, kernel=None, record=None):
        """The layer's output, recording each kernel's σ' (``record(kernel, σ', fn)``, fn:
        the kernel → σ' map at fixed input)."""
        if isinstance(layer, L.SeparableConv2D):
            dw, pw = layer.depthwise_kernel, layer.pointwise_kernel

            def depthwise(k, x=x):
                return tf.nn.depthwise_conv2d(tf.cast(x, k.dtype), k, [1, *layer.strides, 1],
                                              layer.padding.upper(), dilations=layer.dilation_rate)
            h = depthwise(tf.cast(dw, layer.compute_dtype))
            if record:
                h = record(dw, h, depthwise)

            def pointwise(k, h=h):
                return tf.nn.conv2d(h, k, 1, "VALID")
            out = pointwise(tf.cast(pw, layer.compute_dtype))
            if record:
                out = record(pw, out, pointwise)
            return out + tf.cast(layer.bias, out.dtype) if layer.use_bias else out
        out = layer(x)
        kernels = [k for k in self._kernels(layer) if k.path.split("/")[-1] not in self.plain]
        if record and kernels:
            (k,) = kernels

            def fn(value, layer=layer, x=x, k=k):
                return _with_value(layer, k, value, x)
            out = record(k, out, fn)
        return out

    def step(self, x: np.ndarray, y: np.ndarray, rho=0.9, eps=1e-6) -> None:
        x = tf.constant(x)
        sites = []
        with tf.GradientTape() as tape:
            def record(kernel, out, fn):
                tape.watch(out)
                sites.append((kernel, out, fn))
                return out
            h = x
            for layer in self.model.layers:
                h = self._apply(layer, h, record=record) if layer.trainable_weights else layer(h)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.constant(y), logits=tf.cast(h, tf.float32)))
        variables = self.model.trainable_weights
        grads = tape.gradient(loss, [s[1] for s in sites] + list(variables))
        g_sites, g_vars = grads[:len(sites)], grads[len(sites):]
        updates = {id(v): g for v, g in zip(variables, g_vars)}
        for (kernel, out, fn), g in zip(sites, g_sites):
            g32 = tf.cast(g, tf.float32)
            axes = [0] if self.reduce == "batch" else list(range(len(g.shape) - 1))
            if len(g.shape) == 2:  # a Dense on rank-2 input (the head): rows are the batch
                axes = [0]
            r = rho * self.r.get(kernel.path, 0.0) + (1 - rho) * tf.reduce_mean(
                tf.square(g32), axis=axes)
            self.r[kernel.path] = r
            ghat = tf.cast(SCALE * g32 * tf.math.rsqrt(r + eps), g.dtype)
            value = tf.cast(kernel, g.dtype)
            with tf.GradientTape() as vjp:
                vjp.watch(value)
                sigma = fn(value)
            updates[id(kernel)] = tf.cast(vjp.gradient(sigma, value, output_gradients=ghat),
                                          tf.float32)
        for v in variables:
            v.assign_sub(LR * tf.cast(updates[id(v)], v.dtype))


def _with_value(layer, kernel, value, x):
    """The layer's output with ``kernel`` replaced by ``value`` (a tensor on a tape); the
    kernel's owner may be a wrapped layer (``TimeDistributed``)."""
    owner = layer
    while not any(v is kernel for v in vars(owner).values()):
        owner = owner.layer
    attr = next(a for a, v in vars(owner).items() if v is kernel)
    object.__setattr__(owner, attr, value)
    try:
        return layer(x)
    finally:
        object.__setattr__(owner, attr, kernel)


def oracle_weights(case: Case) -> dict[str, np.ndarray]:
    """The SVGD weights after ``STEPS`` batches, by ``LayerOracle``."""
    model = build_model(case)
    oracle = LayerOracle(model, case.reduce, case.plain)
    x, y = data(case)
    for k in range(STEPS):
        oracle.step(x[k * BATCH:(k + 1) * BATCH], y[k * BATCH:(k + 1) * BATCH])
    return weights(model)


def relative(a: dict, b: dict) -> float:
    return max(float(np.linalg.norm(a[k] - b[k]) / max(np.linalg.norm(b[k]), 1e-12))
               for k in b)


def table_row(case: Case, report) -> str:
    """The docs/algorithm.md row for ``case``: the tested layer's kernels, transformed (r's shape) or
    left on plain gradients (the reason)."""
    cells = []
    for s in report.sites:
        if "/head/" not in s.variable:
            cells.append(f"`{s.variable.split('/')[-1]}` r {list(s.accumulator_shape)}")
    for k in report.skipped:
        if k.variable.split("/")[-1] in case.plain and k.op != "BiasAdd":
            cells.append(f"`{k.variable.split('/')[-1]}` plain: {k.reason.split(':')[0]}")
    setup = case.option + ("" if (case.precision, case.optimizer) == ("float32", "sgd")
                           else f", {case.precision}, {case.optimizer}")
    return f"| {case.layer} | {setup} | {'; '.join(cells)} |"


if __name__ == "__main__":  # the table in docs/algorithm.md
    import svgd_rewrite.keras as sk

    print("| layer | configuration | kernels: transformed (r) or plain (why) |")
    print("|---|---|---|")
    for case in cases():
        model = build_model(case)
        state = sk.enable(model, scale=SCALE)
        model.train_on_batch(*[a[:BATCH] for a in data(case)])
        print(table_row(case, state.report))
