"""One dense layer forward and backward, the losses, and the fused optimiser passes.

Every kernel writes into buffers the caller owns; docstrings say which
arguments are overwritten and which accumulate. The layer kernels are inlined into
the training chunk, which runs them once per batch; the loss is a kernel of its own,
compiled for the network's loss code alone and called by address (LOSS): its three
losses inlined into the training kernel were 1.3 s of its 7 s first compile, and the
call costs the vehicle net's epoch 0.04 us of 0.8 (measured 2026-12-07).
``loss_value`` is also compiled on its own, for every code, as ``loss_value_kernel``
for evaluate, which calls it by name (:mod:`numba_link`). (The forward pass of predict and evaluate runs
numba_blas.gemm_nn and the linked bias_act_forward itself: a compiled dense_forward of
its own cost a third of a second of the first compile.) Shapes: n rows, k_in inputs,
k outputs; W (k_in, k) row-major as in ``theta``. Sums of losses are float64.
"""
from __future__ import annotations

import math

from numba import njit, types
from numba.extending import overload

from fastmlp.codes import BINARY_CROSS_ENTROPY, CROSS_ENTROPY, MSE, SUM_BLOCK

from .numba_activations import FORWARD, add_sums
from .numba_blas import gemm_nn, gemm_tn
from .numba_link import Late
from .numba_math import (INLINE, OVERLOAD, code_chain, helper, is_code, kernel,
                         literal_code, only_for)
from .numba_math import exp as _exp
from .numba_math import log1p as _log1p
from .numba_views import column_sums, flat


_bias_act_forward_at = FORWARD.call


@njit(**INLINE)
def dense_forward(X, W, b, alpha, Z, A, code, p, want_max, at):
    """Z (n, k) = X (n, k_in) @ W + b and A (n, k) = f(Z), both OVERWRITTEN; returns
    max |A| when ``want_max``, else 0 (bias_act_forward, for activation ``code``, at
    ``at``: numba_activations.FORWARD).

    A may be Z, but LLVM keeps a pass whose arrays may overlap scalar: 4x slower.
    """
    gemm_nn(X, W, Z, 1.0, 0.0)
    return _bias_act_forward_at(at, Z, b, A, code, p, alpha, want_max)


@njit(**INLINE)
def dense_params(X, D, W, b, alpha, gW, gb, galpha, beta, lr, decay):
    """The layer's parameter gradients from its delta D = dE/dZ (n, k) and input X
    (n, k_in), or with ``lr > 0`` plain SGD applied to them.

    The backward pass's second sweep: it runs after every layer's delta is known
    (act_backward), so nothing is written to theta before then.
    ``lr == 0``: gW (k_in, k), gb = beta * old + this batch's gradient (galpha was
    written by act_backward).
    ``lr > 0`` (plain SGD, beta must be 0; when: fastmlp.rules.sgd_fold_rows):
    W <- decay * W - lr * X.T @ delta, decay = 1 - lr * weight_decay, in
    the GEMM itself, so dW is never formed; b and alpha likewise through gb and
    galpha, gb OVERWRITTEN with its gradient on the way. (Measured against
    a GEMM into gW and then an update pass: train steps 5-25 % faster on W2,
    1-6 % on W3, 8 % on W4.)
    """
    # the scalars in the array dtype, as BLAS takes them: a float64 one would make each
    # float32 element's arithmetic float64, with conversions
    lr_, decay_ = gb.dtype.type(lr), gb.dtype.type(decay)
    # gb: the chunk's column sums formed in float64, a block of columns at a time, and
    # added once (added row by row to a float32 gb, a batch of a million rows lost up to
    # 1 % of it to rounding)
    acc = column_sums()
    n, k = D.shape
    for j0 in range(0, k, SUM_BLOCK):
        m = min(SUM_BLOCK, k - j0)
        for j in range(m):
            acc[j] = 0.0
        for i in range(n):
            # the row's block as a view indexed from 0: D[i, j0 + j] kept Numba's check
            # for a negative index in, and LLVM made the loop a gather (a third of the
            # numba W3 step's own time)
            d = flat(D, i * k + j0, i * k + j0 + m)
            for j in range(m):
                acc[j] += d[j]
        add_sums(acc, m, gb, j0, beta)
    # one call site: gemm_tn is inlined, and each copy costs compile time
    fold = lr != 0
    gemm_tn(X, D, W if fold else gW, -lr if fold else 1.0, decay if fold else beta)
    if not fold:
        return
    for j in range(b.shape[0]):
        b[j] = decay_ * b[j] - lr_ * gb[j]
    for j in range(galpha.shape[0]):
        alpha[j] = decay_ * alpha[j] - lr_ * galpha[j]


