"""Clear errors, each a svgd_rewrite exception with one sentence saying what to do."""
import pytest
import tensorflow as tf

import svgd_rewrite
from helpers import make_module


def _one_line(exc):
    msg = str(exc.value)
    assert msg and "\n" not in msg
    return msg


def test_inference_function_is_refused():
    with pytest.raises(svgd_rewrite.NoGradientsError) as exc:
        svgd_rewrite.rewrite(make_module("mlp_l1").infer)
    assert "inference" in _one_line(exc)


def test_step_without_trainable_variables_is_refused():
    frozen = tf.Variable(tf.ones([3, 2]), trainable=False)

    @tf.function(input_signature=[tf.TensorSpec([None, 3])])
    def step(x):
        loss = tf.reduce_sum(tf.matmul(x, frozen))
        frozen.assign_sub(0.1 * tf.ones([3, 2]))
        return loss

    with pytest.raises(svgd_rewrite.NoTrainableVariablesError) as exc:
        svgd_rewrite.rewrite(step)
    assert "trainable" in _one_line(exc)


def test_step_without_sites_lists_skipped_nodes():
    w = tf.Variable(tf.ones([3]))

    @tf.function(input_signature=[tf.TensorSpec([None, 3]), tf.TensorSpec([None, 3])])
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(x * w - y))
        w.assign_sub(0.1 * tape.gradient(loss, w))
        return loss

    with pytest.raises(svgd_rewrite.NoSitesError) as exc:
        svgd_rewrite.rewrite(step)
    msg = _one_line(exc)
    assert "Mul" in msg and "elementwise" in msg
    assert exc.value.report.skipped[0].op == "Mul"


def test_rewriting_a_rewritten_step_is_refused():
    step = svgd_rewrite.rewrite(make_module("mlp_l1").train)
    with pytest.raises(svgd_rewrite.AlreadyRewrittenError):
        svgd_rewrite.rewrite(step)
    with pytest.raises(svgd_rewrite.AlreadyRewrittenError) as exc:
        svgd_rewrite.rewrite(step.function)
    assert "already rewritten" in _one_line(exc)


def test_untraced_function_without_signature_is_refused():
    @tf.function
    def step(x):
        return x

    with pytest.raises(svgd_rewrite.LoadError) as exc:
        svgd_rewrite.rewrite(step)
    assert "never traced" in _one_line(exc)


def test_not_a_function_is_refused():
    with pytest.raises(svgd_rewrite.LoadError):
        svgd_rewrite.rewrite(lambda x: x)


@pytest.mark.parametrize("kwargs", [
    {"scale": -1}, {"rho": 1.0}, {"epsilon": 0}, {"ops": ["Relu"]}, {"granularity": "row"},
    {"transform": "adam"}, {"scale": "abc"}, {"ops": []},
])
def test_bad_options_are_refused(kwargs):
    with pytest.raises(svgd_rewrite.InvalidOptionError) as exc:
        svgd_rewrite.rewrite(make_module("mlp_l1").train, **kwargs)
    _one_line(exc)


@pytest.fixture(scope="module")
def mlp_step():
    return svgd_rewrite.rewrite(make_module("mlp_l1").train)


@pytest.mark.parametrize("call,error", [
    (lambda m: svgd_rewrite.rewrite(m.train, ops=5), svgd_rewrite.InvalidOptionError),
    (lambda m: svgd_rewrite.rewrite(m.train, variables=5), svgd_rewrite.InvalidOptionError),
    (lambda m: svgd_rewrite.rewrite(m.train, variables="kernel"), svgd_rewrite.InvalidOptionError),
    (lambda m: svgd_rewrite.analyze_step(m.train, variables=[1, 2]),
     svgd_rewrite.InvalidOptionError),
    (lambda m: svgd_rewrite.rewrite(m.train, nonsense=1), svgd_rewrite.InvalidOptionError),
    (lambda m: svgd_rewrite.rewrite_saved_model(None, None, dry_run=True), svgd_rewrite.LoadError),
    (lambda m: svgd_rewrite.rewrite_saved_model(5, "out"), svgd_rewrite.LoadError),
    (lambda m: svgd_rewrite.export(None, "out"), svgd_rewrite.ExportError),
])
def test_library_edges_raise_the_tools_errors(call, error):
    """Every public function validates its arguments into the tool's one-line errors (not
    Python's TypeError/AttributeError)."""
    with pytest.raises(error) as exc:
        call(make_module("mlp_l1"))
    _one_line(exc)


@pytest.mark.parametrize("formats", [5, [1, 2], ""])
def test_export_refuses_bad_formats(mlp_step, tmp_path, formats):
    with pytest.raises(svgd_rewrite.ExportError) as exc:
        svgd_rewrite.export(mlp_step, str(tmp_path), formats=formats)
    _one_line(exc)
    assert not (tmp_path / "graphs").exists()


def test_options_are_declared_once():
    """Every entry point's option parameters come from ``Options``: same names, same
    defaults, the same documentation in help()."""
    import inspect

    import svgd_rewrite.keras as sk
    from svgd_rewrite.options import OPTION_NAMES, make_options, option_docs

    for fn in (svgd_rewrite.rewrite, svgd_rewrite.analyze_step, sk.enable,
               sk.VirtualGradients.__init__, make_options):
        params = inspect.signature(fn).parameters
        assert [p for p in params if p in OPTION_NAMES] == list(OPTION_NAMES), fn
        assert params["scale"].default == 0.1 and params["ops"].default is None
    for fn in (svgd_rewrite.rewrite, svgd_rewrite.analyze_step, sk.enable):
        assert option_docs().strip() in inspect.getdoc(fn) or all(
            f"``{n}``" in inspect.getdoc(fn) for n in OPTION_NAMES)
