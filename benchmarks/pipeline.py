"""The pipeline row: NumPy GEMM preprocessing of a batch, then one W3 train step, repeated.

Each iteration multiplies the raw batch (512, 784) by a (784, 784) matrix P
(a PCA/whitening-like step) with ``np.matmul(..., out=Z)``, i.e. with NumPy's own
BLAS, then trains one step on Z through the public API. fastmlp's compiled
kernels call SciPy's BLAS: when that is a second OpenBLAS, its threads and
NumPy's can fight for the cores. The step is timed alone (repeated on a fixed Z)
and inside the pipeline (only the step, not the GEMM), in alternating rounds;
the penalty is inside / alone - 1.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from numpy_case import NumpyMLP
from workloads import BY_NAME, SEED, make_data, start

WORKLOAD = BY_NAME["W3"]
COLUMNS = ("numpy", "cython", "numba")   # competent NumPy and fastmlp's public API


class Pipeline:
    """``step()`` trains once on Z; ``preprocess()`` recomputes Z = X_raw @ P with NumPy."""

    def __init__(self, column):
        w = WORKLOAD
        rng = np.random.default_rng(SEED + 1)
        self.X_raw = rng.standard_normal((w.rows, w.dims[0])).astype(np.float32)
        self.P = (rng.standard_normal((w.dims[0], w.dims[0])) / np.sqrt(w.dims[0])).astype(np.float32)
        self.Z = np.empty_like(self.X_raw)
        self.preprocess()
        T = make_data(w)[1]
        if column == "numpy":
            mlp = NumpyMLP(w.dims, w.hidden, w.output, w.loss, w.lr, start(w)[0], w.rows)
            self.step = lambda: mlp.train_step(self.Z, T)
        else:
            model = w.model(column)
            self.step = lambda: model.train_on_batch(self.Z, T)

    def preprocess(self):
        np.matmul(self.X_raw, self.P, out=self.Z)


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(column, min_time, rounds=3, stat="min"):
    """{"alone": s, "inside": s, "gemm": s, "penalty": fraction}: the step's time alone
    and right after NumPy's GEMM, and the GEMM's time, each the ``stat`` ("median" or
    "min") of single calls; ``rounds`` alternations of alone and inside, min_time /
    rounds seconds each, the fastest round of each kept (load bursts on a shared
    machine then flatter neither side)."""
    pick = statistics.median if stat == "median" else min
    p = Pipeline(column)
    p.step()   # warm-up (and any JIT compile)
    budget = min_time / (2 * rounds)
    alone, inside, gemm = [], [], []
    for _ in range(rounds):
        times = []
        while len(times) < 5 or sum(times) < budget:
            times.append(_timed(p.step))
        alone.append(pick(times))
        steps, gemms = [], []
        while len(steps) < 5 or sum(steps) + sum(gemms) < budget:
            gemms.append(_timed(p.preprocess))
            steps.append(_timed(p.step))
        inside.append(pick(steps))
        gemm.append(pick(gemms))
    return {"alone": min(alone), "inside": min(inside), "gemm": min(gemm),
            "penalty": min(inside) / min(alone) - 1}
