/* Input scaling in one pass: out = (x - mean) / scale, each value in IEEE double (one
   subtraction, one division: nothing to contract), then converted to out's type, which
   rounds to nearest as NumPy's cast does; so the bits of NumPy's subtract, divide and
   cast (fastmlp.validation._scale_into). x and out: rows ``ldx`` and ``ldo`` elements
   apart, each row's values adjacent; or, with ``columns``, each column's (Fortran
   order). The pointers are restrict: Python extensions are compiled with
   -fno-strict-aliasing, under which GCC did not vectorise the row loop (out might
   have been mean or scale), and it ran slower than NumPy's three passes. */
#ifndef FASTMLP_SCALING_H
#define FASTMLP_SCALING_H

#if defined(_MSC_VER)
#define restrict __restrict
#endif

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

FM_SCALE(fm_scale_f32_f32, float, float)
FM_SCALE(fm_scale_f32_f64, float, double)
FM_SCALE(fm_scale_f64_f32, double, float)
FM_SCALE(fm_scale_f64_f64, double, double)

#undef FM_SCALE
#endif
