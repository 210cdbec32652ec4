"""The benchmark workloads, shared by the pytest benchmarks and report.py.

Every backend is timed at the backend-contract level, below input validation:
``engine.train_step(X, T)``, ``engine.train_epoch(
X, T, perm, batch_size)`` or ``engine.predict(X)``, on C-contiguous
float32 arrays built once (T one-hot), so each backend does the same work.
Data are synthetic, drawn from a fixed seed; the optimiser is SGD(lr=0.01).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import fastmlp as fm

DTYPE = np.float32
LR = 0.01


@dataclass(frozen=True)
class Workload:
    """One timed call. ``kind`` is "step", "epoch" (train_epoch over ``rows``
    rows in batches of ``epoch_batch``) or "predict"; ``rows`` = samples per call."""

    name: str
    dims: tuple            # input width, then each layer's units
    hidden: str            # hidden-layer activation
    output: str            # output activation
    loss: str
    rows: int
    kind: str = "step"
    epoch_batch: int = 1
    about: str = ""

    @property
    def flops(self):
        """GEMM FLOPs of one call (see train_flops / predict_flops)."""
        if self.kind == "predict":
            return predict_flops(self.dims, self.rows)
        return train_flops(self.dims, self.rows)  # linear in rows, so also one epoch

    def layers(self):
        acts = [self.hidden] * (len(self.dims) - 2) + [self.output]
        return [fm.Dense(u, activation=a) for u, a in zip(self.dims[1:], acts)]


_MNIST = (784, 256, 128, 10)
WORKLOADS = [
    Workload("W1", (3, 4, 2), "sigmoid", "sigmoid", "mse", 6,
             about="vehicles 3-4-2 sigmoid/MSE, train step, batch 6"),
    Workload("W1-epoch", (3, 4, 2), "sigmoid", "sigmoid", "mse", 6, kind="epoch",
             about="vehicles 3-4-2, train_epoch of 6 rows at batch 1 (per-sample SGD)"),
    Workload("W2", _MNIST, "relu", "softmax", "cross_entropy", 64,
             about="784-256-128-10 relu/softmax CE, train step, batch 64"),
    Workload("W3", _MNIST, "relu", "softmax", "cross_entropy", 512,
             about="784-256-128-10 relu/softmax CE, train step, batch 512"),
    Workload("W4", (2048, 2048, 2048, 10), "relu", "softmax", "cross_entropy", 512,
             about="2048-2048-2048-10 relu/softmax CE, train step, batch 512"),
    Workload("predict", _MNIST, "relu", "softmax", "cross_entropy", 512, kind="predict",
             about="predict on W2's net, batch 512"),
]
# W3 with other hidden activations: the transcendental passes (exp, tanh, log1p).
# Not in the default run; ask for them with report.py --workloads W3-tanh,...
ACTIVATION_WORKLOADS = [
    Workload(f"W3-{act}", _MNIST, act, "softmax", "cross_entropy", 512,
             about=f"784-256-128-10 {act}/softmax CE, train step, batch 512")
    for act in ("tanh", "sigmoid", "elu", "softplus")
]
BY_NAME = {w.name: w for w in WORKLOADS + ACTIVATION_WORKLOADS}


def make_data(w, seed=0):
    """X (rows, in) standard normal and one-hot T (rows, out), C-contiguous float32."""
    rng = np.random.default_rng(seed)
    X = np.ascontiguousarray(rng.standard_normal((w.rows, w.dims[0])), dtype=DTYPE)
    labels = rng.integers(0, w.dims[-1], w.rows)
    T = np.ascontiguousarray(np.eye(w.dims[-1], dtype=DTYPE)[labels])
    return X, T, labels


class Case:
    """A workload on one fastmlp backend: ``run()`` does one timed call."""

    def __init__(self, w, backend, seed=0):
        self.workload, self.backend = w, backend
        self.model = fm.Model(w.layers(), input_dim=w.dims[0], loss=w.loss,
                              optimizer=fm.SGD(lr=LR), backend=backend, dtype="float32",
                              seed=seed)
        self.X, self.T, self.labels = make_data(w, seed)
        self.perm = np.arange(w.rows, dtype=np.int64)
        engine = self.model.engine
        X, T = self.X, self.T
        if w.kind == "step":
            self.run = lambda: engine.train_step(X, T)
        elif w.kind == "epoch":
            perm, bs = self.perm, w.epoch_batch
            self.run = lambda: engine.train_epoch(X, T, perm, bs)
        else:
            self.run = lambda: engine.predict(X)

    def check(self, result):
        """Raise if a call's result shows it did not do the claimed work."""
        if self.workload.kind == "predict":
            if np.shape(result) != (self.workload.rows, self.workload.dims[-1]):
                raise AssertionError(f"predict returned shape {np.shape(result)}")
            if not np.isfinite(result).all():
                raise AssertionError("predict returned non-finite values")
        elif not np.isfinite(float(result)):
            raise AssertionError(f"{self.workload.name} on {self.backend}: loss {result}")


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
    shapes = [(rows, a, b, False, False) for a, b in zip(dims[:-1], dims[1:])]
    for i in range(len(dims) - 2, -1, -1):
        a, b = dims[i], dims[i + 1]
        shapes.append((a, rows, b, True, False))
        if i > 0:
            shapes.append((rows, b, a, False, True))
    return shapes


class SgemmCase:
    """The same GEMMs as one train step, through scipy's BLAS ``sgemm``
    (the library the compiled backends call), on preallocated C-contiguous
    operands; row-major C = op(A) op(B) is Fortran Cᵀ = op(B)ᵀ op(A)ᵀ."""

    def __init__(self, dims, rows, seed=0):
        from scipy.linalg import blas
        self.sgemm = blas.sgemm
        rng = np.random.default_rng(seed)
        self.ops = []
        for m, k, n, ta, tb in train_gemms(dims, rows):
            A = rng.standard_normal((k, m) if ta else (m, k)).astype(DTYPE)
            B = rng.standard_normal((n, k) if tb else (k, n)).astype(DTYPE)
            C = np.empty((m, n), dtype=DTYPE)
            self.ops.append((A, B, C, ta, tb))
        self.flops = train_flops(dims, rows)

    def run(self):
        for A, B, C, ta, tb in self.ops:
            out = self.sgemm(1.0, B.T, A.T, beta=0.0, c=C.T, trans_a=tb, trans_b=ta,
                             overwrite_c=1)
        return out

    def check(self, result):
        if not np.isfinite(result).all():
            raise AssertionError("sgemm returned non-finite values")
