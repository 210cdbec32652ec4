# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""fastmlp.activations over one row of a layer, one section per activation.

Each section holds the activation's two passes over a row of n units, side by side:

* ``<name>_forward(n, z, b, p, alpha, f)``: z (n,) += b (n,) in place, and
  f (n,) = act(z), OVERWRITTEN (f may be z);
* ``<name>_backward(n, g, zd, f, p, alpha, galpha)``: g (n,) holds dE/df; zd (n,)
  holds the forward pass's z and is OVERWRITTEN with delta = dE/dz (each element
  read before it is written, so a train step keeps every layer's delta in that
  layer's z buffer for the update sweep); f is the forward pass's output.

``p`` is the activation's parameter (slope of linear, alpha of leaky_relu and
elu); prelu reads its per-unit alpha (n,) instead and ADDS dE/dalpha to
galpha (n,); others ignore alpha and galpha. Every backward multiplies g by the reference's
derivative (fastmlp.activations), conditions included, never selects g or 0, so an
inf or NaN g gives what the reference's product gives. Each loop is one branch-free body
that GCC vectorises (a ternary whose sides are both computed compiles to a
select under setup.py's -fno-trapping-math). Softmax is row-wise like the
others. _layers.pxd dispatches on the code (:mod:`fastmlp.codes`, through the
generated _codes.pxd). Every formula is the reference's, written so that no
|z| (up to 1e4 and beyond) overflows; the transcendental ones come from _vmath.

Every bare number is a typed local (``zero``, ``one``): Cython writes a literal
as a C double, which would compute a float loop in double.
"""
from cython cimport floating
from libc.math cimport log, logf

from _vmath cimport vexp, vexpm1, vsigmoid, vsoftplus, vtanh


cdef inline floating flog(floating x) noexcept nogil:
    if floating is float:
        return logf(x)
    else:
        return log(x)


# -- step: 1 above 0, 0 below, 1/2 at 0; no gradient flows ----------------------------

cdef inline void step_forward(Py_ssize_t n, floating* z, const floating* b, floating p,
                              const floating* alpha, floating* f) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating v, zero = 0, half = 0.5, one = 1
    for j in range(n):
        v = z[j] + b[j]
        z[j] = v
        f[j] = one if v > 0 else (zero if v < 0 else half)


cdef inline void zero_backward(Py_ssize_t n, const floating* g, floating* zd, const floating* f,
                               floating p, const floating* alpha, floating* galpha) noexcept nogil:
    """The derivative of step and sign: 0 wherever it exists."""
    cdef Py_ssize_t j
    cdef floating zero = 0
    for j in range(n):
        zd[j] = g[j] * zero


# -- sign: -1, 0, 1; no gradient flows (backward: zero_backward) ----------------------

cdef inline void sign_forward(Py_ssize_t n, floating* z, const floating* b, floating p,
                              const floating* alpha, floating* f) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating v, one = 1
    for j in range(n):
        v = z[j] + b[j]
        z[j] = v
        f[j] = one if v > 0 else (-one if v < 0 else v)  # v: 0, -0 or NaN


# -- linear: p z ---------------------------------------------------------------------

cdef inline void linear_forward(Py_ssize_t n, floating* z, const floating* b, floating p,
                                const floating* alpha, floating* f) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating v
    for j in range(n):
        v = z[j] + b[j]
        z[j] = v
        f[j] = p * v


cdef inline void linear_backward(Py_ssize_t n, const floating* g, floating* zd, const floating* f,
                                 floating p, const floating* alpha, floating* galpha) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        zd[j] = g[j] * p


# -- piecewise linear: clip(z + 1/2, 0, 1) ----------------------------------------------

cdef inline void piecewise_linear_forward(Py_ssize_t n, floating* z, const floating* b,
                                          floating p, const floating* alpha,
                                          floating* f) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating v, zero = 0, half = 0.5, one = 1
    for j in range(n):
        v = z[j] + b[j]
        z[j] = v
        v = v + half
        f[j] = zero if v < 0 else (one if v > 1 else v)


cdef inline void piecewise_linear_backward(Py_ssize_t n, const floating* g, floating* zd,
                                           const floating* f, floating p, const floating* alpha,
                                           floating* galpha) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating zero = 0, half = 0.5, one = 1
    for j in range(n):
        zd[j] = g[j] * (one if (zd[j] > -half and zd[j] < half) else zero)


# -- sigmoid --------------------------------------------------------------------------

cdef inline void sigmoid_forward(Py_ssize_t n, floating* z, const floating* b, floating p,
                                 const floating* alpha, floating* f) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating v
    for j in range(n):
        v = z[j] + b[j]
        z[j] = v
        f[j] = vsigmoid(v)


cdef inline void sigmoid_backward(Py_ssize_t n, const floating* g, floating* zd, const floating* f,
                                  floating p, const floating* alpha, floating* galpha) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating one = 1
    for j in range(n):
        zd[j] = g[j] * (f[j] * (one - f[j]))


# -- tanh -----------------------------------------------------------------------------

cdef inline void tanh_forward(Py_ssize_t n, floating* z, const floating* b, floating p,
                              const floating* alpha, floating* f) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating v
    for j in range(n):
        v = z[j] + b[j]
        z[j] = v
        f[j] = vtanh(v)


cdef inline void tanh_backward(Py_ssize_t n, const floating* g, floating* zd, const floating* f,
                               floating p, const floating* alpha, floating* galpha) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating one = 1
    for j in range(n):
        zd[j] = g[j] * (one - f[j] * f[j])


# -- relu: derivative 0 at z <= 0 ------------------------------------------------------

cdef inline void relu_forward(Py_ssize_t n, floating* z, const floating* b, floating p,
                              const floating* alpha, floating* f) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating v, zero = 0
    for j in range(n):
        v = z[j] + b[j]
        z[j] = v
        f[j] = zero if v < 0 else v


cdef inline void relu_backward(Py_ssize_t n, const floating* g, floating* zd, const floating* f,
                               floating p, const floating* alpha, floating* galpha) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating zero = 0, one = 1
    for j in range(n):
        # g times the derivative, not a select of g or 0: an inf g at a dead unit
        # gives inf * 0 = NaN, as the reference's product, so the step diverges
        zd[j] = g[j] * (one if zd[j] > 0 else zero)


# -- leaky relu: p z below 0 -------------------------------------------------------------

cdef inline void leaky_relu_forward(Py_ssize_t n, floating* z, const floating* b, floating p,
                                    const floating* alpha, floating* f) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating v
    for j in range(n):
        v = z[j] + b[j]
        z[j] = v
        f[j] = p * v if v < 0 else v


cdef inline void leaky_relu_backward(Py_ssize_t n, const floating* g, floating* zd,
                                     const floating* f, floating p, const floating* alpha,
                                     floating* galpha) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating one = 1
    for j in range(n):
        zd[j] = g[j] * (one if zd[j] >= 0 else p)  # z >= 0 as the reference: NaN z takes p


# -- prelu: alpha[j] z below 0, alpha trainable per unit ------------------------------------

cdef inline void prelu_forward(Py_ssize_t n, floating* z, const floating* b, floating p,
                               const floating* alpha, floating* f) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating v, a
    for j in range(n):
        v = z[j] + b[j]
        z[j] = v
        a = alpha[j]  # loaded unconditionally, so the ternary can be a select
        f[j] = a * v if v < 0 else v


cdef inline void prelu_backward(Py_ssize_t n, const floating* g, floating* zd, const floating* f,
                                floating p, const floating* alpha, double* galpha) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating v, a, d, low, gj, zero = 0, one = 1
    for j in range(n):
        gj, v, a = g[j], zd[j], alpha[j]  # all loaded first, so the ternaries are selects
        # d prelu / d alpha = min(z, 0) (NaN for NaN z), added everywhere as the
        # reference does: an inf g where z >= 0 gives inf * 0 = NaN, not nothing
        low = zero if v >= 0 else v
        d = one if v >= 0 else a
        galpha[j] += gj * low
        zd[j] = gj * d


# -- elu: p (e^z - 1) below 0, through expm1 so it is accurate near 0 ------------------------

cdef inline void elu_forward(Py_ssize_t n, floating* z, const floating* b, floating p,
                             const floating* alpha, floating* f) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating v, zero = 0
    for j in range(n):
        v = z[j] + b[j]
        z[j] = v
        f[j] = p * vexpm1(v if v < 0 else zero) if v < 0 else v


cdef inline void elu_backward(Py_ssize_t n, const floating* g, floating* zd, const floating* f,
                              floating p, const floating* alpha, floating* galpha) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating a, one = 1, zero = 0
    for j in range(n):
        # alpha e^z, not f + alpha: that cancels (0 below z = -17 in float32); e^z in
        # double, as the reference (a float32 e^z below 1e-38 loses its digits). Computed
        # unconditionally, so the ternary can be a select.
        a = <floating>(p * vexp(<double>(zd[j] if zd[j] < 0 else zero)))
        zd[j] = g[j] * (one if zd[j] >= 0 else a)  # z >= 0 as the reference: NaN z takes alpha e^z


# -- softplus: ln(1 + e^z), which never overflows -----------------------------------------------

cdef inline void softplus_forward(Py_ssize_t n, floating* z, const floating* b, floating p,
                                  const floating* alpha, floating* f) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating v
    for j in range(n):
        v = z[j] + b[j]
        z[j] = v
        f[j] = vsoftplus(v)


cdef inline void softplus_backward(Py_ssize_t n, const floating* g, floating* zd,
                                   const floating* f, floating p, const floating* alpha,
                                   floating* galpha) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        zd[j] = g[j] * vsigmoid(zd[j])


# -- softmax: over the row, shifted by its maximum --------------------------------------------

cdef enum:
    # The row's max and sum go in this many independent lanes, each a chain of its own:
    # as one chain, each compare or add waiting for the last, they cost a 1,000-class
    # row about 2 ns an element, ten times its exp. The lanes vectorise with no lane's
    # adds reordered (no -ffast-math); the max is the same whatever the order.
    SOFTMAX_LANES = 8


cdef inline void softmax_forward(Py_ssize_t n, floating* z, const floating* b, floating p,
                                 const floating* alpha, floating* f) noexcept nogil:
    # The row's sum in double, as the Numba kernel: a float32 sum drifts with the row's
    # length (a 3,000-class row summed to 1 +- 3e-6, against 6e-8). A NaN anywhere makes
    # the whole row NaN (through the sum, or through m when it is z[0]), whichever lane
    # sees it: the max's lanes may skip it.
    cdef Py_ssize_t i, j, l, whole = n - n % SOFTMAX_LANES
    cdef floating v, t, m
    cdef floating top[SOFTMAX_LANES]
    cdef double s = 0
    cdef double sums[SOFTMAX_LANES]
    for j in range(n):
        z[j] = z[j] + b[j]
    m = z[0]
    for l in range(SOFTMAX_LANES):
        top[l] = m
        sums[l] = 0
    for i in range(0, whole // SOFTMAX_LANES):
        for l in range(SOFTMAX_LANES):
            v = z[i * SOFTMAX_LANES + l]
            top[l] = v if v > top[l] else top[l]
    for l in range(SOFTMAX_LANES):
        m = top[l] if top[l] > m else m
    for j in range(whole, n):
        m = z[j] if z[j] > m else m
    for j in range(n):
        f[j] = vexp(z[j] - m)
    for i in range(0, whole // SOFTMAX_LANES):
        for l in range(SOFTMAX_LANES):
            sums[l] += f[i * SOFTMAX_LANES + l]
    for l in range(SOFTMAX_LANES):
        s += sums[l]
    for j in range(whole, n):
        s += f[j]
    t = <floating>s
    for j in range(n):
        f[j] /= t


cdef inline void softmax_backward(Py_ssize_t n, const floating* g, floating* zd, const floating* f,
                                  floating p, const floating* alpha, floating* galpha) noexcept nogil:
    """The softmax Jacobian-vector product f * (d - sum(d * f))."""
    cdef Py_ssize_t j
    cdef double s = 0  # in double, as the forward's sum
    for j in range(n):
        s += g[j] * f[j]
    for j in range(n):
        zd[j] = f[j] * (g[j] - s)
