"""The ``"cython"`` backend: ahead-of-time compiled kernels, no JIT, GIL released.

A thin adaptor over :class:`fastmlp.kernels.cython_mlp.Engine`, which fills its
structs from the network's plan (:meth:`fastmlp.network.Network.plan`, the
layout the Numba kernels run on too), follows the rules of :mod:`fastmlp.rules`
(a training workspace of at most ``rules.train_rows`` rows, bigger batches
going through it in chunks; predict and evaluate in ``rules.predict_rows``
chunks, those of at most ``rules.PREDICT_SMALL_ROWS`` rows through hand-written
GEMV loops rather than BLAS; plain SGD folded as ``rules.sgd_fold_rows`` says),
offers predict_checked (predict checking X finite in the same pass, so the Model
skips its validation pass for ready arrays), checks every array
it is given (copying unaligned inputs), and runs whole train steps (guarded ones
too: train_step_checked, which proves each update finite before writing it and so
copies nothing), epochs and chunks of epochs in C. Several models may
train or predict in parallel threads; one model's predict, evaluate and
loss_and_gradient are safe from several threads at once, each giving the
single-thread result bit for bit (see Engine).
"""
from __future__ import annotations

from functools import partial

import numpy as np

try:
    from ..kernels.cython_mlp import Engine
except ImportError as exc:  # not built (`pip install .`), or FASTMLP_CYTHON_ISA refused: exc says
    raise ImportError(f"the Cython extension fastmlp.kernels.cython_mlp does not import ({exc})"
                      ) from None

from .. import rules


class CythonBackend:
    """Backend contract (see fastmlp.backends) over compiled Cython kernels."""

    name = "cython"
    # predict and predict_checked read a Fortran-ordered X where it lies (the first
    # layer's gemm takes it transposed): see the contract
    reads_columns = True
    # train_step_checked costs what train_step costs (no copy of theta: the Engine
    # keeps bounds on theta and the optimiser buffers and proves each update finite
    # before it writes), so the Model takes it for every network size.
    guarded_step_is_free = True

    def __init__(self, net, dtype, theta, state):
        self.net = net
        self.dtype = np.dtype(dtype)
        self.theta, self.state = theta, state
        self.engine = Engine(net, self.dtype, rules.train_rows(rules.TRAIN_ROWS, net, self.dtype),
                             rules.predict_rows(net, self.dtype),
                             rules.sgd_fold_rows(state), rules.PREDICT_SMALL_ROWS)
        # The compiled methods with this model's arrays bound in: no Python frame per call.
        self.train_step = partial(self.engine.train_step, theta, state)
        self.train_step_checked = partial(self.engine.train_step_checked, theta, state)
        self.train_epoch = partial(self.engine.train_epoch, theta, state)
        self.train_epochs = partial(self.engine.train_epochs, theta, state)
        self.loss_and_gradient = partial(self.engine.loss_and_gradient, theta)
        self.predict = partial(self.engine.predict, theta)
        self.predict_checked = partial(self.engine.predict_checked, theta)
        self.evaluate = partial(self.engine.evaluate, theta)

    def push(self):
        """The Model wrote theta or the optimiser state (set_weights, set_state, load, a
        rollback, apply_gradient): the guarded step's bounds on them no longer hold."""
        self.engine.forget_bounds()

    def pull(self):
        """Nothing to do: the kernels work on the host arrays themselves."""
