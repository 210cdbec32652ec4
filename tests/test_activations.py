"""The activation table (fastmlp.activations) against finite differences and the lessons."""
import warnings

import numpy as np
import pytest

from fastmlp import activations as act

ELEMENTWISE = [name for name, a in act.ACTIVATIONS.items() if a.derivative is not None]
KINKS = {"step": [0.0], "sign": [0.0], "relu": [0.0], "leaky_relu": [0.0], "prelu": [0.0],
         "elu": [0.0], "piecewise_linear": [-0.5, 0.5]}
# A non-default parameter as well as the default, so a derivative that ignores p fails.
PARAMS = {"linear": [1.0, 2.5], "leaky_relu": [0.01, 0.2], "elu": [1.0, 0.6]}
H = 1e-6


def _param_cases():
    for name in ELEMENTWISE:
        for p in PARAMS.get(name, [act.ACTIVATIONS[name].default]):
            yield pytest.param(name, p, id=f"{name}-{p}")


def _points(rng, name, shape=(40, 6)):
    """Pre-activations in [-4, 4], float64, at least 1e-3 away from every kink."""
    z = rng.uniform(-4, 4, size=shape)
    for k in KINKS.get(name, []):
        near = np.abs(z - k) < 1e-3
        z[near] += 2e-3
    return z


def _param(name, p, units, rng):
    if name == "prelu":  # a distinct trainable alpha per unit
        return rng.uniform(0.05, 0.5, size=units)
    return p


@pytest.mark.parametrize("name,p", list(_param_cases()))
def test_derivative_matches_central_differences(name, p, rng):
    a = act.ACTIVATIONS[name]
    z = _points(rng, name)
    p = _param(name, p, z.shape[1], rng)
    f = a.forward(z, p)
    numeric = (a.forward(z + H, p) - a.forward(z - H, p)) / (2 * H)
    np.testing.assert_allclose(a.derivative(z, f, p), numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["step", "sign"])
def test_step_and_sign_have_zero_derivative(name, rng):
    a = act.ACTIVATIONS[name]
    z = rng.normal(size=(10, 3))
    z[0, 0] = 0.0
    assert np.count_nonzero(a.derivative(z, a.forward(z, 0.0), 0.0)) == 0


def test_step_and_sign_values():
    z = np.array([[-2.0, -1e-9, 0.0, 1e-9, 3.0]])
    np.testing.assert_array_equal(act.ACTIVATIONS["step"].forward(z, 0.0), [[0, 0, 0.5, 1, 1]])
    np.testing.assert_array_equal(act.ACTIVATIONS["sign"].forward(z, 0.0), [[-1, -1, 0, 1, 1]])


def test_relu_derivative_is_zero_below_zero():
    """The lessons write 1 everywhere; that would make ReLU train like a linear unit."""
    a = act.ACTIVATIONS["relu"]
    z = np.array([[-3.0, -0.5, -1e-12, 0.0, 1e-12, 2.0]])
    np.testing.assert_array_equal(a.derivative(z, a.forward(z, 0.0), 0.0), [[0, 0, 0, 0, 1, 1]])


def test_piecewise_linear_is_the_lessons_three_pieces():
    z = np.array([[-2.0, -0.5, -0.25, 0.0, 0.25, 0.5, 2.0]])
    f = act.ACTIVATIONS["piecewise_linear"].forward(z, 0.0)
    np.testing.assert_allclose(f, [[0, 0, 0.25, 0.5, 0.75, 1, 1]], atol=1e-15)


def test_prelu_alpha_gradient_matches_central_differences(rng):
    """d prelu(z; alpha) / d alpha_j = z where z < 0, else 0 (what the backends use)."""
    a = act.ACTIVATIONS["prelu"]
    z = _points(rng, "prelu", (30, 4))
    alpha = rng.uniform(0.05, 0.5, size=4)
    numeric = np.empty_like(z)
    for j in range(4):
        e = np.zeros(4)
        e[j] = H
        numeric[:, j] = ((a.forward(z, alpha + e) - a.forward(z, alpha - e)) / (2 * H))[:, j]
    np.testing.assert_allclose(numeric, np.minimum(z, 0), rtol=1e-6, atol=1e-8)
    # the alpha is per unit: column j is scaled by alpha[j] only
    neg = -np.ones((1, 4))
    np.testing.assert_allclose(a.forward(neg, alpha), -alpha[None, :])


