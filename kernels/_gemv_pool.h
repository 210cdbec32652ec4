/* A second thread for the big GEMVs of kernels/_gemv.h (included there).

   Why: a 1-row predict is bound by reading W. The 784x256 float32 layer of the
   benchmark net (784 KB) does not stay in one core's L2 (1 MB on the Zen 5 it was
   measured on) next to everything else: 5.0-6.9 us, where its first 392 rows (a
   contiguous 392 KB, which stays) take 2.35 us. So the sum over n_in is cut in two
   (fm_gemv_cut): the calling thread always sums W's first k rows and one worker
   thread the rest, so each core keeps its own contiguous half of W in its L2 from
   one call to the next. (Cutting W's columns instead, which would keep every sum
   whole, was measured and loses: half of each 1 KB row costs 3.7 us, as the L2
   prefetcher fetches the other half of every row too.)

   Bits: with or without the worker, z = (x[:, :k] W[:k]) + (x[:, k:] W[k:]), each
   part summed by the same copy of the loops and then added once (_gemv_impl.h's
   add): the same bits with 1 or 2 threads, whoever computes the second part.

   How (one pool per process, used by one caller at a time):
   - fm_pool_enter: a caller that finds the pool free (a try-lock) and the thread limit
     at 2 owns it; other callers run both parts alone. The worker is started by the
     owner of the second of two calls less than spin_ns apart (and again so in a
     forked child, which has none), or at once by a caller with a long part
     (fm_pool_enter_now: _sgemm.h's fm_split, predict's float32 batches cut in two
     parts of rows, a job with a `range` function instead of a GEMV part).
   - fm_pool_run: the owner posts the second part (job number p), wakes the worker if
     it sleeps, sums the first part into z, then claims the second (compare-and-swap
     of `taken` from p - 1 to p): won, it adds the second part into z itself, so it
     never waits on a sleeping or descheduled worker; lost, the worker claimed it
     first (into the pool's buffer), and the owner spins until the worker marks it
     done, then adds the buffer into z. Worst case: one thread's time plus a few
     atomics (and the wait for a worker that lost its core mid-part, which the owner
     yields to).
   - the worker (fm_pool_main) spins for fm_pool.spin_ns after each job, with a pause
     instruction, so the next layer and the next back-to-back predict find it awake;
     then it sleeps on a condition variable until the next post.
   - No Python in the worker, which only ever touches this struct and the arrays of
     the job it claimed (alive: the owner waits for it). It is detached, with every
     signal blocked; at exit it dies with the process. A forked child has no worker:
     the atfork handler resets the pool, and the child starts one as the parent did.

   Where there is no pthreads (or FM_GEMV_NO_POOL is defined) both parts run on the
   calling thread (the same bits) and the hooks say "one thread"; the plain C loops
   (no GNU C) do not cut the sum. */
#ifndef FASTMLP_GEMV_POOL_H
#define FASTMLP_GEMV_POOL_H

#if defined(__GNUC__) && !defined(FM_GEMV_PLAIN)
#define FM_GEMV_CUT 1
#if !defined(FM_GEMV_NO_POOL) && (defined(__unix__) || defined(__APPLE__))
#define FM_GEMV_POOL 1
#endif
#endif

#ifdef FM_GEMV_CUT

/* A W of fewer bytes is summed whole, on the calling thread: the hand-off (a few
   cache lines between the cores: the job, half of x, the second part's sums; ~0.2 us)
   must stay small against the half of the product it saves. Measured (float32, 1 row,
   C loop, one thread -> two): 256x256 (256 KB) 1.49 -> 0.86 us, 256x192 1.63 -> 0.89,
   but 256x128 (128 KB) 0.79 -> 0.67 in one run and 0.84 in another: 256 KB keeps a
   margin. (784x256, the benchmark net's first layer: 3.9-4.5 -> 2.2 us.) */
#define FM_POOL_MIN_BYTES ((Py_ssize_t)256 * 1024)

static Py_ssize_t fm_pool_min_bytes = FM_POOL_MIN_BYTES;   /* a test hook changes it */

/* Where the sum over n_in is cut (k: W's rows 0 to k, then k to n_in): 0, not cut, for
   a W under fm_pool_min_bytes. Depends on the shape only, never on the threads. */
