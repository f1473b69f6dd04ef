"""An independent eager oracle for the Keras ``fit`` tests: the two test models' forward passes
written out in plain TensorFlow on copies of their variables, Algorithm 1 on each kernel's
output σ' (one GradientTape for g, a second for the kernel's VJP at ĝ), and the virtual
gradients fed to a fresh instance of the same Keras optimizer. Shares no code with the
rewriter."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def conv_dense_model(seed: int = 0) -> keras.Model:
    """Sequential: Conv2D(4, 3, relu) on 8×8×1, Flatten, Dense(3) logits."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8, 8, 1)),
                             keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
                             keras.layers.Flatten(), keras.layers.Dense(3, name="dense")])


def two_in_two_out_model(seed: int = 0) -> keras.Model:
    """Functional: inputs a (6) and b (4), Dense(5, tanh) each, concatenated; outputs ``cls``
    (Dense(3) logits) and ``reg`` (Dense(1))."""
    keras.utils.set_random_seed(seed)
    a, b = keras.Input((6,), name="a"), keras.Input((4,), name="b")
    h = keras.layers.Concatenate()([keras.layers.Dense(5, activation="tanh", name="da")(a),
                                    keras.layers.Dense(5, activation="tanh", name="db")(b)])
    return keras.Model({"a": a, "b": b}, {"cls": keras.layers.Dense(3, name="cls")(h),
                                          "reg": keras.layers.Dense(1, name="reg")(h)})


def _sce(y, logits):
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))


class KerasOracle:
    """SVGD by Algorithm 1 on eager copies of ``model``'s variables (kernels transformed)."""

    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer, *,
                 scale: float, rho: float = 0.9, epsilon: float = 1e-6, loss_weights=None):
        """``frozen`` (an attribute, default empty): variables the step neither transforms
        nor updates (a frozen layer); ``optimizer`` may be replaced between steps (a
        recompile)."""
        self.v = {_key(w): tf.Variable(w.numpy(), name=_key(w).replace("/", "_"))
                  for w in model.weights}
        self.frozen: set[str] = set()
        self.optimizer, self.s, self.rho, self.eps = optimizer, scale, rho, epsilon
        self.loss_weights = loss_weights or {}
        self.r: dict[str, tf.Tensor] = {}
        self.kind = "conv_dense" if "conv/kernel" in self.v else "two_in_two_out"

    def _forward(self, x, record):
        v = self.v
        if self.kind == "conv_dense":
            conv = record("conv/kernel", lambda k: tf.nn.conv2d(x, k, 1, "VALID"))
            h = tf.reshape(tf.nn.relu(conv + v["conv/bias"]), [tf.shape(x)[0], -1])
            return record("dense/kernel", lambda k: tf.matmul(h, k)) + v["dense/bias"]
        ha = tf.tanh(record("da/kernel", lambda k: tf.matmul(x["a"], k)) + v["da/bias"])
        hb = tf.tanh(record("db/kernel", lambda k: tf.matmul(x["b"], k)) + v["db/bias"])
        h = tf.concat([ha, hb], axis=1)
        return {"cls": record("cls/kernel", lambda k: tf.matmul(h, k)) + v["cls/bias"],
                "reg": record("reg/kernel", lambda k: tf.matmul(h, k)) + v["reg/bias"]}

    def _loss(self, y, out):
        if self.kind == "conv_dense":
            return _sce(y, out)
        w = self.loss_weights
        return (w.get("cls", 1.0) * _sce(y["cls"], out["cls"])
                + w.get("reg", 1.0) * tf.reduce_mean(tf.square(y["reg"] - out["reg"])))

    def step(self, x, y, svgd: bool = True) -> float:
        """One step; ``svgd=False``: the plain step (the true gradients)."""
        sites: dict[str, tuple] = {}
        with tf.GradientTape() as tape:
            def record(name, op):
                if not svgd or name in self.frozen:
                    return op(self.v[name])
                out = op(tf.stop_gradient(self.v[name]))
                tape.watch(out)
                sites[name] = (op, out)
                return out

            loss = self._loss(y, self._forward(x, record))
        names = sorted(k for k in self.v if k not in self.frozen)
        grads = tape.gradient(loss, [o for _, o in sites.values()] + [self.v[k] for k in names])
        total = {k: (g if g is not None else tf.zeros_like(self.v[k]))
                 for k, g in zip(names, grads[len(sites):])}
        for (name, (op, _)), g in zip(sites.items(), grads[:len(sites)]):
            r_old = self.r.get(name, tf.zeros(g.shape[1:]))
            r = self.rho * r_old + (1 - self.rho) * tf.reduce_mean(tf.square(g), axis=0)
            self.r[name] = r
            g_hat = self.s * g / tf.sqrt(r + self.eps)
            w = tf.convert_to_tensor(self.v[name])
            with tf.GradientTape() as vjp:
                vjp.watch(w)
                out = op(w)
            total[name] = total[name] + vjp.gradient(out, w, output_gradients=g_hat)
        self.optimizer.apply_gradients([(total[k], self.v[k]) for k in names])
        return float(loss)

    def weights(self) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.v.items()}


def _key(w) -> str:
    path = getattr(w, "path", None) or w.name.split(":")[0]  # tf_keras: layer/variable:0
    return "/".join(path.split("/")[-2:])  # layer/variable


def model_weights(model: keras.Model) -> dict[str, np.ndarray]:
    return {_key(w): w.numpy() for w in model.trainable_weights}
