"""Run in a fresh process by the CLI tests: load a SavedModel, call ``train`` on saved batches.

    python train_saved_model.py MODEL_DIR DATA.npz STEPS OUT.npz [--resave DIR --more N]
                                [--signature] [--infer-only]

Writes every variable (by name, accumulators included) and the losses to OUT.npz.
"""
import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def variables(obj):
    out = {}
    for d in tf.train.TrackableView(obj).descendants():
        if isinstance(d, tf.Variable):
            out[d.name] = d.numpy()
    return out


def train(obj, data, start, steps, signature):
    losses = []
    for i in range(start, start + steps):
        x, y = tf.constant(data[f"x{i}"]), tf.constant(data[f"y{i}"])
        out = obj.signatures["train"](x=x, y=y) if signature else obj.train(x, y)
        losses.append(float(out["loss"]))
    return losses


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("data")
    p.add_argument("steps", type=int)
    p.add_argument("out")
    p.add_argument("--resave")
    p.add_argument("--more", type=int, default=0)
    p.add_argument("--signature", action="store_true")
    p.add_argument("--infer-only", action="store_true")
    a = p.parse_args()
    data = np.load(a.data)
    obj = tf.saved_model.load(a.model_dir)
    if a.infer_only:
        np.savez(a.out, logits=obj.infer(tf.constant(data["x0"]))["logits"].numpy(),
                 signature_logits=obj.signatures["infer"](x=tf.constant(data["x0"]))["logits"].numpy())
        return
    losses = train(obj, data, 0, a.steps, a.signature)
    if a.resave:
        tf.saved_model.save(obj, a.resave)
        obj = tf.saved_model.load(a.resave)
        losses += train(obj, data, a.steps, a.more, a.signature)
    np.savez(a.out, losses=np.array(losses), **{f"var:{k}": v for k, v in variables(obj).items()})


if __name__ == "__main__":
    main()
