"""Bounds: every mismatched shape that reaches the public API is refused with a
clear ValueError/TypeError before any backend code runs, identically on every
backend. Each backend is driven in a subprocess, so a crash in compiled code
shows up as a failed test rather than a dead test run."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastmlp as fm
from helpers import spy_on_engine

N, D, K = 6, 3, 2  # rows, input_dim, outputs of the test model

SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
from test_bounds import run_all_cases
print(json.dumps(run_all_cases(sys.argv[1])))
"""


def arrays_x():
    """Inputs of every wrong shape: name -> X."""
    rng = np.random.default_rng(0)
    return {
        "X columns - 1": rng.normal(size=(N, D - 1)),
        "X columns + 1": rng.normal(size=(N, D + 1)),
        "X 0 columns": np.zeros((N, 0)),
        "X 1-D": rng.normal(size=N),
        "X 1-D of length input_dim": rng.normal(size=D),
        "X 3-D": rng.normal(size=(N, D, 1)),
        "X 3-D flat-compatible": rng.normal(size=(N, 1, D)),
        "X scalar": np.float64(1.0),
        "X 0 rows": np.zeros((0, D)),
        "X 0 x 0": np.zeros((0, 0)),
        "X transposed": rng.normal(size=(D, N)),
        "X ragged list": [[1.0, 2.0, 3.0], [1.0, 2.0]],
    }


def bad_values_x(dtype):
    """Inputs of the right shape but wrong values or types: name -> X."""
    X = np.random.default_rng(4).normal(size=(N, D))
    cases = {}
    values = [("NaN", np.nan), ("inf", np.inf), ("-inf", -np.inf)]
    if dtype == "float32":
        values.append(("1e300", 1e300))  # finite in float64, inf once converted
    for name, value in values:
        bad = X.copy()
        bad[N - 1, D - 1] = value
        cases[f"X with {name}"] = bad
    cases["X strings"] = X.astype(str)
    cases["X complex"] = X.astype(complex)
    cases["X objects"] = X.astype(object)
    return cases


def bad_values_y(loss):
    """Targets of the right shape but wrong values: name -> Y."""
    Y = np.eye(K)[np.arange(N) % K]
    cases = {}
    for name, value in [("NaN", np.nan), ("inf", np.inf), ("2.0", 2.0), ("-0.5", -0.5)]:
        bad = Y.copy()
        bad[0, 0] = value
        cases[f"Y with {name}"] = bad
    cases["Y strings"] = Y.astype(str)
    if loss == "cross_entropy":
        cases["Y labels 0.5"] = np.full(N, 0.5)
        cases["Y labels NaN"] = np.full(N, np.nan)
    return cases


def arrays_y(loss):
    """Targets of every wrong shape for an N-row X: name -> Y."""
    rng = np.random.default_rng(1)
    cases = {
        "Y rows - 1": rng.uniform(size=(N - 1, K)),
        "Y rows + 1": rng.uniform(size=(N + 1, K)),
        "Y columns - 1": rng.uniform(size=(N, K - 1)),
        "Y columns + 1": rng.uniform(size=(N, K + 1)),
        "Y 3-D": rng.uniform(size=(N, K, 1)),
        "Y scalar": np.float64(0.0),
        "Y 0 rows": np.zeros((0, K)),
        "Y transposed": rng.uniform(size=(K, N)),
    }
    if loss == "cross_entropy":
        cases["Y labels rows - 1"] = rng.integers(0, K, size=N - 1)
        cases["Y labels out of range"] = np.full(N, K)
        cases["Y labels negative"] = np.full(N, -1)
        cases["Y labels 3-D"] = rng.integers(0, K, size=(N, 1, 1))
    else:
        cases["Y 1-D"] = rng.uniform(size=N)
    return cases


def weights_cases(model):
    good = model.get_weights()
    cases = {"weights one short": good[:-1], "weights one extra": good + [good[-1]],
             "weights none": []}
    for i, w in enumerate(good):
        for name, bad in [("transposed", w.T if w.ndim == 2 and w.shape[0] != w.shape[1] else None),
                          ("flattened", w.ravel() if w.ndim == 2 else None),
                          ("extra axis", w[..., None]), ("one longer", np.resize(w, w.shape[0] + 1)),
                          ("one shorter", w[:-1]), ("scalar", np.float64(0.0))]:
            if bad is not None:
                cases[f"weight {i} {name}"] = good[:i] + [bad] + good[i + 1:]
    return cases


def make_model(backend, dtype, loss):
    out = {"mse": "linear", "cross_entropy": "softmax", "binary_cross_entropy": "sigmoid"}[loss]
    return fm.Model([fm.Dense(4, activation="relu"), fm.Dense(K, activation=out)], input_dim=D,
                    loss=loss, backend=backend, dtype=dtype, seed=0)


