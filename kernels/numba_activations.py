"""The activation table for the Numba kernels: forward and derivative by integer code.

Same codes (:mod:`fastmlp.codes`) and the same formulas as
:mod:`fastmlp.activations` (the reference), element by element. Each pass
goes through blocks of rows (ACT_BLOCK elements) and runs one activation's own loop
over the block's elements as one flat array (prelu and softmax row by row), which LLVM
vectorises; a branch on the code per element is about 100 times slower for ReLU, and a
loop per row of a narrow layer (2 or 4 units) is too short to vectorise. Each
activation's forward loop and derivative loop are helpers of their own, listed in the
same order in _FORWARD_LOOPS and _BACKWARD_LOOPS; a code that has no loop raises
ValueError.

The training and predict kernels call the two passes by address, each compiled for one
activation code (FORWARD, BACKWARD): overloads on the code, typed as a literal there,
pick that activation's loop alone, so a network's first compile holds its own
activations' loops. Called with a code known only at run time (as tests do), the passes
hold every loop, picked per block, the same helpers. (Measured before: every
activation compiled into one pair of kernels took 4 s of a first compile, a whole-layer
function per activation and pass compiled for all of them 17.5-19.5 s per dtype.)

exp, expm1, log1p and tanh are :mod:`numba_math`'s vectorisable versions. Every
constant is in the array dtype (``zero``, ``one``, ``like``): a float64 literal
would turn a float32 loop into a float64 one at half the vector width. ``p`` is
the activation's scalar parameter in the array dtype; prelu reads its trainable
per-unit alpha (k,) instead.
"""
from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from fastmlp.codes import (ELU, LEAKY_RELU, LINEAR, PIECEWISE_LINEAR, PRELU, RELU, SIGMOID,
                           SIGN, SOFTMAX, SOFTPLUS, STEP, SUM_BLOCK, TANH)

from .numba_link import Late, separate
from .numba_math import (INLINE, OVERLOAD, abs_max, code_chain, helper, is_code, kernel,
                         only_for)
from .numba_math import exp as _exp
from .numba_math import expm1 as _expm1
from .numba_math import like
from .numba_math import log1p as _log1p
from .numba_math import tanh as _tanh
from .numba_views import column_sums, flat


@njit(**INLINE)
def _sigmoid(z):
    """1 / (1 + e^-z) without overflow; a select, not a branch, on the sign of z."""
    one = like(1.0, z)
    e = _exp(-abs(z))
    r = one / (one + e)
    return r if z >= 0 else e * r


@njit(**INLINE)
def _softplus(z):
    """ln(1 + e^z) as max(z, 0) + log1p(e^-|z|)."""
    return max(z, like(0.0, z)) + _log1p(_exp(-abs(z)))


@kernel
def _softmax_forward(Z, b, A):
    n, k = Z.shape
    whole = k - k % 8
    for i in range(n):
        # each row through 1-D views indexed from 0: indexed as Z[i, j + 1], each element
        # kept Numba's negative-index check and the lanes below did not vectorise
        z, a = flat(Z, i * k, i * k + k), flat(A, i * k, i * k + k)
        for j in range(k):
            z[j] = z[j] + b[j]
        # The max and the float64 sum in eight lanes, then the lanes and the tail in
        # order, as the Cython kernel sums (_activations.pxd, SOFTMAX_LANES): as one
        # chain of dependent compares or adds, this pass cost a 1,000-class row 2.9 ns an
        # element in float32, 1.6 ns in lanes. A NaN anywhere makes the row NaN.
        m = z[0]
        m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = m
        for j in range(0, whole, 8):
            m0 = z[j] if z[j] > m0 else m0
            m1 = z[j + 1] if z[j + 1] > m1 else m1
            m2 = z[j + 2] if z[j + 2] > m2 else m2
            m3 = z[j + 3] if z[j + 3] > m3 else m3
            m4 = z[j + 4] if z[j + 4] > m4 else m4
            m5 = z[j + 5] if z[j + 5] > m5 else m5
            m6 = z[j + 6] if z[j + 6] > m6 else m6
            m7 = z[j + 7] if z[j + 7] > m7 else m7
        for t in (m0, m1, m2, m3, m4, m5, m6, m7):
            m = t if t > m else m
        for j in range(whole, k):
            m = z[j] if z[j] > m else m
        for j in range(k):
            a[j] = _exp(z[j] - m)
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
        for j in range(0, whole, 8):
            s0 += a[j]
            s1 += a[j + 1]
            s2 += a[j + 2]
            s3 += a[j + 3]
            s4 += a[j + 4]
            s5 += a[j + 5]
            s6 += a[j + 6]
            s7 += a[j + 7]
        s = s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7
        for j in range(whole, k):
            s += a[j]
        s_ = like(s, m)  # m is in the array dtype
        for j in range(k):
            a[j] = a[j] / s_


