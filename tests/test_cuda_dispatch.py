"""The "cuda" backend's dispatch (issue 12): which calls take the fused narrow step, the
tiny-network epoch kernel or the general path; every path against the NumPy reference and
the others on the same networks, the same bits twice; train_epochs bit for bit k
train_epoch calls on each path; and the step count kept right when paths mix (the fused
kernels count steps on the device, the general path on the host).

Under the Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1) or on a GPU; skipped without
either. Shapes are small: the simulator runs every GPU thread as a Python thread.
"""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp.codes import LR
from tolerances import TOLERANCES

if "cuda" not in fm.available_backends():
    pytest.skip("no GPU and no CUDA simulator here", allow_module_level=True)

from numba import cuda  # noqa: E402

import fastmlp.backends.cuda as backend  # noqa: E402
from fastmlp.kernels import cuda_fused as cf  # noqa: E402

# (FUSED, TINY) of each path
PATHS = {"general": (False, False), "fused": (True, False), "tiny": (True, True)}
D = fm.Dense


@pytest.fixture(params=sorted(PATHS))
def path(request, monkeypatch):
    fused, tiny = PATHS[request.param]
    monkeypatch.setattr(backend, "FUSED", fused)
    monkeypatch.setattr(backend, "TINY", tiny)
    return request.param


def _model(backend_name, dtype, optimizer=None):
    """4 -> 5 tanh -> 4 prelu -> 3 softmax, cross-entropy: a prelu gradient and a fused output."""
    return fm.Model([D(5, "tanh"), D(4, "prelu"), D(3, "softmax")], input_dim=4,
                    loss="cross_entropy", optimizer=optimizer or fm.Adam(0.01),
                    backend=backend_name, dtype=dtype, seed=0)


def _data(n=14, dtype="float64"):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((n, 4)).astype(dtype)
    return X, np.eye(3, dtype=dtype)[rng.integers(0, 3, n)]


def _bits(m):
    e = m.engine
    return [e.theta.tobytes(), e.state.buffers.tobytes(), e.state.step.tobytes()]


def _count_calls(monkeypatch):
    """Counts of the launchers' and the general path's calls, patched in place."""
    calls = {}
    targets = [(cf.FusedStep, "train"), (cf.FusedStep, "gradient"), (cf.FusedStep, "predict"),
               (cf.FusedStep, "evaluate"), (cf.TinyEpochs, "run"),
               (backend.CudaBackend, "_forward")]
    for owner, name in targets:
        key = f"{owner.__name__}.{name}"
        calls[key] = 0
        real = getattr(owner, name)

        def counted(*args, _real=real, _key=key, **kwargs):
            calls[_key] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(owner, name, counted)
    return calls


def _nonzero(counts):
    return {k: v for k, v in counts.items() if v}


def test_each_call_takes_its_path(path, monkeypatch):
    m = _model("cuda", "float32")
    assert m.engine.fused == (path != "general")
    X, T = _data(10, "float32")
    calls = _count_calls(monkeypatch)
    fused, tiny = path != "general", path == "tiny"

    def took():
        got = _nonzero(calls)
        calls.update(dict.fromkeys(calls, 0))
        return got

    def one(launcher):   # one call: the fused launcher's, or the general path's forward pass
        return {launcher: 1} if fused else {"CudaBackend._forward": 1}

    m.engine.train_step(X, T)
    assert took() == one("FusedStep.train")
    m.engine.train_step_checked(X, T)
    assert took() == one("FusedStep.train")
    m.engine.loss_and_gradient(X, T, np.empty(m.net.n_params, "float32"))
    assert took() == one("FusedStep.gradient")
    m.engine.predict(X)
    assert took() == one("FusedStep.predict")
    m.engine.evaluate(X, T)
    assert took() == one("FusedStep.evaluate")
    Xd, Td = m.engine.to_device(X, T)
    m.engine.train_epoch(Xd, Td, np.arange(10), 4)   # three steps
    assert took() == _nonzero({"TinyEpochs.run": int(tiny),
                               "FusedStep.train": 3 * (path == "fused"),
                               "CudaBackend._forward": 3 * (not fused)})
    m.engine.train_epochs(Xd, Td, np.tile(np.arange(10), (2, 1)), 5, -1.0, np.empty(2))
    assert took() == _nonzero({"TinyEpochs.run": int(tiny),
                               "FusedStep.train": 4 * (path == "fused"),
                               "CudaBackend._forward": 4 * (not fused)})
    # the fused kernels form no gradient norms: train_epoch with norms is the general path's
    m.engine.train_epoch(Xd, Td, np.arange(10), 5, norms=np.zeros(3))
    assert took() == {"CudaBackend._forward": 2}


