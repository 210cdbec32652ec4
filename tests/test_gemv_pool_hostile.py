"""Hostile tests of the small-batch GEMV's worker thread (kernels/_gemv_pool.h).

What tests/test_gemv_pool.py checks on a quiet process, tried here the hard way, on
both compiled backends and both dtypes, the 784-256-128-10 net (its first layer's W is
cut and shared with the worker; in float64 its second too) and 1..8 rows:
- many Python threads predicting at once, on one model and on their own, while
  another toggles fm.set_num_threads(1) / (2): the bits of one thread;
- the claim protocol raced with tiny cut sums (every sum cut, jobs of a few ns) from 8
  threads, with the worker spinning, and sleeping after every job;
- os.fork while other threads predict and while the worker is mid-job (the child
  predicts with a worker of its own), multiprocessing with 'fork' and 'spawn';
- SIGINT (KeyboardInterrupt) in a tight predict loop and a storm of timer signals;
  SIGTERM and interpreter exit with the worker spinning, sleeping or mid-job;
- a busy machine (a busy loop per core) and a caller pinned to one CPU, whose worker
  inherits the pin: no hang, the right bits (their speed is not asserted);
- odd arrays reaching the small predict (views, read-only, unaligned, the other
  dtype, NaN/inf in the worker's half, huge values); the pool's buffer growing with
  rows and widths; no RSS growth over 1e5 predicts; pthread_create failing;
- the caller's floating-point mode (rounding, flush-to-zero, set on the caller or on
  the thread that created the worker): the worker sums its half in its owner's mode
  (it computed it in its creator's until it took on the owner's: found here).
Anything that could hang or crash the process runs in a subprocess with a timeout.
"""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import fastmlp as fm

from helpers import ROOT, run_in_threads, run_python, wait_for_child

kernels = pytest.importorskip("fastmlp.kernels.cython_mlp")

needs_pool = pytest.mark.skipif(kernels._gemv_pool()["state"] < 0,
                                reason="the extension has no GEMV worker thread")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="Linux: fork, /proc, sched_setaffinity")
pytestmark = [needs_pool, linux_only]

BACKENDS = [b for b in ("cython", "numba") if b in fm.available_backends()]
DTYPES = ("float32", "float64")


@pytest.fixture
def pool():
    """The extension; its thread limit, pool settings and every thread limit
    fm.set_num_threads touches restored after the test."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    threads = kernels.gemv_threads()
    before = kernels._gemv_pool()
    blas = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    try:
        import numba
        numba_threads = numba.get_num_threads()
    except ImportError:
        numba = None
    yield kernels
    kernels._gemv_pool(before["min_bytes"], before["spin_ns"], before["leave_to_worker"])
    kernels.gemv_threads(threads)
    for info in blas:
        threadpoolctl.threadpool_limits(limits=info["num_threads"], user_api="blas")
    if numba is not None:
        numba.set_num_threads(numba_threads)


def _net(backend, dtype, seed=0, act="relu", output="softmax"):
    """784-256-128-10: its first layer's W (784 KB in float32) is cut."""
    return fm.Model([fm.Dense(256, activation=act), fm.Dense(128, activation=act),
                     fm.Dense(10, activation=output)], input_dim=784, backend=backend,
                    dtype=dtype, seed=seed)


def _x(rows, dtype, seed=1):
    return np.random.default_rng(seed).standard_normal((rows, 784)).astype(dtype)


def _alone(model, X):
    """model.predict(X)'s bytes on one thread (no worker)."""
    threads = kernels.gemv_threads()
    kernels.gemv_threads(1)
    try:
        return model.predict(X).tobytes()
    finally:
        kernels.gemv_threads(threads)


def _python(*parts, timeout=60, env=None):
    """helpers.run_python, with this module's shorter timeout by default."""
    return run_python(*parts, timeout=timeout, env=env)


