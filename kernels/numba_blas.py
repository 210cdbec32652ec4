"""Row-major GEMM for the Numba kernels: scipy's BLAS for real work, loops for tiny work.

``gemm_nn``, ``gemm_tn`` and ``gemm_nt`` compute ``C = alpha * op(A) op(B) + beta * C``
on C-contiguous 2-D arrays (views of the flat workspaces are fine). ``beta = 0``
OVERWRITES C (its old contents are never read, even if NaN); ``beta != 0``
accumulates into it. Unlike ``np.dot``, ``alpha`` and ``beta`` let plain SGD fold
its update into the weight-gradient product: ``W <- beta W - lr x^T delta``.

BLAS is scipy's ``scipy.linalg.cython_blas`` sgemm/dgemm (the OpenBLAS that
``np.dot`` uses inside ``@njit``), called by symbol name so ``cache=True`` works:
the address is registered with LLVM at every import, never baked into the cache.
Products of fewer than ``SMALL_FLOPS`` multiply-adds run as plain loops. Measured
per call (float32, ns, loops / BLAS): 6x3x4 43/15 with OpenBLAS's AVX-512 small-
matrix path, 45/74 with Haswell kernels; 8x8x8 89/24 and 90/92; 16x16x16 467/60 and
469/210. Loops still win the 3-4-2 vehicle net's whole step (1.32 vs 1.34-1.56 us;
per-sample epoch 2.1 vs 2.8-3.6 us), where the transposed products cost BLAS most.
"""
from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import get_cython_function_address, intrinsic

from .numba_math import INLINE

for _name in ("sgemm", "dgemm"):
    llvm.add_symbol("fastmlp_" + _name,
                    get_cython_function_address("scipy.linalg.cython_blas", _name))

# Below this many multiply-adds (m * n * k) the loops are about as fast as BLAS or faster.
SMALL_FLOPS = 512
_N, _T = ord("N"), ord("T")


@intrinsic
def _xgemm(typingctx, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Column-major Fortran ?gemm on the data pointers of a, b, c (all one float dtype)."""
    arrays = (a, b, c)
    if not (all(isinstance(x, types.Array) for x in arrays)
            and a.dtype in (types.float32, types.float64)
            and b.dtype == a.dtype and c.dtype == a.dtype):
        return None
    dtype = a.dtype
    sig = types.none(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        fl = context.get_value_type(dtype)
        i8, i32 = ir.IntType(8), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [
            i8.as_pointer(), i8.as_pointer(), i32.as_pointer(), i32.as_pointer(),
            i32.as_pointer(), fl.as_pointer(), fl.as_pointer(), i32.as_pointer(),
            fl.as_pointer(), i32.as_pointer(), fl.as_pointer(), fl.as_pointer(),
            i32.as_pointer()])
        name = "fastmlp_sgemm" if dtype == types.float32 else "fastmlp_dgemm"
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)
        sargs = signature.args

        def ref_int(i, ty):  # Fortran takes every scalar by reference
            val = context.cast(builder, args[i], sargs[i], types.int64)
            return cgutils.alloca_once_value(builder, builder.trunc(val, ty))

        def ref_float(i):
            return cgutils.alloca_once_value(
                builder, context.cast(builder, args[i], sargs[i], dtype))

        def data(i):
            return context.make_array(sargs[i])(context, builder, args[i]).data

        builder.call(fn, [ref_int(0, i8), ref_int(1, i8), ref_int(2, i32), ref_int(3, i32),
                          ref_int(4, i32), ref_float(5), data(6), ref_int(7, i32), data(8),
                          ref_int(9, i32), ref_float(10), data(11), ref_int(12, i32)])
        return context.get_dummy_value()

    return sig, codegen


@njit(**INLINE)
def _scale(C, beta):
    """C *= beta in place; beta = 0 writes zeros (never reads C)."""
    m, n = C.shape
    for i in range(m):
        for j in range(n):
            C[i, j] = 0 if beta == 0 else beta * C[i, j]


@njit(**INLINE)
def gemm_nn(A, B, C, alpha, beta):
    """C (m, n) = alpha * A (m, k) @ B (k, n) + beta * C."""
    m, k = A.shape
    n = B.shape[1]
    if m * n * k >= SMALL_FLOPS:
        # row-major C = A B is column-major C^T = B^T A^T
        _xgemm(_N, _N, n, m, k, alpha, B, n, A, k, beta, C, n)
        return
    _scale(C, beta)
    for i in range(m):
        for p in range(k):
            s = alpha * A[i, p]
            for j in range(n):
                C[i, j] += s * B[p, j]


@njit(**INLINE)
def gemm_tn(A, B, C, alpha, beta):
    """C (m, n) = alpha * A (k, m).T @ B (k, n) + beta * C: the weight gradient x^T delta."""
    k, m = A.shape
    n = B.shape[1]
    if m * n * k >= SMALL_FLOPS:
        _xgemm(_N, _T, n, m, k, alpha, B, n, A, m, beta, C, n)
        return
    _scale(C, beta)
    for p in range(k):
        for i in range(m):
            s = alpha * A[p, i]
            for j in range(n):
                C[i, j] += s * B[p, j]


@njit(**INLINE)
def gemm_nt(A, B, C, alpha, beta):
    """C (m, n) = alpha * A (m, k) @ B (n, k).T + beta * C: the input gradient delta W^T."""
    m, k = A.shape
    n = B.shape[0]
    if m * n * k >= SMALL_FLOPS:
        _xgemm(_T, _N, n, m, k, alpha, B, k, A, k, beta, C, n)
        return
    _scale(C, beta)
    for i in range(m):
        for j in range(n):
            s = 0.0
            for p in range(k):
                s += A[i, p] * B[j, p]
            C[i, j] += alpha * s
