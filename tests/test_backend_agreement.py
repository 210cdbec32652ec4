"""Every compiled backend against the NumPy reference, at the backend contract.

For every activation x loss x optimiser x dtype: predict, evaluate,
loss_and_gradient, one train_step and one train_epoch (shuffled, ragged last
batch) give the reference's numbers within ``TOLERANCES``. Then odd shapes (one
row, one unit, one input column, sizes off the SIMD widths, batches bigger
than a workspace chunk) and whole training runs through the Model API.
"""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp import activations, losses, optimizers
from fastmlp.backends import get_backend
from fastmlp.backends.reference import NumpyBackend
from fastmlp.datasets import load_digits, load_vehicles, standardize, train_test_split
from fastmlp.network import Network
from fastmlp.optimizers import OptimizerState

from tolerances import TOLERANCES

# Non-default parameters, so a kernel that ignores one is caught.
PARAMS = {"linear": {"a": 0.8}, "leaky_relu": {"alpha": 0.1}, "prelu": {"alpha": 0.2},
          "elu": {"alpha": 0.7}}
# Built from the tables, so a new activation, loss or optimiser is covered with no edit
# here (tests/test_add_one.py checks it). Softmax, not elementwise, is an output only.
HIDDEN = [a.name for a in activations.ACTIVATIONS.values() if a.derivative is not None]
# (hidden, output, loss): every activation under every loss it can meet: a loss that
# needs an output activation behind it, any other behind an output like the hidden layers.
CASES = ([(a, l.output or a, l.name) for l in losses.LOSSES.values() for a in HIDDEN]
         + [("tanh", "softmax", l.name) for l in losses.LOSSES.values() if not l.output])
# Every optimiser of the table with its defaults, and these settings of them besides.
OPTIMIZERS = {name: cls for name, cls in optimizers.OPTIMIZERS.items()}
OPTIMIZERS |= {
    "sgd": lambda: fm.SGD(lr=0.1),
    "momentum": lambda: fm.SGD(lr=0.1, momentum=0.9),
    "nesterov": lambda: fm.SGD(lr=0.1, momentum=0.9, nesterov=True),
    "weight_decay": lambda: fm.SGD(lr=0.1, weight_decay=0.05),
    "adam": lambda: fm.Adam(lr=0.01, weight_decay=0.01),
}


def dense(units, name):
    return fm.Dense(units, activation=name, **PARAMS.get(name, {}))


class Pair:
    """The reference and one compiled backend on the same network, weights and state."""

    def __init__(self, backend, layers, input_dim, loss, optimizer, dtype, seed=0):
        self.net = Network(layers, input_dim, loss)
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        # Noise on every parameter: non-zero biases, prelu alphas that differ per unit.
        theta = self.net.init_params(rng, np.float64)
        theta += 0.3 * rng.standard_normal(theta.shape)
        self.engines, self.thetas, self.states = [], [], []
        for cls in (NumpyBackend, get_backend(backend)):
            self.thetas.append(theta.astype(self.dtype))
            self.states.append(OptimizerState.new(optimizer, self.net.n_params, self.dtype))
            self.engines.append(cls(self.net, self.dtype, self.thetas[-1], self.states[-1]))

    def data(self, n, seed=1):
        rng = np.random.default_rng(seed)
        X = rng.standard_normal((n, self.net.input_dim)).astype(self.dtype)
        k = self.net.output_dim
        if self.net.loss.name == "cross_entropy":
            T = np.eye(k, dtype=self.dtype)[rng.integers(0, k, n)]
        else:
            T = rng.random((n, k)).astype(self.dtype)
        return X, T

    def both(self, method, *args):
        """method run on (reference, compiled), each on its own theta and state."""
        return [getattr(engine, method)(*args) for engine in self.engines]

    def assert_params_agree(self, tol, what):
        for engine in self.engines:   # a device backend copies its parameters back
            getattr(engine, "pull", lambda: None)()
        ref, other = self.thetas
        np.testing.assert_allclose(other, ref, **tol, err_msg=f"theta after {what}")
        np.testing.assert_allclose(self.states[1].buffers, self.states[0].buffers, **tol,
                                   err_msg=f"optimiser state after {what}")
        assert self.states[1].step[0] == self.states[0].step[0]