static Py_ssize_t fm_gemv_cut(Py_ssize_t n_in, Py_ssize_t n_out, Py_ssize_t size)
{
    if (n_in < 2 || n_in * n_out * size < __atomic_load_n(&fm_pool_min_bytes, __ATOMIC_RELAXED))
        return 0;
    return n_in / 2;
}

/* Test hook: the smallest W (bytes) whose sum is cut, if nbytes >= 0; returns the
   previous value. It changes the bits of the W it moves across the cut. */
static Py_ssize_t fm_gemv_pool_min_bytes(Py_ssize_t nbytes)
{
    return nbytes < 0 ? __atomic_load_n(&fm_pool_min_bytes, __ATOMIC_RELAXED)
                      : __atomic_exchange_n(&fm_pool_min_bytes, nbytes, __ATOMIC_RELAXED);
}

#else
static Py_ssize_t fm_gemv_pool_min_bytes(Py_ssize_t nbytes) { (void)nbytes; return 0; }
#endif  /* FM_GEMV_CUT */

#ifdef FM_GEMV_POOL

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

/* How long the worker spins for the next job before it sleeps: longer than the gap
   between two layers and between back-to-back predicts through the public API, short
   enough that the core it holds after a predict is soon free for other work (BLAS). */
#define FM_POOL_SPIN_NS 50000L
/* A worker is late (its core taken by another process, most likely) when the owner,
   its own part done, waits for the worker's longer than its own part took plus this. */
#define FM_POOL_LATE_NS 20000LL
/* After a late worker, FM_POOL_MISSES calls in a row whose part the worker missed
   (awake but not on a core, most likely), or a wake-up after which the worker slept
   again without a part (it ran on the owner's core, most likely: a woken thread is
   put on its waker's core when the other is busy, and then spins there in the owner's
   place), no part is posted for a quiet period, and the worker sleeps: 1 ms, doubling
   at each such event up to 0.1 s, halved after FM_POOL_GOOD calls in a row that the
   worker shared. So on a machine whose other core is busy the worker soon sleeps 0.1 s
   at a time and costs at most a late call or a wasted wake-up (a spin) per 0.1 s; on
   an idle one it shares every call. */
#define FM_POOL_QUIET_NS 1000000LL
#define FM_POOL_QUIET_MAX_NS 100000000LL
#define FM_POOL_MISSES 3
#define FM_POOL_GOOD 1000

#if defined(__x86_64__) || defined(__i386__)
#define FM_PAUSE() __builtin_ia32_pause()
#elif defined(__aarch64__) || defined(__arm__)
#define FM_PAUSE() __asm__ __volatile__("yield")
#else
#define FM_PAUSE() ((void)0)
#endif

#define FM_LOAD(p, mo) __atomic_load_n((p), __ATOMIC_##mo)
#define FM_STORE(p, v, mo) __atomic_store_n((p), (v), __ATOMIC_##mo)
#define FM_CAS(p, expected, v) \
    __atomic_compare_exchange_n((p), (expected), (v), 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)

/* A part of a batch's rows (r0 to r1), whatever `ctx` says to do with them (_sgemm.h's
   fm_split: predict's forward pass on two threads). */
typedef void (*fm_rows_t)(void* ctx, Py_ssize_t r0, Py_ssize_t r1);

/* z (rows, n_out) (+)= x (rows, n_in; rows ldx apart) W (n_in, n_out) by one copy's
   loops, the one of the job's dtype (the other pointer NULL): _gemv_impl.h's xw.
   Or, with `range` set, range(ctx, r0, r1) (no buffer, nothing added). */
typedef struct {
    fm_rows_t range;
    void* ctx;
    Py_ssize_t r0, r1;
    fm_xw_copy_f32_t f32;
    fm_xw_copy_f64_t f64;
    Py_ssize_t rows, ldx, n_in, n_out;
    const void* x;
    const void* W;
    void* z;
    unsigned long fp;   /* the owner's floating-point mode (fm_fp_mode), for the worker */
} fm_job;

