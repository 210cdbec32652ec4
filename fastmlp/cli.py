"""The ``fastmlp`` command.

    fastmlp train                       # the shipped 8x8 digits, 64-64-10 ReLU/softmax, Adam
    fastmlp train --data f.csv --target label --layers 64,32 --activation relu --epochs 20
    fastmlp vehicles --backend numpy    # the lessons' car/bike example

``train`` standardizes the features with the training rows' statistics, holds
out ``--test-fraction`` of the rows, and prints per-epoch loss, held-out
accuracy and samples/s. Any error prints one line to stderr and exits with 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

import fastmlp as fm
from fastmlp import datasets

DEFAULT_LR = {"adam": 3e-3, "sgd": 0.1}
OUTPUT_ACTIVATION = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid", "mse": "sigmoid"}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- train -------------------------------------------------------------------------

def _layers(text):
    """'64,32' -> [64, 32]; '' -> [] (no hidden layer)."""
    try:
        units = [int(u) for u in text.split(",") if u.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 64,32, got {text!r}")
    if any(u < 1 for u in units):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {text!r}")
    return units


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _load(args):
    """(X, y, classes, description) from --data or the shipped digits."""
    if args.data is None:
        if args.target is not None:
            raise ValueError("--target needs --data (the digits data set has no named columns)")
        X, y = datasets.load_digits()
        name = "digits (UCI Optical Recognition of Handwritten Digits, CC BY 4.0)"
        return X, y, [str(c) for c in range(10)], name
    X, y, classes, features = datasets.load_csv(args.data, args.target)
    target = args.target if args.target is not None else "(last column)"
    if len(classes) > len(y) / 2:
        print(f"note: target column {target} has {len(classes)} distinct values in {len(y)} rows; "
              "fastmlp train treats it as class labels", file=sys.stderr)
    shown = ", ".join(features[:8]) + (", ..." if len(features) > 8 else "")
    return X, y, classes, f"{args.data} (target {target}; features {shown})"


def _build(args, n_in, n_out):
    name = args.optimizer.lower()
    if name not in DEFAULT_LR:
        raise ValueError(f"unknown optimizer {args.optimizer!r}; choose one of {sorted(DEFAULT_LR)}")
    lr = DEFAULT_LR[name] if args.lr is None else args.lr
    if name == "adam" and args.momentum:
        raise ValueError("--momentum applies to --optimizer sgd only")
    optimizer = fm.Adam(lr=lr) if name == "adam" else fm.SGD(lr=lr, momentum=args.momentum)
    if args.loss not in OUTPUT_ACTIVATION:
        raise ValueError(f"unknown loss {args.loss!r}; choose one of {sorted(OUTPUT_ACTIVATION)}")
    layers = [fm.Dense(u, activation=args.activation) for u in args.layers]
    layers.append(fm.Dense(n_out, activation=OUTPUT_ACTIVATION[args.loss]))
    model = fm.Model(layers, input_dim=n_in, loss=args.loss, optimizer=optimizer,
                     backend=args.backend, dtype=args.dtype, seed=args.seed)
    return model, f"{type(optimizer).__name__}(lr={lr:g})"


def fold_standardization(model, mean, std):
    """Rewrite the first layer so the model takes raw features instead of standardized ones.

    (x - mean) / std @ W + b == x @ (W / std[:, None]) + (b - (mean / std) @ W).
    """
    weights = model.get_weights()
    W, b = weights[0].astype(np.float64), weights[1].astype(np.float64)
    weights[0] = W / std[:, None]
    weights[1] = b - (mean / std) @ W
    model.set_weights(weights)


def _accuracy(model, X, y):
    return float(np.mean(model.predict(X).argmax(axis=1) == y))


def train(args, out=None):
    out = out or sys.stdout
    X, y, classes, description = _load(args)
    if args.test_fraction == 0:
        X_train, X_test, y_train, y_test = X, X[:0], y, y[:0]
    else:
        X_train, X_test, y_train, y_test = datasets.train_test_split(
            X, y, args.test_fraction, args.seed)
    X_train, X_test, mean, std = datasets.standardize(X_train, X_test)
    model, optimizer = _build(args, X.shape[1], len(classes))
    # Converted once here, so each epoch's fit() finds the arrays already in the model dtype.
    X_train, X_test = X_train.astype(model.dtype), X_test.astype(model.dtype)
    T_train = y_train if args.loss == "cross_entropy" else np.eye(len(classes))[y_train]
    held_out = len(y_test) > 0
    dims = "-".join(str(d) for d in model.net.dims)
    print(f"data: {description}\n      {len(X)} rows, {X.shape[1]} features, {len(classes)} classes;"
          f" {len(X_train)} for training, {len(X_test)} held out", file=out)
    print(f"model: {dims} {args.activation} -> {OUTPUT_ACTIVATION[args.loss]}, loss {args.loss}, "
          f"{optimizer}, batch {args.batch_size}, backend {args.backend}, {args.dtype}",
          file=out)
    seconds = 0.0
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        history = model.fit(X_train, T_train, epochs=1, batch_size=args.batch_size)
        elapsed = time.perf_counter() - start
        seconds += elapsed
        loss = history.history["loss"][0]
        line = f"epoch {epoch:>{len(str(args.epochs))}}/{args.epochs}  loss {loss:.4f}"
        if held_out:
            line += f"  held-out accuracy {_accuracy(model, X_test, y_test):.4f}"
        print(f"{line}  {len(X_train) / elapsed:,.0f} samples/s", file=out, flush=True)
    if held_out:
        acc = _accuracy(model, X_test, y_test)
        correct = int(round(acc * len(y_test)))
        print(f"held-out accuracy: {100 * acc:.2f} % ({correct}/{len(y_test)} rows)", file=out)
    else:
        print(f"training accuracy: {100 * _accuracy(model, X_train, y_train):.2f} % "
              "(no rows held out)", file=out)
    total = args.epochs * len(X_train)
    print(f"training: {args.epochs} epochs x {len(X_train)} rows in {seconds:.2f} s = "
          f"{total / seconds:,.0f} samples/s", file=out)
    if args.save:
        fold_standardization(model, mean, std)
        model.save(args.save)
        shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
        print(f"saved to {args.save}: takes raw (unstandardized) features in file column order; "
              f"outputs are the classes {shown}", file=out)
    return 0


# -- vehicles ----------------------------------------------------------------------

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
    out = out or sys.stdout
    X_raw, Y = datasets.load_vehicles()
    X, _, _ = datasets.standardize(X_raw)
    model = fm.Model([fm.Dense(4, activation="sigmoid"), fm.Dense(2, activation="sigmoid")],
                     input_dim=3, loss="mse", optimizer=fm.SGD(lr=args.lr),
                     backend=args.backend, dtype=args.dtype, seed=args.seed)
    print(f"The lessons' vehicles: 3-4-2 sigmoid network, MSE, SGD(lr={args.lr}), all 6 rows per "
          f"batch, backend {args.backend}, {args.dtype}; features standardized.", file=out)
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


# -- entry point -------------------------------------------------------------------

def _common(p):
    # Static text: listing the importable backends here would import numba on every run.
    p.add_argument("--backend", default="numpy",
                   help="numpy (default, the reference), numba or cython where installed; "
                   "fastmlp.available_backends() lists them")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--seed", type=int, default=0, help="initialisation, shuffling, split (default 0)")


def make_parser():
    parser = _Parser(prog="fastmlp", description="Fast multilayer perceptrons on the CPU.")
    parser.add_argument("--version", action="version", version=f"fastmlp {fm.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,vehicles}")

    t = sub.add_parser("train", help="train a classifier on the shipped digits or your CSV",
                       description="Train a classifier. Without --data: the shipped 8x8 digits "
                       "(UCI, CC BY 4.0). Features are standardized with the training rows' "
                       "mean and std; a saved model has that folded in and takes raw features.")
    t.add_argument("--data", metavar="CSV", help="CSV (or .csv.gz) with a header row; "
                   "feature columns numeric")
    t.add_argument("--target", metavar="COLUMN",
                   help="label column, numbers or strings (default: the last column)")
    t.add_argument("--layers", type=_layers, default=[64], metavar="64,32",
                   help="hidden layer sizes (default 64; '' for none)")
    t.add_argument("--activation", default="relu", help="hidden activation (default relu)")
    t.add_argument("--loss", default="cross_entropy",
                   help="cross_entropy (softmax output, default), binary_cross_entropy or mse "
                   "(sigmoid outputs)")
    t.add_argument("--optimizer", default="adam", help="adam (default) or sgd")
    t.add_argument("--lr", type=float, default=None,
                   help=f"learning rate (default {DEFAULT_LR['adam']} for adam, "
                   f"{DEFAULT_LR['sgd']} for sgd)")
    t.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (default 0)")
    t.add_argument("--epochs", type=_positive_int, default=20, help="default 20")
    t.add_argument("--batch-size", type=_positive_int, default=32, help="default 32")
    t.add_argument("--test-fraction", type=float, default=0.2,
                   help="rows held out for accuracy (default 0.2; 0 = none)")
    t.add_argument("--save", metavar="PATH", help="save the trained model (fm.load reads it)")
    _common(t)
    t.set_defaults(run=train)

    v = sub.add_parser("vehicles", help="the lessons' car/bike example",
                       description="The lessons' vehicle table (wheels, height, weight -> car or "
                       "bike) on a 3-4-2 sigmoid network with MSE and SGD; prints each row's "
                       "squared error before and after training.")
    v.add_argument("--lr", type=float, default=0.5, help="SGD learning rate (default 0.5)")
    v.add_argument("--epochs", type=_positive_int, default=5000,
                   help="at most this many (default 5000)")
    v.add_argument("--tol", type=float, default=1e-3, help="stop when E <= tol (default 0.001)")
    _common(v)
    v.set_defaults(run=vehicles)
    return parser


def _one_line_warning(message, category, *args, **kwargs):
    print(f"fastmlp: warning: {message}", file=sys.stderr)


def _silence_stdout():
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv=None):
    """Run the command line; returns the exit status (0 ok, 1 vehicles failed, 2 error)."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():  # restores showwarning afterwards
            warnings.showwarning = _one_line_warning
            return args.run(args)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as Unix tools do.
        _silence_stdout()
        return 141
    except (ValueError, TypeError, OSError, fm.TrainingDiverged) as exc:
        print(f"fastmlp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fastmlp {args.command}: interrupted", file=sys.stderr)
        return 130
