"""The ``"cython"`` backend: ahead-of-time compiled kernels, no JIT, GIL released.

A thin adaptor over :class:`fastmlp.kernels.cython_mlp.Engine`, which holds the
network's layout and a training workspace of at most ``cython_mlp.MAX_ROWS`` rows (bigger
batches go through it in chunks), checks every array it is given (copying
unaligned inputs), and runs whole train steps and epochs in C. Several models
may train or predict in parallel threads; one model's predict, evaluate and
loss_and_gradient are safe from several threads at once, each giving the
single-thread result bit for bit (see Engine).
"""
from __future__ import annotations

import numpy as np

try:
    from ..kernels.cython_mlp import Engine
except ImportError as exc:  # not built: `pip install .` or `python setup.py build_ext --inplace`
    raise ImportError(f"the Cython extension fastmlp.kernels.cython_mlp is not built ({exc})") from None

# Rows per predict/evaluate chunk: big enough for BLAS to run at full speed,
# small enough that a layer's outputs stay in cache for the next layer.
CHUNK_ROWS = 512


class CythonBackend:
    """Backend contract (see fastmlp.backends) over compiled Cython kernels."""

    name = "cython"

    def __init__(self, net, dtype):
        self.net = net
        self.dtype = np.dtype(dtype)
        self.engine = Engine(net.dims, net.act_codes, net.act_params, net.offsets,
                             net.loss.code, net.n_params, self.dtype)
        # Bound straight to the compiled methods: no extra Python frame per step.
        self.train_step = self.engine.train_step
        self.train_epoch = self.engine.train_epoch
        self.loss_and_gradient = self.engine.loss_and_gradient

    def predict(self, theta, X):
        return self.engine.predict(theta, X, CHUNK_ROWS)

    def evaluate(self, theta, X, T):
        return self.engine.evaluate(theta, X, T, CHUNK_ROWS)
