"""The ``fastmlp`` command.

    fastmlp train                       # the shipped 8x8 digits, 64-64-10 ReLU/softmax, Adam
    fastmlp train --data f.csv --target label --layers 64,32 --activation relu --epochs 20
    fastmlp train --data houses.csv --target price --loss mse    # regression
    fastmlp vehicles --backend numpy    # the lessons' car/bike example

``train`` holds out ``--test-fraction`` of the rows, standardizes the features
with the training rows' statistics (kept in the model as its own float64 step,
``Model.set_input_scaling``, so the model and a file saved from it take raw
features), trains a classifier or a regressor (see :func:`choose_task`) and
prints per-epoch loss, held-out accuracy (or RMSE and R^2) and samples/s. Any
error prints one line to stderr and exits with 2.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import warnings
from typing import NamedTuple

import numpy as np

import fastmlp as fm
from fastmlp import activations, datasets
from fastmlp.backends import get_backend

DEFAULT_LR = {"adam": 3e-3, "sgd": 0.1}
OUTPUT_ACTIVATION = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid", "mse": "sigmoid"}
TASKS = ("auto", "classification", "regression")
# --task auto: a numeric target with more distinct values than this is a quantity, not labels.
MAX_AUTO_CLASSES = 20


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- option types: argparse prefixes their errors with the option's name ------------------

def _layers(text):
    """'64,32' -> [64, 32]; '' -> [] (no hidden layer)."""
    try:
        units = [int(u) for u in text.split(",") if u.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 64,32, got {text!r}")
    if any(u < 1 for u in units):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {text!r}")
    return units


def _integer(minimum, wording):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {wording}, got {text!r}")
        return value
    return parse


def _number(accept, wording):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and accept(value)):
            raise argparse.ArgumentTypeError(f"expected {wording}, got {text!r}")
        return value
    return parse


def _name_from(names, what):
    def parse(text):
        if text.lower() not in names:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; choose one of "
                                             f"{sorted(names)}")
        return text.lower()
    return parse


def _hidden_activation(text):
    try:
        activations.get(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if text == "softmax":
        raise argparse.ArgumentTypeError("softmax is only allowed on the output layer "
                                         "(--loss cross_entropy gives a softmax output)")
    return text


_positive_int = _integer(1, "a positive integer")
_seed = _integer(0, "a non-negative integer")
_positive_float = _number(lambda v: v > 0, "a finite number > 0")
_fraction = _number(lambda v: 0 <= v < 1, "a number from 0 (none held out) up to, not "
                    "including, 1")
_momentum = _number(lambda v: 0 <= v < 1, "a number in [0, 1)")
_non_negative_float = _number(lambda v: v >= 0, "a finite number >= 0")


# -- train: data, task, model ------------------------------------------------------------

class Data(NamedTuple):
    """What ``train`` learns from."""

    X: np.ndarray          # raw features, float64 (n, d)
    y: np.ndarray          # class indices int64 (n,), or regression targets float64 (n,)
    classes: list | None   # class names (classification) or None (regression)
    features: list         # feature names (d,)
    target: str            # the target's name
    task: str              # "classification" or "regression"
    why: str               # why that task, for the model line
    description: str       # for the data line


def choose_task(args, table):
    """("classification" or "regression", why) for a CSV target.

    --task classification/regression decides. With --task auto (the default):
    text labels are classes; --loss cross_entropy or binary_cross_entropy means
    classification and --loss mse regression; otherwise a numeric target is a
    regression target when it has more than MAX_AUTO_CLASSES (20) distinct
    values, or non-integer values with more than half the rows distinct, and
    class labels when not.
    """
    if args.task != "auto":
        return args.task, f"--task {args.task}"
    values = datasets.numeric_target(table, required=False)
    if values is None:
        return "classification", "text labels in the target column"
    if args.loss in ("cross_entropy", "binary_cross_entropy"):
        return "classification", f"--loss {args.loss}"
    if args.loss == "mse":
        return "regression", "numeric target and --loss mse"
    distinct = len(np.unique(values))
    if distinct > MAX_AUTO_CLASSES:
        return "regression", (f"numeric target with {distinct} distinct values, more than "
                              f"{MAX_AUTO_CLASSES}")
    if np.any(values != np.round(values)) and distinct > len(values) / 2:
        return "regression", (f"non-integer target with {distinct} distinct values in "
                              f"{len(values)} rows")
    return "classification", (f"numeric target with {distinct} distinct values, at most "
                              f"{MAX_AUTO_CLASSES}; --task regression to override")


def _load(args):
    """The data set of --data (a CSV) or the shipped digits, and its task."""
    if args.data is None:
        if args.target is not None:
            raise ValueError("--target needs --data (the digits data set has no named columns)")
        X, y = datasets.load_digits()
        task = "classification" if args.task == "auto" else args.task
        why = "the digits' 10 classes" if args.task == "auto" else f"--task {args.task}"
        features = [f"pixel{i}" for i in range(X.shape[1])]
        name = "digits (UCI Optical Recognition of Handwritten Digits, CC BY 4.0)"
        if task == "regression":
            return Data(X, y.astype(np.float64), None, features, "digit", task, why, name)
        return Data(X, y, [str(c) for c in range(10)], features, "digit", task, why, name)
    table = datasets.read_csv(args.data, args.target)
    task, why = choose_task(args, table)
    shown = ", ".join(table.features[:8]) + (", ..." if len(table.features) > 8 else "")
    description = f"{args.data} (target {table.target}; features {shown})"
    if task == "regression":
        return Data(table.X, datasets.numeric_target(table), None, table.features,
                    table.target, task, why, description)
    y, classes = datasets.class_labels(table)
    if len(classes) > len(y) / 2:
        print(f"note: target column {table.target!r} has {len(classes)} distinct values in "
              f"{len(y)} rows; they are treated as class labels", file=sys.stderr)
    return Data(table.X, y, classes, table.features, table.target, task, why, description)


def _loss(args, task):
    if task == "classification":
        return args.loss or "cross_entropy"
    if args.loss not in (None, "mse"):
        raise ValueError(f"--loss {args.loss}: regression trains with mse (the only "
                         "regression loss); drop --loss or use --task classification")
    return "mse"


def _build(args, n_in, n_out, loss, output):
    """(model, optimizer text); errors name the option at fault."""
    _check_backend(args)
    lr = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
    if args.optimizer == "adam" and args.momentum:
        raise ValueError("--momentum applies to --optimizer sgd only")
    optimizer = (fm.Adam(lr=lr) if args.optimizer == "adam"
                 else fm.SGD(lr=lr, momentum=args.momentum))
    layers = [fm.Dense(u, activation=args.activation) for u in args.layers]
    layers.append(fm.Dense(n_out, activation=output))
    model = fm.Model(layers, input_dim=n_in, loss=loss, optimizer=optimizer,
                     backend=args.backend, dtype=args.dtype, seed=args.seed)
    return model, f"{type(optimizer).__name__}(lr={lr:g})"


def _check_backend(args):
    try:
        get_backend(args.backend)
    except ValueError as exc:
        raise ValueError(f"--backend {args.backend}: {exc}") from None


def check_save_path(save, data=None):
    """Refuse, before any training, a --save path that would fail or destroy the input.

    ValueError naming --save when the path is the --data file (through a symlink
    or another spelling too), a directory or something else that is not a regular
    file, or in a folder that is missing or where no file can be created.
    """
    where = f"--save {save}"
    real = os.path.realpath(save)
    if data is not None:
        same = real == os.path.realpath(data)
        try:
            same = same or os.path.samefile(save, data)
        except OSError:  # one of them does not exist: not the same file
            pass
        if same:
            raise ValueError(f"{where}: that is the --data file; refusing to overwrite the "
                             "input (choose another path)")
    if os.path.isdir(real):
        raise ValueError(f"{where}: is a directory; give a file name, e.g. "
                         f"{os.path.join(save, 'model.fastmlp')}")
    if os.path.lexists(real) and not os.path.isfile(real):
        raise ValueError(f"{where}: exists and is not a regular file")
    folder = os.path.dirname(real)
    if not os.path.isdir(folder):
        raise ValueError(f"{where}: the folder {folder} does not exist")
    try:  # the truth about writability (ACLs, read-only mounts, root): create a file there
        fd, probe = tempfile.mkstemp(prefix=".fastmlp-check-", dir=folder)
    except OSError as exc:
        raise ValueError(f"{where}: cannot create a file in {folder} "
                         f"({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def _save(model, path):
    try:
        model.save(path)
    except OSError as exc:  # e.g. the disk filled up during training
        raise ValueError(f"--save {path}: {exc.strerror or exc}") from None


# -- train: targets and scores ---------------------------------------------------------

def _accuracy(model, X, y):
    return float(np.mean(model.predict(X).argmax(axis=1) == y))


class _Classification:
    """A classifier's targets (class indices y (n,)) and score (accuracy)."""

    def __init__(self, data, loss, y_train):
        self.classes = data.classes
        self.n_out = len(self.classes)
        self.T_train = y_train if loss == "cross_entropy" else np.eye(self.n_out)[y_train]
        self.summary = f"{self.n_out} classes"

    def epoch_scores(self, model, X, y):
        return f"accuracy {_accuracy(model, X, y):.4f}"

    def report(self, model, X, y, held_out):
        acc = _accuracy(model, X, y)
        if not held_out:
            return f"training accuracy: {100 * acc:.2f} % (no rows held out)"
        return f"held-out accuracy: {100 * acc:.2f} % ({int(round(acc * len(y)))}/{len(y)} rows)"

    def predictions(self, model, X):
        """Class probabilities (m, k)."""
        return model.predict(X)

    def prepare_to_save(self, model):
        """Nothing to change; returns what the saved model outputs."""
        shown = ", ".join(self.classes[:10]) + (", ..." if len(self.classes) > 10 else "")
        return f"outputs are the probabilities of the classes {shown}"


