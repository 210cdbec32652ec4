"""The activation table for the Numba kernels: forward and derivative by integer code.

Same codes and the same formulas as :mod:`fastmlp.activations` (the reference),
element by element. ``_f`` and ``_df`` are one row of the table each; the two
passes below branch on the code ONCE and then run a loop in which the code is a
compile-time constant, so each activation gets its own vectorisable loop (a
branch on the code inside the loop is about 100 times slower for ReLU).

``p`` is the activation's scalar parameter in the array dtype; prelu reads its
trainable per-unit alpha (k,) instead.
"""
from __future__ import annotations

import math

from numba import njit

from fastmlp.activations import (ELU, LEAKY_RELU, LINEAR, PIECEWISE_LINEAR, PRELU, RELU,
                                 SIGMOID, SIGN, SOFTMAX, SOFTPLUS, STEP, TANH)


@njit(inline="always")
def _sigmoid(z):
    e = math.exp(-abs(z))
    return 1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)


@njit(inline="always")
def _f(code, z, p):
    """f(z) of one element (every code but softmax, which needs its whole row)."""
    if code == STEP:
        return 1.0 if z > 0 else (0.0 if z < 0 else 0.5)
    if code == SIGN:
        return 1.0 if z > 0 else (-1.0 if z < 0 else 0.0)
    if code == LINEAR:
        return p * z
    if code == PIECEWISE_LINEAR:
        return min(max(z + 0.5, 0.0), 1.0)
    if code == SIGMOID:
        return _sigmoid(z)
    if code == TANH:
        return math.tanh(z)
    if code == RELU:
        return z if z > 0 else 0.0
    if code == LEAKY_RELU or code == PRELU:
        return z if z >= 0 else p * z
    if code == ELU:
        return z if z >= 0 else p * math.expm1(z)
    if code == SOFTPLUS:
        return max(z, 0.0) + math.log1p(math.exp(-abs(z)))
    return z


@njit(inline="always")
def _df(code, z, f, p):
    """df/dz of one element from z and f = f(z); ReLU's is 0 at z <= 0, step's and sign's 0."""
    if code == LINEAR:
        return p
    if code == PIECEWISE_LINEAR:
        return 1.0 if -0.5 < z < 0.5 else 0.0
    if code == SIGMOID:
        return f * (1.0 - f)
    if code == TANH:
        return 1.0 - f * f
    if code == RELU:
        return 1.0 if z > 0 else 0.0
    if code == LEAKY_RELU or code == PRELU:
        return 1.0 if z >= 0 else p
    if code == ELU:
        return 1.0 if z >= 0 else f + p
    if code == SOFTPLUS:
        return _sigmoid(z)
    return 0.0  # step, sign


@njit(inline="always")
def _forward_loop(Z, b, A, code, p, alpha):
    n, k = Z.shape
    for i in range(n):
        for j in range(k):
            z = Z[i, j] + b[j]
            Z[i, j] = z
            A[i, j] = _f(code, z, alpha[j] if code == PRELU else p)


@njit(inline="always")
def _softmax_forward(Z, b, A):
    n, k = Z.shape
    for i in range(n):
        m = Z[i, 0] + b[0]
        for j in range(k):
            z = Z[i, j] + b[j]
            Z[i, j] = z
            m = max(m, z)
        s = 0.0
        for j in range(k):
            e = math.exp(Z[i, j] - m)
            A[i, j] = e
            s += e
        for j in range(k):
            A[i, j] = A[i, j] / s


