"""The ``"numba"`` backend: JIT-compiled fused kernels, one compiled call per operation.

A thin adaptor: it builds the kernels' per-model arrays once (``plan``,
``fparams``), keeps one training workspace per batch size, and forwards each
contract call to one ``@njit`` function in :mod:`fastmlp.kernels.numba_train`.
Kernels are compiled on first use per dtype and cached on disk (``cache=True``),
so later processes load them instead of recompiling.
"""
from __future__ import annotations

import numpy as np

try:
    from ..kernels import numba_train as kt
except ImportError as exc:  # numba or scipy missing
    raise ImportError(f"the Numba kernels need numba and scipy ({exc})") from None

# Rows per training chunk: bigger batches accumulate gradients chunk by chunk,
# so a workspace never holds more than this many rows of activations.
MAX_ROWS = 1024
# Bytes of one layer's outputs per predict/evaluate chunk: enough rows for BLAS
# to run at full speed while a layer's outputs stay in cache for the next one.
PREDICT_BYTES = 256 * 1024
# Workspaces kept per model (one per batch size seen); the oldest goes first.
MAX_WORKSPACES = 4


class NumbaBackend:
    """Backend contract (see fastmlp.backends) over Numba kernels."""

    name = "numba"

    def __init__(self, net, dtype):
        self.net = net
        self.dtype = np.dtype(dtype)
        self._fparams = net.act_params.astype(self.dtype)
        self._grad = np.zeros(net.n_params, dtype=self.dtype)
        # predict/evaluate read only the layer rows of a plan, never its workspace offsets
        self._plan = self._build(1)[0]
        widest = int(net.dims[1:].max())
        self._chunk = max(1, PREDICT_BYTES // (self.dtype.itemsize * widest))
        self._work = {}    # rows -> (plan, ws)
        self._gather = {}  # batch_size -> (Xb, Tb)

    def _build(self, cap):
        net = self.net
        return kt.build_plan(net.dims, net.act_codes, net.offsets, net.loss.code, cap)

    def _workspace(self, rows):
        """(plan, ws) for batches of ``rows`` rows, built once and kept."""
        work = self._work.get(rows)
        if work is None:
            plan, size = self._build(min(rows, MAX_ROWS))
            work = (plan, np.zeros(size, dtype=self.dtype))
            if len(self._work) >= MAX_WORKSPACES:
                del self._work[next(iter(self._work))]
            self._work[rows] = work
        return work

    def predict(self, theta, X):
        return kt.predict(theta, X, self._plan, self._fparams, self._chunk)

    def evaluate(self, theta, X, T):
        return kt.evaluate(theta, X, T, self._plan, self._fparams, self._chunk)

    def loss_and_gradient(self, theta, X, T, grad):
        plan, ws = self._workspace(len(X))
        return kt.loss_and_gradient(theta, grad, X, T, ws, plan, self._fparams)

    def train_step(self, theta, state, X, T):
        plan, ws = self._work.get(len(X)) or self._workspace(len(X))
        return kt.train_step(theta, self._grad, X, T, state.buffers, state.hyper, state.step,
                             state.code, ws, plan, self._fparams)

    def train_epoch(self, theta, state, X, T, perm, batch_size):
        batch_size = int(batch_size)
        rows = min(batch_size, len(perm))
        plan, ws = self._workspace(rows)
        gather = self._gather.get(rows)
        if gather is None:
            self._gather.clear()
            gather = self._gather[rows] = (np.empty(rows * X.shape[1], dtype=self.dtype),
                                           np.empty(rows * T.shape[1], dtype=self.dtype))
        perm = np.ascontiguousarray(perm, dtype=np.int64)
        return kt.train_epoch(theta, self._grad, X, T, perm, batch_size, *gather,
                              state.buffers, state.hyper, state.step, state.code,
                              ws, plan, self._fparams)
