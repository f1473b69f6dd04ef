"""MirroredStrategy on N logical CPUs (argument, default 2; run in its own process: logical
devices are fixed at start-up), global batch 4·N. Prints one JSON line with the measured
relative errors:

- svgd: the rewritten distributed step against the independent single-device oracle on the
  global batch, after each of 3 steps (variables and accumulators), and whether every
  replica holds bit-identical variables and accumulators;
- adam: the same with Adam fed the virtual gradients (the oracle uses its own Adam);
- identity: transform="identity" against the original distributed step (losses, variables);
- restore: a checkpoint written under the strategy after 2 steps, restored into a
  single-device rewrite, whose 3rd step is compared with the uninterrupted distributed run.
"""
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
import tensorflow as tf  # noqa: E402

REPLICAS = int(sys.argv[1]) if len(sys.argv) > 1 else 2
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS)
import numpy as np  # noqa: E402

import svgd_rewrite  # noqa: E402
from fixtures.distributed import DistributedTrainer  # noqa: E402
from fixtures.models import SPECS, random_batch  # noqa: E402
from helpers import rel_error  # noqa: E402
from oracle import Oracle  # noqa: E402

SPEC, LR, SCALE, STEPS, BATCH = SPECS["small_cnn"](), 0.05, 0.1, 3, 4 * REPLICAS
strategy = tf.distribute.MirroredStrategy([f"/cpu:{k}" for k in range(REPLICAS)])
batches = [random_batch(SPEC, BATCH, seed=i) for i in range(STEPS)]


def rewritten(trainer, **kw):
    trainer.step.get_concrete_function(*trainer.distribute(*batches[0]))
    return svgd_rewrite.rewrite(trainer.step, scale=SCALE, **kw)


def max_rel(got: dict, want: dict) -> float:
    return max(rel_error(got[k], want[k]) for k in want)


out = {}
# SVGD against the oracle on the global batch.
trainer = DistributedTrainer(SPEC, strategy, learning_rate=LR, global_batch=BATCH)
step = rewritten(trainer)
out["report_sites"] = [(s.node, s.variable, s.replicas) for s in step.report.sites]
oracle = Oracle(SPEC, {k: tf.Variable(v) for k, v in trainer.values().items()}, {},
                learning_rate=LR, scale=SCALE)
errors, identical = [], True
for x, y in batches:
    loss = float(step(*trainer.distribute(x, y)))
    want_loss = oracle.step(x, y)
    want = {k: v.numpy() for k, v in oracle.params.items()}
    accs = {f"acc{i}": a.numpy() for i, a in enumerate(step.accumulators)}
    want_accs = {f"acc{i}": a.numpy() for i, a in enumerate(oracle.accumulators)}
    errors.append(max(abs(loss - want_loss) / abs(want_loss), max_rel(trainer.values(), want),
                      max_rel(accs, want_accs)))
    replicas = trainer.replica_values()
    identical &= all(np.array_equal(replicas[0][k], r[k]) for r in replicas for k in r)
    for a in step.accumulators:
        comps = strategy.experimental_local_results(a)
        identical &= all(np.array_equal(comps[0].numpy(), c.numpy()) for c in comps)
out["svgd_errors"] = errors
out["replicas_identical"] = bool(identical)
out["accumulator_types"] = sorted({type(a).__name__ for a in step.accumulators})
uninterrupted = trainer.values()

# Adam under the strategy (its slots built in the scope before tracing).
import keras  # noqa: E402

trainer = DistributedTrainer(SPEC, strategy, learning_rate=0.01, global_batch=BATCH,
                             optimizer="adam")
with strategy.scope():
    trainer.optimizer.build([trainer.params[k] for k in trainer.names])
step = rewritten(trainer)
oracle = Oracle(SPEC, {k: tf.Variable(v) for k, v in trainer.values().items()}, {},
                learning_rate=0.01, scale=SCALE, optimizer=keras.optimizers.Adam(0.01))
errors = []
for x, y in batches:
    step(*trainer.distribute(x, y))
    oracle.step(x, y)
    errors.append(max_rel(trainer.values(), {k: v.numpy() for k, v in oracle.params.items()}))
out["adam_errors"] = errors

# transform="identity" reproduces the original distributed step.
original = DistributedTrainer(SPEC, strategy, learning_rate=LR, global_batch=BATCH)
identity_trainer = DistributedTrainer(SPEC, strategy, learning_rate=LR, global_batch=BATCH)
identity = rewritten(identity_trainer, transform="identity")
errors = []
for x, y in batches:
    a = float(original.step(*original.distribute(x, y)))
    b = float(identity(*identity_trainer.distribute(x, y)))
    errors.append(max(abs(a - b) / abs(a), max_rel(identity_trainer.values(), original.values())))
out["identity_errors"] = errors

# Checkpoint under the strategy after 2 steps; restore on one device; step 3.
trainer = DistributedTrainer(SPEC, strategy, learning_rate=LR, global_batch=BATCH)
step = rewritten(trainer)
for x, y in batches[:2]:
    step(*trainer.distribute(x, y))
path = tf.train.Checkpoint(params=trainer.params, accumulators=step.accumulators).write(
    os.path.join(tempfile.mkdtemp(), "ckpt"))
single = DistributedTrainer(SPEC, tf.distribute.get_strategy(), learning_rate=LR, seed=1,
                            global_batch=BATCH)
single_step = rewritten(single)
tf.train.Checkpoint(params=single.params, accumulators=single_step.accumulators).read(
    path).assert_consumed()
single_step(*single.distribute(*batches[2]))
out["restore_error"] = max_rel(single.values(), uninterrupted)
out["restored_accumulator_types"] = sorted({type(a).__name__ for a in single_step.accumulators})
print(json.dumps(out))
