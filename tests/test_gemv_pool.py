"""The small-batch GEMV's second thread (kernels/_gemv_pool.h).

x W for a W of at least 256 KB (the cut-off; a test hook moves it) is summed in two
parts over n_in, W's first rows then the rest, added at the end: the calling thread and
one worker thread when the thread limit allows 2, else one after the other. Checked
here, through the extension's test hooks (cython_mlp._xw runs the GEMV alone on given
arrays; cython_mlp._gemv_pool reads and sets the pool) and through both backends'
predicts: the same bits on 1 thread, on 2, and with every second part computed by the
worker (leave_to_worker), for both dtypes, every vector copy this processor runs, rows
1..8 and widths around the vector widths, within the error bound of a sum of n_in
products; fm.set_num_threads(1) keeps the worker out; 4 Python threads at once; a
forked child, which starts a worker of its own; the worker starts with a burst of
calls only, sleeps after its spin, and the interpreter exits with it alive; the default
limit follows the CPUs and the environment.
"""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import fastmlp as fm

from helpers import gemv_copy, run_in_threads, run_python, wait_for_child
from tolerances import TOLERANCES

kernels = pytest.importorskip("fastmlp.kernels.cython_mlp")

# state -1: built without the worker thread (no pthreads, or FM_GEMV_NO_POOL)
needs_pool = pytest.mark.skipif(kernels._gemv_pool()["state"] < 0,
                                reason="the extension has no GEMV worker thread")
DTYPES = ("float32", "float64")
# Widths around every vector width (4, 8, 16 floats; 2, 4, 8 doubles) and their tiles,
# and a wide one that fills whole tiles and leaves a tail.
WIDTHS = (1, 3, 7, 8, 9, 15, 16, 17, 33, 64, 300)
# n_in 2 cuts the sum at 1 (a part of one row each), odd ones leave the parts unequal.
INPUTS = (2, 7, 130)


@pytest.fixture
def pool():
    """The extension, its thread limit and pool settings restored after the test."""
    threads = kernels.gemv_threads()
    before = kernels._gemv_pool()
    yield kernels
    kernels._gemv_pool(before["min_bytes"], before["spin_ns"], before["leave_to_worker"])
    kernels.gemv_threads(threads)


@pytest.fixture(params=[16, 32, 64])
def copy(request, pool):
    """Each vector copy of the GEMV loops this processor runs, then the widest again."""
    with gemv_copy(pool, request.param) as width:
        yield width


def _operands(rows, n_in, n_out, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, n_in)).astype(dtype),
            rng.standard_normal((n_in, n_out)).astype(dtype))


def _three_ways(x, W):
    """(one thread, two threads, the worker computing the second part) of x W; checks
    that the worker computed it exactly when the sum is cut."""
    kernels.gemv_threads(1)
    alone = kernels._xw(x, W)
    kernels.gemv_threads(2)
    shared = kernels._xw(x, W)
    kernels._gemv_pool(leave_to_worker=1)
    jobs = kernels._gemv_pool()["jobs"]
    try:
        worker = kernels._xw(x, W)
    finally:
        after = kernels._gemv_pool(leave_to_worker=0)["jobs"]
    cut = x.shape[1] >= 2 and W.nbytes >= kernels._gemv_pool()["min_bytes"]
    if kernels._gemv_pool()["state"] >= 0:
        assert after - jobs == cut, "the worker computed the second part iff the sum is cut"
    return alone, shared, worker


def _assert_exact_enough(z, x, W):
    """|z - x W| within the bound of a sum of n_in rounded products (n_in eps |x| |W|,
    doubled for fused or not), NaN nowhere: a dropped column or row of W fails."""
    exact = x.astype(np.float64) @ W.astype(np.float64)
    bound = 2 * x.shape[1] * np.finfo(x.dtype).eps * (np.abs(x).astype(np.float64)
                                                      @ np.abs(W).astype(np.float64))
    assert not np.isnan(z).any()
    assert (np.abs(z - exact) <= bound + np.finfo(x.dtype).tiny).all()


@needs_pool
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_in", INPUTS)
def test_every_copy_gives_one_threads_bits_on_two(copy, dtype, n_in):
    kernels._gemv_pool(min_bytes=0)   # cut every sum, however small
    for rows in range(1, 9):
        for n_out in WIDTHS:
            x, W = _operands(rows, n_in, n_out, dtype, seed=rows * n_out)
            alone, shared, worker = _three_ways(x, W)
            where = f"{copy}-byte copy, {rows} rows, {n_in}x{n_out}"
            assert shared.tobytes() == alone.tobytes(), where
            assert worker.tobytes() == alone.tobytes(), where
            _assert_exact_enough(alone, x, W)


