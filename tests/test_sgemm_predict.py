"""predict's float32 batches in the AVX-512 Cython build: kernels/_sgemm.h's GEMM loops,
each part of the rows through every layer on a thread of its own (_mlp.pxi's
forward_rows, _sgemm.h's fm_split).

Checked against the NumPy reference and against the same build with the loops off
(BLAS): every tail of rows (blocks of 12) and of columns (vectors of 16, masked), both
parts of the rows (the calling thread's and the worker's), the same bits whichever rows
share a call and on one thread or two, non-finite X in either part, and a theta that
does not start on a cache line.
"""
import copy
import pickle

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import rules
from fastmlp._aligned import CACHE_LINE as THETA_ALIGN
from fastmlp._aligned import aligned_empty, aligned_zeros
from helpers import pool_threads

cython_mlp = pytest.importorskip("fastmlp.kernels.cython_mlp")

needs_loops = pytest.mark.skipif(
    cython_mlp._use_sgemm() != 1,
    reason=f"the {cython_mlp.ISA} build has no _sgemm.h loops (AVX-512 only): BLAS does it")


def _model(sizes, hidden="relu", output="softmax", loss="cross_entropy", dtype="float32",
           seed=0):
    layers = [fm.Dense(u, hidden) for u in sizes[1:-1]] + [fm.Dense(sizes[-1], output)]
    return fm.Model(layers, input_dim=sizes[0], loss=loss, backend="cython", dtype=dtype,
                    seed=seed)


def _numpy_forward(m, X):
    """The forward pass in float64 from the model's float32 weights: the plain maths."""
    a = X.astype(np.float64)
    weights = m.get_weights()
    layers = m._net.layers
    i = 0
    for layer in layers:
        W, b = weights[i].astype(np.float64), weights[i + 1].astype(np.float64)
        i += 2
        z = a @ W + b
        if layer.activation.name == "relu":
            a = np.maximum(z, 0)
        elif layer.activation.name == "tanh":
            a = np.tanh(z)
        elif layer.activation.name == "softmax":
            e = np.exp(z - z.max(axis=1, keepdims=True))
            a = e / e.sum(axis=1, keepdims=True)
        elif layer.activation.name == "linear":
            a = z
        else:
            raise AssertionError(layer.activation.name)
    return a


def _pool_threads(n):
    """At most n threads for the pool's split (helpers.pool_threads)."""
    return pool_threads(cython_mlp, n)


def _blas(m, X):
    was = cython_mlp._use_sgemm(0)
    try:
        return m.predict(X)
    finally:
        cython_mlp._use_sgemm(was)


@needs_loops
@pytest.mark.parametrize("sizes", [
    (784, 256, 128, 10),   # the benchmark net: full panels of 32, a masked one of 10
    (33, 17, 47, 1),       # tails everywhere: 17 = 16 + 1, 47 = 32 + 15, one output
    (5, 16, 31, 3),        # a panel of exactly 16 (one vector, no mask), 31 = 16 + 15
    (3, 48, 2),            # 48 = 32 + 16 (the second panel one full vector)
    (100, 64, 64, 64),     # every panel full
])
@pytest.mark.parametrize("rows", [9, 10, 13, 23, 24, 25, 32, 35, 36, 37, 48, 511, 1000])
def test_the_loops_compute_the_forward_pass(sizes, rows):
    output = "linear" if sizes[-1] == 1 else "softmax"
    loss = "mse" if sizes[-1] == 1 else "cross_entropy"
    m = _model(sizes, output=output, loss=loss)
    X = np.random.default_rng(rows).standard_normal((rows, sizes[0])).astype(np.float32)
    got = m.predict(X)
    want = _numpy_forward(m, X)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(got, _blas(m, X), rtol=2e-5, atol=2e-6)


@needs_loops
def test_a_rows_outputs_are_the_same_bits_in_any_batch_and_on_one_thread_or_two():
    m = _model((784, 256, 128, 10))
    X = np.random.default_rng(1).standard_normal((600, 784)).astype(np.float32)
    with _pool_threads(2):
        for _ in range(3):   # the worker starts on a first split; later calls share
            two = m.predict(X)
        np.testing.assert_array_equal(m.predict(X), two)
    with _pool_threads(1):
        one = m.predict(X)
    np.testing.assert_array_equal(one, two)
    # other batches: the rows in another order, a slice starting mid-block, a tail
    perm = np.random.default_rng(2).permutation(600)
    np.testing.assert_array_equal(m.predict(X[perm]), two[perm])
    np.testing.assert_array_equal(m.predict(X[7:131]), two[7:131])
    np.testing.assert_array_equal(m.predict(X[-25:]), two[-25:])


