/* Input scaling in one pass: out = (x - mean) / scale, each value in IEEE double (one
   subtraction, one division: nothing to contract), then converted to out's type, which
   rounds to nearest as NumPy's cast does; so the bits of NumPy's subtract, divide and
   cast (fastmlp.validation._scale_into). x and out: rows ``ldx`` and ``ldo`` elements
   apart, each row's values adjacent; or, with ``columns``, each column's (Fortran
   order). The pointers are restrict: Python extensions are compiled with
   -fno-strict-aliasing, under which GCC did not vectorise the row loop (out might
   have been mean or scale), and it ran slower than NumPy's three passes.

   A float output is computed faster with the same bits: q = (x - mean) * (1 / scale)
   in double is within 3 units in the last place (ulp) of the quotient (two roundings
   of relative size 2^-53 each, the reciprocal's and the product's, while 1 / scale is
   a normal double), so q and the rounded quotient lie on one side of every point where
   rounding to float changes (the midpoints between floats), and convert to the same
   float, unless q is within FM_NEAR_TIE doubles of such a midpoint, or outside float's
   normal range (where those points lie elsewhere), or not finite (all under the default
   rounding to nearest; in another mode the exact pass runs). A row with any such
   value is computed again with the division (column order keeps the division); in random
   data that is one row in about 5,000 of 784 values. The division dominated the pass
   (the AVX-512 build, 8,192 rows of 784 float32 values in blocks of 512 rows: 3.5 ms
   with the division, 2.4 ms through the reciprocal; copying them took 1.7 ms). */

#ifndef FASTMLP_SCALING_H
#define FASTMLP_SCALING_H

#include <fenv.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(_MSC_VER)
#define restrict __restrict
#endif

/* A column of a Fortran X is a short run far from the last: the hardware's prefetcher
   found each one late, and reading them, not the arithmetic, limited the column pass
   (8,192 rows of 784 float32 values in blocks of 512 rows: 4.2 -> 3.5 ms prefetching
   each next column while one is computed). */
#if defined(__GNUC__) || defined(__clang__)
#define FM_PREFETCH(p) __builtin_prefetch(p)
#else
#define FM_PREFETCH(p) ((void)0)
#endif

/* Doubles either side of a midpoint between floats where q's float may not be the
   quotient's: q is at most 3 ulp from it, 6 doubles when they straddle a power of 2. */
#define FM_NEAR_TIE 64u

/* Whether q (a double about to be converted to float) may convert to another float
   than a value within FM_NEAR_TIE doubles of it: q is not finite, or nonzero and
   below float's smallest normal 2^-126 (its double exponent outside [897, 1150]: at
   and above 2^128 the check of the low bits covers the rounding to infinity), or its
   29 bits below float's 24-bit precision are within FM_NEAR_TIE of 2^28 (a midpoint). */
static inline uint64_t fm_float_may_differ(double q)
{
    uint64_t bits;
    memcpy(&bits, &q, sizeof bits);
    const uint64_t exponent = (bits >> 52) & 0x7FF, low = bits & 0x1FFFFFFF;
    const uint64_t outside = (exponent - 897u > 253u) & ((bits << 1) != 0);
    const uint64_t near_tie = low - ((1u << 28) - FM_NEAR_TIE) <= 2 * FM_NEAR_TIE;
    return outside | near_tie;
}

#define FM_SCALE(NAME, XT, OT)                                                            \
static void NAME(Py_ssize_t rows, Py_ssize_t cols, const XT *restrict x, Py_ssize_t ldx,  \
                 const double *restrict mean, const double *restrict scale,              \
                 OT *restrict out, Py_ssize_t ldo, int columns)                          \
{                                                                                        \
    Py_ssize_t i, j;                                                                     \
    if (columns) {                                                                       \
        for (j = 0; j < cols; j++) {                                                     \
            const double m = mean[j], s = scale[j];                                      \
            const XT *restrict xc = x + j * ldx;                                         \
            OT *restrict oc = out + j * ldo;                                             \
            if (j + 1 < cols)   /* the next column, while this one is computed */       \
                for (i = 0; i < rows; i += 64 / (Py_ssize_t)sizeof(XT))                  \
                    FM_PREFETCH(xc + ldx + i);                                           \
            for (i = 0; i < rows; i++)                                                   \
                oc[i] = (OT)(((double)xc[i] - m) / s);                                   \
        }                                                                                \
    } else {                                                                             \
        for (i = 0; i < rows; i++) {                                                     \
            const XT *restrict xr = x + i * ldx;                                         \
            OT *restrict orow = out + i * ldo;                                           \
            for (j = 0; j < cols; j++)                                                   \
                orow[j] = (OT)(((double)xr[j] - mean[j]) / scale[j]);                    \
        }                                                                                \
    }                                                                                    \
}

