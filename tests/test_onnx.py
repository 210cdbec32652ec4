"""ONNX export: onnxruntime runs the exported graph and must give what predict gives.

Every activation (in a hidden layer and as the output), both dtypes, every
backend, large |z|, input scaling, a deep mixed model; the graph's layout
(names, shapes, initializers in get_weights() order) and its atomic write.
Skipped without onnx and onnxruntime (``pip install fastmlp[onnx]``), except
the tests of what happens when onnx is missing.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import activations as act
from fastmlp import onnx_export
from fastmlp.onnx_export import build_onnx, to_onnx

# fastmlp's compiled backends approximate exp/log to <= 3e-7 relative in float32 and
# onnxruntime's Gemm sums in another order than BLAS, so values are compared with a
# relative tolerance, plus an absolute one of a few ulps of the output's magnitude for
# entries that cancel to near 0.
RTOL = 1e-5
ULPS = 16
NON_SOFTMAX = [name for name in act.ACTIVATIONS if name != "softmax"]
# non-default parameters, so the parameter is seen to reach the graph
PARAMS = {"linear": {"a": 0.5}, "leaky_relu": {"alpha": 0.1}, "elu": {"alpha": 0.7},
          "prelu": {"alpha": 0.2}}


@pytest.fixture
def ort():
    pytest.importorskip("onnx", reason="ONNX export needs onnx: pip install fastmlp[onnx]")
    return pytest.importorskip("onnxruntime", reason="running exports needs onnxruntime")


def run_onnx(ort, model, X, folder):
    """Export ``model`` to a file, check it, and run it on X with onnxruntime."""
    import onnx

    path = os.path.join(folder, "model.onnx")
    to_onnx(model, path)
    onnx.checker.check_model(path, full_check=True)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {"X": np.asarray(X, dtype=model.dtype)})[0]


def assert_matches_predict(ort, model, X, folder):
    got = run_onnx(ort, model, X, folder)
    want = model.predict(X)
    assert got.dtype == want.dtype and got.shape == want.shape
    atol = ULPS * np.finfo(model.dtype).eps * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=atol)


def randomize(model, rng, scale=1.0):
    """Random weights and biases (W scaled by ``scale`` / sqrt(fan_in)), prelu alphas in
    (0.05, 0.5): non-zero biases and distinct alphas per unit reach the graph too."""
    weights = []
    for W, b, alpha in model.net.layer_views(np.zeros(model.n_params)):
        weights.append(rng.normal(size=W.shape) * scale / np.sqrt(W.shape[0]))
        weights.append(rng.normal(size=b.shape) * 0.5)
        if alpha is not None:
            weights.append(rng.uniform(0.05, 0.5, size=alpha.shape))
    model.set_weights(weights)


def inputs(rng, n=64, d=5):
    X = rng.normal(size=(n, d)) * 2.0
    X[0] = 0.0
    return X


@pytest.mark.parametrize("name", NON_SOFTMAX)
def test_hidden_activation_matches_predict(ort, name, backend, dtype, rng, tmp_path):
    model = fm.Model([fm.Dense(7, activation=name, **PARAMS.get(name, {})), fm.Dense(3)],
                     input_dim=5, backend=backend, dtype=dtype, seed=0)
    randomize(model, rng)
    assert_matches_predict(ort, model, inputs(rng), tmp_path)


@pytest.mark.parametrize("name", list(act.ACTIVATIONS))
def test_output_activation_matches_predict(ort, name, backend, dtype, rng, tmp_path):
    model = fm.Model([fm.Dense(6, activation="tanh"),
                      fm.Dense(4, activation=name, **PARAMS.get(name, {}))],
                     input_dim=5, backend=backend, dtype=dtype, seed=0)
    randomize(model, rng)
    assert_matches_predict(ort, model, inputs(rng), tmp_path)


@pytest.mark.parametrize("name", ["sigmoid", "softplus", "elu", "tanh", "softmax"])
def test_large_pre_activations_match_predict(ort, name, backend, dtype, rng, tmp_path):
    """Weights scaled up so |z| reaches the hundreds: the tails stay relatively exact."""
    model = fm.Model([fm.Dense(6, activation="relu"), fm.Dense(4, activation=name)],
                     input_dim=5, backend=backend, dtype=dtype, seed=0)
    randomize(model, rng, scale=30.0)
    X = inputs(rng)
    z = np.maximum(X @ model.get_weights()[0] + model.get_weights()[1], 0) @ model.get_weights()[2]
    assert np.abs(z).max() > 100        # the test reaches the tails it is about
    assert_matches_predict(ort, model, X, tmp_path)


@pytest.mark.parametrize("name", list(act.ACTIVATIONS))
def test_activation_pointwise_over_all_magnitudes(ort, name, dtype, tmp_path):
    """z = x and -x for x = 0 and 1e-8 .. 1e4: each output relatively exact, down to
    the smallest normal number (Kahan's expm1/log1p near 0, the exponential tails).

    Against the NumPy reference: the export depends on the weights only, and the
    compiled backends' own accuracy there is test_backend_agreement's business."""
    model = fm.Model([fm.Dense(2, activation=name, **PARAMS.get(name, {}))],
                     input_dim=1, backend="numpy", dtype=dtype, seed=0)
    weights = [np.array([[1.0, -1.0]]), np.zeros(2)] + ([np.array([0.2, 0.3])] if name == "prelu" else [])
    model.set_weights(weights)
    x = np.concatenate([[0.0], np.logspace(-8, 4, 481), -np.logspace(-8, 4, 481)])[:, None]
    got = run_onnx(ort, model, x, tmp_path)
    np.testing.assert_allclose(got, model.predict(x), rtol=RTOL, atol=np.finfo(dtype).tiny)


def test_step_and_sign_at_exactly_zero(ort, dtype, tmp_path):
    for name, want in [("step", [0.0, 0.5, 1.0]), ("sign", [-1.0, 0.0, 1.0])]:
        model = fm.Model([fm.Dense(1, activation=name)], input_dim=1, dtype=dtype, seed=0)
        model.set_weights([np.ones((1, 1)), np.zeros(1)])
        got = run_onnx(ort, model, np.array([[-2.0], [0.0], [3.0]]), tmp_path)
        np.testing.assert_array_equal(got[:, 0], want)


def test_multilayer_model_with_input_scaling(ort, backend, dtype, rng, tmp_path):
    layers = [fm.Dense(9, activation="prelu"), fm.Dense(8, activation="elu", alpha=0.5),
              fm.Dense(7, activation="leaky_relu", alpha=0.02), fm.Dense(6, activation="softplus"),
              fm.Dense(5, activation="sigmoid"), fm.Dense(4, activation="softmax")]
    model = fm.Model(layers, input_dim=5, loss="cross_entropy", backend=backend, dtype=dtype, seed=0)
    randomize(model, rng, scale=2.0)
    mean, scale = rng.normal(size=5) * 10, rng.uniform(0.5, 4.0, size=5)
    model.set_input_scaling(mean, scale)
    # raw features around the mean: the graph's Sub/Div run in the model dtype (documented)
    X = mean + inputs(rng) * scale
    assert_matches_predict(ort, model, X, tmp_path)
    model.set_input_scaling(None, None)
    assert_matches_predict(ort, model, X, tmp_path)


@pytest.mark.parametrize("dtype_name, elem", [("float32", 1), ("float64", 11)])   # FLOAT, DOUBLE
def test_graph_layout(ort, dtype_name, elem, rng):
    model = fm.Model([fm.Dense(4, activation="prelu"), fm.Dense(3, activation="tanh"),
                      fm.Dense(2, activation="softmax")],
                     input_dim=5, loss="cross_entropy", dtype=dtype_name, seed=0)
    randomize(model, rng)
    proto = build_onnx(model)
    graph = proto.graph
    assert [i.name for i in graph.input] == ["X"] and [o.name for o in graph.output] == ["Y"]
    for value, width in [(graph.input[0], 5), (graph.output[0], 2)]:
        assert value.type.tensor_type.elem_type == elem
        dims = value.type.tensor_type.shape.dim
        assert (dims[0].dim_param, dims[1].dim_value) == ("n", width)
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    names = ["W1", "b1", "alpha1", "W2", "b2", "W3", "b3"]
    for name, weight in zip(names, model.get_weights(), strict=True):
        assert inits[name].dtype == model.dtype
        np.testing.assert_array_equal(inits[name], weight)
    ops = [node.op_type for node in graph.node]
    # float64 PRelu is spelled out: onnxruntime has a double kernel for opsets 16-18 only
    prelu = ["PRelu"] if dtype_name == "float32" else ["Less", "Mul", "Where"]
    assert ops == ["Gemm", *prelu, "Gemm", "Tanh", "Gemm", "Softmax"]
    softmax = graph.node[-1]
    assert [(a.name, a.i) for a in softmax.attribute] == [("axis", -1)]
    assert proto.opset_import[0].version == onnx_export.DEFAULT_OPSET


def test_operators_chosen_per_activation(ort):
    def ops(dtype, **layer):
        model = fm.Model([fm.Dense(3, **layer)], input_dim=2, dtype=dtype, seed=0)
        return [n.op_type for n in build_onnx(model).graph.node]

    assert ops("float32", activation="linear") == ["Gemm"]                 # a = 1: identity
    assert ops("float32", activation="linear", a=2.0) == ["Gemm", "Mul"]
    assert ops("float32", activation="relu") == ["Gemm", "Relu"]
    assert ops("float32", activation="piecewise_linear") == ["Gemm", "Add", "Clip"]
    assert ops("float32", activation="leaky_relu", alpha=0.1) == ["Gemm", "LeakyRelu"]
    # a float32 attribute would round 0.1 in a float64 model; 0.25 is exact in both
    # ... and is a tensor in Where(z < 0, z * slope, z): no float64 PRelu kernel at most opsets
    assert ops("float64", activation="leaky_relu", alpha=0.1) == ["Gemm", "Less", "Mul", "Where"]
    # float64 leaky_relu is a Where at every slope, 0.25 (exact in float32) included:
    # onnxruntime runs a float64 LeakyRelu at opsets 16-18 only
    assert ops("float64", activation="leaky_relu", alpha=0.25) == ["Gemm", "Less", "Mul", "Where"]
    assert ops("float32", activation="softplus") == ["Gemm", "Softplus"]
    assert "Softplus" not in ops("float64", activation="softplus")       # no float64 kernel


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_every_activation_runs_at_every_opset(ort, dtype_name, rng):
    """onnxruntime has no float64 PRelu or LeakyRelu kernel at opsets 13-15 and 19 on, which
    the float64 prelu and leaky_relu used: files that passed onnx's checker but could not
    be loaded."""
    import onnx

    cases = [(name, PARAMS.get(name, {})) for name in NON_SOFTMAX]
    cases += [("leaky_relu", {"alpha": 0.25}), ("leaky_relu", {"alpha": 0.0})]  # float32-exact
    for name, params in cases:
        model = fm.Model([fm.Dense(6, activation=name, **params),
                          fm.Dense(2, activation="softmax")], input_dim=3,
                         loss="cross_entropy", dtype=dtype_name, seed=0)
        randomize(model, rng)
        X = rng.standard_normal((9, 3)) * 3
        for opset in range(onnx_export.MIN_OPSET, onnx.defs.onnx_opset_version() + 1):
            session = ort.InferenceSession(build_onnx(model, opset=opset).SerializeToString(),
                                           providers=["CPUExecutionProvider"])
            got = session.run(None, {"X": X.astype(model.dtype)})[0]
            np.testing.assert_allclose(got, model.predict(X), rtol=RTOL,
                                       atol=ULPS * np.finfo(model.dtype).eps,
                                       err_msg=f"{name} at opset {opset}")


def test_opset_choice(ort, tmp_path):
    import onnx

    model = fm.Model([fm.Dense(3, activation="elu"), fm.Dense(2, activation="softmax")],
                     input_dim=2, loss="cross_entropy", seed=0)
    for opset in [onnx_export.MIN_OPSET, 18]:
        proto = build_onnx(model, opset=opset)
        assert proto.opset_import[0].version == opset
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        X = np.ones((3, 2), np.float32)
        np.testing.assert_allclose(session.run(None, {"X": X})[0], model.predict(X), rtol=RTOL)
    with pytest.raises(ValueError, match="opset must be between 13 and"):
        to_onnx(model, tmp_path / "m.onnx", opset=12)
    with pytest.raises(ValueError, match="opset must be between"):
        to_onnx(model, tmp_path / "m.onnx", opset=onnx.defs.onnx_opset_version() + 1)
    with pytest.raises(TypeError, match="opset must be an integer"):
        to_onnx(model, tmp_path / "m.onnx", opset="17")
    with pytest.raises(TypeError, match="expected a fastmlp.Model"):
        to_onnx("not a model", tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_write_replaces_an_existing_file_only_on_success(ort, monkeypatch, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous")
    model = fm.Model([fm.Dense(2)], input_dim=3, seed=0)

    with pytest.raises(ValueError):                  # fails while building: file untouched
        to_onnx(model, path, opset=1)
    assert path.read_bytes() == b"previous"

    def crash(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):  # fails while writing: file untouched
        to_onnx(model, path)
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["model.onnx"]    # no temporary file left behind

    monkeypatch.undo()
    to_onnx(model, path)
    assert path.read_bytes() == build_onnx(model).SerializeToString()
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_missing_onnx_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)   # makes `import onnx` raise ImportError
    model = fm.Model([fm.Dense(2)], input_dim=3, seed=0)
    with pytest.raises(ImportError, match=r"pip install fastmlp\[onnx\]"):
        to_onnx(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_importing_fastmlp_does_not_import_onnx():
    code = "import sys, fastmlp, fastmlp.onnx_export; print('onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("mean, scale", [(5e38, 1e38), (0.0, 3e-42), (0.0, 1e39)])
def test_float32_input_scaling_that_does_not_fit_is_refused(ort, mean, scale, tmp_path):
    """The graph subtracts and divides in the model's dtype: a float32 mean or scale
    beyond float32's range made the graph answer NaN, a subnormal scale 4e-3 relative
    error; refused, naming the feature. The same scaling in a float64 model exports and
    matches predict."""
    layers = [fm.Dense(3, activation="tanh"), fm.Dense(2)]
    m32 = fm.Model(layers, input_dim=2, loss="mse", dtype="float32", seed=0)
    m32.set_input_scaling([0.0, mean], [1.0, scale])
    path = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match="input scaling of feature 1 .* does not fit float32"):
        to_onnx(m32, path)
    assert not path.exists()
    m64 = fm.Model(layers, input_dim=2, loss="mse", dtype="float64", seed=0)
    m64.set_weights(m32.get_weights())
    m64.set_input_scaling([0.0, mean], [1.0, scale])
    X = np.array([[0.5, mean + scale], [-1.0, mean - 2 * scale]])
    got = run_onnx(ort, m64, X, tmp_path)
    np.testing.assert_allclose(got, m64.predict(X), rtol=RTOL)


def test_float64_subnormal_input_scale_exports(ort, tmp_path):
    """A float64 graph divides as predict does: a subnormal float64 scale is exported."""
    m = fm.Model([fm.Dense(3, activation="tanh"), fm.Dense(2)], input_dim=2, loss="mse",
                 dtype="float64", seed=0)
    m.set_input_scaling([0.0, 0.0], [1.0, 1e-310])
    X = np.array([[0.5, 3e-310], [-1.0, -1e-310]])
    np.testing.assert_allclose(run_onnx(ort, m, X, tmp_path), m.predict(X), rtol=1e-12)
