"""T, Algorithm 1 on one page, as TensorFlow code (traced once per site geometry by surgery,
and into gradient loop bodies by the loop statistics)::

    m     = Σ g² / rows                      (float32; over the axes r does not keep)
    r'    = ρ·r + (1-ρ)·m / scale²           (scale: the loss scale, when there is one)
    r_new = r' where finite, else r
    f     = s·rsqrt(r' + ε)

s, ρ and ε are inputs (float32 scalars), not constants: the step feeds them each call from
the training state, so a schedule or a new value needs no retrace.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf



def sum_of_squares(g: tf.Tensor, g_dtype: tf.DType, reduce_axes: tuple[int, ...],
                   accumulator_shape: tuple[int, ...], one_pass: bool):
    """(Σ g² over ``reduce_axes`` in float32, the number of rows summed) for one tensor g."""
    f32, raw = tf.float32, tf.raw_ops
    g32 = g if g_dtype == f32 else raw.Cast(x=g, DstT=f32, name="g_float32")
    axes = tf.constant(list(reduce_axes), tf.int32, name="reduce_axes")
    if one_pass:
        sums = raw.Square(x=raw.EuclideanNorm(input=g32, axis=axes, keep_dims=False,
                                              name="norm"), name="sum_g_squared")
    else:
        sums = raw.Sum(input=raw.Square(x=g32, name="g_squared"), axis=axes, keep_dims=False,
                       name="sum_g_squared")
    size = float(np.prod(accumulator_shape, dtype=np.int64))
    count = raw.RealDiv(x=raw.Cast(x=raw.Size(input=g32, out_type=tf.int32, name="g_size"),
                                   DstT=f32, name="g_size_float32"),
                        y=tf.constant(size, f32, name="r_size"), name="rows")
    return sums, count


def mean_of_squares(g: tf.Tensor, g_dtype: tf.DType, reduce_axes: tuple[int, ...],
                     accumulator_shape: tuple[int, ...], one_pass: bool) -> tf.Tensor:
    """mean(g²) over ``reduce_axes`` for a site with one application."""
    raw = tf.raw_ops
    if one_pass:
        sums, count = sum_of_squares(g, g_dtype, reduce_axes, accumulator_shape, True)
        return raw.RealDiv(x=sums, y=count, name="mean_g_squared")
    g32 = g if g_dtype == tf.float32 else raw.Cast(x=g, DstT=tf.float32, name="g_float32")
    return raw.Mean(input=raw.Square(x=g32, name="g_squared"),
                    axis=tf.constant(list(reduce_axes), tf.int32, name="reduce_axes"),
                    keep_dims=False, name="mean_g_squared")


def svgd_update(r: tf.Tensor, mean_sq: tf.Tensor, rho: tf.Tensor,
                loss_scale: tf.Tensor | None) -> tuple[tf.Tensor, tf.Tensor]:
    """(r_new, r') of Algorithm 1 from mean(g²): r' = ρ·r + (1-ρ)·m scales this step's g;
    r_new = r' is stored, except that a step whose g² is not finite (an overflow, NaN, or a
    step a loss-scale optimizer skips) keeps r as it was. Such a step's f = s·rsqrt(∞) = 0:
    its update of θ is zero instead of s·g/√ε (unbounded while r is still 0). ``rho`` is a
    float32 scalar tensor (the step's ρ, an input of the graph)."""
    f32, raw = tf.float32, tf.raw_ops
    coef = raw.Sub(x=tf.constant(1.0, f32, name="one"), y=rho, name="one_minus_rho")
    if loss_scale is not None:  # the unscaled gradient's square: divide by scale²
        coef = raw.RealDiv(x=coef, y=raw.Square(x=loss_scale, name="loss_scale_squared"),
                           name="coef")
    candidate = raw.AddV2(x=raw.Mul(x=r, y=rho, name="r_decayed"),
                          y=raw.Mul(x=mean_sq, y=coef, name="r_fresh"), name="r_candidate")
    finite = raw.Less(x=candidate, y=tf.constant(np.inf, f32, name="infinity"),
                      name="is_finite")  # False for inf and NaN
    r_new = raw.SelectV2(condition=finite, t=candidate, e=r, name="r_new")
    return r_new, candidate


def svgd_factor(r_new: tf.Tensor, scale: tf.Tensor, epsilon: tf.Tensor) -> tf.Tensor:
    """f = s·rsqrt(r_new + ε) (``scale`` and ``epsilon``: float32 scalar tensors)."""
    raw = tf.raw_ops
    return raw.Mul(x=raw.Rsqrt(x=raw.AddV2(x=r_new, y=epsilon, name="r_plus_epsilon"),
                               name="rsqrt"), y=scale, name="factor")
