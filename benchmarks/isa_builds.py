"""The Cython kernels' instruction-set builds against each other, in one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/isa_builds.py

Each build is its own extension module (kernels/cython_mlp.py), so one process can
hold a model on each: their calls alternate, ROUNDS rounds of at least SAMPLE_S each,
and the medians are compared, so a machine that slows down for a while slows both
alike. Public API (train_on_batch, predict), 784-256-128-10, float32, SGD, 2 threads.
The 1-row predict is left out: each module starts its own GEMV worker thread, and two
of them on two cores disturb each other (every build runs the same GEMV copy anyway).
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import time

import numpy as np

import fastmlp as fm
import fastmlp.backends.cython as cython_backend
from fastmlp.kernels import cython_builds

ROUNDS = 25
SAMPLE_S = 0.02


def build(name):
    return importlib.import_module(f"fastmlp.kernels._cython_mlp_{name}")


def model(module, activation):
    """A W2/W3-shaped model whose engine is ``module``'s (the backend builds the Engine it
    imported, so it is pointed at this module's for the construction only)."""
    imported, cython_backend.Engine = cython_backend.Engine, module.Engine
    try:
        m = fm.Model([fm.Dense(256, activation), fm.Dense(128, activation),
                      fm.Dense(10, "softmax")], input_dim=784, loss="cross_entropy",
                     optimizer=fm.SGD(0.01), backend="cython", dtype="float32", seed=0)
    finally:
        cython_backend.Engine = imported
    assert type(m.engine.engine).__module__ == module.__name__
    return m


def cases(builds, rng):
    """(name, {build: call}) pairs: train steps of 512 and 64 rows per activation, and a
    512-row predict."""
    out = []
    for activation in ("tanh", "sigmoid", "relu"):
        models = {name: model(module, activation) for name, module in builds.items()}
        for rows in (512, 64):
            X = rng.random((rows, 784), dtype=np.float32)
            T = np.eye(10, dtype=np.float32)[rng.integers(0, 10, rows)]
            out.append((f"{activation} step b{rows}",
                        {n: (lambda m=m, X=X, T=T: m.train_on_batch(X, T)) for n, m in models.items()}))
        if activation == "relu":
            X = rng.random((512, 784), dtype=np.float32)
            out.append(("relu predict b512", {n: (lambda m=m: m.predict(X)) for n, m in models.items()}))
    return out


def median_times(calls):
    """{build: median seconds per call}, the builds' samples interleaved."""
    for call in calls.values():
        for _ in range(5):
            call()
    start = time.perf_counter()
    next(iter(calls.values()))()
    reps = max(3, int(SAMPLE_S / max(time.perf_counter() - start, 1e-7)))
    samples = {name: [] for name in calls}
    for _ in range(ROUNDS):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(reps):
                call()
            samples[name].append((time.perf_counter() - start) / reps)
    return {name: statistics.median(s) for name, s in samples.items()}


def main(argv=None):
    # no options: --help says what it does, anything else is refused
    argparse.ArgumentParser(description=__doc__.strip().splitlines()[0]).parse_args(argv)
    fm.set_num_threads(2)
    wide = next((b for b in cython_builds.runnable() if b != "base"), None)
    if wide is None:
        print("this processor runs the baseline build only: nothing to compare")
        return
    builds = {"base": build("base"), wide: build(wide)}
    print(f"| call | base build | {wide} build | speed-up |\n|---|---:|---:|---:|")
    for name, calls in cases(builds, np.random.default_rng(0)):
        t = median_times(calls)
        print(f"| {name} | {t['base'] * 1e6:.1f} µs | {t[wide] * 1e6:.1f} µs | "
              f"{t['base'] / t[wide]:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
