"""The benchmark rows, their data and start, and the fastmlp cases that time them.

A workload is one timed call (``kind``): "fit" (``epochs`` epochs of mini-batch
SGD over ``rows`` rows in batches of ``batch_size``, each epoch over a fresh
permutation from the model's generator), "step" (one step on the batch: plain
SGD, or Adam with its defaults where ``optimizer="adam"``) or "predict". Every
column (see columns.py) starts from the same weights (those
of a fastmlp model built with seed 0), the same generator state and the same
C-contiguous float32 data, so each does the same work; ``same_work`` in
columns.py checks it.

fastmlp is timed two ways: the public API (``model.fit``, ``model.train_on_batch``,
``model.predict``: what users call, validation included) and the kernel level
(``model.engine``: calls on already validated data, below the Python API).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

import fastmlp as fm

DTYPE = np.float32
LR = 0.01
VEHICLES_LR = 0.5   # the README's API example
SEED = 0
ADAM = dict(beta1=0.9, beta2=0.999, eps=1e-8)   # every column's Adam: these, bias-corrected


@dataclass(frozen=True)
class Workload:
    """One timed call; ``samples`` = rows processed per call (rows x epochs for fit)."""

    name: str
    dims: tuple            # input width, then each layer's units
    hidden: str            # hidden-layer activation
    output: str            # output activation
    loss: str
    rows: int
    kind: str = "step"     # "fit", "step" or "predict"
    epochs: int = 1
    batch_size: int = 0    # fit only
    lr: float = LR
    optimizer: str = "sgd"  # or "adam": fm.Adam(lr) with beta1, beta2, eps at ADAM's values
    data: str = "random"   # or "vehicles": the README's six rows; or "fortran": random,
                           # X Fortran-ordered (a DataFrame's values), for every column;
                           # or "float64": random, X float64 (for the float32 network);
                           # or "raw": random, each column of X shifted and stretched
    scaled: bool = False   # the model standardises its inputs (set_input_scaling): every
                           # column computes (X - mean) / scale per call (see scaling)
    about: str = ""

    @property
    def converts(self):
        """Whether a call converts X before the network reads it (float64 X, scaling)."""
        return self.data == "float64" or self.scaled

    @property
    def samples(self):
        return self.rows * self.epochs

    @property
    def trains(self):
        return self.kind != "predict"

    @property
    def flops(self):
        """GEMM FLOPs of one call (see train_flops / predict_flops)."""
        if self.kind == "predict":
            return predict_flops(self.dims, self.rows)
        return train_flops(self.dims, self.samples)  # linear in rows

    def layers(self):
        acts = [self.hidden] * (len(self.dims) - 2) + [self.output]
        return [fm.Dense(u, activation=a) for u, a in zip(self.dims[1:], acts)]

    def make_optimizer(self):
        if self.optimizer == "adam":
            return fm.Adam(lr=self.lr, **ADAM)
        return fm.SGD(lr=self.lr)

    def model(self, backend):
        """The fastmlp model of this workload: seed 0, float32, SGD(lr) or Adam(lr), with
        input scaling (``scaling``) where ``scaled``."""
        model = fm.Model(self.layers(), input_dim=self.dims[0], loss=self.loss,
                         optimizer=self.make_optimizer(), backend=backend, dtype="float32",
                         seed=SEED)
        if self.scaled:
            model.set_input_scaling(*scaling(self))
        return model


_VEHICLES = dict(dims=(3, 4, 2), hidden="sigmoid", output="sigmoid", loss="mse", rows=6,
                 lr=VEHICLES_LR, data="vehicles")
_MNIST = dict(dims=(784, 256, 128, 10), hidden="relu", output="softmax", loss="cross_entropy")
_NARROW = dict(dims=(784, 16, 10), hidden="relu", output="softmax", loss="cross_entropy")
_WIDE = dict(dims=(2048, 2048, 2048, 10), hidden="relu", output="softmax", loss="cross_entropy")
VEHICLES_EPOCHS = 1000
WORKLOADS = [
    Workload("vehicles-fit", **_VEHICLES, kind="fit", epochs=VEHICLES_EPOCHS, batch_size=6,
             about=f"vehicles 3-4-2 sigmoid/MSE, fit(epochs={VEHICLES_EPOCHS}, batch_size=6)"),
    Workload("vehicles-step", **_VEHICLES, kind="step",
             about="vehicles, train_on_batch on the 6 rows"),
    Workload("vehicles-b1", **_VEHICLES, kind="fit", epochs=1, batch_size=1,
             about="vehicles, fit(epochs=1, batch_size=1): one 6-row epoch of per-sample SGD"),
    Workload("predict-1", **_MNIST, rows=1, kind="predict",
             about="1-row predict, 784-256-128-10 relu/softmax"),
    Workload("W2", **_MNIST, rows=64, about="784-256-128-10 relu/softmax CE, train_on_batch b64"),
    Workload("W2-adam", **_MNIST, rows=64, lr=1e-3, optimizer="adam",
             about="W2 with Adam(lr=1e-3): train_on_batch b64"),
    Workload("W3", **_MNIST, rows=512, about="784-256-128-10 relu/softmax CE, train_on_batch b512"),
    Workload("W4", **_WIDE, rows=512, about="2048-2048-2048-10 relu/softmax CE, train_on_batch b512"),
    # fit's epochs: where the AVX-512 build's float32 GEMM loops run by default
    Workload("W2-fit", **_MNIST, rows=4096, kind="fit", epochs=1, batch_size=64,
             about="784-256-128-10 relu/softmax CE, fit(epochs=1, batch_size=64) over 4,096 rows"),
    Workload("W3-fit", **_MNIST, rows=4096, kind="fit", epochs=1, batch_size=512,
             about="784-256-128-10 relu/softmax CE, fit(epochs=1, batch_size=512) over 4,096 rows"),
    Workload("predict-W2", **_MNIST, rows=512, kind="predict", about="predict b512, W2 net"),
    Workload("predict-W4", **_WIDE, rows=512, kind="predict", about="predict b512, W4 net"),
]
# W3 with other hidden activations. Not in the default run: report.py --workloads W3-tanh,...
ACTIVATION_WORKLOADS = [
    Workload(f"W3-{act}", **{**_MNIST, "hidden": act}, rows=512,
             about=f"784-256-128-10 {act}/softmax CE, train_on_batch b512")
    for act in ("tanh", "sigmoid")
]
# A big predict of X in rows and of the same X Fortran-ordered, as a single-dtype
# DataFrame's values are (which numpy, torch and onnxruntime take as they are, JAX at
# set-up). Not in the default run: report.py --workloads predict-8192,predict-8192-F
LAYOUT_WORKLOADS = [
    Workload("predict-8192", **_MNIST, rows=8192, kind="predict",
             about="predict of 8,192 rows, W2 net, X C-ordered"),
    Workload("predict-8192-F", **_MNIST, rows=8192, kind="predict", data="fortran",
             about="the same X Fortran-ordered (a DataFrame's values)"),
]
# A big predict of X as users often hold it: float64 (for the float32 network), or raw
# features for a model that standardises them (set_input_scaling, as a `fastmlp train
# --save` model does), on the W2 net and on a narrow one where converting X is most of
# the call; and the narrow net on float32 rows, C- and Fortran-ordered, beside them.
# Every column converts per call (fastmlp inside predict). Not in the default run:
# report.py --workloads predict-8192-f64,predict-8192-scaled,narrow-8192,...
CONVERSION_WORKLOADS = [
    Workload("predict-8192-f64", **_MNIST, rows=8192, kind="predict", data="float64",
             about="predict of 8,192 float64 rows, W2 net (float32)"),
    Workload("predict-8192-scaled", **_MNIST, rows=8192, kind="predict", data="raw",
             scaled=True,
             about="predict of 8,192 raw rows, W2 net with input scaling"),
    Workload("narrow-8192", **_NARROW, rows=8192, kind="predict",
             about="predict of 8,192 rows, 784-16-10 relu/softmax, X C-ordered"),
    Workload("narrow-8192-F", **_NARROW, rows=8192, kind="predict", data="fortran",
             about="the same, X Fortran-ordered (a DataFrame's values)"),
    Workload("narrow-8192-f64", **_NARROW, rows=8192, kind="predict", data="float64",
             about="the same, X float64"),
    Workload("narrow-8192-scaled", **_NARROW, rows=8192, kind="predict", data="raw",
             scaled=True,
             about="the same net with input scaling, raw float32 rows"),
]
# Micro-batches, as a server batching a few requests predicts: the W2 net on 9 rows (the
# fewest _sgemm.h's loops take, one more than the GEMV loops), 16 and 32. Not in the
# default run: report.py --workloads predict-9,predict-16,predict-32
MICRO_BATCH_WORKLOADS = [
    Workload(f"predict-{rows}", **_MNIST, rows=rows, kind="predict",
             about=f"predict of {rows} rows, W2 net")
    for rows in (9, 16, 32)
]
EXTRA_WORKLOADS = (ACTIVATION_WORKLOADS + LAYOUT_WORKLOADS + CONVERSION_WORKLOADS
                   + MICRO_BATCH_WORKLOADS)
BY_NAME = {w.name: w for w in WORKLOADS + EXTRA_WORKLOADS}


def vehicles_data():
    """The README's six rows (wheels, height, weight), standardized; one-hot car/bike."""
    X = np.array([[4, 6, 500], [4, 5.5, 600], [4, 5, 550],
                  [2, 3, 200], [2, 3.5, 150], [2, 4, 250]], dtype=float)
    X = (X - X.mean(0)) / X.std(0)
    labels = np.array([0, 0, 0, 1, 1, 1])
    return X, labels