/* The calling thread's floating-point mode, which its sums are rounded in: a thread's
   own (x86's MXCSR, aarch64's FPCR), inherited by the worker from the thread that
   created it, and changed by fesetround or a -ffast-math library's flush-to-zero. The
   worker takes on its owner's before each part (fm_fp_adopt), so both parts are summed
   as one thread would. x86: rounding (RC, bits 13-14), flush-to-zero (15) and
   denormals-are-zero (6) only: not the sticky flags, nor the exception masks (a trap
   in the worker, whose signals are blocked, would kill the process). */
#if defined(__x86_64__) || (defined(__i386__) && defined(__SSE__))
#define FM_MXCSR_MODE 0xE040u
static inline unsigned long fm_fp_mode(void)
{
    return __builtin_ia32_stmxcsr() & FM_MXCSR_MODE;
}
static inline void fm_fp_adopt(unsigned long mode)
{
    const unsigned int csr = __builtin_ia32_stmxcsr();
    if ((csr & FM_MXCSR_MODE) != mode)
        __builtin_ia32_ldmxcsr((csr & ~FM_MXCSR_MODE) | (unsigned int)mode);
}
#elif defined(__aarch64__)
/* FPCR: rounding (RMode, bits 22-23), flush-to-zero (FZ, 24), default NaN (DN, 25) */
#define FM_FPCR_MODE (0xFUL << 22)
static inline unsigned long fm_fp_mode(void)
{
    unsigned long v;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(v));
    return v & FM_FPCR_MODE;
}
static inline void fm_fp_adopt(unsigned long mode)
{
    unsigned long v;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(v));
    if ((v & FM_FPCR_MODE) != mode)
        __asm__ __volatile__("msr fpcr, %0" : : "r"((v & ~FM_FPCR_MODE) | mode));
}
#else
#include <fenv.h>
static inline unsigned long fm_fp_mode(void) { return (unsigned long)fegetround(); }
static inline void fm_fp_adopt(unsigned long mode)
{
    if ((unsigned long)fegetround() != mode)
        fesetround((int)mode);
}
#endif

static void fm_job_run(const fm_job* j, int add)
{
    if (j->range)
        j->range(j->ctx, j->r0, j->r1);
    else if (j->f32)
        j->f32(j->rows, j->ldx, j->n_in, j->n_out, add, (const float*)j->x,
               (const float*)j->W, (float*)j->z);
    else
        j->f64(j->rows, j->ldx, j->n_in, j->n_out, add, (const double*)j->x,
               (const double*)j->W, (double*)j->z);
}

/* Job numbers only grow: job p is posted after job p - 1 is taken and done, so the
   compare-and-swap of `taken` from p - 1 to p succeeds once, for whoever is first. */
