"""Input scaling compiled (kernels/_scaling.h): (x - mean) / scale, each value in
float64, then cast to the output's dtype, the one arithmetic of
fastmlp.validation._scale_into, bit for bit (the AVX-512 build reaches a float32
output's bits through the reciprocal of scale), in one pass with no temporary (NumPy's
three passes over a float64 temporary took 12 ms of a 784-16-10 net's 14.6 ms predict
of 8,192 rows of 784 columns). The caller checks every pointer, shape and stride.

fm_scale_<x>_<out>(rows, cols, x, ldx, mean, scale, out, ldo, columns): out (rows,
cols) OVERWRITTEN; x and out rows ``ldx`` and ``ldo`` elements apart (each row's values
adjacent), or with ``columns`` columns that far apart (Fortran order); mean and scale
(cols,) float64.
"""

cdef extern from "_scaling.h":
    void fm_scale_f32_f32(Py_ssize_t rows, Py_ssize_t cols, const float* x, Py_ssize_t ldx,
                          const double* mean, const double* scale, float* out,
                          Py_ssize_t ldo, int columns) noexcept nogil
    void fm_scale_f32_f64(Py_ssize_t rows, Py_ssize_t cols, const float* x, Py_ssize_t ldx,
                          const double* mean, const double* scale, double* out,
                          Py_ssize_t ldo, int columns) noexcept nogil
    void fm_scale_f64_f32(Py_ssize_t rows, Py_ssize_t cols, const double* x, Py_ssize_t ldx,
                          const double* mean, const double* scale, float* out,
                          Py_ssize_t ldo, int columns) noexcept nogil
    void fm_scale_f64_f64(Py_ssize_t rows, Py_ssize_t cols, const double* x, Py_ssize_t ldx,
                          const double* mean, const double* scale, double* out,
                          Py_ssize_t ldo, int columns) noexcept nogil
