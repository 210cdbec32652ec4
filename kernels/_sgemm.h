/* z = x W for predict's float32 batches, in registers, in the AVX-512 build; and the
   split of a batch's rows between two threads (fm_split, in every build).

   Why: at a predict's shapes (512 rows through a 784x256 layer, W a few hundred KB that
   stays in each core's L2) OpenBLAS's sgemm reached 139-142 GF/s on one core of the
   Xeon this was measured on (SkylakeX kernels), and these loops, reading W where it lies
   (no packing), 172-199 GF/s; with W of 16 MB (2048x2048) they fell to 49-73 GF/s, so a
   W over FM_SGEMM_MAX_BYTES stays with BLAS. (Packing a block's x k by k, so that its
   broadcasts share one pointer, was measured and lost: 151 against 167 GF/s.)

   How: a block of up to FM_SGEMM_MR rows of x by 32 (or 16) columns of z lives in
   zmm registers (24 accumulators) for the whole sum over n_in: per k, the block's row of
   W (two 16-float loads, masked at the last columns only: a masked load cost 7 %) and
   each row's x[r, k] broadcast, one fused multiply-add per accumulator. x's block
   (12 rows) stays in L1 across W's column panels; W streams from L2. A load of W across
   two cache lines cost 15 %: fastmlp/_aligned.py keeps theta on a cache line.

   Bits: every z[i, j] is one chain of fused multiply-adds over k = 0 .. n_in - 1 in
   order, from 0; so a row's outputs are the same whichever rows share its call or its
   block, and on one thread or two (_mlp.pxi's forward_rows, through fm_split).

   fm_sgemm_ok(rows, n_in, n_out): 1 where fm_sgemm may run (this build has AVX-512F,
   the loops are on (fm_sgemm_use, a test hook), W at most FM_SGEMM_MAX_BYTES, at least
   FM_SGEMM_MIN_ROWS rows); else the caller calls BLAS. Callers send a chunk of a few
   rows (rules.PREDICT_SMALL_ROWS) to _gemv.h's loops first, so these take every float32
   chunk above that: from 9 rows, where they once took 24 (9-23 rows went to BLAS, 2.7x
   slower at 9 rows through the W2 net than here). */
#ifndef FASTMLP_SGEMM_H
#define FASTMLP_SGEMM_H

#include "_gemv.h"
#include "_blas_pool.h"

/* rows per block of x */
#define FM_SGEMM_MR 12

#if defined(__AVX512F__) && defined(__GNUC__)
#include <immintrin.h>

/* W's bytes at most: a W that fits an L2 of 1 MB next to x's block (784x256 float32 is
   784 KB); bigger ones need packing, which BLAS does */
#define FM_SGEMM_MAX_BYTES ((Py_ssize_t)1 << 20)
#define FM_SGEMM_MIN_ROWS 2   /* a row for each thread (fm_split) */

/* z[0:MR, j0:j0 + 16 * NV] = x[0:MR] W[:, j0:...] (EPI 0), alpha times that (EPI 1),
   or alpha times that + beta z (EPI 2, z read); unless FULL, the columns past n_out
   masked off. x's element (r, k) is x[r * ldx + k], or x[k * ldx + r] where TA (x given
   transposed: a weight gradient's x^T delta reads x where it lies); W's rows ldw apart,
   z's ldz. MR, NV, FULL and TA are constants at every call (fm_sgemm_block's switch),
   so the accumulators are registers; EPI is read once per tile, after the sums. */
static inline __attribute__((always_inline)) void
fm_sgemm_tile(const int MR, const int NV, const int FULL, const int TA, int EPI,
              Py_ssize_t n_in, Py_ssize_t ldx, Py_ssize_t ldw, Py_ssize_t ldz,
              const float* x, const float* W, float* z, __mmask16 m0, __mmask16 m1,
              float alpha, float beta)
{
    __m512 acc[FM_SGEMM_MR][2];
    Py_ssize_t k;
    int r;
#pragma GCC unroll 12
    for (r = 0; r < MR; r++) {
        acc[r][0] = _mm512_setzero_ps();
        acc[r][1] = _mm512_setzero_ps();
    }
    for (k = 0; k < n_in; k++) {
        const float* w = W + k * ldw;
        const float* xk = TA ? x + k * ldx : x + k;
        /* a masked load costs more: 7 % of the whole at 784x256 */
        const __m512 b0 = FULL ? _mm512_loadu_ps(w) : _mm512_maskz_loadu_ps(m0, w);
        const __m512 b1 = NV == 1 ? b0 : FULL ? _mm512_loadu_ps(w + 16)
                                              : _mm512_maskz_loadu_ps(m1, w + 16);
#pragma GCC unroll 12
        for (r = 0; r < MR; r++) {
            const __m512 a = _mm512_set1_ps(TA ? xk[r] : xk[r * ldx]);
            acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
            if (NV == 2)
                acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
        }
    }
    if (EPI) {
        const __m512 al = _mm512_set1_ps(alpha), be = _mm512_set1_ps(beta);
#pragma GCC unroll 12
        for (r = 0; r < MR; r++) {
            float* zr = z + r * ldz;
            acc[r][0] = _mm512_mul_ps(al, acc[r][0]);
            acc[r][1] = _mm512_mul_ps(al, acc[r][1]);
            if (EPI == 2) {
                acc[r][0] = _mm512_fmadd_ps(be, _mm512_maskz_loadu_ps(m0, zr), acc[r][0]);
                if (NV == 2)
                    acc[r][1] = _mm512_fmadd_ps(be, _mm512_maskz_loadu_ps(m1, zr + 16),
                                                acc[r][1]);
            }
        }
    }
#pragma GCC unroll 12
    for (r = 0; r < MR; r++) {
        _mm512_mask_storeu_ps(z + r * ldz, m0, acc[r][0]);
        if (NV == 2)
            _mm512_mask_storeu_ps(z + r * ldz + 16, m1, acc[r][1]);
    }
}

