# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""exp, expm1, log1p, tanh, sigmoid and softplus that GCC -O3 can vectorise.

libm's expf/tanhf/log1pf are calls, one element at a time, and a loop that
calls them never vectorises. These are polynomials with 2^n built in the
exponent bits (memcpy compiles to a register move) and ternaries for every
choice, which setup.py's -fno-trapping-math lets GCC compile to selects; so a
loop of them runs 4 floats or 2 doubles per SSE2 instruction. Relative error:
about 3e-7 at most for float (computed in float, hence twice as wide as double), below
1e-15 for double. NaN in gives NaN out.

Every bare number is a typed local (``one``, ``two``): Cython writes a literal 1
as the C double 1.0, which would compute a float loop in double. For the same
reason nothing passes fabs() (a double) to a fused function.
"""
from cython cimport floating
from libc.math cimport copysign, copysignf, fabs
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy

cdef extern from *:
    """
    /* x + SHIFT rounds x to an integer n, which the low mantissa bits of the sum hold. */
    static const float VM_F_SHIFT = 12582912.0f;            /* 1.5 * 2^23 */
    static const double VM_D_SHIFT = 6755399441055744.0;    /* 1.5 * 2^52 */
    static const double VM_LOG2E = 1.4426950408889634;
    /* ln 2 in two parts; the high part ends in zero bits, so n * LN2_HI is exact. */
    static const float VM_F_LN2_HI = 0.693145751953125f;
    static const float VM_F_LN2_LO = 1.428606765330187e-06f;
    static const double VM_D_LN2_HI = 0.6931471803691238;
    static const double VM_D_LN2_LO = 1.9082149292705877e-10;
    static const double VM_LN2 = 0.6931471805599453;
    static const double VM_SQRT2 = 1.4142135623730951;
    /* Clamped here, n is one below the smallest normal exponent, so 2^n's bits are
       those of +0: e^x is 0 from there down, expm1 -1 (exact to 1e-38 / 1e-308). */
    static const float VM_F_LO = -88.0f;
    static const double VM_D_LO = -709.0;
    """
    const float F_SHIFT "VM_F_SHIFT"
    const double D_SHIFT "VM_D_SHIFT"
    const double LOG2E "VM_LOG2E"
    const float F_LN2_HI "VM_F_LN2_HI"
    const float F_LN2_LO "VM_F_LN2_LO"
    const double D_LN2_HI "VM_D_LN2_HI"
    const double D_LN2_LO "VM_D_LN2_LO"
    const double LN2 "VM_LN2"
    const double SQRT2 "VM_SQRT2"
    const float F_LO "VM_F_LO"
    const double D_LO "VM_D_LO"


cdef inline floating _reduce(floating x, floating* scale) noexcept nogil:
    """r with x = n ln2 + r, |r| <= ln2 / 2, and scale = 2^n, for LO <= x <= 88 (float)
    or 709 (double); below LO the caller clamps."""
    cdef float tf, nf
    cdef double td, nd
    cdef uint32_t uf
    cdef uint64_t ud
    if floating is float:
        tf = x * <float>LOG2E + F_SHIFT
        nf = tf - F_SHIFT
        memcpy(&uf, &tf, 4)
        uf = (uf + 127) << 23
        memcpy(scale, &uf, 4)
        return (x - nf * F_LN2_HI) - nf * F_LN2_LO
    else:
        td = x * LOG2E + D_SHIFT
        nd = td - D_SHIFT
        memcpy(&ud, &td, 8)
        ud = (ud + 1023) << 52
        memcpy(scale, &ud, 8)
        return (x - nd * D_LN2_HI) - nd * D_LN2_LO


cdef inline floating _em1(floating r) noexcept nogil:
    """e^r - 1 for |r| <= ln2 / 2: r + r^2 P(r), P a minimax quartic (float; error
    9e-8) or the Taylor series to r^13 (double). P is evaluated by Estrin's scheme
    (pairs, then powers r^2, r^4, r^8) rather than Horner's: the shorter chain of
    dependent operations is what bounds these loops."""
    cdef floating r2 = r * r, r4
    if floating is float:
        return r + r2 * ((<float>0.4999999701976776 + <float>0.16666541993618011 * r)
                         + r2 * ((<float>0.04166758805513382 + <float>0.00836667139083147 * r)
                                 + r2 * <float>0.0013858656166121364))
    else:
        r4 = r2 * r2
        return r + r2 * (((1 / 2. + 1 / 6. * r) + r2 * (1 / 24. + 1 / 120. * r))
                         + r4 * ((1 / 720. + 1 / 5040. * r) + r2 * (1 / 40320. + 1 / 362880. * r))
                         + r4 * r4 * ((1 / 3628800. + 1 / 39916800. * r)
                                      + r2 * (1 / 479001600. + 1 / 6227020800. * r)))


cdef inline floating _clamp_low(floating x) noexcept nogil:
    if floating is float:
        return F_LO if x < F_LO else x
    else:
        return D_LO if x < D_LO else x


cdef inline floating vexp(floating x) noexcept nogil:
    """e^x for x <= 88 (float) or 709 (double); every caller passes x <= 0."""
    cdef floating scale
    cdef floating r = _reduce(_clamp_low(x), &scale)
    return scale + scale * _em1(r)


cdef inline floating vexpm1(floating x) noexcept nogil:
    """e^x - 1 for x <= 88 (float) or 709 (double), accurate near 0:
    2^n (e^r - 1) + (2^n - 1), which is e^r - 1 itself for n = 0."""
    cdef floating scale, one = 1
    cdef floating r = _reduce(_clamp_low(x), &scale)
    return scale * _em1(r) + (scale - one)


cdef inline floating vtanh(floating z) noexcept nogil:
    """tanh |z| = -m / (2 + m) = 1 - 2 e / (2 + m), e = e^{-2|z|} <= 1, m = e - 1.

    The first has no cancellation near 0; the second (above 0.55) is 1 minus a small
    number known to full relative accuracy, so f rounds as the reference's does where
    tanh saturates and the backward pass's 1 - f^2 cancels. |z| is capped where
    tanh is 1 to the last bit, so the exponent needs no other clamp.
    """
    cdef floating one = 1, two = 2, cap, scale, r, p, m, d, t
    cdef floating a = fabs(z)
    if floating is float:
        cap = 10
    else:
        cap = 20
    a = cap if a > cap else a
    r = _reduce(-two * a, &scale)
    p = scale * _em1(r)
    m = p + (scale - one)
    d = one / (two + m)
    t = one - two * (p + scale) * d if a > <floating>0.55 else -m * d
    if floating is float:
        return copysignf(t, z)
    else:
        return copysign(t, z)


cdef inline floating vsigmoid(floating z) noexcept nogil:
    """1 / (1 + e^-z) through e = e^-|z| <= 1: 1 / (1 + e) or e / (1 + e)."""
    cdef floating one = 1, a = fabs(z)
    cdef floating e = vexp(-a)
    cdef floating q = one / (one + e)
    return q if z >= 0 else e * q


cdef inline floating vlog1p(floating y) noexcept nogil:
    """ln(1 + y) for 0 <= y <= 1 (softplus's ln(1 + e^-|z|)).

    u = 1 + y is m 2^k, m in [sqrt(2)/2, sqrt(2)), k in {0, 1}; ln m = 2 atanh(s) with
    s = (m - 1) / (m + 1), |s| <= 0.172, by its odd series (to s^11 float, s^21 double;
    Estrin's scheme). c = y - (u - 1), what rounding u lost (at most half an ulp of 1),
    adds c / u, taken as c (1 - y): off by c y^2, under 1.5 ulp of the result, and no
    second division.
    """
    cdef floating one = 1, two = 2, half = 0.5, zero = 0
    cdef floating u = one + y
    cdef bint high = u > <floating>SQRT2
    cdef floating m = u * half if high else u
    cdef floating k = <floating>LN2 if high else zero
    cdef floating s = (m - one) / (m + one)
    cdef floating q = s * s
    cdef floating series
    cdef floating q2 = q * q, q4 = q2 * q2
    if floating is float:
        series = two * s * ((one + <float>(1 / 3.) * q) + q2 * (<float>(1 / 5.) + <float>(1 / 7.) * q)
                            + q4 * (<float>(1 / 9.) + <float>(1 / 11.) * q))
    else:
        series = 2 * s * (((1 + 1 / 3. * q) + q2 * (1 / 5. + 1 / 7. * q))
                          + q4 * ((1 / 9. + 1 / 11. * q) + q2 * (1 / 13. + 1 / 15. * q))
                          + q4 * q4 * ((1 / 17. + 1 / 19. * q) + q2 * (1 / 21.)))
    return k + series + (y - (u - one)) * (one - y)


cdef inline floating vsoftplus(floating z) noexcept nogil:
    """ln(1 + e^z) = max(z, 0) + log1p(e^-|z|), which never overflows."""
    cdef floating zero = 0, a = fabs(z)
    return (z if z > 0 else zero) + vlog1p(vexp(-a))
