"""Whole-network Numba kernels: one compiled call per train step, epoch, gradient or prediction.

The network is described to the kernels by two per-model arrays built once by
:func:`build_plan`: ``plan`` (int64: sizes, activation codes, offsets into
``theta`` and into the workspace) and ``fparams`` (each layer's activation
parameter, in the model dtype). Training scratch lives in ONE flat workspace
``ws`` per model and row capacity: every layer's Z and A (cap, units) and two
ping-pong gradient buffers (cap, widest layer). Nothing is allocated per step.

Batches larger than the capacity are processed in row chunks whose gradients
accumulate; only a batch that fits one chunk gets plain SGD folded into the
weight-gradient GEMM. ``predict`` and ``evaluate`` allocate their own small
buffers per call, so they are safe to run from several threads at once.

Numba's on-disk cache checks only a function's own source file, and the
functions here embed the kernels they call: after editing numba_blas,
numba_activations or numba_layers, delete ``kernels/__pycache__/*.nb[ic]``.
(Installing a release rewrites every file, so users never see stale code.)
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fastmlp.losses import MSE
from fastmlp.optimizers import (ADAM_CODE, BETA1, BETA2, EPS, LR, MOMENTUM, NESTEROV,
                                SGD_CODE, WEIGHT_DECAY)

from .numba_activations import bias_act_forward
from .numba_layers import (adam_update, dense_backward, dense_forward, loss_forward_backward,
                           loss_value, output_code, sgd_update)

# plan header, then one row of _ROW entries per layer
_L, _LOSS, _CAP, _G0, _G1, _HEAD = range(6)
_NIN, _NOUT, _CODE, _W, _B, _ALPHA, _Z, _A, _ROW = range(9)


def build_plan(dims, act_codes, offsets, loss_code, cap):
    """(plan int64, workspace length) for a network at ``cap`` rows per chunk.

    dims (L+1,), act_codes (L,), offsets (L, 3) as in :class:`fastmlp.network.Network`.
    """
    n_layers = len(act_codes)
    plan = np.zeros(_HEAD + _ROW * n_layers, dtype=np.int64)
    plan[[_L, _LOSS, _CAP]] = n_layers, loss_code, cap
    pos = 0
    for l in range(n_layers):
        row = _HEAD + _ROW * l
        plan[row + _NIN], plan[row + _NOUT], plan[row + _CODE] = dims[l], dims[l + 1], act_codes[l]
        plan[row + _W: row + _ALPHA + 1] = offsets[l]
        plan[row + _Z], plan[row + _A] = pos, pos + cap * dims[l + 1]
        pos += 2 * cap * dims[l + 1]
    widest = int(max(dims[1:]))
    plan[_G0], plan[_G1] = pos, pos + cap * widest
    return plan, int(pos + 2 * cap * widest)


@njit(cache=True)
def _params(theta, plan, l):
    """Views of layer l's W (k_in, k), b (k,) and alpha (k,), or (0,) if it has none."""
    row = _HEAD + _ROW * l
    k_in, k = plan[row + _NIN], plan[row + _NOUT]
    w, b, a = plan[row + _W], plan[row + _B], plan[row + _ALPHA]
    alpha = theta[a:a + k] if a >= 0 else theta[0:0]
    return theta[w:w + k_in * k].reshape((k_in, k)), theta[b:b + k], alpha


@njit(cache=True)
def _view(ws, start, n, k):
    return ws[start:start + n * k].reshape((n, k))


@njit(cache=True)
def _chunk(theta, grad, X, T, ws, plan, fparams, scale, beta, lr, decay):
    """Forward and backward over the rows of X (n <= cap); returns the summed loss.

    lr == 0: grad = beta * grad + scale * d(summed loss)/dtheta.
    lr > 0: plain SGD applied to theta layer by layer (beta must be 0).
    """
    n = X.shape[0]
    n_layers, loss = plan[_L], plan[_LOSS]
    inp = X
    for l in range(n_layers):
        row = _HEAD + _ROW * l
        k = plan[row + _NOUT]
        W, b, alpha = _params(theta, plan, l)
        A = _view(ws, plan[row + _A], n, k)
        dense_forward(inp, W, b, alpha, _view(ws, plan[row + _Z], n, k), A,
                      plan[row + _CODE], fparams[l])
        inp = A
    row = _HEAD + _ROW * (n_layers - 1)
    k = plan[row + _NOUT]
    D = _view(ws, plan[_G0], n, k)
    total = loss_forward_backward(_view(ws, plan[row + _Z], n, k), inp, T, loss, scale, D)
    gbuf = 0
    for l in range(n_layers - 1, -1, -1):
        row = _HEAD + _ROW * l
        k_in, k = plan[row + _NIN], plan[row + _NOUT]
        code, p = plan[row + _CODE], fparams[l]
        if l == n_layers - 1 and code != output_code(loss, code):
            code, p = output_code(loss, code), X.dtype.type(1.0)
        inp = X if l == 0 else _view(ws, plan[row - _ROW + _A], n, k_in)
        dX = _view(ws, plan[_G0 + 1 - gbuf], n if l > 0 else 0, k_in)
        W, b, alpha = _params(theta, plan, l)
        gW, gb, galpha = _params(grad, plan, l)
        dense_backward(inp, W, b, alpha, _view(ws, plan[row + _Z], n, k),
                       _view(ws, plan[row + _A], n, k), D, dX, code, p,
                       gW, gb, galpha, beta, lr, decay)
        D, gbuf = dX, 1 - gbuf
    return total


