"""Whole-model gradients (``Model.gradients``) against central finite differences of
``Model.evaluate``, in float64, for every hidden activation x every loss, on every backend."""
import numpy as np
import pytest

import fastmlp as fm
from helpers import numeric_gradients
from fastmlp import activations as act

HIDDEN = [name for name in act.ACTIVATIONS if name != "softmax"]
# (loss, output layer, kind of targets)
OUTPUTS = {
    "mse-linear": ("mse", fm.Dense(3, "linear", a=1.5), "real"),
    "mse-sigmoid": ("mse", fm.Dense(3, "sigmoid"), "real"),
    "mse-tanh": ("mse", fm.Dense(3, "tanh"), "real"),
    "mse-softmax": ("mse", fm.Dense(3, "softmax"), "onehot"),  # through the softmax Jacobian
    "ce-onehot": ("cross_entropy", fm.Dense(3, "softmax"), "onehot"),
    "ce-labels": ("cross_entropy", fm.Dense(3, "softmax"), "labels"),
    "bce": ("binary_cross_entropy", fm.Dense(3, "sigmoid"), "binary"),
}
PARAMS = {"linear": {"a": 0.7}, "leaky_relu": {"alpha": 0.1}, "elu": {"alpha": 0.8},
          "prelu": {"alpha": 0.3}}
H = 1e-6


def _targets(kind, rng, n):
    if kind == "real":
        return rng.normal(size=(n, 3))
    if kind == "onehot":
        return np.eye(3)[rng.integers(0, 3, size=n)]
    if kind == "labels":
        return rng.integers(0, 3, size=n)
    return rng.integers(0, 2, size=(n, 3)).astype(float)


def assert_gradients_close(analytic, numeric, rtol=1e-5, atol=1e-8):
    assert len(analytic) == len(numeric)
    for i, (a, n) in enumerate(zip(analytic, numeric)):
        assert a.shape == n.shape, f"gradient {i}: shape {a.shape} != {n.shape}"
        np.testing.assert_allclose(a, n, rtol=rtol, atol=atol, err_msg=f"gradient {i}")


def _model(hidden, output, loss, backend, dtype="float64", seed=3):
    layers = [fm.Dense(5, hidden, **PARAMS.get(hidden, {})),
              fm.Dense(4, hidden, **PARAMS.get(hidden, {})), output]
    return fm.Model(layers, input_dim=4, loss=loss, backend=backend, dtype=dtype, seed=seed)


@pytest.mark.parametrize("case", list(OUTPUTS))
@pytest.mark.parametrize("hidden", HIDDEN)
def test_gradients_match_finite_differences(hidden, case, backend, rng):
    loss, output, kind = OUTPUTS[case]
    model = _model(hidden, output, loss, backend)
    w = model.get_weights()
    # nonzero biases and (for prelu) distinct alphas so every term of the gradient is exercised
    for i in range(1, len(w)):
        if w[i].ndim == 1:
            w[i] = rng.uniform(-0.5, 0.5, size=w[i].shape)
    if hidden == "prelu":
        w[2] = rng.uniform(0.1, 0.5, size=w[2].shape)
        w[5] = rng.uniform(0.1, 0.5, size=w[5].shape)
    model.set_weights(w)
    X = rng.normal(size=(7, 4))
    Y = _targets(kind, rng, 7)
    loss_value, analytic = model.gradients(X, Y)
    np.testing.assert_allclose(loss_value, model.evaluate(X, Y), rtol=1e-12)
    assert_gradients_close(analytic, numeric_gradients(model, X, Y))
    if hidden in ("step", "sign"):  # nothing flows back through them
        assert not np.any(analytic[0]) and not np.any(analytic[1])
    else:
        assert np.any(analytic[0]), "no gradient reached the first layer"


@pytest.mark.parametrize("out", HIDDEN + ["softmax"])
def test_every_output_activation_under_mse(out, backend, rng):
    params = PARAMS.get(out, {})
    model = fm.Model([fm.Dense(5, "tanh"), fm.Dense(3, out, **params)], input_dim=4, loss="mse",
                     backend=backend, dtype="float64", seed=5)
    X = rng.normal(size=(6, 4))
    Y = rng.normal(size=(6, 3))
    assert_gradients_close(model.gradients(X, Y)[1], numeric_gradients(model, X, Y))


def test_prelu_alpha_gradient_follows_its_bias(backend, rng):
    model = fm.Model([fm.Dense(4, "prelu"), fm.Dense(2, "prelu", alpha=0.1), fm.Dense(1)],
                     input_dim=3, backend=backend, dtype="float64", seed=0)
    shapes = [w.shape for w in model.get_weights()]
    assert shapes == [(3, 4), (4,), (4,), (4, 2), (2,), (2,), (2, 1), (1,)]
    X = rng.normal(size=(20, 3))
    Y = rng.normal(size=(20, 1))
    _, grads = model.gradients(X, Y)
    assert [g.shape for g in grads] == shapes
    numeric = numeric_gradients(model, X, Y)
    np.testing.assert_allclose(grads[2], numeric[2], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(grads[5], numeric[5], rtol=1e-5, atol=1e-9)
    assert np.any(grads[2]) and np.any(grads[5])


def test_gradients_do_not_update_the_weights(backend, rng):
    model = _model("tanh", fm.Dense(3, "softmax"), "cross_entropy", backend)
    before = model.get_weights()
    X, Y = rng.normal(size=(5, 4)), rng.integers(0, 3, size=5)
    first = model.gradients(X, Y)
    second = model.gradients(X, Y)
    for b, a in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert first[0] == second[0]
    for g1, g2 in zip(first[1], second[1]):
        np.testing.assert_array_equal(g1, g2)


@pytest.mark.parametrize("case", ["mse-sigmoid", "mse-softmax", "ce-labels", "bce"])
def test_float32_gradients_agree_with_float64(case, backend, rng):
    loss, output, kind = OUTPUTS[case]
    m64 = _model("elu", output, loss, backend, "float64")
    m32 = _model("elu", output, loss, backend, "float32")
    X, Y = rng.normal(size=(16, 4)), _targets(kind, rng, 16)
    l64, g64 = m64.gradients(X, Y)
    l32, g32 = m32.gradients(X, Y)
    np.testing.assert_allclose(l32, l64, rtol=1e-5)
    for a, b in zip(g32, g64):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
