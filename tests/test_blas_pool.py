"""One thread pool (issue 10): the compiled kernels call NumPy's own BLAS.

The kernels' GEMMs agree with ``np.matmul``; ``fm.thread_info()`` marks the BLAS
they use and ``fm.set_num_threads`` limits it; in a fresh process the kernels'
?gemm addresses lie inside NumPy's OpenBLAS mapping, and the kernels call exactly
the functions ``fastmlp.blas.kernel_blas()`` names (a counting spy in their place
sees every BLAS-sized product); ``FASTMLP_BLAS=scipy`` still gives the same
results through SciPy's LP64 BLAS.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import threadpoolctl

import fastmlp as fm
from fastmlp.threads import blas_in_use

from tolerances import TOLERANCES

ROOT = Path(__file__).resolve().parents[1]
NUMPY_LIBS = Path(np.__file__).parent.parent / "numpy.libs"
NUMPY_BUNDLES_OPENBLAS = NUMPY_LIBS.is_dir() and any("openblas" in p.name for p in NUMPY_LIBS.iterdir())

SHAPES = [(37, 29, 41), (64, 130, 70), (512, 256, 784), (5, 300, 9)]  # m, n, k: BLAS-sized


def _operands(rng, m, n, k, trans_a, trans_b, dtype):
    a = rng.normal(size=(k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.normal(size=(n, k) if trans_b else (k, n)).astype(dtype)
    expected = np.matmul(a.T if trans_a else a, b.T if trans_b else b)
    return a, b, expected


def _assert_close(got, expected, dtype, k):
    tol = TOLERANCES[dtype]
    np.testing.assert_allclose(got, expected, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10 * k)


@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("m, n, k", SHAPES)
def test_cython_blas_gemm_equals_numpy_matmul(dtype, m, n, k, trans_a, trans_b):
    kernels = pytest.importorskip("fastmlp.kernels.cython_mlp")
    a, b, expected = _operands(np.random.default_rng(m + n + k), m, n, k, trans_a, trans_b, dtype)
    c = np.full((m, n), np.nan, dtype=dtype)  # beta = 0 overwrites
    kernels._gemm(trans_a, trans_b, 1.0, a, b, 0.0, c, 1)
    _assert_close(c, expected, dtype, k)


@pytest.mark.parametrize("which", ["nn", "tn", "nt"])
@pytest.mark.parametrize("m, n, k", SHAPES)
def test_numba_blas_gemm_equals_numpy_matmul(dtype, m, n, k, which):
    numba_blas = pytest.importorskip("fastmlp.kernels.numba_blas")
    trans_a, trans_b = which[0] == "t", which[1] == "t"
    a, b, expected = _operands(np.random.default_rng(m + n + k), m, n, k, trans_a, trans_b, dtype)
    c = np.full((m, n), np.nan, dtype=dtype)
    getattr(numba_blas, f"gemm_{which}")(a, b, c, 1.0, 0.0)
    _assert_close(c, expected, dtype, k)


def test_thread_info_names_the_blas_the_kernels_use():
    info = blas_in_use()
    assert info["source"] in ("numpy", "scipy") and info["int_bits"] in (32, 64)
    used = [entry for entry in fm.thread_info() if entry["used_by_kernels"]]
    assert len(used) == 1, fm.thread_info()
    assert os.path.realpath(used[0]["filepath"]) == info["filepath"]
    if NUMPY_BUNDLES_OPENBLAS and os.environ.get("FASTMLP_BLAS", "numpy") == "numpy":
        assert info["source"] == "numpy", info["reason"]
        assert Path(info["filepath"]).parent == NUMPY_LIBS.resolve()


def test_set_num_threads_limits_the_kernels_pool():
    used = blas_in_use()["filepath"]

    def kernels_pool():
        (entry,) = [e for e in threadpoolctl.threadpool_info()
                    if e.get("user_api") == "blas" and os.path.realpath(e["filepath"]) == used]
        return entry["num_threads"]

    before = kernels_pool()
    numba = pytest.importorskip("numba")
    numba_before = numba.get_num_threads()
    gemv_before = _gemv_threads()
    try:
        fm.set_num_threads(1)
        assert kernels_pool() == 1
    finally:
        threadpoolctl.threadpool_limits(limits=before, user_api="blas")
        numba.set_num_threads(numba_before)
        _gemv_threads(gemv_before)


def _gemv_threads(n=0):
    """The small-batch GEMV's thread limit (set if n >= 1), 1 without the extension."""
    try:
        from fastmlp.kernels.cython_mlp import gemv_threads
    except ImportError:
        return 1
    return gemv_threads(n)


def test_bad_fastmlp_blas_is_a_clear_error():
    res = _run("import fastmlp", {"FASTMLP_BLAS": "openblas"})
    assert res.returncode != 0
    assert "ValueError: FASTMLP_BLAS must be one of ('numpy', 'scipy'), got 'openblas'" in res.stderr


