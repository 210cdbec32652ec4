# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""fastmlp.activations, one element at a time, by the same integer codes.

``p`` is the activation's parameter: the slope of linear, alpha of leaky_relu
and elu, and for prelu the alpha of the element's unit (the caller picks it).
Softmax is row-wise and lives in the layer kernels. Every formula is the
reference's, written so that no |z| (up to 1e4 and beyond) overflows. The
transcendental ones come from _vmath, so that the layer kernels' per-activation
loops over them vectorise.
"""
from cython cimport floating
from libc.math cimport log, logf

from _vmath cimport vexpm1, vsigmoid, vsoftplus, vtanh

cdef enum:
    STEP = 0
    SIGN = 1
    LINEAR = 2
    PIECEWISE_LINEAR = 3
    SIGMOID = 4
    TANH = 5
    RELU = 6
    LEAKY_RELU = 7
    PRELU = 8
    ELU = 9
    SOFTPLUS = 10
    SOFTMAX = 11


cdef inline floating flog(floating x) noexcept nogil:
    if floating is float:
        return logf(x)
    else:
        return log(x)


cdef inline floating activate(int code, floating z, floating p) noexcept nogil:
    """f(z) of the activation ``code``; NaN stays NaN so divergence is seen."""
    if code == RELU:
        return 0 if z < 0 else z
    if code == LINEAR:
        return p * z
    if code == LEAKY_RELU or code == PRELU:
        return p * z if z < 0 else z
    if code == SIGMOID:
        return vsigmoid(z)
    if code == TANH:
        return vtanh(z)
    if code == ELU:
        return p * vexpm1(z if z < 0 else <floating>0) if z < 0 else z
    if code == SOFTPLUS:
        return vsoftplus(z)
    if code == PIECEWISE_LINEAR:
        z = z + <floating>0.5
        return 0 if z < 0 else (1 if z > 1 else z)
    if code == STEP:
        return 1 if z > 0 else (0 if z < 0 else <floating>0.5)
    if code == SIGN:
        return 1 if z > 0 else (-1 if z < 0 else z)
    return z


cdef inline floating derivative(int code, floating z, floating f, floating p) noexcept nogil:
    """df/dz at z, given f = activate(code, z, p). Not for softmax."""
    if code == RELU:
        return 1 if z > 0 else 0
    if code == LINEAR:
        return p
    if code == LEAKY_RELU or code == PRELU:
        return p if z < 0 else 1
    if code == SIGMOID:
        return f * (1 - f)
    if code == TANH:
        return 1 - f * f
    if code == ELU:
        return f + p if z < 0 else 1
    if code == SOFTPLUS:
        return vsigmoid(z)
    if code == PIECEWISE_LINEAR:
        return 1 if (z > -0.5 and z < 0.5) else 0
    return 0  # step, sign
