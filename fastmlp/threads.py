"""One thread pool at a time.

NumPy and SciPy each bundle their own OpenBLAS, and Numba may run a pool of
its own: left alone on a 2-core machine they oversubscribe it. The compiled
kernels call NumPy's BLAS (see fastmlp/blas.py), so NumPy work and fastmlp
steps share one pool; they do their elementwise passes on the calling thread
and leave the cores to BLAS, so one limit governs everything.
"""
from __future__ import annotations

import os

import numpy as np
import threadpoolctl

from . import blas
from .blas import kernel_blas

blas.choice()  # a bad FASTMLP_BLAS fails `import fastmlp`, not a kernel call later
_limiter = None


_MOST_THREADS = 2**31 - 1   # what a C int holds: OpenBLAS, Numba and the GEMV take one


def set_num_threads(n):
    """Use at most ``n`` threads in every BLAS (numpy's, which the kernels use, and
    scipy's), in Numba (in the calling thread only: numba.set_num_threads is per thread;
    the kernels use no Numba thread pool), and in the Cython extension's worker thread
    (kernels/_gemv_pool.h, used when n >= 2: the small-batch predict's GEMV, the second
    part of the rows of a float32 batch predict, kernels/_sgemm.h, and of a float32
    product on the GEMM loops, kernels/_sgemm_blas.h: see set_gemm_loops).

    Call it while no other thread computes (fastmlp, or NumPy's BLAS): OpenBLAS resizes
    its pool under a product another thread is running, whose result can then be wrong
    (a fit in one thread while another called this in a loop ended 2e-4 from the same
    fit alone, NumPy's reference backend too: hostile round 56)."""
    global _limiter
    # checked before anything changes (a count past a C int raised OverflowError once
    # BLAS had taken it); NumPy's integers are integers
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) \
            or not 1 <= n <= _MOST_THREADS:
        raise ValueError(f"number of threads must be an integer from 1 to {_MOST_THREADS}, "
                         f"got {n!r:.60}")
    n = int(n)
    # threadpoolctl limits only the BLAS libraries already loaded: load scipy's
    # (Numba's np.dot, and the kernels' fallback) now, or one loaded later ignores n.
    import scipy.linalg.cython_blas  # noqa: F401
    _limiter = threadpoolctl.threadpool_limits(limits=n, user_api="blas")
    _limit_gemv(n)
    try:
        import numba
    except ImportError:
        return
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


GEMM_LOOPS = ("never", "fit", "always", "auto")


def set_gemm_loops(where):
    """Where float32 products run on fastmlp's own GEMM loops instead of BLAS (the
    Cython extension's AVX-512 build, kernels/_sgemm_blas.h; both compiled backends):
    ``"auto"`` (the default) in every call where the loops' other threads are those of
    the BLAS itself (an OpenBLAS on pthreads, as NumPy's wheels bundle:
    kernels/_blas_pool.h) and it runs at most 2 threads (where this was measured), else
    inside ``fit``'s compiled epochs only; ``"fit"`` inside
    ``fit``'s compiled epochs only; ``"always"`` in every call (``train_on_batch``,
    ``gradients``, ``evaluate`` too); ``"never"``. Returns the setting before;
    ``"never"`` wherever the loops are not built (the setting then changes nothing).

    The loops beat OpenBLAS at these shapes. Where their second thread is not
    OpenBLAS's (another BLAS), right after NumPy's own BLAS work OpenBLAS's threads
    may spin on for up to 0.1 s, on the core that thread needs; inside fit's epochs
    nothing runs between the products. The loops sum in their own order: a product's
    bits differ from BLAS's (see the README's Speed section). Process-wide; not while
    kernels run in other threads."""
    if not isinstance(where, str) or where not in GEMM_LOOPS:  # an array compares per element
        raise ValueError(f"where must be one of {GEMM_LOOPS}, got {where!r:.60}")
    try:
        from .kernels.cython_mlp import gemm_policy
    except ImportError:
        return "never"
    was = gemm_policy(GEMM_LOOPS.index(where))
    return GEMM_LOOPS[was]


def _limit_gemv(n):
    """At most ``n`` threads in the GEMV loops of kernels/_gemv.h, which the Cython
    extension holds and the Numba kernels call too (none to limit without it)."""
    try:
        from .kernels.cython_mlp import gemv_threads
    except ImportError:
        return
    gemv_threads(n)


def blas_in_use():
    """The BLAS the compiled kernels call: {"source": "numpy" or "scipy", "filepath":
    its shared library, "sgemm" and "dgemm": symbol names, "int_bits": 64 (ILP64) or
    32, "reason": why this one (a fallback says what was missing)}.
    ``FASTMLP_BLAS=scipy`` chooses SciPy's; the default takes NumPy's."""
    blas = kernel_blas()
    return {key: getattr(blas, key)
            for key in ("source", "filepath", "sgemm", "dgemm", "int_bits", "reason")}


def thread_info():
    """Which BLAS libraries are loaded, their kernels (architecture) and thread counts;
    ``used_by_kernels`` marks the one fastmlp's compiled kernels call."""
    used = kernel_blas().filepath
    return [{**{k: info.get(k) for k in ("internal_api", "version", "architecture",
                                           "num_threads", "filepath")},
             "used_by_kernels": os.path.realpath(info.get("filepath", "")) == used}
            for info in threadpoolctl.threadpool_info() if info.get("user_api") == "blas"]
