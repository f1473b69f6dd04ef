"""The independent eager oracle: Algorithm 1 in plain TensorFlow, sharing no code with the
rewriter.

It runs a fixture model's forward pass eagerly with recording ops: each linear op whose
kind is transformed is computed on ``stop_gradient(θ)`` and its output σ' recorded. One
GradientTape gives g = ∂J/∂σ' for every site and the true gradient of every other path
(L1 penalty, biases, norms). Each θ's accumulator is updated from mean(g²) over the rows of
every op that applies θ (``pooling="variable"``; ``"application"``: one accumulator per op),
ĝ is formed, and θ's contribution is the VJP of each single op applied to its ĝ (a second
tape with ``output_gradients``). Then θ ← θ − α·(sum of contributions), i.e. SGD on virtual
gradients.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import tensorflow as tf

from fixtures.models import LOSS_SCALE, ModelSpec, ParamView, PlainOps, conv2d, loss_fn


@dataclass
class _Site:
    kind: str
    param: str
    weight: tf.Tensor  # θ as the op sees it (cast to the compute dtype)
    recompute: Callable[[tf.Tensor], tf.Tensor]
    output: tf.Tensor
    batch_axis: int
    channel_axis: int


class _RecordingOps(PlainOps):
    def __init__(self, names: dict[int, str], kinds: set[str], tape: tf.GradientTape):
        self.names, self.kinds, self.tape, self.sites = names, kinds, tape, []

    def _record(self, kind, w, recompute, batch_axis, channel_axis):
        y = recompute(tf.stop_gradient(w))
        self.tape.watch(y)
        self.sites.append(_Site(kind, self.names[id(w)], w, recompute, y, batch_axis,
                                channel_axis))
        return y

    def _wants(self, kind, w):
        return kind in self.kinds and id(w) in self.names

    def matmul(self, a, b, *, param="b", transpose_a=False, transpose_b=False):
        w = b if param == "b" else a
        if not self._wants("MatMul", w):
            return super().matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)
        if param == "b":
            fn = lambda wv: tf.matmul(a, wv, transpose_a=transpose_a, transpose_b=transpose_b)
            return self._record("MatMul", w, fn, 0, 1)
        fn = lambda wv: tf.matmul(wv, b, transpose_a=transpose_a, transpose_b=transpose_b)
        return self._record("MatMul", w, fn, 1, 0)

    def conv2d(self, x, kernel, *, strides=1, padding="SAME", data_format="NHWC", dilations=1):
        if not self._wants("Conv2D", kernel):
            return super().conv2d(x, kernel, strides=strides, padding=padding,
                                  data_format=data_format, dilations=dilations)
        fn = lambda kv: conv2d(x, kv, strides=strides, padding=padding,
                               data_format=data_format, dilations=dilations)
        return self._record("Conv2D", kernel, fn, 0, 3 if data_format == "NHWC" else 1)

    def conv1d(self, x, kernel, *, stride=1, padding="VALID"):
        if not self._wants("Conv2D", kernel):
            return super().conv1d(x, kernel, stride=stride, padding=padding)
        fn = lambda kv: tf.nn.conv1d(x, kv, stride=stride, padding=padding)
        return self._record("Conv2D", kernel, fn, 0, 2)

    def conv3d(self, x, kernel, *, strides=1, padding="VALID"):
        if not self._wants("Conv3D", kernel):
            return super().conv3d(x, kernel, strides=strides, padding=padding)
        fn = lambda kv: tf.nn.conv3d(x, kv, strides=[1, strides, strides, strides, 1],
                                     padding=padding)
        return self._record("Conv3D", kernel, fn, 0, 4)

    def depthwise_conv2d(self, x, kernel, *, strides=1, padding="VALID"):
        if not self._wants("DepthwiseConv2dNative", kernel):
            return super().depthwise_conv2d(x, kernel, strides=strides, padding=padding)
        fn = lambda kv: tf.nn.depthwise_conv2d(x, kv, strides=[1, strides, strides, 1],
                                               padding=padding)
        return self._record("DepthwiseConv2dNative", kernel, fn, 0, 3)

    def conv_transpose(self, x, kernel, *, output_shape, strides=2, padding="VALID"):
        kind = "Conv2DBackpropInput" if len(kernel.shape) == 4 else "Conv3DBackpropInputV2"
        if not self._wants(kind, kernel):
            return super().conv_transpose(x, kernel, output_shape=output_shape,
                                          strides=strides, padding=padding)
        fn = lambda kv: PlainOps.conv_transpose(self, x, kv, output_shape=output_shape,
                                                strides=strides, padding=padding)
        return self._record(kind, kernel, fn, 0, len(output_shape))

    def batch_matmul(self, x, kernel, *, adjoint_b=False):
        if not self._wants("BatchMatMulV2", kernel):
            return super().batch_matmul(x, kernel, adjoint_b=adjoint_b)
        fn = lambda kv: tf.linalg.matmul(x, kv, adjoint_b=adjoint_b)
        return self._record("BatchMatMulV2", kernel, fn, 0, len(x.shape) - 1)

    def einsum(self, equation, x, kernel):
        if not self._wants("Einsum", kernel):
            return super().einsum(equation, x, kernel)
        out = equation.split("->")[1]
        theta = equation.split("->")[0].split(",")[1]
        batch = next(i for i, c in enumerate(out) if c not in theta)
        channel = max(i for i, c in enumerate(out) if c in theta)
        return self._record("Einsum", kernel, lambda kv: tf.einsum(equation, x, kv), batch,
                            channel)

    def bias_add(self, h, bias, *, data_format="NHWC"):
        if not self._wants("BiasAdd", bias):
            return super().bias_add(h, bias, data_format=data_format)
        fn = lambda bv: PlainOps.bias_add(self, h, bv, data_format=data_format)
        return self._record("BiasAdd", bias, fn, 0,
                            len(h.shape) - 1 if data_format == "NHWC" else 1)


class Oracle:
    """SVGD by Algorithm 1 on eager copies of a fixture model's variables."""

    def __init__(self, spec: ModelSpec, params: dict[str, tf.Variable],
                 state: dict[str, tf.Variable], *, learning_rate: float, scale: float = 0.1,
                 rho: float = 0.9, epsilon: float = 1e-6, granularity: str = "full",
                 kinds=("MatMul", "Conv2D"), transform: str = "svgd", dtype=tf.float32,
                 optimizer=None, loss_scale: float | None = None, pooling: str = "variable"):
        """``optimizer``: a Keras optimizer fed the virtual gradients (default: plain SGD at
        ``learning_rate``); a ``LossScaleOptimizer`` is given the scaled gradients.
        ``loss_scale``: the float16 loss scale (default: the fixtures' static one)."""
        self.spec, self.params, self.state = spec, params, state
        self.lr, self.s, self.rho, self.eps = learning_rate, scale, rho, epsilon
        self.granularity, self.kinds, self.transform = granularity, set(kinds), transform
        self.dtype = tf.as_dtype(dtype)
        # float64 runs keep r and the sums in float64 (the reference when float32 rounding
        # grows over steps); otherwise float32, like the rewrite's accumulators
        self.acc = tf.float64 if self.dtype == tf.float64 else tf.float32
        self.loss_scale = (loss_scale or LOSS_SCALE) if self.dtype == tf.float16 else 1.0
        self.optimizer = optimizer
        self.pooling = pooling
        self.accumulators: list[tf.Tensor] | None = None
        self.site_params: list[str] = []

    def step(self, x, y) -> float:
        names = sorted(self.params)
        with tf.GradientTape() as tape:
            view = ParamView(self.params, self.dtype)
            ops = _RecordingOps(view.names, self.kinds, tape)
            logits = self.spec.forward(ops, view, self.state, tf.cast(x, self.dtype), True)
            loss = loss_fn(self.spec, logits, y, self.params)
            scaled = loss * self.loss_scale
        sites = ops.sites
        sources = [v if isinstance(v, tf.Variable) else v.value  # a Keras variable's tf.Variable
                   for v in (self.params[k] for k in names)]
        grads = tape.gradient(scaled, [s.output for s in sites] + sources)
        total = {k: (g if g is not None else tf.zeros_like(self.params[k]))
                 for k, g in zip(names, grads[len(sites):])}
        groups: dict = {}
        for i, (site, g) in enumerate(zip(sites, grads[:len(sites)])):
            key = (site.param, site.kind == "BiasAdd") if self.pooling == "variable" else i
            groups.setdefault(key, []).append((site, g))
        if self.accumulators is None:
            self.accumulators = [None] * len(groups)
            self.site_params = [members[0][0].param for members in groups.values()]
        for i, members in enumerate(groups.values()):
            sums, rows, axes_of = 0.0, 0.0, []
            for site, g in members:
                rank = len(g.shape)
                if self.granularity == "full":
                    axes = [site.batch_axis]
                else:
                    axes = [a for a in range(rank) if a != site.channel_axis]
                axes_of.append(axes)
                g32 = tf.cast(g, self.acc) / self.loss_scale
                part = tf.reduce_sum(tf.square(g32), axis=axes)
                sums = sums + part
                rows = rows + float(tf.size(g32)) / float(tf.size(part))
            mean_sq = sums / rows
            r_old = self.accumulators[i] if self.accumulators[i] is not None else tf.zeros_like(mean_sq)
            r = self.rho * r_old + (1.0 - self.rho) * mean_sq
            self.accumulators[i] = r
            for (site, g), axes in zip(members, axes_of):
                rank = len(g.shape)
                if self.transform == "svgd":
                    g32 = tf.cast(g, self.acc)
                    r_b = tf.reshape(r, [g.shape[a] if a not in axes else 1 for a in range(rank)])
                    g_hat = tf.cast(self.s * g32 / tf.sqrt(r_b + self.eps), g.dtype)
                else:
                    g_hat = g
                w = site.weight
                with tf.GradientTape() as vjp_tape:
                    vjp_tape.watch(w)
                    out = site.recompute(w)
                vjp = vjp_tape.gradient(out, w, output_gradients=g_hat)
                total[site.param] = total[site.param] + tf.cast(vjp, total[site.param].dtype)
        if self.optimizer is not None:
            unscale = 1.0 if hasattr(self.optimizer, "scale_loss") else self.loss_scale
            self.optimizer.apply_gradients(
                [(total[k] / unscale, self.params[k]) for k in names])
            return float(loss)
        for k in names:
            self.params[k].assign_sub(self.lr * total[k] / self.loss_scale)
        return float(loss)