def check_forward_and_gradient(pair, X, T, tol):
    ref, other = pair.both("predict", X)
    assert other.shape == ref.shape and other.dtype == pair.dtype
    np.testing.assert_allclose(other, ref, **tol, err_msg="predict")
    ref, other = pair.both("evaluate", X, T)
    assert other == pytest.approx(ref, rel=tol["rtol"], abs=tol["atol"]), "evaluate"
    grads = [np.full(pair.net.n_params, np.nan, dtype=pair.dtype) for _ in range(2)]
    losses = [engine.loss_and_gradient(X, T, g) for engine, g in zip(pair.engines, grads)]
    assert losses[1] == pytest.approx(losses[0], rel=tol["rtol"], abs=tol["atol"]), "loss"
    np.testing.assert_allclose(grads[1], grads[0], **tol, err_msg="loss_and_gradient")


def check_training(pair, X, T, tol, batch_size, seed=2):
    ref, other = pair.both("train_step", X, T)
    assert other == pytest.approx(ref, rel=tol["rtol"], abs=tol["atol"]), "train_step loss"
    pair.assert_params_agree(tol, "train_step")
    perm = np.random.default_rng(seed).permutation(len(X))
    ref, other = pair.both("train_epoch", X, T, perm, batch_size)
    assert other == pytest.approx(ref, rel=tol["rtol"], abs=tol["atol"]), "train_epoch loss"
    pair.assert_params_agree(tol, "train_epoch")


@pytest.mark.parametrize("hidden, output, loss", CASES)
def test_forward_loss_and_gradient(compiled_backend, hidden, output, loss, dtype, tol):
    pair = Pair(compiled_backend, [dense(6, hidden), dense(3, output)], 4, loss,
                fm.SGD(), dtype)
    check_forward_and_gradient(pair, *pair.data(9), tol)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("hidden, output, loss", CASES)
def test_train_step_and_epoch(compiled_backend, hidden, output, loss, optimizer, dtype, tol):
    pair = Pair(compiled_backend, [dense(6, hidden), dense(5, hidden), dense(3, output)], 4,
                loss, OPTIMIZERS[optimizer](), dtype)
    # 8 rows in batches of 3: the last batch has 2
    check_training(pair, *pair.data(8), tol, batch_size=3)


EXTREMES = [-800, -100, -30, -5, -1, -0.3, -0.0625, -1e-3, -1e-8, -1e-300, 0.0,
            1e-300, 1e-8, 1e-3, 0.0625, 0.3, 1, 5, 30, 100, 800]


@pytest.mark.parametrize("activation", HIDDEN + ["softmax"])
def test_extreme_and_tiny_pre_activations(compiled_backend, activation, dtype, tol):
    """Identity weights put every pre-activation on a grid from -800 to 800 (and
    down to 1e-300): saturation, cancellation and underflow in each activation."""
    k = len(EXTREMES)
    pair = Pair(compiled_backend, [dense(k, activation)], k, "mse", fm.SGD(), dtype)
    for theta in pair.thetas:
        W, b, alpha = pair.net.layer_views(theta)[0]
        W[...], b[...] = np.eye(k), 0.0
    for engine in pair.engines:       # ... and takes the host's new ones
        getattr(engine, "push", lambda: None)()
    X = np.array([EXTREMES, EXTREMES[::-1]], dtype=pair.dtype)
    T = np.random.default_rng(0).random((2, k)).astype(pair.dtype)
    check_forward_and_gradient(pair, X, T, tol)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_blas_sized_layers(compiled_backend, optimizer, dtype, tol):
    """Layers big enough for the BLAS path, with widths off every SIMD multiple."""
    pair = Pair(compiled_backend, [dense(67, "relu"), dense(33, "tanh"), dense(10, "softmax")],
                71, "cross_entropy", OPTIMIZERS[optimizer](), dtype)
    X, T = pair.data(37)
    check_forward_and_gradient(pair, X, T, tol)
    check_training(pair, X, T, tol, batch_size=16)


