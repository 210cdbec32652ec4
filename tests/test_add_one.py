"""The add-one recipe of CONTRIBUTING.md holds: the suites build their lists from the
tables, and a new table row (a toy ``swish``) is picked up by them, runs on the
reference backend with a correct derivative, and is refused loudly by compiled
backends that have no kernel for it yet.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import activations as act
from fastmlp import losses, optimizers
from fastmlp.backends import available_backends, get_backend
from fastmlp.network import Network
from fastmlp.optimizers import OptimizerState

TESTS = Path(__file__).resolve().parent
ELEMENTWISE = [a.name for a in act.ACTIVATIONS.values() if a.derivative is not None]


def _fresh(module):
    """A new copy of tests/<module>.py, its lists built from the tables as they are now."""
    spec = importlib.util.spec_from_file_location(f"_fresh_{module}", TESTS / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _suite_lists():
    """What each suite parametrises over, as names."""
    agreement, gradients, fuzz, activations = (
        _fresh("test_backend_agreement"), _fresh("test_gradients"), _fresh("test_fuzz"),
        _fresh("test_activations"))
    return {
        "agreement hidden": sorted(agreement.HIDDEN),
        "agreement cases": sorted({h for h, _, _ in agreement.CASES}),
        "agreement losses": sorted({l for _, _, l in agreement.CASES}),
        "agreement optimizers": sorted(set(optimizers.OPTIMIZERS) & set(agreement.OPTIMIZERS)),
        "gradients hidden": sorted(gradients.HIDDEN),
        "fuzz hidden": sorted(fuzz.HIDDEN),
        "activations elementwise": sorted(activations.ELEMENTWISE),
    }


def test_suites_build_their_lists_from_the_tables():
    lists = _suite_lists()
    for key in ("agreement hidden", "agreement cases", "gradients hidden", "fuzz hidden",
                "activations elementwise"):
        assert lists[key] == sorted(ELEMENTWISE), key
    assert lists["agreement losses"] == sorted(losses.LOSSES)
    assert lists["agreement optimizers"] == sorted(optimizers.OPTIMIZERS)


# -- a toy activation added to the table at runtime ----------------------------------

SWISH = 12


def _swish(z, p):
    return (z * act.sigmoid(z)).astype(z.dtype, copy=False)


def _swish_derivative(z, f, p):
    s = act.sigmoid(z)
    return (s + f * (1 - s)).astype(z.dtype, copy=False)  # s + z s (1 - s)


@pytest.fixture
def swish(monkeypatch):
    """The recipe's one table row (CONTRIBUTING.md), added for this test only."""
    assert SWISH not in act.BY_CODE
    row = act.Activation("swish", SWISH, _swish, _swish_derivative, init="he")
    monkeypatch.setitem(act.ACTIVATIONS, "swish", row)
    monkeypatch.setitem(act.BY_CODE, SWISH, row)
    return row


def test_suites_pick_up_a_new_activation(swish):
    lists = _suite_lists()
    for key in ("agreement hidden", "agreement cases", "gradients hidden", "fuzz hidden",
                "activations elementwise"):
        assert "swish" in lists[key], key


def _backend(name, net, dtype="float64"):
    theta = net.init_params(np.random.default_rng(0), np.float64).astype(dtype)
    theta += 0.3 * np.random.default_rng(1).standard_normal(theta.shape)
    state = OptimizerState.new(fm.SGD(lr=0.1), net.n_params, np.dtype(dtype))
    return get_backend(name)(net, np.dtype(dtype), theta, state)


def test_new_activation_runs_on_the_reference_with_a_correct_gradient(swish):
    net = Network([fm.Dense(5, "swish"), fm.Dense(2, "linear")], 3, "mse")
    engine = _backend("numpy", net)
    rng = np.random.default_rng(2)
    X, T = rng.standard_normal((7, 3)), rng.standard_normal((7, 2))
    grad = np.empty(net.n_params)
    loss = engine.loss_and_gradient(X, T, grad)
    assert np.isclose(loss, engine.evaluate(X, T))
    theta, h = engine.theta, 1e-6
    numeric = np.empty_like(grad)
    for i in range(len(theta)):
        keep = theta[i]
        theta[i] = keep + h
        up = engine.evaluate(X, T)
        theta[i] = keep - h
        down = engine.evaluate(X, T)
        theta[i] = keep
        numeric[i] = (up - down) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
    # and the derivative entry itself, elementwise
    z = np.linspace(-6, 6, 101)
    numeric = (_swish(z + h, None) - _swish(z - h, None)) / (2 * h)
    np.testing.assert_allclose(_swish_derivative(z, _swish(z, None), None), numeric,
                               rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("backend", [b for b in available_backends() if b != "numpy"])
def test_compiled_backends_refuse_an_activation_they_have_no_kernel_for(swish, backend):
    net = Network([fm.Dense(5, "swish"), fm.Dense(2, "linear")], 3, "mse")
    X = np.ones((4, 3))
    with pytest.raises(ValueError, match="unknown activation code"):
        _backend(backend, net).predict(X)  # the Cython Engine refuses it when built
