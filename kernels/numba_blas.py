"""Row-major GEMM for the Numba kernels: NumPy's BLAS for real work, loops for tiny work.

``gemm_nn``, ``gemm_tn`` and ``gemm_nt`` compute ``C = alpha * op(A) op(B) + beta * C``
on C-contiguous 2-D arrays (views of the flat workspaces are fine). ``beta = 0``
OVERWRITES C (its old contents are never read, even if NaN); ``beta != 0``
accumulates into it. Unlike ``np.dot``, ``alpha`` and ``beta`` let plain SGD fold
its update into the weight-gradient product: ``W <- beta W - lr x^T delta``.

BLAS is the one ``fastmlp.blas.kernel_blas()`` names: NumPy's own (ILP64 on NumPy's
wheels), so NumPy and the kernels share one thread pool, or SciPy's as the fallback.
Where the Cython extension's AVX-512 build imports, float32 products first go to its
GEMM loops (kernels/_sgemm_blas.h; :data:`GEMM_SCOPE` set), which take those whose B fits
1 MiB, as its own kernels' products do: both backends give the same bits.
The kernels always call ``fastmlp_sgemm64``/``fastmlp_dgemm64`` with 64-bit integers,
by symbol name so ``cache=True`` works: the address is registered with LLVM at every
import, never baked into the cache, and a cache compiled under one choice stays valid
under the other. An LP64 BLAS (SciPy's) sits behind a small compiled shim that
narrows the integers. Products of fewer than ``SMALL_FLOPS`` multiply-adds run as
plain loops. Measured per call (float32, ns, loops / BLAS): 6x3x4 43/15 with
OpenBLAS's AVX-512 small-matrix path, 45/74 with Haswell kernels; 8x8x8 89/24 and
90/92; 16x16x16 467/60 and 469/210. Loops still win the 3-4-2 vehicle net's whole
step (1.32 vs 1.34-1.56 us; per-sample epoch 2.1 vs 2.8-3.6 us), where the
transposed products cost BLAS most.
"""
from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..blas import kernel_blas, scipy_gemm_addresses
from .numba_link import guarded_cfunc
from .numba_math import CACHE, INLINE
from .numba_views import flat

# The Cython extension's cython_mlp.gemm_scope where float32 products go through its
# GEMM loops first (kernels/_sgemm_blas.h, an AVX-512 build), as its own kernels' do, else
# None: the backend's train_epochs calls it around its kernel (the loops take products
# there: cython_mlp.gemm_policy).
GEMM_SCOPE = None
# Below this many multiply-adds (m * n * k) the loops are about as fast as BLAS or faster.
SMALL_FLOPS = 512
_N, _T = ord("N"), ord("T")
_FLOATS = {types.float32: "s", types.float64: "d"}


def _call_gemm(context, builder, dtype, symbol, int_bits, refs):
    """Call the Fortran ?gemm ``symbol`` (``dtype``'s prefix is prepended) on its 13
    pointer arguments ``refs``; its integers are ``int_bits`` wide."""
    fl = context.get_value_type(dtype).as_pointer()
    ch, it = ir.IntType(8).as_pointer(), ir.IntType(int_bits).as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [ch, ch, it, it, it, fl, fl, it, fl, it, fl, fl, it])
    fn = cgutils.get_or_insert_function(builder.module, fnty,
                                        f"fastmlp_{_FLOATS[dtype]}{symbol}")
    builder.call(fn, refs)


