/* z = x W for a few rows of x (the small-batch predict of kernels/_mlp.pxi),
   as wide as the processor allows.

   A 1-row predict is one GEMV per layer, for which a BLAS call costs its set-up and
   its thread hand-off, and the extension itself is built for baseline x86-64 (SSE2),
   so that wheels run on any x86-64. So the loops of _gemv_impl.h are compiled here
   once per instruction set, with GCC's (and clang's) vector extensions and target
   attributes, and fm_gemv_use(64) picks the widest one the processor and OS support:
   AVX-512F, AVX2 with FMA, or the SSE2 baseline. Other GNU targets (aarch64, ...)
   get the 16-byte vector copy, and other compilers (MSVC) plain C loops.

   fm_xw_f32 / fm_xw_f64 (rows, n_in, n_out, x, W, z): z (rows, n_out) OVERWRITTEN
   with x (rows, n_in) W (n_in, n_out), all row-major, rows >= 1. Multiply-adds may
   be fused (one rounding), as BLAS does; the sum over n_in runs in index order per
   lane of partial sums, so every call on the same data gives the same bits. A big W
   (fm_gemv_cut) is summed in two parts over n_in, the first rows of W then the rest,
   added at the end: by the calling thread and a worker thread (_gemv_pool.h) when
   fm_gemv_threads allows 2, else one after the other, with the same bits. */
#ifndef FASTMLP_GEMV_H
#define FASTMLP_GEMV_H

#include <string.h>

/* One copy's loops (_gemv_impl.h's xw): (rows, ldx, n_in, n_out, add, x, W, z). */
typedef void (*fm_xw_copy_f32_t)(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, int,
                                 const float*, const float*, float*);
typedef void (*fm_xw_copy_f64_t)(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, int,
                                 const double*, const double*, double*);

#if defined(__GNUC__) && !defined(FM_GEMV_PLAIN)  /* GCC and clang */

#define FM_FN_(name, sfx) fm_##name##_##sfx
#define FM_FN2(name, sfx) FM_FN_(name, sfx)

/* These loops fuse their multiply-adds (one rounding each, as BLAS's GEMMs do):
   setup.py compiles the extension with -ffp-contract=off, so that its elementwise passes
   round as the NumPy reference does in every instruction-set build, and each copy below
   turns fusing back on for itself. (A function attribute, not #pragma GCC optimize:
   after the pragma, push_options / pop_options did not turn it off again, and the
   bias + activation pass fused.) clang has no such attribute: its copies do not fuse. */
#if defined(__clang__)
#define FM_FUSE
#else
#define FM_FUSE __attribute__((optimize("fp-contract=fast")))
#endif

/* the baseline copy: 16-byte vectors (SSE2 on x86-64, NEON on aarch64) */
typedef float fm_f32x4 __attribute__((vector_size(16)));
typedef double fm_f64x2 __attribute__((vector_size(16)));
#define FM_ATTR FM_FUSE
#define FM_NV 8
#define FM_T float
#define FM_V fm_f32x4
#define FM_W 4
#define FM_FN(name) FM_FN2(name, f32_base)
#include "_gemv_impl.h"
#define FM_T double
#define FM_V fm_f64x2
#define FM_W 2
#define FM_FN(name) FM_FN2(name, f64_base)
#include "_gemv_impl.h"
#undef FM_ATTR
#undef FM_NV

#if defined(__x86_64__) || defined(__i386__)
#define FM_GEMV_X86 1

/* AVX2 + FMA: 16 ymm registers, 8 of them accumulators */
typedef float fm_f32x8 __attribute__((vector_size(32)));
typedef double fm_f64x4 __attribute__((vector_size(32)));
#define FM_ATTR __attribute__((target("avx2,fma"))) FM_FUSE
#define FM_NV 8
#define FM_T float
#define FM_V fm_f32x8
#define FM_W 8
#define FM_FN(name) FM_FN2(name, f32_avx2)
#include "_gemv_impl.h"
#define FM_T double
#define FM_V fm_f64x4
#define FM_W 4
#define FM_FN(name) FM_FN2(name, f64_avx2)
#include "_gemv_impl.h"
#undef FM_ATTR
#undef FM_NV

/* AVX-512F: 32 zmm registers, 16 of them accumulators */
typedef float fm_f32x16 __attribute__((vector_size(64)));
typedef double fm_f64x8 __attribute__((vector_size(64)));
#define FM_ATTR __attribute__((target("avx512f"))) FM_FUSE
#define FM_NV 16
#define FM_T float
#define FM_V fm_f32x16
#define FM_W 16
#define FM_FN(name) FM_FN2(name, f32_avx512)
#include "_gemv_impl.h"
#define FM_T double
#define FM_V fm_f64x8
#define FM_W 8
#define FM_FN(name) FM_FN2(name, f64_avx512)
#include "_gemv_impl.h"
#undef FM_ATTR
#undef FM_NV
#endif  /* x86 */

