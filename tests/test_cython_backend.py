"""What only the Cython backend promises: its compiled tables match Python's,
its GEMM layer is right for every transpose, bad arrays are refused before
any unchecked kernel runs, the GIL is released, parallel models do not
interfere, nothing is compiled at first call, and the sources ship in the sdist.

Agreement with the reference on every activation, loss and optimiser is in
the shared suites (``backend`` / ``compiled_backend`` fixtures).
"""
import dataclasses
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import activations, codes, optimizers, rules
from fastmlp.backends.reference import NumpyBackend
from fastmlp.network import LINE_ELEMENTS

kernels = pytest.importorskip("fastmlp.kernels.cython_mlp")

ROOT = Path(__file__).resolve().parents[1]


def _model(dims=(5, 7, 3), hidden="tanh", output="softmax", loss="cross_entropy",
           optimizer=None, dtype="float64", seed=0):
    layers = [fm.Dense(u, activation=hidden) for u in dims[1:-1]]
    layers.append(fm.Dense(dims[-1], activation=output))
    return fm.Model(layers, input_dim=dims[0], loss=loss, optimizer=optimizer or fm.SGD(lr=0.1),
                    backend="cython", dtype=dtype, seed=seed)


def _data(model, n, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, model.net.input_dim)).astype(model.dtype)
    T = np.eye(model.net.output_dim, dtype=model.dtype)[rng.integers(0, model.net.output_dim, n)]
    return X, T


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (6, 4, 3), (3, 1, 5), (37, 29, 41), (64, 130, 70)])
@pytest.mark.parametrize("alpha, beta", [(1.0, 0.0), (-0.3, 1.0), (2.0, 0.5)])
@pytest.mark.parametrize("path", [-1, 0, 1], ids=["auto", "loops", "blas"])
def test_gemm_matches_numpy_on_both_paths(dtype, tol, trans_a, trans_b, m, n, k, alpha, beta, path):
    """Small products take the plain loops, large ones BLAS; both are the same GEMM."""
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    a = rng.normal(size=(k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.normal(size=(n, k) if trans_b else (k, n)).astype(dtype)
    c = rng.normal(size=(m, n)).astype(dtype)
    if beta == 0:
        c[0, 0] = np.nan  # beta = 0 overwrites: the old contents are never read
    expected = alpha * ((a.T if trans_a else a) @ (b.T if trans_b else b))
    if beta:
        expected += beta * c
    kernels._gemm(trans_a, trans_b, alpha, a, b, beta, c, path)
    np.testing.assert_allclose(c, expected, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10 * k)


def test_gemm_sizes_straddle_the_small_path_threshold():
    small = kernels.SMALL_GEMM_FLOPS
    assert 6 * 4 * 3 <= small < 37 * 29 * 41


def test_batch_size_changes_reuse_a_growing_workspace(dtype, tol):
    """Batches of 3, then 11 (the workspace grows), then 2 rows: every step as the reference."""
    m = _model(dtype=dtype, optimizer=fm.Adam(lr=0.01))
    theta, state = m.engine.theta.copy(), optimizers.OptimizerState.new(m.optimizer, m.n_params, m.dtype)
    ref = NumpyBackend(m.net, m.dtype, theta, state)
    for n in (3, 11, 2, 11):
        X, T = _data(m, n, seed=n)
        got = m.engine.train_step(X, T)
        want = ref.train_step(X, T)
        np.testing.assert_allclose(got, want, **tol)
        np.testing.assert_allclose(m.engine.theta, theta, **tol)


def test_loss_and_gradient_leaves_theta_alone():
    m = _model()
    X, T = _data(m, 9)
    before = m.engine.theta.copy()
    grad = np.full(m.n_params, np.nan)
    m.engine.loss_and_gradient(X, T, grad)
    assert np.array_equal(m.engine.theta, before)
    assert np.isfinite(grad).all()  # every entry overwritten


def _engine(m, predict_rows, train_rows=rules.TRAIN_ROWS):
    return kernels.Engine(m.net, m.dtype, train_rows, predict_rows,
                          rules.sgd_fold_rows(m.engine.state))


def test_predict_in_chunks_equals_one_chunk(dtype, tol):
    m = _model(dims=(4, 9, 6, 2), hidden="elu", output="sigmoid", loss="binary_cross_entropy",
               dtype=dtype)
    X, T = _data(m, 23)
    theta = m.engine.theta
    whole = _engine(m, 23).predict(theta, X)
    loss = _engine(m, 23).evaluate(theta, X, T)
    for chunk in (1, 5, 22):
        out = np.full_like(whole, np.nan)
        assert _engine(m, chunk).predict(theta, X, out) is out
        np.testing.assert_allclose(out, whole, **tol)
        np.testing.assert_allclose(_engine(m, chunk).evaluate(theta, X, T), loss, **tol)
    ref = NumpyBackend(m.net, m.dtype, m.engine.theta, m.engine.state)
    np.testing.assert_allclose(whole, ref.predict(X), **tol)


# -- refusing arrays the kernels must not see ----------------------------------------

def _engine_args(m):
    return m.net, m.dtype, rules.TRAIN_ROWS, rules.predict_rows(m.net, m.dtype), 0


def _unaligned_fortran(X):
    raw = np.zeros(X.nbytes + 1, np.uint8)
    view = np.frombuffer(raw.data, X.dtype, X.size, offset=1).reshape(X.shape[::-1]).T
    view[...] = X
    return view


def _bad_calls(m):
    e, theta, state = m.engine, m.engine.theta, m.engine.state
    X, T = _data(m, 4)
    perm = np.arange(4, dtype=np.int64)
    f32 = np.float32 if m.dtype == np.float64 else np.float64
    ro = theta.copy()
    ro.flags.writeable = False
    bad_state = optimizers.OptimizerState(state.code, state.hyper, state.buffers[:, :-1],
                                          state.step)
    return {
        "X other dtype": lambda: e.engine.train_step(theta, state, X.astype(f32), T),
        "X wrong width": lambda: e.engine.train_step(theta, state, X[:, :-1].copy(), T),
        # (predict reads a Fortran-ordered X: tests/test_column_major.py)
        "X Fortran order, train": lambda: e.engine.train_step(theta, state, np.asfortranarray(X), T),
        "X Fortran order, evaluate": lambda: e.engine.evaluate(theta, np.asfortranarray(X), T),
        "X Fortran, other dtype": lambda: e.engine.predict(theta, np.asfortranarray(X, f32)),
        "X Fortran, unaligned": lambda: e.engine.predict(theta, _unaligned_fortran(X)),
        "X strided": lambda: e.engine.predict(theta, np.repeat(X, 2, axis=0)[::2]),
        "X 1-D": lambda: e.engine.predict(theta, X[0]),
        "X list": lambda: e.engine.predict(theta, X.tolist()),
        "T rows": lambda: e.engine.train_step(theta, state, X, T[:-1]),
        "T width": lambda: e.engine.evaluate(theta, X, T[:, :-1].copy()),
        "theta short": lambda: e.engine.predict(theta[:-1], X),
        "theta read-only": lambda: e.engine.train_step(ro, state, X, T),
        "grad short": lambda: e.engine.loss_and_gradient(theta, X, T, np.empty(m.n_params - 1, m.dtype)),
        "state buffers": lambda: e.engine.train_step(theta, bad_state, X, T),
        "perm too large": lambda: e.engine.train_epoch(theta, state, X, T, perm + 1, 2),
        "perm negative": lambda: e.engine.train_epoch(theta, state, X, T, perm - 1, 2),
        "perm int32": lambda: e.engine.train_epoch(theta, state, X, T, perm.astype(np.int32), 2),
        "batch 0": lambda: e.engine.train_epoch(theta, state, X, T, perm, 0),
        "perm empty": lambda: e.engine.train_epoch(theta, state, X, T, perm[:0], 2),
        "out other dtype": lambda: e.engine.predict(theta, X, np.empty((4, 3), f32)),
        "out short": lambda: e.engine.predict(theta, X, np.empty((3, 3), m.dtype)),
        "out strided": lambda: e.engine.predict(theta, X, np.empty((4, 6), m.dtype)[:, ::2]),
        "out read-only": lambda: e.engine.predict(theta, X, ro[:12].reshape(4, 3)),
        "predict_rows 0": lambda: kernels.Engine(m.net, m.dtype, 8, 0, 0),
        "engine re-initialised": lambda: e.engine.__init__(*_engine_args(m)),
    }


@pytest.mark.parametrize("case", list(_bad_calls(_model())))
def test_bad_arrays_are_refused_before_any_kernel_runs(case, dtype):
    m = _model(dtype=dtype)
    before = m.engine.theta.copy(), m.engine.state.step.copy()
    with pytest.raises((ValueError, TypeError, RuntimeError)):
        _bad_calls(m)[case]()
    assert np.array_equal(m.engine.theta, before[0]) and np.array_equal(m.engine.state.step, before[1])


@pytest.mark.parametrize("change", ["offset past theta", "prelu alpha missing", "widths differ",
                                    "unknown activation", "unknown loss", "float16",
                                    "workspace past its end"])
def test_engine_refuses_a_layout_that_does_not_fit_theta(change, monkeypatch):
    net, dtype, *rows = _engine_args(_model(dims=(5, 7, 3)))
    table = net.layer_table
    if change == "offset past theta":
        table[1, codes.LAYER_B] += 1  # b2 would end one past theta
    elif change == "prelu alpha missing":
        table[0, codes.LAYER_ACT] = activations.PRELU
    elif change == "widths differ":
        table[1, codes.LAYER_N_IN] -= 1
    elif change == "unknown activation":
        table[0, codes.LAYER_ACT] = 99
    elif change == "unknown loss":
        net.loss = dataclasses.replace(net.loss, code=7)
    elif change == "workspace past its end":
        plan = net.plan

        def short(cap, fold_rows=0):
            p = plan(cap, fold_rows)
            p[codes.PLAN_WS_SIZE] -= LINE_ELEMENTS   # past the last buffer's padding
            return p
        monkeypatch.setattr(net, "plan", short)
    else:
        dtype = np.float16
    with pytest.raises(ValueError):
        kernels.Engine(net, dtype, *rows)


# -- threads -----------------------------------------------------------------------

def _train(m, X, T, epochs=5):
    perm = np.arange(len(X), dtype=np.int64)
    rng = np.random.default_rng(7)
    losses_ = []
    for _ in range(epochs):
        rng.shuffle(perm)
        losses_.append(m.engine.train_epoch(X, T, perm, 16))
    return losses_


@pytest.mark.parametrize("optimizer", [fm.SGD(lr=0.05), fm.Adam(lr=0.01)])
def test_two_models_training_in_two_threads_equal_one_after_the_other(dtype, optimizer):
    def pair():
        a = _model(dims=(20, 48, 32, 4), hidden="relu", optimizer=optimizer, dtype=dtype, seed=1)
        b = _model(dims=(20, 48, 32, 4), hidden="sigmoid", optimizer=optimizer, dtype=dtype, seed=2)
        return a, b

    a, b = pair()
    Xa, Ta = _data(a, 400, seed=3)
    Xb, Tb = _data(b, 400, seed=4)
    seq = [_train(a, Xa, Ta), _train(b, Xb, Tb)]

    c, d = pair()
    par = [None, None]
    barrier = threading.Barrier(2)

    def work(i, m, X, T):
        barrier.wait()
        par[i] = _train(m, X, T)

    threads = [threading.Thread(target=work, args=(0, c, Xa, Ta)),
               threading.Thread(target=work, args=(1, d, Xb, Tb))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert par == seq
    assert np.array_equal(c.engine.theta, a.engine.theta) and np.array_equal(d.engine.theta, b.engine.theta)


def test_one_model_trained_from_two_threads_stays_consistent():
    """The workspace lock serialises the steps: the result is some order of the same steps."""
    m = _model(dims=(8, 16, 3), dtype="float64")
    X, T = _data(m, 64)
    threads = [threading.Thread(target=_train, args=(m, X, T, 20)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert np.isfinite(m.engine.theta).all() and m.engine.state.step[0] == 2 * 20 * 4


def _longest_pause(call):
    """Run call() in a thread while this thread ticks in Python; the longest stretch
    of the call during which this thread could not run, and the call's duration."""
    inside = {}

    def work():
        inside["enter"] = time.perf_counter()
        call()
        inside["exit"] = time.perf_counter()

    t = threading.Thread(target=work)
    ticks = []
    t.start()
    while t.is_alive():
        ticks.append(time.perf_counter())
    t.join()
    enter, leave = inside["enter"], inside["exit"]
    points = [enter] + [x for x in ticks if enter < x < leave] + [leave]
    return float(np.max(np.diff(points))), leave - enter


@pytest.mark.parametrize("call", ["train_epoch", "predict"])
def test_the_gil_is_released_while_kernels_run(call):
    m = _model(dims=(256, 256, 256, 10), hidden="relu", dtype="float64")
    X, T = _data(m, 8192 if call == "predict" else 4096)
    perm = np.arange(len(X), dtype=np.int64)
    if call == "predict":
        pause, duration = _longest_pause(lambda: m.engine.predict(X))
    else:
        pause, duration = _longest_pause(
            lambda: m.engine.train_epoch(X, T, perm, 64))
    assert pause < 0.5 * duration, (pause, duration)

    # The detector itself: the gemm test hook keeps the GIL, and is caught.
    a = np.ones((1000, 1000))
    c = np.empty_like(a)
    pause, duration = _longest_pause(lambda: kernels._gemm(False, False, 1.0, a, a, 0.0, c))
    assert pause > 0.5 * duration, (pause, duration)


# -- shipping ------------------------------------------------------------------------

FIRST_CALL = """
import time, numpy as np, fastmlp as fm
rng = np.random.default_rng(0)
out = []
for dims, hidden, output, loss, opt in [((3, 4, 2), "sigmoid", "sigmoid", "mse", fm.SGD(lr=0.5)),
                                        ((64, 32, 10), "relu", "softmax", "cross_entropy", fm.Adam())]:
    m = fm.Model([fm.Dense(dims[1], activation=hidden), fm.Dense(dims[2], activation=output)],
                 input_dim=dims[0], loss=loss, optimizer=opt, backend="cython", seed=0)
    X = rng.normal(size=(32, dims[0])).astype(np.float32)
    T = np.eye(dims[2], dtype=np.float32)[rng.integers(0, dims[2], 32)]
    start = time.perf_counter()
    m.engine.train_step(X, T)
    m.engine.predict(X)
    out.append(time.perf_counter() - start)
print(max(out) * 1e3)
"""


def test_first_call_in_a_fresh_process_compiles_nothing():
    """No JIT: the first train step and predict of a new process take <= 50 ms."""
    # One BLAS thread, so the measurement is not of thread start-up on a busy machine.
    env = {**__import__("os").environ, "OPENBLAS_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", FIRST_CALL], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert float(res.stdout) <= 50.0


def test_sdist_ships_the_cython_sources(tmp_path):
    res = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    (archive,) = tmp_path.glob("*.tar.gz")
    names = {Path(n).name for n in tarfile.open(archive).getnames()}
    wanted = {p.name for pattern in ("*.pyx", "*.pxi", "*.pxd", "*.h")
              for p in (ROOT / "kernels").glob(pattern)}
    assert {"_mlp.pxi", "_cython_mlp_base.pyx", "_cython_mlp_avx512.pyx", "_blas.pxd",
            "_activations.pxd", "_gemv.h"} <= wanted
    assert wanted <= names, wanted - names
    # the licence, the data set, and the whole test suite (its helpers too, so it can run)
    tests = {p.name for p in (ROOT / "tests").iterdir() if p.suffix == ".py"}
    assert {"LICENSE", "digits.csv.gz", "conftest.py", "helpers.py"} | tests <= names
    assert not any(n.endswith((".nbi", ".nbc", ".pyc")) for n in names)