_softmax_forward_linked = separate(_softmax_forward)
_abs_max_linked = separate(abs_max, read_only=True)
# elements per block of rows (bias_act_forward, act_backward): a float64 block of Z and
# one of A take 32 KiB, in L1 between the block's passes
ACT_BLOCK = 2048


# One loop per activation and pass, each over a block of rows: Z and A (n, k), zf and af
# the same rows r0:r1 flat (r1 - r0) * k; prelu alone reads them row by row, with alpha
# (k,). In the array dtype throughout (see the module docstring).

@helper
def _relu(Z, A, zf, af, r0, r1, p, alpha):
    # max(z, 0) as the reference's np.maximum: NaN stays NaN (z <= 0 is False) and -0
    # becomes +0
    zero = zf.dtype.type(0.0)
    for t in range(zf.shape[0]):
        z = zf[t]
        af[t] = zero if z <= 0 else z


@helper
def _prelu(Z, A, zf, af, r0, r1, p, alpha):
    for i in range(r0, r1):
        for j in range(Z.shape[1]):
            z = Z[i, j]
            A[i, j] = z if z >= 0 else alpha[j] * z


@helper
def _sigmoid_loop(Z, A, zf, af, r0, r1, p, alpha):
    for t in range(zf.shape[0]):
        af[t] = _sigmoid(zf[t])


@helper
def _tanh_loop(Z, A, zf, af, r0, r1, p, alpha):
    for t in range(zf.shape[0]):
        af[t] = _tanh(zf[t])


@helper
def _linear(Z, A, zf, af, r0, r1, p, alpha):
    for t in range(zf.shape[0]):
        af[t] = p * zf[t]


@helper
def _leaky_relu(Z, A, zf, af, r0, r1, p, alpha):
    for t in range(zf.shape[0]):
        z = zf[t]
        af[t] = z if z >= 0 else p * z


@helper
def _elu(Z, A, zf, af, r0, r1, p, alpha):
    zero = zf.dtype.type(0.0)
    for t in range(zf.shape[0]):
        z = zf[t]
        af[t] = z if z >= 0 else p * _expm1(min(z, zero))


@helper
def _softplus_loop(Z, A, zf, af, r0, r1, p, alpha):
    for t in range(zf.shape[0]):
        af[t] = _softplus(zf[t])


@helper
def _piecewise_linear(Z, A, zf, af, r0, r1, p, alpha):
    zero, half, one = zf.dtype.type(0.0), zf.dtype.type(0.5), zf.dtype.type(1.0)
    for t in range(zf.shape[0]):
        af[t] = min(max(zf[t] + half, zero), one)


@helper
def _step(Z, A, zf, af, r0, r1, p, alpha):
    zero, half, one = zf.dtype.type(0.0), zf.dtype.type(0.5), zf.dtype.type(1.0)
    for t in range(zf.shape[0]):
        z = zf[t]
        af[t] = one if z > 0 else (zero if z < 0 else half)


@helper
def _sign(Z, A, zf, af, r0, r1, p, alpha):
    # as np.sign: NaN stays NaN, -0 becomes +0
    zero, one = zf.dtype.type(0.0), zf.dtype.type(1.0)
    for t in range(zf.shape[0]):
        z = zf[t]
        af[t] = one if z > 0 else (-one if z < 0 else (zero if z == 0 else z))


_FORWARD_LOOPS = {RELU: _relu, PRELU: _prelu, SIGMOID: _sigmoid_loop, TANH: _tanh_loop,
                  LINEAR: _linear, LEAKY_RELU: _leaky_relu, ELU: _elu,
                  SOFTPLUS: _softplus_loop, PIECEWISE_LINEAR: _piecewise_linear,
                  STEP: _step, SIGN: _sign}
_FORWARD_CHAIN = code_chain(_FORWARD_LOOPS, "Z, A, zf, af, r0, r1, p, alpha", "activation")


