"""Memory: training does not leak, a compiled train step allocates nothing once
its workspace is warm, and predict on 10 million rows stays within the output
plus a bounded block of activations."""
import gc
import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import rules, validation

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1 << 20


def rss():
    """Resident set size of this process in bytes (/proc/self/statm, field 2)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def classifier(backend, dtype="float32", optimizer=None):
    return fm.Model([fm.Dense(64, activation="relu"), fm.Dense(32, activation="tanh"),
                     fm.Dense(3, activation="softmax")], input_dim=20, loss="cross_entropy",
                    optimizer=optimizer or fm.Adam(lr=1e-3), backend=backend, dtype=dtype, seed=0)


def batch(dtype, rows=256):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, 20)).astype(dtype)
    T = np.eye(3, dtype=dtype)[rng.integers(0, 3, size=rows)]
    return X, T


def test_10000_train_steps_grow_rss_by_less_than_5_mb(backend):
    model = classifier(backend)
    X, T = batch("float32", rows=32)
    for _ in range(500):  # warm: JIT, workspaces, allocator pools
        model.train_on_batch(X, T)
    gc.collect()
    before = rss()
    for _ in range(10_000):
        model.train_on_batch(X, T)
    gc.collect()
    grown = rss() - before
    assert grown < 5 * MB, f"{backend}: 10,000 train steps grew RSS by {grown / MB:.1f} MB"


def test_fit_for_10000_steps_grows_rss_by_less_than_5_mb(backend):
    model = classifier(backend, optimizer=fm.SGD(lr=1e-3, momentum=0.9))
    rng = np.random.default_rng(1)
    X, labels = rng.normal(size=(1000, 20)), rng.integers(0, 3, size=1000)
    model.fit(X, labels, epochs=5, batch_size=10)
    gc.collect()
    before = rss()
    model.fit(X, labels, epochs=100, batch_size=10)  # 100 epochs x 100 batches
    gc.collect()
    grown = rss() - before
    assert grown < 5 * MB, f"{backend}: fit over 10,000 steps grew RSS by {grown / MB:.1f} MB"


@pytest.mark.parametrize("optimizer", [lambda: fm.SGD(lr=1e-3, momentum=0.9), lambda: fm.Adam()],
                         ids=["sgd", "adam"])
def test_compiled_train_step_allocates_nothing(compiled_backend, dtype, optimizer):
    """tracemalloc sees every NumPy, Python and Numba-runtime allocation: a warm train
    step makes none (the float it returns aside), neither kept nor temporary."""
    model = classifier(compiled_backend, dtype, optimizer())
    X, T = batch(dtype)
    engine = model.engine
    for _ in range(5):
        engine.train_step(X, T)
    gc.collect()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(200):
            engine.train_step(X, T)
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # One batch of activations is 256 x 64 x itemsize >= 64 KB; allow a few small objects.
    assert end - start < 1024 and peak - start < 4096, (
        f"{compiled_backend}: 200 warm train steps: kept {end - start} B, peak {peak - start} B")


def test_tracemalloc_sees_numba_allocations():
    """Numba's runtime allocates through PyMem_RawMalloc, which tracemalloc traces, so the
    test above catches a temporary array in a Numba kernel too. (Each array argument
    passed in from Python costs a ~100 B MemInfo; that is not a buffer and stays under it.)"""
    numba = pytest.importorskip("numba")

    @numba.njit
    def temporary(x):
        t = np.empty(10_000)
        t[:] = x[0]
        return t.sum()

    x = np.ones(4)
    temporary(x)
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        temporary(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - start >= 80_000


PREDICT_SCRIPT = r"""
import json, re, sys
import numpy as np
import fastmlp as fm

def peak():
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) * 1024

backend, rows = sys.argv[1], int(sys.argv[2])
model = fm.Model([fm.Dense(16, activation="tanh"), fm.Dense(16, activation="relu"), fm.Dense(1)],
                 input_dim=2, backend=backend, seed=0)
