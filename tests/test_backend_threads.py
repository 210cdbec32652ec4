"""One model's readers from many threads at once (issue 8, item 2): gradients,
evaluate and predict called from 4 threads x 30 times each give the
single-thread result bit for bit, on every backend and dtype.

The Numba backend once shared one training workspace between concurrent
gradient calls (59 of 120 results wrong). Each thread uses its own batch size,
one of them above the compiled backends' 1024-row chunk, so a workspace
resized or reused under another call would show. BLAS is held to one thread:
its bits may depend on its thread count, and this checks the backends, not BLAS.
"""

import numpy as np
import pytest
import threadpoolctl

import fastmlp as fm
from helpers import run_in_threads

N_THREADS, CALLS = 4, 30
ROWS = (3, 64, 300, 1500)  # one batch size per thread


def _model(backend, dtype):
    return fm.Model([fm.Dense(24, activation="prelu"), fm.Dense(16, activation="tanh"),
                     fm.Dense(4, activation="softmax")], input_dim=10, loss="cross_entropy",
                    optimizer=fm.Adam(lr=1e-2), backend=backend, dtype=dtype, seed=0)


def _data(rows, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, 10)), rng.integers(0, 4, size=rows)


def _as_bytes(result):
    """A result (array, float, or (loss, [grads])) as bytes, for bit-for-bit comparison."""
    if isinstance(result, tuple):
        loss, grads = result
        return np.float64(loss).tobytes() + b"".join(g.tobytes() for g in grads)
    return np.asarray(result).tobytes()


CALLS_BY_NAME = {
    "gradients": lambda m, X, Y: m.gradients(X, Y),
    "evaluate": lambda m, X, Y: m.evaluate(X, Y),
    "predict": lambda m, X, Y: m.predict(X),
}


@pytest.mark.parametrize("method", list(CALLS_BY_NAME))
def test_one_model_from_4_threads_gives_the_single_thread_result(backend, dtype, method):
    call = CALLS_BY_NAME[method]
    model = _model(backend, dtype)
    data = [_data(rows, seed) for seed, rows in enumerate(ROWS)]
    with threadpoolctl.threadpool_limits(1):
        want = [_as_bytes(call(model, X, Y)) for X, Y in data]
        got = run_in_threads([lambda X=X, Y=Y: [_as_bytes(call(model, X, Y)) for _ in range(CALLS)]
                           for X, Y in data])
    wrong = sum(r != w for w, runs in zip(want, got) for r in runs)
    assert wrong == 0, f"{backend} {method}: {wrong} of {N_THREADS * CALLS} results differ"


def test_gradients_while_another_model_trains_and_this_one_predicts(backend, dtype):
    """Mixed readers on one model, a trainer on another: every reader exact."""
    model, other = _model(backend, dtype), _model(backend, dtype)
    X, Y = _data(1500, 9)
    with threadpoolctl.threadpool_limits(1):
        want_grad, want_pred = _as_bytes(model.gradients(X, Y)), _as_bytes(model.predict(X))
        want_small = _as_bytes(model.gradients(X[:7], Y[:7]))
        got = run_in_threads([lambda: [_as_bytes(model.gradients(X, Y)) for _ in range(10)],
                           lambda: [_as_bytes(model.predict(X)) for _ in range(10)],
                           lambda: [_as_bytes(model.gradients(X[:7], Y[:7])) for _ in range(10)],
                           lambda: other.fit(X, Y, epochs=2, batch_size=64)])
    assert all(r == want_grad for r in got[0])
    assert all(r == want_pred for r in got[1])
    assert all(r == want_small for r in got[2])
