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
   C), or a bigger B for at least FM_GEMM_PACK_MIN_ROWS rows of C (copied into panels
   first: fm_gemm_packed), and returns 1, else 0 and the caller calls BLAS. op(A) = A^T
   is read where it lies (the tile's TA); op(B) = B^T is first copied into its transpose
   (k x n), each thread its own columns, in a buffer the calling thread keeps
   (fm_gemm_scratch_of). The parts are columns of C (rows where C is narrow).

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
    float* packs;      /* FM_GEMM_PACKED: `slots` buffers of pack_floats each, one per part */
    Py_ssize_t pack_floats;
    int slot;          /* the next part's buffer (taken atomically) */
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

/* Products whose B is over FM_SGEMM_MAX_BYTES (W4's 2048 x 2048 layers, 16 MiB): read
   where they lie, B's rows and x's rows (2048 floats, 8 KiB apart) all fall in the same
   few cache sets, so neither B's panel stays in L2 nor x's block in L1: 32 GF/s on one
   core at 512 x 2048 x 2048, where OpenBLAS ran 99-103. So B is copied, FM_GEMM_PACK_PANELS
   panels of 32 columns at a time, each panel (k, 32) contiguous (zeros past n), and each
   block of 12 rows of op(A) into (k, 12), once per product: 105-107 GF/s (x W) against
   OpenBLAS's 95-103 on one core; W4's three products on both cores 210-214 GF/s against
   194-200 (2026-12-06, AMD EPYC; benchmarks/RESULTS.md). 8 panels at a time did best of
   1-16 (a group of 2 MB does not stay in L2, but streams well); blocking k as well (A's
   block in L1, C's partial sums reloaded: BLIS's loops) gained nothing (97-106 GF/s).
   Each part of a split packs its own columns of B and the whole of op(A), into a buffer
   of its own (the `slot`s the calling thread's scratch holds); a product to split whose
   C has fewer than 64 columns (no two parts of 32) stays with BLAS, which splits it its
   own way. The tiles and the order of every sum are the direct loops': the same bits. */
#define FM_GEMM_PACK_PANELS 8
#define FM_GEMM_PACK_MIN_ROWS 48   /* fewer rows of C would not repay copying B */
/* the packed copies of one product at most (its parts' together): each part copies all
   of op(A), so a product of many rows by a wide B goes to BLAS rather than hold more */
#define FM_GEMM_PACK_MAX_BYTES ((Py_ssize_t)1 << 26)
/* where products are packed: 1 (the default) a B over FM_SGEMM_MAX_BYTES, 0 none (BLAS
   takes those), 2 every product the loops take (a test hook: fm_gemm_packed_use) */
static int fm_gemm_packed_on = 1;

static int fm_gemm_packed_use(int mode)
{
    const int was = fm_gemm_packed_on;
    if (mode >= 0 && mode <= 2)
        fm_gemm_packed_on = mode;
    return was;
}

/* x's packed blocks' floats, a multiple of 16: B's panels after them start on a cache
   line, as each part's buffer does */
static Py_ssize_t fm_gemm_pack_a_floats(Py_ssize_t m, Py_ssize_t k)
{
    const Py_ssize_t blocks = (m + FM_SGEMM_MR - 1) / FM_SGEMM_MR;
    return (blocks * FM_SGEMM_MR * k + 15) / 16 * 16;
}

/* a part's floats: x's blocks and FM_GEMM_PACK_PANELS panels of B */
static Py_ssize_t fm_gemm_pack_floats(Py_ssize_t m, Py_ssize_t k)
{
    return fm_gemm_pack_a_floats(m, k) + FM_GEMM_PACK_PANELS * 32 * k;
}

/* dst[q * ldd : q * ldd + 16] OVERWRITTEN with column q of the 16 x 16 block whose row r
   is src[r * lds : r * lds + 16] (a zero row past `rows`), for q < cols (cols <= 16; only
   those columns are read), the lanes of `keep` only: a transpose in registers, three
   rounds of shuffles. */
static inline void fm_gemm_transpose16(const float* src, Py_ssize_t lds, int rows, int cols,
                                       float* dst, Py_ssize_t ldd, __mmask16 keep)
{
    const __mmask16 m = fm_sgemm_mask(cols);
    __m512 r[16], t[16];
    int i, e;
    for (i = 0; i < 16; i++)
        r[i] = i < rows ? _mm512_maskz_loadu_ps(m, src + i * lds) : _mm512_setzero_ps();
    /* t[2i], t[2i + 1]: rows 2i and 2i + 1 interleaved, per 128-bit lane L: elements
       4L, 4L + 1 and 4L + 2, 4L + 3 */
    for (i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* r[4g + e], lane L: rows 4g .. 4g + 3 of column 4L + e */
    for (i = 0; i < 4; i++) {
        const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
        const __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    /* column 4L + e: lane L of r[e], r[4 + e], r[8 + e], r[12 + e], in that order
       (0x88: lanes 0 and 2 of each operand, 0xDD: lanes 1 and 3) */
    for (e = 0; e < 4; e++) {
        const __m512 u02 = _mm512_shuffle_f32x4(r[e], r[4 + e], 0x88);
        const __m512 u13 = _mm512_shuffle_f32x4(r[e], r[4 + e], 0xDD);
        const __m512 v02 = _mm512_shuffle_f32x4(r[8 + e], r[12 + e], 0x88);
        const __m512 v13 = _mm512_shuffle_f32x4(r[8 + e], r[12 + e], 0xDD);
        t[e] = _mm512_shuffle_f32x4(u02, v02, 0x88);
        t[8 + e] = _mm512_shuffle_f32x4(u02, v02, 0xDD);
        t[4 + e] = _mm512_shuffle_f32x4(u13, v13, 0x88);
        t[12 + e] = _mm512_shuffle_f32x4(u13, v13, 0xDD);
    }
    for (i = 0; i < cols; i++)
        _mm512_mask_storeu_ps(dst + i * ldd, keep, t[i]);
}

/* Bp (panels of (k, 32), k * 32 apart) OVERWRITTEN with op(B)'s columns j0..j1
   (j1 - j0 <= 32 FM_GEMM_PACK_PANELS), zeros past j1 in the last panel */
static void fm_gemm_pack_b(const fm_gemm_args* g, Py_ssize_t j0, Py_ssize_t j1, float* Bp)
{
    const Py_ssize_t k = g->k;
    Py_ssize_t j, p;
    int h;
    if (g->Bt == NULL) {   /* B (k, n): row by row, all the panels' columns of each in turn */
        for (p = 0; p < k; p++) {
            const float* row = g->B + p * g->ldb;
            for (j = j0; j < j1; j += 32) {
                const Py_ssize_t cols = j1 - j;
                float* to = Bp + (j - j0) * k + 32 * p;
                if (cols >= 32) {
                    _mm512_store_ps(to, _mm512_loadu_ps(row + j));
                    _mm512_store_ps(to + 16, _mm512_loadu_ps(row + j + 16));
                } else {
                    _mm512_store_ps(to, _mm512_maskz_loadu_ps(fm_sgemm_mask(cols), row + j));
                    _mm512_store_ps(to + 16, _mm512_maskz_loadu_ps(fm_sgemm_mask(cols - 16),
                                                                   row + j + 16));
                }
            }
        }
        return;
    }
    for (j = j0; j < j1; j += 32) {   /* op(B) = B^T: B's rows j.., each k long, 16 x 16 */
        const Py_ssize_t cols = j1 - j < 32 ? j1 - j : 32;
        float* panel = Bp + (j - j0) * k;
        for (p = 0; p < k; p += 16)
            for (h = 0; h < 2; h++) {
                const Py_ssize_t left = cols - 16 * h;
                fm_gemm_transpose16(g->Bt + (j + 16 * h) * g->ldb_t + p, g->ldb_t,
                                    left < 0 ? 0 : left > 16 ? 16 : (int)left,
                                    k - p < 16 ? (int)(k - p) : 16, panel + 32 * p + 16 * h, 32,
                                    (__mmask16)0xFFFF);
            }
    }
}

/* Ap (k, 12) OVERWRITTEN with rows 0..mr of op(A) k by k: Ap[p * 12 + r] = op(A)[r, p]
   (r < mr; the rest unset: the tiles of mr rows never read it); x (mr, k) lda apart, or
   with ta its transpose (k, mr), lda apart */
static void fm_gemm_pack_a(int ta, const float* x, Py_ssize_t lda, Py_ssize_t k, int mr,
                           float* Ap)
{
    Py_ssize_t p;
    if (ta) {
        const __mmask16 m = fm_sgemm_mask(mr);
        for (p = 0; p < k; p++)
            _mm512_mask_storeu_ps(Ap + p * FM_SGEMM_MR, m, _mm512_maskz_loadu_ps(m, x + p * lda));
        return;
    }
    for (p = 0; p < k; p += 16)   /* 16 of each row's k at a time, transposed */
        fm_gemm_transpose16(x + p, lda, mr, k - p < 16 ? (int)(k - p) : 16,
                            Ap + p * FM_SGEMM_MR, FM_SGEMM_MR, fm_sgemm_mask(mr));
}

/* C's columns 16 g0 .. 16 g1 (fm_rows_t over groups of 16 columns), every row, through
   packed copies (see FM_GEMM_PACK_PANELS), in this part's own buffer */
static void fm_gemm_packed(void* ctx, Py_ssize_t g0, Py_ssize_t g1)
{
    fm_gemm_args* g = (fm_gemm_args*)ctx;
    const Py_ssize_t j0 = 16 * g0, j1 = 16 * g1 < g->n ? 16 * g1 : g->n, k = g->k;
    const int epi = g->beta != 0.0f ? 2 : g->alpha != 1.0f ? 1 : 0;
    const int slot = __atomic_fetch_add(&g->slot, 1, __ATOMIC_RELAXED);
    float* Ap = g->packs + slot * g->pack_floats;
    float* Bp = Ap + fm_gemm_pack_a_floats(g->m, k);
    Py_ssize_t jb, i, j;
    for (jb = j0; jb < j1; jb += 32 * FM_GEMM_PACK_PANELS) {
        const Py_ssize_t je = jb + 32 * FM_GEMM_PACK_PANELS < j1 ? jb + 32 * FM_GEMM_PACK_PANELS
                                                                   : j1;
        fm_gemm_pack_b(g, jb, je, Bp);
        for (i = 0; i < g->m; i += FM_SGEMM_MR) {
            const int mr = (int)(g->m - i < FM_SGEMM_MR ? g->m - i : FM_SGEMM_MR);
            float* x = Ap + i * k;   /* x's block, packed at the first panels, kept */
            if (jb == j0)
                fm_gemm_pack_a(g->ta, g->ta ? g->A + i : g->A + i * g->lda, g->lda, k, mr, x);
            for (j = jb; j < je; j += 32) {
                const Py_ssize_t cols = je - j;
                /* the panels hold zeros past n: whole loads, masked stores */
                fm_sgemm_block(mr, cols > 16 ? 2 : 1, 1, 1, epi, k, FM_SGEMM_MR, 32, g->ldc, x,
                               Bp + (j - jb) * k, g->C + i * g->ldc + j, fm_sgemm_mask(cols),
                               fm_sgemm_mask(cols - 16), g->alpha, g->beta);
            }
        }
    }
}

/* op(B) = B^T's copy, or the packed copies of every part (FM_GEMM_PACKED): one buffer per
   calling thread, kept between calls and grown to the largest that thread has needed
   (B^T's at most FM_SGEMM_MAX_BYTES; the packed copies at most FM_GEMM_PACK_MAX_BYTES, a
   W4 step's 12.7 MB), so that a training step allocates nothing (an _mm_malloc and _mm_free
   per delta W^T product, before). The worker writes into the caller's buffer, for the
   caller's call only. Where
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

/* How fm_gemm_f32 runs a product (see the top): FM_GEMM_DIRECT, B read where it lies
   (within FM_SGEMM_MAX_BYTES); FM_GEMM_PACKED, a bigger B copied into panels first
   (fm_gemm_packed, from FM_GEMM_PACK_MIN_ROWS rows of C); or 0, not taken. */
#define FM_GEMM_DIRECT 1
#define FM_GEMM_PACKED 2

static int fm_gemm_ok(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, float alpha)
{
    if (!(fm_sgemm_on && m >= 1 && n >= 1 && k >= 1 && alpha != 0.0f
          && (fm_gemm_policy == FM_GEMM_ALWAYS
              || (fm_gemm_policy == FM_GEMM_AUTO && fm_blas_pool_auto())
              || (fm_gemm_policy != FM_GEMM_NEVER && fm_gemm_scoped))))
        return 0;
    if (fm_gemm_packed_on == 2)
        return FM_GEMM_PACKED;
    if (k * n <= FM_SGEMM_MAX_BYTES / (Py_ssize_t)sizeof(float))
        return FM_GEMM_DIRECT;
    return m >= FM_GEMM_PACK_MIN_ROWS && fm_gemm_packed_on ? FM_GEMM_PACKED : 0;
}

/* the most parts (fm_split) for a product of `macs` multiply-adds whose units allow
   `by_size` parts; never under 2 */
static Py_ssize_t fm_gemm_most(Py_ssize_t by_size, long long macs)
{
    const long long by_work = macs / FM_GEMM_SPLIT_MACS;
    const Py_ssize_t most = by_size < by_work ? by_size : (Py_ssize_t)by_work;
    return most < 2 ? 2 : most;
}

/* the parts fm_split makes now of `groups` within `most` (the BLAS's threads, where its
   workers take them), never under 2: fm_split(..., this) then makes at most this many,
   whatever the threads are set to meanwhile (a packed product's buffers, one a part) */
static Py_ssize_t fm_gemm_parts_now(Py_ssize_t groups, Py_ssize_t most)
{
#ifdef FM_GEMV_POOL
    if (fm_blas_pool_known()) {
        const Py_ssize_t parts = fm_blas_pool_parts_for(groups, most);
        return parts < 2 ? 2 : parts;
    }
#endif
    (void)groups; (void)most;
    return 2;   /* _gemv_pool.h's halves, or all on this thread */
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
    const int how = fm_gemm_ok(m, n, k, alpha);
    Py_ssize_t most = 1;
    if (how == 0)
        return 0;
    if (how == FM_GEMM_PACKED) {   /* a buffer for each part fm_split may make */
        if (split && n < 64 && fm_gemm_packed_on != 2)
            return 0;   /* one thread here would leave the other core idle */
        most = split && n >= 64 ? fm_gemm_parts_now((n + 15) / 16,
                                                    fm_gemm_most((n + 15) / 32,
                                                                 (long long)m * n * k))
                                : 1;
        g.pack_floats = fm_gemm_pack_floats(m, k);
        if (most * g.pack_floats > FM_GEMM_PACK_MAX_BYTES / (Py_ssize_t)sizeof(float))
            return 0;
        g.packs = fm_gemm_scratch_of(most * g.pack_floats);
        g.slot = 0;
        if (g.packs == NULL)
            return 0;
    } else if (tb) {
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
    g.B = tb ? T : B;   /* packed: T stays NULL, op(B) = B^T is packed from g.Bt */
    g.Bt = tb ? B : NULL;
    g.C = C;
    if (how == FM_GEMM_PACKED) {   /* by columns, each part packing its own (see above) */
        if (most >= 2)
            fm_split(fm_gemm_packed, &g, (n + 15) / 16, most);
        else
            fm_gemm_packed(&g, 0, (n + 15) / 16);
        return 1;
    }
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
static int fm_gemm_packed_use(int mode) { (void)mode; return 0; }
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
