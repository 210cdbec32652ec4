/* fm_split's second part on the BLAS's own worker thread, where the BLAS the kernels
   call (fastmlp/blas.py: NumPy's OpenBLAS) is an OpenBLAS on pthreads.

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
   done. Used only while the BLAS says 2 threads or more (its get_num_threads, which
   threadpoolctl and fastmlp.set_num_threads set) and has a worker (its blas_num_threads
   >= 2: with none, exec_blas would hand the part to a thread that does not exist and
   wait for ever), and fastmlp's own limit (fm_gemv_threads) is 2. A part never calls
   BLAS (the worker running it would wait for itself): fm_split's ranges are loops.

   Bits: the parts are fm_split's, whichever thread runs the second; the worker takes
   on the caller's floating-point mode for the part (fm_fp_adopt) and restores its own. */
#ifndef FASTMLP_BLAS_POOL_H
#define FASTMLP_BLAS_POOL_H

#ifdef FM_GEMV_POOL

typedef int (*fm_blas_pthread_t)(int n, void* routine, void* args, int stride);
typedef int (*fm_blas_threads_t)(void);

/* set once per process (fm_blas_pool_set), before any kernel may run */
static fm_blas_pthread_t fm_blas_pthread = NULL;   /* gotoblas_pthread */
static fm_blas_threads_t fm_blas_threads = NULL;   /* openblas_get_num_threads */
static const int* fm_blas_workers = NULL;         /* &blas_num_threads */
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

/* 1 once the pool is set: fm_split's second part then goes to the BLAS's worker (both
   limits at 2) or nowhere (runs on the caller), never to _gemv_pool.h's worker */
static int fm_blas_pool_known(void) { return fm_blas_pthread != NULL; }

/* 1 where fm_split's parts go to the BLAS's worker now (see the top) */
static int fm_blas_pool_ok(void)
{
    return fm_blas_pthread != NULL && fm_gemv_threads(0) >= 2 && fm_blas_threads() >= 2
           && __atomic_load_n(fm_blas_workers, __ATOMIC_RELAXED) >= 2;
}

/* range(ctx, 0, h) on this thread and range(ctx, h, rows) on a BLAS worker; returns when
   both are done */
static void fm_blas_pool_split(fm_rows_t range, void* ctx, Py_ssize_t h, Py_ssize_t rows)
{
    fm_blas_part parts[2];
    parts[0].range = parts[1].range = range;
    parts[0].ctx = parts[1].ctx = ctx;
    parts[0].r0 = 0;
    parts[0].r1 = parts[1].r0 = h;
    parts[1].r1 = rows;
    parts[0].fp = parts[1].fp = fm_fp_mode();
    parts[0].caller = parts[1].caller = pthread_self();
    fm_blas_pthread(2, (void*)fm_blas_part_run, parts, (int)sizeof parts[0]);
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
static int fm_blas_pool_ok(void) { return 0; }
static long long fm_blas_pool_jobs(void) { return 0; }

#endif  /* FM_GEMV_POOL */

#endif  /* FASTMLP_BLAS_POOL_H */
