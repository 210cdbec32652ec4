"""The activation table for the Numba kernels: forward and derivative by integer code.

Same codes (:mod:`fastmlp.codes`) and the same formulas as
:mod:`fastmlp.activations` (the reference), element by element. Each pass
branches on the code once per block of rows (ACT_BLOCK elements) and then runs
that activation's own loop over the block's elements as one flat array (prelu
and softmax row by row), which LLVM vectorises; a branch on the code per element
is about 100 times slower for ReLU, and a loop per row of a narrow layer (2 or 4
units) is too short to vectorise. Both passes list the activations in the same
order, so an activation's forward loop and its derivative loop are found at the
same place in each; a code that has no loop raises ValueError.

The loops are written out in the two passes. Measured alternatives, each
giving one function per activation with its forward beside its derivative:
scalar helpers inlined into shared loops (by Numba or by LLVM), or a
whole-layer function per activation and pass, both raised the first compile
from 13.5 s to 17.5-19.5 s per dtype (every @njit function costs its own
compile); generating the loops from one scalar table through
``inline="always"`` tripled it. (Then every caller also re-optimised the code
of every kernel it called; since callers link to kernels by name
(:mod:`numba_link`), the two passes here compile once per dtype, about 1.5 s.)

exp, expm1, log1p and tanh are :mod:`numba_math`'s vectorisable versions. Every
constant is in the array dtype (``zero``, ``one``, ``like``): a float64 literal
would turn a float32 loop into a float64 one at half the vector width. ``p`` is
the activation's scalar parameter in the array dtype; prelu reads its trainable
per-unit alpha (k,) instead.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fastmlp.codes import (ELU, LEAKY_RELU, LINEAR, PIECEWISE_LINEAR, PRELU, RELU, SIGMOID,
                           SIGN, SOFTMAX, SOFTPLUS, STEP, SUM_BLOCK, TANH)

from .numba_link import separate
from .numba_math import HELPER, INLINE, KERNEL, abs_max
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


@njit(**KERNEL)
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


@njit(**KERNEL)
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
    """
    n, k = Z.shape
    if code == SOFTMAX:
        _softmax_forward_linked(Z, b, A)
        return _abs_max_linked(A, 0, n) if want_max else 0.0
    zero, half, one = Z.dtype.type(0.0), Z.dtype.type(0.5), Z.dtype.type(1.0)
    step = max(1, ACT_BLOCK // max(k, 1))
    top = 0.0
    for r0 in range(0, n, step):
        r1 = min(r0 + step, n)
        for i in range(r0, r1):
            for j in range(k):
                Z[i, j] += b[j]
        zf, af = flat(Z, r0 * k, r1 * k), flat(A, r0 * k, r1 * k)
        m = zf.shape[0]
        if code == RELU:
            # max(z, 0) as the reference's np.maximum: NaN stays NaN (z <= 0 is False) and
            # -0 becomes +0
            for t in range(m):
                z = zf[t]
                af[t] = zero if z <= 0 else z
        elif code == PRELU:
            for i in range(r0, r1):
                for j in range(k):
                    z = Z[i, j]
                    A[i, j] = z if z >= 0 else alpha[j] * z
        elif code == SIGMOID:
            for t in range(m):
                af[t] = _sigmoid(zf[t])
        elif code == TANH:
            for t in range(m):
                af[t] = _tanh(zf[t])
        elif code == LINEAR:
            for t in range(m):
                af[t] = p * zf[t]
        elif code == LEAKY_RELU:
            for t in range(m):
                z = zf[t]
                af[t] = z if z >= 0 else p * z
        elif code == ELU:
            for t in range(m):
                z = zf[t]
                af[t] = z if z >= 0 else p * _expm1(min(z, zero))
        elif code == SOFTPLUS:
            for t in range(m):
                af[t] = _softplus(zf[t])
        elif code == PIECEWISE_LINEAR:
            for t in range(m):
                af[t] = min(max(zf[t] + half, zero), one)
        elif code == STEP:
            for t in range(m):
                z = zf[t]
                af[t] = one if z > 0 else (zero if z < 0 else half)
        elif code == SIGN:
            # as np.sign: NaN stays NaN, -0 becomes +0
            for t in range(m):
                z = zf[t]
                af[t] = one if z > 0 else (-one if z < 0 else (zero if z == 0 else z))
        else:
            raise ValueError("unknown activation code")
        if want_max:
            v = _abs_max_linked(A, r0, r1)
            top = v if not (v <= top) else top  # NaN and inf win
    return top


@njit(**KERNEL)
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


@njit(**HELPER)
def add_sums(acc, m, out, j0, beta):
    """out[j0:j0 + m] = acc[:m], a chunk's column sums formed in float64 (column_sums),
    rounded to out's dtype: OVERWRITTEN (beta 0), or added to beta * out (beta 1, the
    later chunks of a batch), once per chunk (as kernels/_layers.pxd's add_sums)."""
    beta_ = out.dtype.type(beta)
    for j in range(m):
        s = out.dtype.type(acc[j])
        out[j0 + j] = s if beta == 0 else beta_ * out[j0 + j] + s


@njit(**KERNEL)
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
    if code == SOFTMAX:
        _softmax_backward_linked(G, A, Z)
        return _abs_max_linked(Z, 0, n) if want_max else 0.0
    zero, half, one = Z.dtype.type(0.0), Z.dtype.type(0.5), Z.dtype.type(1.0)
    if code == PRELU:  # alpha per unit: row by row, a block of columns at a time
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
    step = max(1, ACT_BLOCK // max(k, 1))
    top = 0.0
    for r0 in range(0, n, step):
        r1 = min(r0 + step, n)
        gf, zf, af = flat(G, r0 * k, r1 * k), flat(Z, r0 * k, r1 * k), flat(A, r0 * k, r1 * k)
        m = zf.shape[0]
        if code == RELU:
            for t in range(m):
                g = gf[t]
                zf[t] = g * (one if zf[t] > 0 else zero)
        elif code == SIGMOID:
            for t in range(m):
                f = af[t]
                zf[t] = gf[t] * (f * (one - f))
        elif code == TANH:
            for t in range(m):
                f = af[t]
                zf[t] = gf[t] * (one - f * f)
        elif code == LINEAR:
            for t in range(m):
                zf[t] = gf[t] * p
        elif code == LEAKY_RELU:
            for t in range(m):
                g = gf[t]
                zf[t] = g * (one if zf[t] >= 0 else p)
        elif code == ELU:
            for t in range(m):
                g = gf[t]
                # alpha e^z, not f + alpha: that cancels (0 below z = -17 in float32); e^z
                # in float64, as the reference (a float32 e^z below 1e-38 loses its digits)
                z = zf[t]
                zf[t] = g * (one if z >= 0 else Z.dtype.type(p * _exp(np.float64(min(z, zero)))))
        elif code == SOFTPLUS:
            for t in range(m):
                zf[t] = gf[t] * _sigmoid(zf[t])
        elif code == PIECEWISE_LINEAR:
            for t in range(m):
                g = gf[t]
                z = zf[t]
                zf[t] = g * (one if (z > -half) & (z < half) else zero)
        elif code == STEP or code == SIGN:  # no gradient flows: g * 0 (NaN for an inf g)
            for t in range(m):
                zf[t] = gf[t] * zero
        else:
            raise ValueError("unknown activation code")
        if want_max:
            v = _abs_max_linked(Z, r0, r1)
            top = v if not (v <= top) else top  # NaN and inf win
    return top
