/* fm_split's parts but the first on the BLAS's own worker threads, where the BLAS the
   kernels call (fastmlp/blas.py: NumPy's OpenBLAS) is an OpenBLAS on pthreads.

   Why: one thread pool. After each multi-threaded GEMM, OpenBLAS's worker spins on its
   core for up to 0.1 s (2^28 cycles of nop and rdtsc, no sched_yield: read from
   NumPy's libscipy_openblas64_). A part posted to _gemv_pool.h's worker, a second pool,
   then waited for a time slice: a W3 train_on_batch on the GEMM loops between NumPy
   GEMMs took 23-69 % longer than alone. Handed to OpenBLAS's worker instead, the part
   runs on the thread that is spinning anyway, and a step's BLAS GEMMs and its GEMM
   loops take turns on one pool, as NumPy's GEMMs do.

   How: OpenBLAS's gotoblas_pthread(n, f, args, stride), exported by its pthreads
   server since GotoBLAS: it runs f(args) on the calling thread and f(args + stride) ..
   on n - 1 of its workers (mode BLAS_PTHREAD: no buffers), and returns when all are
   done. As many parts as the BLAS's threads (its get_num_threads, which threadpoolctl
   and fastmlp.set_num_threads set; the most its own GEMM would use), within the
   caller's least work per part; none while the BLAS says one thread, has no worker (its
   blas_num_threads: with none, exec_blas would hand a part to a thread that does not
   exist and wait for ever), or fastmlp's own limit (fm_gemv_threads) is 1. On this
   project's 2-core machines that is 2 parts, as _gemv_pool.h's; more are tested for
   their bits (4 threads on 2 cores), not timed. A part never calls BLAS (the worker
   running it would wait for itself): fm_split's ranges are loops.

   Bits: fm_split's ranges give every row the same bits whichever part it is in; a
   worker takes on the caller's floating-point mode for its part (fm_fp_adopt) and
   restores its own. */
#ifndef FASTMLP_BLAS_POOL_H
#define FASTMLP_BLAS_POOL_H

#ifdef FM_GEMV_POOL

/* parts at most: gotoblas_pthread's queue holds the build's MAX_CPU_NUMBER (NumPy's: 64),
   which its blas_num_threads never passes either */
#define FM_BLAS_POOL_MOST 64

typedef int (*fm_blas_pthread_t)(int n, void* routine, void* args, int stride);
typedef int (*fm_blas_threads_t)(void);

/* set once per process (fm_blas_pool_set), before any kernel may run */
static fm_blas_pthread_t fm_blas_pthread = NULL;   /* gotoblas_pthread */
static fm_blas_threads_t fm_blas_threads = NULL;   /* openblas_get_num_threads */
static const int* fm_blas_workers = NULL;         /* &blas_num_threads: its workers + 1 */
static long long fm_blas_pool_parts = 0;           /* parts run by a BLAS worker */

typedef struct {
    fm_rows_t range;
    void* ctx;
    Py_ssize_t r0, r1;
    unsigned long fp;     /* the caller's floating-point mode */
    pthread_t caller;
} fm_blas_part;

/* one part (gotoblas_pthread's routine), on the caller or a BLAS worker */
static void fm_blas_part_run(void* arg)
{
    const fm_blas_part* p = (const fm_blas_part*)arg;
    const unsigned long was = fm_fp_mode();
    fm_fp_adopt(p->fp);
    p->range(p->ctx, p->r0, p->r1);
    fm_fp_adopt(was);
    if (!pthread_equal(pthread_self(), p->caller))
        __atomic_add_fetch(&fm_blas_pool_parts, 1, __ATOMIC_RELAXED);
}

/* The pool's three addresses (0 for none: the pool off); returns 1 when on. */
static int fm_blas_pool_set(void* pthread_fn, void* threads_fn, void* workers)
{
    if (pthread_fn == NULL || threads_fn == NULL || workers == NULL) {
        fm_blas_pthread = NULL;
        return 0;
    }
    fm_blas_threads = (fm_blas_threads_t)threads_fn;
    fm_blas_workers = (const int*)workers;
    fm_blas_pthread = (fm_blas_pthread_t)pthread_fn;
    return 1;
}

