"""A hand-written SVGD in the natural TF2 form, the peer the rewrite is timed against: each
Dense and Conv2D kernel op of a Keras model becomes a ``tf.custom_gradient`` op whose
gradient updates its accumulator from ``reduce_mean(square(g))`` and feeds ``g * f`` to the
kernel's VJP (the input's VJP gets the true g) — what a user writes without a graph
rewriter. Used by ``benchmarks.step_time``; its numbers match the rewrite (a test checks)."""
from __future__ import annotations

import keras
import tensorflow as tf


def _svgd_op(forward, input_vjp, kernel_vjp, r: tf.Variable, axes, scale, rho, epsilon):
    """y = forward(x, w), with a gradient that pre-scales g for the kernel (Algorithm 1)."""

    @tf.custom_gradient
    def op(x, w):
        y = forward(x, w)

        def grad(g):
            mean_sq = tf.reduce_mean(tf.square(g), axis=axes)
            r_new = rho * r + (1.0 - rho) * mean_sq
            r.assign(r_new)
            g_hat = g * (scale * tf.math.rsqrt(r_new + epsilon))
            return input_vjp(x, w, g), kernel_vjp(x, w, g_hat)

        return y, grad

    return op


def _layer_call(layer, op):
    """The layer's ``call`` with its kernel op replaced by ``op`` (bias and activation kept)."""
    def call(inputs, training=None):
        y = op(inputs, layer.kernel.value)
        if layer.use_bias:
            y = tf.nn.bias_add(y, layer.bias.value)
        return layer.activation(y)

    return call


def _dense(layer, r, axes, options):
    op = _svgd_op(lambda x, w: tf.matmul(x, w),
                  lambda x, w, g: tf.matmul(g, w, transpose_b=True),
                  lambda x, w, g: tf.matmul(x, g, transpose_a=True), r, axes, *options)

    return _layer_call(layer, op)


def _conv(layer, r, axes, options):
    strides = [1, *layer.strides, 1]
    padding = layer.padding.upper()

    def forward(x, w):
        return tf.nn.conv2d(x, w, strides, padding)

    op = _svgd_op(forward,
                  lambda x, w, g: tf.nn.conv2d_transpose(g, w, tf.shape(x), strides, padding),
                  lambda x, w, g: tf.raw_ops.Conv2DBackpropFilter(
                      input=x, filter_sizes=tf.shape(w), out_backprop=g, strides=strides,
                      padding=padding), r, axes, *options)

    return _layer_call(layer, op)


def make_peer(model: keras.Model, *, scale: float = 0.1, rho: float = 0.9,
              epsilon: float = 1e-6, granularity: str = "full") -> list[tf.Variable]:
    """Give every Dense and Conv2D layer of ``model`` the hand-written SVGD kernel op (its
    ``call`` replaced on the instance); returns the accumulators, one per layer."""
    accumulators = []
    options = (scale, rho, epsilon)
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Dense):
            out_shape = (layer.units,)
            axes, make = [0], _dense
        elif type(layer) is keras.layers.Conv2D:
            out_shape = tuple(layer.compute_output_shape((None,) + tuple(layer.input.shape[1:]))
                              [1:])
            axes, make = ([0] if granularity == "full" else [0, 1, 2]), _conv
            if granularity != "full":
                out_shape = out_shape[-1:]
        else:
            continue
        r = tf.Variable(tf.zeros(out_shape), trainable=False, name=f"peer_r_{layer.name}")
        accumulators.append(r)
        object.__setattr__(layer, "call", make(layer, r, axes, options))
    return accumulators