@intrinsic
def _xgemm(typingctx, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Column-major Fortran ?gemm on the data pointers of a, b, c (all one float dtype)."""
    arrays = (a, b, c)
    if not (all(isinstance(x, types.Array) for x in arrays)
            and a.dtype in _FLOATS and b.dtype == a.dtype and c.dtype == a.dtype):
        return None
    dtype = a.dtype
    sig = types.none(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        sargs = signature.args

        def ref_int(i, bits):  # Fortran takes every scalar by reference
            val = context.cast(builder, args[i], sargs[i], types.int64)
            return cgutils.alloca_once_value(builder, builder.trunc(val, ir.IntType(bits))
                                             if bits < 64 else val)

        def ref_float(i):
            return cgutils.alloca_once_value(
                builder, context.cast(builder, args[i], sargs[i], dtype))

        def data(i):
            return context.make_array(sargs[i])(context, builder, args[i]).data

        _call_gemm(context, builder, dtype, "gemm64", 64, [
            ref_int(0, 8), ref_int(1, 8), ref_int(2, 64), ref_int(3, 64), ref_int(4, 64),
            ref_float(5), data(6), ref_int(7, 64), data(8), ref_int(9, 64), ref_float(10),
            data(11), ref_int(12, 64)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _narrowing_gemm(typingctx, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """The LP64 ``fastmlp_?gemm32`` on ILP64 arguments (all pointers): the shim's body."""
    dtype = a.dtype
    sig = types.none(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        refs = list(args)
        for i in (2, 3, 4, 7, 9, 12):  # m, n, k, lda, ldb, ldc
            narrow = builder.trunc(builder.load(args[i]), ir.IntType(32))
            refs[i] = cgutils.alloca_once_value(builder, narrow)
        _call_gemm(context, builder, dtype, "gemm32", 32, refs)
        return context.get_dummy_value()

    return sig, codegen


def _register_blas():
    """Point ``fastmlp_?gemm64`` at the kernels' BLAS (through a narrowing shim if LP64)."""
    blas = kernel_blas()
    # Numba's cache is keyed on each kernel's own file, not on this one: kernels cached
    # before this module changed still call the old names with 32-bit integers. They get
    # a BLAS of that ABI rather than a null symbol (a crash). Never change the ABI behind
    # a registered name; add a new name instead.
    for prefix, address in zip("sd", scipy_gemm_addresses()):
        llvm.add_symbol(f"fastmlp_{prefix}gemm", address)
    addresses = {"s": blas.sgemm_address, "d": blas.dgemm_address}
    if blas.int_bits != 64:
        char, i64 = types.CPointer(types.int8), types.CPointer(types.int64)
        for prefix, fl in (("s", types.float32), ("d", types.float64)):
            llvm.add_symbol(f"fastmlp_{prefix}gemm32", addresses[prefix])
            p = types.CPointer(fl)
            shim = guarded_cfunc(types.void(char, char, i64, i64, i64, p, p, i64, p, i64, p, p,
                                            i64), _narrowing_gemm_body, CACHE)
            addresses[prefix] = shim.address
    addresses["s"] = _own_sgemm64(addresses["s"]) or addresses["s"]
    for prefix, address in addresses.items():
        llvm.add_symbol(f"fastmlp_{prefix}gemm64", address)


def _own_sgemm64(blas_sgemm64):
    """The Cython extension's float32 GEMM loops in front of ``blas_sgemm64``, in the
    same ABI (cython_mlp.own_sgemm64_address: its train steps' code, so its bits), or 0
    without the extension or in a build without those loops (no AVX-512)."""
    global GEMM_SCOPE
    try:
        from .cython_mlp import gemm_scope, own_sgemm64_address
        address = own_sgemm64_address(blas_sgemm64)
    except Exception:  # not built, stale or broken: the Numba backend must not depend
        return 0       # on the extension loading, only run faster with it
    GEMM_SCOPE = gemm_scope if address else None
    return address


def _narrowing_gemm_body(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    _narrowing_gemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


_register_blas()


@intrinsic
def _mad(typingctx, a, b, s):
    """s + a * b rounded once, in s's type (all three of one float type): LLVM's fma,
    the instruction where the CPU has FMA, else libm's fma, exact too. As BLAS's kernels
    and the Cython loops (_blas.pxd's small_gemm, every build) do, so a product's bits
    are the same on both backends. (An intrinsic, not a function compiled of its own: one
    function less per dtype at the first compile. Written as float64 arithmetic with
    ``float()``, it rounded twice: Numba's float() of a float32 is a float32.)"""
    if not (a == b == s and s in _FLOATS):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)
    return s(a, b, s), codegen


@njit(**INLINE)
def _store(C, i, j, s, alpha, beta):
    """C[i, j] = alpha * s + beta * C[i, j], alpha and beta in C's dtype; beta 0 never
    reads C[i, j]. (The tiny products' one write per element, as _blas.pxd's small_gemm.)"""
    C[i, j] = alpha * s if beta == 0 else beta * C[i, j] + alpha * s


@njit(**INLINE)
def gemm_nn(A, B, C, alpha, beta):
    """C (m, n) = alpha * A (m, k) @ B (k, n) + beta * C."""
    m, k = A.shape
    n = B.shape[1]
    if m * n * k >= SMALL_FLOPS:
        # row-major C = A B is column-major C^T = B^T A^T
        _xgemm(_N, _N, n, m, k, alpha, B, n, A, k, beta, C, n)
        return
    # Dot products in C's dtype, each multiply-add rounded once (_mad), as BLAS's FMA
    # kernels do: a row's outputs are the same whichever rows share its call, BLAS or
    # these loops (sklearn's subset-invariance check holds float32 to 1e-7). alpha and
    # beta in C's dtype: a float64 one made a float32 loop float64, three conversions
    # per multiply-add and C stored after each (a third of the vehicle net's step).
    al, be, zero = C.dtype.type(alpha), C.dtype.type(beta), C.dtype.type(0.0)
    for i in range(m):
        for j in range(n):
            s = zero
            for p in range(k):
                s = _mad(A[i, p], B[p, j], s)
            _store(C, i, j, s, al, be)


@njit(**INLINE)
def gemm_tn(A, B, C, alpha, beta):
    """C (m, n) = alpha * A (k, m).T @ B (k, n) + beta * C: the weight gradient x^T delta."""
    k, m = A.shape
    n = B.shape[1]
    if m * n * k >= SMALL_FLOPS:
        _xgemm(_N, _T, n, m, k, alpha, B, n, A, m, beta, C, n)
        return
    al, be, zero = C.dtype.type(alpha), C.dtype.type(beta), C.dtype.type(0.0)
    for i in range(m):
        for j in range(n):
            s = zero
            for p in range(k):
                s = _mad(A[p, i], B[p, j], s)
            _store(C, i, j, s, al, be)


@njit(**INLINE)
def gemm_tn_from(A, c0, B, C):
    """C (m, n) = A[:, c0:c0 + m].T @ B (k, n), OVERWRITTEN; A (k, lda): the transpose of
    a column-major input (predict's first layer reads a Fortran-ordered X where it lies,
    its transpose a C-contiguous array: no copy into rows)."""
    k, lda = A.shape
    m, n = C.shape
    if m * n * k >= SMALL_FLOPS:
        _xgemm(_N, _T, n, m, k, 1.0, B, n, flat(A, c0, A.size), lda, 0.0, C, n)
        return
    zero = C.dtype.type(0.0)
    for i in range(m):
        for j in range(n):
            s = zero
            for p in range(k):
                s = _mad(A[p, c0 + i], B[p, j], s)
            C[i, j] = s


@njit(**INLINE)
def gemm_nt(A, B, C, alpha, beta):
    """C (m, n) = alpha * A (m, k) @ B (n, k).T + beta * C: the input gradient delta W^T."""
    m, k = A.shape
    n = B.shape[0]
    if m * n * k >= SMALL_FLOPS:
        _xgemm(_T, _N, n, m, k, alpha, B, k, A, k, beta, C, n)
        return
    al, be, zero = C.dtype.type(alpha), C.dtype.type(beta), C.dtype.type(0.0)
    for i in range(m):
        for j in range(n):
            s = zero
            for p in range(k):
                s = _mad(A[i, p], B[j, p], s)
            _store(C, i, j, s, al, be)
