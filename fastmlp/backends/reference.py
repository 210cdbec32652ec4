"""The pure-NumPy reference backend: the oracle for every test and the
baseline of every benchmark. Plain, competent NumPy: X @ W + b, the activation
table, matmuls for the backward pass, nothing clever.

It follows the rules of :mod:`fastmlp.rules`, as the compiled backends do:
predict and evaluate walk the rows in chunks of ``rules.predict_rows``,
loss_and_gradient in chunks of ``rules.train_rows`` (as the compiled backends), adding up each
chunk's loss and gradient, each divided by the whole batch's row count: memory
stays bounded by one chunk's activations however many rows there are. The
output layer's activation derivative is skipped where ``rules.fused_output``
says the loss gives dE/dz. Nothing mutable is shared between calls except
train_step's gradient buffer, so predict, evaluate and loss_and_gradient are
safe from several threads at once.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import activations as act
from .. import losses, optimizers, rules
from .._signals import UNDO_FAILED, UNDO_SIGNALS, raise_after_undo, run_whole


def _ieee_quiet(method):
    """``method`` with NumPy's overflow, invalid and divide warnings off: the compiled
    backends compute the same IEEE results (a tanh of an overflowed sum is 1) without a
    word, and the model reports non-finite results itself (a warning here was an error
    under ``-W error`` on this backend only)."""
    @functools.wraps(method)
    def quiet(*args, **kwargs):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return method(*args, **kwargs)
    return quiet


class NumpyBackend:
    """Reference implementation of the backend contract (see fastmlp.backends)."""

    name = "numpy"
    # predict takes a Fortran-ordered X as it is (X @ W reads any layout)
    reads_columns = True
    # Model.fit's quiet chunks are sized by work to take ~20 ms in compiled kernels; this
    # reference, Python around NumPy, is ~50-100x slower per multiply-add on small layers,
    # and a Ctrl-C inside its train_epochs undoes the whole chunk: 1024 epochs were 5 s of
    # training lost. Its chunks get this share of the work (about as long).
    chunk_work_share = 1 / 64

    def __init__(self, net, dtype, theta, state):
        self.net = net
        self.dtype = np.dtype(dtype)
        self.theta, self.state = theta, state
        self.acts = [act.BY_CODE[int(c)] for c in net.act_codes]
        self._grad = np.zeros(net.n_params, dtype=self.dtype)
        self._backup = None  # train_step_checked's copy of theta and buffers, on first use
        self._train_rows = rules.train_rows(rules.TRAIN_ROWS, net, self.dtype)  # per gradient chunk
        self._predict_rows = rules.predict_rows(net, self.dtype)  # per predict/evaluate chunk

    def _params(self, i, alpha):
        """The activation's parameter: the trainable vector for prelu, else the scalar."""
        return alpha if alpha is not None else float(self.net.act_params[i])

    def _forward(self, theta, X):
        """Pre-activations and outputs of every layer: lists of (n, units)."""
        zs, fs, a = [], [], X
        for i, (W, b, alpha) in enumerate(self.net.layer_views(theta)):
            z = a @ W
            z += b
            a = self.acts[i].forward(z, self._params(i, alpha))
            zs.append(z)
            fs.append(a)
        return zs, fs

    @_ieee_quiet
    def predict(self, X, out=None):
        if out is None:
            out = np.empty((len(X), self.net.output_dim), dtype=self.dtype)
        for start, stop in _chunks(len(X), self._predict_rows):
            out[start:stop] = self._forward(self.theta, X[start:stop])[1][-1]
        return out

    @_ieee_quiet
    def evaluate(self, X, T):
        theta, n, total = self.theta, len(X), 0.0
        for start, stop in _chunks(n, self._predict_rows):
            zs, fs = self._forward(theta, X[start:stop])
            total += self.net.loss.value(zs[-1], fs[-1], T[start:stop], n)
        return total

    def _delta(self, i, z, f, alpha, dout):
        """dE/dz of layer i from dE/df: the chain rule through its activation."""
        a = self.acts[i]
        if a.code == act.SOFTMAX:
            return act.softmax_vjp(f, dout)
        return dout * a.derivative(z, f, self._params(i, alpha))

    @_ieee_quiet
    def loss_and_gradient(self, X, T, grad):
        """Mean loss; grad (n_params,) is overwritten with dE/dtheta."""
        theta, n, loss = self.theta, len(X), 0.0
        grad[...] = 0
        for start, stop in _chunks(n, self._train_rows):
            loss += self._add_block_gradient(theta, X[start:stop], T[start:stop], n, grad)
        return loss

    def _add_block_gradient(self, theta, X, T, n, grad):
        """Loss of the rows (X, T) summed and divided by n; its gradient ADDED to grad."""
        net = self.net
        zs, fs = self._forward(theta, X)
        loss = net.loss.value(zs[-1], fs[-1], T, n)
        views = net.layer_views(theta)
        gviews = net.layer_views(grad)
        last = len(views) - 1
        # softmax/sigmoid + cross-entropy: dE/dz directly (BY_CODE raises for an unknown code)
        fused = rules.fused_output(losses.BY_CODE[net.loss.code])
        dout = net.loss.gradient(fs[-1], T, n)  # dE/df of the current layer (dE/dz when fused)
        for i in range(last, -1, -1):
            W, b, alpha = views[i]
            gW, gb, galpha = gviews[i]
            delta = dout if (fused and i == last) else self._delta(i, zs[i], fs[i], alpha, dout)
            a_prev = X if i == 0 else fs[i - 1]
            gW += a_prev.T @ delta
            gb += delta.sum(axis=0)
            if galpha is not None:
                # d prelu / d alpha = z where z < 0, else 0
                galpha += (dout * np.minimum(zs[i], 0)).sum(axis=0)
            if i > 0:
                dout = delta @ W.T
        return loss

    def train_step(self, X, T):
        """One update on the batch (X, T); returns the batch loss before the update."""
        loss = self.loss_and_gradient(X, T, self._grad)
        optimizers.update(self.theta, self._grad, self.state)
        return loss

    def train_step_checked(self, X, T):
        """train_step, guarded; (loss, status): see fastmlp.backends. NumPy's overflow
        warnings are silenced here: divergence is reported by the status."""
        state = self.state
        unit = self.net.loss.output is not None
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if not (np.isfinite(X).all() and (((T >= 0) & (T <= 1)).all() if unit
                                              else np.isfinite(T).all())):
                return float("nan"), 1
            in_use = rules.buffers_in_use(state)
            if self._backup is None:  # (3, n_params), once
                self._backup = np.empty((3, self.net.n_params), dtype=self.dtype)
            backup, step = self._backup, state.step[0]
            backup[0] = self.theta
            backup[1:1 + in_use] = state.buffers[:in_use]
            exc = None
            try:
                loss = self.train_step(X, T)
                if (np.isfinite(loss) and np.isfinite(self.theta).all()
                        and np.isfinite(state.buffers[:in_use]).all()):
                    return loss, 0
            except BaseException as raised:  # Ctrl-C mid-update: undone, as when it diverges
                exc = raised
            # Undone whole (run_whole), and again after a second signal, also on
            # divergence: restored in plain Python, a Ctrl-C or timeout between its
            # statements left theta back and Adam's buffers non-finite, the model refusing
            # every later step (hostile rounds 44 and 45).
            late, tries = None, 0   # (no call before the try: a signal after it escaped)
            while tries < UNDO_SIGNALS:
                tries += 1
                try:
                    run_whole(functools.partial(self._restore, backup, in_use, step))
                    break
                except BaseException as signalled:   # a Ctrl-C's or a timeout's
                    if UNDO_FAILED in signalled.__dict__:   # (the undo's own; no call)
                        raise
                    # (kept's rule, no call: a Ctrl-C gives way to what follows)
                    late = (signalled if late is None
                            or late.__class__ is KeyboardInterrupt else late)
            raise_after_undo(exc, late)
        return loss, 2

    def _restore(self, backup, in_use, step):
        self.theta[:] = backup[0]
        self.state.buffers[:in_use] = backup[1:1 + in_use]
        self.state.step[0] = step

    def train_epoch(self, X, T, perm, batch_size, norms=None):
        """One train_step per batch of rows perm[i:i + batch_size]; mean loss over rows.

        norms: None, or float64 (n_layers,) to which each step ADDS ||dE/dW_l||^2,
        the squared Frobenius norm of its weight gradient, layer by layer.
        """
        if norms is not None:
            check_norms(norms, len(self.net.layers))
        n, total = len(perm), 0.0
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            total += self.train_step(X[idx], T[idx]) * len(idx)
            if norms is not None:
                # self._grad still holds this step's gradient: train_step only reads it
                for l, (gW, _, _) in enumerate(self.net.layer_views(self._grad)):
                    norms[l] += np.square(gW, dtype=np.float64).sum()
        return total / n

    def train_epochs(self, X, T, orders, batch_size, tol, losses):
        """train_epoch per row of orders (k, n); (epochs done, status): see fastmlp.backends."""
        check_losses(losses, len(orders))
        state = self.state
        in_use = rules.buffers_in_use(state)
        for e, perm in enumerate(orders):
            losses[e] = loss = self.train_epoch(X, T, perm, batch_size)
            if not (np.isfinite(loss) and np.isfinite(self.theta).all()
                    and np.isfinite(state.buffers[:in_use]).all()):
                return e, 2
            if 0 <= tol and loss <= tol:
                return e + 1, 1
        return len(orders), 0




