"""The fully fused CUDA kernels (kernels/cuda_fused.py) against the NumPy reference.

Runs on a GPU, or under the Numba CUDA simulator in its own process:
``NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda_fused.py``; skipped where
numba.cuda has neither. Each simulated GPU thread is a Python thread, so the shapes are
small: a few dozen rows, tiles of 4 rows over 3 blocks of 32 threads (several tiles per
block, a short last tile), which exercises every loop the big shapes do.
"""
import itertools

import numpy as np
import pytest

cuda = pytest.importorskip("numba.cuda")
if not cuda.is_available():
    pytest.skip("numba.cuda has no GPU here (set NUMBA_ENABLE_CUDASIM=1 for the simulator)",
                allow_module_level=True)

from fastmlp.kernels import cuda_fused as cf

import fastmlp as fm
from fastmlp import rules
from fastmlp.codes import LR, SOFTMAX
from fastmlp.datasets import load_vehicles, standardize
from fastmlp.network import Network

THREADS, BLOCKS, TILE = 32, 3, 4
ROWS = 19   # not a multiple of the tile: the last tile is short

D = fm.Dense
# Every activation, every loss; prelu inside and on the output; softmax under MSE too.
NETS = {
    "relu-leaky-prelu-elu mse": ([D(6, "relu"), D(5, "leaky_relu", alpha=0.1), D(4, "prelu"),
                                  D(3, "elu", alpha=0.7)], "mse"),
    "sigmoid-tanh-piecewise-linear mse": ([D(5, "sigmoid"), D(4, "tanh"),
                                           D(4, "piecewise_linear"), D(2, "linear", a=0.7)], "mse"),
    "softplus-step-sign-prelu mse": ([D(5, "softplus"), D(4, "step"), D(4, "sign"),
                                      D(2, "prelu", alpha=0.3)], "mse"),
    "tanh-prelu-softmax cross_entropy": ([D(6, "tanh"), D(5, "prelu"), D(3, "softmax")],
                                         "cross_entropy"),
    "relu-sigmoid binary_cross_entropy": ([D(6, "relu"), D(2, "sigmoid")], "binary_cross_entropy"),
    "tanh-softmax mse": ([D(5, "tanh"), D(3, "softmax")], "mse"),
}
OPTIMIZERS = {
    "sgd": lambda: fm.SGD(lr=0.1),
    "momentum": lambda: fm.SGD(lr=0.1, momentum=0.9),
    "nesterov+decay": lambda: fm.SGD(lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.01),
    "adam+decay": lambda: fm.Adam(lr=0.01, weight_decay=0.01),
}


def _model(name, dtype, optimizer=None, seed=0):
    layers, loss = NETS[name]
    return fm.Model(layers, input_dim=3, loss=loss, optimizer=optimizer, backend="numpy",
                    dtype=dtype, seed=seed)