/* 1 once the pool is set: fm_split's parts then go to the BLAS's workers or nowhere
   (all on the caller), never to _gemv_pool.h's worker */
static int fm_blas_pool_known(void) { return fm_blas_pthread != NULL; }

/* 1 where the pool is set and the BLAS runs at most FM_BLAS_POOL_MEASURED threads: where
   _sgemm_blas.h's FM_GEMM_AUTO puts every call on the loops, as measured (2 cores: 7-12 %
   faster than BLAS, one pool). A BLAS of more threads was not timed against the loops
   on as many cores: there FM_GEMM_AUTO keeps them to fit's epochs, as before. */
#define FM_BLAS_POOL_MEASURED 2
static inline int fm_blas_pool_auto(void)   /* (inline: the AVX-512 build alone calls it) */
{
    return fm_blas_pthread != NULL && fm_blas_threads() <= FM_BLAS_POOL_MEASURED;
}

/* The parts a split of `rows` takes now: as many as the BLAS's threads (a GEMM of its
   own would take as many), at most `most` (the caller's rule for a part's least work),
   `rows`, the threads the BLAS has started (blas_num_threads, the caller's place
   included) and FM_BLAS_POOL_MOST; 1, no split, without the pool or while fastmlp's
   own limit (fm_gemv_threads) is 1. The one rule of the split (see the top). */
static int fm_blas_pool_parts_for(Py_ssize_t rows, Py_ssize_t most)
{
    Py_ssize_t k, started;
    if (fm_blas_pthread == NULL || fm_gemv_threads(0) < 2)
        return 1;
    k = fm_blas_threads();
    started = __atomic_load_n(fm_blas_workers, __ATOMIC_RELAXED);
    if (k > started)
        k = started;
    if (k > most)
        k = most;
    if (k > rows)
        k = rows;
    if (k > FM_BLAS_POOL_MOST)
        k = FM_BLAS_POOL_MOST;
    return k < 1 ? 1 : (int)k;
}

/* 1 where a split of 2 rows or more goes to the BLAS's workers now (a test hook) */
static int fm_blas_pool_ok(void) { return fm_blas_pool_parts_for(2, 2) >= 2; }

/* range(ctx, r_i, r_(i+1)) for the k parts r_i = ceil(rows i / k) (k = 2: the first
   ceil(rows / 2) rows, then the rest, as _gemv_pool.h's halves): part 0 on this thread,
   the others on BLAS workers; returns when all are done. */
static void fm_blas_pool_split(fm_rows_t range, void* ctx, Py_ssize_t rows, int k)
{
    fm_blas_part parts[FM_BLAS_POOL_MOST];
    const unsigned long fp = fm_fp_mode();
    const pthread_t caller = pthread_self();
    int i;
    for (i = 0; i < k; i++) {
        parts[i].range = range;
        parts[i].ctx = ctx;
        parts[i].r0 = (rows * i + k - 1) / k;
        parts[i].r1 = (rows * (i + 1) + k - 1) / k;
        parts[i].fp = fp;
        parts[i].caller = caller;
    }
    fm_blas_pthread(k, (void*)fm_blas_part_run, parts, (int)sizeof parts[0]);
}

/* Test hook: how many parts a BLAS worker ran (in this process) */
static long long fm_blas_pool_jobs(void)
{
    return __atomic_load_n(&fm_blas_pool_parts, __ATOMIC_RELAXED);
}

#else  /* no pthreads: no pool */

static int fm_blas_pool_set(void* pthread_fn, void* threads_fn, void* workers)
{
    (void)pthread_fn; (void)threads_fn; (void)workers;
    return 0;
}
static int fm_blas_pool_known(void) { return 0; }
static inline int fm_blas_pool_auto(void) { return 0; }
static int fm_blas_pool_ok(void) { return 0; }
static long long fm_blas_pool_jobs(void) { return 0; }

#endif  /* FM_GEMV_POOL */

#endif  /* FASTMLP_BLAS_POOL_H */