static struct {
    /* written by the owner, read by the worker */
    fm_job job __attribute__((aligned(64)));   /* the second part of the last post */
    unsigned long posted;   /* number of the last job posted */
    unsigned long taken;    /* number of the last job claimed, by the worker or owner */
    /* written by the worker */
    unsigned long done __attribute__((aligned(64)));  /* the last job the worker did */
    long long worker_jobs;  /* how many (the test hook fm_gemv_pool_jobs) */
    int sleeping;           /* 1 while it sleeps (on `wake`, under `mutex`) */
    unsigned long naps;     /* how many times it went to sleep (under `mutex`) */
    unsigned long woken;    /* the nap an owner woke it from (under `mutex`) */
    /* the owner's (a caller that owns the pool: fm_pool_enter) */
    int owned __attribute__((aligned(64)));  /* 1 while a caller owns the pool */
    int state;              /* 0 no worker yet, 1 started, -1 could not start one */
    int limit;              /* threads at most, 1 or 2; -1 until fm_gemv_threads reads it */
    int leave;              /* test hook: the owner leaves every second part to the worker */
    long spin_ns;           /* FM_POOL_SPIN_NS (a test hook changes it) */
    int misses;             /* calls in a row whose part the worker missed */
    int good;               /* calls in a row the worker shared */
    long long quiet_until;  /* CLOCK_MONOTONIC ns: post nothing before (0: not quiet) */
    long long quiet_ns;     /* the next quiet period */
    long long last_asleep;  /* when a call last found the worker asleep */
    unsigned long woke_nap; /* the nap the owner last woke the worker from (0: none) */
    long long woke_jobs;    /* worker_jobs then */
    void* buffer;           /* the worker's sums: buffer_bytes, grown by the owner */
    size_t buffer_bytes;
    pthread_mutex_t mutex;
    pthread_cond_t wake;
} fm_pool = {.limit = -1, .spin_ns = FM_POOL_SPIN_NS, .quiet_ns = FM_POOL_QUIET_NS,
             .mutex = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static long long fm_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* 2 when the process may run on 2 CPUs or more and OPENBLAS_NUM_THREADS or
   OMP_NUM_THREADS (the first set, as OpenBLAS reads them) does not say 1; else 1. */
static int fm_pool_default(void)
{
    static const char* const names[] = {"OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"};
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int k;
#if defined(__linux__) && defined(CPU_COUNT)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        cpus = CPU_COUNT(&set);
#endif
    for (k = 0; k < 2; k++) {
        const char* v = getenv(names[k]);
        char* end;
        long n;
        if (v == NULL || *v == '\0')
            continue;
        n = strtol(v, &end, 10);
        if (*end == '\0' && n >= 1 && n < cpus)
            cpus = n;
        break;
    }
    return cpus >= 2 ? 2 : 1;
}

/* The thread limit of the big GEMVs: n >= 1 sets it (more than 2 is 2), n = 0 reads
   it (the default, fm_pool_default, on the first read); returns the limit in effect. */
static int fm_gemv_threads(int n)
{
    int unread = -1;
    if (n >= 1)
        FM_STORE(&fm_pool.limit, n >= 2 ? 2 : 1, RELAXED);
    else if (FM_LOAD(&fm_pool.limit, RELAXED) < 0)
        FM_CAS(&fm_pool.limit, &unread, fm_pool_default());
    return FM_LOAD(&fm_pool.limit, RELAXED);
}

/* Test hooks: how many parts the worker computed (in this process); the settings (a
   value < 0 only reads), each returning the previous value; whether a worker runs. */
static long long fm_gemv_pool_jobs(void) { return FM_LOAD(&fm_pool.worker_jobs, RELAXED); }

/* Test hook: how many times the worker went to sleep (in this process). */
static long long fm_gemv_pool_naps(void)
{
    return (long long)FM_LOAD(&fm_pool.naps, RELAXED);
}

static long fm_gemv_pool_spin_ns(long ns)
{
    return ns < 0 ? FM_LOAD(&fm_pool.spin_ns, RELAXED)
                  : __atomic_exchange_n(&fm_pool.spin_ns, ns, __ATOMIC_RELAXED);
}

static int fm_gemv_pool_leave(int on)
{
    return on < 0 ? FM_LOAD(&fm_pool.leave, RELAXED)
                  : __atomic_exchange_n(&fm_pool.leave, on ? 1 : 0, __ATOMIC_RELAXED);
}

/* 1 when a worker was started in this process, 0 not yet, -1 could not start one */
static int fm_gemv_pool_state(void) { return FM_LOAD(&fm_pool.state, RELAXED); }

/* The next job number after `last`: spins spin_ns, then sleeps until one is posted or
   an owner wakes it (then returns `last`). */
static unsigned long fm_pool_next(unsigned long last)
{
    const long long t0 = fm_now(), spin = FM_LOAD(&fm_pool.spin_ns, RELAXED);
    unsigned long p, nap;
    int k;
    do {
        for (k = 0; k < 64; k++) {   /* a clock read per 64 pauses (~2 us here) */
            if ((p = FM_LOAD(&fm_pool.posted, ACQUIRE)) != last)
                return p;
            FM_PAUSE();
        }
    } while (fm_now() - t0 < spin);
    /* sleeping is set before posted is read again, and an owner that leaves its part
       to the worker posts before it takes the mutex: it sees `sleeping`, or this sees
       its post. Other owners never wait for the worker, so a post it sleeps through
       only goes to the owner. */
    pthread_mutex_lock(&fm_pool.mutex);
    nap = __atomic_add_fetch(&fm_pool.naps, 1, __ATOMIC_RELAXED);
    FM_STORE(&fm_pool.sleeping, 1, SEQ_CST);
    while ((p = FM_LOAD(&fm_pool.posted, SEQ_CST)) == last && fm_pool.woken != nap)
        pthread_cond_wait(&fm_pool.wake, &fm_pool.mutex);
    FM_STORE(&fm_pool.sleeping, 0, RELAXED);
    pthread_mutex_unlock(&fm_pool.mutex);
    return p;
}

/* Wake the worker from its nap, unless an owner already did. */
static void fm_pool_wake(void)
{
    pthread_mutex_lock(&fm_pool.mutex);
    if (fm_pool.sleeping && fm_pool.woken != fm_pool.naps) {
        fm_pool.woken = fm_pool.naps;
        pthread_cond_signal(&fm_pool.wake);
    }
    pthread_mutex_unlock(&fm_pool.mutex);
}

/* The worker: claims each posted part it sees first, computes it, marks it done.
   arg: the number of the last job posted before it started. */
static void* fm_pool_main(void* arg)
{
    unsigned long last = (unsigned long)(uintptr_t)arg, p, expected;
    for (;;) {
        p = fm_pool_next(last);
        if (p == last)   /* woken for the calls to come */
            continue;
        last = p;
        expected = p - 1;
        if (FM_CAS(&fm_pool.taken, &expected, p)) {
            fm_fp_adopt(fm_pool.job.fp);
            fm_job_run(&fm_pool.job, 0);   /* posted before p: stable until done = p */
            FM_STORE(&fm_pool.worker_jobs, fm_pool.worker_jobs + 1, RELAXED);
            FM_STORE(&fm_pool.done, p, RELEASE);
        }
    }
    return NULL;
}

/* In a forked child (one thread, the forking one): no worker, no owner, and no job
   in flight (one posted by another thread of the parent is dropped with it). */
static void fm_pool_forked(void)
{
    fm_pool.taken = fm_pool.done = fm_pool.posted;
    fm_pool.state = 0;
    fm_pool.owned = 0;
    fm_pool.sleeping = 0;
    fm_pool.naps = fm_pool.woken = fm_pool.woke_nap = 0;
    fm_pool.worker_jobs = 0;
    pthread_mutex_init(&fm_pool.mutex, NULL);
    pthread_cond_init(&fm_pool.wake, NULL);
}

/* 1 once fm_pool_forked is registered for fork (a child inherits the registration).
   Called before a caller may own the pool, so that a fork while one owns it always
   frees it in the child (registered only when the worker starts, a fork in that
   window left the child's pool owned, and off, for good). Two threads may both
   register it: the reset then runs twice, to the same effect. */
static int fm_pool_register(void)
{
    static int registered;
    if (!FM_LOAD(&registered, ACQUIRE) && pthread_atfork(NULL, NULL, fm_pool_forked) == 0)
        FM_STORE(&registered, 1, RELEASE);
    return FM_LOAD(&registered, ACQUIRE);
}

/* Start the worker (the owner only): 1 when it runs; 0, and the pool off for good,
   when it cannot. */
static int fm_pool_start(void)
{
    pthread_attr_t attr;
    pthread_t thread;
    sigset_t all, old;
    int ok;
    ok = pthread_attr_init(&attr) == 0;
    if (ok) {
        sigfillset(&all);   /* signals go to the interpreter's threads, never here */
        pthread_sigmask(SIG_SETMASK, &all, &old);
        ok = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0
             && pthread_create(&thread, &attr, fm_pool_main,
                               (void*)(uintptr_t)FM_LOAD(&fm_pool.posted, RELAXED)) == 0;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&attr);
    }
    FM_STORE(&fm_pool.state, ok ? 1 : -1, RELAXED);
    return ok;
}

