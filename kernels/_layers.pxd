# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""One dense layer f = act(x W + b), forward and backward, for float and double.

Every array is row-major; ``rows`` is the batch. The caller checks sizes and
owns every buffer. dense_backward undoes the GEMM and activation_backward the
activation, so a layer's backward is activation_backward then dense_backward.
"""
from cython cimport floating

from _activations cimport (ELU, PRELU, RELU, SIGMOID, SOFTMAX, SOFTPLUS, TANH, activate,
                           derivative)
from _blas cimport gemm
from _vmath cimport vexp, vexpm1, vsigmoid, vsoftplus, vtanh


cdef inline void bias_activation_forward(Py_ssize_t rows, Py_ssize_t n, floating* z,
                                         const floating* b, int code, floating p,
                                         const floating* alpha, floating* f) noexcept nogil:
    """The pass after the GEMM: z += b, f = act(z).

    z (rows, n): IN x W, OUT x W + b (updated in place).
    b (n,), alpha (n,): IN; alpha is prelu's per-unit parameter, NULL otherwise.
    f (rows, n): OUT, OVERWRITTEN with the activation. f may be z (only outputs kept).
    Each common activation has its own loop: one branch-free body that GCC vectorises.
    """
    cdef Py_ssize_t r, j
    cdef floating v, m, s, a
    cdef floating zero = 0  # a bare 0 would be a C double and widen float loops
    cdef floating* zr
    cdef floating* fr
    for r in range(rows):
        zr = z + r * n
        fr = f + r * n
        if code == RELU:
            for j in range(n):
                v = zr[j] + b[j]
                zr[j] = v
                fr[j] = 0 if v < 0 else v
        elif code == PRELU:
            for j in range(n):
                v = zr[j] + b[j]
                zr[j] = v
                a = alpha[j]  # loaded unconditionally, so the ternary can be a select
                fr[j] = a * v if v < 0 else v
        elif code == TANH:
            for j in range(n):
                v = zr[j] + b[j]
                zr[j] = v
                fr[j] = vtanh(v)
        elif code == SIGMOID:
            for j in range(n):
                v = zr[j] + b[j]
                zr[j] = v
                fr[j] = vsigmoid(v)
        elif code == ELU:
            for j in range(n):
                v = zr[j] + b[j]
                zr[j] = v
                fr[j] = p * vexpm1(v if v < 0 else zero) if v < 0 else v
        elif code == SOFTPLUS:
            for j in range(n):
                v = zr[j] + b[j]
                zr[j] = v
                fr[j] = vsoftplus(v)
        elif code == SOFTMAX:
            m = zr[0] + b[0]
            for j in range(n):
                v = zr[j] + b[j]
                zr[j] = v
                if v > m:
                    m = v
            for j in range(n):
                fr[j] = vexp(zr[j] - m)
            s = 0
            for j in range(n):
                s += fr[j]
            s = 1 / s
            for j in range(n):
                fr[j] *= s
        else:
            for j in range(n):
                v = zr[j] + b[j]
                zr[j] = v
                fr[j] = activate(code, v, p)


cdef inline void dense_forward(Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out,
                               const floating* x, const floating* W, const floating* b,
                               int code, floating p, const floating* alpha, floating* z,
                               floating* f) noexcept nogil:
    """f = act(x W + b).

    x (rows, n_in), W (n_in, n_out), b (n_out,), alpha (n_out,) or NULL: IN.
    z (rows, n_out): OUT, OVERWRITTEN with x W + b.
    f (rows, n_out): OUT, OVERWRITTEN with the activation; may be z (z then lost).
    """
    gemm(False, False, <int>rows, <int>n_out, <int>n_in, <floating>1, x, <int>n_in,
         W, <int>n_out, <floating>0, z, <int>n_out)
    bias_activation_forward(rows, n_out, z, b, code, p, alpha, f)


cdef inline void activation_backward(Py_ssize_t rows, Py_ssize_t n, floating* dout,
                                     const floating* z, const floating* f, int code, floating p,
                                     const floating* alpha, floating* galpha,
                                     bint accumulate) noexcept nogil:
    """dE/df -> dE/dz through f = act(z).

    dout (rows, n): IN dE/df, OUT delta = dE/dz (OVERWRITTEN in place).
    z, f (rows, n): IN, the forward pass's pre-activation and output.
    alpha (n,): IN, prelu only (NULL otherwise).
    galpha (n,): OUT, prelu only: dE/dalpha = sum_r dE/df * min(z, 0), OVERWRITTEN,
    or ACCUMULATED (added) when ``accumulate``.
    """
    cdef Py_ssize_t r, j
    cdef floating s, v, a
    cdef floating* dr
    cdef const floating* zr
    cdef const floating* fr
    cdef floating one = 1  # a bare 1 would be a C double and widen float loops
    if code == PRELU and not accumulate:
        for j in range(n):
            galpha[j] = 0
    for r in range(rows):
        dr = dout + r * n
        zr = z + r * n
        fr = f + r * n
        if code == RELU:
            for j in range(n):
                dr[j] = dr[j] if zr[j] > 0 else 0
        elif code == TANH:
            for j in range(n):
                dr[j] *= one - fr[j] * fr[j]
        elif code == SIGMOID:
            for j in range(n):
                dr[j] *= fr[j] * (one - fr[j])
        elif code == ELU:
            for j in range(n):
                a = fr[j] + p  # loaded unconditionally, so the ternary can be a select
                dr[j] *= a if zr[j] < 0 else one
        elif code == SOFTPLUS:
            for j in range(n):
                dr[j] *= vsigmoid(zr[j])
        elif code == PRELU:
            for j in range(n):
                v = zr[j]
                if v < 0:
                    galpha[j] += dr[j] * v
                    dr[j] *= alpha[j]
        elif code == SOFTMAX:
            # The softmax Jacobian-vector product p * (dp - sum(dp * p)).
            s = 0
            for j in range(n):
                s += dr[j] * f[r * n + j]
            for j in range(n):
                dr[j] = f[r * n + j] * (dr[j] - s)
        else:
            for j in range(n):
                dr[j] *= derivative(code, z[r * n + j], f[r * n + j], p)


cdef inline void dense_backward(Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out,
                                const floating* x, const floating* W, const floating* delta,
                                floating* dx, floating* gW, floating* gb, bint accumulate,
                                bint sgd, floating lr, floating* b) noexcept nogil:
    """Backward through z = x W + b.

    x (rows, n_in), W (n_in, n_out), delta = dE/dz (rows, n_out): IN.
    dx (rows, n_in): OUT, OVERWRITTEN with delta W^T from W as it was on entry;
    skipped when NULL (the first layer).
    gb (n_out,): OUT, sum_r delta: OVERWRITTEN, or ACCUMULATED when ``accumulate``.
    sgd false: gW (n_in, n_out) gets x^T delta: OVERWRITTEN, or ACCUMULATED when
    ``accumulate`` (a batch processed in chunks of rows); b is unused.
    sgd true (plain SGD folded into the GEMM; accumulate must be false): gW is W
    itself and ACCUMULATES -lr x^T delta, gb is OVERWRITTEN, and b (n_out,) -= lr * gb.
    The weight gradient is never materialised.
    """
    cdef Py_ssize_t r, j
    if dx != NULL:
        gemm(False, True, <int>rows, <int>n_in, <int>n_out, <floating>1, delta, <int>n_out,
             W, <int>n_out, <floating>0, dx, <int>n_in)
    if not accumulate:
        for j in range(n_out):
            gb[j] = 0
    for r in range(rows):
        for j in range(n_out):
            gb[j] += delta[r * n_out + j]
    if sgd:
        gemm(True, False, <int>n_in, <int>n_out, <int>rows, -lr, x, <int>n_in, delta, <int>n_out,
             <floating>1, gW, <int>n_out)
        for j in range(n_out):
            b[j] -= lr * gb[j]
    else:
        gemm(True, False, <int>n_in, <int>n_out, <int>rows, <floating>1, x, <int>n_in, delta,
             <int>n_out, <floating>1 if accumulate else <floating>0, gW, <int>n_out)
