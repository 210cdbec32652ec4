"""The numba backend's small-batch predict (issue 10): a predict or evaluate chunk of at
most fastmlp.rules.PREDICT_SMALL_ROWS rows computes each layer's x W with the Cython
backend's C GEMV loops (kernels/_gemv.h), called by symbol name (kernels/numba_gemv.py),
and BLAS otherwise. The symbol is bound to a stand-in (numba_blas's gemm_nn, what every
chunk ran before) when the Cython extension does not import.

Checked here: the numba small path gives the Cython small path's outputs bit for bit
(where both backends' bias and activation code gives equal bits: relu, leaky_relu,
linear), and evaluate takes it too; the stand-in, in a process where the extension is
made unimportable, gives the BLAS path's bits; the kernels compiled into an empty
on-disk cache load in a fresh process without compiling, with the extension and
without it. (tests/test_predict_checked.py checks the outputs against the reference.)
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import rules

CUT = rules.PREDICT_SMALL_ROWS
# Widths off every SIMD width (whole 16-float tiles and a tail; tails only), 784 inputs
# so that BLAS and the GEMV loops sum in different orders.
INPUTS, WIDTHS = 784, (300, 37, 5)

needs_both = pytest.mark.skipif(
    not {"numba", "cython"} <= set(fm.available_backends()),
    reason="needs the numba and the cython backends")


def _models(dtype, hidden="relu", output="linear", loss="mse"):
    """{backend: model} for numba and cython with the same noisy weights."""
    layers = ([fm.Dense(k, activation=hidden) for k in WIDTHS[:-1]]
              + [fm.Dense(WIDTHS[-1], activation=output)])
    models = {b: fm.Model(layers, input_dim=INPUTS, loss=loss, backend=b, dtype=dtype, seed=3)
              for b in ("numba", "cython")}
    rng = np.random.default_rng(3)
    weights = [w + 0.05 * rng.standard_normal(w.shape) for w in models["numba"].get_weights()]
    for m in models.values():
        m.set_weights(weights)
    return models


def _x(n, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal((n, INPUTS)).astype(dtype)


@needs_both
@pytest.mark.parametrize("hidden", ["relu", "leaky_relu", "linear"])
def test_small_predicts_are_the_cython_small_path_bit_for_bit(dtype, hidden):
    models = _models(dtype, hidden)
    for n in (1, 2, 3, 4, 5, 7, CUT):
        X = _x(n, dtype, seed=n)
        np.testing.assert_array_equal(models["numba"].predict(X), models["cython"].predict(X),
                                      err_msg=f"{n} rows")


@needs_both
def test_the_small_path_is_the_gemv_and_bigger_chunks_are_blas(dtype):
    """The numba kernel with the cut-off at 0 (every chunk through BLAS) differs from
    the small path in the last bits somewhere, so the test above could tell them apart;
    a chunk over the cut-off gives the same bits either way."""
    models = _models(dtype)
    engine = models["numba"].engine
    X = _x(CUT + 1, dtype)

    def kernel(X, small):
        out = np.empty((len(X), WIDTHS[-1]), dtype=dtype)
        engine._predict(engine.theta, X, engine._plan, engine._fparams, engine._predict_rows,
                        out, 0, small, 0)
        return out

    small = [kernel(X[:n], CUT) for n in range(1, CUT + 1)]
    blas = [kernel(X[:n], 0) for n in range(1, CUT + 1)]
    assert any(not np.array_equal(s, b) for s, b in zip(small, blas))
    for s, b in zip(small, blas):
        np.testing.assert_allclose(s, b, rtol=1e-4 if dtype == "float32" else 1e-12,
                                   atol=1e-5 if dtype == "float32" else 1e-12)
    np.testing.assert_array_equal(kernel(X, CUT), kernel(X, 0))


@needs_both
def test_evaluate_takes_the_small_path(dtype):
    """evaluate's mean squared error of a small batch, summed in its order (row by row,
    each square in the model dtype, the sum in float64), from the outputs of the Cython
    small path: the same number exactly."""
    models = _models(dtype)
    for n in (1, 3, CUT):
        X = _x(n, dtype, seed=n)
        T = np.random.default_rng(n).standard_normal((n, WIDTHS[-1])).astype(dtype)
        Y = models["cython"].predict(X)
        total = 0.0
        for d in (Y - T).ravel():
            total += float(d * d)
        assert models["numba"].evaluate(X, T) == total / n


# Run in a fresh process: builds numba models in both dtypes, prints which code the
# GEMV symbol is bound to, then for 1..CUT + 1 rows whether the predict equals the
# kernel's all-BLAS path bit for bit, the largest relative error against the NumPy
# reference, then the predicts themselves and the numba kernels' cache misses.
# argv[1] "blocked": the Cython extension cannot be imported.
_PROCESS = """
import sys
if sys.argv[1] == "blocked":
    sys.modules["fastmlp.kernels.cython_mlp"] = None   # its import raises ImportError
