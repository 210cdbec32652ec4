"""The "cuda" backend's own tests: availability, device arrays, pull/push, streaming,
the tiled GEMM on odd shapes, the device functions, and saving a cuda-trained model.

Run under the Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1, set before numba is
imported) or on a GPU; without either, only the availability test runs. Shapes are
small: the simulator runs every GPU thread as a Python thread.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import activations
from fastmlp.optimizers import OptimizerState, update
from fastmlp.backends.reference import NumpyBackend
from tolerances import TOLERANCES

HAS_CUDA = "cuda" in fm.available_backends()
if HAS_CUDA:
    # at module level: the simulator swaps the module-global `cuda` inside kernels
    from numba import cuda
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no GPU and no CUDA simulator here")


def test_unavailable_without_driver_says_why():
    """Without the simulator and without a driver, "cuda" is not listed and asking for
    it raises a ValueError naming the reason (run in a fresh process: the simulator
    switch is read once, when numba is imported)."""
    code = ("import fastmlp as fm\n"
            "from numba import cuda\n"
            "if cuda.is_available(): print('GPU'); raise SystemExit\n"
            "assert 'cuda' not in fm.available_backends(), fm.available_backends()\n"
            "try:\n"
            "    fm.Model([fm.Dense(2)], input_dim=3, backend='cuda')\n"
            "except ValueError as exc:\n"
            "    print('ERROR', exc)\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    if out.stdout.startswith("GPU"):
        pytest.skip("a real GPU is present")
    assert "backend 'cuda' is not available here" in out.stdout
    assert "driver" in out.stdout or "GPU" in out.stdout


# -- the device functions ------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_device_activations_match_the_table(dtype):
    from fastmlp.kernels import cuda_math
    m = cuda_math.for_dtype(dtype)
    ft = np.dtype(dtype).type

    @cuda.jit
    def run(codes, z, p, a, out, grad):
        i = cuda.grid(1)
        if i < z.size:
            for c in range(codes.size):
                f = m.act(codes[c], z[i], p, a)
                out[c, i] = f
                grad[c, i] = m.act_grad(codes[c], z[i], f, p, a)

    z = np.array([-40, -3, -0.5, -0.2, 0, 0.2, 0.5, 3, 40], dtype=dtype)
    rows = [a for a in activations.ACTIVATIONS.values() if a.derivative is not None]
    codes = np.array([a.code for a in rows])
    out = np.zeros((len(rows), len(z)), dtype=dtype)
    grad = np.zeros_like(out)
    run[1, 16](codes, z, ft(0.3), ft(0.3), out, grad)
    for a, f, g in zip(rows, out, grad):
        want = a.forward(z.copy(), 0.3)
        np.testing.assert_allclose(f, want, rtol=1e-6, atol=1e-6, err_msg=a.name)
        np.testing.assert_allclose(g, a.derivative(z, want, 0.3), rtol=1e-6, atol=1e-6,
                                   err_msg=a.name)


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("optimizer", [fm.SGD(0.1), fm.SGD(0.1, momentum=0.9, weight_decay=0.01),
                                       fm.SGD(0.1, momentum=0.9, nesterov=True),
                                       fm.Adam(0.01, weight_decay=0.01)])
def test_device_optimizer_matches_the_reference(dtype, optimizer):
    from fastmlp.kernels import cuda_math
    m = cuda_math.for_dtype(dtype)

    @cuda.jit
    def step(code, hyper, t, theta, g, bufs):
        i = cuda.grid(1)
        if i < theta.size:
            m.opt_update(code, hyper, t, i, theta, g[i], bufs)

    rng = np.random.default_rng(0)
    theta = rng.standard_normal(11).astype(dtype)
    state = OptimizerState.new(optimizer, 11, dtype)
    d_theta, d_bufs = theta.copy(), state.buffers.copy()
    for t in (1, 2, 3):
        g = rng.standard_normal(11).astype(dtype)
        update(theta, g, state)
        step[1, 16](optimizer.code, state.hyper, t, d_theta, g, d_bufs)
    np.testing.assert_allclose(d_theta, theta, **TOLERANCES[dtype])
    np.testing.assert_allclose(d_bufs, state.buffers, **TOLERANCES[dtype])


# -- the tiled GEMM -----------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("ta, tb", [(0, 0), (1, 0), (0, 1)])
def test_gemm_on_shapes_that_are_not_tile_multiples(dtype, ta, tb):
    """C = op(A) op(B) for M, N, K that cross tile edges (and a K shorter than a step);
    STORE overwrites, accumulate adds."""
    from fastmlp.kernels import cuda_layers as cl
    k = cl.kernels(dtype)
    rng = np.random.default_rng(1)
    for M, N, K in ((k.bm + 3, 2 * k.bm - 1, 2 * k.shape[2] + 1), (1, 1, 1), (5, 3, 2)):
        A = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
        B = rng.standard_normal((N, K) if tb else (K, N)).astype(dtype)
        want = (A.T if ta else A) @ (B.T if tb else B)
        C = cuda.to_device(np.full(M * N + 3, np.nan, dtype=dtype))
        cl.gemm(k, M, N, K, cuda.to_device(A.ravel()), 0, A.shape[1], ta,
                cuda.to_device(B.ravel()), 0, B.shape[1], tb, C, 3)
        got = C.copy_to_host()
        assert np.isnan(got[:3]).all()   # nothing written outside C
        np.testing.assert_allclose(got[3:].reshape(M, N), want, **TOLERANCES[dtype])
        cl.gemm(k, M, N, K, cuda.to_device(A.ravel()), 0, A.shape[1], ta,
                cuda.to_device(B.ravel()), 0, B.shape[1], tb, C, 3, accumulate=1)
        np.testing.assert_allclose(C.copy_to_host()[3:].reshape(M, N), 2 * want,
                                   **TOLERANCES[dtype])


# -- the backend ---------------------------------------------------------------------------

def _model(dtype="float64", optimizer=None, loss="cross_entropy"):
    out = fm.Dense(3, "softmax" if loss == "cross_entropy" else "linear")
    return fm.Model([fm.Dense(5, "tanh"), fm.Dense(4, "prelu"), out], input_dim=4, loss=loss,
                    optimizer=optimizer or fm.Adam(0.01), dtype=dtype, backend="cuda", seed=0)


def _data(n=10, dtype="float64"):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((n, 4)).astype(dtype)
    T = np.eye(3, dtype=dtype)[rng.integers(0, 3, n)]
    return X, T


@needs_cuda
def test_predict_takes_and_gives_device_arrays():
    m = _model()
    X, _ = _data()
    want = m.engine.predict(X)
    d_X = cuda.to_device(X)
    got = m.engine.predict(d_X)
    assert got.__class__ is d_X.__class__   # a device array, X read where it lies
    np.testing.assert_allclose(got.copy_to_host(), want, rtol=1e-12, atol=1e-14)
    out = cuda.device_array((len(X), 3))
    assert m.engine.predict(d_X, out) is out
    np.testing.assert_allclose(out.copy_to_host(), want, rtol=1e-12, atol=1e-14)
    host_out = np.empty((len(X), 3))
    assert m.engine.predict(d_X, host_out) is host_out
    np.testing.assert_allclose(host_out, want, rtol=1e-12, atol=1e-14)


@needs_cuda
def test_all_finite_on_the_device():
    m = _model()
    X, _ = _data()
    assert m.engine.all_finite(cuda.to_device(X))
    X[3, 2] = np.inf
    assert not m.engine.all_finite(cuda.to_device(X))
    X[3, 2] = np.nan
    assert not m.engine.all_finite(cuda.to_device(X))


@needs_cuda
def test_pull_copies_only_when_the_device_is_newer_and_push_reaches_the_device():
    m = _model()
    engine, theta = m.engine, m.engine._theta
    X, T = _data()
    before = theta.copy()
    engine.train_step(X, T)
    assert np.array_equal(theta, before)   # the host copy waits for pull
    engine.pull()
    assert not np.array_equal(theta, before)
    trained = theta.copy()
    theta[...] = 0.0          # the Model writes the host arrays (set_weights, load, ...)
    engine.push()
    np.testing.assert_array_equal(engine.predict(X), np.full((len(X), 3), 1 / 3))
    engine.pull()             # nothing newer on the device: the host is kept
    assert not theta.any()
    theta[...] = trained
    engine.push()
    assert engine.evaluate(X, T) > 0


@needs_cuda
@pytest.mark.parametrize("fused", [False, True], ids=["general", "fused"])
def test_to_device_copies_once_and_streams_beyond_the_budget(monkeypatch, fused):
    """Within the budget the set is copied; beyond it the host arrays come back and
    every batch is streamed: both train to the same weights, on the general path and on
    the fused step (the tiny-network kernel, which needs the set on the device, off)."""
    import fastmlp.backends.cuda as backend
    monkeypatch.setattr(backend, "FUSED", fused)
    monkeypatch.setattr(backend, "TINY", False)
    X, T = _data(12)
    perm = np.random.default_rng(0).permutation(12)
    results = []
    for budget in (1 << 30, 16):
        monkeypatch.setattr(backend, "DEVICE_BUDGET_BYTES", budget)
        m = _model()
        assert m.engine.fused == fused
        Xd, Td = m.engine.to_device(X, T)
        assert (Xd is X) == (budget == 16)
        loss = m.engine.train_epoch(Xd, Td, perm, 5)
        m.engine.pull()
        results.append((loss, m.engine._theta.copy()))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


@needs_cuda
def test_training_is_deterministic_and_matches_the_reference():
    X, T = _data(10)
    perm = np.random.default_rng(0).permutation(10)
    thetas = []
    for _ in range(2):
        m = _model()
        m.engine.train_epoch(X, T, perm, 4)
        m.engine.pull()
        thetas.append(m.engine._theta.copy())
    assert thetas[0].tobytes() == thetas[1].tobytes()
    ref = _model()
    net = ref.net
    theta = ref.engine.theta.copy()
    state = OptimizerState.new(fm.Adam(0.01), net.n_params, "float64")
    NumpyBackend(net, np.dtype("float64"), theta, state).train_epoch(X, T, perm, 4)
    np.testing.assert_allclose(thetas[0], theta, **TOLERANCES["float64"])


@needs_cuda
def test_cuda_trained_model_saves_loads_and_predicts_alike_on_cpu_backends(tmp_path):
    X, T = _data(12)
    m = _model()
    m.fit(X, T, epochs=2, batch_size=4)
    path = tmp_path / "m.fastmlp"
    m.save(path)
    want = m.predict(X)
    for backend in [b for b in fm.available_backends() if b != "cuda"]:
        loaded = fm.load(path, backend=backend)
        np.testing.assert_allclose(loaded.predict(X), want, **TOLERANCES["float64"],
                                   err_msg=backend)


@needs_cuda
def test_an_empty_device_array_is_refused_as_an_empty_host_array():
    """Hostile round 6: a (0, d) device array returned (0, k); on the host it is refused."""
    m = _model()
    X = np.zeros((0, 4), dtype=m.dtype)
    for given in (X, cuda.to_device(X)):
        with pytest.raises(ValueError, match="X is empty: it has 0 rows"):
            m.predict(given)


@needs_cuda
def test_a_ctrl_c_inside_train_on_batch_leaves_the_model_before_or_after(monkeypatch):
    """A real SIGINT landing inside the device step (after its launch, before the host's
    step count and "device newer" marks): the step runs whole, then KeyboardInterrupt;
    predict, get_weights, save and the step count all agree on the step taken."""
    import signal
    from fastmlp.kernels import cuda_fused
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(8, 3)), rng.normal(size=(8, 2))

    def make():
        return fm.Model([fm.Dense(4, "tanh"), fm.Dense(2)], input_dim=3, loss="mse",
                        optimizer=fm.Adam(0.1), backend="cuda", dtype="float64", seed=0)
    model, twice = make(), make()
    model.train_on_batch(X, Y)
    twice.train_on_batch(X, Y)
    twice.train_on_batch(X, Y)
    real = cuda_fused.FusedStep.train

    def interrupted(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return result
    monkeypatch.setattr(cuda_fused.FusedStep, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.train_on_batch(X, Y)
    monkeypatch.setattr(cuda_fused.FusedStep, "train", real)
    assert model.get_state()["opt_step"][0] == 2
    for got, want in zip(model.get_weights(), twice.get_weights()):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(model.predict(X), twice.predict(X))
