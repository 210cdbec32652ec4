/* C = alpha op(A) op(B) + beta C in float32 on _sgemm.h's loops, split between threads
   (fm_split): the products of training, in the AVX-512 build, by default in every call
   where fm_split's other threads are the BLAS's own, else inside fit's compiled epochs
   only (fm_gemm_use, below); and the Fortran ?gemm ABI around it, for the Numba
   kernels (fm_sgemm64_own).

   Why: a step's GEMMs had one choice, OpenBLAS. On the AMD EPYC (Zen 4) of issue 10,
   one core, at the W3 net's shapes, OpenBLAS's SkylakeX kernels reached 104 GF/s and
   these loops 109 (x^T delta) to 114 GF/s (x W) of a 116 GF/s peak. Predict alone on
   these loops (_sgemm.h) gained as much; but with only the forward pass on them, a
   step's other GEMMs still ran on OpenBLAS, two thread pools taking turns on 2 cores,
   which cost more than the loops saved (benchmarks/RESULTS.md). Here every product of
   a step that the loops take runs on fm_split's worker: OpenBLAS's own where the BLAS
   is an OpenBLAS on pthreads (_blas_pool.h: one pool for the step's BLAS products and
   these), else _gemv_pool.h's.

   What: fm_gemm_f32 takes a product where B (k x n, or its transpose) fits
   FM_SGEMM_MAX_BYTES (as predict's W: it streams from L2 for every block of 12 rows of
   C) and returns 1, else 0 and the caller calls BLAS. op(A) = A^T is read where it lies
   (the tile's TA); op(B) = B^T is first copied into its transpose (k x n), each thread
   its own columns, in a buffer the calling thread keeps (fm_gemm_scratch_of). The parts
   are columns of C (rows where C is narrow).

   Bits: every C[i, j] is one chain of fused multiply-adds over p = 0 .. k - 1 in order,
   from 0, then times alpha and plus beta C[i, j] (one rounding each): the same whichever
   rows share the call, on one thread or two, and whether A or B came transposed. */
#ifndef FASTMLP_SGEMM_BLAS_H
#define FASTMLP_SGEMM_BLAS_H

#include <stdint.h>
#include <stdlib.h>
#include "_sgemm.h"

/* a product of fewer multiply-adds runs on the calling thread alone, and a split gives
   each part at least as many. A hand-off to a running worker costs about a microsecond,
   but a split waits for the other core, and where that core is busy (a busy loop on it,
   or this project's VM at times) a scikit-learn fit of digits (200 x 64 x 64 products,
   819k multiply-adds each) took 29.7-30.2 ms split at the old limit, 2^17, against
   15.9-16.1 ms on one thread; with both cores free, 15.4-16.2 against 15.9-16.6 ms (one
   process each, alternated). Products from 2^20 up (W2's and W3's) split as before. */
#define FM_GEMM_SPLIT_MACS ((long long)1 << 20)

#define FM_GEMM_NEVER 0
#define FM_GEMM_EPOCHS 1
#define FM_GEMM_ALWAYS 2
#define FM_GEMM_AUTO 3

#if defined(__AVX512F__) && defined(__GNUC__)

typedef struct {
    int ta;
    Py_ssize_t n, k, lda, ldb, ldc;
    float alpha, beta;
    const float* A;
    const float* B;    /* (k, n), ldb apart */
    float* C;
    const float* Bt;   /* op(B) = B^T: B (n, k), ldb_t apart, copied into B (k, n), n apart */
    Py_ssize_t m, ldb_t;
} fm_gemm_args;

/* T[:, j0:j1] of T (k, n) OVERWRITTEN with B^T's columns j0..j1: B's rows, each k long,
   ldb apart. In blocks of 16 x 16, which stay in L1 (B read in order along its rows). */
static void fm_gemm_transpose(const float* B, Py_ssize_t ldb, Py_ssize_t k, Py_ssize_t n,
                              Py_ssize_t j0, Py_ssize_t j1, float* T)
{
    Py_ssize_t jb, pb, j, p;
    for (jb = j0; jb < j1; jb += 16) {
        const Py_ssize_t je = jb + 16 < j1 ? jb + 16 : j1;
        for (pb = 0; pb < k; pb += 16) {
            const Py_ssize_t pe = pb + 16 < k ? pb + 16 : k;
            for (j = jb; j < je; j++)
                for (p = pb; p < pe; p++)
                    T[p * n + j] = B[j * ldb + p];
        }
    }
}