@kernel
def loss_forward_backward(Z, A, T, loss, scale, D):
    """Sum over rows of the loss, and D (n, k) OVERWRITTEN with scale * dE_sum/d(output).

    For mse D is dE/dA = 2 scale (A - T). For the fused pairs it is dE/dZ
    directly: softmax + cross-entropy gives scale (A s - T), s = sum_j T[i, j]
    the row's target sum (s = 1 for one-hot and soft-label rows; targets need
    not sum to 1); sigmoid + binary cross-entropy gives scale (A - T).
    Pass scale = 1 / (rows in the whole batch) for the mean loss.
    An unknown loss code raises ValueError. Compiled for a literal ``loss`` (LOSS: the
    training kernel calls it so), it holds that loss's code alone.
    """
    if is_code(loss, CROSS_ENTROPY):
        return _cross_entropy_pass(loss, Z, A, T, scale, D)
    n, k = A.shape
    c = _delta_scale(loss, scale, A)
    total = loss_value(Z, A, T, loss)
    a, t, d = flat(A, 0, n * k), flat(T, 0, n * k), flat(D, 0, n * k)
    for i in range(n * k):
        d[i] = c * (a[i] - t[i])
    return total


@helper
def _cross_entropy_forward_backward(Z, A, T, scale, D):
    """One pass per row: the loss, the target sum s, then the row of D (see
    loss_forward_backward)."""
    n, k = A.shape
    scale_ = A.dtype.type(scale)  # D's arithmetic in its dtype (see dense_params)
    total = 0.0
    for i in range(n):
        m, logs = _max_logsumexp(Z, i)
        s = A.dtype.type(0.0)  # in the array dtype: a float32 row stays float32
        for j in range(k):
            t = T[i, j]
            s += t
            if t != 0:  # nothing, even where z - m is -inf (0 * -inf: NaN)
                total -= t * ((Z[i, j] - m) - logs)
        for j in range(k):
            D[i, j] = scale_ * (A[i, j] * s - T[i, j])
    return total


# (a kernel compiled for another loss never types it)
_cross_entropy_pass = only_for(CROSS_ENTROPY, _cross_entropy_forward_backward)


def _delta_scale(loss, scale, A):
    """c, in A's dtype, of D = c (A - T): 2 scale for mse, scale for the binary
    cross-entropy (the float64 ``scale`` rounded once); ValueError for another code."""


@overload(_delta_scale, jit_options=OVERLOAD, prefer_literal=True)
def _delta_scale_for(loss, scale, A):
    if literal_code(loss) == MSE:
        return lambda loss, scale, A: A.dtype.type(2.0 * scale)
    if literal_code(loss) in (BINARY_CROSS_ENTROPY, CROSS_ENTROPY):  # (CE: never called)
        return lambda loss, scale, A: A.dtype.type(scale)

    def any_code(loss, scale, A):
        if loss == MSE:
            return A.dtype.type(2.0 * scale)
        elif loss == BINARY_CROSS_ENTROPY:
            return A.dtype.type(scale)
        raise ValueError("unknown loss code")
    return any_code


@njit(**INLINE)
def _max_logsumexp(Z, i):
    """(m, log sum_j e^(Z[i, j] - m)) of row i, m its maximum, so nothing overflows.
    Kept apart, for log_softmax = (z - m) - log s: z - (m + log s) loses the log
    once |m| is large (m + log s rounds to m). (Row i by index, not as a view Z[i]:
    a view of a reference-counted array costs two atomic operations.)"""
    k = Z.shape[1]
    m = Z[i, 0]
    for j in range(k):
        m = max(m, Z[i, j])
    s = 0.0
    for j in range(k):
        s += _exp(Z[i, j] - m)
    return m, math.log(s)


@njit(**INLINE)
def loss_value(Z, A, T, loss):
    """Sum over rows (float64) of the loss, computed stably from the pre-activations Z
    (ValueError for an unknown code; for a literal one, its own sum alone compiles)."""
    return _loss_sum(loss, Z, A, T)


@helper
def _mse_sum(Z, A, T):
    n, k = A.shape
    total = 0.0
    for i in range(n):
        for j in range(k):
            d = A[i, j] - T[i, j]
            total += d * d
    return total