# A prelude for the subprocess scripts: the net, its inputs, one thread's bits.
PRELUDE = """
    import os, sys, time, threading, signal
    import numpy as np
    import fastmlp as fm
    from fastmlp.kernels import cython_mlp as k

    def net(backend, dtype, seed=0):
        return fm.Model([fm.Dense(256, activation="relu"), fm.Dense(128, activation="relu"),
                         fm.Dense(10, activation="softmax")], input_dim=784, backend=backend,
                        dtype=dtype, seed=seed)

    def x(rows, dtype, seed=1):
        return np.random.default_rng(seed).standard_normal((rows, 784)).astype(dtype)

    def alone(model, X):
        k.gemv_threads(1)
        try:
            return model.predict(X).tobytes()
        finally:
            k.gemv_threads(2)

    def burst(model, X, n=200):   # back-to-back calls: the worker starts and spins
        for _ in range(n):
            model.predict(X)
"""


# -- many threads ------------------------------------------------------------------

@pytest.mark.parametrize("leave", [0, 1])
def test_many_threads_and_models_while_the_limit_toggles(pool, leave):
    """14 threads, on a model shared by all and on models of their own (both backends
    and dtypes, 1..8 rows), while another thread flips fm.set_num_threads(1) / (2):
    every result has the bits of one thread. leave=1 makes each owner wait for the
    worker, so the worker is certain to compute parts under the race."""
    cases = []
    for backend in BACKENDS:
        for dtype in DTYPES:
            shared = _net(backend, dtype)
            for seed in range(3):
                model = shared if seed == 0 else _net(backend, dtype, seed=seed)
                for rows in (1, 2, 5, 8):
                    cases.append((model, _x(rows, dtype, seed=rows + 10 * seed)))
    want = [_alone(m, X) for m, X in cases]
    fm.set_num_threads(2)
    pool._gemv_pool(leave_to_worker=leave)
    jobs = pool._gemv_pool()["jobs"]
    stop = time.monotonic() + 1.2
    wrong, calls = [], [0]

    def predictor(seed):
        def run():
            rng = np.random.default_rng(seed)
            while time.monotonic() < stop:
                c = int(rng.integers(len(cases)))
                if cases[c][0].predict(cases[c][1]).tobytes() != want[c]:
                    wrong.append(c)
                calls[0] += 1
        return run

    def toggler():
        n = 0
        while time.monotonic() < stop:
            fm.set_num_threads(1 + n % 2)
            n += 1
            time.sleep(0.002)

    run_in_threads([predictor(s) for s in range(14)] + [toggler], timeout=60)
    fm.set_num_threads(2)
    assert not wrong, f"{len(wrong)} of {calls[0]} predicts differ from one thread's bits"
    if leave:
        assert pool._gemv_pool()["jobs"] > jobs, "the worker computed no part"


@pytest.mark.parametrize("spin_ns, leave", [(50_000, 0), (0, 1), (2_000, 1)])
def test_tiny_cut_sums_race_the_claim(pool, spin_ns, leave):
    """Every sum cut (min_bytes 0), jobs of a few ns in many shapes from 8 threads: the
    worker and the owners race for each claim, and each owner reuses the job struct
    and the buffer right after. spin_ns 0 with leave: the worker sleeps after every
    job, so every call goes through the wake-up path. A stale job read by the worker
    (another shape, another x) would change the bits or leave NaN."""
    rng = np.random.default_rng(0)
    cases = []
    for dtype in DTYPES:
        for rows in range(1, 9):
            for n_in, n_out in ((2, 1), (3, 17), (9, 33), (64, 40), (130, 7)):
                cases.append((rng.standard_normal((rows, n_in)).astype(dtype),
                              rng.standard_normal((n_in, n_out)).astype(dtype)))
    pool._gemv_pool(min_bytes=0, spin_ns=spin_ns)
    pool.gemv_threads(1)
    want = [pool._xw(x, W).tobytes() for x, W in cases]
    pool.gemv_threads(2)
    pool._gemv_pool(leave_to_worker=leave)
    jobs = pool._gemv_pool()["jobs"]
    stop = time.monotonic() + 0.8
    wrong = []

    def caller(seed):
        def run():
            r = np.random.default_rng(seed)
            while time.monotonic() < stop:
                c = int(r.integers(len(cases)))
                if pool._xw(*cases[c]).tobytes() != want[c]:
                    wrong.append(c)
        return run

    run_in_threads([caller(s) for s in range(8)], timeout=60)
    assert not wrong
    if leave:
        assert pool._gemv_pool()["jobs"] > jobs


# -- fork, multiprocessing ---------------------------------------------------------