/* C[r0:r1, j0:j1] */
static void fm_gemm_part(const fm_gemm_args* g, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t j0,
                         Py_ssize_t j1)
{
    fm_sgemm_tiles(g->ta, r0, r1, j0, j1, g->k, g->A, g->lda, g->B, g->ldb, g->C, g->ldc,
                   g->alpha, g->beta);
}

/* C's rows r0..r1 (fm_rows_t) */
static void fm_gemm_rows(void* ctx, Py_ssize_t r0, Py_ssize_t r1)
{
    const fm_gemm_args* g = (const fm_gemm_args*)ctx;
    fm_gemm_part(g, r0, r1, 0, g->n);
}

/* C's columns 16 g0 .. 16 g1 (fm_rows_t over groups of 16 columns), every row; where
   op(B) = B^T, each part copies its own columns of B^T first (no part reads another's) */
static void fm_gemm_columns(void* ctx, Py_ssize_t g0, Py_ssize_t g1)
{
    const fm_gemm_args* g = (const fm_gemm_args*)ctx;
    const Py_ssize_t j0 = 16 * g0, j1 = 16 * g1 < g->n ? 16 * g1 : g->n;
    if (g->Bt != NULL)
        fm_gemm_transpose(g->Bt, g->ldb_t, g->k, g->n, j0, j1, (float*)g->B);
    fm_gemm_part(g, 0, g->m, j0, j1);
}

/* op(B) = B^T's copy: one buffer per calling thread, kept between calls and grown to the
   largest copy that thread has made (at most FM_SGEMM_MAX_BYTES), so that a training step
   allocates nothing (an _mm_malloc and _mm_free per delta W^T product, before). The
   worker writes its columns into the caller's buffer, for the caller's call only. Where
   threads can say so (pthreads: FM_GEMV_POOL), a thread's buffer is freed when it ends,
   so threads that come and go leave nothing behind. */
static __thread float* fm_gemm_scratch = NULL;
static __thread Py_ssize_t fm_gemm_scratch_floats = 0;

#ifdef FM_GEMV_POOL
static pthread_key_t fm_gemm_scratch_key;
static pthread_once_t fm_gemm_scratch_once = PTHREAD_ONCE_INIT;
static int fm_gemm_scratch_keyed = 0;   /* 1 once the key exists */

static void fm_gemm_scratch_free(void* buffer) { _mm_free(buffer); }

static void fm_gemm_scratch_key_make(void)
{
    fm_gemm_scratch_keyed = pthread_key_create(&fm_gemm_scratch_key,
                                               fm_gemm_scratch_free) == 0;
}
#endif

/* this thread's buffer of at least `floats` floats, on a cache line (the loops load its
   rows 64 bytes at a time); NULL where no memory is left (the caller then calls BLAS) */
static float* fm_gemm_scratch_of(Py_ssize_t floats)
{
    float* grown;
    if (floats <= fm_gemm_scratch_floats)
        return fm_gemm_scratch;
#ifdef FM_GEMV_POOL
    pthread_once(&fm_gemm_scratch_once, fm_gemm_scratch_key_make);
    if (!fm_gemm_scratch_keyed)
        return NULL;   /* it could not be freed at the thread's end: BLAS, allocating nothing */
#endif
    grown = (float*)_mm_malloc((size_t)floats * sizeof(float), 64);
    if (grown == NULL)
        return NULL;
#ifdef FM_GEMV_POOL
    if (pthread_setspecific(fm_gemm_scratch_key, grown) != 0) {
        _mm_free(grown);
        return NULL;
    }
#endif
    _mm_free(fm_gemm_scratch);
    fm_gemm_scratch = grown;
    fm_gemm_scratch_floats = floats;
    return grown;
}

/* 1: this build has the loops (fm_gemm_f32 may take products) */
static int fm_gemm_built(void) { return 1; }

