# cython: language_level=3
"""Row-major GEMM for float and double, callable without the GIL.

BLAS is column-major; a row-major (m, n) matrix is the column-major
transpose, so C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T by swapping
the operands. Products too small to repay a BLAS call (the 3-4-2 net, batch 1)
run as plain loops.

The BLAS is the one fastmlp.blas.kernel_blas() names: NumPy's own (ILP64 on
NumPy's wheels), so NumPy and the kernels share one thread pool, or SciPy's
cython_blas as the fallback. Its ?gemm addresses are read once, at the first
BLAS-sized product, into static pointers of the module that cimports this file.
"""
from cython cimport floating
from libc.stdint cimport int64_t
from scipy.linalg.cython_blas cimport sgemm, dgemm

ctypedef void (*sgemm64_t)(const char*, const char*, const int64_t*, const int64_t*,
                           const int64_t*, const float*, const float*, const int64_t*,
                           const float*, const int64_t*, const float*, float*,
                           const int64_t*) noexcept nogil
ctypedef void (*dgemm64_t)(const char*, const char*, const int64_t*, const int64_t*,
                           const int64_t*, const double*, const double*, const int64_t*,
                           const double*, const int64_t*, const double*, double*,
                           const int64_t*) noexcept nogil
ctypedef void (*sgemm32_t)(const char*, const char*, const int*, const int*, const int*,
                           const float*, const float*, const int*, const float*, const int*,
                           const float*, float*, const int*) noexcept nogil
ctypedef void (*dgemm32_t)(const char*, const char*, const int*, const int*, const int*,
                           const double*, const double*, const int*, const double*, const int*,
                           const double*, double*, const int*) noexcept nogil

cdef extern from *:
    """
    /* fastmlp's ?gemm (see kernels/_blas.pxd): [0] sgemm, [1] dgemm, and their integer
       width, 0 until loaded. The width is stored last with release order, so a thread
       that reads it non-zero (acquire) sees the pointers. */
    static void *fastmlp_gemm_address[2] = {0, 0};
    #if defined(_MSC_VER)  /* MSVC's volatile accesses are acquire/release on x86 and x64 */
    static volatile int fastmlp_gemm_int_bits = 0;
    static __inline int fastmlp_gemm_int_bits_get(void) { return fastmlp_gemm_int_bits; }
    static __inline void fastmlp_gemm_int_bits_set(int bits) { fastmlp_gemm_int_bits = bits; }
    #else
    static int fastmlp_gemm_int_bits = 0;
    static inline int fastmlp_gemm_int_bits_get(void) {
        return __atomic_load_n(&fastmlp_gemm_int_bits, __ATOMIC_ACQUIRE); }
    static inline void fastmlp_gemm_int_bits_set(int bits) {
        __atomic_store_n(&fastmlp_gemm_int_bits, bits, __ATOMIC_RELEASE); }
    #endif
    """
    void* fastmlp_gemm_address[2]
    int fastmlp_gemm_int_bits_get() noexcept nogil
    void fastmlp_gemm_int_bits_set(int bits) noexcept nogil


cdef extern from "_sgemm_blas.h":
    # float32 products on _sgemm.h's loops, both threads: 1 when taken, else 0
    int fm_gemm_f32(int ta, int tb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, float alpha,
                    const float* A, Py_ssize_t lda, const float* B, Py_ssize_t ldb,
                    float beta, float* C, Py_ssize_t ldc) noexcept nogil
    int fm_gemm_built() noexcept nogil
    int fm_gemm_use(int policy) noexcept nogil     # 0 never, 1 fit's epochs, 2 always, 3 auto
    int fm_gemm_scope(int on) noexcept nogil       # this thread in fit's epochs (1) or not
    int fm_gemm_packed_use(int mode) noexcept nogil  # packed products: 0 none, 1 big B, 2 all
    void* fm_own_sgemm64(void* next) noexcept nogil
    # this thread's buffer for op(B) = B^T's copy, and its size in floats (kept between calls)
    float* fm_gemm_scratch
    Py_ssize_t fm_gemm_scratch_floats


cdef inline int load_kernel_blas() noexcept nogil:
    """Read fastmlp.blas.kernel_blas()'s addresses into the pointers; returns the
    integer width. Takes the GIL, once per process (a dict look-up after the first
    module to call it). Were the lookup to fail, SciPy's cython_blas is used."""
    cdef int bits = 32
    with gil:
        try:
            from fastmlp.blas import kernel_blas
            blas = kernel_blas()
            fastmlp_gemm_address[0] = <void*><size_t>blas.sgemm_address
            fastmlp_gemm_address[1] = <void*><size_t>blas.dgemm_address
            bits = blas.int_bits
        except BaseException:  # nowhere to raise from a nogil kernel: a BLAS that works
            fastmlp_gemm_address[0] = <void*>sgemm
            fastmlp_gemm_address[1] = <void*>dgemm
            bits = 32
    fastmlp_gemm_int_bits_set(bits)
    return bits


