"""x W for a few rows of x in the Numba kernels, through the Cython backend's GEMV loops
(and a float32 predict chunk through its GEMM loops).

A predict (or evaluate) chunk of at most ``fastmlp.rules.PREDICT_SMALL_ROWS`` rows
computes each layer's x W with the C loops of kernels/_gemv.h (compiled there once per
instruction set, the widest the processor runs picked when the Cython extension is
imported), not with a BLAS call, whose set-up and thread hand-off dominate a 1-row
predict. One source of truth for those loops, as BLAS is for the big products: GEMV
loops written in Numba lost to BLAS (their sums stay in memory, not in registers:
12.6 us for a 1-row 784-256-128-10 float32 predict against BLAS's 9.5).

The kernels call ``fastmlp_xw_f32`` / ``fastmlp_xw_f64`` by symbol name, as
numba_blas calls BLAS, so ``cache=True`` works: the address is registered with LLVM at
every import of this module, before any kernel that calls it is compiled or loaded
from the cache, and never baked into the cache. The symbol is ALWAYS bound: to the
Cython extension's loops (``cython_mlp.gemv_addresses``) when it imports, else to a
compiled stand-in of the same C signature that runs numba_blas's ``gemm_nn`` (BLAS, or
its loops for tiny products), what every chunk ran before. :data:`BOUND` says which.
The functions bound read the copy in use (picked at the extension's import, or by its
``_use_gemv`` test hook) at every call, and a big W's sum is shared with the
extension's worker thread (kernels/_gemv_pool.h), so both backends give the same bits.
Never change the C signature behind a registered name (a cached kernel keeps calling
it): add a new name instead.

``forward`` does the same for a float32 predict chunk of more rows than the GEMV
loops take (rules.PREDICT_SMALL_ROWS): the symbol
``fastmlp_forward_f32`` is the extension's forward_f32 (its _sgemm.h GEMM loops and its
bias and activation passes, the rows split between two threads, as its own predict
runs them: the same bits), or, without the extension, a stand-in that takes no chunk
(-1), as does forward_f32 itself in a build without AVX-512; predict then runs its own
path.
"""
from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .numba_blas import gemm_nn
from .numba_link import guarded_cfunc
from .numba_math import CACHE, INLINE

_SYMBOLS = {types.float32: "fastmlp_xw_f32", types.float64: "fastmlp_xw_f64"}

# Which code the symbols are bound to: "cython" (the extension's GEMV loops) or
# "fallback" (the stand-in below, when the extension does not import).
BOUND = ""


def _c_signature(dtype):
    """The C signature of fm_xw_f32 / fm_xw_f64 (_gemv.h) as Numba types:
    void (Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out, const T* x, const T* W, T* z)."""
    p = types.CPointer(dtype)
    return types.void(types.intp, types.intp, types.intp, p, p, p)


def _fallback_body(rows, n_in, n_out, x, W, z):
    """z (rows, n_out) OVERWRITTEN with x (rows, n_in) W (n_in, n_out), all row-major:
    the stand-in for the C loops, as every chunk ran before them."""
    gemm_nn(carray(x, (rows, n_in)), carray(W, (n_in, n_out)), carray(z, (rows, n_out)),
            1.0, 0.0)


# predict's float32 chunk on the extension's _sgemm.h loops, both threads
# (cython_mlp.forward_address): int (plan, fparams, theta, x, rows, p0, p1, out, check,
# check_z), -1 where it does not take the chunk
_FORWARD = "fastmlp_forward_f32"


def _forward_signature():
    """forward_f32's C signature as Numba types."""
    f, i64 = types.CPointer(types.float32), types.CPointer(types.int64)
    return types.int32(i64, f, f, f, types.intp, f, f, f, types.int32, types.int32)


def _no_forward(plan, fparams, theta, x, rows, p0, p1, out, check, check_z):
    """The stand-in without the extension (or in a build without AVX-512, whose own
    forward_f32 says the same): -1, never taken."""
    return -1


def _cython_addresses():
    """(float32, float64) addresses of the Cython extension's GEMV copies in use, or None
    when the extension (or its address function) is not there."""
    try:
        from .cython_mlp import forward_address, gemv_addresses
        return (*gemv_addresses(), forward_address())
    except Exception:  # not built, stale or broken: the Numba backend must not depend
        return None    # on the extension loading, only run faster with it


