"""Input scaling in one compiled pass (kernels/_scaling.h, cython_mlp.scale_into):
the bits of NumPy's subtract, divide and cast (validation._scale_into's arithmetic)
for every pair of float32/float64 input and output, in rows and in columns, at the
edges of both dtypes (values past float32's range become inf, tiny ones subnormal or
zero, NaN and the signs of zeros kept); a float32 output too, which the AVX-512 build
computes through the reciprocal of the scale (every build this processor runs is
tested), where a plain product would round to another float; anything else is left to
NumPy; and the model paths that scale (predict large and small, train_on_batch, fit) go
through it."""
import ctypes
import ctypes.util
import importlib.util
import itertools
import platform
import sys

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import validation
from fastmlp.kernels import cython_builds

scale_into = pytest.importorskip("fastmlp.kernels.cython_mlp").scale_into


def _numpy(out, X, mean, scale):
    with np.errstate(all="ignore"):
        block = np.subtract(X, mean, dtype=np.float64)
        block /= scale
        out[...] = block


def _same(a, b):
    return np.array_equal(a, b, equal_nan=True) and np.array_equal(np.signbit(a), np.signbit(b))


@pytest.mark.parametrize("source, target", list(itertools.product(["float32", "float64"],
                                                                   repeat=2)))
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("shape", [(1, 5), (7, 1), (33, 17), (300, 64)])
def test_the_bits_of_numpys_arithmetic(source, target, order, shape):
    rng = np.random.default_rng(sum(shape))
    with np.errstate(over="ignore"):
        X = np.asarray(rng.standard_normal(shape) * 10.0 ** rng.integers(-45, 45, shape),
                       dtype=source, order=order)
    flat = X.reshape(-1, order="A")
    flat[:6:2] = [np.nan, np.inf, -0.0][:len(flat[:6:2])]
    mean = rng.standard_normal(shape[1]) * 1e3
    mean[0] = 0.0
    scale = np.abs(rng.standard_normal(shape[1])) * 10.0 ** rng.integers(-300, 300, shape[1])
    scale[-1] = 5e-324   # a subnormal scale: most results overflow
    got = np.empty(shape, dtype=target, order=order)
    want = np.empty(shape, dtype=target, order=order)
    assert scale_into(got, X, mean, scale) is True
    _numpy(want, X, mean, scale)
    assert _same(got, want)
    if order == "F" and shape[0] > 10:   # a block of rows of a Fortran array
        block = np.zeros(shape, dtype=target, order="F")[3:9]
        assert scale_into(block, X[3:9], mean, scale) is True
        assert _same(block, want[3:9])


# every build of the extension this processor runs (cython_builds.load imports one)
BUILDS = [b for b in cython_builds.runnable()
          if importlib.util.find_spec(f"fastmlp.kernels._cython_mlp_{b}") is not None]


def _near_float_midpoints(rng, n, k, exponents=(-120, 127)):
    """(X float64 (n, k), scale (k,)): X / scale within a few doubles of a midpoint
    between two float32 numbers of binary exponents in ``exponents``: those of normal
    numbers, or subnormal ones (below -126), whose midpoints lie at other bits."""
    with np.errstate(under="ignore"):
        f = (rng.standard_normal((n, k)) * 2.0 ** rng.integers(*exponents, (n, k))).astype(
            np.float32)
    mid = (f.astype(np.float64) + np.nextafter(f, np.float32(np.inf)).astype(np.float64)) / 2
    scale = np.abs(rng.standard_normal(k)) * 2.0 ** rng.integers(-20, 20, k) + 0.1
    X = mid * scale
    return X + rng.integers(-3, 4, (n, k)) * np.spacing(X), scale


