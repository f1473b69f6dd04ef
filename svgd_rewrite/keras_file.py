"""A Keras model file (``.keras``, ``.h5``) as MODEL: ``show`` describes it; a rewrite is
refused with what to do instead (train it in Keras with ``svgd_rewrite.keras.enable``)."""
from __future__ import annotations

from .errors import LoadError, first_line, one_line
from .options import Options

KERAS_FILE = ("{path} is a Keras model file: train it with virtual gradients in Keras with "
              "svgd_rewrite.keras.enable(model) (README: Keras compile() / fit()), or save a "
              "SavedModel with a train tf.function and rewrite that")


class KerasFileFrontEnd:
    """``describe`` only: the command line rewrites SavedModels and TF1 graphs."""

    def __init__(self, path: str):
        self.path = path
        self.inputs = [path]

    def check(self) -> None:
        raise LoadError(KERAS_FILE.format(path=one_line(self.path)))

    def load(self):
        self.check()

    def describe(self, options: Options) -> dict:
        """The model's name, optimizer, loss, and the kernels ``enable`` would transform."""
        import keras

        try:
            model = keras.models.load_model(self.path, compile=True)
        except Exception as e:  # Keras raises many types: all mean "cannot load"
            raise LoadError(f"cannot load the Keras model {one_line(self.path)}: "
                            f"{first_line(e, 200)}") from None
        kernels = [w.path for w in model.trainable_weights if len(w.shape) >= 2]
        optimizer = getattr(model, "optimizer", None)
        return {"input": self.path, "kind": f"Keras model {model.name!r}",
                "optimizer": type(optimizer).__name__ if optimizer is not None else "not compiled",
                "loss": str(getattr(model, "loss", None)),
                "kernels": kernels,
                "lines": [f"{len(kernels)} kernel(s) would get virtual gradients with "
                          "svgd_rewrite.keras.enable(model): " + ", ".join(kernels[:8])
                          + (", ..." if len(kernels) > 8 else ""),
                          "the command line rewrites SavedModels and TF1 graphs: "
                          + KERAS_FILE.format(path="this")]}
