"""The second part of a split float32 batch on the BLAS's own worker (kernels/_blas_pool.h).

Where the kernels' BLAS is an OpenBLAS on pthreads (NumPy's wheels), predict's float32
batches and the products on the AVX-512 GEMM loops hand their second part to that
OpenBLAS's worker thread (gotoblas_pthread), not to the extension's own worker: one
thread pool. Checked, on both compiled backends:
- fastmlp.blas.worker_pool names the kernels' BLAS (its thread count is threadpoolctl's);
- a predict and a train step give their second part to a BLAS worker, none to the
  extension's, with the bits of one thread and of the extension's worker; a BLAS of 3
  or 4 threads takes that many parts, with the same bits;
- a BLAS limited to one thread (threadpoolctl, fm.set_num_threads(1)) keeps every part
  on the caller, the same bits;
- threads predicting and training while another runs NumPy GEMMs on the same pool: the
  bits of one thread, no hang; a forked child and FASTMLP_BLAS=scipy; the caller's
  rounding mode, which the worker takes on for the part and gives back after;
- set_gemm_loops("auto"), the default: train_on_batch on the loops where this pool is
  known and the BLAS runs 2 threads (its bits are the loops', not BLAS's); on BLAS
  where it runs more.
Anything that could hang runs in a subprocess or a forked child with a timeout.
"""
import ctypes
import os
import sys
import threading

import numpy as np
import pytest
import threadpoolctl

import fastmlp as fm
from fastmlp.blas import kernel_blas, worker_pool

from helpers import pool_threads, run_in_threads, run_python, wait_for_child

kernels = pytest.importorskip("fastmlp.kernels.cython_mlp")

needs_worker_pool = pytest.mark.skipif(
    worker_pool() is None or kernels._use_sgemm() != 1,
    reason="the kernels' BLAS is not an OpenBLAS on pthreads, or this build has no "
           "_sgemm.h loops (AVX-512 only)")
pytestmark = needs_worker_pool

BACKENDS = [b for b in ("cython", "numba") if b in fm.available_backends()]


@pytest.fixture(autouse=True)
def _two_threads():
    """2 threads in the kernels' BLAS and the extension's limit, as before afterwards."""
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"), pool_threads(kernels, 2):
        yield


def _net(backend, seed=0):
    return fm.Model([fm.Dense(256, activation="relu"), fm.Dense(128, activation="tanh"),
                     fm.Dense(10, activation="softmax")], input_dim=784, backend=backend,
                    dtype="float32", seed=seed, optimizer=fm.SGD(lr=0.05))


def _data(rows, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, 784)).astype(np.float32),
            np.eye(10, dtype=np.float32)[rng.integers(0, 10, rows)])


def _stepped(backend, X, T, steps=3):
    m = _net(backend)
    for _ in range(steps):
        m.train_on_batch(X, T)
    return np.concatenate([w.ravel() for w in m.get_weights()]).tobytes()


def _jobs():
    return kernels._blas_pool()["jobs"], kernels._gemv_pool()["jobs"]


