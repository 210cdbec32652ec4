# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""What a guarded train step needs to prove its update finite before it writes.

``abs_max`` is max |a| over an array in one vectorised pass that also sees NaN and
inf (it returns inf for either). ``prove_update`` bounds, from max |gradient| and
stored upper bounds on max |theta| and on the optimiser buffers in use, every value
the update of fastmlp.optimizers (and the plain-SGD update folded into the GEMM,
fastmlp.rules.sgd_fold_rows) computes; when all of them lie below ``limit`` the
step can be written with no backup, since nothing it writes can overflow.

Bounds are kept in float64 and every one is an upper bound, rounding included:
see prove_update.
"""
from cython cimport floating
from libc.math cimport fabs, pow
from libc.stdint cimport int64_t

from _codes cimport ADAM_CODE, BETA1, BETA2, EPS, LR, MOMENTUM, NESTEROV, SGD_CODE, WEIGHT_DECAY

cdef extern from *:
    """
    #include <math.h>
    #include <stdint.h>
    #include <string.h>
    /* max |a| as the largest exponent-and-mantissa bit pattern (sign cleared): for
       floats of one sign the bit patterns order as the values do, and NaN and inf
       have the largest patterns of all, so one integer max, which vectorises (a float
       max with NaN does not), finds the maximum and any NaN or inf. 16 partial maxima:
       one would be a chain of dependent compare-and-selects. GCC on x86-64 Linux
       builds an AVX2 clone too, picked at load time (the extension is built for SSE2). */
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    #define FM_GUARD_CLONES __attribute__((target_clones("avx2", "default")))
    #else
    #define FM_GUARD_CLONES
    #endif
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    #define FM_GUARD_HIGH_WORD 0
    #else
    #define FM_GUARD_HIGH_WORD 4
    #endif

    /* max |a[i]| over n floats, or INFINITY when one is NaN or inf. */
    FM_GUARD_CLONES static double fm_abs_max_f32(Py_ssize_t n, const float* a) {
        int32_t part[16] = {0}, m = 0, v;
        Py_ssize_t i, n16 = n - n % 16;
        int k;
        float f;
        for (i = 0; i < n16; i += 16)
            for (k = 0; k < 16; k++) {
                memcpy(&v, a + i + k, 4);
                v &= 0x7fffffff;
                part[k] = v > part[k] ? v : part[k];
            }
        for (; i < n; i++) {
            memcpy(&v, a + i, 4);
            v &= 0x7fffffff;
            m = v > m ? v : m;
        }
        for (k = 0; k < 16; k++)
            m = part[k] > m ? part[k] : m;
        if (m >= 0x7f800000)
            return INFINITY;
        memcpy(&f, &m, 4);
        return f;
    }

    /* An upper bound on max |a[i]| over n doubles (within 2^-20 of it), or INFINITY
       when one is NaN or inf: the maximum of the high words (sign, exponent, 20
       mantissa bits) as 32-bit integers, which SSE2 vectorises, unlike 64-bit ones;
       the bound is that word followed by all-ones low bits. */
    FM_GUARD_CLONES static double fm_abs_max_f64(Py_ssize_t n, const double* a) {
        int32_t part[16] = {0}, m = 0, v;
        const char* p = (const char*)a + FM_GUARD_HIGH_WORD;
        Py_ssize_t i, n16 = n - n % 16;
        int k;
        uint64_t bits;
        double d;
        for (i = 0; i < n16; i += 16)
            for (k = 0; k < 16; k++) {
                memcpy(&v, p + 8 * (i + k), 4);
                v &= 0x7fffffff;
                part[k] = v > part[k] ? v : part[k];
            }
        for (; i < n; i++) {
            memcpy(&v, p + 8 * i, 4);
            v &= 0x7fffffff;
            m = v > m ? v : m;
        }
        for (k = 0; k < 16; k++)
            m = part[k] > m ? part[k] : m;
        if (m >= 0x7ff00000)
            return INFINITY;
        bits = ((uint64_t)(uint32_t)m << 32) | 0xffffffffu;
        memcpy(&d, &bits, 8);
        return d;
    }
    """
    double fm_abs_max_f32(Py_ssize_t n, const float* a) noexcept nogil
    double fm_abs_max_f64(Py_ssize_t n, const double* a) noexcept nogil


cdef inline double abs_max(Py_ssize_t n, const floating* a) noexcept nogil:
    """max |a| over a (n,) (0 when n is 0), an upper bound within 2^-20 of it for
    double; inf when any element is NaN or inf."""
    if floating is float:
        return fm_abs_max_f32(n, a)
    else:
        return fm_abs_max_f64(n, a)


# Upper bounds on max |theta| and on max |buffer| of the optimiser buffers in use,
# valid while ``known`` and only for the arrays they were taken of (the Engine
# forgets them whenever anyone else may have written those).
cdef struct Bounds:
    bint known
    Py_ssize_t in_use        # rows of the buffers they cover (buffers_in_use)
    double theta
    double buf0              # momentum's v, or Adam's m
    double buf1              # Adam's v
    bint v_negative          # Adam's v holds a value below 0 (a host write: an Adam step
                             # keeps v >= 0), whose sqrt is NaN: nothing can be proven
    int64_t proven           # guarded steps written on the bounds as they were,
    int64_t measured         # ... those that measured the maxima first,
    int64_t backed_up        # ... and those that needed a backup (counts, for tests)


cdef inline bint below(double x, double limit) noexcept nogil:
    """x < limit, false for NaN."""
    return x < limit


cdef inline bint any_negative(Py_ssize_t n, const floating* a) noexcept nogil:
    """Whether some a[i] (n,) is below 0 (-0 and NaN are not); an OR over lanes, which
    vectorises."""
    cdef Py_ssize_t i
    cdef int neg = 0
    for i in range(n):
        neg |= a[i] < 0
    return neg != 0


cdef inline bint prove_update(const Bounds* now, double grad, Py_ssize_t rows, int code,
                              const double* h, int64_t t, double unit, double limit,
                              Bounds* after) noexcept nogil:
    """Whether the update by ``grad`` (an upper bound on every |dE/dtheta| of the batch's
    mean loss, weight decay not included) provably leaves theta and the buffers in use
    below ``limit``; ``after`` gets the new bounds (only meaningful when true).

    The bounds follow fastmlp.optimizers.update (g = grad + wd theta; SGD: v = mu v + g,
    step v, or g + mu v for Nesterov; Adam: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
    step lr (m / k1) / (sqrt(v / k2) + eps) <= lr |m / k1| max(1, 1 / eps), the first
    factor also bounding the product lr (m / k1) computed on the way, and v >= 0, which
    an Adam step keeps but a host write may break: ``now.v_negative`` proves nothing); the folded
    plain-SGD update (1 - lr wd) theta - lr grad is bounded by the same
    theta + lr (grad + wd theta). Each is the exact value's bound times ``slack``
    = 1 + (rows + 32) unit, unit the dtype's rounding unit: a sum of rows products
    computed in any order (the GEMM) is within (rows) unit of the sum of their
    magnitudes, and each further operation adds one unit; float64 rounding of these
    bounds is 2^29 times smaller. Hyper-parameters are taken as the kernels round
    them to the dtype (``unit`` 2^-24: float), so lr = 1e200, inf in float, fails; Adam's
    1 - beta1 and 1 - beta2 as the kernel does, rounded from the double's (beta1 =
    1 - 1e-8 is 1 in float, yet 1 - beta1 is 1e-8 there, not 0).
    ``limit`` (the dtype's max / 16) leaves a factor 16 beyond all of that.
    """
    cdef double s = 1 + (rows + 32) * unit
    cdef bint f32 = unit > 1e-10
    cdef double lr = h[LR], wd = h[WEIGHT_DECAY], mu = h[MOMENTUM]
    cdef double b1 = h[BETA1], b2 = h[BETA2], eps = h[EPS], k1, k2
    cdef double c1 = 1 - h[BETA1], c2 = 1 - h[BETA2]
    cdef double g, v, m, step, inv_eps
    if f32:  # the values the float kernels compute with (_optimizers.optimizer_update)
        lr, wd, mu = <float>lr, <float>wd, <float>mu
        b1, b2, eps = <float>b1, <float>b2, <float>eps
        c1, c2 = <float>c1, <float>c2
    g = (grad + wd * now.theta) * s
    after.known = True
    after.in_use = now.in_use
    after.buf0 = now.buf0
    after.buf1 = now.buf1
    after.v_negative = now.v_negative
    if not (below(lr, limit) and below(g, limit)):
        return False
    if code == SGD_CODE:
        step = g
        if mu != 0:
            v = (mu * now.buf0 + g) * s
            after.buf0 = v
            step = (g + mu * v) * s if h[NESTEROV] != 0 else v
        step = lr * step * s
        after.theta = (now.theta + step) * s
        return below(step, limit) and below(after.theta, limit) and below(after.buf0, limit)
    if code == ADAM_CODE:
        if now.v_negative:
            return False
        k1 = 1 - pow(h[BETA1], <double>t)
        k2 = 1 - pow(h[BETA2], <double>t)
        if f32:
            k1, k2 = <float>k1, <float>k2
        k1, k2 = fabs(k1), fabs(k2)   # in (0, 1] but for a step count that wrapped
        m = (b1 * now.buf0 + c1 * g) * s
        v = (b2 * now.buf1 + c2 * (g * g * s)) * s
        inv_eps = 1 / eps if eps < 1 else 1
        step = lr * (m / k1) * inv_eps * s * s
        after.buf0, after.buf1 = m, v
        after.theta = (now.theta + step) * s
        return (below(g * g, limit) and below(m / k1, limit) and below(v / k2, limit)
                and below(step, limit) and below(after.theta, limit) and below(v, limit))
    return False