@pytest.mark.parametrize("dims, n, batch_size", [
    ((1, 1, 1), 1, 1),      # one row, one unit, one input column
    ((1, 1, 1), 5, 1),      # per-sample SGD
    ((3, 1, 2), 4, 3),      # a one-unit bottleneck
    ((1, 9, 1), 7, 7),      # one input column, full batch
    ((17, 9, 5), 13, 4),    # nothing a multiple of 8 or 16
    ((5, 33, 1), 1, 1),     # one row through a wider layer
])
def test_odd_shapes(compiled_backend, dims, n, batch_size, dtype, tol):
    layers = [dense(u, "tanh") for u in dims[1:-1]] + [dense(dims[-1], "sigmoid")]
    pair = Pair(compiled_backend, layers, dims[0], "mse", fm.SGD(lr=0.5, momentum=0.5), dtype)
    X, T = pair.data(n)
    check_forward_and_gradient(pair, X, T, tol)
    check_training(pair, X, T, tol, batch_size)


@pytest.mark.parametrize("optimizer", sorted(optimizers.OPTIMIZERS))
def test_more_rows_than_one_chunk(compiled_backend, optimizer, dtype, tol):
    """Predict, evaluate and full-batch gradients over more rows than one buffer holds."""
    pair = Pair(compiled_backend, [dense(300, "relu"), dense(3, "softmax")], 5,
                "cross_entropy", OPTIMIZERS[optimizer](), dtype)
    X, T = pair.data(2100)
    check_forward_and_gradient(pair, X, T, tol)
    check_training(pair, X, T, tol, batch_size=1500)


def test_train_epoch_overwrites_no_caller_data(compiled_backend, dtype):
    pair = Pair(compiled_backend, [dense(4, "relu"), dense(2, "sigmoid")], 3, "mse",
                fm.SGD(lr=0.1), dtype)
    X, T = pair.data(10)
    perm = np.random.default_rng(0).permutation(10)
    saved = X.copy(), T.copy(), perm.copy()
    pair.both("train_epoch", X, T, perm, 4)
    for before, after in zip(saved, (X, T, perm)):
        np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize("batch_size", [6, 1])
def test_vehicles_train_to_the_same_predictions(compiled_backend, dtype, batch_size):
    """The lessons' 3-4-2 sigmoid network under MSE, trained through the Model API."""
    X, Y = load_vehicles()
    X = standardize(X)[0]
    preds = []
    for backend in ("numpy", compiled_backend):
        model = fm.Model([fm.Dense(4, activation="sigmoid"), fm.Dense(2, activation="sigmoid")],
                         input_dim=3, loss="mse", optimizer=fm.SGD(lr=0.5), backend=backend,
                         dtype=dtype, seed=0)
        history = model.fit(X, Y, epochs=100, batch_size=batch_size)
        preds.append(model.predict(X))
        assert history.history["loss"][-1] < history.history["loss"][0]
    # differences grow over 100 epochs of float32 updates, so a looser bound there
    tol = TOLERANCES[dtype] if dtype == "float64" else {"rtol": 1e-3, "atol": 1e-4}
    np.testing.assert_allclose(preds[1], preds[0], **tol)
    assert (preds[1].argmax(1) == Y.argmax(1)).all()


def test_digits_train_to_the_same_accuracy(compiled_backend, dtype):
    """The CLI's data set and network (64-64-10 relu/softmax, Adam, shuffled batches of 32):
    every backend reaches the reference's held-out accuracy with the same predictions."""
    X, y = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(X, y, 0.2, seed=0)
    X_train, X_test = standardize(X_train, X_test)[:2]
    results = []
    for backend in ("numpy", compiled_backend):
        model = fm.Model([fm.Dense(64, activation="relu"), fm.Dense(10, activation="softmax")],
                         input_dim=64, loss="cross_entropy", optimizer=fm.Adam(lr=3e-3),
                         backend=backend, dtype=dtype, seed=0)
        model.fit(X_train, y_train, epochs=5, batch_size=32)
        proba = model.predict(X_test)
        results.append((proba, (proba.argmax(1) == y_test).mean()))
    (p_ref, acc_ref), (p, acc) = results
    assert acc_ref >= 0.93
    assert acc == acc_ref
    # float32 rounding differences compound over 225 Adam steps (measured: < 1e-6)
    tol = TOLERANCES[dtype] if dtype == "float64" else {"rtol": 0, "atol": 1e-4}
    np.testing.assert_allclose(p, p_ref, **tol)
