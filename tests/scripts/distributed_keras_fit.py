"""Keras fit under MirroredStrategy on 2 logical CPUs with svgd_rewrite.keras.enable, against
the independent single-device Keras oracle on the same global batches (run in its own
process). Prints one JSON line: the relative errors of the weights after one epoch of 4
batches (steps_per_execution 1 and 2), and of 72 samples in batches of 16 (a short last batch
of 8: a second trace, same accumulators) with momentum over 3 epochs; the accumulators'
types and count."""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras  # noqa: E402
import numpy as np  # noqa: E402

import svgd_rewrite.keras  # noqa: E402
from helpers import rel_error  # noqa: E402
from keras_oracle import KerasOracle, conv_dense_model, model_weights  # noqa: E402

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.default_rng(0)
x = rng.normal(size=(32, 8, 8, 1)).astype("float32")
y = rng.integers(0, 3, 32).astype("int32")
out = {}
for steps_per_execution in (1, 2):
    with strategy.scope():
        model = conv_dense_model(0)
        model.compile(optimizer=keras.optimizers.SGD(0.05),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      steps_per_execution=steps_per_execution)
    oracle = KerasOracle(conv_dense_model(0), keras.optimizers.SGD(0.05), scale=0.01)
    svgd = svgd_rewrite.keras.enable(model, scale=0.01)
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for i in range(4):
        oracle.step(x[8 * i:8 * i + 8], y[8 * i:8 * i + 8])
    got, want = model_weights(model), oracle.weights()
    out[f"spe{steps_per_execution}"] = {
        "weights_error": max(rel_error(got[k], want[k]) for k in want),
        "sites": [(s.variable, s.replicas) for s in svgd.report.sites],
        "accumulators": sorted({type(a).__name__ for a in svgd.accumulators}),
        "finite_loss": bool(np.isfinite(history.history["loss"][0]))}

x72 = rng.normal(size=(72, 8, 8, 1)).astype("float32")
y72 = rng.integers(0, 3, 72).astype("int32")
with strategy.scope():
    model = conv_dense_model(1)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
oracle = KerasOracle(conv_dense_model(1), keras.optimizers.SGD(0.05, momentum=0.9), scale=0.01)
svgd = svgd_rewrite.keras.enable(model, scale=0.01)
model.fit(x72, y72, batch_size=16, epochs=3, shuffle=False, verbose=0)
for _ in range(3):
    for i in range(0, 72, 16):
        oracle.step(x72[i:i + 16], y72[i:i + 16])
got, want = model_weights(model), oracle.weights()
out["short_last_batch"] = {"weights_error": max(rel_error(got[k], want[k]) for k in want),
                           "accumulators": len(svgd.accumulators),
                           "traced_steps": len(svgd.steps)}
print(json.dumps(out))
