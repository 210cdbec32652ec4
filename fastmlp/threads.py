"""One thread pool at a time.

NumPy and SciPy each bundle their own OpenBLAS, and Numba may run a pool of
its own: left alone on a 2-core machine they oversubscribe it. The compiled
kernels do their elementwise passes on the calling thread and leave the cores
to BLAS, so one limit governs everything.
"""
from __future__ import annotations

import threadpoolctl

_limiter = None


def set_num_threads(n):
    """Use at most ``n`` threads in every BLAS (numpy's and scipy's) and in Numba."""
    global _limiter
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of threads must be a positive integer, got {n!r}")
    # threadpoolctl limits only the BLAS libraries already loaded: load scipy's
    # (the Numba and Cython kernels' BLAS) now, or a backend built later ignores n.
    import scipy.linalg.cython_blas  # noqa: F401
    _limiter = threadpoolctl.threadpool_limits(limits=n, user_api="blas")
    try:
        import numba
    except ImportError:
        return
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def thread_info():
    """Which BLAS libraries are loaded, their kernels (architecture) and thread counts."""
    return [{k: info.get(k) for k in ("internal_api", "version", "architecture",
                                        "num_threads", "filepath")}
            for info in threadpoolctl.threadpool_info() if info.get("user_api") == "blas"]