def _forward_loop(code, Z, A, zf, af, r0, r1, p, alpha):
    """The forward loop of activation ``code`` (not softmax) over one block (see above)."""


@overload(_forward_loop, jit_options=OVERLOAD, prefer_literal=True)
def _forward_loop_for(code, Z, A, zf, af, r0, r1, p, alpha):
    # a code known when the caller compiles (a literal: bias_act_forward specialised,
    # numba_link.Late): that activation's loop alone is typed and compiled; else every loop,
    # picked per block
    loop = _known(code, _FORWARD_LOOPS, (SOFTMAX,))
    if loop is not None:
        def known(code, Z, A, zf, af, r0, r1, p, alpha):
            loop(Z, A, zf, af, r0, r1, p, alpha)
        return known

    return _FORWARD_CHAIN


def _known(code, table, own):
    """table[code] where ``code`` is typed as a literal (a kernel specialised on it); a
    stand-in never called where that code's pass is a branch of its own (``own``: softmax,
    prelu's derivative); None where the code is known only at run time, or has no loop
    here (every loop then, and the ValueError of an unknown code)."""
    if not isinstance(code, types.IntegerLiteral):
        return None
    if code.literal_value in own:
        return _nothing
    return table.get(code.literal_value)


@helper
def _nothing(*args):
    pass


@helper
def _softmax_whole(Z, b, A, want_max):
    """Softmax's forward pass (Z += b; A = softmax(Z) by rows), then max |A| if want_max."""
    _softmax_forward_linked(Z, b, A)
    return _abs_max_linked(A, 0, Z.shape[0]) if want_max else 0.0


# (a kernel compiled for another code never types, links or compiles the softmax kernels)
_softmax_pass = only_for(SOFTMAX, _softmax_whole)