#define FM_SGEMM_TILE(MR, NV, FULL)                                                         \
    if (ta)                                                                                 \
        fm_sgemm_tile(MR, NV, FULL, 1, epi, n_in, ldx, ldw, ldz, x, W, z, m0, m1, alpha,    \
                      beta);                                                                \
    else                                                                                    \
        fm_sgemm_tile(MR, NV, FULL, 0, epi, n_in, ldx, ldw, ldz, x, W, z, m0, m1, alpha,    \
                      beta);

#define FM_SGEMM_CASE(MR)                                                                   \
    case MR:                                                                                \
        if (nv == 2 && full) {                                                              \
            FM_SGEMM_TILE(MR, 2, 1)                                                         \
        } else if (nv == 2) {                                                               \
            FM_SGEMM_TILE(MR, 2, 0)                                                         \
        } else if (full) {                                                                  \
            FM_SGEMM_TILE(MR, 1, 1)                                                         \
        } else {                                                                            \
            FM_SGEMM_TILE(MR, 1, 0)                                                         \
        }                                                                                   \
        break;

/* One tile: mr (1..FM_SGEMM_MR) rows, the columns j0.. of z (x, W and z already offset
   to them); nv 16-column vectors, the last masked by m0 (nv 1) or m1 (nv 2) unless
   `full` (every column in: no mask); ta, epi, alpha and beta as fm_sgemm_tile's. */
static void fm_sgemm_block(int mr, int nv, int full, int ta, int epi, Py_ssize_t n_in,
                           Py_ssize_t ldx, Py_ssize_t ldw, Py_ssize_t ldz, const float* x,
                           const float* W, float* z, __mmask16 m0, __mmask16 m1,
                           float alpha, float beta)
{
    switch (mr) {
        FM_SGEMM_CASE(1) FM_SGEMM_CASE(2) FM_SGEMM_CASE(3) FM_SGEMM_CASE(4)
        FM_SGEMM_CASE(5) FM_SGEMM_CASE(6) FM_SGEMM_CASE(7) FM_SGEMM_CASE(8)
        FM_SGEMM_CASE(9) FM_SGEMM_CASE(10) FM_SGEMM_CASE(11) FM_SGEMM_CASE(12)
    }
}

static inline __mmask16 fm_sgemm_mask(Py_ssize_t cols)
{
    return cols >= 16 ? (__mmask16)0xFFFF : cols <= 0 ? 0 : (__mmask16)((1u << cols) - 1);
}

/* z[r0:r1, j0:j1] = alpha * x W (+ beta * z where beta != 0; z never read otherwise),
   the sum over n_in, on this thread, in tiles of FM_SGEMM_MR rows by 32 columns. x's
   rows ldx apart, or x given transposed (ta: x (n_in, rows), ldx apart); W (n_in, ...)
   ldw apart; z ldz apart. The tiles of every product: predict's (fm_sgemm) and
   training's (_sgemm_blas.h). */
static void fm_sgemm_tiles(int ta, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t j0,
                           Py_ssize_t j1, Py_ssize_t n_in, const float* x, Py_ssize_t ldx,
                           const float* W, Py_ssize_t ldw, float* z, Py_ssize_t ldz,
                           float alpha, float beta)
{
    const int epi = beta != 0.0f ? 2 : alpha != 1.0f ? 1 : 0;
    Py_ssize_t i, j;
    for (i = r0; i < r1; i += FM_SGEMM_MR) {
        const int mr = (int)(r1 - i < FM_SGEMM_MR ? r1 - i : FM_SGEMM_MR);
        const float* a = ta ? x + i : x + i * ldx;
        for (j = j0; j < j1; j += 32) {
            const Py_ssize_t cols = j1 - j;
            fm_sgemm_block(mr, cols > 16 ? 2 : 1, cols == 16 || cols >= 32, ta, epi, n_in, ldx,
                           ldw, ldz, a, W + j, z + i * ldz + j, fm_sgemm_mask(cols),
                           fm_sgemm_mask(cols - 16), alpha, beta);
        }
    }
}