class _Regression:
    """A regressor's targets y float64 (n,), standardized in float64 for training (so the
    linear output unit starts at the right scale), and scores (RMSE, R^2)."""

    def __init__(self, data, y_train, y_test):
        self.target = data.target
        (self.mean,), (self.scale,) = datasets.standardization(y_train[:, None], [data.target])
        datasets.check_standardizable(y_test[:, None], self.mean, self.scale, [data.target])
        self.n_out = 1
        self.T_train = ((y_train - self.mean) / self.scale)[:, None]
        self.summary = f"numeric target (mean {self.mean:.6g}, std {self.scale:.6g})"

    def scores(self, model, X, y):
        """(RMSE in the target's units, R^2), computed in standardized units (no overflow for
        huge targets). R^2 uses y's own mean, as sklearn's r2_score does; NaN if y is constant."""
        t = (y - self.mean) / self.scale
        sse = float(np.sum((model.predict(X)[:, 0].astype(np.float64) - t) ** 2))
        sst = float(np.sum((t - t.mean()) ** 2))
        return math.sqrt(sse / len(t)) * self.scale, (1.0 - sse / sst if sst > 0 else math.nan)

    def epoch_scores(self, model, X, y):
        rmse, r2 = self.scores(model, X, y)
        return f"RMSE {rmse:.6g}  R^2 {r2:.4f}"

    def report(self, model, X, y, held_out):
        rmse, r2 = self.scores(model, X, y)
        which, rows = ("held-out", f"{len(y)} rows") if held_out else \
            ("training", f"{len(y)} rows, none held out")
        return f"{which} RMSE: {rmse:.6g} (target std {self.scale:.6g}), R^2: {r2:.4f} ({rows})"

    def predictions(self, model, X):
        """Targets float64 (m,), in the target's units."""
        return model.predict(X)[:, 0].astype(np.float64) * self.scale + self.mean

    def prepare_to_save(self, model):
        """Fold y = mean + scale * output into the linear output layer, so the saved model
        outputs the target in its own units. Exact to the output's float tolerance: unlike
        folding the input scaling, this involves no cancellation."""
        weights = model.get_weights()
        W, b = weights[-2].astype(np.float64), weights[-1].astype(np.float64)
        weights[-2], weights[-1] = W * self.scale, b * self.scale + self.mean
        if not all(np.isfinite(np.asarray(w, dtype=model.dtype)).all() for w in weights[-2:]):
            raise ValueError(f"--save: the target's values are too large for a "
                             f"{model.dtype.name} model; use --dtype float64")
        model.set_weights(weights)
        return f"outputs the target {self.target!r} in its own units"


