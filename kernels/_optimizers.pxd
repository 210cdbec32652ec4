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
    cdef floating lr = <floating>h[LR], wd = <floating>h[WEIGHT_DECAY]
    cdef floating mu = <floating>h[MOMENTUM]
    cdef floating b1 = <floating>h[BETA1], b2 = <floating>h[BETA2], eps = <floating>h[EPS]
    cdef floating c1 = <floating>(1 - h[BETA1]), c2 = <floating>(1 - h[BETA2])
    cdef floating k1 = <floating>(1 - pow(h[BETA1], <double>t))
    cdef floating k2 = <floating>(1 - pow(h[BETA2], <double>t))
    # One plain loop per rule and decay, which GCC vectorises: a loop branching on the
    # code and the decay per element stayed scalar (Adam's update took 1 ms of a
    # 784-256-128-10 b64 step, Numba's 0.1 ms). wd == 0 adds no wd * theta (0 * inf is
    # NaN), as the reference.
    if code == ADAM_CODE:
        if wd != 0:
            _adam(n, theta, grad, buf0, buf1, lr, wd, b1, b2, c1, c2, k1, k2, eps, True)
        else:
            _adam(n, theta, grad, buf0, buf1, lr, wd, b1, b2, c1, c2, k1, k2, eps, False)
    elif code == SGD_CODE:
        if mu == 0:
            _sgd(n, theta, grad, lr, wd, wd != 0)
        elif wd != 0:
            _momentum(n, theta, grad, buf0, lr, wd, mu, h[NESTEROV] != 0, True)
        else:
            _momentum(n, theta, grad, buf0, lr, wd, mu, h[NESTEROV] != 0, False)
    else:  # no such optimiser: the Engine refuses its code before any kernel runs
        for i in range(n):
            theta[i] = <floating>NAN


cdef inline void _sgd(Py_ssize_t n, floating* theta, const floating* grad, floating lr,
                      floating wd, bint decay) noexcept nogil:
    cdef Py_ssize_t i
    if decay:
        for i in range(n):
            theta[i] -= lr * (grad[i] + wd * theta[i])
    else:
        for i in range(n):
            theta[i] -= lr * grad[i]


cdef inline void _momentum(Py_ssize_t n, floating* theta, const floating* grad, floating* buf,
                           floating lr, floating wd, floating mu, bint nesterov,
                           bint decay) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g, v
    for i in range(n):
        g = grad[i] + wd * theta[i] if decay else grad[i]
        v = mu * buf[i] + g
        buf[i] = v
        theta[i] -= lr * (g + mu * v if nesterov else v)


cdef inline void _adam(Py_ssize_t n, floating* theta, const floating* grad, floating* m_,
                       floating* v_, floating lr, floating wd, floating b1, floating b2,
                       floating c1, floating c2, floating k1, floating k2, floating eps,
                       bint decay) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g, v, m
    for i in range(n):
        g = grad[i] + wd * theta[i] if decay else grad[i]
        m = b1 * m_[i] + c1 * g
        v = b2 * v_[i] + c2 * g * g
        m_[i] = m
        v_[i] = v
        if floating is float:
            theta[i] -= lr * (m / k1) / (sqrtf(v / k2) + eps)
        else:
            theta[i] -= lr * (m / k1) / (sqrt(v / k2) + eps)
