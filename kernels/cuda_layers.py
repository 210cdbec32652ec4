"""The general ("wide") path of the "cuda" backend: kernels for layers of any width.

One set of kernels per dtype and tile shape, built by :func:`kernels` and cached,
because a shared-memory tile's size and the dtype of its constants must be known
when the kernel compiles. Every array argument is FLAT (1-D, C-contiguous) with an
element offset beside it, so the workspace, theta and the user's X all have one
Numba type and each kernel compiles once per dtype; the backend
(:mod:`fastmlp.backends.cuda`) walks the layers on the host and launches them.

Kernels (all overwrite their outputs unless they take ``accumulate`` = 1, which adds):

``gemm``          C (M, N) = op(A) (M, K) @ op(B) (K, N), tiled through shared memory
                  (see GEMM below), with an epilogue chosen by ``mode``:
                  STORE (C = acc, or C += acc), FORWARD (z = acc + b; z kept in Z when
                  z_off >= 0; C = f(z), or z for softmax, which ``softmax_rows`` finishes)
                  and BACKWARD (C = delta = acc * f'(z) of the layer below, reading its
                  z and f): the forward pass, dE/df -> delta and A^T delta are all this.
``softmax_rows``  F = softmax(Z) row by row (one thread per row).
``loss_rows``     per row: the loss (float64, into ``rows``), and dE/dz of the output
                  layer (softmax + CE and sigmoid + BCE fused; MSE through the output
                  activation's derivative, softmax's by its vector-Jacobian product),
                  or dE/df for a prelu output (``col_grad`` finishes it).
``col_grad``      gb = sum over rows of delta (the bias gradient), a column reduction;
                  for a prelu layer it first turns dE/df into delta in place and forms
                  galpha = sum dE/df * min(z, 0).
``reduce_sum``    one block: out[slot] (+)= scale * sum(x or x^2) in float64, optionally
                  out[slot2] += scale2 * the same sum (losses and gradient norms).
``optimizer``     one thread per parameter: cuda_math's opt_update.
``gather_rows``   dst (rows, width) = src[order[o_off + r]] (a shuffled batch).
``flag_bad``      flag[slot] = 1 where an element is not finite (or, ``unit``, not in [0, 1]).

GEMM: a (TPB x TPB)-thread block computes a (TPB*R x TPB*R) tile of C, each thread an
R x R micro-tile at rows ty + TPB*i and columns tx + TPB*j (strided, so a warp's
stores are contiguous); the K loop stages BK columns of op(A) and BK rows of op(B)
in shared memory (A stored k-major with one padding element against bank
conflicts), loads zero outside the matrices, so any shape works. Each element of
C is summed over k in one fixed order by one thread: no atomics anywhere, so every
run gives the same bits.
"""
from __future__ import annotations

import math
from functools import lru_cache
from types import SimpleNamespace

import numpy as np
from numba import cuda

from fastmlp.codes import (BINARY_CROSS_ENTROPY, CROSS_ENTROPY, MSE, PRELU, SOFTMAX)

from . import cuda_math

# gemm epilogues
STORE, FORWARD, BACKWARD = 0, 1, 2

# Block shapes: (GEMM threads per side, micro-tile side, K step, threads per block of the
# one-thread-per-row/element kernels, threads of reduce_sum's one block, col_grad's
# columns per block, its row lanes). On a GPU: 16 x 16 threads computing 64 x 64 tiles.
# The simulator runs every thread as a Python thread, so it gets small blocks (the same
# code: tests there still cross tile edges).
GPU_SHAPE = (16, 4, 16, 128, 256, 32, 8)
SIM_SHAPE = (4, 2, 4, 16, 8, 4, 2)