def _data(model, n, seed=1):
    """X (n, 3) and targets fit for the model's loss, in its dtype."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)).astype(model.dtype)
    k, loss = model.net.output_dim, model.net.loss.name
    if loss == "cross_entropy":
        T = np.eye(k)[rng.integers(0, k, n)]
    elif loss == "binary_cross_entropy":
        T = rng.uniform(size=(n, k))
    else:
        T = rng.normal(size=(n, k))
    return X, T.astype(model.dtype)


def _fused(model):
    return cf.FusedStep(model.net, model.dtype, threads=THREADS, max_blocks=BLOCKS, tile=TILE)


def _tol(dtype):
    return {"rtol": 2e-4, "atol": 2e-5} if dtype == "float32" else {"rtol": 1e-9, "atol": 1e-11}


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.mark.parametrize("name", NETS)
def test_gradient_matches_reference(name, dtype):
    """loss_and_gradient of the rows perm[start:start + count], gathered on the device."""
    model = _model(name, dtype)
    X, T = _data(model, ROWS + 6)
    perm = np.random.default_rng(2).permutation(len(X)).astype(np.int64)
    start, idx = 3, perm[3:3 + ROWS]
    want = np.zeros(model.net.n_params, dtype=dtype)
    want_loss = model.engine.loss_and_gradient(X[idx], T[idx], want)

    grad, loss = cuda.device_array(model.net.n_params, dtype=dtype), cuda.device_array(2)
    _fused(model).gradient(cuda.to_device(model.engine.theta), cuda.to_device(X),
                           cuda.to_device(T), cuda.to_device(perm), start, ROWS, grad, loss,
                           slot=1)
    np.testing.assert_allclose(loss.copy_to_host()[1], want_loss, **_tol(dtype))
    np.testing.assert_allclose(grad.copy_to_host(), want, **_tol(dtype))
    assert np.abs(want).max() > 0


@pytest.mark.parametrize("name", NETS)
def test_predict_and_evaluate_match_reference(name, dtype):
    model = _model(name, dtype)
    X, T = _data(model, ROWS)
    step, theta = _fused(model), cuda.to_device(model.engine.theta)
    out, loss = cuda.device_array((ROWS, model.net.output_dim), dtype=dtype), cuda.device_array(1)
    step.predict(theta, cuda.to_device(X), out)
    np.testing.assert_allclose(out.copy_to_host(), model.engine.predict(X), **_tol(dtype))
    step.evaluate(theta, cuda.to_device(X), cuda.to_device(T), loss)
    np.testing.assert_allclose(loss.copy_to_host()[0], model.engine.evaluate(X, T), **_tol(dtype))


def _device_state(model):
    state = model.engine.state
    return [cuda.to_device(a) for a in (model.engine.theta, state.buffers, state.hyper, state.step)]


@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_train_steps_match_reference(opt, dtype):
    """Two train steps (Adam's bias correction needs the step count right) on batches of
    an epoch order: theta, the optimiser buffers, the step and each batch's loss."""
    model = _model("tanh-prelu-softmax cross_entropy", dtype, OPTIMIZERS[opt]())
    X, T = _data(model, 2 * ROWS)
    perm = np.random.default_rng(3).permutation(len(X)).astype(np.int64)
    d_theta, d_buffers, d_hyper, d_step = _device_state(model)
    d_X, d_T, d_perm, d_loss = cuda.to_device(X), cuda.to_device(T), cuda.to_device(perm), \
        cuda.device_array(2)
    fused, want = _fused(model), []
    for b, (start, count) in enumerate([(0, ROWS), (ROWS, ROWS - 2)]):
        fused.train(d_theta, d_buffers, d_hyper, d_step, model.engine.state.code, d_X, d_T,
                    d_perm, start, count, d_loss, slot=b)
        idx = perm[start:start + count]
        want.append(model.engine.train_step(X[idx], T[idx]))
    state = model.engine.state
    np.testing.assert_allclose(d_loss.copy_to_host(), want, **_tol(dtype))
    np.testing.assert_allclose(d_theta.copy_to_host(), model.engine.theta, **_tol(dtype))
    np.testing.assert_allclose(d_buffers.copy_to_host(), state.buffers, **_tol(dtype))
    assert d_step.copy_to_host()[0] == state.step[0] == 2


def test_results_are_the_same_bits_every_run():
    """No atomics: the partial gradients are summed in block order."""
    model = _model("relu-leaky-prelu-elu mse", "float32")
    X, T = _data(model, ROWS)
    fused, rows = _fused(model), cuda.to_device(np.arange(ROWS, dtype=np.int64))
    args = cuda.to_device(model.engine.theta), cuda.to_device(X), cuda.to_device(T), rows, 0, ROWS
    runs = []
    for _ in range(2):
        grad, loss = cuda.device_array(model.net.n_params, dtype="float32"), cuda.device_array(1)
        fused.gradient(*args, grad, loss)
        runs.append((grad.copy_to_host(), loss.copy_to_host()))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def _vehicles(dtype, optimizer):
    X, Y = load_vehicles()
    model = fm.Model([fm.Dense(4, activation="sigmoid"), fm.Dense(2, activation="sigmoid")],
                     input_dim=3, loss="mse", optimizer=optimizer, backend="numpy", dtype=dtype,
                     seed=0)
    return model, standardize(X)[0].astype(dtype), Y.astype(dtype)


@pytest.mark.parametrize("batch_size, opt", [(1, "sgd"), (4, "adam+decay"), (2, "nesterov+decay")])
def test_tiny_epochs_match_reference_train_epoch(batch_size, opt, dtype):
    """The lessons' 3-4-2 vehicles net: several epochs in one launch, each the reference's
    train_epoch (batch 4 of 6 rows: a short last batch)."""
    model, X, Y = _vehicles(dtype, OPTIMIZERS[opt]())
    orders = np.stack([np.random.default_rng(e).permutation(len(X)) for e in range(4)])
    d_theta, d_buffers, d_hyper, d_step = _device_state(model)
    losses, status = cuda.device_array(len(orders)), cuda.device_array(2, dtype=np.int64)
    tiny = cf.TinyEpochs(model.net, dtype, batch_size, threads=THREADS)
    tiny.run(d_theta, d_buffers, d_hyper, d_step, model.engine.state.code,
             rules.buffers_in_use(model.engine.state), cuda.to_device(X), cuda.to_device(Y),
             cuda.to_device(orders), losses, status)
    want = [model.engine.train_epoch(X, Y, order, batch_size) for order in orders]
    state = model.engine.state
    assert list(status.copy_to_host()) == [len(orders), 0]
    np.testing.assert_allclose(losses.copy_to_host(), want, **_tol(dtype))
    np.testing.assert_allclose(d_theta.copy_to_host(), model.engine.theta, **_tol(dtype))
    np.testing.assert_allclose(d_buffers.copy_to_host(), state.buffers, **_tol(dtype))
    assert d_step.copy_to_host()[0] == state.step[0]


def test_tiny_epochs_stop_at_tol_and_on_divergence():
    """status (epochs done, 1) at the first epoch whose loss <= tol; (clean epochs, 2) when
    training blows up, that epoch's loss written."""
    model, X, Y = _vehicles("float64", fm.SGD(lr=0.5))
    orders = np.tile(np.arange(len(X)), (5, 1))
    d_theta, d_buffers, d_hyper, d_step = _device_state(model)
    losses, status = cuda.device_array(5), cuda.device_array(2, dtype=np.int64)
    tiny = cf.TinyEpochs(model.net, "float64", 6, threads=THREADS)
    run_args = (model.engine.state.code, 0, cuda.to_device(X), cuda.to_device(Y),
                cuda.to_device(orders), losses, status)
    first = model.engine.train_epoch(X, Y, orders[0], 6)
    tiny.run(d_theta, d_buffers, d_hyper, d_step, *run_args, tol=first * (1 + 1e-9))
    assert list(status.copy_to_host()) == [1, 1] and d_step.copy_to_host()[0] == 1

    blown = model.engine.state.hyper.copy()
    blown[LR] = np.inf   # the first update sends theta to +-inf
    tiny.run(d_theta, d_buffers, cuda.to_device(blown), d_step, *run_args)
    assert list(status.copy_to_host()) == [0, 2]
    assert not np.isfinite(d_theta.copy_to_host()).all()


def test_what_each_path_supports():
    net = Network([D(64, "relu"), D(64, "relu"), D(16)], input_dim=64, loss="mse")
    assert cf.supports_fused(net, "float32") and cf.supports_fused(net, "float64")
    assert not cf.supports_tiny(net, 1)
    wide = Network([D(cf.MAX_UNITS + 1, "relu"), D(2)], input_dim=3, loss="mse")
    assert not cf.supports_fused(wide)
    vehicles = Network([D(4, "sigmoid"), D(2, "sigmoid")], input_dim=3, loss="mse")
    assert cf.supports_tiny(vehicles, 1, "float64") and cf.supports_tiny(vehicles, 64, "float64")
    assert not cf.supports_tiny(vehicles, 10_000)
    with pytest.raises(ValueError, match="not tiny"):
        cf.TinyEpochs(net, "float32", 1)
    with pytest.raises(ValueError, match="tile"):
        cf.FusedStep(net, "float32", tile=10_000)


@pytest.mark.parametrize("name", NETS)
def test_layouts_fit_and_do_not_overlap(name, dtype):
    """Every region of both layouts lies inside the shared area, none overlapping."""
    net = _model(name, dtype).net
    units, limit = net.dims[1:], cf._act_elems(dtype)
    tile = cf.fused_tile(net, dtype)
    assert cf.MIN_TILE <= tile <= cf.MAX_TILE
    layout, x_off, d0, d1 = cf.train_layout(net, tile)
    regions = [(x_off, tile * net.input_dim), (d0, tile * units.max()), (d1, tile * units.max())]
    regions += [(layout[l, c], tile * units[l]) for l in range(len(units)) for c in (0, 1)]
    _assert_disjoint(regions, limit)
    tile = cf.predict_tile(net, dtype)
    layout, x_off = cf.predict_layout(net, tile)
    width = net.dims[:-1].max()
    regions = [(0, tile * width), (tile * width, tile * width),
               (layout[-1, 0], tile * units[-1]), (layout[-1, 1], tile * units[-1])]
    _assert_disjoint(regions, limit)
    assert all(layout[l, 0] == layout[l, 1] < 2 * tile * width for l in range(len(units) - 1))
    assert net.layers[-1].activation.code != SOFTMAX or layout[-1, 0] != layout[-1, 1]


def _assert_disjoint(regions, limit):
    regions = sorted((int(start), int(size)) for start, size in regions)
    for (a, n), (b, _) in itertools.pairwise(regions):
        assert a + n <= b
    assert regions[0][0] >= 0 and sum(regions[-1]) <= limit