def _fork_and_check(checks):
    """Fork; the child runs checks() (True: exit 0) and never returns; the parent
    gets the child's exit code."""
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            code = 0 if checks() else 1
        finally:
            os._exit(code)
    return wait_for_child(pid, 30)


def test_fork_while_other_threads_predict(pool):
    """Forks from the main thread while 4 threads predict (the worker in use): each
    child, which has no worker and no owner, predicts the right bits, starting a worker
    of its own (leave: it must), and exits; the parent's threads keep their bits."""
    models = {(b, d): _net(b, d) for b in BACKENDS for d in DTYPES}
    data = {key: _x(3, key[1]) for key in models}
    want = {key: _alone(m, data[key]) for key, m in models.items()}
    pool.gemv_threads(2)
    stop = threading.Event()
    wrong = []

    def predictor(key):
        def run():
            while not stop.is_set():
                if models[key].predict(data[key]).tobytes() != want[key]:
                    wrong.append(key)
        return run

    def child():
        fresh = kernels._gemv_pool(leave_to_worker=1)
        same = all(models[key].predict(data[key]).tobytes() == want[key]
                   for key in models for _ in range(3))
        after = kernels._gemv_pool()
        return same and fresh["jobs"] == 0 and after["state"] == 1 and after["jobs"] > 0

    threads = [threading.Thread(target=predictor(key), daemon=True) for key in models]
    for t in threads:
        t.start()
    try:
        time.sleep(0.05)
        codes = []
        for _ in range(6):
            codes.append(_fork_and_check(child))
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert codes == [0] * len(codes)
    assert not wrong
    for key, m in models.items():
        assert m.predict(data[key]).tobytes() == want[key]


def test_fork_while_the_worker_is_mid_job(pool):
    """A thread keeps the worker busy with long parts (8 rows by a 2048 x 2048 float64
    W, each owner waiting for the worker's half); the main thread forks now and then,
    so some children are born with the worker (and its owner) mid-job, the job posted
    and taken but not done: the child's pool is reset, and the child's own worker
    computes its parts."""
    rng = np.random.default_rng(3)
    big = (rng.standard_normal((8, 2048)), rng.standard_normal((2048, 2048)))
    small = (rng.standard_normal((5, 784)).astype(np.float32),
             rng.standard_normal((784, 256)).astype(np.float32))
    pool.gemv_threads(1)
    want_big, want_small = pool._xw(*big).tobytes(), pool._xw(*small).tobytes()
    pool.gemv_threads(2)
    pool._gemv_pool(leave_to_worker=1)
    stop = threading.Event()
    wrong = []

    def busy():
        while not stop.is_set():
            if pool._xw(*big).tobytes() != want_big:
                wrong.append(1)

    def child():
        fresh = kernels._gemv_pool()
        same = all(kernels._xw(*small).tobytes() == want_small for _ in range(5))
        after = kernels._gemv_pool()
        return (same and fresh["state"] == 0 and fresh["jobs"] == 0 and after["state"] == 1
                and after["jobs"] >= 5)

    t = threading.Thread(target=busy, daemon=True)
    t.start()
    try:
        time.sleep(0.02)
        codes = []
        for i in range(12):
            codes.append(_fork_and_check(child))
            time.sleep(0.0007 * i)   # land at different points of the parent's job
    finally:
        stop.set()
        t.join(30)
    assert codes == [0] * len(codes)
    assert not wrong
    assert pool._xw(*small).tobytes() == want_small


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_children_predict_one_threads_bits(method, tmp_path):
    """A multiprocessing pool ('fork': children inherit the parent's pool, its worker
    warm; 'spawn': fresh interpreters) predicts with the parent's weights the bits the
    parent computed on one thread, on both backends and dtypes."""
    script = tmp_path / "mp_predict.py"
    script.write_text(textwrap.dedent(PRELUDE) + textwrap.dedent(f"""
        import multiprocessing as mp

        def job(args):
            backend, dtype, weights, rows = args
            model = net(backend, dtype)
            model.set_weights(weights)
            X = x(rows, dtype, seed=rows)
            burst(model, X, 50)
            return model.predict(X).tobytes(), k._gemv_pool()["state"]

        if __name__ == "__main__":
            k.gemv_threads(2)
            tasks, want = [], []
            for backend in {BACKENDS!r}:
                for dtype in ("float32", "float64"):
                    model = net(backend, dtype, seed=7)
                    for rows in (1, 4, 8):
                        X = x(rows, dtype, seed=rows)
                        want.append(alone(model, X))
                        burst(model, X)   # the parent's worker warm at the fork
                        tasks.append((backend, dtype, model.get_weights(), rows))
            with mp.get_context({method!r}).Pool(2) as p:
                got = p.map(job, tasks)
            assert [g for g, _ in got] == want, "a child's bits differ"
            assert all(state in (0, 1) for _, state in got)
            print("ok")
    """))
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=90, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