def test_what_is_not_fused_goes_the_general_way():
    wide = fm.Model([D(cf.MAX_UNITS + 1, "relu"), D(2)], input_dim=3, backend="cuda", seed=0)
    assert not wide.engine.fused
    assert not fm.Model([D(4)], input_dim=3, backend="cuda", seed=0).engine._tiny_for(10 ** 6)
    m = backend.CudaBackend  # the constructor's switches override the module's
    narrow = _model("cuda", "float32")
    assert not m(narrow.net, narrow.dtype, narrow.engine.theta, narrow.engine.state,
                 fused=False).fused


def _sequence(engine, X, T, Xd, Td):
    """What each contract call gives (and theta, the buffers, the step after them)."""
    grad, losses = np.empty(engine.net.n_params, engine.dtype), np.zeros(3)
    out = {"loss_and_gradient": engine.loss_and_gradient(X, T, grad), "grad": grad,
           "train_step": engine.train_step(X, T),
           "train_step_checked": engine.train_step_checked(X, T)[0],
           "train_epoch": engine.train_epoch(Xd, Td, np.arange(len(X))[::-1].copy(), 4),
           "train_epochs": engine.train_epochs(Xd, Td, np.tile(np.arange(len(X)), (3, 1)),
                                               len(X), -1.0, losses),
           "epoch losses": losses, "predict": engine.predict(X), "evaluate": engine.evaluate(X, T)}
    return out | {"theta": engine.theta.copy(), "buffers": engine.state.buffers.copy(),
                  "step": engine.state.step.copy()}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_path_matches_the_reference_and_repeats_its_bits(path, dtype):
    """loss_and_gradient, train_step, train_step_checked, train_epoch (a short last batch),
    train_epochs, predict and evaluate: within the shared tolerances of the reference,
    and two models on one path give the same bits."""
    X, T = _data(14, dtype)
    want = _sequence(_model("numpy", dtype).engine, X, T, X, T)
    runs = []
    for _ in range(2):
        m = _model("cuda", dtype)
        runs.append(_sequence(m.engine, X, T, *m.engine.to_device(X, T)))
    for key, value in want.items():
        np.testing.assert_allclose(runs[0][key], value, **TOLERANCES[dtype], err_msg=key)
        assert np.asarray(runs[0][key]).tobytes() == np.asarray(runs[1][key]).tobytes(), key


@pytest.mark.parametrize("budget", [1 << 30, 16], ids=["copied", "streamed"])
def test_predict_and_evaluate_in_chunks_give_the_same_bits_from_host_and_device(path, budget,
                                                                                 monkeypatch):
    """Chunks of rules.predict_rows rows (4 here) from host or device arrays, into host or
    device outputs: the same bits each way, the reference's values."""
    monkeypatch.setattr(backend, "DEVICE_BUDGET_BYTES", budget)
    X, T = _data(10)
    m, ref = _model("cuda", "float64"), _model("numpy", "float64")
    m.engine._predict_rows = 4
    host = m.engine.predict(X)
    device_out = cuda.device_array((10, 3))
    assert m.engine.predict(cuda.to_device(X), device_out) is device_out
    assert device_out.copy_to_host().tobytes() == host.tobytes()
    assert m.engine.predict(cuda.to_device(X)).copy_to_host().tobytes() == host.tobytes()
    loss = m.engine.evaluate(X, T)
    assert np.float64(m.engine.evaluate(cuda.to_device(X), cuda.to_device(T))) == loss
    np.testing.assert_allclose(host, ref.predict(X), **TOLERANCES["float64"])
    np.testing.assert_allclose(loss, ref.evaluate(X, T), **TOLERANCES["float64"])
    # and a fit on that budget (streamed past it) trains like the reference
    m.fit(X, T, epochs=2, batch_size=4, shuffle=False)
    ref.fit(X, T, epochs=2, batch_size=4, shuffle=False)
    np.testing.assert_allclose(m.engine.theta, ref.engine.theta, **TOLERANCES["float64"])