@kernel
def bias_act_forward(Z, b, A, code, p, alpha, want_max):
    """Z (n, k) += b (k,) in place; A (n, k) = f(Z), OVERWRITTEN. A may be Z itself.
    Both C-contiguous. Returns max |A| (float64; inf if one is NaN or inf) when
    ``want_max`` (the guarded step's bound), else 0.

    ``alpha`` (k,) is prelu's per-unit parameter (any array for other codes).
    Rows go in blocks of about ACT_BLOCK elements: the bias goes in row by row, then
    the activation runs as one loop over the block's elements (prelu, whose alpha is
    per unit, row by row), then the block's max |A|, all while the block is in L1 (as
    three passes over the layer, each from L2, they cost the W3 step about 2 %; the
    Cython kernels fuse the three row by row). A narrow layer's rows of 2 or 4
    elements are too short to vectorise one by one (a 3-4-2 sigmoid net's forward pass
    took twice as long row by row); a block of them is not.
    Compiled for a literal ``code`` (FORWARD: numba_link.Late), it holds that
    activation's code alone.
    """
    n, k = Z.shape
    if is_code(code, SOFTMAX):
        return _softmax_pass(code, Z, b, A, want_max)
    step = max(1, ACT_BLOCK // max(k, 1))
    top = 0.0
    for r0 in range(0, n, step):
        r1 = min(r0 + step, n)
        for i in range(r0, r1):
            for j in range(k):
                Z[i, j] += b[j]
        _forward_loop(code, Z, A, flat(Z, r0 * k, r1 * k), flat(A, r0 * k, r1 * k), r0, r1,
                      p, alpha)
        if want_max:
            v = _abs_max_linked(A, r0, r1)
            top = v if not (v <= top) else top  # NaN and inf win
    return top


@kernel
def _softmax_backward(G, A, Z):
    """Z OVERWRITTEN with delta = J^T g per row without forming J: f * (g - sum(g * f))."""
    n, k = G.shape
    for i in range(n):
        s = 0.0
        for j in range(k):
            s += G[i, j] * A[i, j]
        for j in range(k):
            Z[i, j] = A[i, j] * (G[i, j] - s)


_softmax_backward_linked = separate(_softmax_backward)


@helper
def add_sums(acc, m, out, j0, beta):
    """out[j0:j0 + m] = acc[:m], a chunk's column sums formed in float64 (column_sums),
    rounded to out's dtype: OVERWRITTEN (beta 0), or added to beta * out (beta 1, the
    later chunks of a batch), once per chunk (as kernels/_layers.pxd's add_sums)."""
    beta_ = out.dtype.type(beta)
    for j in range(m):
        s = out.dtype.type(acc[j])
        out[j0 + j] = s if beta == 0 else beta_ * out[j0 + j] + s


@kernel
def act_backward(G, Z, A, code, p, alpha, galpha, beta, want_max):
    """Chain rule through the activation, in one pass over the layer, out of place.

    G (n, k): dE/dA, read only. Z (n, k): IN the layer's pre-activations, OUT
    OVERWRITTEN with delta = dE/dZ (each z's last use is its own derivative). A (n, k):
    the layer's outputs. For prelu galpha (k,) = beta * galpha + sum of dE/dA * min(Z, 0)
    (beta 0 overwrites, 1 accumulates). Returns max |delta| (float64; inf if one is NaN
    or inf) when ``want_max``, else 0: taken block by block as bias_act_forward's.
    ReLU's derivative is 0 at z <= 0; step's and sign's are 0 everywhere. Every
    branch MULTIPLIES g by the derivative of fastmlp.activations' table, as the
    reference does, never selects g or 0: an inf or NaN g where the derivative is 0
    gives NaN (inf * 0), as there, so an overflowed gradient is not hidden and the step
    diverges. G[i, j] is loaded whatever z is, so each ternary stays a select and the
    loop vectorises (a conditional load made relu's a branchy scalar loop, 1.6x slower).
    """
    n, k = Z.shape
    if is_code(code, SOFTMAX):
        return _softmax_backward_pass(code, G, A, Z, want_max)
    if is_code(code, PRELU):  # alpha per unit: row by row, a block of columns at a time
        return _prelu_backward_pass(code, G, Z, alpha, galpha, beta, want_max)
    step = max(1, ACT_BLOCK // max(k, 1))
    top = 0.0
    for r0 in range(0, n, step):
        r1 = min(r0 + step, n)
        _backward_loop(code, flat(G, r0 * k, r1 * k), flat(Z, r0 * k, r1 * k),
                       flat(A, r0 * k, r1 * k), p)
        if want_max:
            v = _abs_max_linked(Z, r0, r1)
            top = v if not (v <= top) else top  # NaN and inf win
    return top


# The derivative loops, one per activation (prelu's and softmax's: whole passes above),
# over one block: gf (dE/dA), zf (IN z, OUT delta) and af (f), the same rows flat.

@helper
def _relu_backward(gf, zf, af, p):
    zero, one = zf.dtype.type(0.0), zf.dtype.type(1.0)
    for t in range(zf.shape[0]):
        g = gf[t]
        zf[t] = g * (one if zf[t] > 0 else zero)


@helper
def _sigmoid_backward(gf, zf, af, p):
    one = zf.dtype.type(1.0)
    for t in range(zf.shape[0]):
        f = af[t]
        zf[t] = gf[t] * (f * (one - f))


@helper
def _tanh_backward(gf, zf, af, p):
    one = zf.dtype.type(1.0)
    for t in range(zf.shape[0]):
        f = af[t]
        zf[t] = gf[t] * (one - f * f)


@helper
def _linear_backward(gf, zf, af, p):
    for t in range(zf.shape[0]):
        zf[t] = gf[t] * p


@helper
def _leaky_relu_backward(gf, zf, af, p):
    one = zf.dtype.type(1.0)
    for t in range(zf.shape[0]):
        g = gf[t]
        zf[t] = g * (one if zf[t] >= 0 else p)


@helper
def _elu_backward(gf, zf, af, p):
    zero, one = zf.dtype.type(0.0), zf.dtype.type(1.0)
    for t in range(zf.shape[0]):
        g = gf[t]
        # alpha e^z, not f + alpha: that cancels (0 below z = -17 in float32); e^z in
        # float64, as the reference (a float32 e^z below 1e-38 loses its digits)
        z = zf[t]
        zf[t] = g * (one if z >= 0 else zf.dtype.type(p * _exp(np.float64(min(z, zero)))))


@helper
def _softplus_backward(gf, zf, af, p):
    for t in range(zf.shape[0]):
        zf[t] = gf[t] * _sigmoid(zf[t])


@helper
def _piecewise_linear_backward(gf, zf, af, p):
    zero, half, one = zf.dtype.type(0.0), zf.dtype.type(0.5), zf.dtype.type(1.0)
    for t in range(zf.shape[0]):
        g = gf[t]
        z = zf[t]
        zf[t] = g * (one if (z > -half) & (z < half) else zero)


@helper
def _flat_backward(gf, zf, af, p):
    """step's and sign's: no gradient flows, g * 0 (NaN for an inf g)."""
    zero = zf.dtype.type(0.0)
    for t in range(zf.shape[0]):
        zf[t] = gf[t] * zero


_BACKWARD_LOOPS = {RELU: _relu_backward, SIGMOID: _sigmoid_backward, TANH: _tanh_backward,
                   LINEAR: _linear_backward, LEAKY_RELU: _leaky_relu_backward,
                   ELU: _elu_backward, SOFTPLUS: _softplus_backward,
                   PIECEWISE_LINEAR: _piecewise_linear_backward, STEP: _flat_backward,
                   SIGN: _flat_backward}
_BACKWARD_CHAIN = code_chain(_BACKWARD_LOOPS, "gf, zf, af, p", "activation")


def _backward_loop(code, gf, zf, af, p):
    """The derivative loop of activation ``code`` (not prelu, not softmax) over a block."""


@overload(_backward_loop, jit_options=OVERLOAD, prefer_literal=True)
def _backward_loop_for(code, gf, zf, af, p):
    # as _forward_loop_for
    loop = _known(code, _BACKWARD_LOOPS, (SOFTMAX, PRELU))
    if loop is not None:
        def known(code, gf, zf, af, p):
            loop(gf, zf, af, p)
        return known

    return _BACKWARD_CHAIN


@helper
def _softmax_backward_whole(G, A, Z, want_max):
    """Softmax's derivative pass (act_backward's contract)."""
    _softmax_backward_linked(G, A, Z)
    return _abs_max_linked(Z, 0, Z.shape[0]) if want_max else 0.0


@helper
def _prelu_backward(G, Z, alpha, galpha, beta, want_max):
    """act_backward for prelu: alpha per unit, so row by row, a block of columns at a time."""
    n, k = Z.shape
    zero, one = Z.dtype.type(0.0), Z.dtype.type(1.0)
    acc = column_sums()  # galpha summed in float64, as gb (numba_layers.dense_params)
    for j0 in range(0, k, SUM_BLOCK):
        m = min(SUM_BLOCK, k - j0)
        for j in range(m):
            acc[j] = 0.0
        a = flat(alpha, j0, j0 + m)
        for i in range(n):
            # views indexed from 0, so no negative-index check (see dense_params)
            gr, zr = flat(G, i * k + j0, i * k + j0 + m), flat(Z, i * k + j0, i * k + j0 + m)
            for j in range(m):
                g, z = gr[j], zr[j]
                acc[j] += g * min(z, zero)  # d prelu / d alpha = min(z, 0)
                zr[j] = g * (one if z >= 0 else a[j])
        add_sums(acc, m, galpha, j0, beta)
    return _abs_max_linked(Z, 0, n) if want_max else 0.0


_softmax_backward_pass = only_for(SOFTMAX, _softmax_backward_whole)
_prelu_backward_pass = only_for(PRELU, _prelu_backward)


def _forward_types(dtype):
    """bias_act_forward's argument types, as its callers pass them, in ``dtype``."""
    rows, vector = types.Array(dtype, 2, "C"), types.Array(dtype, 1, "C")
    return (rows, vector, rows, types.int64, dtype, vector, types.boolean)


def _backward_types(dtype):
    """act_backward's argument types, as its callers pass them, in ``dtype``."""
    rows, vector = types.Array(dtype, 2, "C"), types.Array(dtype, 1, "C")
    return (rows, rows, rows, types.int64, dtype, vector, vector, types.float64, types.boolean)


# The two passes as the training and predict kernels call them: by address, each
# compiled for one activation code (argument 3, a literal) when a network with that
# activation first needs it (numba_train.arm), so a first compile holds the loops of
# the network's own activations only (a sigmoid pair took 1.4 s to compile, all eleven
# in one pair of kernels 4.1 s).
FORWARD = Late(bias_act_forward, _forward_types, 3, types.float64)
BACKWARD = Late(act_backward, _backward_types, 3, types.float64)


def numba_dtype(dtype):
    """The Numba type of the NumPy float dtype ``dtype``."""
    return types.float32 if np.dtype(dtype) == np.float32 else types.float64
