"""The ``"numba"`` backend: JIT-compiled fused kernels, one compiled call per operation.

A thin adaptor: it keeps the kernels' description of the network (``plan``)
and one training workspace per model, grown to the largest batch seen (up to
``MAX_ROWS`` rows; bigger batches are processed in chunks), and forwards each
contract call to one ``@njit`` function in :mod:`fastmlp.kernels.numba_train`.
Kernels compile on first use per dtype and are cached on disk (``cache=True``),
so later processes load them instead of recompiling.

Threads: predict and evaluate allocate their buffers per call, and each
loss_and_gradient call takes a spare gradient workspace that no other call is
using (a new one when none is free), so these three may run from many threads
at once, each giving the single-thread result bit for bit. train_step and
train_epoch mutate theta and the optimiser state, so they run one at a time
per model (the Model's lock sees to it); they share a training workspace that
no reader touches, and take no lock of their own: a lock costs 10 % of a
per-sample step of the vehicle net.
"""
from __future__ import annotations

import numpy as np

try:
    from ..kernels import numba_train as kt
except ImportError as exc:  # numba or scipy missing
    raise ImportError(f"the Numba kernels need numba and scipy ({exc})") from None

from ..optimizers import SGD_CODE
from .reference import check_norms

# "none" arrays of the kernels' types: an empty array, never None, so one compiled
# `run` serves every call (None would compile a second specialisation).
_NO_PERM, _NO_HYPER, _NO_STEP, _NO_NORMS = (np.zeros(0, dtype=np.int64), np.zeros(7),
                                            np.zeros(1, dtype=np.int64), np.zeros(0))
# Rows per training chunk: the workspace never holds more rows of activations.
MAX_ROWS = 1024
# Bytes of one layer's outputs per predict/evaluate chunk: enough rows for BLAS
# to run at full speed while a layer's outputs stay in L2 for the next one
# (W2's net at 512 rows: 64-row chunks 1.3x slower, 256 and more alike).
PREDICT_BYTES = 512 * 1024


class NumbaBackend:
    """Backend contract (see fastmlp.backends) over Numba kernels."""

    name = "numba"

    def __init__(self, net, dtype, theta, state):
        self.net = net
        self.dtype = np.dtype(dtype)
        self.theta, self.state = theta, state
        self._fparams = net.act_params.astype(self.dtype)
        self._no_bufs = np.zeros((0, 0), dtype=self.dtype)  # a gradient needs no state
        # Workspaces are (plan, ws, grad, cap) tuples, replaced whole, never mutated.
        self._train = self._new_work(1)     # the trainers'
        self._spare = []                    # loss_and_gradient's, not in use right now
        # predict and evaluate read only the plan's layer rows, the same for every cap.
        self._plan = self._train[0]
        widest = int(net.dims[1:].max())
        self._chunk = max(1, PREDICT_BYTES // (self.dtype.itemsize * widest))

    def _new_work(self, rows):
        """(plan, ws, grad, cap): a workspace for batches of ``rows`` rows (or MAX_ROWS-row chunks)."""
        cap = min(rows, MAX_ROWS)
        return (*kt.new_workspace(self.net, self.dtype, cap), cap)

    def _train_work(self, rows):
        """The trainers' workspace, grown to hold ``rows`` rows."""
        if min(rows, MAX_ROWS) > self._train[3]:
            self._train = self._new_work(rows)
        return self._train

    def predict(self, X):
        return kt.predict(self.theta, X, self._plan, self._fparams, self._chunk)

    def evaluate(self, X, T):
        return kt.evaluate(self.theta, X, T, self._plan, self._fparams, self._chunk)

    def loss_and_gradient(self, X, T, grad):
        # list.pop and list.append are atomic: no two calls ever hold one workspace
        try:
            work = self._spare.pop()
        except IndexError:
            work = None
        if work is None or min(len(X), MAX_ROWS) > work[3]:
            work = self._new_work(len(X))   # none spare, or too small (then dropped)
        try:
            return kt.run(self.theta, grad, X, T, _NO_PERM, len(X), self._no_bufs, _NO_HYPER,
                          _NO_STEP, SGD_CODE, work[1], work[0], kt.GRADIENT, _NO_NORMS)
        finally:
            self._spare.append(work)

    def train_step(self, X, T):
        plan, ws, _, cap = self._train
        if len(X) > cap:
            plan, ws, _, _ = self._train_work(len(X))
        state = self.state
        return kt.train_step(self.theta, X, T, state.buffers, state.hyper, state.step,
                             state.code, ws, plan)

    def train_epoch(self, X, T, perm, batch_size, norms=None):
        batch_size = int(batch_size)
        if batch_size < 1:  # the kernel would never advance
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        perm = np.ascontiguousarray(perm, dtype=np.int64)
        if norms is None:
            norms = _NO_NORMS
        else:
            check_norms(norms, len(self.net.layers))
        plan, ws, grad, _ = self._train_work(min(batch_size, len(perm)))
        state = self.state
        return kt.run(self.theta, grad, X, T, perm, batch_size, state.buffers, state.hyper,
                      state.step, state.code, ws, plan, kt.TRAIN, norms)
