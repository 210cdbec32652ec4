"""Per-layer gradient norms summed inside the compiled training step.

``train_epoch(..., norms=buf)`` ADDS, for every optimiser step, ||dE/dW_l||^2 of
the batch's mean loss (weights only: not b, not prelu's alpha, before weight
decay) to buf[l]. Checked against the NumPy reference's gradients replayed step
by step through Model.gradients, and checked to leave training itself unchanged.
"""
import numpy as np
import pytest

import fastmlp as fm

# A batch bigger than the compiled backends' 1024-row workspace: its gradient is
# accumulated over chunks, and the norm must be the whole batch's.
BIG_BATCH = 1100
# Learning rates small enough that float32 runs on two backends stay close over an
# epoch of per-sample steps (at lr 0.05 with momentum they drift apart by 4 %).
OPTIMIZERS = {
    "sgd": lambda: fm.SGD(lr=0.01),                           # plain: the fold is turned off
    "sgd_decay": lambda: fm.SGD(lr=0.01, weight_decay=0.01),  # numba folds decay too
    "momentum": lambda: fm.SGD(lr=0.01, momentum=0.9),
    "adam": lambda: fm.Adam(lr=0.003),
}
# Plain SGD on a batch that fits the workspace is folded into the GEMM without
# norms and not with them: the same maths, rounded differently. A bigger batch is
# never folded.
FOLDED = {"sgd", "sgd_decay"}


def _model(backend, dtype, optimizer):
    # prelu: a trainable alpha whose gradient must stay out of the norms
    layers = [fm.Dense(6, "prelu"), fm.Dense(4, "tanh"), fm.Dense(3)]
    return fm.Model(layers, input_dim=5, loss="mse", optimizer=OPTIMIZERS[optimizer](),
                    backend=backend, dtype=dtype, seed=7)


def _data(n, dtype):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(n, 5)).astype(dtype)
    T = np.tanh(X[:, :3] + 0.5 * X[:, 3:4]).astype(dtype)
    return X, T


def _rows(batch_size):
    """Rows of the epoch: two whole big batches (no short batch that would fit the
    workspace and so be folded), or 40 rows in batches of 1 or 7 (a short last one)."""
    return 2 * BIG_BATCH if batch_size == BIG_BATCH else 40


def _epoch(model, X, T, perm, batch_size, **norms):
    """One epoch through the backend contract, as Model.fit calls it; ``norms=buf``
    passed on as given, left out when not given."""
    return model.engine.train_epoch(X, T, perm, batch_size,
                                     **norms)


def _hand_norms(dtype, optimizer, X, T, perm, batch_size):
    """Sum over steps of ||dE/dW_l||^2, replayed on the reference with Model.gradients."""
    model = _model("numpy", dtype, optimizer)
    total = np.zeros(3)
    for start in range(0, len(perm), batch_size):
        idx = perm[start:start + batch_size]
        _, grads = model.gradients(X[idx], T[idx])
        weights = [g for g in grads if g.ndim == 2]   # W (in, out); b and alpha are 1-D
        assert len(weights) == 3
        total += [np.sum(np.square(g, dtype=np.float64)) for g in weights]
        model.train_on_batch(X[idx], T[idx])
    return total


@pytest.mark.parametrize("batch_size", [1, 7, BIG_BATCH])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_norms_match_reference_gradients(backend, dtype, tol, optimizer, batch_size):
    X, T = _data(_rows(batch_size), dtype)
    perm = np.random.default_rng(1).permutation(len(X)).astype(np.int64)
    expected = _hand_norms(dtype, optimizer, X, T, perm, batch_size)
    model = _model(backend, dtype, optimizer)
    norms = np.ones(3)                                   # added to, never overwritten
    _epoch(model, X, T, perm, batch_size, norms=norms)
    assert np.all(expected > 0)
    np.testing.assert_allclose(norms - 1, expected, rtol=tol["rtol"])


@pytest.mark.parametrize("batch_size", [1, 7, BIG_BATCH])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_norms_leave_training_unchanged(backend, dtype, tol, optimizer, batch_size):
    X, T = _data(_rows(batch_size), dtype)
    perm = np.random.default_rng(2).permutation(len(X)).astype(np.int64)
    plain, watched = _model(backend, dtype, optimizer), _model(backend, dtype, optimizer)
    loss = _epoch(plain, X, T, perm, batch_size)
    norms = np.zeros(3)
    loss_watched = _epoch(watched, X, T, perm, batch_size, norms=norms)
    assert np.all(norms > 0) and np.all(np.isfinite(norms))
    assert int(watched.engine.state.step[0]) == int(plain.engine.state.step[0]) == -(-len(X) // batch_size)
    if optimizer in FOLDED and batch_size != BIG_BATCH:
        np.testing.assert_allclose(watched.engine.theta, plain.engine.theta, **tol)
        assert loss_watched == pytest.approx(loss, rel=tol["rtol"] * 10, abs=tol["atol"])
    else:
        # the same passes in the same order: bit for bit
        np.testing.assert_array_equal(watched.engine.theta, plain.engine.theta)
        np.testing.assert_array_equal(watched.engine.state.buffers, plain.engine.state.buffers)
        assert loss_watched == loss


def test_norms_none_is_the_default(backend, dtype):
    X, T = _data(40, dtype)
    perm = np.arange(40, dtype=np.int64)
    a, b = _model(backend, dtype, "adam"), _model(backend, dtype, "adam")
    loss_a = _epoch(a, X, T, perm, 7)
    loss_b = _epoch(b, X, T, perm, 7, norms=None)
    assert np.isfinite(loss_a) and loss_a == loss_b
    np.testing.assert_array_equal(a.engine.theta, b.engine.theta)
    # and training still learns
    for _ in range(20):
        last = _epoch(a, X, T, perm, 7)
    assert last < loss_a


@pytest.mark.parametrize("bad", [np.zeros(2), np.zeros(4), np.zeros(3, dtype=np.float32),
                                 np.zeros((3, 1)), [0.0, 0.0, 0.0]])
def test_bad_norms_buffer_is_refused(backend, bad):
    X, T = _data(40, "float64")
    model = _model(backend, "float64", "adam")
    before = model.engine.theta.copy()
    with pytest.raises((ValueError, TypeError), match="norms"):
        _epoch(model, X, T, np.arange(40, dtype=np.int64), 7, norms=bad)
    np.testing.assert_array_equal(model.engine.theta, before)


def test_read_only_norms_buffer_is_refused(backend):
    X, T = _data(40, "float64")
    norms = np.zeros(3)
    norms.flags.writeable = False
    model = _model(backend, "float64", "adam")
    with pytest.raises(ValueError, match="norms"):
        _epoch(model, X, T, np.arange(40, dtype=np.int64), 7, norms=norms)


def test_fit_records_grad_norm(backend, dtype, tol):
    """Model.fit(gradient_norms=True): per epoch, sqrt(sum of squares / steps) per layer."""
    X, T = _data(40, dtype)
    model = _model(backend, dtype, "momentum")
    history = model.fit(X, T, epochs=2, batch_size=7, shuffle=False, gradient_norms=True)
    grad_norm = history.history["grad_norm"]
    assert len(grad_norm) == 2 and all(len(epoch) == 3 for epoch in grad_norm)
    expected = np.sqrt(_hand_norms(dtype, "momentum", X, T, np.arange(40), 7) / 6)
    np.testing.assert_allclose(grad_norm[0], expected, rtol=tol["rtol"])
