"""The columns of the report: who runs each workload, and the check that all do the same work.

Every column builds a case from a Workload (workloads.py); ``case.run()`` does
one timed call; training cases have ``weights()``, the flat float32 parameters
in fastmlp's get_weights() order. Optional frameworks (torch, jax, onnxruntime)
appear only when they import.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import fastmlp as fm

import jax_case
import onnx_case
import torch_case
from numpy_case import Inputs, NumpyMLP
from workloads import ADAM, FastmlpCase, make_data, scaling, start, start_rng

BASELINE = "numpy"
# Agreement after the same work, float32: summation orders differ between libraries.
# Measured: every column within 1/8 of these after one call; one epoch fewer of
# vehicles-fit, or W2 at lr 0.99 x 0.01, is 4 to 5 times outside them.
RTOL, ATOL = 5e-4, 5e-6


class NumpyCase:
    """The workload in competent NumPy (numpy_case.py): the baseline of every ratio."""

    def __init__(self, w):
        self.workload = w
        self.mlp = NumpyMLP(w.dims, w.hidden, w.output, w.loss, w.lr, start(w)[0],
                            max_rows=w.batch_size if w.kind == "fit" else w.rows,
                            adam=ADAM if w.optimizer == "adam" else None)
        X, T, _ = make_data(w)
        rng = start_rng(w)
        if w.converts:  # (predict rows only) X cast or scaled into a buffer, per call
            inputs = Inputs(w.rows, w.dims[0], scaling(w) if w.scaled else None)
            self.run = lambda: self.mlp.predict(inputs(X))
            return
        self.run = {"fit": lambda: self.mlp.fit(X, T, w.epochs, w.batch_size, rng),
                    "step": lambda: self.mlp.train_step(X, T),
                    "predict": lambda: self.mlp.predict(X)}[w.kind]

    def weights(self):
        return self.mlp.theta.copy()


@dataclass(frozen=True)
class Column:
    name: str
    make: callable          # Workload -> case
    available: callable     # () -> bool
    trains: bool = True     # False: inference rows only
    converts: bool = True   # False: takes X only as the network reads it (float32, unscaled)
    label: str = ""         # what the column times, for the report's legend


def _fastmlp(backend, level):
    return lambda w: FastmlpCase(w, backend, level)


def _has(backend):
    return lambda: backend in fm.available_backends()


COLUMNS = [
    Column("numpy", NumpyCase, lambda: True,
           label="competent NumPy: preallocated buffers, matmul(out=), in-place bias, "
                 "activation and SGD (numpy_case.py); the baseline of every ratio"),
    Column("cython", _fastmlp("cython", "api"), _has("cython"),
           label="fastmlp, backend='cython', public API (fit / train_on_batch / predict)"),
    Column("numba", _fastmlp("numba", "api"), _has("numba"),
           label="fastmlp, backend='numba', public API"),
    Column("cython kernel", _fastmlp("cython", "kernel"), _has("cython"), converts=False,
           label="kernel level: model.engine.train_step / train_epoch / predict on "
                 "validated data, below the public API (fit = a Python loop of train_epoch)"),
    Column("numba kernel", _fastmlp("numba", "kernel"), _has("numba"), converts=False,
           label="kernel level, numba backend"),
    Column("fastmlp numpy (reference)", _fastmlp("numpy", "api"), lambda: True,
           label="fastmlp's plain NumPy reference backend (the test oracle), public API"),
    Column("torch", lambda w: torch_case.TorchCase(w), torch_case.available,
           label="PyTorch eager, nn.Sequential + torch.optim.SGD (Adam row: torch.optim.Adam), "
                 "torch.set_num_threads"),
    Column("jax", lambda w: jax_case.JaxCase(w), jax_case.available,
           label="JAX, jax.jit of the step / predict (fit: its epochs in one jitted lax.scan), "
                 "block_until_ready; its own thread pool"),
    Column("onnxruntime", lambda w: onnx_case.OnnxCase(w), onnx_case.available, trains=False,
           label="onnxruntime CPU, the model's to_onnx export, intra-op threads set"),
]
BY_NAME = {c.name: c for c in COLUMNS}


def applies(column, w):
    return (column.trains or not w.trains) and (column.converts or not w.converts)


def evidence(w, case):
    """What shows the work a case did: its weights (training) or its last output (predict)."""
    return case.weights() if w.trains else np.array(case.last, dtype=np.float32)


def same_work(w, got, want, who=""):
    """Raise AssertionError unless the evidence ``got`` matches the baseline's ``want``,
    both taken after one call from the start; a training baseline must also have moved
    the weights from the start."""
    if w.trains and np.array_equal(want, start(w)[0]):
        raise AssertionError(f"{w.name}: the baseline's weights did not change")
    if not np.isfinite(np.asarray(want, dtype=np.float64)).all():
        # (a baseline and a column that both diverged had matched, NaN for NaN)
        raise AssertionError(f"{w.name}: the baseline's result is not finite")
    what = "weights" if w.trains else "outputs"
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=False,
                               err_msg=f"{w.name}{who}: {what} differ from the baseline's "
                                       "after the same call")


def run_once(column, w):
    """A fresh case of ``column`` after one call; its result is kept as ``case.last``."""
    case = column.make(w)
    case.last = case.run()
    if not np.isfinite(np.asarray(case.last, dtype=np.float64)).all():
        raise AssertionError(f"{w.name} on {column.name}: non-finite result")
    return case