X = np.random.default_rng(0).normal(size=(rows, 2)).astype(np.float32)
small = model.predict(X[:1000])          # warm: JIT, workspaces
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")                          # reset the peak to the current RSS
before = peak()
y = model.predict(X)
grown = peak() - before
ok = y.shape == (rows, 1) and np.isfinite(y).all() and np.allclose(y[:1000], small, rtol=1e-5, atol=1e-6)
print(json.dumps({"grown": grown, "output": y.nbytes, "ok": bool(ok)}))
"""


def test_predict_on_10_million_rows_in_bounded_memory(backend):
    rows = 10_000_000
    out = subprocess.run([sys.executable, "-c", PREDICT_SCRIPT, backend, str(rows)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["ok"], r
    # Unchunked, the hidden activations alone would be 10M x 32 x 4 B x 2 = 2.5 GB.
    limit = r["output"] + 48 * MB
    assert r["grown"] < limit, (f"{backend}: predict on {rows} rows raised peak RSS by "
                                f"{r['grown'] / MB:.0f} MB (output {r['output'] / MB:.0f} MB)")


def test_model_predict_chunks_match_one_call(backend, dtype):
    """Predict over several chunks of rows (fastmlp.rules.predict_rows) equals the
    backend on each chunk, and writes into the output the caller passed.

    Bit for bit per chunk; a row's bits may depend on which chunk holds it (BLAS
    picks its kernel by the number of rows), so whole calls agree within rounding."""
    model = classifier(backend, dtype)
    rows = rules.predict_rows(model.net, model.dtype)
    X = np.random.default_rng(4).normal(size=(2 * rows + 17, 20)).astype(dtype)
    y = model.predict(X)
    for start in (0, rows, 2 * rows):
        part = X[start:start + rows]
        np.testing.assert_array_equal(y[start:start + rows], model.engine.predict(part))
    out = np.full((len(X), 3), np.nan, dtype=dtype)
    assert model.engine.predict(X, out) is out
    np.testing.assert_array_equal(out, y)


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("layers, inputs", [([fm.Dense(16, "tanh"), fm.Dense(1)], 4),
                                            # a chunk sized by its 1-unit layer alone was
                                            # 131,072 rows: X converted 411 MB at a time
                                            ([fm.Dense(1, "sigmoid")], 784)],
                         ids=["4-16-1", "784-1"])
def test_predict_converts_a_float64_x_a_block_at_a_time(backend, scaled, layers, inputs):
    """A float64 X for a float32 model (a pandas frame, say) was converted whole, with
    input scaling through two float64 temporaries of X's size: 10 million rows of 20
    features took 0.8 GB more, 3 GB scaled. Now converted a block of rows at a time
    (rules.convert_rows, a multiple of the predict chunk): the same outputs bit for bit,
    a NaN still named by its row in X."""
    model = fm.Model(layers, input_dim=inputs, backend=backend, seed=0)
    if scaled:
        model.set_input_scaling(np.ones(inputs), np.full(inputs, 2.0))
    X = np.random.default_rng(0).normal(size=(4 * rules.convert_rows(model.net, model.dtype)
                                              + 5, inputs))
    whole = validation.check_inputs(X, inputs, model.dtype, model.input_scaling)
    want = model.engine.predict(whole)
    del whole
    model.predict(X[:10])
    tracemalloc.start()
    try:
        got = model.predict(X)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, want)
    # a block's float32 copy (half a block), scaled two float64 temporaries of a block
    # more; whole, X (4 blocks) took 2 blocks more, scaled 10
    bound = got.nbytes + (3 if scaled else 1) * rules.CONVERT_BYTES + MB
    assert peak < bound, (peak / MB, bound / MB)
    X[len(X) - 3, 2] = np.nan
    with pytest.raises(ValueError, match=f"first at row {len(X) - 3}, column 2"):
        model.predict(X)
