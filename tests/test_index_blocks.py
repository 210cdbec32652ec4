"""evaluate, gradients and gradient_vector with class indices whose one-hot targets would
be large: taken a block of rows at a time (Model._index_blocks), the same loss and
gradient as the one-hot targets in one piece, in bounded memory, with the same errors."""
import tracemalloc

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import rules

K = 7   # classes


def model(backend, dtype, k=K, width=5):
    return fm.Model([fm.Dense(6, "tanh"), fm.Dense(k, "softmax")], input_dim=width,
                    loss="cross_entropy", backend=backend, dtype=dtype, seed=3)


@pytest.fixture
def blocks_always(monkeypatch):
    """Every call with class indices takes the blocks, of TRAIN_ROWS rows each."""
    monkeypatch.setattr(fm.Model, "_ONE_HOT_BYTES", 0)
    monkeypatch.setattr(fm.Model, "_ONE_HOT_BLOCK_BYTES", 1)


def data(dtype, rows, k=K, width=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, width)).astype(dtype), rng.integers(0, k, size=rows)


def rtol(dtype):
    return 1e-5 if dtype == "float32" else 1e-12


# a row count that leaves a short last block, and one inside a single block
@pytest.mark.parametrize("rows", [2 * rules.TRAIN_ROWS + 451, 300])
def test_blocks_give_the_one_hot_loss_and_gradient(backend, dtype, rows, blocks_always):
    m = model(backend, dtype)
    X, y = data(dtype, rows)
    T = np.eye(K, dtype=dtype)[y]
    want_loss = m.evaluate(X, T)
    want_loss_g, want = m.gradients(X, T)
    want_vector = m.gradient_vector(X, T)[1]
    np.testing.assert_allclose(m.evaluate(X, y), want_loss, rtol=rtol(dtype))
    loss, grads = m.gradients(X, y)
    np.testing.assert_allclose(loss, want_loss_g, rtol=rtol(dtype))
    scale = max(float(np.abs(want_vector).max()), 1e-30)
    flat = np.concatenate([np.ravel(a) for a in grads])
    np.testing.assert_allclose(flat, want_vector, rtol=0, atol=scale * rtol(dtype) * 10)
    loss_v, vector = m.gradient_vector(X, y.reshape(-1, 1))   # (n, 1) indices too
    np.testing.assert_allclose(loss_v, want_loss, rtol=rtol(dtype))
    np.testing.assert_allclose(vector, want_vector, rtol=0, atol=scale * rtol(dtype) * 10)
    assert flat.dtype == np.dtype(dtype) and vector.dtype == np.dtype(dtype)


def test_the_blocks_are_whole_workspaces_of_rows(blocks_always, monkeypatch):
    m = model("numpy", "float64")
    X, y = data("float64", 2 * rules.TRAIN_ROWS + 451)
    seen = []
    evaluate = m.engine.evaluate

    def spy(Xb, T):
        seen.append((len(Xb), T.shape, float(T.sum())))
        return evaluate(Xb, T)
    monkeypatch.setattr(m.engine, "evaluate", spy)
    m.evaluate(X, y)
    step = rules.TRAIN_ROWS
    assert seen == [(step, (step, K), step), (step, (step, K), step), (451, (451, K), 451)]


def test_gradient_vector_into_out_and_overlapping_x(backend, blocks_always):
    m = model(backend, "float64")
    X, y = data("float64", rules.TRAIN_ROWS + 10)
    want = m.gradient_vector(X, np.eye(K)[y])[1]
    out = np.full(len(want), np.nan)
    loss, got = m.gradient_vector(X, y, out=out)
    assert got is out
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-14)
    # out over X's own memory: X is read whole before out is written
    buffer = np.zeros(len(want) + X.size)
    Xv = buffer[:X.size].reshape(X.shape)
    Xv[...] = X
    outv = buffer[:len(want)]
    m.gradient_vector(Xv, y, out=outv)
    np.testing.assert_allclose(outv, want, rtol=1e-10, atol=1e-14)


def test_errors_are_the_ones_of_the_one_piece_path(backend, monkeypatch):
    m = model(backend, "float32")
    X, y = data("float32", 50)
    Xn = X.copy()
    Xn[3, 2] = np.nan
    cases = [("evaluate", X, np.where(np.arange(50) == 49, K, y)),      # beyond k
             ("gradients", X, np.where(np.arange(50) == 49, -1, y)),    # negative
             ("evaluate", X, y[:-1]),                                   # rows
             ("gradient_vector", Xn, y),                                # NaN in X
             ("evaluate", X[:, :4], y),                                 # columns
             ("gradients", X.astype(np.float64) * 1e300, y),            # beyond float32
             ("evaluate", X[:1], np.array(1)),                          # 0-d
             ("evaluate", X, y.reshape(-1, 1, 1))]                      # 3-d

    def errors():
        found = []
        for method, A, B in cases:
            with pytest.raises((ValueError, TypeError)) as info:
                getattr(m, method)(A, B)
            found.append((type(info.value), str(info.value)))
        return found
    want = errors()
    monkeypatch.setattr(fm.Model, "_ONE_HOT_BYTES", 0)
    monkeypatch.setattr(fm.Model, "_ONE_HOT_BLOCK_BYTES", 1)
    assert errors() == want


def test_labels_that_are_not_indices_keep_their_meaning(blocks_always):
    """classes_ other than 0..k-1 map the labels: the blocks are not taken."""
    m = model("numpy", "float64", k=3)
    X, y = data("float64", 40, k=3)
    labels = np.array([10, 20, 30])[y]
    m.train_on_batch(X, labels)   # learns classes_ = [10, 20, 30]
    np.testing.assert_allclose(m.evaluate(X, labels), m.evaluate(X, np.eye(3)[y]),
                               rtol=1e-12)


def test_large_indices_stay_within_bounded_memory(compiled_backend):
    """40,000 indices of 1,000 classes: 160 MB of float32 one-hot targets in one piece."""
    k, rows = 1000, 40_000
    m = model(compiled_backend, "float32", k=k, width=4)
    X, y = data("float32", rows, k=k, width=4)
    m.evaluate(X[:5000], y[:5000])   # compiled, and the workspaces grown to whole chunks
    m.gradients(X[:5000], y[:5000])
    tracemalloc.start()
    try:
        m.evaluate(X, y)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        m.gradients(X, y)
        _, peak_g = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one_hot = rows * k * 4
    assert peak < one_hot / 4 and peak_g < one_hot / 4, (peak, peak_g)