@njit(cache=True)
def bias_act_forward(Z, b, A, code, p, alpha):
    """Z (n, k) += b (k,) in place; A (n, k) = f(Z), OVERWRITTEN. A may be Z itself.

    ``alpha`` (k,) is prelu's per-unit parameter (any array for other codes).
    """
    # One call per code with a literal, so each loop is compiled for its activation.
    if code == RELU:
        _forward_loop(Z, b, A, RELU, p, alpha)
    elif code == SIGMOID:
        _forward_loop(Z, b, A, SIGMOID, p, alpha)
    elif code == TANH:
        _forward_loop(Z, b, A, TANH, p, alpha)
    elif code == LINEAR:
        _forward_loop(Z, b, A, LINEAR, p, alpha)
    elif code == LEAKY_RELU:
        _forward_loop(Z, b, A, LEAKY_RELU, p, alpha)
    elif code == PRELU:
        _forward_loop(Z, b, A, PRELU, p, alpha)
    elif code == ELU:
        _forward_loop(Z, b, A, ELU, p, alpha)
    elif code == SOFTPLUS:
        _forward_loop(Z, b, A, SOFTPLUS, p, alpha)
    elif code == PIECEWISE_LINEAR:
        _forward_loop(Z, b, A, PIECEWISE_LINEAR, p, alpha)
    elif code == STEP:
        _forward_loop(Z, b, A, STEP, p, alpha)
    elif code == SIGN:
        _forward_loop(Z, b, A, SIGN, p, alpha)
    elif code == SOFTMAX:
        _softmax_forward(Z, b, A)


@njit(inline="always")
def _backward_loop(D, Z, A, code, p, alpha, gb, galpha):
    n, k = D.shape
    for i in range(n):
        for j in range(k):
            d = D[i, j]
            if code == PRELU:
                z = Z[i, j]
                galpha[j] += d * min(z, 0.0)  # d prelu / d alpha = min(z, 0)
                delta = d if z >= 0 else d * alpha[j]
            else:
                delta = d * _df(code, Z[i, j], A[i, j], p)
            D[i, j] = delta
            gb[j] += delta


@njit(inline="always")
def _softmax_backward(D, A, gb):
    """delta = J^T dout per row without forming J: p * (dout - sum(dout * p))."""
    n, k = D.shape
    for i in range(n):
        s = 0.0
        for j in range(k):
            s += D[i, j] * A[i, j]
        for j in range(k):
            delta = A[i, j] * (D[i, j] - s)
            D[i, j] = delta
            gb[j] += delta


@njit(cache=True)
def act_backward(D, Z, A, code, p, alpha, gb, galpha, beta):
    """Chain rule through the activation, in one pass over the layer.

    D (n, k): dE/dA in, OVERWRITTEN with delta = dE/dZ. Z, A (n, k): the layer's
    pre-activations and outputs. gb (k,) = beta * gb + sum over rows of delta;
    for prelu galpha (k,) = beta * galpha + sum of dE/dA * min(Z, 0) (beta 0
    overwrites, 1 accumulates). ``code == LINEAR`` with ``p == 1`` leaves D as is
    and only sums gb: the fused loss paths, whose D is already dE/dZ.
    """
    for j in range(gb.shape[0]):
        gb[j] = 0 if beta == 0 else beta * gb[j]
    if code == PRELU:
        for j in range(galpha.shape[0]):
            galpha[j] = 0 if beta == 0 else beta * galpha[j]
    if code == RELU:
        _backward_loop(D, Z, A, RELU, p, alpha, gb, galpha)
    elif code == SIGMOID:
        _backward_loop(D, Z, A, SIGMOID, p, alpha, gb, galpha)
    elif code == TANH:
        _backward_loop(D, Z, A, TANH, p, alpha, gb, galpha)
    elif code == LINEAR:
        _backward_loop(D, Z, A, LINEAR, p, alpha, gb, galpha)
    elif code == LEAKY_RELU:
        _backward_loop(D, Z, A, LEAKY_RELU, p, alpha, gb, galpha)
    elif code == PRELU:
        _backward_loop(D, Z, A, PRELU, p, alpha, gb, galpha)
    elif code == ELU:
        _backward_loop(D, Z, A, ELU, p, alpha, gb, galpha)
    elif code == SOFTPLUS:
        _backward_loop(D, Z, A, SOFTPLUS, p, alpha, gb, galpha)
    elif code == PIECEWISE_LINEAR:
        _backward_loop(D, Z, A, PIECEWISE_LINEAR, p, alpha, gb, galpha)
    elif code == SOFTMAX:
        _softmax_backward(D, A, gb)
    else:  # step, sign: no gradient flows
        _backward_loop(D, Z, A, STEP, p, alpha, gb, galpha)
