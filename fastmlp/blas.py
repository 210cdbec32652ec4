"""Which BLAS the compiled kernels call: NumPy's own, so one thread pool serves both.

NumPy's wheels bundle an OpenBLAS (scipy-openblas64: ILP64, symbols such as
``scipy_sgemm_64_``) and SciPy's bundle another (LP64, ``scipy_sgemm_``). Each
has its own thread pool, whose threads keep spinning for a while after a call:
a fastmlp step right after NumPy BLAS work, on SciPy's pool, ran at half speed
on a 2-core machine. So the Cython and Numba kernels call NumPy's ``?gemm_``
through its address, taken from the library already loaded in the process (no
second copy), and fall back to SciPy's ``scipy.linalg.cython_blas`` when
NumPy's cannot be found (e.g. NumPy built against a system BLAS whose symbol
names are not known here).

``FASTMLP_BLAS=scipy`` (read once, at the first kernel call or import of the
Numba kernels) forces SciPy's; ``numpy``, the default, takes NumPy's where found.
"""
from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

ENV = "FASTMLP_BLAS"
CHOICES = ("numpy", "scipy")

# Fortran ?gemm names NumPy's BLAS may export and their integer width, most likely
# first: scipy-openblas64 (NumPy's wheels), scipy-openblas32, a suffixed ILP64
# OpenBLAS, then plain LP64 (reference BLAS, OpenBLAS, BLIS, MKL's LP64 layer).
_NAMES = (("scipy_{}gemm_64_", 64), ("{}gemm_64_", 64), ("scipy_{}gemm_", 32), ("{}gemm_", 32))


@dataclass(frozen=True)
class KernelBlas:
    """The ?gemm the kernels call: Fortran ABI, every scalar by reference, integers of
    ``int_bits`` (64: int64 m, n, k, lda, ldb, ldc; 32: int)."""

    source: str          # "numpy" or "scipy"
    filepath: str        # the shared library holding the BLAS (its thread pool)
    sgemm: str           # symbol names, for the record
    dgemm: str
    sgemm_address: int
    dgemm_address: int
    int_bits: int
    reason: str          # why this one (a fallback says what was missing)


def choice():
    """``FASTMLP_BLAS``: "numpy" (the default) or "scipy"; anything else is a ValueError."""
    value = os.environ.get(ENV, "numpy").strip().lower() or "numpy"
    if value not in CHOICES:
        raise ValueError(f"{ENV} must be one of {CHOICES}, got {os.environ[ENV]!r}")
    return value


@lru_cache(maxsize=None)
def kernel_blas():
    """The KernelBlas every compiled kernel uses in this process (decided once)."""
    if choice() == "scipy":
        return scipy_blas(f"{ENV}=scipy")
    found, why_not = _numpy_blas()
    return found if found is not None else scipy_blas(f"NumPy's BLAS not usable: {why_not}")


def _numpy_blas():
    """(KernelBlas, "") for NumPy's BLAS, or (None, why not)."""
    paths = _numpy_library_paths()
    if not paths:
        return None, "no BLAS library found among NumPy's files or the loaded libraries"
    if len(paths) > 1:
        return None, f"several candidate BLAS libraries loaded: {', '.join(paths)}"
    path = paths[0]
    try:  # RTLD_NOLOAD: a handle on the copy NumPy loaded, or an error, never a second copy
        lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LOCAL)
    except OSError as exc:
        return None, f"{path} is not loaded ({exc})"
    for pattern, int_bits in _NAMES:
        names = pattern.format("s"), pattern.format("d")
        if all(hasattr(lib, name) for name in names):
            if int_bits == 32 and "USE64BITINT" in _numpy_openblas_config():
                int_bits = 64   # an ILP64 OpenBLAS built without a symbol suffix
            sgemm, dgemm = (ctypes.cast(getattr(lib, n), ctypes.c_void_p).value for n in names)
            blas = KernelBlas("numpy", path, *names, sgemm, dgemm, int_bits,
                              "NumPy's own BLAS: one thread pool for NumPy and fastmlp")
            if not _gemm_works(blas):
                return None, f"{names[0]} in {path} gave a wrong product"
            return blas, ""
    return None, f"no known ?gemm symbol ({', '.join(p.format('s') for p, _ in _NAMES)}) in {path}"


# OpenBLAS's thread-count and threading-model functions, by the symbol prefix and
# suffix of each build kernel_blas may find (scipy-openblas64, scipy-openblas32, plain)
_OPENBLAS_API = (("scipy_openblas_", "64_"), ("scipy_openblas_", ""), ("openblas_", "64_"),
                 ("openblas_", ""))
_PTHREADS = 1   # openblas_get_parallel(): 0 sequential, 1 pthreads, 2 OpenMP


