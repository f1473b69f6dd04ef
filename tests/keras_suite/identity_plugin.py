"""pytest plugin: every model Keras's own tests compile is enabled with the identity transform.

Loaded with ``-p identity_plugin`` (this folder on ``sys.path``) when Keras's test files run
from the installed package; ``tests/test_keras_transparency.py`` compares the outcome with a
plain run. A model that ``enable`` refuses (run eagerly, no kernel) stays plain; the counts are
written to the file named by ``SVGD_KERAS_SUITE_COUNTS``.
"""
from __future__ import annotations

import json
import os

import functools

from keras.src.trainers.trainer import Trainer

import svgd_rewrite.keras as svgd_keras
from svgd_rewrite.errors import SVGDRewriteError

# Keras compares ``type(model).compile`` with ``Trainer.compile`` to tell a custom compile():
# the wrapper replaces ``Trainer.compile`` itself, so that models stay "not custom".
_compile = Trainer.compile
COUNTS = {"compiled": 0, "enabled": 0, "refused": {}}


@functools.wraps(_compile)
def _enabling_compile(self, *args, **kwargs):
    _compile(self, *args, **kwargs)
    COUNTS["compiled"] += 1
    try:
        svgd_keras.enable(self, transform="identity")
    except SVGDRewriteError as e:
        reason = str(e).split(":")[0]
        COUNTS["refused"][reason] = COUNTS["refused"].get(reason, 0) + 1
    else:
        COUNTS["enabled"] += 1


def pytest_configure(config):
    Trainer.compile = _enabling_compile


def pytest_unconfigure(config):
    Trainer.compile = _compile
    path = os.environ.get("SVGD_KERAS_SUITE_COUNTS")
    if path:
        with open(path, "w") as f:
            json.dump(COUNTS, f)