# -- fresh processes: which library the kernels really call --------------------------

_PROBE = textwrap.dedent("""
    import ctypes, json, os
    import numpy as np
    import fastmlp as fm
    from fastmlp import blas

    real = blas.kernel_blas()
    calls = {"s": 0, "d": 0}
    spies = []  # ctypes callbacks forwarding to the real ?gemm (kept alive here)

    def spy(prefix, address, real_type):
        I = ctypes.POINTER(ctypes.c_int64 if real.int_bits == 64 else ctypes.c_int32)
        F = ctypes.POINTER(real_type)
        proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, I, I, I, F, ctypes.c_void_p,
                                 I, ctypes.c_void_p, I, F, ctypes.c_void_p, I)
        target = proto(address)
        def forward(*args):
            calls[prefix] += 1
            target(*args)
        spies.append(proto(forward))
        return ctypes.cast(spies[-1], ctypes.c_void_p).value

    if SPY:
        fake = blas.KernelBlas(real.source, real.filepath, real.sgemm, real.dgemm,
                               spy("s", real.sgemm_address, ctypes.c_float),
                               spy("d", real.dgemm_address, ctypes.c_double),
                               real.int_bits, real.reason)
        blas.kernel_blas = lambda: fake

    try:   # float32 products to BLAS too: the AVX-512 build's own GEMM loops take them
        from fastmlp.kernels import cython_mlp   # (kernels/_sgemm_blas.h), Numba's also
        cython_mlp._use_sgemm(0)
    except ImportError:
        pass

    def mapping_of(address):
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                if lo <= address < hi and len(fields) > 5:
                    return os.path.realpath(fields[5])

    out = {"info": fm.threads.blas_in_use(), "losses": {},
           "sgemm_in": mapping_of(real.sgemm_address), "dgemm_in": mapping_of(real.dgemm_address)}
    for backend in BACKENDS:
        for dtype in ("float32", "float64"):
            rng = np.random.default_rng(0)  # the same data on every backend
            model = fm.Model([fm.Dense(48, activation="relu"), fm.Dense(10, activation="softmax")],
                             input_dim=40, loss="cross_entropy", optimizer=fm.SGD(lr=0.1),
                             backend=backend, dtype=dtype, seed=0)
            X = rng.standard_normal((64, 40)).astype(dtype)
            T = np.eye(10, dtype=dtype)[np.arange(64) % 10]
            out["losses"][backend + dtype] = [float(model.train_on_batch(X, T)) for _ in range(3)]
    out["calls"] = calls
    print(json.dumps(out))
""")


def _run(code, env):
    env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def _probe(spy, backends, blas_choice=None):
    """The _PROBE script's output (json) from a fresh process."""
    env = {"FASTMLP_BLAS": blas_choice or "numpy"}
    code = f"SPY = {spy}\nBACKENDS = {backends!r}\n" + _PROBE
    res = _run(code, env)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


COMPILED = [b for b in fm.available_backends() if b != "numpy"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@pytest.mark.skipif(not NUMPY_BUNDLES_OPENBLAS, reason="NumPy does not bundle an OpenBLAS here")
def test_by_default_the_kernels_gemm_lies_in_numpys_openblas():
    out = _probe(False, [])
    assert out["info"]["source"] == "numpy", out["info"]["reason"]
    assert out["info"]["int_bits"] == 64  # scipy-openblas64: ILP64
    for where in (out["sgemm_in"], out["dgemm_in"]):
        assert Path(where).parent == NUMPY_LIBS.resolve() and "openblas" in Path(where).name


@pytest.mark.skipif(not COMPILED, reason="no compiled backend")
def test_the_kernels_call_exactly_the_blas_kernel_blas_names():
    """A counting spy in place of the named ?gemm sees both dtypes' products from every
    compiled backend, and training gives the same losses as without the spy: the
    kernels call that function, with its integer width, and no other BLAS."""
    plain = _probe(False, COMPILED + ["numpy"])
    spied = _probe(True, COMPILED)
    assert spied["calls"]["s"] > 0 and spied["calls"]["d"] > 0
    for key, losses in spied["losses"].items():
        assert losses == plain["losses"][key]


@pytest.mark.skipif(not COMPILED, reason="no compiled backend")
def test_fastmlp_blas_scipy_gives_the_same_training():
    """SciPy's LP64 BLAS (Numba through its integer-narrowing shim) trains as NumPy's."""
    default = _probe(False, COMPILED + ["numpy"])
    scipy = _probe(False, COMPILED, blas_choice="scipy")
    assert scipy["info"]["source"] == "scipy" and scipy["info"]["int_bits"] == 32
    for key, losses in scipy["losses"].items():
        tol = TOLERANCES[key[-7:]]
        np.testing.assert_allclose(losses, default["losses"][key], **tol)
        np.testing.assert_allclose(losses, default["losses"]["numpy" + key[-7:]], **tol)
