# cython: language_level=3
"""Row-major GEMM for float and double, callable without the GIL.

BLAS is column-major; a row-major (m, n) matrix is the column-major
transpose, so C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T by swapping
the operands. Products too small to repay a BLAS call (the 3-4-2 net, batch 1)
run as plain loops.
"""
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm

# m * n * k at or below which plain loops beat a BLAS call. OpenBLAS's own
# small-matrix path costs ~15-60 ns more per call than the loops up to about
# 100 multiply-adds and wins above (measured with cython_mlp._gemm, float32 and
# float64): the 3-4-2 net at batch 6 and per-sample SGD stay in the loops.
cdef enum:
    SMALL_GEMM = 96


cdef inline void small_gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                            const floating* a, int lda, const floating* b, int ldb,
                            floating beta, floating* c, int ldc) noexcept nogil:
    """gemm's contract as plain dot products over strides: no call, no set-up."""
    cdef Py_ssize_t i, j, p
    cdef Py_ssize_t ai = 1 if trans_a else lda, ap = lda if trans_a else 1
    cdef Py_ssize_t bp = 1 if trans_b else ldb, bj = ldb if trans_b else 1
    cdef floating s
    for i in range(m):
        for j in range(n):
            s = 0
            for p in range(k):
                s += a[i * ai + p * ap] * b[p * bp + j * bj]
            c[i * ldc + j] = alpha * s if beta == 0 else beta * c[i * ldc + j] + alpha * s


cdef inline void blas_gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                           const floating* a, int lda, const floating* b, int ldb,
                           floating beta, floating* c, int ldc) noexcept nogil:
    cdef char ta = b'T' if trans_b else b'N'
    cdef char tb = b'T' if trans_a else b'N'
    if floating is float:
        sgemm(&ta, &tb, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&ta, &tb, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda, &beta, c, &ldc)


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                      const floating* a, int lda, const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """C (m, n) = alpha op(A) op(B) + beta C, all row-major; op(A) is (m, k), op(B) (k, n).

    beta = 0 OVERWRITES C (its old contents are never read); beta = 1 accumulates.
    """
    if m <= 0 or n <= 0:
        return
    if <long long>m * n * k <= SMALL_GEMM or k <= 0:
        small_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    else:
        blas_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