/* Where fm_gemm_f32 takes products (fm_gemm_use): FM_GEMM_EPOCHS only on a thread inside
   fm_gemm_scope (the compiled epoch loop of fit), FM_GEMM_ALWAYS every call, FM_GEMM_NEVER
   none, and FM_GEMM_AUTO (the default) every call where fm_split's parts go to the
   BLAS's own workers and it runs at most 2 threads (_blas_pool.h's fm_blas_pool_auto:
   where this was measured), else as FM_GEMM_EPOCHS. Why not always: where
   the loops' second thread is _gemv_pool.h's, right after NumPy's own GEMM OpenBLAS's
   threads spin on for up to 0.1 s, on the core that worker needs. A W3 train_on_batch
   between NumPy GEMMs took 23-39 % longer than alone on the loops, 7-9 % on BLAS, one
   pool (alone, the loops were 8 % faster). Inside fit's epochs no other code runs
   between the products. On the BLAS's worker, one pool again: the same step 2 % longer
   between NumPy GEMMs, and 7 % (W3) to 12 % (W2) faster than on BLAS alone. */
static int fm_gemm_policy = FM_GEMM_AUTO;
static __thread int fm_gemm_scoped = 0;

static int fm_gemm_use(int policy)
{
    const int was = fm_gemm_policy;
    if (policy >= FM_GEMM_NEVER && policy <= FM_GEMM_AUTO)
        fm_gemm_policy = policy;
    return was;
}

/* this thread inside (1) or outside (0) a scope where FM_GEMM_EPOCHS takes products;
   returns the setting before */
static int fm_gemm_scope(int on)
{
    const int was = fm_gemm_scoped;
    fm_gemm_scoped = on != 0;
    return was;
}

/* 1 where fm_gemm_f32 takes the product (see the top), else 0 */
static int fm_gemm_ok(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, float alpha)
{
    return fm_sgemm_on && m >= 1 && n >= 1 && k >= 1 && alpha != 0.0f
           && (fm_gemm_policy == FM_GEMM_ALWAYS
               || (fm_gemm_policy == FM_GEMM_AUTO && fm_blas_pool_auto())
               || (fm_gemm_policy != FM_GEMM_NEVER && fm_gemm_scoped))
           && k * n <= FM_SGEMM_MAX_BYTES / (Py_ssize_t)sizeof(float);
}

/* the most parts (fm_split) for a product of `macs` multiply-adds whose units allow
   `by_size` parts; never under 2 */
static Py_ssize_t fm_gemm_most(Py_ssize_t by_size, long long macs)
{
    const long long by_work = macs / FM_GEMM_SPLIT_MACS;
    const Py_ssize_t most = by_size < by_work ? by_size : (Py_ssize_t)by_work;
    return most < 2 ? 2 : most;
}

/* C (m, n) = alpha op(A) op(B) + beta C, all row-major: op(A) (m, k) is A (m, k), lda
   apart, or with ta A^T of A (k, m); op(B) (k, n) is B (k, n), ldb apart, or with tb
   B^T of B (n, k). beta 0 OVERWRITES C (never read), else C accumulates. Returns 1 when
   done here, 0 when not taken (fm_gemm_ok, or no memory for B^T's copy; C untouched):
   the caller calls BLAS. alpha 0 is not taken (BLAS then reads neither A nor B). */
