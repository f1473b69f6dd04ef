"""With 2 logical CPUs: a replica function traced on its own under MirroredStrategy (meant to
be called under strategy.run), and Keras enable on a model under CentralStorageStrategy, are
refused with one line instead of training wrong. Prints "refused: ..." twice."""
import os
import sys

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras  # noqa: E402

import svgd_rewrite  # noqa: E402
import svgd_rewrite.keras  # noqa: E402

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    w = tf.Variable(tf.ones((3, 2)))
with tf.distribute.experimental.CentralStorageStrategy(["/cpu:0", "/cpu:1"]).scope():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")


@tf.function(input_signature=[tf.TensorSpec((None, 3))])
def replica_step(x):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(tf.matmul(x, w)))
    w.assign_sub(0.1 * tape.gradient(loss, w))
    return loss


try:
    step = svgd_rewrite.rewrite(replica_step)
    strategy.run(step, args=(tf.ones((4, 3)),))
    print("trained")
except svgd_rewrite.UnsupportedError as e:
    print("refused:", e)
try:
    svgd_rewrite.keras.enable(model)
    print("enabled")
except svgd_rewrite.UnsupportedError as e:
    print("refused:", e)