# -- signals and exit ---------------------------------------------------------------

def test_sigint_in_a_tight_predict_loop():
    """KeyboardInterrupt lands in a tight 1-row predict loop (the worker spinning, or
    the caller waiting for it): the process goes on, and later predicts are right and
    still shared with the worker. Then a storm of SIGALRM (every 50 us) during predicts."""
    res = _python(PRELUDE, """
        for backend in ("cython", "numba"):
            for dtype in ("float32", "float64"):
                model, X = net(backend, dtype), x(1, dtype)
                want = alone(model, X)
                for leave in (0, 1, 0):
                    k._gemv_pool(leave_to_worker=leave)
                    threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
                    try:
                        while True:
                            model.predict(X)
                    except KeyboardInterrupt:
                        pass
                    jobs = k._gemv_pool(leave_to_worker=1)["jobs"]
                    assert all(model.predict(X).tobytes() == want for _ in range(20))
                    assert k._gemv_pool(leave_to_worker=0)["jobs"] >= jobs + 20
        hits = [0]
        def tick(signum, frame):
            hits[0] += 1
        signal.signal(signal.SIGALRM, tick)
        signal.setitimer(signal.ITIMER_REAL, 5e-5, 5e-5)
        model, X = net("cython", "float32"), x(2, "float32")
        want = alone(model, X)
        k._gemv_pool(leave_to_worker=1)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.3:
            assert model.predict(X).tobytes() == want
        signal.setitimer(signal.ITIMER_REAL, 0)
        assert hits[0] > 10, hits
        print("ok")
    """)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


@pytest.mark.parametrize("how", ["sigterm-spinning", "sigterm-sleeping", "sigterm-handler",
                                 "exit-daemon-mid-job", "exit-worker-sleeping"])
def test_no_hang_at_termination(how):
    """SIGTERM (default action, or a handler raising SystemExit) and interpreter exit,
    with the worker spinning, asleep, or mid-job for a daemon thread: the process ends
    at once with the expected status."""
    body = {
        "sigterm-spinning": """
            burst(model, X)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        """,
        "sigterm-sleeping": """
            burst(model, X)
            time.sleep(0.05)   # its spin (50 us) long over: asleep
            assert k._gemv_pool()["naps"] > 0
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        """,
        "sigterm-handler": """
            def bye(signum, frame):
                raise SystemExit(7)
            signal.signal(signal.SIGTERM, bye)
            threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()
            k._gemv_pool(leave_to_worker=1)
            while True:
                model.predict(X)
        """,
        "exit-daemon-mid-job": """
            W = np.ones((4096, 2048))
            xs = np.ones((8, 4096))
            k._gemv_pool(leave_to_worker=1)
            def busy():
                while True:
                    k._xw(xs, W)
            threading.Thread(target=busy, daemon=True).start()
            time.sleep(0.1)
            sys.exit(5)
        """,
        "exit-worker-sleeping": """
            burst(model, X)
            time.sleep(0.05)
            sys.exit(6)
        """,
    }[how]
    want = {"sigterm-spinning": -signal.SIGTERM, "sigterm-sleeping": -signal.SIGTERM,
            "sigterm-handler": 7, "exit-daemon-mid-job": 5, "exit-worker-sleeping": 6}[how]
    res = _python(PRELUDE, """
        k.gemv_threads(2)
        model, X = net("cython", "float32"), x(1, "float32")
    """, body, timeout=30)
    assert res.returncode == want, res.stderr[-3000:]


# -- a busy machine, a pinned caller ------------------------------------------------