/* The float output's pass in rows: the division's bits through a multiplication (see
   the top). The reciprocals take a buffer of cols doubles; without it, or with a
   reciprocal that is not a normal double (a scale that is 0, subnormal, beyond 2^1022,
   inf or NaN), the exact pass runs. So it does in column order: reading columns of a
   Fortran X was the pass's limit there, not the division (4.1-4.3 ms either way for
   8,192 rows of 784 values in blocks of 512 rows, the AVX-512 build, before the
   prefetch above). */
#define FM_SCALE_TO_FLOAT(NAME, EXACT, XT)                                               \
static void NAME(Py_ssize_t rows, Py_ssize_t cols, const XT *restrict x, Py_ssize_t ldx,  \
                 const double *restrict mean, const double *restrict scale,              \
                 float *restrict out, Py_ssize_t ldo, int columns)                       \
{                                                                                        \
    Py_ssize_t i, j;                                                                     \
    /* round to nearest, the mode the reasoning at the top assumes (a directed mode       \
       rounds at the floats themselves: 3 * RZ(1/3) fell below 1.0); and two rows or      \
       more: the reciprocals cost one division per column, as one row's pass does */      \
    double *restrict inv = columns || rows < 2 || fegetround() != FE_TONEAREST ? NULL    \
                           : (double *)malloc((size_t)cols * sizeof(double));            \
    if (inv == NULL) {                                                                   \
        EXACT(rows, cols, x, ldx, mean, scale, out, ldo, columns);                       \
        return;                                                                          \
    }                                                                                    \
    for (j = 0; j < cols; j++) {                                                         \
        inv[j] = 1.0 / scale[j];                                                         \
        const double a = inv[j] < 0 ? -inv[j] : inv[j];                                  \
        if (!(a >= 2.2250738585072014e-308 && a <= 1.7976931348623157e308)) {           \
            free(inv);                                                                   \
            EXACT(rows, cols, x, ldx, mean, scale, out, ldo, columns);                   \
            return;                                                                      \
        }                                                                                \
    }                                                                                    \
    for (i = 0; i < rows; i++) {                                                         \
        const XT *restrict xr = x + i * ldx;                                             \
        float *restrict orow = out + i * ldo;                                            \
        uint64_t differ = 0;                                                             \
        for (j = 0; j < cols; j++) {                                                     \
            const double q = ((double)xr[j] - mean[j]) * inv[j];                         \
            orow[j] = (float)q;                                                          \
            differ |= fm_float_may_differ(q);                                            \
        }                                                                                \
        if (differ)                                                                      \
            EXACT(1, cols, xr, ldx, mean, scale, orow, ldo, 0);                          \
    }                                                                                    \
    free(inv);                                                                           \
}

FM_SCALE(fm_scale_f32_f64, float, double)
FM_SCALE(fm_scale_f64_f64, double, double)
#if defined(__AVX512F__)
FM_SCALE(fm_scale_exact_f32_f32, float, float)
FM_SCALE(fm_scale_exact_f64_f32, double, float)
FM_SCALE_TO_FLOAT(fm_scale_f32_f32, fm_scale_exact_f32_f32, float)
FM_SCALE_TO_FLOAT(fm_scale_f64_f32, fm_scale_exact_f64_f32, double)
#else
/* Only the AVX-512 build takes the reciprocal: GCC's AVX2 and SSE2 code for its checks
   (64-bit lanes beside 32-bit floats) ran slower than the division, 5.5 and 13 ms
   against 3.4 and 4.3 ms for 8,192 rows of 784 values in blocks of 512 rows. */
FM_SCALE(fm_scale_f32_f32, float, float)
FM_SCALE(fm_scale_f64_f32, double, float)
#endif

#undef FM_SCALE
#undef FM_SCALE_TO_FLOAT
#undef FM_PREFETCH
#endif