def _product_differs(X, scale):
    """The share of X / scale a plain product (no check) rounds to another float32."""
    with np.errstate(all="ignore"):
        product = (X * (1 / scale)).astype(np.float32)
        quotient = (X / scale).astype(np.float32)
    return (product.view(np.uint32) != quotient.view(np.uint32)).mean()


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("source", ["float32", "float64"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_a_float32_output_through_the_reciprocal_keeps_numpys_bits(build, source, order):
    """A float32 output is (x - mean) * (1 / scale) where that rounds to the quotient's
    float (kernels/_scaling.h, the AVX-512 build): values a plain product rounds to
    another float32 (it does for a few percent of these), values at float32's edges and
    beyond, NaN, inf and zeros of both signs, all get NumPy's bits, in rows, columns and
    blocks of rows."""
    into = cython_builds.load(build).scale_into
    rng = np.random.default_rng(7)
    X, scale = _near_float_midpoints(rng, 300, 40)
    mean = np.zeros(40)
    assert _product_differs(X, scale) > 0.01
    # float32's edges: subnormal, its smallest normal, its largest and past it (the
    # midpoint to infinity), in X and, through the scale of 3, in X / scale
    edges = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-40, 2.0 ** -126,
                      1.1754942e-38, 3.4028235e38, -3.4028236e38, 3.5e38, 1e300, 1e-300,
                      5e-324, (2 - 2.0 ** -23) * 2.0 ** 127 + 2.0 ** 103,
                      (2 - 2.0 ** -23) * 2.0 ** 127 + 2.0 ** 103 - 2.0 ** 75, 1.0])
    X[:len(edges), :len(edges)] = np.add.outer(edges, np.zeros(len(edges)))
    X[-len(edges):, :len(edges)] = np.add.outer(edges, np.zeros(len(edges))).T * 3
    scale[:3] = [1.0, 3.0, 1.0]
    mean[2] = -1e-300
    X = np.asarray(X, dtype=source, order=order)
    want = np.empty(X.shape, np.float32, order=order)
    _numpy(want, X, mean, scale)
    got = np.empty(X.shape, np.float32, order=order)
    assert into(got, X, mean, scale) is True
    assert _same(got, want)
    block = np.empty(X.shape, np.float32, order=order)[5:77]
    assert into(block, X[5:77], mean, scale) is True
    assert _same(block, want[5:77])


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("order", ["C", "F"])
def test_results_in_float32s_subnormal_range_keep_numpys_bits(build, order):
    """Below float32's smallest normal number its midpoints lie at other bits of a
    double than above it: such a product is computed again with the division."""
    into = cython_builds.load(build).scale_into
    X, scale = _near_float_midpoints(np.random.default_rng(5), 200, 30, (-150, -126))
    assert _product_differs(X, scale) > 0.01
    X = np.asarray(X, order=order)
    mean = np.zeros(30)
    want = np.empty(X.shape, np.float32, order=order)
    _numpy(want, X, mean, scale)
    got = np.empty(X.shape, np.float32, order=order)
    assert into(got, X, mean, scale) is True
    assert _same(got, want)


# x86-64 <fenv.h> (glibc): FE_TONEAREST 0, FE_DOWNWARD 0x400, FE_UPWARD 0x800,
# FE_TOWARDZERO 0xC00
_DIRECTED = {"downward": 0x400, "upward": 0x800, "toward zero": 0xC00}


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
                    reason="the rounding modes' values are those of x86-64 glibc")
@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("mode", list(_DIRECTED))
def test_a_directed_rounding_mode_keeps_numpys_bits(build, mode):
    """Hostile round 38b: the reciprocal's test knows the points where rounding to
    nearest changes; in a directed mode (fesetround) those are the floats themselves,
    and 3 * (1/3 rounded toward zero) gave 0.99999994 where NumPy gives 1.0. Any mode
    but the default takes the division."""
    into = cython_builds.load(build).scale_into
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    X = np.arange(1.0, 301.0).reshape(30, 10) * 3.0
    scale = np.full(10, 3.0)
    mean = np.zeros(10)
    assert libm.fesetround(_DIRECTED[mode]) == 0
    try:
        for source in ("float32", "float64"):
            x = X.astype(source)
            want = np.empty(X.shape, np.float32)
            _numpy(want, x, mean, scale)
            got = np.empty(X.shape, np.float32)
            assert into(got, x, mean, scale) is True
            same = _same(got, want)
            assert same, (mode, source)
    finally:
        libm.fesetround(0)
    np.testing.assert_array_equal(want, X.astype(np.float32) / 3)   # exact in every mode


