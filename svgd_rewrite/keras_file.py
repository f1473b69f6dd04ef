"""A Keras model file (``.keras``, ``.h5``) as MODEL: ``show`` describes it; a rewrite is
refused with what to do instead (train it in Keras with ``svgd_rewrite.keras.enable``)."""
from __future__ import annotations

from .errors import LoadError, first_line, one_line
from .options import Options

KERAS_FILE = ("{path} is a Keras model file: train it with virtual gradients in Keras with "
              "svgd_rewrite.keras.enable(model) (README: Keras compile() / fit()), or save a "
              "SavedModel with a train tf.function and rewrite that")


def _quiet_load(path: str, compile: bool):
    """``keras.models.load_model`` with Python warnings (zipfile's on odd member names,
    Keras's own) kept off stderr: ``show`` prints one report, ``--json`` one object."""
    import warnings

    import keras

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return keras.models.load_model(path, compile=compile)


class KerasFileFrontEnd:
    """``describe`` only: the command line rewrites SavedModels and TF1 graphs."""

    def __init__(self, path: str):
        self.path = path
        self.inputs = [path]

    def check(self) -> None:
        raise LoadError(KERAS_FILE.format(path=one_line(self.path)))

    def load(self):
        self.check()

    def _load(self):
        """(model, None) compiled as saved; or (model, why) when Keras can read the weights
        but not the training configuration (a Keras 3 ``.h5`` compiled with ``loss="mse"``)."""
        try:
            return _quiet_load(self.path, compile=True), None
        except Exception as e:  # Keras raises many types: all mean "cannot load"
            first = first_line(e, 200)
        try:
            return _quiet_load(self.path, compile=False), f"Keras cannot read it back: {first}"
        except Exception:  # noqa: BLE001 - the same: cannot load
            raise LoadError(f"cannot load the Keras model {one_line(self.path)}: {first}"
                            ) from None

    def describe(self, options: Options) -> dict:
        """The model's name, optimizer, loss, and the kernels ``enable`` would transform."""
        model, compiled = self._load()
        kernels = [w.path for w in model.trainable_weights if len(w.shape) >= 2]
        optimizer = getattr(model, "optimizer", None) if compiled is None else None
        return {"input": self.path, "kind": f"Keras model {model.name!r}",
                "optimizer": (type(optimizer).__name__ if optimizer is not None else
                              "not compiled" if compiled is None else
                              f"not restored ({compiled})"),
                "loss": str(getattr(model, "loss", None)),
                "kernels": kernels,
                "lines": [f"{len(kernels)} kernel(s) would get virtual gradients with "
                          "svgd_rewrite.keras.enable(model): " + ", ".join(kernels[:8])
                          + (", ..." if len(kernels) > 8 else ""),
                          "the command line rewrites SavedModels and TF1 graphs: "
                          + KERAS_FILE.format(path="this")]}