@needs_pool
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_cut_off_is_the_size_of_w(pool, dtype):
    """At the default cut-off a W of 256 KB is cut and one a row narrower is not."""
    size = np.dtype(dtype).itemsize
    limit = pool._gemv_pool()["min_bytes"]
    assert limit == 256 * 1024
    n_out = limit // size // 128
    for n_in in (128, 127):
        x, W = _operands(3, n_in, n_out, dtype)
        alone, shared, worker = _three_ways(x, W)   # checks who computed the part
        assert shared.tobytes() == alone.tobytes() == worker.tobytes()
        _assert_exact_enough(alone, x, W)


@needs_pool
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_big_layer_of_the_benchmark_net_is_shared(pool, dtype):
    x, W = _operands(1, 784, 256, dtype)
    alone, shared, worker = _three_ways(x, W)
    assert shared.tobytes() == alone.tobytes() == worker.tobytes()
    _assert_exact_enough(alone, x, W)


def _net(backend, dtype, output="softmax", seed=0):
    """784-256-128-10 relu/``output``: its first layer's W (784 KB in float32) is cut."""
    return fm.Model([fm.Dense(256, activation="relu"), fm.Dense(128, activation="relu"),
                     fm.Dense(10, activation=output)], input_dim=784, backend=backend,
                    dtype=dtype, seed=seed)


def _x(rows, dtype, seed=1):
    return np.random.default_rng(seed).standard_normal((rows, 784)).astype(dtype)


@needs_pool
@pytest.mark.parametrize("dtype", DTYPES)
def test_both_backends_predict_one_threads_bits_through_the_worker(pool, dtype):
    """Through the worker: one thread's bits, and the NumPy reference's outputs."""
    backends = [b for b in ("cython", "numba") if b in fm.available_backends()]
    for backend in backends:
        model, ref = _net(backend, dtype), _net("numpy", dtype)
        ref.set_weights(model.get_weights())
        for rows in (1, 2, 5, 8):
            X = _x(rows, dtype, seed=rows)
            pool.gemv_threads(1)
            want = model.predict(X)
            pool.gemv_threads(2)
            pool._gemv_pool(leave_to_worker=1)
            jobs = pool._gemv_pool()["jobs"]
            got = model.predict(X)
            assert pool._gemv_pool(leave_to_worker=0)["jobs"] > jobs, \
                f"{backend} did not call the pooled GEMV"
            assert got.tobytes() == want.tobytes(), f"{backend}, {rows} rows"
            np.testing.assert_allclose(got, ref.predict(X), **TOLERANCES[dtype],
                                       err_msg=f"{backend} against the reference, {rows} rows")
    if len(backends) == 2:   # and agree (relu and linear: the same code in both)
        X = _x(3, dtype)
        np.testing.assert_array_equal(_net("numba", dtype, "linear").predict(X),
                                      _net("cython", dtype, "linear").predict(X))


@needs_pool
def test_one_thread_keeps_the_worker_out(pool):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    numba = pytest.importorskip("numba")
    model = _net("cython", "float32")
    X = _x(1, "float32")
    blas_before = threadpoolctl.threadpool_info()
    numba_before = numba.get_num_threads()
    try:
        fm.set_num_threads(1)
        assert pool.gemv_threads() == 1
        pool._gemv_pool(leave_to_worker=1)   # would wait for the worker: must not be asked
        jobs = pool._gemv_pool()["jobs"]
        want = model.predict(X)
        for _ in range(50):
            assert model.predict(X).tobytes() == want.tobytes()
        assert pool._gemv_pool()["jobs"] == jobs
        fm.set_num_threads(2)
        assert pool.gemv_threads() == 2
        assert model.predict(X).tobytes() == want.tobytes()
        assert pool._gemv_pool()["jobs"] == jobs + 1
    finally:
        for info in blas_before:
            if info.get("user_api") == "blas":
                threadpoolctl.threadpool_limits(limits=info["num_threads"], user_api="blas")
        numba.set_num_threads(numba_before)


def test_the_thread_limit_is_checked_and_capped(pool):
    with pytest.raises(ValueError, match="must be >= 0"):
        pool.gemv_threads(-1)
    assert pool.gemv_threads(1) == 1
    assert pool.gemv_threads(0) == 1
    assert pool.gemv_threads(8) == (2 if pool._gemv_pool()["state"] >= 0 else 1)


