"""A ParameterServerStrategy step (in-process cluster: one worker, one parameter server on
localhost): the rewrite refuses it with one clear line. Prints "refused: <message>"."""
import os
import socket
import sys

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
import tensorflow as tf  # noqa: E402

import svgd_rewrite  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


cluster = tf.train.ClusterSpec({"worker": [f"localhost:{free_port()}"],
                                "ps": [f"localhost:{free_port()}"]})
servers = [tf.distribute.Server(cluster, job_name=job, task_index=0, protocol="grpc")
           for job in ("worker", "ps")]
strategy = tf.distribute.experimental.ParameterServerStrategy(
    tf.distribute.cluster_resolver.SimpleClusterResolver(cluster, rpc_layer="grpc"))
with strategy.scope():
    w = tf.Variable(tf.ones((3, 2)), name="w")


@tf.function(input_signature=[tf.TensorSpec((None, 3))])
def step(x):
    def replica_step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(tf.matmul(x, w)))
        w.assign_sub(0.1 * tape.gradient(loss, w))
        return loss

    return strategy.run(replica_step, args=(x,))


try:
    svgd_rewrite.rewrite(step)
    print("rewritten")
except svgd_rewrite.UnsupportedError as e:
    print("refused:", e)
