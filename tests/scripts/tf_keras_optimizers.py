"""tf.keras (Keras 2, ``TF_USE_LEGACY_KERAS=1``) optimizers, new and legacy: the rewritten step
against the oracle fed the virtual gradients through the same tf.keras optimizer class.

    TF_USE_LEGACY_KERAS=1 python tests/scripts/tf_keras_optimizers.py   # prints JSON errors
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.dirname(os.path.dirname(HERE))]

import tensorflow as tf  # noqa: E402

import svgd_rewrite  # noqa: E402
from fixtures.models import random_batch  # noqa: E402
from helpers import make_module, module_values, rel_error  # noqa: E402
from oracle import Oracle  # noqa: E402

assert os.environ.get("TF_USE_LEGACY_KERAS") == "1"
opt = tf.keras.optimizers
assert "tf_keras" in opt.SGD.__module__, opt.SGD.__module__

OPTIMIZERS = {
    "sgd": lambda: opt.SGD(0.05),
    "momentum": lambda: opt.SGD(0.05, momentum=0.9),
    "adam": lambda: opt.Adam(0.01),
    "legacy_sgd": lambda: opt.legacy.SGD(0.05),
    "legacy_momentum": lambda: opt.legacy.SGD(0.05, momentum=0.9),
    "legacy_adam": lambda: opt.legacy.Adam(0.01),
}

results = {}
for name, make in OPTIMIZERS.items():
    module = make_module("small_cnn", seed=7, optimizer=make())
    step = svgd_rewrite.rewrite(module.train, scale=0.01)
    reference = make_module("small_cnn", seed=7)
    oracle = Oracle(reference.spec, reference.params, reference.state, learning_rate=0.0,
                    scale=0.01, kinds=("Conv2D", "MatMul"), optimizer=make())
    errors = []
    for i in range(4):
        x, y = random_batch(module.spec, 8, seed=i)
        step(x, y)
        oracle.step(x, y)
        got, want = module_values(module), module_values(reference)
        errors.append(max(rel_error(got[k], want[k]) for k in want))
    results[name] = {"sites": len(step.report.sites), "errors": errors,
                     "stateful": any("optimizer with state" in w for w in step.report.warnings)}
print(json.dumps(results))
