"""tf_keras (``TF_USE_LEGACY_KERAS=1``) models through ``svgd_rewrite.keras``: ``enable`` and
``VirtualGradients`` against the independent Keras oracle (tests/keras_oracle.py) fed the
virtual gradients through the same tf_keras optimizer class.

    TF_USE_LEGACY_KERAS=1 python tests/scripts/tf_keras_fit.py train DIR   # prints JSON
    TF_USE_LEGACY_KERAS=1 python tests/scripts/tf_keras_fit.py resume DIR  # a fresh process

``train``: SGD and Adam fit (3 batches), a second fit, train_on_batch, the callback, SGD with
momentum 0.9 (its state warning), MirroredStrategy on 2 logical CPUs; saves a TF-format
``save_weights`` checkpoint and the oracle's state in DIR. ``resume``: a new model loads it and
trains 3 more batches (enabled before and after
``load_weights``).
"""
import json
import os
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np  # noqa: E402

import svgd_rewrite.keras as svgd_keras  # noqa: E402
from helpers import rel_error  # noqa: E402
from keras_oracle import KerasOracle, model_weights  # noqa: E402

assert os.environ.get("TF_USE_LEGACY_KERAS") == "1"
k = tf.keras
assert k.Model.__module__.startswith("tf_keras"), k.Model.__module__
SCALE = 0.1
rng = np.random.default_rng(0)
X = rng.normal(size=(24, 8, 8, 1)).astype("float32")
Y = rng.integers(0, 3, 24).astype("int32")


def model(seed=0, optimizer=None, **compile_kwargs):
    """tests/keras_oracle.conv_dense_model, in tf_keras."""
    k.utils.set_random_seed(seed)
    m = k.Sequential([k.Input((8, 8, 1)), k.layers.Conv2D(4, 3, activation="relu", name="conv"),
                      k.layers.Flatten(), k.layers.Dense(3, name="dense")])
    m.compile(optimizer=optimizer or k.optimizers.SGD(0.05),
              loss=k.losses.SparseCategoricalCrossentropy(from_logits=True), **compile_kwargs)
    return m


def oracle_steps(oracle, x, y, batch=4):
    for i in range(0, len(x), batch):
        oracle.step(x[i:i + batch], y[i:i + batch])


def error(m, oracle):
    got, want = model_weights(m), oracle.weights()
    return max(rel_error(got[key], want[key]) for key in got)


def train(out_dir):
    out = {}
    for name, make in {"sgd": lambda: k.optimizers.SGD(0.05),
                       "adam": lambda: k.optimizers.Adam(0.01),
                       "momentum": lambda: k.optimizers.SGD(0.05, momentum=0.9)}.items():
        m = model(optimizer=make())
        oracle = KerasOracle(model(), make(), scale=SCALE)
        svgd = svgd_keras.enable(m, scale=SCALE)
        m.fit(X[:12], Y[:12], batch_size=4, shuffle=False, verbose=0)
        oracle_steps(oracle, X[:12], Y[:12])
        row = {"fit": error(m, oracle), "warnings": svgd.report.warnings,
               "accumulators": sorted(svgd.state.accumulators)}
        m.fit(X[12:], Y[12:], batch_size=4, shuffle=False, verbose=0)  # a second fit
        oracle_steps(oracle, X[12:], Y[12:])
        row["second_fit"] = error(m, oracle)
        m.train_on_batch(X[:4], Y[:4])
        oracle.step(X[:4], Y[:4])
        row["train_on_batch"] = error(m, oracle)
        row["traced_steps"] = len(svgd.steps)
        out[name] = row
        if name == "sgd":
            m.save_weights(os.path.join(out_dir, "ckpt"))
            np.savez(os.path.join(out_dir, "oracle.npz"), **{
                **{"v/" + key: v for key, v in oracle.weights().items()},
                **{"r/" + key: r.numpy() for key, r in oracle.r.items()}})

    m = model()  # the callback, for one fit; the model is plain again after it
    oracle = KerasOracle(model(), k.optimizers.SGD(0.05), scale=SCALE)
    callback = svgd_keras.VirtualGradients(scale=SCALE)
    m.fit(X[:12], Y[:12], batch_size=4, shuffle=False, verbose=0, callbacks=[callback])
    oracle_steps(oracle, X[:12], Y[:12])
    out["callback"] = {"fit": error(m, oracle), "enabled_after": svgd_keras.enabled(m) is not None,
                       "sites": len(callback.svgd.report.sites)}

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        m = model()
    oracle = KerasOracle(model(), k.optimizers.SGD(0.05), scale=SCALE)
    svgd = svgd_keras.enable(m, scale=SCALE)
    m.fit(X, Y, batch_size=8, shuffle=False, verbose=0)
    oracle_steps(oracle, X, Y, batch=8)
    out["mirrored"] = {"fit": error(m, oracle),
                       "replicas": sorted({s.replicas for s in svgd.report.sites})}
    return out


def resume(out_dir):
    out = {}
    for order in ("enable_then_load", "load_then_enable"):
        out[order] = _resume(out_dir, order)
    return out


def _resume(out_dir, order):
    m = model()
    if order == "load_then_enable":
        m.load_weights(os.path.join(out_dir, "ckpt"))
    svgd = svgd_keras.enable(m, scale=SCALE)
    if order == "enable_then_load":
        m.load_weights(os.path.join(out_dir, "ckpt"))
    saved = np.load(os.path.join(out_dir, "oracle.npz"))
    oracle = KerasOracle(model(), k.optimizers.SGD(0.05), scale=SCALE)
    for key, v in oracle.v.items():
        v.assign(saved["v/" + key])
    oracle.r = {key[2:]: tf.constant(saved[key]) for key in saved.files if key.startswith("r/")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m.fit(X[:12], Y[:12], batch_size=4, shuffle=False, verbose=0)
    oracle_steps(oracle, X[:12], Y[:12])
    fresh = KerasOracle(model(), k.optimizers.SGD(0.05), scale=SCALE)  # r from zero: differs
    for key, v in fresh.v.items():
        v.assign(saved["v/" + key])
    oracle_steps(fresh, X[:12], Y[:12])
    return {"resumed": error(m, oracle), "if_r_were_lost": error(m, fresh),
            "accumulators": len(svgd.accumulators), "notes": svgd.notes,
            "warnings": [str(w.message) for w in caught if "svgd" in str(w.message)]}


if __name__ == "__main__":
    mode, directory = sys.argv[1], sys.argv[2]
    print(json.dumps(train(directory) if mode == "train" else resume(directory)))
