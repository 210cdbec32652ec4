"""The loss table (fastmlp.losses): values against their definitions, gradients against
finite differences, and the lessons' worked numbers."""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp import activations as act
from fastmlp import losses

H = 1e-6


# -- the lessons' numbers ------------------------------------------------------------

def test_squared_error_lessons_numbers():
    np.testing.assert_allclose(losses.squared_error(0.9, 1), 0.01, rtol=1e-12)
    np.testing.assert_allclose(losses.squared_error(0.1, 0), 0.01, rtol=1e-12)
    np.testing.assert_allclose(losses.squared_error([0.9, 0.1], [1, 0]), 0.02, rtol=1e-12)


def test_cross_entropy_in_bits_lessons_numbers():
    np.testing.assert_allclose(losses.cross_entropy([0.9, 0.1], [0.6, 0.4], base=2), 1.42,
                               atol=5e-3)
    # natural log by default: the same number times ln 2
    np.testing.assert_allclose(losses.cross_entropy([0.9, 0.1], [0.6, 0.4]),
                               losses.cross_entropy([0.9, 0.1], [0.6, 0.4], base=2) * np.log(2),
                               rtol=1e-12)


def test_cross_entropy_of_zero_probability_is_large_and_finite():
    value = losses.cross_entropy([1.0, 0.0], [0.0, 1.0])
    assert np.isfinite(value) and value > 100


# -- values against their definitions ------------------------------------------------

@pytest.fixture
def batch(rng):
    z = rng.normal(size=(7, 4))
    t_onehot = np.eye(4)[rng.integers(0, 4, size=7)]
    t_soft = rng.dirichlet(np.ones(4), size=7)
    t_binary = rng.uniform(0, 1, size=(7, 4))
    return z, t_onehot, t_soft, t_binary


def test_mse_is_mean_over_samples_of_sum_over_outputs(batch):
    z, _, t, _ = batch
    y = np.tanh(z)
    expected = np.mean(np.sum((y - t) ** 2, axis=1))
    np.testing.assert_allclose(losses.get("mse").value(z, y, t), expected, rtol=1e-12)


@pytest.mark.parametrize("targets", ["onehot", "soft"])
def test_cross_entropy_value(batch, targets):
    z, onehot, soft, _ = batch
    t = onehot if targets == "onehot" else soft
    p = act.softmax(z)
    expected = np.mean(-np.sum(t * np.log(p), axis=1))
    np.testing.assert_allclose(losses.get("cross_entropy").value(z, p, t), expected, rtol=1e-12)


def test_binary_cross_entropy_value(batch):
    z, _, _, t = batch
    p = act.sigmoid(z)
    expected = np.mean(-np.sum(t * np.log(p) + (1 - t) * np.log(1 - p), axis=1))
    np.testing.assert_allclose(losses.get("binary_cross_entropy").value(z, p, t), expected,
                               rtol=1e-12)


@pytest.mark.parametrize("name", ["cross_entropy", "binary_cross_entropy"])
def test_classification_losses_stay_finite_when_probabilities_underflow(name):
    z = np.array([[800.0, -800.0], [-800.0, 800.0]])
    t = np.array([[0.0, 1.0], [1.0, 0.0]])  # confidently wrong
    out = act.softmax(z) if name == "cross_entropy" else act.sigmoid(z)
    value = losses.get(name).value(z, out, t)
    assert np.isfinite(value)
    # both are -log(e^-1600) = 1600 per row: each wrong output is 1600 logits off
    np.testing.assert_allclose(value, 1600.0, rtol=1e-9)


# -- gradients against finite differences ----------------------------------------------

def _numeric(fun, x):
    g = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = H
        g[idx] = (fun(x + e) - fun(x - e)) / (2 * H)
    return g


def test_mse_gradient_is_dE_dy(batch):
    z, _, t, _ = batch
    y = np.tanh(z)
    loss = losses.get("mse")
    numeric = _numeric(lambda yy: loss.value(z, yy, t), y)
    np.testing.assert_allclose(loss.gradient(y, t), numeric, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(loss.gradient(y, t), 2 * (y - t) / len(y), rtol=1e-12)


@pytest.mark.parametrize("name,targets", [("cross_entropy", "onehot"), ("cross_entropy", "soft"),
                                          ("binary_cross_entropy", "binary")])
def test_fused_gradient_is_dE_dz(batch, name, targets):
    """Softmax + cross-entropy and sigmoid + BCE both give (p - t) / n with respect to z."""
    z, onehot, soft, binary = batch
    t = {"onehot": onehot, "soft": soft, "binary": binary}[targets]
    loss = losses.get(name)
    out = act.softmax if name == "cross_entropy" else act.sigmoid
    numeric = _numeric(lambda zz: loss.value(zz, out(zz), t), z)
    np.testing.assert_allclose(loss.gradient(out(z), t), numeric, rtol=1e-6, atol=1e-9)


def test_loss_table():
    assert losses.get("mse").code == losses.MSE
    assert losses.get("cross_entropy").output == "softmax"
    assert losses.get("binary_cross_entropy").output == "sigmoid"
    with pytest.raises(ValueError, match="unknown loss 'hinge'.*mse"):
        losses.get("hinge")


# -- through the model -----------------------------------------------------------------

def test_model_evaluate_matches_the_definitions(backend, rng):
    X = rng.normal(size=(9, 3))
    labels = rng.integers(0, 3, size=9)
    ce = fm.Model([fm.Dense(5, "tanh"), fm.Dense(3, "softmax")], input_dim=3,
                  loss="cross_entropy", backend=backend, dtype="float64", seed=1)
    p = ce.predict(X)
    np.testing.assert_allclose(ce.evaluate(X, labels),
                               np.mean(-np.log(p[np.arange(9), labels])), rtol=1e-10)
    mse = fm.Model([fm.Dense(5, "tanh"), fm.Dense(3, "sigmoid")], input_dim=3, loss="mse",
                   backend=backend, dtype="float64", seed=1)
    T = rng.uniform(size=(9, 3))
    np.testing.assert_allclose(mse.evaluate(X, T), np.mean(np.sum((mse.predict(X) - T) ** 2, 1)),
                               rtol=1e-10)
    bce = fm.Model([fm.Dense(5, "tanh"), fm.Dense(2, "sigmoid")], input_dim=3,
                   loss="binary_cross_entropy", backend=backend, dtype="float64", seed=1)
    T = rng.integers(0, 2, size=(9, 2))
    p = bce.predict(X)
    np.testing.assert_allclose(bce.evaluate(X, T),
                               np.mean(-np.sum(T * np.log(p) + (1 - T) * np.log(1 - p), 1)),
                               rtol=1e-10)


@pytest.mark.parametrize("loss,out", [("cross_entropy", "sigmoid"), ("binary_cross_entropy", "softmax"),
                                      ("cross_entropy", "linear")])
def test_fused_losses_need_their_output_activation(loss, out):
    with pytest.raises(ValueError, match=f"needs a .* output layer, got '{out}'"):
        fm.Model([fm.Dense(3, "tanh"), fm.Dense(2, out)], input_dim=2, loss=loss)