static int fm_gemm_f32(int ta, int tb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, float alpha,
                       const float* A, Py_ssize_t lda, const float* B, Py_ssize_t ldb,
                       float beta, float* C, Py_ssize_t ldc)
{
    fm_gemm_args g;
    float* T = NULL;
    const int split = (long long)m * n * k >= FM_GEMM_SPLIT_MACS;
    if (!fm_gemm_ok(m, n, k, alpha))
        return 0;
    if (tb) {
        T = fm_gemm_scratch_of(k * n);
        if (T == NULL)
            return 0;
    }
    g.ta = ta != 0;
    g.m = m;
    g.n = n;
    g.k = k;
    g.lda = lda;
    g.ldb = tb ? n : ldb;
    g.ldb_t = ldb;
    g.ldc = ldc;
    g.alpha = alpha;
    g.beta = beta;
    g.A = A;
    g.B = tb ? T : B;
    g.Bt = tb ? B : NULL;
    g.C = C;
    /* Two parts by columns where each gets a panel of 32 or more: each core then reads
       (x W) and updates (x^T delta, folded SGD) only its own columns of W, step after
       step. Parts by rows had each core read all of W, so every W written on one core
       (the update) was pulled across to the other at the next step: a W2 step with Adam
       took 641 us against OpenBLAS's 542, though its GEMMs alone ran faster than
       OpenBLAS's (gradient_vector 342 against 417 us). By columns: 515 us; plain SGD
       366 against 394 by rows (OpenBLAS 399); W3 2.78 against 3.03 ms (3.15). (One
       process each, interleaved, best of 4.) */
    /* more parts (_blas_pool.h: a BLAS of more threads) only where each keeps 2 groups
       of 16 columns (or 12 rows) and FM_GEMM_SPLIT_MACS multiply-adds */
    if (split && n >= 64)
        fm_split(fm_gemm_columns, &g, (n + 15) / 16,
                 fm_gemm_most((n + 15) / 32, (long long)m * n * k));
    else if (split && !tb)
        fm_split(fm_gemm_rows, &g, m, fm_gemm_most(m / FM_SGEMM_MR, (long long)m * n * k));
    else
        fm_gemm_columns(&g, 0, (n + 15) / 16);
    return 1;
}

#else  /* no AVX-512 in this build: BLAS does every product */

static float* fm_gemm_scratch = NULL;   /* (read by a test hook: never allocated here) */
static Py_ssize_t fm_gemm_scratch_floats = 0;
static int fm_gemm_built(void) { return 0; }
static int fm_gemm_use(int policy) { (void)policy; return FM_GEMM_NEVER; }
static int fm_gemm_scope(int on) { (void)on; return 0; }

static int fm_gemm_f32(int ta, int tb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, float alpha,
                       const float* A, Py_ssize_t lda, const float* B, Py_ssize_t ldb,
                       float beta, float* C, Py_ssize_t ldc)
{
    (void)ta; (void)tb; (void)m; (void)n; (void)k; (void)alpha; (void)A; (void)lda;
    (void)B; (void)ldb; (void)beta; (void)C; (void)ldc;
    return 0;
}

#endif

/* The Fortran sgemm ABI with 64-bit integers (as the Numba kernels call it:
   numba_blas's fastmlp_sgemm64) around fm_gemm_f32: a column-major C (m, n) = op(A)
   op(B) is the row-major C (n, m) = op(B)^T op(A)^T. What fm_gemm_f32 does not take
   goes to fm_next_sgemm64, the BLAS the symbol named before (fm_own_sgemm64 sets it). */
typedef void (*fm_sgemm64_t)(const char*, const char*, const int64_t*, const int64_t*,
                             const int64_t*, const float*, const float*, const int64_t*,
                             const float*, const int64_t*, const float*, float*,
                             const int64_t*);
static fm_sgemm64_t fm_next_sgemm64 = NULL;

static void fm_sgemm64_own(const char* transa, const char* transb, const int64_t* m,
                           const int64_t* n, const int64_t* k, const float* alpha,
                           const float* a, const int64_t* lda, const float* b,
                           const int64_t* ldb, const float* beta, float* c,
                           const int64_t* ldc)
{
    const int ta = *transa == 'T' || *transa == 't' || *transa == 'C' || *transa == 'c';
    const int tb = *transb == 'T' || *transb == 't' || *transb == 'C' || *transb == 'c';
    if (fm_gemm_f32(tb, ta, (Py_ssize_t)*n, (Py_ssize_t)*m, (Py_ssize_t)*k, *alpha, b,
                    (Py_ssize_t)*ldb, a, (Py_ssize_t)*lda, *beta, c, (Py_ssize_t)*ldc))
        return;
    fm_next_sgemm64(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* fm_sgemm64_own's address, its fallback set to `next` (an sgemm with 64-bit integers) */
static void* fm_own_sgemm64(void* next)
{
    fm_next_sgemm64 = (fm_sgemm64_t)next;
    return (void*)fm_sgemm64_own;
}

#endif  /* FASTMLP_SGEMM_BLAS_H */
