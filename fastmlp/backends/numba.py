"""The ``"numba"`` backend: JIT-compiled fused kernels, one compiled call per operation.

A thin adaptor: it keeps the kernels' description of the network (``plan``)
and one training workspace per model, grown to the largest batch seen (up to
``MAX_ROWS`` rows; bigger batches are processed in chunks), and forwards each
contract call to one ``@njit`` function in :mod:`fastmlp.kernels.numba_train`.
Kernels compile on first use per dtype and are cached on disk (``cache=True``),
so later processes load them instead of recompiling.
"""
from __future__ import annotations

import numpy as np

try:
    from ..kernels import numba_train as kt
except ImportError as exc:  # numba or scipy missing
    raise ImportError(f"the Numba kernels need numba and scipy ({exc})") from None

from ..optimizers import SGD_CODE

_NO_PERM, _NO_HYPER, _NO_STEP = (np.zeros(0, dtype=np.int64), np.zeros(7),
                                 np.zeros(1, dtype=np.int64))
# Rows per training chunk: the workspace never holds more rows of activations.
MAX_ROWS = 1024
# Bytes of one layer's outputs per predict/evaluate chunk: enough rows for BLAS
# to run at full speed while a layer's outputs stay in L2 for the next one
# (W2's net at 512 rows: 64-row chunks 1.3x slower, 256 and more alike).
PREDICT_BYTES = 512 * 1024


class NumbaBackend:
    """Backend contract (see fastmlp.backends) over Numba kernels."""

    name = "numba"

    def __init__(self, net, dtype):
        self.net = net
        self.dtype = np.dtype(dtype)
        self._fparams = net.act_params.astype(self.dtype)
        self._no_bufs = np.zeros((0, 0), dtype=self.dtype)  # a gradient needs no state
        self._cap = 0
        self._reserve(1)
        widest = int(net.dims[1:].max())
        self._chunk = max(1, PREDICT_BYTES // (self.dtype.itemsize * widest))

    def _reserve(self, rows):
        """Make the workspace hold batches of ``rows`` rows (or MAX_ROWS-row chunks)."""
        cap = min(rows, MAX_ROWS)
        if cap > self._cap:
            self._plan, self._ws, self._grad = kt.new_workspace(self.net, self.dtype, cap)
            self._cap = cap

    def predict(self, theta, X):
        return kt.predict(theta, X, self._plan, self._fparams, self._chunk)

    def evaluate(self, theta, X, T):
        return kt.evaluate(theta, X, T, self._plan, self._fparams, self._chunk)

    def loss_and_gradient(self, theta, X, T, grad):
        self._reserve(len(X))
        return kt.run(theta, grad, X, T, _NO_PERM, len(X), self._no_bufs, _NO_HYPER, _NO_STEP,
                      SGD_CODE, self._ws, self._plan, kt.GRADIENT)

    def train_step(self, theta, state, X, T):
        if len(X) > self._cap:
            self._reserve(len(X))
        return kt.train_step(theta, X, T, state.buffers, state.hyper, state.step, state.code,
                             self._ws, self._plan)

    def train_epoch(self, theta, state, X, T, perm, batch_size):
        batch_size = int(batch_size)
        if batch_size < 1:  # the kernel would never advance
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._reserve(min(batch_size, len(perm)))
        perm = np.ascontiguousarray(perm, dtype=np.int64)
        return kt.run(theta, self._grad, X, T, perm, batch_size, state.buffers, state.hyper,
                      state.step, state.code, self._ws, self._plan, kt.TRAIN)