def run_all_cases(backend):
    """Drive every bad shape through every entry point: case -> [error type, message, backend called]."""
    results = {}
    rng = np.random.default_rng(3)
    X = rng.normal(size=(N, D))
    for dtype in ("float32", "float64"):
        for loss in ("mse", "cross_entropy", "binary_cross_entropy"):
            model = make_model(backend, dtype, loss)
            called = spy_on_engine(model.engine)
            Y = np.eye(K)[rng.integers(0, K, size=N)]
            calls = {}
            for name, bad_x in {**arrays_x(), **bad_values_x(dtype)}.items():
                calls[f"predict {name}"] = lambda bx=bad_x: model.predict(bx)
                calls[f"evaluate {name}"] = lambda bx=bad_x: model.evaluate(bx, Y)
                calls[f"gradients {name}"] = lambda bx=bad_x: model.gradients(bx, Y)
                calls[f"train_on_batch {name}"] = lambda bx=bad_x: model.train_on_batch(bx, Y)
                calls[f"fit {name}"] = lambda bx=bad_x: model.fit(bx, Y, epochs=1)
                calls[f"fit validation {name}"] = lambda bx=bad_x: model.fit(
                    X, Y, epochs=1, validation_data=(bx, Y))
            bad_ys = {**arrays_y(loss), **bad_values_y(loss)}
            if loss == "mse":  # any finite target is fine for mse
                bad_ys = {k: v for k, v in bad_ys.items() if not k.endswith(("2.0", "-0.5"))}
            for name, bad_y in bad_ys.items():
                calls[f"evaluate {name}"] = lambda by=bad_y: model.evaluate(X, by)
                calls[f"gradients {name}"] = lambda by=bad_y: model.gradients(X, by)
                calls[f"train_on_batch {name}"] = lambda by=bad_y: model.train_on_batch(X, by)
                calls[f"fit {name}"] = lambda by=bad_y: model.fit(X, by, epochs=1)
                calls[f"fit validation {name}"] = lambda by=bad_y: model.fit(
                    X, Y, epochs=1, validation_data=(X, by))
            for bs in (0, -1, 2.5, True):
                calls[f"fit batch_size={bs!r}"] = lambda bs=bs: model.fit(X, Y, batch_size=bs)
            for name, ws in weights_cases(model).items():
                calls[f"set_weights {name}"] = lambda ws=ws: model.set_weights(ws)
            before = model.engine.theta.copy()
            for name, call in calls.items():
                called.clear()
                try:
                    call()
                except (ValueError, TypeError) as exc:
                    results[f"{dtype} {loss} {name}"] = [type(exc).__name__, str(exc), list(called)]
                else:
                    results[f"{dtype} {loss} {name}"] = ["no error", "", list(called)]
            # Nothing refused may have touched the weights.
            results[f"{dtype} {loss} weights unchanged"] = [
                "ok" if model.engine.theta.tobytes() == before.tobytes() else "changed", "", []]
    return results


_cache = {}


def results_for(backend):
    if backend not in _cache:
        out = subprocess.run([sys.executable, "-c", SCRIPT, backend, os.path.dirname(__file__)],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, (f"{backend}: the process died (exit {out.returncode}) while "
                                     f"fed bad shapes:\n{out.stderr[-3000:]}")
        _cache[backend] = json.loads(out.stdout.strip().splitlines()[-1])
    return _cache[backend]


def test_every_bad_shape_is_refused_before_the_backend(backend):
    results = results_for(backend)
    assert len(results) > 400
    problems = []
    for case, (kind, message, called) in results.items():
        if case.endswith("weights unchanged"):
            if kind != "ok":
                problems.append(f"{case}: a refused call changed the weights")
            continue
        if kind not in ("ValueError", "TypeError"):
            problems.append(f"{case}: {kind}")
        elif called:
            problems.append(f"{case}: backend method(s) {called} ran before the error")
        elif not any(word in message for word in ("X", "Y", "target", "weight", "batch_size", "label")):
            problems.append(f"{case}: the message does not name the argument: {message!r}")
    assert not problems, "\n".join(problems[:40])


@pytest.mark.parametrize("case,pattern", [
    ("float32 mse predict X columns + 1", "X has 4 columns but the model expects input_dim=3"),
    ("float32 mse predict X 3-D", "2-D"),
    ("float32 mse predict X 0 rows", "0 rows"),
    ("float64 mse evaluate Y rows - 1", "Y has 5 rows but X has 6"),
    ("float64 mse evaluate Y columns + 1", "Y has 3 columns but the model has 2 outputs"),
    ("float32 cross_entropy fit Y labels out of range", r"Y has 1 distinct labels \[2\] but the model has 2 classes"),
    ("float32 mse predict X ragged list", "X must be a rectangular array"),
    ("float64 mse set_weights weight 0 transposed", r"weight 0 has shape \(2, 3\)|weight 0 has shape \(4, 3\)"),
])
def test_messages_name_the_problem(case, pattern):
    import re
    kind, message, _ = results_for("numpy")[case]
    assert kind in ("ValueError", "TypeError") and re.search(pattern, message), (case, message)


def test_messages_identical_on_every_backend(compiled_backend):
    ref, other = results_for("numpy"), results_for(compiled_backend)
    assert ref.keys() == other.keys()
    differ = [f"{case}: numpy says {ref[case][:2]}, {compiled_backend} says {other[case][:2]}"
              for case in ref if ref[case][:2] != other[case][:2]]
    assert not differ, "\n".join(differ[:20])


def test_batches_larger_than_the_data_and_single_rows_work(backend, dtype):
    """The edges that are valid: batch_size > n is clamped; one row, one column, one output."""
    m = fm.Model([fm.Dense(1)], input_dim=1, backend=backend, dtype=dtype, seed=0)
    X, Y = np.ones((1, 1)), np.zeros((1, 1))
    m.fit(X, Y, epochs=2, batch_size=1000)
    assert m.predict(X).shape == (1, 1) and np.isfinite(m.evaluate(X, Y))
    m.fit(np.ones((7, 1)), np.zeros(7), epochs=1, batch_size=3)
    assert m.predict(np.ones(5)).shape == (5, 1)  # 1-D X is a column when input_dim is 1