@cache
def _data(w):
    if w.data == "vehicles":
        X, labels = vehicles_data()
    else:
        rng = np.random.default_rng(SEED)
        X = rng.standard_normal((w.rows, w.dims[0]))
        labels = rng.integers(0, w.dims[-1], w.rows)
        if w.data == "raw":  # features each of its own offset and spread
            X = X * rng.uniform(0.5, 4.0, w.dims[0]) + rng.uniform(-10.0, 10.0, w.dims[0])
    dtype = np.float64 if w.data == "float64" else DTYPE
    X = (np.asfortranarray if w.data == "fortran" else np.ascontiguousarray)(X, dtype=dtype)
    T = np.ascontiguousarray(np.eye(w.dims[-1], dtype=DTYPE)[labels])
    for a in (X, T, labels):
        a.flags.writeable = False  # shared by every column: nobody may change them
    return X, T, labels


def make_data(w):
    """(X (rows, in), one-hot T (rows, out), labels (rows,)): C-contiguous float32 (X
    Fortran-ordered where ``w.data`` is "fortran", float64 where it is "float64"),
    read-only, the same arrays for every column."""
    return _data(w)


@cache
def _scaling(w):
    X = make_data(w)[0].astype(np.float64)
    mean, scale = X.mean(axis=0), X.std(axis=0)
    for a in (mean, scale):
        a.flags.writeable = False
    return mean, scale


