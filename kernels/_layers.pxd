# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""One dense layer f = act(x W + b), forward and backward, for float and double.

Every array is row-major; ``rows`` is the batch. The caller checks sizes and
owns every buffer. A layer's backward is activation_backward (dE/df -> delta),
dense_backward_input (delta -> the layer below's dE/df) and dense_backward_params
(delta -> dE/dW and dE/db, or the folded SGD update): a train step runs the first
two for every layer, then the third, so nothing is written to theta before every
delta is known (see cython_mlp.train_guarded).

``fmax`` / ``dmax`` arguments, when not NULL, get max |f| / max |delta| of what
the pass wrote (inf if any is NaN or inf), from each row while it is in cache.
"""
from cython cimport floating

from libc.math cimport NAN

from _activations cimport (elu_backward, elu_forward, leaky_relu_backward, leaky_relu_forward,
                           linear_backward, linear_forward, piecewise_linear_backward,
                           piecewise_linear_forward, prelu_backward, prelu_forward,
                           relu_backward, relu_forward, sigmoid_backward, sigmoid_forward,
                           sign_forward, softmax_backward, softmax_forward, softplus_backward,
                           softplus_forward, step_forward, tanh_backward, tanh_forward,
                           zero_backward)
from _blas cimport gemm
from _gemv cimport xw
from _guard cimport abs_max
from _codes cimport (ELU, LEAKY_RELU, LINEAR, PIECEWISE_LINEAR, PRELU, RELU, SIGMOID, SIGN,
                     SOFTMAX, SOFTPLUS, STEP, SUM_BLOCK, TANH)


cdef inline int bias_activation_forward(Py_ssize_t rows, Py_ssize_t n, floating* z,
                                         const floating* b, int code, floating p,
                                         const floating* alpha, floating* f,
                                         double* fmax) noexcept nogil:
    """The pass after the GEMM: z += b, f = act(z), a row at a time (see _activations).

    z (rows, n): IN x W, OUT x W + b (updated in place).
    b (n,), alpha (n,): IN; alpha is prelu's per-unit parameter, NULL otherwise.
    f (rows, n): OUT, OVERWRITTEN with the activation. f may be z (only outputs kept).
    fmax (1,): OUT unless NULL, OVERWRITTEN with max |f| (inf if one is NaN or inf).
    Returns 0, or -1 for a code with no section (f is then NaN; the Engine refuses
    such codes before any kernel runs).
    """
    cdef Py_ssize_t r, j
    cdef floating* zr
    cdef floating* fr
    cdef double m = 0, mr
    for r in range(rows):
        zr = z + r * n
        fr = f + r * n
        if code == RELU:
            relu_forward(n, zr, b, p, alpha, fr)
        elif code == SIGMOID:
            sigmoid_forward(n, zr, b, p, alpha, fr)
        elif code == TANH:
            tanh_forward(n, zr, b, p, alpha, fr)
        elif code == LINEAR:
            linear_forward(n, zr, b, p, alpha, fr)
        elif code == LEAKY_RELU:
            leaky_relu_forward(n, zr, b, p, alpha, fr)
        elif code == PRELU:
            prelu_forward(n, zr, b, p, alpha, fr)
        elif code == ELU:
            elu_forward(n, zr, b, p, alpha, fr)
        elif code == SOFTPLUS:
            softplus_forward(n, zr, b, p, alpha, fr)
        elif code == SOFTMAX:
            softmax_forward(n, zr, b, p, alpha, fr)
        elif code == PIECEWISE_LINEAR:
            piecewise_linear_forward(n, zr, b, p, alpha, fr)
        elif code == STEP:
            step_forward(n, zr, b, p, alpha, fr)
        elif code == SIGN:
            sign_forward(n, zr, b, p, alpha, fr)
        else:
            for j in range(n):
                fr[j] = <floating>NAN
            return -1
        if fmax != NULL:
            mr = abs_max(n, fr)
            m = mr if mr > m else m
    if fmax != NULL:
        fmax[0] = m
    return 0


cdef inline void dense_product(Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out,
                               const floating* x, const floating* W, floating* z,
                               bint small) noexcept nogil:
    """z = x W: the GEMM before a layer's bias and activation.

    x (rows, n_in), W (n_in, n_out): IN. z (rows, n_out): OUT, OVERWRITTEN.
    ``small`` (a few rows: fastmlp.rules.PREDICT_SMALL_ROWS): by the GEMV loops of
    _gemv.h, which stream W once, instead of a BLAS call.
    """
    if small:
        xw(rows, n_in, n_out, x, W, z)
    else:
        gemm(False, False, <int>rows, <int>n_out, <int>n_in, <floating>1, x, <int>n_in,
             W, <int>n_out, <floating>0, z, <int>n_out)


cdef inline void dense_forward(Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out,
                               const floating* x, const floating* W, const floating* b,
                               int code, floating p, const floating* alpha, floating* z,
                               floating* f, double* fmax) noexcept nogil:
    """f = act(x W + b).

    x (rows, n_in), W (n_in, n_out), b (n_out,), alpha (n_out,) or NULL: IN.
    z (rows, n_out): OUT, OVERWRITTEN with x W + b.
    f (rows, n_out): OUT, OVERWRITTEN with the activation; may be z (z then lost).
    fmax (1,): OUT unless NULL, max |f| (see bias_activation_forward).
    """
    dense_product(rows, n_in, n_out, x, W, z, False)
    bias_activation_forward(rows, n_out, z, b, code, p, alpha, f, fmax)


cdef inline void add_sums(Py_ssize_t n, const double* acc, floating* out,
                          bint accumulate) noexcept nogil:
    """out (n,) OVERWRITTEN with acc, or ACCUMULATED (added) when ``accumulate``.

    A column's sum over a chunk's rows is formed in double (acc, SUM_BLOCK columns on
    the stack) and added to the batch's once per chunk: added row by row to a float32
    total, a batch of a million rows (a thousand chunks) lost up to 1 % of its bias
    gradient to rounding."""
    cdef Py_ssize_t j
    for j in range(n):
        out[j] = (out[j] + <floating>acc[j]) if accumulate else <floating>acc[j]


cdef inline int activation_backward(Py_ssize_t rows, Py_ssize_t n, const floating* dout,
                                     floating* z, const floating* f, int code, floating p,
                                     const floating* alpha, floating* galpha,
                                     bint accumulate, double* dmax) noexcept nogil:
    """dE/df -> dE/dz through f = act(z), a row at a time (see _activations).

    dout (rows, n): IN dE/df.
    z (rows, n): IN the forward pass's pre-activation, OUT delta = dE/dz (OVERWRITTEN).
    f (rows, n): IN, the forward pass's output.
    alpha (n,): IN, prelu only (NULL otherwise).
    galpha (n,): OUT, prelu only: dE/dalpha = sum_r dE/df * min(z, 0), OVERWRITTEN,
    or ACCUMULATED (added) when ``accumulate``: summed over the rows in double first
    (column_sums_into).
    dmax (1,): OUT unless NULL, OVERWRITTEN with max |delta| (inf if one is NaN or inf).
    Returns 0, or -1 for a code with no section (delta is then NaN; the Engine
    refuses such codes before any kernel runs).
    """
    cdef Py_ssize_t r, j, j0, nb
    cdef const floating* dr
    cdef floating* zr
    cdef const floating* fr
    cdef double m = 0, mr
    cdef double acc[SUM_BLOCK]
    if code == PRELU:  # a block of columns at a time, alpha's gradient summed in acc
        j0 = 0
        while j0 < n:
            nb = min(<Py_ssize_t>SUM_BLOCK, n - j0)
            for j in range(nb):
                acc[j] = 0
            for r in range(rows):
                prelu_backward(nb, dout + r * n + j0, z + r * n + j0, f + r * n + j0, p,
                               alpha + j0, acc)
            add_sums(nb, acc, galpha + j0, accumulate)
            j0 += nb
        if dmax != NULL:
            dmax[0] = abs_max(rows * n, z)
        return 0
    for r in range(rows):
        dr = dout + r * n
        zr = z + r * n
        fr = f + r * n
        if code == RELU:
            relu_backward(n, dr, zr, fr, p, alpha, galpha)
        elif code == SIGMOID:
            sigmoid_backward(n, dr, zr, fr, p, alpha, galpha)
        elif code == TANH:
            tanh_backward(n, dr, zr, fr, p, alpha, galpha)
        elif code == LINEAR:
            linear_backward(n, dr, zr, fr, p, alpha, galpha)
        elif code == LEAKY_RELU:
            leaky_relu_backward(n, dr, zr, fr, p, alpha, galpha)
        elif code == ELU:
            elu_backward(n, dr, zr, fr, p, alpha, galpha)
        elif code == SOFTPLUS:
            softplus_backward(n, dr, zr, fr, p, alpha, galpha)
        elif code == SOFTMAX:
            softmax_backward(n, dr, zr, fr, p, alpha, galpha)
        elif code == PIECEWISE_LINEAR:
            piecewise_linear_backward(n, dr, zr, fr, p, alpha, galpha)
        elif code == STEP or code == SIGN:
            zero_backward(n, dr, zr, fr, p, alpha, galpha)
        else:
            for j in range(n):
                zr[j] = <floating>NAN
            return -1
        if dmax != NULL:
            mr = abs_max(n, zr)
            m = mr if mr > m else m
    if dmax != NULL:
        dmax[0] = m
    return 0


cdef inline void dense_backward_input(Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out,
                                      const floating* W, const floating* delta,
                                      floating* dx) noexcept nogil:
    """Backward through z = x W + b to the input: dx (rows, n_in) OVERWRITTEN with
    delta W^T; W (n_in, n_out) and delta = dE/dz (rows, n_out): IN."""
    gemm(False, True, <int>rows, <int>n_in, <int>n_out, <floating>1, delta, <int>n_out,
         W, <int>n_out, <floating>0, dx, <int>n_in)


cdef inline void dense_backward_params(Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out,
                                       const floating* x, const floating* delta, floating* gW,
                                       floating* gb, bint accumulate, bint sgd, floating lr,
                                       floating decay, floating* b) noexcept nogil:
    """Backward through z = x W + b to the parameters.

    x (rows, n_in), delta = dE/dz (rows, n_out): IN.
    gb (n_out,): OUT, sum_r delta (in double, see add_sums): OVERWRITTEN, or ACCUMULATED
    when ``accumulate``.
    sgd false: gW (n_in, n_out) gets x^T delta: OVERWRITTEN, or ACCUMULATED when
    ``accumulate`` (a batch processed in chunks of rows); b is unused.
    sgd true (plain SGD folded into the GEMM, fastmlp.rules.sgd_fold_rows; accumulate
    must be false): gW is W itself, W <- decay W - lr x^T delta (decay = 1 - lr *
    weight_decay), gb is OVERWRITTEN, and b (n_out,) <- decay b - lr gb.
    The weight gradient is never materialised. W's old value must no longer be
    needed: dense_backward_input of this layer runs first.
    """
    cdef Py_ssize_t r, j, j0, nb
    cdef double acc[SUM_BLOCK]
    j0 = 0
    while j0 < n_out:  # gb: summed in double, a block of columns at a time (see add_sums)
        nb = min(<Py_ssize_t>SUM_BLOCK, n_out - j0)
        for j in range(nb):
            acc[j] = 0
        for r in range(rows):
            for j in range(nb):
                acc[j] += delta[r * n_out + j0 + j]
        add_sums(nb, acc, gb + j0, accumulate)
        j0 += nb
    if sgd:
        if decay == 1:  # no weight decay: a constant beta lets the small GEMM skip a multiply
            gemm(True, False, <int>n_in, <int>n_out, <int>rows, -lr, x, <int>n_in, delta,
                 <int>n_out, <floating>1, gW, <int>n_out)
            for j in range(n_out):
                b[j] -= lr * gb[j]
        else:
            gemm(True, False, <int>n_in, <int>n_out, <int>rows, -lr, x, <int>n_in, delta,
                 <int>n_out, decay, gW, <int>n_out)
            for j in range(n_out):
                b[j] = decay * b[j] - lr * gb[j]
    else:
        gemm(True, False, <int>n_in, <int>n_out, <int>rows, <floating>1, x, <int>n_in, delta,
             <int>n_out, <floating>1 if accumulate else <floating>0, gW, <int>n_out)