@needs_pool
@pytest.mark.parametrize("leave", [0, 1])
def test_threads_predicting_at_once_give_one_threads_bits(pool, leave):
    """One caller owns the pool at a time; the others run alone, with the same bits."""
    backends = [b for b in ("cython", "numba") if b in fm.available_backends()]
    pool.gemv_threads(2)
    pool._gemv_pool(leave_to_worker=leave)
    for backend in backends:
        for dtype in DTYPES:
            model = _net(backend, dtype)
            data = [_x(n, dtype, seed=n) for n in (1, 2, 7, 8)]
            pool.gemv_threads(1)
            want = [model.predict(X).tobytes() for X in data]
            pool.gemv_threads(2)
            got = run_in_threads([lambda X=X: [model.predict(X).tobytes() for _ in range(40)]
                                  for X in data])
            for w, runs, X in zip(want, got, data):
                assert all(r == w for r in runs), f"{backend} {dtype}, {len(X)} rows"


@needs_pool
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_forked_child_predicts_with_a_worker_of_its_own(pool, dtype):
    model = _net("cython", dtype)
    X = _x(4, dtype)
    pool.gemv_threads(1)
    want = model.predict(X).tobytes()
    pool.gemv_threads(2)
    pool._gemv_pool(leave_to_worker=1)   # the child must start a worker and wait for it
    assert model.predict(X).tobytes() == want
    assert pool._gemv_pool()["state"] == 1 and pool._gemv_pool()["jobs"] > 0
    pid = os.fork()
    if pid == 0:   # the child: no pytest here, only an exit code
        code = 3
        try:
            fresh = kernels._gemv_pool()   # the atfork handler reset the pool
            same = all(model.predict(X).tobytes() == want for _ in range(5))
            after = kernels._gemv_pool()
            code = 0 if (same and fresh["state"] == 0 and fresh["jobs"] == 0
                         and after["state"] == 1 and after["jobs"] >= 5) else 1
        finally:
            os._exit(code)
    assert wait_for_child(pid, 120) == 0
    assert model.predict(X).tobytes() == want   # and the parent's worker still works


@needs_pool
def test_the_worker_sleeps_after_its_spin(pool):
    x, W = _operands(1, 784, 256, "float32")
    pool._gemv_pool(leave_to_worker=1)
    pool.gemv_threads(2)
    pool._xw(x, W)
    naps = pool._gemv_pool()["naps"]
    pool._xw(x, W)   # then nothing: within its spin (50 us) and a few ms, it sleeps
    deadline = time.monotonic() + 10
    while pool._gemv_pool()["naps"] == naps and time.monotonic() < deadline:
        time.sleep(0.001)
    assert pool._gemv_pool()["naps"] > naps


@needs_pool
def test_the_interpreter_exits_with_the_worker_alive():
    res = run_python("""
        import numpy as np
        from fastmlp.kernels import cython_mlp as k
        x, W = np.ones((1, 784), np.float32), np.ones((784, 256), np.float32)
        k.gemv_threads(2)
        k._gemv_pool(leave_to_worker=1)
        assert (k._xw(x, W) == 784).all() and k._gemv_pool()["jobs"] == 1
        print("done")   # and exit while the worker spins
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "done"


@needs_pool
def test_the_worker_starts_with_a_burst_of_calls_only():
    res = run_python("""
        import time
        import numpy as np
        from fastmlp.kernels import cython_mlp as k
        x, W = np.ones((1, 784), np.float32), np.ones((784, 256), np.float32)
        k.gemv_threads(2)
        for _ in range(3):
            assert (k._xw(x, W) == 784).all()
            time.sleep(0.01)   # calls 10 ms apart: no thread started
        alone = k._gemv_pool()["state"]
        for _ in range(100):
            assert (k._xw(x, W) == 784).all()   # back to back: a worker
        print(alone, k._gemv_pool()["state"])
    """)
    assert res.stdout.split() == ["0", "1"], res.stderr


@needs_pool
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sched_getaffinity: Linux")
def test_the_default_limit_follows_the_cpus_and_the_environment():
    read = "from fastmlp.kernels import cython_mlp as k; print(k.gemv_threads())"
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    res = subprocess.run([sys.executable, "-c", read], capture_output=True, text=True,
                         timeout=120, env=clean)
    assert res.stdout.strip() == ("2" if len(os.sched_getaffinity(0)) >= 2 else "1"), res.stderr
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        res = run_python(read, env={name: "1"})
        assert res.stdout.strip() == "1", res.stderr
