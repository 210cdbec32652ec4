"""Determinism: the same seed, backend, dtype and thread count give bit-identical
weights after ``fit``, run to run and process to process; different backends
agree within the tolerances of conftest.TOLERANCES."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastmlp as fm
from tolerances import TOLERANCES

SCRIPT = r"""
import hashlib, json, sys
import numpy as np
import fastmlp as fm
backend, dtype, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
fm.set_num_threads(threads)
sys.path.insert(0, sys.argv[4])
from test_determinism import train
m = train(backend, dtype)
print(json.dumps({"sha": hashlib.sha256(m.engine.theta.tobytes()).hexdigest(),
                  "state": hashlib.sha256(m.engine.state.buffers.tobytes()).hexdigest()}))
"""


def data():
    rng = np.random.default_rng(11)
    X = rng.normal(size=(300, 10))
    labels = (X[:, :3].sum(axis=1) > 0).astype(int) + (X[:, 3] > 1)
    return X, labels


def train(backend, dtype, epochs=3):
    """A small classifier trained with shuffling, momentum and a short last batch."""
    X, labels = data()
    m = fm.Model([fm.Dense(32, activation="tanh"), fm.Dense(16, activation="elu"),
                  fm.Dense(3, activation="softmax")], input_dim=10, loss="cross_entropy",
                 optimizer=fm.SGD(lr=0.05, momentum=0.9), backend=backend, dtype=dtype, seed=42)
    m.fit(X, labels, epochs=epochs, batch_size=64)
    return m


def digest(m):
    return {"sha": hashlib.sha256(m.engine.theta.tobytes()).hexdigest(),
            "state": hashlib.sha256(m.engine.state.buffers.tobytes()).hexdigest()}


def in_subprocess(backend, dtype, threads):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, backend, dtype, str(threads), os.path.dirname(__file__)],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_run_to_run_bit_identical(backend, dtype):
    a, b = train(backend, dtype), train(backend, dtype)
    assert digest(a) == digest(b)
    # The seed matters: a different one gives different weights.
    X, labels = data()
    other = fm.Model([fm.Dense(32, activation="tanh"), fm.Dense(16, activation="elu"),
                      fm.Dense(3, activation="softmax")], input_dim=10, loss="cross_entropy",
                     backend=backend, dtype=dtype, seed=43)
    assert other.engine.theta.tobytes() != fm.Model(
        other.layers, input_dim=10, loss="cross_entropy", backend=backend, dtype=dtype,
        seed=42).engine.theta.tobytes()


@pytest.mark.parametrize("threads", [1, 2])
def test_process_to_process_bit_identical(backend, dtype, threads):
    first = in_subprocess(backend, dtype, threads)
    second = in_subprocess(backend, dtype, threads)
    assert first == second


def test_in_process_matches_subprocess(backend, dtype):
    import threadpoolctl
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        here = digest(train(backend, dtype))
    assert here == in_subprocess(backend, dtype, 1)


def test_float32_and_float64_start_from_the_same_weights():
    a = fm.Model([fm.Dense(7, activation="relu"), fm.Dense(2)], input_dim=3, seed=5)
    b = fm.Model([fm.Dense(7, activation="relu"), fm.Dense(2)], input_dim=3, seed=5, dtype="float64")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb.astype(np.float32))


def test_backends_agree_after_fit(compiled_backend, dtype):
    tol = TOLERANCES[dtype]
    ref, other = train("numpy", dtype), train(compiled_backend, dtype)
    for i, (a, b) in enumerate(zip(ref.get_weights(), other.get_weights())):
        np.testing.assert_allclose(b, a, **tol, err_msg=f"weight {i}")
    np.testing.assert_allclose(other.engine.state.buffers, ref.engine.state.buffers, **tol)
    X, labels = data()
    np.testing.assert_allclose(other.predict(X), ref.predict(X), **tol)
    assert other.evaluate(X, labels) == pytest.approx(ref.evaluate(X, labels), rel=tol["rtol"] * 10)