/* the copy in use (fm_gemv_use), which fm_xw_f32 / fm_xw_f64 below run */
static fm_xw_copy_f32_t fm_xw_copy_f32 = fm_xw_f32_base;
static fm_xw_copy_f64_t fm_xw_copy_f64 = fm_xw_f64_base;

/* Use the widest copy of at most ``bytes`` (16, 32 or 64) that the processor and OS
   support; returns its width in bytes. Called once at import with 64, before any
   thread can run the kernels (and by a test hook, with none running). */
static int fm_gemv_use(int bytes)
{
    fm_xw_copy_f32 = fm_xw_f32_base;
    fm_xw_copy_f64 = fm_xw_f64_base;
#ifdef FM_GEMV_X86
    __builtin_cpu_init();
    if (bytes >= 64 && __builtin_cpu_supports("avx512f")) {
        fm_xw_copy_f32 = fm_xw_f32_avx512;
        fm_xw_copy_f64 = fm_xw_f64_avx512;
        return 64;
    }
    if (bytes >= 32 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        fm_xw_copy_f32 = fm_xw_f32_avx2;
        fm_xw_copy_f64 = fm_xw_f64_avx2;
        return 32;
    }
#endif
    (void)bytes;
    return 16;
}

#include "_gemv_pool.h"   /* the second thread, and its hooks */

/* x W, a big W in two parts over n_in (fm_gemv_cut): on two threads when the pool
   takes the call (_gemv_pool.h), else one after the other, the second added to the
   first. The copy is read once, so both parts run the same one. */
#ifdef FM_GEMV_POOL
#define FM_XW_SHARE(field)                                                             \
    if (fm_pool_enter()) {                                                             \
        const fm_job all = {.field = f, .rows = rows, .ldx = n_in, .n_in = n_in,        \
                            .n_out = n_out, .x = x, .W = W, .z = z};                   \
        fm_pool_run(&all, k);                                                          \
        return;                                                                        \
    }
#else
#define FM_XW_SHARE(field)
#endif
#define FM_XW(T, name, field)                                                          \
    static void name(Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out, const T* x,    \
                     const T* W, T* z)                                                  \
    {                                                                                   \
        const fm_xw_copy_##field##_t f = fm_xw_copy_##field;                            \
        const Py_ssize_t k = fm_gemv_cut(n_in, n_out, sizeof *z);                       \
        if (k == 0) {                                                                   \
            f(rows, n_in, n_in, n_out, 0, x, W, z);                                     \
            return;                                                                     \
        }                                                                               \
        FM_XW_SHARE(field)                                                              \
        f(rows, n_in, k, n_out, 0, x, W, z);                                            \
        f(rows, n_in, n_in - k, n_out, 1, x + k, W + k * n_out, z);                     \
    }
FM_XW(float, fm_xw_f32, f32)
FM_XW(double, fm_xw_f64, f64)
#undef FM_XW
#undef FM_XW_SHARE

#else  /* another compiler: plain loops, which it may vectorise for its baseline */

#define FM_PLAIN_XW(T, name)                                                           \
    static void name(Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out, const T* x,    \
                     const T* W, T* z)                                                  \
    {                                                                                   \
        Py_ssize_t r, i, j;                                                             \
        for (r = 0; r < rows; r++) {                                                    \
            T* zr = z + r * n_out;                                                      \
            for (j = 0; j < n_out; j++)                                                 \
                zr[j] = 0;                                                              \
            for (i = 0; i < n_in; i++) {                                                \
                const T xi = x[r * n_in + i];                                           \
                const T* wi = W + i * n_out;                                            \
                for (j = 0; j < n_out; j++)                                             \
                    zr[j] += xi * wi[j];                                                \
            }                                                                           \
        }                                                                               \
    }
FM_PLAIN_XW(float, fm_xw_f32_plain)
FM_PLAIN_XW(double, fm_xw_f64_plain)
#undef FM_PLAIN_XW

static void fm_xw_f32(Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out, const float* x,
                      const float* W, float* z)
{
    fm_xw_f32_plain(rows, n_in, n_out, x, W, z);
}

static void fm_xw_f64(Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out, const double* x,
                      const double* W, double* z)
{
    fm_xw_f64_plain(rows, n_in, n_out, x, W, z);
}

/* 0: no vector copies here */
static int fm_gemv_use(int bytes) { (void)bytes; return 0; }

#include "_gemv_pool.h"   /* one thread here: its hooks say so */

#endif  /* __GNUC__ */

#endif  /* FASTMLP_GEMV_H */