/* Whether the owner should start the worker now: on the second of two calls less
   than spin_ns apart (a burst: fm_pool_rouse), so that a process that predicts now and
   then never starts a thread, nor pays for one in its first call. */
static int fm_pool_due(void)
{
    const long long now = fm_now();
    const int burst = now - fm_pool.last_asleep < FM_LOAD(&fm_pool.spin_ns, RELAXED);
    fm_pool.last_asleep = now;
    return burst || FM_LOAD(&fm_pool.leave, RELAXED);
}

/* 1 when the calling thread now owns the pool, a worker started: it must call
   fm_pool_run (or release it) next. 0 when it must run alone: limit 1, pool busy, no
   worker (yet). `now`: start the worker at once, not only in a burst of calls (a part
   of hundreds of microseconds pays for its start). */
static int fm_pool_enter_now(int now)
{
    int free_ = 0, limit = FM_LOAD(&fm_pool.limit, RELAXED);
    if (limit < 0)
        limit = fm_gemv_threads(0);
    if (limit < 2 || FM_LOAD(&fm_pool.state, RELAXED) < 0 || FM_LOAD(&fm_pool.owned, RELAXED)
        || !fm_pool_register() || !FM_CAS(&fm_pool.owned, &free_, 1))
        return 0;
    if (FM_LOAD(&fm_pool.state, RELAXED) == 0
        && !((now || fm_pool_due()) && fm_pool_start())) {
        FM_STORE(&fm_pool.owned, 0, RELEASE);
        return 0;
    }
    return 1;
}