/* z (rows, n_out) OVERWRITTEN with x (rows, n_in) W (n_in, n_out), all row-major
   (fm_sgemm_ok must hold), on this thread. */
static void fm_sgemm(Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out, const float* x,
                     const float* W, float* z)
{
    fm_sgemm_tiles(0, 0, rows, 0, n_out, n_in, x, n_in, W, n_out, z, n_out, 1.0f, 0.0f);
}

static int fm_sgemm_on = 1;   /* a test hook (fm_sgemm_use) turns these loops off */

static int fm_sgemm_use(int on)
{
    const int was = fm_sgemm_on;
    if (on >= 0)
        fm_sgemm_on = on != 0;
    return was;
}

static int fm_sgemm_ok(Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out)
{
    return fm_sgemm_on && rows >= FM_SGEMM_MIN_ROWS && n_in >= 1 && n_out >= 1
           && n_in * n_out <= FM_SGEMM_MAX_BYTES / (Py_ssize_t)sizeof(float);
}

#else  /* no AVX-512 in this build: BLAS does every batch */

static int fm_sgemm_use(int on)
{
    (void)on;
    return 0;
}

static int fm_sgemm_ok(Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out)
{
    (void)rows; (void)n_in; (void)n_out;
    return 0;
}
static void fm_sgemm(Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out, const float* x,
                     const float* W, float* z)
{
    (void)rows; (void)n_in; (void)n_out; (void)x; (void)W; (void)z;   /* never called */
}

#endif

/* range(ctx, 0, rows): the rows cut in parts where fm_gemv_threads allows two threads or
   more, the calling thread the first and workers the rest, else all on this thread. The
   workers are the BLAS's own where the kernels' BLAS is an OpenBLAS on pthreads
   (_blas_pool.h: as many parts as its threads, at most `most`, the caller's rule for a
   part's least work; `most` >= 2 always allows two); elsewhere _gemv_pool.h's one
   worker, when that pool is free: the first ceil(rows / 2) rows here, the rest there.
   Halves, not a multiple of FM_SGEMM_MR rows for the first part as before: 512 rows
   went 264 / 248 and 32 rows 24 / 8, and a part's tail block costs less than a full one
   (32 rows through the W2 net: 111 -> 74 us; 512 rows 3.5 % faster). Either worker is
   woken if it sleeps (its wake-up takes tens of microseconds); a part _gemv_pool.h's
   has not claimed when the caller's is done, the caller runs itself (the BLAS's, the
   caller waits for). `range` must give each row the same bits whichever part it is in,
   and must not call BLAS. */
static void fm_split(fm_rows_t range, void* ctx, Py_ssize_t rows, Py_ssize_t most)
{
#ifdef FM_GEMV_POOL
    if (fm_blas_pool_known()) {   /* the BLAS's own workers, or this thread: _blas_pool.h */
        const int k = fm_blas_pool_parts_for(rows, most);
        if (k >= 2)
            fm_blas_pool_split(range, ctx, rows, k);
        else
            range(ctx, 0, rows);
        return;
    }
    if (rows >= 2 && fm_pool_enter_now(1)) {
        const Py_ssize_t h = (rows + 1) / 2;
        const unsigned long p = FM_LOAD(&fm_pool.posted, RELAXED) + 1;
        unsigned long expected = p - 1;
        fm_job second;
        memset(&second, 0, sizeof second);
        second.range = range;
        second.ctx = ctx;
        second.r0 = h;
        second.r1 = rows;
        second.fp = fm_fp_mode();
        fm_pool.job = second;
        FM_STORE(&fm_pool.posted, p, SEQ_CST);
        if (FM_LOAD(&fm_pool.sleeping, SEQ_CST))
            fm_pool_wake();
        range(ctx, 0, h);
        /* (the `leave` test hook: the worker's part is always the worker's) */
        if (!FM_LOAD(&fm_pool.leave, RELAXED) && FM_CAS(&fm_pool.taken, &expected, p))
            range(ctx, h, rows);
        else
            fm_pool_wait(p);
        FM_STORE(&fm_pool.owned, 0, RELEASE);
        return;
    }
#endif
    (void)most;
    range(ctx, 0, rows);
}

#endif  /* FASTMLP_SGEMM_H */
