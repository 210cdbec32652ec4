# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""fastmlp.optimizers.update for float and double, by the same codes and hyper positions."""
from cython cimport floating
from libc.math cimport NAN, pow, sqrt, sqrtf
from libc.stdint cimport int64_t

from _codes cimport (ADAM_CODE, BETA1, BETA2, EPS, LR, MOMENTUM, NESTEROV, SGD_CODE,
                     WEIGHT_DECAY)


cdef inline void optimizer_update(Py_ssize_t n, floating* theta, const floating* grad,
                                  floating* buf0, floating* buf1, int code, const double* h,
                                  int64_t t) noexcept nogil:
    """One step of SGD (code SGD_CODE) or Adam, as fastmlp.optimizers.update.

    theta (n,): IN/OUT, updated in place. grad (n,): IN.
    buf0, buf1 (n,): IN/OUT state, updated in place: SGD's momentum (buf1 unused),
    or Adam's m and v. h (N_HYPER,): IN hyper-parameters at LR ... EPS.
    t: the step count after this update (Adam's bias correction).
    """
    cdef Py_ssize_t i
    cdef floating g, v, m
    cdef floating lr = <floating>h[LR], wd = <floating>h[WEIGHT_DECAY]
    cdef floating mu = <floating>h[MOMENTUM]
    cdef bint nesterov = h[NESTEROV] != 0
    cdef floating b1 = <floating>h[BETA1], b2 = <floating>h[BETA2], eps = <floating>h[EPS]
    cdef floating c1 = <floating>(1 - h[BETA1]), c2 = <floating>(1 - h[BETA2])
    cdef floating k1 = <floating>(1 - pow(h[BETA1], <double>t))
    cdef floating k2 = <floating>(1 - pow(h[BETA2], <double>t))
    for i in range(n):
        g = grad[i] + wd * theta[i] if wd != 0 else grad[i]
        if code == SGD_CODE:
            if mu != 0:
                v = mu * buf0[i] + g
                buf0[i] = v
                g = g + mu * v if nesterov else v
            theta[i] -= lr * g
        elif code == ADAM_CODE:
            m = b1 * buf0[i] + c1 * g
            v = b2 * buf1[i] + c2 * g * g
            buf0[i] = m
            buf1[i] = v
            if floating is float:
                theta[i] -= lr * (m / k1) / (sqrtf(v / k2) + eps)
            else:
                theta[i] -= lr * (m / k1) / (sqrt(v / k2) + eps)
        else:  # no such optimiser: the Engine refuses its code before any kernel runs
            theta[i] = <floating>NAN