# m * n * k at or below which plain loops beat a BLAS call. OpenBLAS's own
# small-matrix path costs ~15-60 ns more per call than the loops up to about
# 100 multiply-adds and wins above (measured with cython_mlp._gemm, float32 and
# float64): the 3-4-2 net at batch 6 and per-sample SGD stay in the loops.
cdef enum:
    SMALL_GEMM = 96


cdef extern from *:
    """
    /* One multiply-add of the small products, rounded once (as BLAS's kernels, the GEMV
       loops of _gemv.h and the Numba loops, numba_blas._mad), in every build, so the
       builds and both backends agree bit for bit: the FMA instruction where the build
       has it, else a call to libm's fma (exact too; in the baseline build, run only by
       processors without AVX2). A plain s + a * b would not fuse: setup.py's
       -ffp-contract=off. */
    #include <math.h>
    #define fm_mad_f(a, b, s) fmaf((a), (b), (s))
    #define fm_mad_d(a, b, s) fma((a), (b), (s))
    """
    float fm_mad_f(float a, float b, float s) noexcept nogil
    double fm_mad_d(double a, double b, double s) noexcept nogil


cdef inline void small_gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                            const floating* a, int lda, const floating* b, int ldb,
                            floating beta, floating* c, int ldc) noexcept nogil:
    """gemm's contract as plain dot products over strides: no call, no set-up; each
    multiply-add rounded once (fm_mad_f above)."""
    cdef Py_ssize_t i, j, p
    cdef Py_ssize_t ai = 1 if trans_a else lda, ap = lda if trans_a else 1
    cdef Py_ssize_t bp = 1 if trans_b else ldb, bj = ldb if trans_b else 1
    cdef floating s
    for i in range(m):
        for j in range(n):
            s = 0
            for p in range(k):
                if floating is float:
                    s = fm_mad_f(a[i * ai + p * ap], b[p * bp + j * bj], s)
                else:
                    s = fm_mad_d(a[i * ai + p * ap], b[p * bp + j * bj], s)
            c[i * ldc + j] = alpha * s if beta == 0 else beta * c[i * ldc + j] + alpha * s


cdef inline void blas_gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                           const floating* a, int lda, const floating* b, int ldb,
                           floating beta, floating* c, int ldc) noexcept nogil:
    cdef char ta = b'T' if trans_b else b'N'
    cdef char tb = b'T' if trans_a else b'N'
    cdef int bits = fastmlp_gemm_int_bits_get()
    cdef int64_t m64 = m, n64 = n, k64 = k, lda64 = lda, ldb64 = ldb, ldc64 = ldc
    if bits == 0:
        bits = load_kernel_blas()
    if bits == 64:
        if floating is float:
            (<sgemm64_t>fastmlp_gemm_address[0])(&ta, &tb, &n64, &m64, &k64, &alpha, b, &ldb64,
                                                 a, &lda64, &beta, c, &ldc64)
        else:
            (<dgemm64_t>fastmlp_gemm_address[1])(&ta, &tb, &n64, &m64, &k64, &alpha, b, &ldb64,
                                                 a, &lda64, &beta, c, &ldc64)
    elif floating is float:
        (<sgemm32_t>fastmlp_gemm_address[0])(&ta, &tb, &n, &m, &k, &alpha, b, &ldb, a, &lda,
                                             &beta, c, &ldc)
    else:
        (<dgemm32_t>fastmlp_gemm_address[1])(&ta, &tb, &n, &m, &k, &alpha, b, &ldb, a, &lda,
                                             &beta, c, &ldc)


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                      const floating* a, int lda, const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """C (m, n) = alpha op(A) op(B) + beta C, all row-major; op(A) is (m, k), op(B) (k, n).

    beta = 0 OVERWRITES C (its old contents are never read); beta = 1 accumulates.
    float32 products run on _sgemm_blas.h's loops where they take them (a C element's
    bits do not depend on which rows share the call), else on BLAS.
    """
    if m <= 0 or n <= 0:
        return
    if <long long>m * n * k <= SMALL_GEMM or k <= 0:
        small_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    elif floating is float and fm_gemm_f32(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb,
                                           beta, c, ldc):
        pass  # _sgemm_blas.h's loops took it (an AVX-512 build, B within their size)
    else:
        blas_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
