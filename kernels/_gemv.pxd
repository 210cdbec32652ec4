# cython: language_level=3
"""x W for a few rows of x, through the loops of _gemv.h (compiled there once per
instruction set, the widest the processor runs picked at import): the small-batch
predict's GEMV, which needs no BLAS call. A big W's sum over its rows is cut in two
parts, the second on the worker thread of _gemv_pool.h (the same bits on one thread)."""
from cython cimport floating

cdef extern from "_gemv.h":
    int fm_gemv_use(int nbytes) noexcept nogil
    void fm_xw_f32(Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out, const float* x,
                   const float* W, float* z) noexcept nogil
    void fm_xw_f64(Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out, const double* x,
                   const double* W, double* z) noexcept nogil
    # the second thread (_gemv_pool.h): its limit, and test hooks
    int fm_gemv_threads(int n) noexcept nogil
    long long fm_gemv_pool_jobs() noexcept nogil
    long long fm_gemv_pool_naps() noexcept nogil
    Py_ssize_t fm_gemv_pool_min_bytes(Py_ssize_t nbytes) noexcept nogil
    long fm_gemv_pool_spin_ns(long ns) noexcept nogil
    int fm_gemv_pool_leave(int on) noexcept nogil
    int fm_gemv_pool_state() noexcept nogil


cdef inline void xw(Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out, const floating* x,
                    const floating* W, floating* z) noexcept nogil:
    """z (rows, n_out) OVERWRITTEN with x (rows, n_in) W (n_in, n_out), all row-major,
    rows >= 1. W's rows are streamed once per tile of 1-4 rows of x (see _gemv_impl.h);
    a big W's sum in two parts over its rows, one on a worker thread (see _gemv_pool.h)."""
    if floating is float:
        fm_xw_f32(rows, n_in, n_out, x, W, z)
    else:
        fm_xw_f64(rows, n_in, n_out, x, W, z)

cdef extern from "_sgemm.h":
    ctypedef void (*fm_rows_t)(void* ctx, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil
    enum: FM_SGEMM_MR   # rows per block of the GEMM loops' tiles
    void fm_split(fm_rows_t range, void* ctx, Py_ssize_t rows, Py_ssize_t most) noexcept nogil
    # its other parts on the BLAS's own workers (_blas_pool.h): the addresses, test hooks
    int fm_blas_pool_set(void* pthread_fn, void* threads_fn, void* workers) noexcept nogil
    int fm_blas_pool_known() noexcept nogil
    int fm_blas_pool_ok() noexcept nogil
    long long fm_blas_pool_jobs() noexcept nogil
    # predict's float32 GEMM in registers (AVX-512 build; elsewhere fm_sgemm_ok is 0)
    int fm_sgemm_use(int on) noexcept nogil
    int fm_sgemm_ok(Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out) noexcept nogil
    void fm_sgemm(Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out, const float* x,
                  const float* W, float* z) noexcept nogil