class Training(NamedTuple):
    """What :func:`run_train` returns."""

    model: fm.Model          # as saved (with --save) or as trained
    data: Data
    X_test: np.ndarray       # held-out raw features, float64 (m, d)
    y_test: np.ndarray       # their labels or targets (m,)
    predictions: np.ndarray  # the trained model's outputs on X_test, before any saving:
                             # class probabilities (m, k) or targets float64 (m,)


def train(args, out=None):
    run_train(args, out)
    return 0


def run_train(args, out=None):
    """The whole ``train`` command; returns a :class:`Training`."""
    out = out or sys.stdout
    if args.task != "auto":
        _loss(args, args.task)  # a --loss that contradicts --task: say so before reading data
    if args.save:
        check_save_path(args.save, args.data)
    data = _load(args)
    X_train, X_test, y_train, y_test = _split(args, data)
    mean, scale = datasets.standardization(X_train, data.features)
    datasets.check_standardizable(X_test, mean, scale, data.features)
    loss = _loss(args, data.task)
    if data.task == "regression":
        task, output = _Regression(data, y_train, y_test), "linear"
    else:
        task, output = _Classification(data, loss, y_train), OUTPUT_ACTIVATION[loss]
    model, optimizer = _build(args, X_train.shape[1], task.n_out, loss, output)
    # The scaler is the model's own float64 step: fit and predict take raw features, and
    # the model trained here is the model saved, scaler included.
    model.set_input_scaling(mean, scale)
    model.feature_names_in_ = np.array(data.features)
    held_out = len(y_test) > 0
    dims = "-".join(str(d) for d in model.net.dims)
    print(f"data: {data.description}\n      {len(data.X)} rows, {X_train.shape[1]} features, "
          f"{task.summary}; {len(X_train)} for training, {len(X_test)} held out", file=out)
    print(f"model: {dims} {args.activation} -> {output}, loss {loss}, {optimizer}, batch "
          f"{args.batch_size}, backend {args.backend}, {args.dtype}; {data.task} ({data.why})",
          file=out)
    seconds = 0.0
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        history = model.fit(X_train, task.T_train, epochs=1, batch_size=args.batch_size)
        elapsed = time.perf_counter() - start
        seconds += elapsed
        line = f"epoch {epoch:>{len(str(args.epochs))}}/{args.epochs}  " \
               f"loss {history.history['loss'][0]:.4f}"
        if held_out:
            line += "  held-out " + task.epoch_scores(model, X_test, y_test)
        print(f"{line}  {len(X_train) / elapsed:,.0f} samples/s", file=out, flush=True)
    print(task.report(model, *((X_test, y_test) if held_out else (X_train, y_train)), held_out),
          file=out)
    print(f"training: {args.epochs} epochs x {len(X_train)} rows in {seconds:.2f} s = "
          f"{args.epochs * len(X_train) / seconds:,.0f} samples/s", file=out)
    predictions = task.predictions(model, X_test) if held_out else None
    if data.classes is not None:  # set after training: fit takes the class indices 0..k-1
        model.classes_ = np.array(data.classes)
    if args.save:
        outputs = task.prepare_to_save(model)
        _save(model, args.save)
        print(f"saved to {args.save}: takes raw features in file column order (the "
              f"standardization is stored in the file and applied by predict); {outputs}",
              file=out)
    return Training(model, data, X_test, y_test, predictions)


