"""Cross-entropy accepts any targets in [0, 1], rows summing to anything (issue 8, item 1).

E = -(1/n) sum_i sum_c t_ic log_softmax(z_i)_c, whose gradient is
dE/dz = (p s - t) / n with s = sum_c t_c the row's target sum (PyTorch's
formula). The old fused (p - t) / n held only for rows summing to 1: on the
issue's targets it gave the bias gradient [0.0082, -0.184, 0.301] where
central differences give [-0.0676, -0.208, 0.276], and fit on all-zero
targets (loss 0) moved the biases.
"""
import numpy as np
import pytest

import fastmlp as fm
from helpers import numeric_gradients

ISSUE_TARGETS = np.array([[1, 1, 0], [0, 0, 0], [.5, 0, 0], [0, 1, 0]], dtype=float)
H = 1e-6
# float32 gradients against the float64 finite differences: float32 rounding only.
TOL = {"float64": {"rtol": 1e-6, "atol": 1e-8}, "float32": {"rtol": 1e-3, "atol": 1e-5}}


def _model(backend, dtype, hidden=True, optimizer=None):
    layers = [fm.Dense(5, activation="tanh")] if hidden else []
    return fm.Model(layers + [fm.Dense(3, activation="softmax")], input_dim=4,
                    loss="cross_entropy", optimizer=optimizer or fm.Adam(lr=0.05),
                    backend=backend, dtype=dtype, seed=3)


def _targets(kind, rows=4):
    if kind == "issue":
        return ISSUE_TARGETS
    # every entry uniform in [0, 1]: rows sum to anything in [0, 3]
    return np.random.default_rng(7).uniform(size=(rows, 3))


@pytest.mark.parametrize("kind", ["issue", "uniform"])
@pytest.mark.parametrize("hidden", [False, True], ids=["softmax-only", "hidden-tanh"])
def test_gradients_match_finite_differences_for_any_targets_in_0_1(backend, dtype, kind, hidden):
    X = np.random.default_rng(1).normal(size=(4, 4))
    T = _targets(kind)
    oracle = _model(backend, "float64", hidden)
    want = numeric_gradients(oracle, X, T)
    model = _model(backend, dtype, hidden)
    model.set_weights(oracle.get_weights())
    loss, grads = model.gradients(X, T)
    np.testing.assert_allclose(loss, oracle.evaluate(X, T), **TOL[dtype])
    for g, w in zip(grads, want):
        np.testing.assert_allclose(g, w, **TOL[dtype])


def test_issue_targets_bias_gradient_is_the_finite_difference_one(backend):
    """The issue's numbers: db must be the central differences', not (p - t) / n."""
    X = np.random.default_rng(1).normal(size=(4, 4))
    model = _model(backend, "float64", hidden=False)
    db = model.gradients(X, ISSUE_TARGETS)[1][1]
    p = model.predict(X)
    wrong = ((p - ISSUE_TARGETS) / 4).sum(axis=0)
    right = ((p * ISSUE_TARGETS.sum(axis=1, keepdims=True) - ISSUE_TARGETS) / 4).sum(axis=0)
    np.testing.assert_allclose(db, right, rtol=1e-12, atol=1e-15)
    assert np.abs(db - wrong).max() > 1e-3


@pytest.mark.parametrize("optimizer", [lambda: fm.Adam(lr=0.05), lambda: fm.SGD(lr=0.5),
                                       lambda: fm.SGD(lr=0.5, momentum=0.9)],
                         ids=["adam", "sgd", "momentum"])
@pytest.mark.parametrize("batch_size", [1, 7, None])
def test_fit_on_all_zero_targets_leaves_the_weights_unchanged(backend, dtype, optimizer,
                                                              batch_size):
    """All-zero targets: loss 0 and gradient exactly 0, so no optimiser moves anything."""
    X = np.random.default_rng(2).normal(size=(20, 4))
    T = np.zeros((20, 3))
    model = _model(backend, dtype, optimizer=optimizer())
    before = model.get_weights()
    history = model.fit(X, T, epochs=3, batch_size=batch_size)
    assert history.history["loss"] == [0.0, 0.0, 0.0]
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    loss, grads = model.gradients(X, T)
    assert loss == 0.0 and all(not g.any() for g in grads)


def test_one_hot_and_soft_label_rows_keep_p_minus_t(backend, dtype):
    """Rows summing to 1 (s = 1) give the familiar (p - t) / n, as before."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(6, 4))
    soft = rng.uniform(size=(6, 3))
    soft /= soft.sum(axis=1, keepdims=True)
    model = _model(backend, dtype, hidden=False)
    p = model.predict(X).astype(float)
    db = model.gradients(X, soft)[1][1]
    tol = TOL[dtype]
    np.testing.assert_allclose(db, ((p - soft) / 6).sum(axis=0), rtol=tol["rtol"],
                               atol=tol["atol"] * 10)