static int fm_pool_enter(void) { return fm_pool_enter_now(0); }

/* The owner waits for the worker to finish job p; returns how long (ns; 0 when at
   once). It yields its core after a while: the worker may be waiting for it. */
static long long fm_pool_wait(unsigned long p)
{
    long long t0 = 0, waited = 0;
    int k;
    for (;;) {
        for (k = 0; k < 64; k++) {
            if (FM_LOAD(&fm_pool.done, ACQUIRE) == p)
                return waited;
            FM_PAUSE();
        }
        if (t0 == 0)
            t0 = fm_now();
        else if ((waited = fm_now() - t0) > FM_POOL_LATE_NS)
            sched_yield();
    }
}

/* No part is posted for the quiet period, which doubles (FM_POOL_QUIET_NS). */
static void fm_pool_quiet(void)
{
    fm_pool.good = fm_pool.misses = 0;
    fm_pool.quiet_until = fm_now() + fm_pool.quiet_ns;
    if (fm_pool.quiet_ns < FM_POOL_QUIET_MAX_NS)
        fm_pool.quiet_ns *= 2;
}

/* After a shared call: `missed` (the owner took the worker's part) or the worker's
   part came `late`, else it helped. */
static void fm_pool_judge(int missed, int late)
{
    if (late || (missed && ++fm_pool.misses >= FM_POOL_MISSES))
        fm_pool_quiet();
    else if (!missed) {
        fm_pool.misses = 0;
        if (++fm_pool.good >= FM_POOL_GOOD && fm_pool.quiet_ns > FM_POOL_QUIET_NS) {
            fm_pool.good = 0;
            fm_pool.quiet_ns /= 2;
        }
    }
}

/* The worker sleeps: wake it when the call before found it asleep too, less than
   spin_ns ago (a burst of calls), once a nap; but after a wasted wake-up (it slept
   again without a part), be quiet instead (see FM_POOL_QUIET_NS). */
static void fm_pool_rouse(long long now)
{
    const unsigned long nap = FM_LOAD(&fm_pool.naps, RELAXED);
    const long long jobs = FM_LOAD(&fm_pool.worker_jobs, RELAXED);
    int burst;
    if (fm_pool.woke_nap != 0) {
        if (nap == fm_pool.woke_nap)   /* woken, not yet on a core */
            return;
        fm_pool.woke_nap = 0;
        if (jobs == fm_pool.woke_jobs) {   /* slept again, and did nothing */
            fm_pool_quiet();
            return;
        }
    }
    burst = now - fm_pool.last_asleep < FM_LOAD(&fm_pool.spin_ns, RELAXED);
    fm_pool.last_asleep = now;
    if (burst) {
        fm_pool.woke_nap = nap;
        fm_pool.woke_jobs = jobs;
        fm_pool_wake();
    }
}

/* Whether to post this call's second part to the worker: not in a quiet period, and
   not to a sleeping worker, which could not wake in time (7-40 us here; the wake-up
   call alone costs the owner 3-14 us): fm_pool_rouse wakes it for the calls to come. */