@needs_loops
def test_the_workers_part_is_computed_by_the_worker():
    """The GEMV's worker (_gemv_pool.h), which the split uses where the BLAS has no
    worker of its own to share (test_blas_worker.py checks that one)."""
    m = _model((64, 48, 10))
    X = np.random.default_rng(3).standard_normal((300, 64)).astype(np.float32)
    with _pool_threads(1):
        want = m.predict(X)
    pooled = cython_mlp._use_blas_pool(False)
    try:
        with _pool_threads(2):
            m.predict(X)
            if cython_mlp._gemv_pool()["state"] != 1:
                pytest.skip("no worker thread here (one CPU, or none could start)")
            before = cython_mlp._gemv_pool(leave_to_worker=1)
            try:
                jobs = before["jobs"]
                got = m.predict(X)
                assert cython_mlp._gemv_pool()["jobs"] == jobs + 1
            finally:
                cython_mlp._gemv_pool(leave_to_worker=before["leave_to_worker"])
    finally:
        cython_mlp._use_blas_pool(pooled)
    np.testing.assert_array_equal(got, want)


@needs_loops
@pytest.mark.parametrize("sizes", [(784, 256, 10), (10, 40, 3)])   # x W checked; x checked
@pytest.mark.parametrize("row", [0, 11, 12, 100, 199])               # the first part; the second
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_non_finite_x_in_either_part_is_refused(sizes, row, bad, threads):
    m = _model(sizes)
    X = np.random.default_rng(4).standard_normal((200, sizes[0])).astype(np.float32)
    with _pool_threads(threads):
        m.predict(X)   # (the worker started)
        X[row, sizes[0] // 2] = bad
        with pytest.raises(ValueError, match=rf"NaN or inf \(first at row {row}, "):
            m.predict(X)


@needs_loops
def test_a_huge_but_finite_x_is_predicted_not_refused():
    # x W overflows to inf in the first layer (checked through x W): x is looked at
    # itself, and it is finite, so the outputs are what the maths gives
    m = _model((4, 2, 3), hidden="tanh")
    X = np.full((40, 4), 3e38, dtype=np.float32)
    out = m.predict(X)
    assert out.shape == (40, 3)
    np.testing.assert_array_equal(out, _blas(m, X))


@needs_loops
def test_a_theta_off_the_cache_line_gives_the_same_outputs():
    m = _model((784, 256, 128, 10))
    assert m._theta.ctypes.data % THETA_ALIGN == 0   # the model's own starts on one
    X = np.random.default_rng(5).standard_normal((100, 784)).astype(np.float32)
    want = m.predict(X)
    engine = m._engine.engine
    for shift in (1, 4, 15):   # floats: 4, 16 and 60 bytes off
        raw = np.zeros(m._theta.size + 32, dtype=np.float32)
        base = (-raw.ctypes.data // 4) % 16
        moved = raw[base + shift:base + shift + m._theta.size]
        moved[...] = m._theta
        assert moved.ctypes.data % THETA_ALIGN == 4 * shift
        np.testing.assert_array_equal(engine.predict(moved, X), want)


def test_aligned_zeros():
    for n in (1, 7, 1000):
        for dtype in (np.float32, np.float64):
            a = aligned_zeros(n, dtype)
            assert a.shape == (n,) and a.dtype == dtype and not a.any()
            assert aligned_empty(n, dtype).ctypes.data % THETA_ALIGN == 0
            assert a.ctypes.data % THETA_ALIGN == 0 and a.flags.c_contiguous
            assert a.flags.writeable and a.flags.aligned


def test_a_model_keeps_its_theta_on_a_cache_line_when_built_or_restored(tmp_path):
    m = _model((30, 17, 5))
    assert m._theta.ctypes.data % THETA_ALIGN == 0
    path = tmp_path / "m.fastmlp"
    m.save(path)
    back = fm.load(path)
    assert back._theta.ctypes.data % THETA_ALIGN == 0
    X = np.random.default_rng(6).standard_normal((50, 30)).astype(np.float32)
    np.testing.assert_array_equal(back.predict(X), m.predict(X))
    for restored in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m), m.to(backend="numpy")):
        assert restored._theta.ctypes.data % THETA_ALIGN == 0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float64_and_small_batches_and_big_weights_keep_their_paths(dtype):
    # float64 (BLAS), a chunk the GEMV loops take (rules.PREDICT_SMALL_ROWS rows), a W
    # over 1 MiB for fewer than 48 rows (BLAS): the same as with the loops off, bit for
    # bit. From 48 rows a float32 W over 1 MiB takes the packed loops of _sgemm_blas.h
    # (as a net's smaller layers beside a big one take its direct loops:
    # test_sgemm_blas.py): bits of their own, within rounding of BLAS's.
    cases = [((30, 17, 5), rules.PREDICT_SMALL_ROWS), ((600, 600), 47)]
    for sizes, rows in cases:
        m = _model(sizes, dtype=dtype)
        X = np.random.default_rng(7).standard_normal((rows, sizes[0])).astype(dtype)
        np.testing.assert_array_equal(m.predict(X), _blas(m, X))
    m = _model((600, 600), dtype=dtype)
    X = np.random.default_rng(7).standard_normal((100, 600)).astype(dtype)
    packed = dtype == "float32" and cython_mlp._use_sgemm() == 1
    was = fm.set_gemm_loops("always")   # "auto" would keep BLAS where it runs > 2 threads
    try:
        assert np.array_equal(m.predict(X), _blas(m, X)) != packed
        np.testing.assert_allclose(m.predict(X), _blas(m, X), rtol=1e-5, atol=1e-5)
    finally:
        fm.set_gemm_loops(was)