SPEED = textwrap.dedent(PRELUDE) + textwrap.dedent("""
    def mean_us(model, X, threads, seconds=0.25):
        k.gemv_threads(threads)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model.predict(X)
            n += 1
        return (time.perf_counter() - t0) / n * 1e6

    def compare(model, X, reps=3):
        one = min(mean_us(model, X, 1) for _ in range(reps))
        two = min(mean_us(model, X, 2) for _ in range(reps))
        return one, two
""")


def test_a_busy_machine_neither_hangs_nor_breaks_the_predict():
    """A busy-loop process on every core while 1-row predicts run, with and without the
    worker: no hang, the right bits. (Its speed there is not asserted: timings on a
    shared machine make flaky tests. By hand, 1 and 2 threads took ~27 and ~28 us:
    the pool backs off.)"""
    cores = len(os.sched_getaffinity(0))
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        res = _python(SPEED, """
            for backend in ("cython", "numba"):
                model, X = net(backend, "float32"), x(1, "float32")
                want = alone(model, X)
                one, two = compare(model, X)
                assert model.predict(X).tobytes() == want
                print(f"{backend} {one:.2f} {two:.2f}")
        """, timeout=60)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(line.split()[0] for line in res.stdout.split("\n") if line) == \
        ["cython", "numba"]


