# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""fastmlp.losses on the output layer, for float and double, by the same codes."""
from cython cimport floating
from libc.math cimport NAN

from _activations cimport flog
from _codes cimport BINARY_CROSS_ENTROPY, CROSS_ENTROPY, MSE
from _vmath cimport vexp, vsoftplus


cdef inline double loss_forward_backward(Py_ssize_t rows, Py_ssize_t n, int loss,
                                         const floating* z, const floating* f,
                                         const floating* t, floating* dout,
                                         floating scale) noexcept nogil:
    """The loss SUMMED over rows (callers divide), and its gradient.

    z, f (rows, n): IN, the output layer's pre-activation and output; t (rows, n): IN targets.
    dout (rows, n): OUT unless NULL, OVERWRITTEN with scale * dE/df for mse, or with
    dE/dz directly for the fused pairs (the output layer's activation_backward is
    then skipped): softmax + cross_entropy gives scale * (f * s - t), s the row's
    target sum (1 for one-hot and soft-label rows; rows need not sum to 1), and
    sigmoid + binary_cross_entropy gives scale * (f - t). scale is 1 / (rows of
    the whole batch) for a mean. An unknown loss code gives NaN.
    """
    cdef Py_ssize_t r, j, i
    cdef double total = 0, s, logs
    cdef floating d, m, tj, tsum
    if loss == CROSS_ENTROPY:
        # -sum t * log_softmax(z), the log-softmax exact where softmax underflows;
        # the target sum is taken in the same pass over the row as the loss.
        for r in range(rows):
            i = r * n
            m = z[i]
            for j in range(n):
                if z[i + j] > m:
                    m = z[i + j]
            # the shift d = z - m in the dtype, as the reference's log_softmax: in
            # float32 a spread beyond its max is -inf there (then loss inf or NaN)
            s = 0
            for j in range(n):
                d = z[i + j] - m
                s += vexp(<double>d)
            logs = flog(s)
            tsum = 0
            for j in range(n):
                tj = t[i + j]
                tsum += tj
                d = z[i + j] - m
                # (z - m) - log s, not z - (m + log s): m + log s rounds to m once
                # |m| is large (1e17: every loss 0), as the reference's log_softmax;
                # a 0 target adds nothing, also where d is -inf (a float32 spread
                # beyond its max: 0 * -inf would be NaN)
                if tj != 0:
                    total -= tj * (<double>d - logs)
            if dout != NULL:
                for j in range(n):
                    dout[i + j] = (f[i + j] * tsum - t[i + j]) * scale
    elif loss == BINARY_CROSS_ENTROPY:
        for i in range(rows * n):
            total += <double>vsoftplus(z[i]) - <double>t[i] * z[i]
        if dout != NULL:
            for i in range(rows * n):
                dout[i] = (f[i] - t[i]) * scale
    elif loss == MSE:
        for i in range(rows * n):
            d = f[i] - t[i]
            total += <double>(d * d)  # squared in the dtype, as the reference: inf past its max
            if dout != NULL:
                dout[i] = 2 * scale * d
    else:  # no such loss: the Engine refuses its code before any kernel runs
        total = NAN
        if dout != NULL:
            for i in range(rows * n):
                dout[i] = <floating>NAN
    return total