def _chunks(n, rows):
    """(start, stop) of each chunk of ``rows`` rows of an n-row batch, the last maybe short."""
    return [(start, min(start + rows, n)) for start in range(0, n, rows)]


def check_batch_size(batch_size):
    """batch_size as an int >= 1 (a kernel given 0 would never advance), else ValueError."""
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return batch_size


def check_losses(losses, k):
    """A clear ValueError unless losses is a writable, aligned, C-contiguous float64
    array (k,), as the Cython backend requires: train_epochs writes into it, before any
    training (the reference trained, then failed writing a read-only or short one)."""
    if not isinstance(losses, np.ndarray):   # (the Cython backend's words, kernels/_mlp.pxi)
        raise TypeError(f"losses must be a NumPy array, got {type(losses).__name__}")
    fl = losses.flags
    if not (losses.dtype == np.float64 and losses.shape == (k,) and fl.c_contiguous
            and fl.aligned and fl.writeable):
        raise ValueError(f"losses must be a writable aligned C-contiguous float64 array of "
                         f"shape ({k}), got {losses.dtype} {losses.shape} (C-contiguous: "
                         f"{fl.c_contiguous}, aligned: {fl.aligned}, writable: {fl.writeable})")


def check_norms(norms, n_layers):
    """A clear ValueError unless norms is a writable C-contiguous float64 array
    (n_layers,): backends add into it in place, so a converted copy would lose the sums."""
    if not (isinstance(norms, np.ndarray) and norms.dtype == np.float64
            and norms.shape == (n_layers,) and norms.flags.c_contiguous
            and norms.flags.writeable):
        got = (f"{norms.dtype} array {norms.shape}" if isinstance(norms, np.ndarray)
               else type(norms).__name__)
        raise ValueError(f"norms must be a writable C-contiguous float64 array of shape "
                         f"({n_layers},), got {got}")