def test_worker_pool_names_the_kernels_blas():
    pthread, threads, workers = worker_pool()
    assert pthread and threads and workers
    count = ctypes.CFUNCTYPE(ctypes.c_int)(threads)()
    info = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"
            and os.path.realpath(i["filepath"]) == kernel_blas().filepath]
    assert len(info) == 1 and count == info[0]["num_threads"] == 2
    assert ctypes.c_int.from_address(workers).value >= 2   # a worker exists
    assert kernels._blas_pool()["on"]
    assert kernels._use_blas_pool(False) is True   # the setting before
    try:
        assert not kernels._blas_pool()["on"]
    finally:
        assert kernels._use_blas_pool(True) is False
    assert kernels._blas_pool()["on"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_predict_and_a_step_hand_their_second_part_to_a_blas_worker(backend):
    X, T = _data(300)
    m = _net(backend)
    m.predict(X)
    blas_jobs, own_jobs = _jobs()
    m.predict(X)
    assert _jobs() == (blas_jobs + 1, own_jobs)   # one chunk, one part on the BLAS worker
    m.train_on_batch(X[:64], T[:64])   # W2's products on the loops, each split
    assert _jobs()[0] > blas_jobs + 1 and _jobs()[1] == own_jobs


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_product_under_2_to_the_20_multiply_adds_stays_on_the_calling_thread(backend):
    """_sgemm_blas.h's FM_GEMM_SPLIT_MACS: a split waits for the other core, and where
    that core was busy a scikit-learn fit of digits (200 x 64 x 64 products) took 30 ms
    split against 16 on one thread, with no gain from splitting otherwise."""
    m = fm.Model([fm.Dense(64, activation="relu"), fm.Dense(10, activation="softmax")],
                 input_dim=64, backend=backend, dtype="float32", seed=0,
                 optimizer=fm.SGD(lr=0.05))
    rng = np.random.default_rng(2)
    X = rng.standard_normal((256, 64)).astype(np.float32)
    T = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 256)]
    m.train_on_batch(X[:200], T[:200])
    before = _jobs()
    m.train_on_batch(X[:200], T[:200])   # 200 x 64 x 64 = 819,200 multiply-adds at most
    assert _jobs() == before
    m.train_on_batch(X, T)               # 256 x 64 x 64 = 2**20: x W and the dW GEMM split
    assert _jobs()[0] >= before[0] + 2 and _jobs()[1] == before[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_blas_worker_the_extensions_worker_and_one_thread_give_one_set_of_bits(backend):
    X, T = _data(300)
    m = _net(backend, seed=4)
    got = {}
    was = fm.set_gemm_loops("always")   # ("auto" puts a step on BLAS without this pool)
    pooled = kernels._use_blas_pool()
    try:
        for where in ("blas", "own", "one"):
            kernels._use_blas_pool(where == "blas")
            with pool_threads(kernels, 1 if where == "one" else 2):
                got[where] = (m.predict(X).tobytes(), _stepped(backend, X[:64], T[:64]))
    finally:
        kernels._use_blas_pool(pooled)
        fm.set_gemm_loops(was)
    assert got["blas"] == got["own"] == got["one"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("threads", [3, 4])
def test_a_blas_of_more_threads_takes_more_parts_with_the_same_bits(backend, threads):
    """A BLAS of 3 or 4 threads (on this 2-core machine: the bits, not the speed): a
    300-row predict in that many parts (each of at least 12 rows), all but the first on
    its workers, and a W2 step's products likewise, with one thread's bits."""
    X, T = _data(300)
    m = _net(backend, seed=6)
    was = fm.set_gemm_loops("always")
    try:
        with pool_threads(kernels, 1):
            want = (m.predict(X).tobytes(), _stepped(backend, X[:64], T[:64]))
        with threadpoolctl.threadpool_limits(limits=threads, user_api="blas"):
            assert kernels._blas_pool()["on"]
            jobs = _jobs()
            got_predict = m.predict(X).tobytes()
            assert _jobs() == (jobs[0] + threads - 1, jobs[1])
            got = (got_predict, _stepped(backend, X[:64], T[:64]))
            assert _jobs()[0] > jobs[0] + threads - 1
    finally:
        fm.set_gemm_loops(was)
    assert got == want


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["threadpoolctl", "set_num_threads"])
def test_a_blas_limited_to_one_thread_keeps_every_part_on_the_caller(backend, how):
    X, T = _data(300)
    m = _net(backend, seed=5)
    want = (m.predict(X).tobytes(), _stepped(backend, X[:64], T[:64]))
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        if how == "set_num_threads":
            fm.set_num_threads(1)
        try:
            assert not kernels._blas_pool()["on"]
            before = _jobs()
            got = (m.predict(X).tobytes(), _stepped(backend, X[:64], T[:64]))
            assert _jobs() == before   # no part on any worker
        finally:
            fm.set_num_threads(2)
    assert got == want


@pytest.mark.parametrize("toggle", [False, True])
def test_threads_predict_and_train_while_another_runs_numpy_gemms(toggle):
    """4 threads on 4 models (predict 300 rows, train 64) and one of np.matmul, all on the
    one OpenBLAS pool, with a single worker: every result the bits of the same call alone;
    with ``toggle``, the matmul thread also switches the BLAS and the extension between 1
    and 2 threads after every product (a split then runs on one thread or two)."""
    X, T = _data(300)
    models = [_net(b, seed=s) for s in (0, 1) for b in BACKENDS]
    want = [(m.predict(X).tobytes(), _stepped(m.backend, X[:64], T[:64])) for m in models]
    stop = threading.Event()
    P = np.random.default_rng(2).standard_normal((784, 784)).astype(np.float32)

    def gemms():
        Z = np.empty((300, 784), np.float32)
        n = 2
        while not stop.is_set():
            np.matmul(X, P, out=Z)
            if toggle:
                n = 3 - n
                threadpoolctl.threadpool_limits(limits=n, user_api="blas")
                kernels.gemv_threads(n)
        return True

    done = []

    def worker(i):
        def run():
            try:
                return all((models[i].predict(X).tobytes(),
                            _stepped(models[i].backend, X[:64], T[:64])) == want[i]
                           for _ in range(5))
            finally:
                done.append(i)
                if len(done) == len(models):
                    stop.set()
        return run

    results = run_in_threads([gemms] + [worker(i) for i in range(len(models))])
    assert all(results)


def test_a_forked_child_hands_its_parts_to_its_own_blas_worker():
    X, _ = _data(300)
    m = _net("cython")
    want = m.predict(X).tobytes()
    for _ in range(20):   # the parent's worker spinning at the fork
        m.predict(X)
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            jobs = _jobs()[0]
            same = all(m.predict(X).tobytes() == want for _ in range(3))
            code = 0 if same and _jobs()[0] == jobs + 3 else 1
        finally:
            os._exit(code)
    assert wait_for_child(pid, 30) == 0
    assert m.predict(X).tobytes() == want


def test_fastmlp_blas_scipy_uses_scipys_pool_or_none():
    res = run_python("""
        import numpy as np, fastmlp as fm
        from fastmlp.blas import kernel_blas, worker_pool
        from fastmlp.kernels import cython_mlp as k
        X = np.random.default_rng(1).standard_normal((300, 784)).astype(np.float32)
        m = fm.Model([fm.Dense(64, activation="relu"), fm.Dense(10, activation="softmax")],
                     input_dim=784, backend="cython", dtype="float32", seed=0)
        two = m.predict(X).tobytes()
        k.gemv_threads(1)
        one = m.predict(X).tobytes()
        print(kernel_blas().source, worker_pool() is not None, two == one)
    """, env={"FASTMLP_BLAS": "scipy"})
    assert res.returncode == 0, res.stderr[-3000:]
    source, pooled, same = res.stdout.split()
    assert source == "scipy" and same == "True"


@pytest.mark.skipif(not (sys.platform.startswith("linux") and os.uname().machine == "x86_64"),
                    reason="the FE_ values of x86-64 glibc")
def test_a_caller_rounding_upward_gets_one_threads_bits_and_the_worker_its_own_mode_back():
    res = run_python("""
        import ctypes, sys
        import numpy as np, fastmlp as fm
        from fastmlp.kernels import cython_mlp as k
        libm = ctypes.CDLL("libm.so.6")
        FE_TONEAREST, FE_UPWARD = 0x000, 0x800
        rng = np.random.default_rng(1)
        X = rng.standard_normal((300, 784)).astype(np.float32)
        A, B = rng.standard_normal((512, 512)), rng.standard_normal((512, 512))
        gemm = (A @ B).tobytes()   # NumPy's GEMM on both threads, round-to-nearest
        bad = []
        for backend in ("cython", "numba"):
            m = fm.Model([fm.Dense(256, activation="relu"), fm.Dense(10, activation="softmax")],
                         input_dim=784, backend=backend, dtype="float32", seed=0)
            m.predict(X)   # the BLAS worker warm, in round-to-nearest
            assert libm.fesetround(FE_UPWARD) == 0
            try:
                jobs = k._blas_pool()["jobs"]
                got = m.predict(X).tobytes()
                if k._blas_pool()["jobs"] != jobs + 1:
                    bad.append("no part on the BLAS worker")
                k.gemv_threads(1)
                want = m.predict(X).tobytes()
                k.gemv_threads(2)
            finally:
                libm.fesetround(FE_TONEAREST)
            if got != want:
                bad.append(f"{backend}: other bits on 2 threads")
            if (A @ B).tobytes() != gemm:
                bad.append(f"{backend}: NumPy's GEMM after it rounds otherwise")
        print(bad)
        sys.exit(1 if bad else 0)
    """)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]


@pytest.mark.parametrize("backend", BACKENDS)
def test_auto_keeps_a_lone_step_on_blas_where_the_blas_runs_more_threads(backend):
    """Where the BLAS runs more than 2 threads (not timed against the loops), "auto" is
    "fit": a lone step on BLAS, as with "never"."""
    X, T = _data(64)
    with threadpoolctl.threadpool_limits(limits=3, user_api="blas"):
        auto = _stepped(backend, X, T)
        fm.set_gemm_loops("never")
        try:
            blas = _stepped(backend, X, T)
        finally:
            fm.set_gemm_loops("auto")
    assert auto == blas


@pytest.mark.parametrize("backend", BACKENDS)
def test_auto_the_default_puts_train_on_batch_on_the_loops(backend):
    X, T = _data(64)
    assert fm.set_gemm_loops("auto") == "auto"   # the default, as no test left it otherwise
    auto = _stepped(backend, X, T)
    fm.set_gemm_loops("never")
    try:
        blas = _stepped(backend, X, T)
        fm.set_gemm_loops("always")
        always = _stepped(backend, X, T)
    finally:
        fm.set_gemm_loops("auto")
    assert auto == always and auto != blas