import numpy as np
import fastmlp as fm
from fastmlp.kernels import numba_activations, numba_gemv, numba_layers, numba_train
from numba.core.dispatcher import Dispatcher
print(numba_gemv.BOUND, "cython" in fm.available_backends())
results = []
for dtype in sys.argv[2].split(","):
    models = {b: fm.Model([fm.Dense(300, "relu"), fm.Dense(37, "tanh"), fm.Dense(5, "softmax")],
                          input_dim=784, loss="cross_entropy", backend=b, dtype=dtype, seed=1)
              for b in ("numba", "numpy")}
    e = models["numba"].engine
    X = np.random.default_rng(0).standard_normal((9, 784)).astype(dtype)
    T = np.eye(5, dtype=dtype)[np.arange(9) % 5]
    same, err = [], 0.0
    for n in range(1, 10):
        y = models["numba"].predict(X[:n])
        blas = np.empty_like(y)
        e._predict(e.theta, X[:n], e._plan, e._fparams, e._predict_rows, blas, 0, 0, 0)
        same.append(bool(np.array_equal(y, blas)))
        ref = models["numpy"].predict(X[:n])
        err = max(err, float(np.max(np.abs(y - ref) / (np.abs(ref) + 1e-6))))
        results += y.ravel().tolist()
    results += [models["numba"].evaluate(X[:3], T[:3]), models["numba"].evaluate(X, T)]
    print(dtype, *same, err)
print(repr(results))
kernels = [d for mod in (numba_activations, numba_layers, numba_train) for d in vars(mod).values()
           if isinstance(d, Dispatcher) and d.py_func.__module__ == mod.__name__]
print(sum(sum(d.stats.cache_misses.values()) for d in kernels))
"""


def _process(role, dtypes, cache_dir=None):
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    done = subprocess.run([sys.executable, "-c", _PROCESS, role, ",".join(dtypes)], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _check_outputs(lines, dtypes, bound):
    """The process's lines: bound to ``bound``; small predicts the BLAS path's bits only
    under the stand-in, and near the reference either way."""
    assert lines[0] == f"{bound} {bound == 'cython'}"
    for line, dtype in zip(lines[1:], dtypes):
        name, *same, err = line.split()
        assert name == dtype
        same = [s == "True" for s in same]
        assert same[CUT] is True          # CUT + 1 rows: BLAS in both
        if bound == "fallback":
            assert all(same)              # the stand-in runs gemm_nn, as the BLAS path
        assert float(err) < (1e-4 if dtype == "float32" else 1e-10)


@pytest.mark.skipif("numba" not in fm.available_backends(),
                    reason="the numba backend does not import here")
def test_the_fallback_symbol_runs_when_the_cython_extension_does_not_import():
    dtypes = ("float32", "float64")
    _check_outputs(_process("blocked", dtypes), dtypes, "fallback")


@needs_both
def test_cached_kernels_load_in_fresh_processes_with_and_without_the_extension(tmp_path):
    dtypes = ("float32",)
    compiled = _process("plain", dtypes, tmp_path)
    _check_outputs(compiled, dtypes, "cython")
    assert int(compiled[-1]) > 0
    loaded = _process("plain", dtypes, tmp_path)
    assert loaded[:-1] == compiled[:-1]      # the same numbers, bit for bit
    assert loaded[-1] == "0"                 # nothing compiled again
    blocked = _process("blocked", dtypes, tmp_path)
    _check_outputs(blocked, dtypes, "fallback")
    assert blocked[-1] == "0"                # the cached kernels call the stand-in
