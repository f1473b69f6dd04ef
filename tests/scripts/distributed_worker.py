"""One worker of a 2-process MultiWorkerMirroredStrategy cluster on localhost (TF_CONFIG set
by the test). Rewrites the distributed step, trains 3 steps and prints one JSON line with the
relative errors against the independent single-device oracle on the global batch."""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
import tensorflow as tf  # noqa: E402

import svgd_rewrite  # noqa: E402
from fixtures.distributed import DistributedTrainer  # noqa: E402
from fixtures.models import SPECS, random_batch  # noqa: E402
from helpers import rel_error  # noqa: E402
from oracle import Oracle  # noqa: E402

SPEC, LR, SCALE, STEPS = SPECS["small_cnn"](), 0.05, 0.1, 3
strategy = tf.distribute.MultiWorkerMirroredStrategy()
batches = [random_batch(SPEC, 8, seed=i) for i in range(STEPS)]
trainer = DistributedTrainer(SPEC, strategy, learning_rate=LR)
trainer.step.get_concrete_function(*trainer.distribute(*batches[0]))
step = svgd_rewrite.rewrite(trainer.step, scale=SCALE)
oracle = Oracle(SPEC, {k: tf.Variable(v) for k, v in trainer.values().items()}, {},
                learning_rate=LR, scale=SCALE)
errors = []
for x, y in batches:
    loss = float(step(*trainer.distribute(x, y)))
    want_loss = oracle.step(x, y)
    got = {**trainer.values(), **{f"acc{i}": a.numpy() for i, a in enumerate(step.accumulators)}}
    want = {**{k: v.numpy() for k, v in oracle.params.items()},
            **{f"acc{i}": a.numpy() for i, a in enumerate(oracle.accumulators)}}
    errors.append(max([abs(loss - want_loss) / abs(want_loss)]
                      + [rel_error(got[k], want[k]) for k in want]))
task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
print(json.dumps({"task": task, "replicas": strategy.num_replicas_in_sync,
                  "sites": len(step.report.sites), "errors": errors}), flush=True)