def test_a_caller_pinned_to_one_cpu_after_import():
    """The caller pins itself to one CPU after import (the default limit, read then,
    stays 2) before the worker starts: the worker inherits the pin, so it can only
    run in the caller's place. No hang, the right bits. (Not timed here; by hand, 1 and
    2 threads both took ~9.3 us: the pool backs off.)"""
    res = _python(SPEED, """
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})   # this thread only
        assert k.gemv_threads() in (1, 2)
        model, X = net("cython", "float32"), x(1, "float32")
        want = alone(model, X)
        one, two = compare(model, X)
        assert model.predict(X).tobytes() == want
        print(f"{one:.2f} {two:.2f}")
    """, timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(res.stdout.split()) == 2, res.stdout


# -- odd arrays -----------------------------------------------------------------------

def _odd_inputs(X):
    """Variants of X (rows, 784) with its values: views into bigger arrays, read-only,
    unaligned, Fortran-ordered, strided."""
    rows = X.shape[0]
    bigger = np.zeros((rows + 3, 784 + 5), X.dtype)
    bigger[2:2 + rows, 3:787] = X
    raw = np.zeros(X.nbytes + 1, np.uint8)
    unaligned = np.frombuffer(raw.data, dtype=X.dtype, count=X.size, offset=1).reshape(X.shape)
    unaligned[...] = X   # (frombuffer over a writable buffer: writable)
    ro = X.copy()
    ro.flags.writeable = False
    spaced = np.zeros((2 * rows, 784), X.dtype)
    spaced[::2] = X
    return {"row view": bigger[2:2 + rows, 3:787], "read-only": ro, "unaligned": unaligned,
            "fortran": np.asfortranarray(X), "strided rows": spaced[::2],
            "list": X.tolist()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_odd_arrays_reach_the_worker_with_one_threads_bits(pool, backend, dtype):
    model = _net(backend, dtype)
    other = "float64" if dtype == "float32" else "float32"
    pool.gemv_threads(2)
    pool._gemv_pool(leave_to_worker=1)   # the worker computes every second part
    for rows in (1, 3, 8):
        X = _x(rows, dtype, seed=rows)
        want = _alone(model, X)
        for name, variant in _odd_inputs(X).items():
            jobs = pool._gemv_pool()["jobs"]
            assert model.predict(variant).tobytes() == want, f"{name}, {rows} rows"
            assert pool._gemv_pool()["jobs"] > jobs, f"{name}: the worker was not used"
        # the other dtype: converted first, so the bits of the converted X
        Xo = _x(rows, other, seed=rows)
        assert model.predict(Xo).tobytes() == _alone(model, Xo.astype(dtype))
        # huge values: inf and NaN in the activations, the same on one thread and two
        huge = (X / np.abs(X).max() * (np.finfo(dtype).max / 4)).astype(dtype)
        assert np.isfinite(huge).all()
        got = model.predict(huge)
        assert got.tobytes() == _alone(model, huge)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("at, value", [(0, np.nan), (783, np.nan), (500, np.inf),
                                       (391, -np.inf), (392, np.nan)])
def test_nan_or_inf_in_either_half_gives_the_usual_error(pool, backend, dtype, at, value):
    """A non-finite x in the owner's half (< 392) or the worker's (>= 392) of a 1..8
    row predict: the message of the NumPy reference backend, naming the first one, and
    the model predicts right after."""
    model = _net(backend, dtype)
    reference = _net("numpy", dtype)
    pool.gemv_threads(2)
    pool._gemv_pool(leave_to_worker=1)
    for rows in (1, 8):
        X = _x(rows, dtype)
        want = _alone(model, X)
        bad = X.copy()
        bad[rows - 1, at] = value
        with pytest.raises(ValueError) as expected:
            reference.predict(bad)
        with pytest.raises(ValueError) as got:
            model.predict(bad)
        assert str(got.value) == str(expected.value)
        assert "NaN or inf" in str(got.value)
        assert model.predict(X).tobytes() == want


# -- memory ---------------------------------------------------------------------------

def test_the_buffer_grows_with_rows_and_widths(pool):
    """Every sum cut, rows 1..8 and widths up to 6000 in random order (the buffer grows
    while the worker is idle, never under it): the bits of one thread, float32 and
    float64 interleaved (the buffer's bytes serve both)."""
    rng = np.random.default_rng(5)
    pool._gemv_pool(min_bytes=0, leave_to_worker=1)
    pool.gemv_threads(2)
    for _ in range(60):
        rows, n_in = int(rng.integers(1, 9)), int(rng.integers(2, 12))
        n_out = int(rng.choice([1, 7, 64, 513, 2049, 4000, 6000]))
        dtype = DTYPES[int(rng.integers(2))]
        x = rng.standard_normal((rows, n_in)).astype(dtype)
        W = rng.standard_normal((n_in, n_out)).astype(dtype)
        jobs = pool._gemv_pool()["jobs"]
        got = pool._xw(x, W)
        assert pool._gemv_pool()["jobs"] == jobs + 1
        pool.gemv_threads(1)
        assert got.tobytes() == pool._xw(x, W).tobytes(), (rows, n_in, n_out, dtype)
        pool.gemv_threads(2)


def test_no_rss_growth_over_1e5_predicts():
    """1e5 small predicts (both backends, dtypes, 1..8 rows), most shared with the
    worker: RSS grows by less than 2 MB after the warm-up."""
    res = _python(PRELUDE, """
        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        cases = [(net(b, d), x(r, d)) for b in ("cython", "numba")
                 for d in ("float32", "float64") for r in (1, 8)]
        k.gemv_threads(2)
        def run(n):
            for i in range(n):
                m, X = cases[i % len(cases)]
                m.predict(X)
        run(20000)
        before, jobs = rss(), k._gemv_pool()["jobs"]
        run(100000)
        print(rss() - before, k._gemv_pool()["jobs"] - jobs)
    """, timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    grown, jobs = map(int, res.stdout.split())
    assert grown < 2 << 20, f"RSS grew {grown} bytes over 1e5 predicts ({jobs} worker parts)"


def test_pthread_create_failing_leaves_one_thread_with_the_right_bits():
    """No address space for a thread's stack (RLIMIT_AS just above what the process
    maps): the worker cannot start, the pool is off for good (state -1), and every
    call, even one that asks for the worker (leave), runs alone with the right bits."""
    res = _python("""
        import os, resource
        import numpy as np
        from fastmlp.kernels import cython_mlp as k
        rng = np.random.default_rng(0)
        x = rng.standard_normal((3, 784)).astype(np.float32)
        W = rng.standard_normal((784, 256)).astype(np.float32)
        k.gemv_threads(1)
        want = k._xw(x, W).tobytes()
        k.gemv_threads(2)
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (mapped + (4 << 20), resource.RLIM_INFINITY))
        assert all(k._xw(x, W).tobytes() == want for _ in range(50))
        k._gemv_pool(leave_to_worker=1)
        assert all(k._xw(x, W).tobytes() == want for _ in range(5))
        print(k._gemv_pool()["state"], k._gemv_pool()["jobs"])
    """)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["-1", "0"]


# -- the caller's floating-point mode ---------------------------------------------------

FP_MODE = """
    import ctypes
    libm = ctypes.CDLL("libm.so.6")
    FE_TONEAREST, FE_UPWARD = 0x000, 0x800   # x86's values

    def ftz_daz(on):
        # MXCSR is at byte 28 of glibc's x86-64 fenv_t; FTZ bit 15, DAZ bit 6
        env = (ctypes.c_ubyte * 32)()
        assert libm.fegetenv(env) == 0
        m = int.from_bytes(bytes(env[28:32]), "little")
        m = m | 0x8040 if on else m & ~0x8040
        env[28:32] = list(m.to_bytes(4, "little"))
        assert libm.fesetenv(env) == 0
"""


def _check_fp_run(res):
    """The script's verdict: exit 1 (other bits on 2 threads than on 1) fails the
    assertion; anything else but 0 (a crash, a hang) is an error of its own."""
    if res.returncode not in (0, 1):
        raise RuntimeError(f"the script broke (exit {res.returncode}): {res.stderr[-3000:]}")
    assert res.returncode == 0, f"other bits on 2 threads than on 1: {res.stdout}"


x86_glibc = pytest.mark.skipif(not (sys.platform.startswith("linux")
                                    and os.uname().machine == "x86_64"),
                               reason="the fenv_t layout and FE_ values of x86-64 glibc")


@x86_glibc
def test_a_caller_rounding_upward_gets_one_threads_bits():
    """fesetround(FE_UPWARD) on the calling thread, the worker started before (in the
    default mode): a predict on 2 threads must equal the same predict on 1 thread, in
    the caller's mode, on both backends and dtypes."""
    res = _python(PRELUDE, FP_MODE, """
        k.gemv_threads(2)
        differ = []
        for backend in ("cython", "numba"):
            for dtype in ("float32", "float64"):
                model, X = net(backend, dtype), x(3, dtype)
                burst(model, X)   # the worker runs, in round-to-nearest
                assert libm.fesetround(FE_UPWARD) == 0
                try:
                    want = alone(model, X)
                    k._gemv_pool(leave_to_worker=1)
                    got = model.predict(X).tobytes()
                    k._gemv_pool(leave_to_worker=0)
                finally:
                    libm.fesetround(FE_TONEAREST)
                if got != want:
                    differ.append(f"{backend} {dtype}")
        print("differ:", differ)
        sys.exit(1 if differ else 0)
    """)
    _check_fp_run(res)


@x86_glibc
@pytest.mark.parametrize("who", ["caller-ftz", "creator-ftz"])
def test_flush_to_zero_on_one_side_only_keeps_one_threads_bits(who):
    """Subnormal x: with FTZ/DAZ set on the calling thread only ('caller-ftz'), or on
    the thread that created the worker but not on a later caller ('creator-ftz'), the
    GEMV on 2 threads must give the 1-thread bits of the caller's mode."""
    res = _python(PRELUDE, FP_MODE, f"""
        rng = np.random.default_rng(0)
        xs = (rng.standard_normal((2, 784)) * 1e-39).astype(np.float32)   # subnormal
        W = rng.standard_normal((784, 256)).astype(np.float32)
        k.gemv_threads(2)
        if {who!r} == "caller-ftz":
            for _ in range(200):
                k._xw(xs, W)   # the worker starts in the default mode
            ftz_daz(True)
            caller = threading.current_thread()
        else:
            ftz_daz(True)
            for _ in range(200):
                k._xw(xs, W)   # the worker starts with FTZ/DAZ
            ftz_daz(False)
        result = {{}}
        def call():   # caller-ftz: the main thread; creator-ftz: a new, default-mode one
            k.gemv_threads(1)
            result["want"] = k._xw(xs, W).tobytes()
            k.gemv_threads(2)
            k._gemv_pool(leave_to_worker=1)
            result["got"] = k._xw(xs, W).tobytes()
            k._gemv_pool(leave_to_worker=0)
        if {who!r} == "caller-ftz":
            call()
            ftz_daz(False)
        else:
            t = threading.Thread(target=call)
            t.start()
            t.join()
        sys.exit(0 if result["got"] == result["want"] else 1)
    """)
    _check_fp_run(res)