@needs_loops
@pytest.mark.parametrize("sizes", [(784, 256, 128, 10), (33, 17, 47, 1), (5, 16, 31, 3)])
def test_the_numba_backend_runs_the_same_code_to_the_bit(sizes):
    # numba's predict hands each float32 chunk of more than rules.PREDICT_SMALL_ROWS
    # rows to the extension's forward_f32 (kernels/numba_gemv.forward): the same bits as
    # the Cython backend's, activations included; fewer rows run its own path
    pytest.importorskip("numba")
    output = "linear" if sizes[-1] == 1 else "softmax"
    loss = "mse" if sizes[-1] == 1 else "cross_entropy"
    c = _model(sizes, hidden="tanh", output=output, loss=loss)
    n = c.to(backend="numba")
    X = np.random.default_rng(8).standard_normal((300, sizes[0])).astype(np.float32)
    np.testing.assert_array_equal(n.predict(X), c.predict(X))
    small = rules.PREDICT_SMALL_ROWS
    for rows in (small + 1, 24):
        np.testing.assert_array_equal(n.predict(X[:rows]), c.predict(X[:rows]))
    np.testing.assert_allclose(n.predict(X[:small]), c.predict(X[:small]), rtol=1e-5, atol=1e-6)
    X[250, 0] = np.nan   # in the worker's part
    with pytest.raises(ValueError, match=r"NaN or inf \(first at row 250, "):
        n.predict(X)


def test_numba_without_the_loops_runs_its_own_path():
    # a build without them (here: the AVX2 build) says -1 and numba runs BLAS: the
    # numbers of the reference all the same
    import os
    import subprocess
    import sys
    code = ("import numpy as np, fastmlp as fm\n"
            "from fastmlp.kernels import cython_mlp\n"
            "m = fm.Model([fm.Dense(64, 'relu'), fm.Dense(3, 'softmax')], input_dim=20,"
            " backend='numba', seed=1)\n"
            "r = m.to(backend='numpy')\n"
            "X = np.random.default_rng(0).standard_normal((100, 20)).astype(np.float32)\n"
            "np.testing.assert_allclose(m.predict(X), r.predict(X), rtol=1e-5, atol=1e-6)\n"
            "print(cython_mlp.ISA, cython_mlp._use_sgemm())\n")
    env = dict(os.environ, FASTMLP_CYTHON_ISA="avx2")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=600)
    if res.returncode != 0 and "cannot run" in res.stderr:
        pytest.skip("this processor does not run the AVX2 build")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["avx2", "0"]


@needs_loops
@pytest.mark.parametrize("backend", ["cython", "numba"])
@pytest.mark.parametrize("hidden", [(8, 16, 256), (8, 8, 8, 300), (256, 128, 64), (300, 8, 300, 8)])
def test_deep_nets_parts_never_overwrite_each_other(backend, hidden):
    # hostile round 39: layer i + 2 writes over layer i's outputs in p0 or p1; with each
    # layer's rows at its own width, one part's writes landed on the other part's rows
    # (wrong outputs in 11 of 20 predicts of 8-16-256). Each part now has rows of the
    # widest layer's width: compared with one thread and with the float64 maths, many
    # times, the worker both free and forced to take its part
    if backend == "numba":
        pytest.importorskip("numba")
    m = _model((500, *hidden, 3), hidden="tanh", output="linear", loss="mse")
    m = m if backend == "cython" else m.to(backend="numba")
    X = np.random.default_rng(9).standard_normal((2000, 500)).astype(np.float32)
    with _pool_threads(1):
        want = m.predict(X)
    np.testing.assert_allclose(want, _numpy_forward(m, X), rtol=1e-4, atol=1e-5)
    with _pool_threads(2):
        for leave in (0, 1):
            before = cython_mlp._gemv_pool(leave_to_worker=leave)
            try:
                for _ in range(15):
                    np.testing.assert_array_equal(m.predict(X), want)
            finally:
                cython_mlp._gemv_pool(leave_to_worker=before["leave_to_worker"])
