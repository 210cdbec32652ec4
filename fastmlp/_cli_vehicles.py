"""``fastmlp vehicles``: the lessons' 3-4-2 sigmoid car/bike network, trained with MSE and
SGD, each row's prediction and squared error printed before and after training."""
from __future__ import annotations

import sys
import time

import numpy as np

import fastmlp as fm
from fastmlp import datasets
from fastmlp._cli_options import check_backend


def _vehicle_table(model, X_raw, X, Y, out):
    """Print each row's prediction and per-output squared error; returns rows right."""
    P = model.predict(X).astype(np.float64)
    print("  wheels height weight | truth  target | prediction    | (y_hat - y)^2     | predicted",
          file=out)
    right = 0
    for x, t, p in zip(X_raw, Y, P):
        truth, guess = (datasets.VEHICLE_CLASSES[int(np.argmax(v))] for v in (t, p))
        right += truth == guess
        err = (p - t) ** 2
        print(f"  {x[0]:6.0f} {x[1]:6.1f} {x[2]:6.0f} | {truth:5s}  [{t[0]:g} {t[1]:g}]  | "
              f"[{p[0]:.3f} {p[1]:.3f}] | [{err[0]:.4f} {err[1]:.4f}] | {guess:4s} "
              f"{'ok' if truth == guess else 'WRONG'}", file=out)
    print(f"  mean loss E = {model.evaluate(X, Y):.6f}", file=out)
    return right


def vehicles(args, out=None):
    """The whole ``vehicles`` command; returns 0 when all six rows end up right, else 1."""
    out = out or sys.stdout
    check_backend(args.backend)
    X_raw, Y = datasets.load_vehicles()
    X, _, _ = datasets.standardize(X_raw)
    model = fm.Model([fm.Dense(4, activation="sigmoid"), fm.Dense(2, activation="sigmoid")],
                     input_dim=3, loss="mse", optimizer=fm.SGD(lr=args.lr),
                     backend=args.backend, dtype=args.dtype, seed=args.seed)
    print(f"The lessons' vehicles: 3-4-2 sigmoid network, MSE, SGD(lr={args.lr}), all 6 rows per "
          f"batch, backend {model.backend}, {args.dtype}; features standardized.", file=out)
    print(f"\nbefore training (random weights, seed {args.seed}):", file=out)
    _vehicle_table(model, X_raw, X, Y, out)
    start = time.perf_counter()
    history = model.fit(X, Y, epochs=args.epochs, batch_size=6, tol=args.tol, shuffle=False)
    elapsed = time.perf_counter() - start
    epochs, loss = len(history.epoch), history.history["loss"][-1]
    why = f"E <= {args.tol:g}" if loss <= args.tol else "the epoch limit"
    print(f"\nbackpropagation: {epochs} epochs ({elapsed:.2f} s), stopped by {why}; "
          f"last epoch's E = {loss:.6f}", file=out)
    print("\nafter training:", file=out)
    right = _vehicle_table(model, X_raw, X, Y, out)
    verdict = "all 6 rows classified correctly" if right == 6 else f"only {right} of 6 rows correct"
    print(f"\n{verdict}", file=out)
    return 0 if right == 6 else 1
