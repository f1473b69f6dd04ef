"""The paper's MNIST MLP fixture: its size and its rewrite (5 sites, 490 accumulator floats)."""
import numpy as np
import pytest

import svgd_rewrite
from fixtures import keras_models
from fixtures.models import PAPER_MLP_PARAMS, random_batch
from helpers import make_module

ACCUMULATOR_SIZES = [256, 128, 64, 32, 10]


def test_paper_mlp_has_245482_trainable_parameters():
    module = make_module("paper_mlp")
    assert sum(int(np.prod(v.shape)) for v in module.trainable_variables) == PAPER_MLP_PARAMS
    model = keras_models.paper_mlp()
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == PAPER_MLP_PARAMS


def test_paper_mlp_rewrite_has_five_sites():
    step = svgd_rewrite.rewrite(make_module("paper_mlp").train)
    assert [s.op for s in step.report.sites] == ["MatMul"] * 5
    assert [int(np.prod(a.shape)) for a in step.accumulators] == ACCUMULATOR_SIZES
    assert step.report.memory.accumulator_floats == sum(ACCUMULATOR_SIZES)
    assert step.report.memory.params == PAPER_MLP_PARAMS
    assert step.report.memory.adam_bytes == 2 * 4 * PAPER_MLP_PARAMS


@pytest.mark.parametrize("granularity", ["full", "channel"])
def test_keras_paper_mlp_rewrite(granularity):
    model = keras_models.paper_mlp(seed=1)
    step = svgd_rewrite.rewrite(keras_models.train_step(model), granularity=granularity)
    assert [int(np.prod(a.shape)) for a in step.accumulators] == ACCUMULATOR_SIZES
    reasons = {k.op: k.reason for k in step.report.skipped}
    assert "Abs" in reasons and "not linear" in reasons["Abs"]
    x, y = random_batch(make_module("paper_mlp").spec, 32)
    losses = [float(step(x, y)) for _ in range(5)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.slow
def test_diagnostics_figure_plots_every_kernel_from_the_event_files(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from fixtures.diagnostics_figure import main

    scalars = main(str(tmp_path), epochs=1)
    assert (tmp_path / "diagnostics.png").stat().st_size > 10_000
    kernels = {t.rsplit("/", 1)[0] for t in scalars if t.endswith("/ratio")}
    assert len(kernels) == 3 and "svgd/scale" in scalars
    assert all(len(scalars[f"{k}/r_mean"]) == len(scalars[f"{k}/ratio"]) > 5 for k in kernels)