@helper
def _cross_entropy_sum(Z, A, T):
    """-sum t * log_softmax(z)."""
    n, k = A.shape
    total = 0.0
    for i in range(n):
        m, logs = _max_logsumexp(Z, i)
        for j in range(k):
            if T[i, j] != 0:  # nothing, even where z - m is -inf (0 * -inf: NaN)
                total -= T[i, j] * ((Z[i, j] - m) - logs)
    return total


@helper
def _binary_cross_entropy_sum(Z, A, T):
    """sum softplus(z) - t z."""
    n, k = A.shape
    total = 0.0
    for i in range(n):
        for j in range(k):
            z = Z[i, j]
            total += max(z, 0.0) + _log1p(_exp(-abs(z))) - T[i, j] * z
    return total


_LOSS_SUMS = {MSE: _mse_sum, CROSS_ENTROPY: _cross_entropy_sum,
              BINARY_CROSS_ENTROPY: _binary_cross_entropy_sum}
_LOSS_CHAIN = code_chain(_LOSS_SUMS, "Z, A, T", "loss", name="loss")


def _loss_sum(loss, Z, A, T):
    """The sum over rows of loss ``loss`` (see loss_value)."""


@overload(_loss_sum, jit_options=OVERLOAD, prefer_literal=True)
def _loss_sum_for(loss, Z, A, T):
    if literal_code(loss) in _LOSS_SUMS:
        known = _LOSS_SUMS[literal_code(loss)]
        return lambda loss, Z, A, T: known(Z, A, T)

    return _LOSS_CHAIN


def _loss_types(dtype):
    """loss_forward_backward's argument types, as the training kernel passes them."""
    rows = types.Array(dtype, 2, "C")
    read = rows.copy(readonly=True)   # (A is typed as the inputs are, which may be read-only)
    return (rows, read, read, types.int64, types.float64, rows)


# The training kernel calls the loss by address, compiled for the network's loss code
# alone (argument 3, a literal) when the network's workspace is made (numba_train): the
# three losses inlined into it were a sixth of its first compile.
LOSS = Late(loss_forward_backward, _loss_types, 3, types.float64)


# Compiled on its own, once per dtype, for evaluate, which calls it by name.
loss_value_kernel = kernel(loss_value.py_func)


@kernel
def sgd_update(theta, grad, v, lr, momentum, nesterov, decay):
    """theta (p,) -= lr * step, in place; v (p,) is the momentum buffer, updated in place.

    g = grad + decay * theta; with momentum v = momentum v + g and the step is v
    (g + momentum v for Nesterov), else g. As fastmlp.optimizers.update, operation for
    operation, in theta's dtype: the float64 hyper-parameters are rounded to it first
    (NumPy's weak Python scalars do the same there), so a float32 update overflows, and
    an lr beyond float32's range is inf, where the reference's does and is. Whether a
    term is applied is decided on the float64 values, as the reference's ``if``s.
    """
    lr_, mu_, wd_ = theta.dtype.type(lr), theta.dtype.type(momentum), theta.dtype.type(decay)
    for i in range(theta.shape[0]):
        g = grad[i] + wd_ * theta[i] if decay != 0 else grad[i]
        if momentum != 0:
            vi = mu_ * v[i] + g
            v[i] = vi
            g = g + mu_ * vi if nesterov else vi
        theta[i] -= lr_ * g


@kernel
def adam_update(theta, grad, m, v, lr, beta1, beta2, eps, decay, t):
    """Adam step t (1-based) in place on theta, m and v (all (p,)); grad is read only.

    As fastmlp.optimizers.update (and kernels/_optimizers.pxd), operation for operation
    in theta's dtype (see sgd_update): 1 - beta and the bias corrections 1 - beta^t are
    computed in float64 and then rounded, m_hat = m / k1 and v_hat = v / k2 divided,
    not multiplied by a reciprocal. (beta ** float(t): the C pow that Python's float **
    int calls, not Numba's repeated multiplication for an integer power.)
    """
    dt = theta.dtype.type
    lr_, wd_, b1, b2, eps_ = dt(lr), dt(decay), dt(beta1), dt(beta2), dt(eps)
    c1, c2 = dt(1.0 - beta1), dt(1.0 - beta2)
    k1, k2 = dt(1.0 - beta1 ** float(t)), dt(1.0 - beta2 ** float(t))
    for i in range(theta.shape[0]):
        g = grad[i] + wd_ * theta[i] if decay != 0 else grad[i]
        mi = b1 * m[i] + c1 * g
        vi = b2 * v[i] + c2 * g * g
        m[i] = mi
        v[i] = vi
        theta[i] -= lr_ * (mi / k1) / (math.sqrt(vi / k2) + eps_)
