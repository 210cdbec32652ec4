"""The Cython extension's instruction-set builds (kernels/cython_mlp.py, cython_builds.py):
the widest one this processor runs is the one imported, the choice follows NumPy's CPU
table, a build the processor cannot run is refused, and every build this machine runs
computes what the reference computes, for every activation and loss, in both dtypes,
and the same bits as the baseline build.

The rest of the suite tests the build that is imported; each other build is run here
in a process of its own (FASTMLP_CYTHON_ISA), through fit, train_on_batch (the guarded
step), gradients, predict (small and BLAS-sized) and evaluate.
"""
import functools
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastmlp import activations
from fastmlp.kernels import cython_builds

cython_mlp = pytest.importorskip("fastmlp.kernels.cython_mlp")


def _built(name):
    return importlib.util.find_spec(f"fastmlp.kernels._cython_mlp_{name}") is not None


RUNNABLE_BUILT = [b for b in cython_builds.runnable() if _built(b)]


def test_the_widest_build_this_processor_runs_is_imported():
    assert cython_mlp.ISA == RUNNABLE_BUILT[0]
    assert cython_mlp.__name__ == f"fastmlp.kernels._cython_mlp_{cython_mlp.ISA}"
    from fastmlp.backends.cython import Engine
    assert Engine is cython_mlp.Engine


def test_every_build_is_built_on_x86_64_with_gcc_or_clang():
    if not (os.uname().machine in ("x86_64", "AMD64") and sys.platform != "win32"):
        pytest.skip("the instruction-set builds are for x86-64 with GCC or clang")
    assert [b for b in cython_builds.BUILDS if _built(b)] == list(cython_builds.BUILDS)


@pytest.mark.parametrize("features, runs", [
    ({}, ["base"]),                                               # no table: the baseline
    ({"AVX2": True, "FMA3": True}, ["base"]),                     # no F16C
    ({"AVX2": True, "FMA3": True, "F16C": True}, ["avx2", "base"]),
    ({"AVX512_SKX": True, "AVX2": True, "FMA3": True, "F16C": True},
     ["avx512", "avx2", "base"]),
    ({"AVX512_SKX": True, "AVX2": False, "FMA3": True, "F16C": True}, ["base"]),
    ({"AVX512F": True, "AVX2": True, "FMA3": True, "F16C": True}, ["avx2", "base"]),  # no BW/DQ/VL
])
def test_the_builds_a_processor_runs(features, runs):
    assert cython_builds.runnable(features) == runs


def test_a_build_the_processor_cannot_run_is_refused():
    with pytest.raises(ImportError, match="does not run that build"):
        cython_builds.load("avx512", features={})
    with pytest.raises(ImportError, match="choose one of avx512, avx2, base"):
        cython_builds.load("sse9")
    assert cython_builds.load("base", features={}).ISA == "base"