static int fm_pool_wanted(void)
{
    long long now;
    if (FM_LOAD(&fm_pool.leave, RELAXED))
        return 1;
    if (fm_pool.quiet_until == 0 && !FM_LOAD(&fm_pool.sleeping, RELAXED))
        return 1;
    now = fm_now();
    if (now < fm_pool.quiet_until)
        return 0;
    fm_pool.quiet_until = 0;
    if (!FM_LOAD(&fm_pool.sleeping, RELAXED))
        return 1;
    fm_pool_rouse(now);
    return 0;
}

/* z += b, n elements of the job's dtype: the one add that ends the cut sum. */
static void fm_pool_add(const fm_job* j, Py_ssize_t n, const void* b)
{
    Py_ssize_t i;
    if (j->f32)
        for (i = 0; i < n; i++)
            ((float*)j->z)[i] += ((const float*)b)[i];
    else
        for (i = 0; i < n; i++)
            ((double*)j->z)[i] += ((const double*)b)[i];
}

/* 1 when the pool's buffer holds `bytes` (grown by the owner, the worker idle). */
static int fm_pool_grow(size_t bytes)
{
    void* grown;
    if (bytes <= fm_pool.buffer_bytes)
        return 1;
    if ((grown = malloc(bytes)) == NULL)
        return 0;
    free(fm_pool.buffer);
    fm_pool.buffer = grown;
    fm_pool.buffer_bytes = bytes;
    return 1;
}

/* Post `second` (into the buffer), compute `first` into z, then `second` into z or
   wait for the worker's and add it: the owner never waits for a part not claimed. */
static void fm_pool_share(const fm_job* first, const fm_job* second)
{
    const unsigned long p = FM_LOAD(&fm_pool.posted, RELAXED) + 1;
    const int leave = FM_LOAD(&fm_pool.leave, RELAXED);
    unsigned long expected = p - 1;
    long long t0 = 0, waited;
    fm_pool.job = *second;
    fm_pool.job.z = fm_pool.buffer;
    fm_pool.job.fp = fm_fp_mode();
    FM_STORE(&fm_pool.posted, p, SEQ_CST);
    if (leave) {   /* the owner will wait: the worker must not sleep through the post */
        pthread_mutex_lock(&fm_pool.mutex);
        pthread_cond_signal(&fm_pool.wake);
        pthread_mutex_unlock(&fm_pool.mutex);
    }
    else
        t0 = fm_now();
    fm_job_run(first, 0);
    if (!leave && FM_CAS(&fm_pool.taken, &expected, p)) {
        fm_job_run(second, 1);
        fm_pool_judge(1, 0);
        return;
    }
    waited = fm_pool_wait(p);
    fm_pool_add(second, second->rows * second->n_out, fm_pool.buffer);
    if (!leave)
        fm_pool_judge(0, waited > fm_now() - t0 - waited + FM_POOL_LATE_NS);
}

/* The whole job `all` (z OVERWRITTEN), its sum cut at W's row k: the owner sums rows 0
   to k into z, and the worker (fm_pool_share) or the owner the rest, added into z.
   Releases the pool. */
static void fm_pool_run(const fm_job* all, Py_ssize_t k)
{
    const size_t size = all->f32 ? sizeof(float) : sizeof(double);
    fm_job first = *all, second = *all;
    first.n_in = k;
    second.n_in = all->n_in - k;
    second.x = (const char*)all->x + k * size;
    second.W = (const char*)all->W + k * all->n_out * size;
    if (fm_pool_wanted() && fm_pool_grow(all->rows * all->n_out * size))
        fm_pool_share(&first, &second);
    else {
        fm_job_run(&first, 0);
        fm_job_run(&second, 1);
    }
    FM_STORE(&fm_pool.owned, 0, RELEASE);
}

#else  /* one thread: the hooks say so */

static int fm_gemv_threads(int n) { (void)n; return 1; }
static long long fm_gemv_pool_jobs(void) { return 0; }
static long long fm_gemv_pool_naps(void) { return 0; }
static long fm_gemv_pool_spin_ns(long ns) { (void)ns; return 0; }
static int fm_gemv_pool_leave(int on) { (void)on; return 0; }
static int fm_gemv_pool_state(void) { return -1; }

#endif  /* FM_GEMV_POOL */

#endif  /* FASTMLP_GEMV_POOL_H */
