"""Array views for the Numba kernels that cost no reference counting.

An array view made inside ``@njit`` code normally increments and decrements
its parent's reference count with atomic operations; at the 3-4-2 vehicle net's
sizes those atomics took half of a train step. The kernels compile without
reference counting (numba_math.KERNEL), and ``matrix`` makes its views with
none either, so that predict and evaluate, which keep it to allocate, can pass
them on: the caller keeps every array alive for the whole call, and no view is
ever returned.
"""
from __future__ import annotations

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.arrayobj import populate_array

from fastmlp.codes import SUM_BLOCK


@intrinsic
def matrix(typingctx, flat, start, n, k):
    """flat[start:start + n * k] as a borrowed (n, k) C-contiguous view.

    No bounds check: the caller's layout (the plan) guarantees the range.
    """
    # C layout only: the view assumes flat's elements are adjacent (a strided array
    # would give wrong numbers; refused, it fails to compile instead)
    if not (isinstance(flat, types.Array) and flat.ndim == 1 and flat.layout == "C"):
        return None
    result = flat.copy(ndim=2, layout="C")

    def codegen(context, builder, signature, args):
        src = context.make_array(signature.args[0])(context, builder, args[0])
        dst = context.make_array(result)(context, builder)
        offset, rows, cols = (context.cast(builder, args[i], signature.args[i], types.intp)
                              for i in (1, 2, 3))
        populate_array(dst, data=builder.gep(src.data, [offset]),
                       shape=cgutils.pack_array(builder, [rows, cols]),
                       strides=cgutils.pack_array(builder, [builder.mul(cols, src.itemsize),
                                                            src.itemsize]),
                       itemsize=src.itemsize, meminfo=None)
        return dst._getvalue()

    return result(flat, start, n, k), codegen


@intrinsic
def row_span(typingctx, a, r0, r1):
    """Rows r0..r1 of a C-contiguous 2-D array ``a`` as a borrowed (r1 - r0, k) view: what
    a[r0:r1] gives, without the general slice's code (negative and clipped bounds), which
    the training kernel would compile at every such slice. No bounds check: the caller's
    loop guarantees 0 <= r0 <= r1 <= rows."""
    if not (isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C"):
        return None

    def codegen(context, builder, signature, args):
        src = context.make_array(a)(context, builder, args[0])
        dst = context.make_array(a)(context, builder)
        r0_, r1_ = (context.cast(builder, args[i], signature.args[i], types.intp)
                    for i in (1, 2))
        k = builder.extract_value(src.shape, 1)
        populate_array(dst, data=builder.gep(src.data, [builder.mul(r0_, k)]),
                       shape=cgutils.pack_array(builder, [builder.sub(r1_, r0_), k]),
                       strides=src.strides, itemsize=src.itemsize, meminfo=None)
        return dst._getvalue()

    return a(a, r0, r1), codegen


@intrinsic
def flat(typingctx, a, start, stop):
    """Elements start..stop of a C-contiguous array ``a`` (any dimensions) in memory
    order, as a borrowed 1-D view (a 2-D array's rows r0..r1 are elements r0 * k..r1 * k).
    One loop over a narrow layer's rows vectorises where a loop per row of 2 or 4
    elements does not. No bounds check: the caller's layout guarantees the range."""
    if not (isinstance(a, types.Array) and a.layout == "C"):
        return None
    result = a.copy(ndim=1, layout="C")

    def codegen(context, builder, signature, args):
        src = context.make_array(signature.args[0])(context, builder, args[0])
        dst = context.make_array(result)(context, builder)
        offset, end = (context.cast(builder, args[i], signature.args[i], types.intp)
                       for i in (1, 2))
        populate_array(dst, data=builder.gep(src.data, [offset]),
                       shape=cgutils.pack_array(builder, [builder.sub(end, offset)]),
                       strides=cgutils.pack_array(builder, [src.itemsize]),
                       itemsize=src.itemsize, meminfo=None)
        return dst._getvalue()

    return result(a, start, stop), codegen


@intrinsic
def column_sums(typingctx):
    """A float64 (SUM_BLOCK,) scratch array on the calling kernel's stack (allocated once,
    in its entry block; its values are undefined until written), which no reference
    counting sees: a chunk's column sums are formed there in float64 and added to the
    batch's once per chunk (see dense_params)."""
    result = types.Array(types.float64, 1, "C")

    def codegen(context, builder, signature, args):
        dst = context.make_array(result)(context, builder)
        data = cgutils.alloca_once(builder, context.get_value_type(types.float64),
                                   size=SUM_BLOCK)
        itemsize = context.get_constant(types.intp, 8)
        populate_array(dst, data=data,
                       shape=cgutils.pack_array(builder, [context.get_constant(types.intp,
                                                                               SUM_BLOCK)]),
                       strides=cgutils.pack_array(builder, [itemsize]),
                       itemsize=itemsize, meminfo=None)
        return dst._getvalue()

    return result(), codegen