def scaling(w):
    """(mean, scale), float64 (in,): the input scaling of a ``scaled`` workload's model,
    X's column means and standard deviations; every column standardises X with them."""
    return _scaling(w)


@cache
def _start(w):
    state = w.model("numpy").get_state()
    theta = state["theta"]
    theta.flags.writeable = False
    return theta, state["rng_state"]


def start(w):
    """(theta (n_params,) float32 in get_weights() order, rng_state): every column's
    starting weights and the shuffling generator's state, those of ``w.model``."""
    return _start(w)


def start_rng(w):
    """A generator in the state of a fresh model's, to draw fit's permutations."""
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = start(w)[1]
    return rng


class FastmlpCase:
    """A workload on one fastmlp backend, through the public API (``level="api"``)
    or the backend object (``level="kernel"``). ``run()`` does one timed call."""

    def __init__(self, w, backend, level="api"):
        self.workload, self.backend, self.level = w, backend, level
        self.model = model = w.model(backend)
        X, T, _ = make_data(w)
        self.X, self.T = X, T
        if level == "api":
            self.run = {
                "fit": lambda: model.fit(X, T, epochs=w.epochs,
                                         batch_size=w.batch_size).history["loss"][-1],
                "step": lambda: model.train_on_batch(X, T),
                "predict": lambda: model.predict(X),
            }[w.kind]
        elif level == "kernel":
            engine = model.engine
            self.run = {"fit": self._kernel_fit, "step": lambda: engine.train_step(X, T),
                        "predict": lambda: engine.predict(X)}[w.kind]
        else:
            raise ValueError(f"level must be 'api' or 'kernel', got {level!r}")

    def _kernel_fit(self):
        """fit's work at the backend level: per epoch a permutation and one train_epoch."""
        w, model = self.workload, self.model
        loss = 0.0
        for _ in range(w.epochs):
            loss = model.engine.train_epoch(self.X, self.T, model.permutation(w.rows),
                                            w.batch_size)
        return loss

    def weights(self):
        return self.model.get_state()["theta"]


