"""The inliner: flat result, colocation names kept, and time linear in the inlined size."""
import time

import numpy as np
import pytest

import svgd_rewrite
from fixtures.nested_calls import tree_step
from svgd_rewrite.inline import inline_calls
from svgd_rewrite.registry import CALL_OPS


def _inline_seconds(graph_def) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        flat = inline_calls(graph_def)
        best = min(best, time.perf_counter() - start)
    return best, len(flat.node)


def test_nested_call_tree_is_flat_and_every_leaf_is_a_site():
    step, variables = tree_step(3)
    svgd = svgd_rewrite.rewrite(step)
    assert not [n for n in svgd.original_graph_def.node if n.op in CALL_OPS]
    assert sorted(s.variable for s in svgd.report.sites) == sorted(
        v.name.split(":")[0] for v in variables)
    loss = [float(svgd(np.ones((2, 4), np.float32))["loss"]) for _ in range(3)]
    assert np.all(np.isfinite(loss))


@pytest.mark.slow
def test_inlining_time_is_linear_in_the_inlined_size():
    """Doubling the tree doubles the inlined nodes; the time per node may not grow by more
    than 1.6× (a quadratic inliner grows by ~2× per doubling). The full table, up to ~100k
    nodes: ``python -m benchmarks.rewrite_time``."""
    small = tree_step(5)[0].get_concrete_function().graph.as_graph_def()
    large = tree_step(6)[0].get_concrete_function().graph.as_graph_def()
    t_small, n_small = _inline_seconds(small)
    t_large, n_large = _inline_seconds(large)
    assert n_large > 1.9 * n_small
    assert (t_large / n_large) / (t_small / n_small) < 1.6