@pytest.mark.parametrize("name", [n for n in act.ACTIVATIONS])
def test_float32_stays_float32(name, rng):
    a = act.ACTIVATIONS[name]
    z = rng.normal(size=(5, 3)).astype(np.float32)
    p = np.full(3, 0.25, dtype=np.float32) if name == "prelu" else a.default
    f = a.forward(z, p)
    assert f.dtype == np.float32
    if a.derivative is not None:
        assert a.derivative(z, f, p).dtype == np.float32


@pytest.mark.parametrize("name", ["sigmoid", "softplus", "tanh", "elu", "softmax"])
def test_extreme_inputs_stay_finite_without_warnings(name):
    a = act.ACTIVATIONS[name]
    z = np.array([[-1000.0, -50.0, 0.0, 50.0, 1000.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = a.forward(z, a.default)
        assert np.isfinite(f).all()
        if a.derivative is not None:
            assert np.isfinite(a.derivative(z, f, a.default)).all()
    if name == "sigmoid":
        np.testing.assert_allclose(f, [[0, np.exp(-50) / (1 + np.exp(-50)), 0.5, 1, 1]], rtol=1e-12)
    if name == "softplus":
        np.testing.assert_allclose(f[0, [2, 3, 4]], [np.log(2), 50, 1000], rtol=1e-12)


# -- softmax -----------------------------------------------------------------------

def test_softmax_lessons_numbers():
    p = act.softmax(np.array([[1.1, 2.2, 0.2, -1.7]]))
    np.testing.assert_allclose(p, [[0.224, 0.672, 0.091, 0.013]], atol=6e-4)


def test_softmax_rows_sum_to_one_and_survive_large_inputs(rng):
    z = rng.normal(scale=5, size=(20, 7))
    z[0] += 1000.0
    z[1] -= 1000.0
    p = act.softmax(z)
    assert np.isfinite(p).all() and (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(p[0], act.softmax(z[:1] - 1000.0)[0], rtol=1e-12)


def test_softmax_jacobian_matches_central_differences(rng):
    z = rng.normal(size=(6, 5))
    p = act.softmax(z)
    J = act.softmax_jacobian(p)  # J[n, i, k] = dp_i / dz_k
    numeric = np.empty_like(J)
    for k in range(5):
        e = np.zeros(5)
        e[k] = H
        numeric[:, :, k] = (act.softmax(z + e) - act.softmax(z - e)) / (2 * H)
    np.testing.assert_allclose(J, numeric, rtol=1e-6, atol=1e-9)
    # the lessons' two cases
    i, k = 1, 3
    np.testing.assert_allclose(J[:, i, i], p[:, i] * (1 - p[:, i]), rtol=1e-12)
    np.testing.assert_allclose(J[:, i, k], -p[:, i] * p[:, k], rtol=1e-12)


def test_softmax_vjp_is_jacobian_transpose_times_vector(rng):
    p = act.softmax(rng.normal(size=(8, 4)))
    v = rng.normal(size=(8, 4))
    expected = np.einsum("nik,ni->nk", act.softmax_jacobian(p), v)
    np.testing.assert_allclose(act.softmax_vjp(p, v), expected, rtol=1e-10, atol=1e-14)


def test_log_softmax_is_log_of_softmax_and_finite_where_it_underflows(rng):
    z = rng.normal(size=(5, 4))
    np.testing.assert_allclose(act.log_softmax(z), np.log(act.softmax(z)), rtol=1e-12)
    extreme = np.array([[0.0, -2000.0, 10.0]])
    np.testing.assert_allclose(act.log_softmax(extreme), extreme - 10.0 - np.log1p(np.exp(-10.0)),
                               rtol=1e-12)


# -- the table itself ----------------------------------------------------------------

def test_codes_are_unique_and_indexed():
    codes = [a.code for a in act.ACTIVATIONS.values()]
    assert sorted(codes) == list(range(len(codes)))
    assert all(act.BY_CODE[a.code] is a for a in act.ACTIVATIONS.values())


def test_unknown_activation_names_the_choices():
    with pytest.raises(ValueError, match="unknown activation 'swish'.*relu"):
        act.get("swish")