@lru_cache(maxsize=None)
def worker_pool():
    """The thread pool of the BLAS the kernels call, for the Cython extension's two-part
    loops (kernels/_blas_pool.h): the addresses (``gotoblas_pthread``, its
    ``openblas_get_num_threads``, its ``blas_num_threads``) where that BLAS is an
    OpenBLAS on pthreads that exports them, else None."""
    try:
        lib = ctypes.CDLL(kernel_blas().filepath, mode=os.RTLD_NOLOAD | os.RTLD_LOCAL)
    except OSError:
        return None
    for prefix, suffix in _OPENBLAS_API:
        threads, parallel = (f"{prefix}get_{what}{suffix}" for what in ("num_threads", "parallel"))
        if not all(hasattr(lib, name) for name in (threads, parallel, "gotoblas_pthread",
                                                   "blas_num_threads")):
            continue
        get_parallel = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.cast(getattr(lib, parallel),
                                                                  ctypes.c_void_p).value)
        if get_parallel() != _PTHREADS:
            return None
        return tuple(ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
                     for name in ("gotoblas_pthread", threads, "blas_num_threads"))
    return None


def _numpy_library_paths():
    """The BLAS NumPy uses: the one its wheel bundles (numpy.libs/ on Linux and
    Windows, numpy/.dylibs/ on macOS), else the loaded BLAS libraries that are not
    SciPy's (NumPy built against a system BLAS)."""
    import numpy
    here = Path(numpy.__file__).parent
    bundled = sorted(os.path.realpath(p) for d in (here.parent / "numpy.libs", here / ".dylibs")
                     if d.is_dir() for p in d.iterdir() if _is_blas_name(p.name))
    if bundled:
        return bundled
    import threadpoolctl
    return sorted({os.path.realpath(info["filepath"]) for info in threadpoolctl.threadpool_info()
                   if info.get("user_api") == "blas" and not _is_scipys(info["filepath"])})


def _is_blas_name(name):
    name = name.lower()
    return any(word in name for word in ("openblas", "blis", "mkl_rt")) and (
        ".so" in name or name.endswith((".dylib", ".dll")))


def _is_scipys(path):
    parts = Path(path).parts
    return "scipy.libs" in parts or "scipy" in parts


def _numpy_openblas_config():
    try:
        import numpy
        return numpy.__config__.CONFIG["Build Dependencies"]["blas"].get(
            "openblas configuration", "")
    except (AttributeError, KeyError, TypeError):
        return ""


def scipy_blas(reason):
    """SciPy's LP64 ?gemm from ``scipy.linalg.cython_blas`` (its own OpenBLAS)."""
    addresses = scipy_gemm_addresses()  # loads SciPy's OpenBLAS, so it can be found
    return KernelBlas("scipy", _scipy_library_path(), "scipy.linalg.cython_blas.sgemm",
                      "scipy.linalg.cython_blas.dgemm", *addresses, 32, reason)


def scipy_gemm_addresses():
    """(sgemm, dgemm) addresses of ``scipy.linalg.cython_blas``'s LP64 functions."""
    from scipy.linalg import cython_blas
    return tuple(_capsule_address(cython_blas.__pyx_capi__[n]) for n in ("sgemm", "dgemm"))


def _capsule_address(capsule):
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get_pointer(capsule, get_name(capsule))


def _scipy_library_path():
    import threadpoolctl
    paths = [os.path.realpath(info["filepath"]) for info in threadpoolctl.threadpool_info()
             if info.get("user_api") == "blas" and _is_scipys(info["filepath"])]
    return paths[0] if paths else os.path.realpath(sys.modules["scipy.linalg.cython_blas"].__file__)


def _gemm_works(blas):
    """Whether ``blas``'s sgemm and dgemm compute [[1, 2], [3, 4]] @ [[5, 6], [7, 8]]
    (column-major, so the product's transpose): a wrong name or integer width shows."""
    int_t = ctypes.c_int64 if blas.int_bits == 64 else ctypes.c_int32
    for address, real in ((blas.sgemm_address, ctypes.c_float),
                          (blas.dgemm_address, ctypes.c_double)):
        P, I = ctypes.POINTER(real), ctypes.POINTER(int_t)
        fn = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, I, I, I, P, P, I, P, I,
                              P, P, I)(address)
        a, b = (real * 4)(1, 3, 2, 4), (real * 4)(5, 7, 6, 8)
        c = (real * 4)()
        two, one, zero = int_t(2), real(1), real(0)
        fn(b"N", b"N", two, two, two, one, a, two, b, two, zero, c, two)
        if list(c) != [19, 43, 22, 50]:
            return False
    return True