def test_an_unknown_build_in_the_environment_is_a_clear_error():
    env = {**os.environ, cython_builds.ENV: "avx1024"}
    res = subprocess.run([sys.executable, "-c", "import fastmlp.kernels.cython_mlp"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "FASTMLP_CYTHON_ISA='avx1024': choose one of avx512, avx2, base" in res.stderr
    # asked for by name, the backend says that, not that the kernels are missing
    code = ("import fastmlp as fm\n"
            "try:\n    fm.Model([fm.Dense(2)], input_dim=2, backend='cython')\n"
            "except ValueError as e:\n    print(e)\n")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert ("backend 'cython' is not available here: the Cython extension "
            "fastmlp.kernels.cython_mlp does not import (FASTMLP_CYTHON_ISA='avx1024': "
            "choose one of avx512, avx2, base)") in res.stdout, res.stdout
    assert "source tree" not in res.stdout
    # backend="auto" falls back to numba, and says why
    res = subprocess.run([sys.executable, "-c", "import fastmlp as fm\n"
                          "print(fm.Model([fm.Dense(2)], input_dim=2).backend)"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["numba"]
    assert ("RuntimeWarning: backend='auto' uses 'numba': the faster 'cython' backend is "
            "installed but does not import (the Cython extension fastmlp.kernels.cython_mlp "
            "does not import (FASTMLP_CYTHON_ISA='avx1024': ") in res.stderr, res.stderr


# Every activation as a hidden layer (prelu's alpha trained too), each loss with its
# output, both dtypes: fit (shuffled mini-batches), the guarded step, the gradient, predict
# of 3 rows (the GEMV loops) and of 40 (BLAS), evaluate, all with _sgemm.h's loops off
# (BLAS's bits in every build); then predict of 40 rows and the training with them on.
# Prints a JSON of the results.
RUN = r"""
import json, sys, warnings
import numpy as np
import fastmlp as fm
from fastmlp import activations
from fastmlp.kernels import cython_mlp
backend = sys.argv[1]
out = {"isa": cython_mlp.ISA if backend == "cython" else None, "runs": {},
       "sgemm": cython_mlp._use_sgemm() if backend == "cython" else 0}


def loops(on):   # _sgemm.h's loops (the AVX-512 build's float32 GEMMs) on or off; was
    return cython_mlp._use_sgemm(on) if backend == "cython" else -1


def blas_only(m, X):   # predict, every GEMM by BLAS (_sgemm.h's loops off where built)
    was = loops(0)
    try:
        return m.predict(X).astype(float).ravel().tolist()
    finally:
        loops(was)


def trained(X, T, loss, hidden, output, k, dtype):
    m = fm.Model([fm.Dense(37, hidden), fm.Dense(k, output)], input_dim=11, loss=loss,
                 optimizer=fm.Adam(lr=0.01), backend=backend, dtype=dtype, seed=3)
    h = m.fit(X, T, epochs=3, batch_size=16)
    step = m.train_on_batch(X[:16], T[:16])
    return m, [float(v) for v in h.history["loss"]] + [float(step)]


warnings.simplefilter("ignore")   # step and sign pass no gradient, and say so
rng = np.random.default_rng(0)
cases = [(a, "softmax", "cross_entropy") for a in sorted(activations.ACTIVATIONS)
         if a != "softmax"]
cases += [("tanh", "sigmoid", "binary_cross_entropy"), ("sigmoid", "linear", "mse"),
          ("relu", "softmax", "mse")]   # softmax's Jacobian under MSE
for dtype in ("float32", "float64"):
    for hidden, output, loss in cases:
        k = 1 if loss == "binary_cross_entropy" else 3
        X = rng.normal(size=(40, 11)).astype(dtype)
        T = rng.uniform(size=(40, k)).astype(dtype)
        if loss == "cross_entropy":
            T = np.eye(k, dtype=dtype)[rng.integers(0, k, 40)]
        was = loops(0)   # every product by BLAS (or the small loops): the builds' own bits
        m, losses = trained(X, T, loss, hidden, output, k, dtype)
        g_loss, g = m.gradient_vector(X, T)   # (loss, flat gradient)
        run = {
            "losses": losses,
            "weights": [w.astype(float).ravel().tolist() for w in m.get_weights()],
            "grads": [[float(g_loss)] + np.asarray(g, float).tolist()],
            "small": m.predict(X[:3]).astype(float).ravel().tolist(),
            "evaluate": float(m.evaluate(X, T)),
        }
        loops(was)
        run["blas"] = m.predict(X).astype(float).ravel().tolist()   # 40 rows: loops where built
        run["blas_only"] = blas_only(m, X)
        run["own_losses"] = trained(X, T, loss, hidden, output, k, dtype)[1]   # loops on
        out["runs"][f"{dtype} {hidden} {output} {loss}"] = run
print(json.dumps(out))
"""


@functools.lru_cache(maxsize=None)
def _run(backend, isa=None):
    """RUN's results for a backend (and a Cython build), once per test session."""
    env = dict(os.environ)
    env.pop(cython_builds.ENV, None)
    if isa:
        env[cython_builds.ENV] = isa
    res = subprocess.run([sys.executable, "-c", RUN, backend], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def reference():
    return _run("numpy")


@pytest.mark.parametrize("isa", cython_builds.BUILDS)
def test_every_build_computes_what_the_reference_computes(isa, reference):
    if isa not in RUNNABLE_BUILT:
        pytest.skip(f"the {isa} build is not built or this processor does not run it")
    got = _run("cython", isa)
    assert got["isa"] == isa
    assert got["runs"].keys() == reference["runs"].keys()
    for case, want in reference["runs"].items():
        rtol, atol = (2e-3, 2e-4) if case.startswith("float32") else (1e-9, 1e-11)
        for field, value in got["runs"][case].items():
            if field == "weights" or field == "grads":
                for a, b in zip(value, want[field]):
                    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{case} {field}")
            else:
                np.testing.assert_allclose(value, want[field], rtol=rtol, atol=atol,
                                           err_msg=f"{case} {field}")


def test_every_build_gives_the_baseline_builds_bits():
    """The builds differ in vector width only: -ffp-contract=off keeps every a * b + c two
    roundings (but the tiny products' loops, one fmaf in every build), and no sum is
    reordered, so results are the same bits (the GEMV loops pick
    their copy at run time in every build). But for one thing: the AVX-512 build's
    float32 GEMMs (predict's batches of more than 8 rows, and training's products,
    _sgemm_blas.h) sum in _sgemm.h's loops, in another order than BLAS: those agree to
    rounding, and with the loops off, bit for bit."""
    if "base" not in RUNNABLE_BUILT or len(RUNNABLE_BUILT) == 1:
        pytest.skip("one build only here")
    base = _run("cython", "base")["runs"]
    assert _run("cython", "base")["sgemm"] == 0
    for isa in RUNNABLE_BUILT:
        if isa == "base":
            continue
        run = _run("cython", isa)
        assert run["sgemm"] == (isa == "avx512")
        differ = set()
        got = run["runs"]
        for case, want in base.items():
            for field, value in want.items():
                if (field in ("blas", "own_losses") and run["sgemm"]
                        and case.startswith("float32")):
                    np.testing.assert_allclose(got[case][field], value, rtol=1e-5, atol=1e-6,
                                               err_msg=f"{isa}: {case} {field}")
                    differ |= {field} if got[case][field] != value else set()
                    continue
                np.testing.assert_array_equal(np.asarray(got[case][field], dtype=object),
                                              np.asarray(value, dtype=object),
                                              err_msg=f"{isa}: {case} {field}")
        if run["sgemm"]:
            assert differ == {"blas", "own_losses"}, f"only {differ} ran _sgemm.h's loops"


def test_the_cases_cover_every_activation_and_loss(reference):
    hidden_and_output = {n for case in reference["runs"] for n in case.split()[1:3]}
    assert set(activations.ACTIVATIONS) <= hidden_and_output
    assert {case.split()[3] for case in reference["runs"]} == {
        "cross_entropy", "binary_cross_entropy", "mse"}