@njit(cache=True)
def loss_and_gradient(theta, grad, X, T, ws, plan, fparams):
    """Mean loss over X (n, k_0), T (n, k_L); grad (p,) OVERWRITTEN with its gradient."""
    n, cap = X.shape[0], plan[_CAP]
    total = 0.0
    for start in range(0, n, cap):
        stop = min(start + cap, n)
        total += _chunk(theta, grad, X[start:stop], T[start:stop], ws, plan, fparams,
                        1.0 / n, 0.0 if start == 0 else 1.0, 0.0, 1.0)
    return total / n


@njit(cache=True)
def _update(theta, grad, bufs, hyper, step, opt):
    step[0] += 1
    if opt == ADAM_CODE:
        adam_update(theta, grad, bufs[0], bufs[1], hyper[LR], hyper[BETA1], hyper[BETA2],
                    hyper[EPS], hyper[WEIGHT_DECAY], step[0])
    else:
        sgd_update(theta, grad, bufs[0], hyper[LR], hyper[MOMENTUM], hyper[NESTEROV] != 0,
                   hyper[WEIGHT_DECAY])


@njit(cache=True)
def train_step(theta, grad, X, T, bufs, hyper, step, opt, ws, plan, fparams):
    """One optimiser step on (X, T), in place on theta, bufs (2, p) and step (1,).

    opt: SGD_CODE or ADAM_CODE; hyper: float64 (7,) as in OptimizerState.
    Returns the mean loss before the step. grad (p,) is scratch.
    """
    n = X.shape[0]
    if opt == SGD_CODE and hyper[MOMENTUM] == 0 and n <= plan[_CAP]:
        lr = hyper[LR]
        total = _chunk(theta, grad, X, T, ws, plan, fparams, 1.0 / n, 0.0, lr,
                       1.0 - lr * hyper[WEIGHT_DECAY])
        step[0] += 1
        return total / n
    loss = loss_and_gradient(theta, grad, X, T, ws, plan, fparams)
    _update(theta, grad, bufs, hyper, step, opt)
    return loss


@njit(cache=True)
def train_epoch(theta, grad, X, T, perm, batch_size, Xb, Tb, bufs, hyper, step, opt,
                ws, plan, fparams):
    """One train_step per batch of rows perm[i:i + batch_size] (the last may be short).

    Xb (>= batch_size * k_0,), Tb (>= batch_size * k_L,) are gather scratch.
    Returns sum(batch loss * batch rows) / n.
    """
    n, k_in, k_out = perm.shape[0], X.shape[1], T.shape[1]
    total = 0.0
    for start in range(0, n, batch_size):
        rows = min(batch_size, n - start)
        xb = Xb[:rows * k_in].reshape((rows, k_in))
        tb = Tb[:rows * k_out].reshape((rows, k_out))
        for i in range(rows):
            r = perm[start + i]
            for j in range(k_in):
                xb[i, j] = X[r, j]
            for j in range(k_out):
                tb[i, j] = T[r, j]
        total += train_step(theta, grad, xb, tb, bufs, hyper, step, opt, ws, plan, fparams) * rows
    return total / n


@njit(cache=True)
def _forward_rows(theta, X, plan, fparams, buf, out, zout):
    """Forward X (c, k_0) in place through two (c * widest) halves of buf.

    The output layer's pre-activations go to zout (c, k_L) and its outputs to
    out (c, k_L); zout may be out itself when Z is not needed.
    """
    n, n_layers = X.shape[0], plan[_L]
    half = buf.shape[0] // 2
    inp = X
    for l in range(n_layers):
        row = _HEAD + _ROW * l
        k = plan[row + _NOUT]
        W, b, alpha = _params(theta, plan, l)
        if l == n_layers - 1:
            dense_forward(inp, W, b, alpha, zout, out, plan[row + _CODE], fparams[l])
        else:
            Z = _view(buf, (l % 2) * half, n, k)
            dense_forward(inp, W, b, alpha, Z, Z, plan[row + _CODE], fparams[l])
            inp = Z


@njit(cache=True)
def predict(theta, X, plan, fparams, chunk):
    """Outputs (n, k_L), a new array, computed ``chunk`` rows at a time."""
    n, n_layers = X.shape[0], plan[_L]
    widest = 0
    for l in range(n_layers):
        widest = max(widest, plan[_HEAD + _ROW * l + _NOUT])
    Y = np.empty((n, plan[_HEAD + _ROW * (n_layers - 1) + _NOUT]), dtype=X.dtype)
    buf = np.empty(2 * min(chunk, n) * widest, dtype=X.dtype)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        _forward_rows(theta, X[start:stop], plan, fparams, buf, Y[start:stop], Y[start:stop])
    return Y


@njit(cache=True)
def evaluate(theta, X, T, plan, fparams, chunk):
    """Mean loss over X (n, k_0), T (n, k_L), computed ``chunk`` rows at a time."""
    n, n_layers = X.shape[0], plan[_L]
    k_out = T.shape[1]
    widest = 0
    for l in range(n_layers):
        widest = max(widest, plan[_HEAD + _ROW * l + _NOUT])
    c = min(chunk, n)
    buf = np.empty(2 * c * widest, dtype=X.dtype)
    Z, A = np.empty((c, k_out), dtype=X.dtype), np.empty((c, k_out), dtype=X.dtype)
    total = 0.0
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        z, a = Z[:stop - start], A[:stop - start]
        _forward_rows(theta, X[start:stop], plan, fparams, buf, a, z)
        total += loss_value(z, a, T[start:stop], plan[_LOSS])
    return total / n