def train_flops(dims, rows):
    """FLOPs of the GEMMs in one train step: forward 2*B*in*out per layer,
    dW for every layer, dx for all but the first. Elementwise work is not counted."""
    per_layer = [2 * rows * a * b for a, b in zip(dims[:-1], dims[1:])]
    return 2 * sum(per_layer) + sum(per_layer[1:])


def predict_flops(dims, rows):
    """FLOPs of the forward GEMMs."""
    return sum(2 * rows * a * b for a, b in zip(dims[:-1], dims[1:]))


def train_gemms(dims, rows):
    """The GEMMs of one train step as (m, k, n, trans_a, trans_b), row-major
    C (m, n) = op(A) op(B): forward X W, then dW = Xᵀ delta and dx = delta Wᵀ."""
    shapes = predict_gemms(dims, rows)
    for i in range(len(dims) - 2, -1, -1):
        a, b = dims[i], dims[i + 1]
        shapes.append((a, rows, b, True, False))
        if i > 0:
            shapes.append((rows, b, a, False, True))
    return shapes


def predict_gemms(dims, rows):
    """The forward GEMMs, X W per layer, as train_gemms gives them."""
    return [(rows, a, b, False, False) for a, b in zip(dims[:-1], dims[1:])]


class SgemmCase:
    """The GEMMs of one call of workload ``w`` (a train step's, or predict's forward ones)
    and nothing else, through NumPy's ``np.matmul(..., out=)`` — NumPy's own OpenBLAS,
    the library the compiled backends call (fastmlp.blas_in_use()) — on preallocated
    C-contiguous operands: the time a call could take if everything around its GEMMs
    were free."""

    def __init__(self, w, seed=0):
        rng = np.random.default_rng(seed)
        self.ops = []
        gemms = train_gemms if w.trains else predict_gemms
        for m, k, n, ta, tb in gemms(w.dims, w.rows):
            A = rng.standard_normal((k, m) if ta else (m, k)).astype(DTYPE)
            B = rng.standard_normal((n, k) if tb else (k, n)).astype(DTYPE)
            C = np.empty((m, n), dtype=DTYPE)
            self.ops.append((A.T if ta else A, B.T if tb else B, C))
        self.flops = w.flops

    def run(self):
        for A, B, C in self.ops:
            out = np.matmul(A, B, out=C)
        return out
