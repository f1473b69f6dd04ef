"""An independent eager oracle for recurrent layers: the cells of SimpleRNN, LSTM, GRU
(``reset_after=True``) and Bidirectional(LSTM) unrolled by hand in plain TensorFlow on copies
of a Keras model's variables, Algorithm 1 with one accumulator per kernel pooled over every
timestep and batch row (Σ g² / rows), each application's VJP at its ĝ, plain SGD. Masked
timesteps (``mask_zero``) carry the state over, as Keras does: they are computed, their g is 0,
and their rows count. Shares no code with the rewriter."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

KINDS = ("rnn", "lstm", "gru", "bi")


def build(kind: str, unroll: bool, seed: int = 0, *, units: int = 4, steps: int = 5,
          features: int = 3, masked: bool = False, lr: float = 0.1) -> keras.Model:
    """[Embedding(mask_zero) →] recurrent layer → Dense(2) logits, compiled with SGD."""
    keras.utils.set_random_seed(seed)
    layer = {"rnn": keras.layers.SimpleRNN, "lstm": keras.layers.LSTM,
             "gru": keras.layers.GRU, "bi": keras.layers.LSTM}[kind]
    rec = layer(units, unroll=unroll, name="rec")
    if kind == "bi":
        rec = keras.layers.Bidirectional(rec, name="bi")
    if masked:
        layers = [keras.Input((steps,), dtype="int32"),
                  keras.layers.Embedding(7, features, mask_zero=True, name="emb")]
    else:
        layers = [keras.Input((steps, features))]
    model = keras.Sequential(layers + [rec, keras.layers.Dense(2, name="head")])
    model.compile(optimizer=keras.optimizers.SGD(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class RNNOracle:
    def __init__(self, model: keras.Model, kind: str, *, lr: float = 0.1, scale: float = 0.1,
                 rho: float = 0.9, epsilon: float = 1e-6):
        self.kind, self.lr, self.s, self.rho, self.eps = kind, lr, scale, rho, epsilon
        self.v = [tf.Variable(w.numpy()) for w in model.weights]
        self.paths = [w.path for w in model.weights]
        self.masked = any("emb" in p for p in self.paths)
        self.r: dict[int, tf.Tensor] = {}

    def _index(self, *parts) -> int:
        return next(i for i, p in enumerate(self.paths) if all(q in p for q in parts))

    # --- cells: each kernel application is recorded --------------------------------------------
    def _cell(self, prefix, x_t, state, record):
        k = self._index(prefix, "/kernel")
        u = self._index(prefix, "recurrent_kernel")
        b = self.v[self._index(prefix, "/bias")]
        if self.kind == "rnn":
            h = tf.tanh(record(k, x_t) + b + record(u, state[0]))
            return [h]
        if self.kind in ("lstm", "bi"):
            h, c = state
            z = record(k, x_t) + record(u, h) + b
            i, f, cc, o = tf.split(z, 4, axis=1)
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(cc)
            return [tf.sigmoid(o) * tf.tanh(c), c]
        h = state[0]
        mx = record(k, x_t) + b[0]
        mi = record(u, h) + b[1]
        xz, xr, xh = tf.split(mx, 3, axis=1)
        rz, rr, rh = tf.split(mi, 3, axis=1)
        z, r = tf.sigmoid(xz + rz), tf.sigmoid(xr + rr)
        return [z * h + (1 - z) * tf.tanh(xh + r * rh)]

    def _run(self, prefix, xs, mask, record, backwards=False):
        units = self.v[self._index(prefix, "recurrent_kernel")].shape[0]
        batch = xs.shape[0]
        n_state = 2 if self.kind in ("lstm", "bi") else 1
        state = [tf.zeros([batch, units])] * n_state
        order = range(xs.shape[1] - 1, -1, -1) if backwards else range(xs.shape[1])
        for t in order:
            new = self._cell(prefix, xs[:, t], state, record)
            if mask is not None:
                m = mask[:, t:t + 1]
                new = [tf.where(m, n, s) for n, s in zip(new, state)]
            state = new
        return state[0]

    def step(self, x, y) -> float:
        apps: list[tuple[int, tf.Tensor, tf.Tensor]] = []  # (kernel index, x, σ')
        with tf.GradientTape() as tape:
            def record(index, operand):
                out = tf.matmul(operand, tf.stop_gradient(self.v[index]))
                tape.watch(out)
                apps.append((index, operand, out))
                return out

            mask = None
            if self.masked:
                mask = tf.not_equal(x, 0)
                xs = tf.gather(self.v[self._index("emb")], x)
            else:
                xs = tf.convert_to_tensor(x)
            if self.kind == "bi":
                h = tf.concat([self._run("forward", xs, mask, record),
                               self._run("backward", xs, mask, record, backwards=True)], 1)
            else:
                h = self._run("rec", xs, mask, record)
            logits = record(self._index("head", "kernel"), h) + self.v[self._index("head",
                                                                                   "bias")]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        grads = tape.gradient(loss, [o for _, _, o in apps] + self.v)
        gs, total = grads[:len(apps)], [g if g is not None else tf.zeros_like(v)
                                        for g, v in zip(grads[len(apps):], self.v)]
        for index in sorted({i for i, _, _ in apps}):
            members = [(a, g) for a, g in zip(apps, gs) if a[0] == index]
            sums = sum(tf.reduce_sum(tf.square(g), 0) for _, g in members)
            rows = sum(int(g.shape[0]) for _, g in members)
            r = self.rho * self.r.get(index, 0.0) + (1 - self.rho) * sums / rows
            self.r[index] = r
            f = self.s / tf.sqrt(r + self.eps)
            for (_, operand, _), g in members:
                total[index] = total[index] + tf.matmul(operand, g * f, transpose_a=True)
        for v, g in zip(self.v, total):
            if isinstance(g, tf.IndexedSlices):
                g = tf.convert_to_tensor(g)
            v.assign_sub(self.lr * g)
        return float(loss)

    def weights(self) -> dict[str, np.ndarray]:
        return {str(i): v.numpy() for i, v in enumerate(self.v)}


def data(kind: str, n: int = 16, steps: int = 5, features: int = 3, masked: bool = False,
         seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.int32)
    if masked:  # token ids, 0 = padding at the end of each sequence (variable lengths)
        x = rng.integers(1, 7, size=(n, steps)).astype(np.int32)
        lengths = rng.integers(1, steps + 1, size=n)
        x[np.arange(steps)[None, :] >= lengths[:, None]] = 0
        return x, y
    return rng.normal(size=(n, steps, features)).astype(np.float32), y
