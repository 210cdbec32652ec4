"""The pipeline penalty: a W3 train step right after NumPy BLAS work vs alone.

Usage (the OpenBLAS overrides this machine sets would hide a kernel choice):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/pipeline_penalty.py
    FASTMLP_BLAS=scipy python benchmarks/pipeline_penalty.py   # the old, two-pool setup

W3 is 784-256-128-10 relu/softmax cross-entropy, batch 512, float32, plain SGD,
``model.train_on_batch``. "alone" times the step repeated on a fixed batch;
"after numpy" times the same step right after ``np.matmul(X, P, out=Z)`` with P
(784, 784) float32 (NumPy's own BLAS) on every iteration, timing only the step.
"after copy" is the control: the step right after copying the same arrays
(X into Z, P into a spare), which evicts the step's data from the caches as the
GEMM does but wakes no BLAS thread; what the GEMM costs beyond it is the pools'
share. The three alternate in rounds and each keeps its fastest round's median,
so load bursts from other users of a shared machine flatter none. penalty =
after numpy / alone - 1. Standalone: needs only fastmlp and NumPy.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import threadpoolctl

import fastmlp as fm
from fastmlp._cli_options import positive_float, positive_int   # (the CLI's option types)

try:
    from fastmlp.threads import blas_in_use
except ImportError:  # a fastmlp from before issue 10: its kernels call SciPy's BLAS
    blas_in_use = None

DIMS = (784, 256, 128, 10)
ROWS = 512


def w3_model(backend):
    """The W3 model, seed 0, on ``backend``."""
    layers = [fm.Dense(256, activation="relu"), fm.Dense(128, activation="relu"),
              fm.Dense(10, activation="softmax")]
    return fm.Model(layers, input_dim=DIMS[0], loss="cross_entropy", optimizer=fm.SGD(lr=0.01),
                    backend=backend, dtype="float32", seed=0)


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(backend, seconds, rounds):
    """{"alone", "after_numpy", "after_copy", "gemm"}: median seconds per call, the
    best round of each."""
    rng = np.random.default_rng(1)
    X_raw = rng.standard_normal((ROWS, DIMS[0]), dtype=np.float32)
    P = (rng.standard_normal((DIMS[0], DIMS[0]), dtype=np.float32) / np.sqrt(DIMS[0]))
    Z, P_spare = np.empty_like(X_raw), np.empty_like(P)
    T = np.eye(DIMS[-1], dtype=np.float32)[rng.integers(0, DIMS[-1], ROWS)]
    model = w3_model(backend)

    def preprocess():
        np.matmul(X_raw, P, out=Z)

    def copy():
        np.copyto(Z, X_raw)
        np.copyto(P_spare, P)

    def step():
        model.train_on_batch(Z, T)

    def after(before, times, before_times=None):
        if before is not None:
            t = _timed(before)
            if before_times is not None:
                before_times.append(t)
        times.append(_timed(step))

    preprocess()
    for _ in range(3):  # warm-up (and any JIT compile)
        step()
    budget = seconds / (3 * rounds)
    best = {"alone": [], "after_numpy": [], "after_copy": [], "gemm": []}
    for _ in range(rounds):
        for key, before in (("alone", None), ("after_numpy", preprocess), ("after_copy", copy)):
            times, gemms = [], []
            start = time.perf_counter()
            while len(times) < 5 or time.perf_counter() - start < budget:
                after(before, times, gemms if before is preprocess else None)
            best[key].append(statistics.median(times))
            if gemms:
                best["gemm"].append(statistics.median(gemms))
    return {key: min(values) for key, values in best.items()}


def blas_lines():
    """One line per loaded BLAS: file, version, kernels, threads; '*' marks fastmlp's."""
    used = os.path.realpath(blas_in_use()["filepath"]) if blas_in_use else None
    lines = []
    for info in threadpoolctl.threadpool_info():
        if info.get("user_api") == "blas":
            mark = "*" if os.path.realpath(info["filepath"]) == used else " "
            lines.append(f"  {mark} {info['filepath'].rsplit('/', 1)[-1]} {info.get('version')} "
                         f"{info.get('architecture')} threads={info.get('num_threads')}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="cython,numba")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--seconds", type=positive_float, default=6.0, help="per backend")
    parser.add_argument("--rounds", type=positive_int, default=3)
    args = parser.parse_args(argv)
    for backend in args.backends.split(","):
        if backend not in fm.available_backends():
            parser.error(f"--backends: {backend!r} is not available here; choose from "
                         f"{fm.available_backends()}")
    fm.set_num_threads(args.threads)
    results = {b: measure(b, args.seconds, args.rounds) for b in args.backends.split(",")}
    if blas_in_use is not None:
        info = blas_in_use()
        print(f"fastmlp's kernels call: {info['source']} ({info['sgemm']}, "
              f"{info['int_bits']}-bit integers) -- {info['reason']}")
    else:
        print("fastmlp's kernels call: scipy.linalg.cython_blas (fastmlp before issue 10)")
    print("loaded BLAS libraries ('*' = the kernels'):", *blas_lines(), sep="\n")
    print(f"\nW3 train_on_batch, float32, {args.threads} threads\n")
    print("| backend | alone ms | after numpy GEMM ms | penalty | after copy ms "
          "| copy's penalty | numpy GEMM ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for b, r in results.items():
        print(f"| {b} | {r['alone'] * 1e3:.2f} | {r['after_numpy'] * 1e3:.2f} | "
              f"{100 * (r['after_numpy'] / r['alone'] - 1):+.1f} % | "
              f"{r['after_copy'] * 1e3:.2f} | {100 * (r['after_copy'] / r['alone'] - 1):+.1f} % | "
              f"{r['gemm'] * 1e3:.2f} |")

if __name__ == "__main__":
    main()