def _split(args, data):
    """(X_train, X_test, y_train, y_test); no held-out rows with --test-fraction 0."""
    if args.test_fraction == 0:
        return data.X, data.X[:0], data.y, data.y[:0]
    try:
        return datasets.train_test_split(data.X, data.y, args.test_fraction, args.seed)
    except ValueError as exc:
        raise ValueError(f"--test-fraction {args.test_fraction:g}: {exc}") from None


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
    _check_backend(args)
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
    p.add_argument("--seed", type=_seed, default=0,
                   help="initialisation, shuffling, split (default 0)")


def make_parser():
    parser = _Parser(prog="fastmlp", description="Fast multilayer perceptrons on the CPU.")
    parser.add_argument("--version", action="version", version=f"fastmlp {fm.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,vehicles}")

    t = sub.add_parser("train", help="train a classifier or a regressor on the shipped digits "
                       "or your CSV",
                       description="Train a classifier or a regressor. Without --data: the "
                       "shipped 8x8 digits (UCI, CC BY 4.0). Features are standardized with the "
                       "training rows' mean and std, as a float64 step kept in the model (and in "
                       "the --save file), so the model takes raw features.")
    t.add_argument("--data", metavar="CSV", help="CSV (or .csv.gz) with a header row; "
                   "feature columns numeric")
    t.add_argument("--target", metavar="COLUMN",
                   help="target column: class labels (numbers or strings) or a numeric "
                   "quantity (default: the last column)")
    t.add_argument("--task", default="auto", choices=TASKS,
                   help="auto (default): text labels are classes; a numeric target is "
                   "regressed with --loss mse, or when it has more than "
                   f"{MAX_AUTO_CLASSES} distinct values, or non-integer values with more than "
                   "half the rows distinct; otherwise its values are classes")
    t.add_argument("--layers", type=_layers, default=[64], metavar="64,32",
                   help="hidden layer sizes (default 64; '' for none)")
    t.add_argument("--activation", type=_hidden_activation, default="relu",
                   help="hidden activation (default relu)")
    t.add_argument("--loss", type=_name_from(OUTPUT_ACTIVATION, "loss"), default=None,
                   help="classification: cross_entropy (softmax output, default), "
                   "binary_cross_entropy or mse (sigmoid outputs); regression: mse (linear "
                   "output, standardized targets)")
    t.add_argument("--optimizer", type=_name_from(DEFAULT_LR, "optimizer"), default="adam",
                   help="adam (default) or sgd")
    t.add_argument("--lr", type=_positive_float, default=None,
                   help=f"learning rate (default {DEFAULT_LR['adam']} for adam, "
                   f"{DEFAULT_LR['sgd']} for sgd)")
    t.add_argument("--momentum", type=_momentum, default=0.0, help="SGD momentum (default 0)")
    t.add_argument("--epochs", type=_positive_int, default=20, help="default 20")
    t.add_argument("--batch-size", type=_positive_int, default=32, help="default 32")
    t.add_argument("--test-fraction", type=_fraction, default=0.2,
                   help="rows held out for accuracy or RMSE and R^2 (default 0.2; 0 = none)")
    t.add_argument("--save", metavar="PATH",
                   help="save the trained model (fm.load reads it); checked before training: "
                   "never the --data file, its folder must exist and be writable")
    _common(t)
    t.set_defaults(run=train)

    v = sub.add_parser("vehicles", help="the lessons' car/bike example",
                       description="The lessons' vehicle table (wheels, height, weight -> car or "
                       "bike) on a 3-4-2 sigmoid network with MSE and SGD; prints each row's "
                       "squared error before and after training.")
    v.add_argument("--lr", type=_positive_float, default=0.5,
                   help="SGD learning rate (default 0.5)")
    v.add_argument("--epochs", type=_positive_int, default=5000,
                   help="at most this many (default 5000)")
    v.add_argument("--tol", type=_non_negative_float, default=1e-3,
                   help="stop when E <= tol (default 0.001)")
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
        if isinstance(exc, OSError) and exc.filename and exc.strerror:
            exc = f"{exc.filename}: {exc.strerror}"  # not "[Errno 2] ..."
        print(f"fastmlp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fastmlp {args.command}: interrupted", file=sys.stderr)
        return 130
