"""The Numba activation passes run over blocks of rows (numba_activations.ACT_BLOCK
elements) and return the block maxima the guarded step bounds its update by; the bias
gradient sums columns in blocks of SUM_BLOCK through row views. Widths and row counts
around both block sizes, every activation, float32 and float64, against the reference
table (fastmlp.activations) and np.abs(...).max()."""
import numpy as np
import pytest

from fastmlp.activations import ACTIVATIONS, softmax_vjp
from fastmlp.codes import SUM_BLOCK

na = pytest.importorskip("fastmlp.kernels.numba_activations")
nl = pytest.importorskip("fastmlp.kernels.numba_layers")
nt = pytest.importorskip("fastmlp.kernels.numba_train")
from numba import njit  # noqa: E402  (numba is there: the kernels imported)

from helpers import numba_passes  # noqa: E402

_forward, _backward = numba_passes()   # (the passes have no Python entry point)

BLOCK = na.ACT_BLOCK
# (rows, units): one row wider than a block, a block's width exactly and either side,
# narrow rows whose blocks hold many rows and a last block cut short
SHAPES = [(5, BLOCK + 1), (3, BLOCK), (4, BLOCK - 1), (700, 3), (9, 255), (1, 1), (2049, 1)]
NAMES = sorted(ACTIVATIONS)


def _tol(dtype):
    return dict(rtol=2e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-13)


def _case(name, shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    act = ACTIVATIONS[name]
    Z = (rng.standard_normal(shape) * 3).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    alpha = rng.uniform(0.1, 0.5, shape[1]).astype(dtype)
    p = dtype(act.default)
    return act, Z, b, alpha, p


def _abs_max(a):
    return np.inf if not np.isfinite(a).all() else float(np.abs(a).max(initial=0.0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", NAMES)
def test_forward_blocks_match_the_reference_and_return_the_maximum(name, shape, dtype):
    act, Z, b, alpha, p = _case(name, shape, dtype)
    want_z = Z + b
    want = act.forward(want_z, alpha if name == "prelu" else p)
    A = np.empty_like(Z)
    top = _forward(Z, b, A, act.code, p, alpha, True)
    np.testing.assert_array_equal(Z, want_z)   # the bias, in place, element by element
    np.testing.assert_allclose(A, want, **_tol(dtype))
    assert top == _abs_max(A)
    assert _forward(Z.copy(), b, A, act.code, p, alpha, False) == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", NAMES)
def test_backward_blocks_match_the_reference_and_return_the_maximum(name, shape, dtype):
    act, Z, b, alpha, p = _case(name, shape, dtype, seed=1)
    A = act.forward(Z, alpha if name == "prelu" else p).astype(dtype)
    G = np.random.default_rng(2).standard_normal(shape).astype(dtype)
    if name == "softmax":
        want = softmax_vjp(A, G)
    else:
        want = G * act.derivative(Z, A, alpha if name == "prelu" else p)
    galpha = np.zeros(shape[1], dtype)
    delta = Z.copy()
    top = _backward(G, delta, A, act.code, p, alpha, galpha, 0.0, True)
    np.testing.assert_allclose(delta, want, **_tol(dtype))
    assert top == _abs_max(delta)
    if name == "prelu":   # d/d alpha = sum over rows of g * min(z, 0)
        np.testing.assert_allclose(galpha, (G.astype(np.float64) * np.minimum(Z, 0)).sum(0),
                                   **_tol(dtype))


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_bad_value_in_any_block_makes_the_maximum_inf(where, bad):
    rows, k = 3 * (BLOCK // 16) + 5, 16    # several blocks, the last cut short
    act, Z, b, alpha, p = _case("linear", (rows, k), np.float32)   # f(inf) = inf
    i = {"first": 0, "middle": rows // 2, "last": rows - 1}[where]
    Z[i, k - 1] = bad
    A = np.empty_like(Z)
    assert _forward(Z, b, A, act.code, p, alpha, True) == np.inf
    G = np.ones_like(Z)
    G[i, 0] = bad
    relu = ACTIVATIONS["relu"]
    Zr = np.abs(Z) + 1     # relu's derivative 1 everywhere but the bad element
    assert _backward(G, Zr, A, relu.code, p, alpha, np.zeros(k, np.float32), 0.0,
                     True) == np.inf


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1, SUM_BLOCK - 1, SUM_BLOCK, SUM_BLOCK + 1, 2 * SUM_BLOCK + 3])
def test_bias_gradient_column_sums_across_blocks(k, dtype):
    """dense_params' gb: every column's sum over the rows, formed in float64 (blocks of
    SUM_BLOCK columns read through row views)."""
    @njit
    def grads(X, D, W, b, alpha, gW, gb, galpha):
        nl.dense_params(X, D, W, b, alpha, gW, gb, galpha, 0.0, 0.0, 1.0)

    rng = np.random.default_rng(3)
    n, k_in = 37, 4
    X, D = rng.standard_normal((n, k_in)).astype(dtype), rng.standard_normal((n, k)).astype(dtype)
    W, b = np.zeros((k_in, k), dtype), np.zeros(k, dtype)
    gW, gb = np.empty((k_in, k), dtype), np.empty(k, dtype)
    empty = np.zeros(0, dtype)
    grads(X, D, W, b, empty, gW, gb, empty)
    # row by row in float64, in order (cumsum's order), then rounded once
    np.testing.assert_array_equal(gb, np.cumsum(D.astype(np.float64), axis=0)[-1].astype(dtype))
    np.testing.assert_allclose(gW, X.T.astype(np.float64) @ D,
                               **(dict(rtol=1e-5, atol=1e-5) if dtype == np.float32
                                  else _tol(dtype)))


def test_guard_backup_copy_round_trip():
    """_copy_state saves theta and the optimiser buffers in use and puts them back."""
    @njit
    def copy_state(theta, bufs, rows, backup, save):   # (a helper: no Python entry point)
        nt._copy_state(theta, bufs, rows, backup, save)

    rng = np.random.default_rng(4)
    p = 1000
    theta, bufs = rng.standard_normal(p), rng.standard_normal((2, p))
    keep_theta, keep_bufs = theta.copy(), bufs.copy()
    backup = np.full(3 * p, np.nan)
    copy_state(theta, bufs, 2, backup, True)
    np.testing.assert_array_equal(backup, np.concatenate([keep_theta, keep_bufs.ravel()]))
    theta[:], bufs[:] = 0.0, 0.0
    copy_state(theta, bufs, 1, backup, False)   # theta and the first buffer only
    np.testing.assert_array_equal(theta, keep_theta)
    np.testing.assert_array_equal(bufs[0], keep_bufs[0])
    assert not bufs[1].any()


def test_helper_called_from_python_raises():
    """Helpers and kernels have no Python entry point (numba_math.helper, kernel): called
    from Python they raise a TypeError naming them, never jump to address 0."""
    with pytest.raises(TypeError, match="_copy_state is compiled for the Numba kernels"):
        nt._copy_state(np.zeros(3), np.zeros((2, 3)), 0, np.zeros(9), True)
    Z = np.zeros((2, 2))
    with pytest.raises(TypeError, match="bias_act_forward is compiled for the Numba kernels"):
        na.bias_act_forward(Z, Z[0], Z, 0, 0.0, Z[0], False)
