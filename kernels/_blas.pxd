# cython: language_level=3
"""Row-major GEMM for float and double, callable without the GIL.

BLAS is column-major; a row-major (m, n) matrix is the column-major
transpose, so C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T by swapping
the operands. Products too small to repay a BLAS call (the 3-4-2 net, batch 1)
run as plain loops.
"""
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm

# m * n * k at or below which the plain loops beat a BLAS call (measured on
# the 3-4-2 net and per-sample SGD; see tests/test_cython_backend.py timings).
cdef enum:
    SMALL_GEMM = 4096


cdef inline void _small_gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                             const floating* a, int lda, const floating* b, int ldb,
                             floating beta, floating* c, int ldc) noexcept nogil:
    cdef int i, j, p
    cdef floating s
    for i in range(m):
        if beta == 0:
            for j in range(n):
                c[i * ldc + j] = 0
        elif beta != 1:
            for j in range(n):
                c[i * ldc + j] *= beta
    if not trans_b:
        # Rows of C accumulate alpha * a_ip * (row p of B): contiguous, vectorisable.
        for i in range(m):
            for p in range(k):
                s = alpha * (a[p * lda + i] if trans_a else a[i * lda + p])
                for j in range(n):
                    c[i * ldc + j] += s * b[p * ldb + j]
    else:
        # C = op(A) B^T: each entry is a dot product of two rows.
        for i in range(m):
            for j in range(n):
                s = 0
                for p in range(k):
                    s += (a[p * lda + i] if trans_a else a[i * lda + p]) * b[j * ldb + p]
                c[i * ldc + j] += alpha * s


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                      const floating* a, int lda, const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """C (m, n) = alpha op(A) op(B) + beta C, all row-major; op(A) is (m, k), op(B) (k, n).

    beta = 0 OVERWRITES C (its old contents are never read); beta = 1 accumulates.
    """
    if m <= 0 or n <= 0:
        return
    if <long long>m * n * k <= SMALL_GEMM or k <= 0:
        _small_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        return
    cdef char ta = b'T' if trans_b else b'N'
    cdef char tb = b'T' if trans_a else b'N'
    if floating is float:
        sgemm(&ta, &tb, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&ta, &tb, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda, &beta, c, &ldc)