def test_train_epochs_is_k_train_epoch_calls_until_divergence(path):
    """SGD with momentum at lr 0.2 on a 4-8-2 linear regression diverges in its second
    epoch: train_epochs stops there with status 2, bit for bit epoch-by-epoch train_epoch."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4)).astype("float32")
    T = (X @ rng.normal(size=(4, 2))).astype("float32")

    def diverging():
        return fm.Model([D(8, "linear"), D(2)], input_dim=4, backend="cuda", dtype="float32",
                        optimizer=fm.SGD(lr=0.2, momentum=0.9), seed=0)
    single, chunked = diverging(), diverging()
    orders = np.tile(np.arange(64), (20, 1))
    expected = []
    with np.errstate(all="ignore"):
        for order in orders:
            expected.append(single.engine.train_epoch(X, T, order, 16))
            if not (np.isfinite(expected[-1]) and np.isfinite(single.engine.theta).all()
                    and np.isfinite(single.engine.state.buffers).all()):
                break
        bad = len(expected) - 1
        assert 1 <= bad < 19, "the setup no longer diverges after a clean epoch"
        losses = np.zeros(20)
        assert chunked.engine.train_epochs(X, T, orders, 16, -1.0, losses) == (bad, 2)
    np.testing.assert_array_equal(losses[:bad + 1], expected)
    assert _bits(chunked) == _bits(single)


def test_the_step_count_stays_right_when_paths_mix(path):
    """Adam's bias correction reads the step count: fused steps (counted on the device),
    general-path epochs (gradient norms: counted on the host), a rolled-back step and a
    step count the Model writes all reach the next update, as on the reference."""
    X, T = _data(10)
    m, ref = _model("cuda", "float64"), _model("numpy", "float64")
    Xd, Td = m.engine.to_device(X, T)
    with np.errstate(all="ignore"):
        for engine, (x, t) in ((m.engine, (Xd, Td)), (ref.engine, (X, T))):
            engine.train_step(X, T)
            engine.train_epoch(x, t, np.arange(10), 4, norms=np.zeros(3))
            engine.train_step(X, T)
            engine.state.hyper[LR] = np.inf      # the update sends theta to inf: undone
            assert engine.train_step_checked(X, T)[1] == 2
            engine.state.hyper[LR] = 0.01
            engine.train_epoch(x, t, np.arange(10), 5)
            engine.state.step[0] = 40            # as a Model load or set_state writes it
            engine.train_step(X, T)
    assert m.engine.state.step[0] == ref.engine.state.step[0] == 41
    np.testing.assert_allclose(m.engine.theta, ref.engine.theta, **TOLERANCES["float64"])
    np.testing.assert_allclose(m.engine.state.buffers, ref.engine.state.buffers,
                               **TOLERANCES["float64"])


def test_overflow_in_a_kernel_is_inf_not_a_warning(path):
    """A GPU computes inf without a word; the simulator's NumPy-scalar threads would
    warn, and under warnings-as-errors stop mid-kernel: its threads compute quietly."""
    import warnings
    m = _model("cuda", "float32", fm.SGD(lr=0.1))
    m.set_weights([w * 1e30 for w in m.get_weights()])
    X, T = _data(6, "float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not np.isfinite(m.engine.loss_and_gradient(X * 1e30, T,
                                                          np.empty(m.net.n_params, "float32")))
        assert m.engine.train_step_checked(X * 1e30, T)[1] == 2
