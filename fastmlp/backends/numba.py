"""The ``"numba"`` backend: JIT-compiled fused kernels, one compiled call per operation.

A thin adaptor: it keeps the kernels' description of the network (the plan of
:meth:`fastmlp.network.Network.plan`, which carries the rules of
:mod:`fastmlp.rules`) and one training workspace per model, grown to the
largest batch seen (up to ``rules.TRAIN_ROWS`` rows; bigger batches are
processed in chunks), and forwards each contract call to one ``@njit``
function in :mod:`fastmlp.kernels.numba_train` (train_step and train_step_checked
are one function, train_epochs too: a chunk of
epochs is one call of ``run``, which checks finiteness and tol in compiled
code). Kernels compile on first use per dtype, each once (they call one another
by name: kernels/numba_link.py), and are cached on disk (``cache=True``), so
later processes load them instead of recompiling.

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

from .. import rules
from ..optimizers import SGD_CODE
from .reference import check_batch_size, check_losses, check_norms

# "none" arrays of the kernels' types: an empty array, never None, so one compiled
# `run` serves every call (None would compile a second specialisation).
# _NO_ORDERS (1, 0): one pass over X as it is. _NO_NORMS is also the "no losses" array.
_NO_ORDERS, _NO_HYPER, _NO_STEP, _NO_NORMS = (np.zeros((1, 0), dtype=np.int64), np.zeros(7),
                                              np.zeros(1, dtype=np.int64), np.zeros(0))


class NumbaBackend:
    """Backend contract (see fastmlp.backends) over Numba kernels."""

    name = "numba"
    # train_step_checked costs what train_step costs (no copy of theta: the kernels keep
    # bounds on theta and the optimiser buffers and prove each update finite before
    # writing it, kt.run's guard), so the Model takes it for every network size.
    guarded_step_is_free = True

    def __init__(self, net, dtype, theta, state):
        self.net = net
        self.dtype = np.dtype(dtype)
        self.theta, self.state = theta, state
        self._fparams = net.act_params.astype(self.dtype)
        self._no_bufs = np.zeros((0, 0), dtype=self.dtype)  # a gradient needs no state
        self._fold_rows = rules.sgd_fold_rows(state)
        self._predict_rows = rules.predict_rows(net, self.dtype)
        self._outputs = net.output_dim
        # train_step_checked's copy of theta and the optimiser buffers (3 * n_params,):
        # allocated once; kt.train_step's check 2 also wants targets in [0, 1].
        self._backup = np.empty(3 * net.n_params, dtype=self.dtype)
        self._check = 2 if net.loss.output is not None else 1
        # the guarded step's bounds and counters (kt.G_*), valid for these arrays only
        self._guard = kt.new_guard(net, self.dtype)
        self._bounded = (theta, state.buffers)
        # Workspaces are (plan, ws, grad, cap) tuples, replaced whole, never mutated.
        self._train = self._new_work(1)     # the trainers'
        self._spare = []                    # loss_and_gradient's, not in use right now
        # predict and evaluate read only the plan's layer rows, the same for every cap.
        self._plan = self._train[0]

    def _new_work(self, rows):
        """(plan, ws, grad, cap): a workspace for batches of ``rows`` rows (or
        TRAIN_ROWS-row chunks)."""
        cap = rules.train_rows(rows)
        return (*kt.new_workspace(self.net, self.dtype, cap, self._fold_rows), cap)

    def _train_work(self, rows):
        """The trainers' workspace, grown to hold ``rows`` rows."""
        if rules.train_rows(rows) > self._train[3]:
            self._train = self._new_work(rows)
        return self._train

    def predict(self, X, out=None):
        if out is None:
            out = np.empty((len(X), self._outputs), dtype=self.dtype)
        kt.predict(self.theta, X, self._plan, self._fparams, self._predict_rows, out)
        return out

    def evaluate(self, X, T):
        return kt.evaluate(self.theta, X, T, self._plan, self._fparams, self._predict_rows)

    def loss_and_gradient(self, X, T, grad):
        # list.pop and list.append are atomic: no two calls ever hold one workspace
        try:
            work = self._spare.pop()
        except IndexError:
            work = None
        if work is None or rules.train_rows(len(X)) > work[3]:
            work = self._new_work(len(X))   # none spare, or too small (then dropped)
        try:
            return kt.run(self.theta, grad, X, T, _NO_ORDERS, len(X), self._no_bufs, _NO_HYPER,
                          _NO_STEP, SGD_CODE, work[1], work[0], kt.GRADIENT, _NO_NORMS, -1.0,
                          _NO_NORMS, _NO_NORMS, self._backup)
        finally:
            self._spare.append(work)

    def push(self):
        """The Model wrote theta or the optimiser state (set_weights, set_state, load, a
        rollback, apply_gradient): the guarded step's bounds on them no longer hold."""
        self._guard[kt.G_KNOWN] = 0

    def pull(self):
        """Nothing to do: the kernels work on the host arrays themselves."""

    def guard_paths(self):
        """How train_step_checked wrote its steps so far (for tests): {"proven": on
        bounds alone, "measured": after measuring theta and the buffers, "backed_up":
        with a backup, the update not provably finite}."""
        g = self._guard
        return {"proven": int(g[kt.G_PROVEN]), "measured": int(g[kt.G_MEASURED]),
                "backed_up": int(g[kt.G_BACKED_UP])}

    def train_step(self, X, T):
        self._guard[kt.G_KNOWN] = 0  # theta and the state change unguarded
        return self._step(X, T, 0)[0]

    def train_step_checked(self, X, T):
        return self._step(X, T, self._check)

    def _step(self, X, T, check):
        """kt.train_step on the trainers' workspace: (loss, status); check 0 (plain),
        1 (guarded) or 2 (guarded, targets in [0, 1]), as the kernel documents."""
        plan, ws, _, cap = self._train
        if len(X) > cap:
            plan, ws, _, _ = self._train_work(len(X))
        state = self.state
        if check and (self._bounded[0] is not self.theta
                      or self._bounded[1] is not state.buffers):
            self._guard[kt.G_KNOWN] = 0  # bounds of other arrays
            self._bounded = (self.theta, state.buffers)
        return kt.train_step(self.theta, X, T, state.buffers, state.hyper, state.step,
                             state.code, ws, plan, self._backup, check, self._guard)

    def train_epoch(self, X, T, perm, batch_size, norms=None):
        batch_size = check_batch_size(batch_size)
        perm = np.ascontiguousarray(perm, dtype=np.int64).reshape(1, -1)
        if norms is None:
            norms = _NO_NORMS
        else:
            check_norms(norms, len(self.net.layers))
        plan, ws, grad, _ = self._train_work(min(batch_size, perm.shape[1]))
        state = self.state
        self._guard[kt.G_KNOWN] = 0  # theta and the state change unguarded
        return kt.run(self.theta, grad, X, T, perm, batch_size, state.buffers, state.hyper,
                      state.step, state.code, ws, plan, kt.TRAIN, norms, -1.0, _NO_NORMS,
                      _NO_NORMS, self._backup)

    def train_epochs(self, X, T, orders, batch_size, tol, losses):
        batch_size = check_batch_size(batch_size)
        k = len(orders)
        check_losses(losses, k)
        if k == 0:
            return 0, 0
        plan, ws, grad, _ = self._train_work(min(batch_size, orders.shape[1]))
        state = self.state
        self._guard[kt.G_KNOWN] = 0  # theta and the state change unguarded
        return kt.epochs_result(kt.run(self.theta, grad, X, T, orders, batch_size, state.buffers,
                                       state.hyper, state.step, state.code, ws, plan, kt.TRAIN,
                                       _NO_NORMS, float(tol), losses, _NO_NORMS,
                                       self._backup))
