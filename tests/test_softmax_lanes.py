"""The softmax forward pass's max and sum run in eight lanes (SOFTMAX_LANES in
kernels/_activations.pxd, the same in kernels/numba_activations.py): a row's maximum
found in any lane or in the tail, and the outputs the reference's, at widths around
the lane count. Through predict on a network whose one layer is the identity, so that
the rows of X are the logits."""
import numpy as np
import pytest

import fastmlp as fm

WIDTHS = [2, 7, 8, 9, 15, 16, 17, 24, 1003]


def identity_softmax(backend, dtype, k):
    m = fm.Model([fm.Dense(k, "softmax")], input_dim=k, loss="cross_entropy",
                 backend=backend, dtype=dtype, seed=0)
    m.set_weights([np.eye(k, dtype=dtype), np.zeros(k, dtype=dtype)])
    return m


@pytest.mark.parametrize("k", WIDTHS)
def test_the_max_is_found_in_every_lane_and_the_tail(backend, dtype, k):
    """One logit of 500 (float32) or 800 (float64) per row, at each position: e to it
    overflows, so a max missed by its lane shows as inf / inf = NaN."""
    positions = np.arange(k) if k <= 24 else np.r_[0:17, k // 2, k - 9:k]
    rng = np.random.default_rng(k)
    X = rng.uniform(-3, 3, size=(len(positions), k)).astype(dtype)
    X[np.arange(len(positions)), positions] = 500 if dtype == "float32" else 800
    got = identity_softmax(backend, dtype, k).predict(X)
    want = identity_softmax("numpy", dtype, k).predict(X)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(np.argmax(got, axis=1), positions)
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == "float32" else 1e-12,
                               atol=np.finfo(dtype).tiny)


@pytest.mark.parametrize("k", WIDTHS)
def test_rows_sum_to_one_as_the_reference(backend, dtype, k):
    rng = np.random.default_rng(100 + k)
    X = (rng.normal(size=(33, k)) * 4).astype(dtype)
    got = identity_softmax(backend, dtype, k).predict(X)
    want = identity_softmax("numpy", dtype, k).predict(X)
    tol = 2e-6 if dtype == "float32" else 1e-14
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * 1e-3)
    np.testing.assert_allclose(got.astype(np.float64).sum(axis=1), 1, rtol=0,
                               atol=k * np.finfo(dtype).eps)
