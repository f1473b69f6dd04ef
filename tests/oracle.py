"""The independent eager oracle: Algorithm 1 in plain TensorFlow, sharing no code with the
rewriter.

It runs a fixture model's forward pass eagerly with recording ops: each linear op whose
kind is transformed is computed on ``stop_gradient(θ)`` and its output σ' recorded. One
GradientTape gives g = ∂J/∂σ' for every site and the true gradient of every other path
(L1 penalty, biases, norms). Each site's accumulator is updated from mean(g²), ĝ is formed,
and θ's contribution is the VJP of that single op applied to ĝ (a second tape with
``output_gradients``). Then θ ← θ − α·(sum of contributions), i.e. SGD on virtual gradients.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import tensorflow as tf

from fixtures.models import ModelSpec, PlainOps, loss_fn


@dataclass
class _Site:
    kind: str
    param: str
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
        self.sites.append(_Site(kind, self.names[id(w)], recompute, y, batch_axis, channel_axis))
        return y

    def matmul(self, a, b, *, param="b", transpose_a=False, transpose_b=False):
        w = b if param == "b" else a
        if "MatMul" not in self.kinds or id(w) not in self.names:
            return super().matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)
        if param == "b":
            fn = lambda wv: tf.matmul(a, wv, transpose_a=transpose_a, transpose_b=transpose_b)
            return self._record("MatMul", w, fn, 0, 1)
        fn = lambda wv: tf.matmul(wv, b, transpose_a=transpose_a, transpose_b=transpose_b)
        return self._record("MatMul", w, fn, 1, 0)

    def conv2d(self, x, kernel, *, strides=1, padding="SAME", data_format="NHWC", dilations=1):
        if "Conv2D" not in self.kinds or id(kernel) not in self.names:
            return super().conv2d(x, kernel, strides=strides, padding=padding,
                                  data_format=data_format, dilations=dilations)
        fn = lambda kv: tf.nn.conv2d(x, kv, strides=strides, padding=padding,
                                     data_format=data_format, dilations=dilations)
        return self._record("Conv2D", kernel, fn, 0, 3 if data_format == "NHWC" else 1)

    def bias_add(self, h, bias, *, data_format="NHWC"):
        if "BiasAdd" not in self.kinds or id(bias) not in self.names:
            return super().bias_add(h, bias, data_format=data_format)
        fn = lambda bv: tf.nn.bias_add(h, bv)
        return self._record("BiasAdd", bias, fn, 0, len(h.shape) - 1)


class Oracle:
    """SVGD by Algorithm 1 on eager copies of a fixture model's variables."""

    def __init__(self, spec: ModelSpec, params: dict[str, tf.Variable],
                 state: dict[str, tf.Variable], *, learning_rate: float, scale: float = 0.1,
                 rho: float = 0.9, epsilon: float = 1e-6, granularity: str = "full",
                 kinds=("MatMul", "Conv2D"), transform: str = "svgd"):
        self.spec, self.params, self.state = spec, params, state
        self.lr, self.s, self.rho, self.eps = learning_rate, scale, rho, epsilon
        self.granularity, self.kinds, self.transform = granularity, set(kinds), transform
        self.accumulators: list[tf.Tensor] | None = None
        self.site_params: list[str] = []

    def step(self, x, y) -> float:
        names = sorted(self.params)
        with tf.GradientTape() as tape:
            ops = _RecordingOps({id(v): k for k, v in self.params.items()}, self.kinds, tape)
            logits = self.spec.forward(ops, self.params, self.state, x, True)
            loss = loss_fn(self.spec, logits, y, self.params)
        sites = ops.sites
        grads = tape.gradient(loss, [s.output for s in sites] + [self.params[k] for k in names])
        total = {k: (g if g is not None else tf.zeros_like(self.params[k]))
                 for k, g in zip(names, grads[len(sites):])}
        if self.accumulators is None:
            self.accumulators = [None] * len(sites)
            self.site_params = [s.param for s in sites]
        for i, (site, g) in enumerate(zip(sites, grads[:len(sites)])):
            rank = len(g.shape)
            if self.granularity == "full":
                axes = [site.batch_axis]
            else:
                axes = [a for a in range(rank) if a != site.channel_axis]
            mean_sq = tf.reduce_mean(g * g, axis=axes)
            r_old = self.accumulators[i] if self.accumulators[i] is not None else tf.zeros_like(mean_sq)
            r = self.rho * r_old + (1.0 - self.rho) * mean_sq
            self.accumulators[i] = r
            if self.transform == "svgd":
                r_b = tf.reshape(r, [g.shape[a] if a not in axes else 1 for a in range(rank)])
                g_hat = self.s * g / tf.sqrt(r_b + self.eps)
            else:
                g_hat = g
            w = tf.convert_to_tensor(self.params[site.param])
            with tf.GradientTape() as vjp_tape:
                vjp_tape.watch(w)
                out = site.recompute(w)
            total[site.param] = total[site.param] + vjp_tape.gradient(out, w, output_gradients=g_hat)
        for k in names:
            self.params[k].assign_sub(self.lr * total[k])
        return float(loss)