@lru_cache(maxsize=None)
def kernels(dtype, shape=None):
    """The compiled kernels for ``dtype`` (float32/float64) and block ``shape`` (as
    GPU_SHAPE, the default; SIM_SHAPE under the simulator), as a namespace."""
    shape = tuple(shape) if shape is not None else (SIM_SHAPE if cuda_math.simulated()
                                                            else GPU_SHAPE)
    tpb, r, bk, row_threads, reduce_threads, col_width, col_lanes = shape
    bm = tpb * r
    ftype = np.dtype(dtype).type
    from numba import float32, float64
    sh_type = float32 if ftype is np.float32 else float64
    m = cuda_math.for_dtype(dtype)
    act, act_grad, opt_update, sigmoid = m.act, m.act_grad, m.opt_update, m.sigmoid
    zero, one = ftype(0.0), ftype(1.0)

    @cuda_math.kernel
    def gemm(M, N, K, A, a_off, lda, ta, B, b_off, ldb, tb, C, c_off, Z, z_off, f_off,
             accumulate, mode, code, p, theta, bias_off, alpha_off):
        As = cuda.shared.array((bk, bm + 1), sh_type)   # op(A) tile, k-major
        Bs = cuda.shared.array((bk, bm + 1), sh_type)   # op(B) tile
        acc = cuda.local.array((r, r), sh_type)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid = ty * tpb + tx
        row0 = cuda.blockIdx.y * bm
        col0 = cuda.blockIdx.x * bm
        for i in range(r):
            for j in range(r):
                acc[i, j] = zero
        for k0 in range(0, K, bk):
            # stage: bm * bk elements of each, tpb * tpb threads, consecutive threads on
            # the matrix's contiguous axis
            for e in range(tid, bm * bk, tpb * tpb):
                if ta:
                    kk, mm = e // bm, e % bm
                else:
                    mm, kk = e // bk, e % bk
                gm, gk = row0 + mm, k0 + kk
                v = zero
                if gm < M and gk < K:
                    v = A[a_off + gk * lda + gm] if ta else A[a_off + gm * lda + gk]
                As[kk, mm] = v
                if tb:
                    nn, kk = e // bk, e % bk
                else:
                    kk, nn = e // bm, e % bm
                gn, gk = col0 + nn, k0 + kk
                v = zero
                if gn < N and gk < K:
                    v = B[b_off + gn * ldb + gk] if tb else B[b_off + gk * ldb + gn]
                Bs[kk, nn] = v
            cuda.syncthreads()
            for kk in range(bk):
                for i in range(r):
                    a = As[kk, ty + tpb * i]
                    for j in range(r):
                        acc[i, j] += a * Bs[kk, tx + tpb * j]
            cuda.syncthreads()
        for i in range(r):
            gm = row0 + ty + tpb * i
            if gm < M:
                for j in range(r):
                    gn = col0 + tx + tpb * j
                    if gn < N:
                        e = gm * N + gn
                        v = acc[i, j]
                        if mode == FORWARD:
                            z = v + theta[bias_off + gn]
                            if z_off >= 0:
                                Z[z_off + e] = z
                            if code == SOFTMAX:
                                C[c_off + e] = z
                            else:
                                a = theta[alpha_off + gn] if alpha_off >= 0 else zero
                                C[c_off + e] = act(code, z, p, a)
                        elif mode == BACKWARD:
                            a = theta[alpha_off + gn] if alpha_off >= 0 else zero
                            C[c_off + e] = v * act_grad(code, Z[z_off + e], Z[f_off + e], p, a)
                        elif accumulate:
                            C[c_off + e] += v
                        else:
                            C[c_off + e] = v

    @cuda_math.kernel
    def softmax_rows(n, k, Z, z_off, F, f_off):
        row = cuda.grid(1)
        if row < n:
            base = row * k
            mx = Z[z_off + base]
            for j in range(1, k):
                mx = max(mx, Z[z_off + base + j])
            s = 0.0  # float64, as on the CPU: a float32 sum of thousands of terms drifts
            for j in range(k):
                e = math.exp(Z[z_off + base + j] - mx)
                F[f_off + base + j] = e
                s += e
            s_ = ftype(s)
            for j in range(k):
                F[f_off + base + j] = F[f_off + base + j] / s_

    @cuda_math.kernel
    def loss_rows(n, k, loss, fused, code, p, Z, z_off, F, f_off, T, t_off, D, d_off,
                  scale, want_grad, rows):
        """scale: dE/d(output) per unit difference, in the dtype: 2 / n for MSE, else
        1 / n, n the rows of the whole batch (a chunk's gradients add up to its batch's)."""
        row = cuda.grid(1)
        if row < n:
            base = row * k
            total = 0.0
            if loss == MSE:
                two = scale
                for j in range(k):
                    d = F[f_off + base + j] - T[t_off + base + j]
                    total += float(d * d)
                if want_grad:
                    if code == SOFTMAX:   # delta = p * (dout - sum(dout * p))
                        s = 0.0   # float64, as on the CPU
                        for j in range(k):
                            y = F[f_off + base + j]
                            s += two * (y - T[t_off + base + j]) * y
                        s_ = ftype(s)
                        for j in range(k):
                            y = F[f_off + base + j]
                            D[d_off + base + j] = y * (two * (y - T[t_off + base + j]) - s_)
                    else:
                        for j in range(k):
                            y = F[f_off + base + j]
                            g = two * (y - T[t_off + base + j])
                            if code != PRELU:   # prelu: dE/df, col_grad finishes it
                                g *= act_grad(code, Z[z_off + base + j], y, p, zero)
                            D[d_off + base + j] = g
            elif loss == CROSS_ENTROPY:
                mx = Z[z_off + base]
                for j in range(1, k):
                    mx = max(mx, Z[z_off + base + j])
                s = zero
                ts = zero
                for j in range(k):
                    s += math.exp(Z[z_off + base + j] - mx)
                    ts += T[t_off + base + j]
                lse = math.log(s)
                for j in range(k):
                    t = T[t_off + base + j]
                    if t != zero:   # nothing, even where z - mx is -inf (0 * -inf: NaN)
                        total -= float(t * ((Z[z_off + base + j] - mx) - lse))
                if want_grad:
                    for j in range(k):
                        D[d_off + base + j] = (F[f_off + base + j] * ts
                                               - T[t_off + base + j]) * scale
            elif loss == BINARY_CROSS_ENTROPY:
                for j in range(k):
                    z = Z[z_off + base + j]
                    t = T[t_off + base + j]
                    total += float(m.softplus(z) - t * z)
                    if want_grad:
                        D[d_off + base + j] = (F[f_off + base + j] - t) * scale
            rows[row] = total

    @cuda_math.kernel
    def col_grad(n, k, D, d_off, Z, z_off, theta, alpha_off, grad, gb_off, ga_off,
                 accumulate):
        part = cuda.shared.array((col_lanes, col_width), sh_type)
        part_a = cuda.shared.array((col_lanes, col_width), sh_type)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        col = cuda.blockIdx.x * col_width + tx
        sb = zero
        sa = zero
        if col < k:
            prelu = alpha_off >= 0
            a = theta[alpha_off + col] if prelu else zero
            for r_ in range(ty, n, col_lanes):
                e = d_off + r_ * k + col
                d = D[e]
                if prelu:   # D holds dE/df: alpha's gradient, then delta in place
                    z = Z[z_off + r_ * k + col]
                    sa += d * min(z, zero)
                    if z < zero:
                        d = d * a
                        D[e] = d
                sb += d
        part[ty, tx] = sb
        part_a[ty, tx] = sa
        cuda.syncthreads()
        if ty == 0 and col < k:
            for lane in range(1, col_lanes):   # a fixed order: the same bits every run
                sb += part[lane, tx]
                sa += part_a[lane, tx]
            if accumulate:
                grad[gb_off + col] += sb
            else:
                grad[gb_off + col] = sb
            if alpha_off >= 0:
                if accumulate:
                    grad[ga_off + col] += sa
                else:
                    grad[ga_off + col] = sa

    @cuda_math.kernel
    def reduce_sum(x, off, size, squared, out, slot, scale, accumulate, slot2, scale2):
        part = cuda.shared.array(reduce_threads, float64)
        t = cuda.threadIdx.x
        s = 0.0
        for i in range(t, size, reduce_threads):
            v = float64(x[off + i])   # (float() of a float32 is a float32 in Numba)
            s += v * v if squared else v
        part[t] = s
        cuda.syncthreads()
        width = reduce_threads // 2
        while width > 0:   # a fixed tree: the same bits every run
            if t < width:
                part[t] += part[t + width]
            cuda.syncthreads()
            width //= 2
        if t == 0:
            total = part[0]
            if accumulate:
                out[slot] += total * scale
            else:
                out[slot] = total * scale
            if slot2 >= 0:
                out[slot2] += total * scale2

    @cuda_math.kernel
    def optimizer(n, code, hyper, t, theta, grad, g_off, bufs):
        i = cuda.grid(1)
        if i < n:
            opt_update(code, hyper, t, i, theta, grad[g_off + i], bufs)

    @cuda_math.kernel
    def gather_rows(order, o_off, rows, src, width, dst, d_off):
        e = cuda.grid(1)
        if e < rows * width:
            r_, c = e // width, e % width
            dst[d_off + e] = src[order[o_off + r_] * width + c]

    @cuda_math.kernel
    def flag_bad(x, off, size, unit, flag, slot):
        i = cuda.grid(1)
        if i < size:
            v = x[off + i]
            bad = not (v >= zero and v <= one) if unit else not math.isfinite(v)
            if bad:
                flag[slot] = 1   # every writer writes the same 1: no race on the result

    return SimpleNamespace(dtype=np.dtype(dtype), shape=shape, tpb=tpb, bm=bm,
                           row_threads=row_threads, reduce_threads=reduce_threads,
                           col_width=col_width, col_lanes=col_lanes, gemm=gemm,
                           softmax_rows=softmax_rows, loss_rows=loss_rows, col_grad=col_grad,
                           reduce_sum=reduce_sum, optimizer=optimizer, gather_rows=gather_rows,
                           flag_bad=flag_bad)


def blocks(n, threads):
    """Blocks of ``threads`` covering n items (at least one)."""
    return max(1, -(-int(n) // threads))


def rows(k, n):
    """[grid, block] of a one-thread-per-item kernel of ``k`` over n items."""
    return blocks(n, k.row_threads), k.row_threads


def gemm(k, M, N, K, A, a_off, lda, ta, B, b_off, ldb, tb, C, c_off, Z=None, z_off=-1,
         f_off=-1, accumulate=0, mode=STORE, code=0, p=0.0, theta=None, bias_off=-1,
         alpha_off=-1):
    """Launch kernels(...).gemm ``k.gemm`` over C (M, N); see the module docstring."""
    if M == 0 or N == 0:
        return
    tpb = k.tpb
    grid = (blocks(N, k.bm), blocks(M, k.bm))
    Z = C if Z is None else Z
    theta = C if theta is None else theta
    k.gemm[grid, (tpb, tpb)](M, N, K, A, a_off, lda, ta, B, b_off, ldb, tb, C, c_off, Z,
                             z_off, f_off, accumulate, mode, code, k.dtype.type(p), theta,
                             bias_off, alpha_off)