@pytest.mark.parametrize("build", BUILDS)
def test_random_bit_patterns_through_the_reciprocal(build):
    """Any float64 bit pattern in X, mean and scale (NaN payloads, subnormals, huge and
    tiny values) into float32: NumPy's bits, through the reciprocal or not."""
    into = cython_builds.load(build).scale_into
    rng = np.random.default_rng(11)
    for _ in range(30):
        X = rng.integers(0, 2 ** 64, (64, 24), dtype=np.uint64).view(np.float64)
        mean = rng.integers(0, 2 ** 64, 24, dtype=np.uint64).view(np.float64)
        # mostly normal scales (the reciprocal's path), sometimes any pattern
        scale = np.abs(rng.standard_normal(24)) * 2.0 ** rng.integers(-900, 900, 24)
        if rng.random() < 0.3:
            scale = rng.integers(0, 2 ** 64, 24, dtype=np.uint64).view(np.float64)
        mean[rng.random(24) < 0.5] = 0.0
        want = np.empty(X.shape, np.float32)
        _numpy(want, X, mean, scale)
        got = np.empty(X.shape, np.float32)
        assert into(got, X, mean, scale) is True
        assert _same(got, want)


def test_anything_else_is_left_to_numpy():
    X, mean, scale = np.ones((4, 3)), np.zeros(3), np.ones(3)
    read_only = np.empty((4, 3))
    read_only.flags.writeable = False
    for out, x, m, s in [
            (np.empty((4, 3), order="F"), X, mean, scale),        # layouts differ
            (np.empty((4, 3)), X.astype(np.int64), mean, scale),  # not a float
            (np.empty((4, 3), np.float16), X, mean, scale),
            (np.empty((4, 3)), X, mean.astype(np.float32), scale),
            (np.empty((4, 3)), X, mean[:2], scale),
            (np.empty((4, 3))[:, ::-1], X, mean, scale),
            (np.empty((4, 3)), X.astype(">f8"), mean, scale),
            (read_only, X, mean, scale),
            (np.empty((4, 2)), X, mean, scale),
            (np.empty((0, 3)), X[:0], mean, scale),
            ([[0.0] * 3] * 4, X, mean, scale)]:
        before = np.array(out, copy=True)
        assert scale_into(out, x, m, s) is False
        np.testing.assert_array_equal(np.asarray(out), before)


def test_the_models_scaling_goes_through_it(compiled_backend, dtype, monkeypatch):
    calls = []
    compiled = validation._compiled_scale_into
    monkeypatch.setattr(validation, "_compiled_scale_into",
                        lambda *a: calls.append(a[1].shape) or compiled(*a))
    X = np.random.default_rng(0).normal(size=(5000, 12))
    y = np.arange(5000) % 3
    m = fm.Model([fm.Dense(8, "tanh"), fm.Dense(3, "softmax")], input_dim=12,
                 loss="cross_entropy", backend=compiled_backend, dtype=dtype, seed=0)
    m.set_input_scaling(X.mean(axis=0), X.std(axis=0))
    m.fit(X, y, epochs=1)
    m.train_on_batch(X[:8], y[:8])
    m.predict(X[:1])
    m.predict(np.asfortranarray(X))
    assert len(calls) >= 4
    # and the same outputs as NumPy's arithmetic
    want = m.predict(X)
    monkeypatch.setattr(validation, "_compiled_scale_into", None)
    np.testing.assert_array_equal(m.predict(X), want)


def test_an_out_sharing_memory_is_left_to_numpy():
    """The pass reads and writes through restrict pointers: an out that shares memory
    with X, mean or scale goes to NumPy, which handles the overlap."""
    base = np.arange(40, dtype=np.float64).reshape(8, 5)
    mean, scale = np.full(5, 1.0), np.full(5, 2.0)
    for out, X in [(base, base), (base[1:], base[:-1]), (base[:, :4], base[:, 1:])]:
        assert scale_into(out, X, mean[:out.shape[1]], scale[:out.shape[1]]) is False
    vectors = np.zeros(20)
    out = vectors[:10].reshape(2, 5)
    assert scale_into(out, np.ones((2, 5)), vectors[5:10], np.ones(5)) is False
    assert scale_into(out, np.ones((2, 5)), np.zeros(5), vectors[:5]) is False
    X = np.ones((2, 5))
    assert scale_into(np.empty((2, 5)), X, np.zeros(5), np.ones(5)) is True