def _register():
    """Bind ``fastmlp_xw_f32`` / ``fastmlp_xw_f64``: the Cython loops, else the stand-in."""
    global BOUND
    addresses = _cython_addresses()
    BOUND = "cython"
    if addresses is None:
        BOUND = "fallback"
        addresses = [guarded_cfunc(_c_signature(dtype), _fallback_body, CACHE).address
                     for dtype in _SYMBOLS]
        addresses.append(guarded_cfunc(_forward_signature(), _no_forward, CACHE).address)
    for symbol, address in zip((*_SYMBOLS.values(), _FORWARD), addresses):
        llvm.add_symbol(symbol, address)


_register()


@intrinsic
def _xw_call(typingctx, x, W, z):
    """fastmlp_xw_<dtype>(rows, n_in, n_out, x, W, z) on the arrays' data pointers."""
    arrays = (x, W, z)
    if not (all(isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C" for a in arrays)
            and x.dtype in _SYMBOLS and W.dtype == x.dtype and z.dtype == x.dtype):
        return None
    dtype = x.dtype
    sig = types.none(x, W, z)

    def codegen(context, builder, signature, args):
        xa, Wa, za = (context.make_array(t)(context, builder, v)
                      for t, v in zip(signature.args, args))
        rows, n_in = cgutils.unpack_tuple(builder, xa.shape, 2)
        n_out = cgutils.unpack_tuple(builder, za.shape, 2)[1]
        p = context.get_value_type(dtype).as_pointer()
        intp = context.get_value_type(types.intp)
        fnty = ir.FunctionType(ir.VoidType(), [intp, intp, intp, p, p, p])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _SYMBOLS[dtype])
        builder.call(fn, [rows, n_in, n_out, xa.data, Wa.data, za.data])
        return context.get_dummy_value()

    return sig, codegen


@njit(**INLINE)
def xw(x, W, z):
    """z (rows, n_out) OVERWRITTEN with x (rows, n_in) @ W (n_in, n_out), all C-contiguous,
    rows >= 1 and n_in >= 1 (the C loops' contract), by the loops of _gemv.h. Meant for
    at most rules.PREDICT_SMALL_ROWS rows: W is read once per 4 rows of x. Multiply-adds
    may be fused; every call on the same data gives the same bits."""
    _xw_call(x, W, z)


@intrinsic
def forward(typingctx, plan, fparams, theta, x, p0, p1, out, check, check_z):
    """A float32 predict chunk x (rows, inputs) through every layer into out (rows,
    outputs) by the Cython extension's _sgemm.h loops on two threads (fastmlp_forward_f32:
    its predict's code, so its bits); p0, p1 scratch of rows * widest layer each; check,
    check_z as numba_train.predict's (x checked itself, or through x W). Returns -1
    where that path does not take the chunk (float64; no extension, a build without
    AVX-512, a W over 1 MiB, a single row: the caller runs its own), 1 when x is not
    finite, else 0. No bounds check: the caller's plan and buffers must agree."""
    arrays = (fparams, theta, x, p0, p1, out)
    if not (isinstance(plan, types.Array) and plan.dtype == types.int64
            and all(isinstance(a, types.Array) and a.layout == "C" and a.dtype == x.dtype
                    for a in arrays)
            and x.dtype in _SYMBOLS and x.ndim == 2 and out.ndim == 2):
        return None
    sig = types.int32(plan, fparams, theta, x, p0, p1, out, check, check_z)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        if x.dtype != types.float32:
            return ir.Constant(i32, -1)
        arrays = [context.make_array(t)(context, builder, v)
                  for t, v in zip(signature.args[:7], args[:7])]
        rows = cgutils.unpack_tuple(builder, arrays[3].shape, 2)[0]
        flags = [context.cast(builder, v, t, types.int32)
                 for v, t in zip(args[7:], signature.args[7:])]
        p32 = ir.FloatType().as_pointer()
        intp = context.get_value_type(types.intp)
        fnty = ir.FunctionType(i32, [ir.IntType(64).as_pointer()] + [p32] * 3 + [intp]
                               + [p32] * 3 + [i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _FORWARD)
        data = [a.data for a in arrays]
        return builder.call(fn, data[:4] + [rows] + data[4:] + flags)

    return sig, codegen
