"""The ``fastmlp`` command.

    fastmlp train                       # the shipped 8x8 digits, 64-64-10 ReLU/softmax, Adam
    fastmlp train --data f.csv --target label --layers 64,32 --activation relu --epochs 20
    fastmlp train --data houses.csv --target price --loss mse    # regression
    fastmlp train --progress --plot curves.png    # a progress bar; loss and gradient-norm curves
    fastmlp vehicles --backend numpy    # the lessons' car/bike example
    fastmlp warmup                      # compile the Numba kernels ahead of time

``train`` holds out ``--test-fraction`` of the rows, standardizes the features
with the training rows' statistics (kept in the model as its own float64 step,
``Model.set_input_scaling``, so the model and a file saved from it take raw
features), trains a classifier or a regressor (see :func:`choose_task`) with one
``Model.fit`` call and prints per-epoch loss, held-out accuracy (or RMSE and R^2)
and samples/s. Any error prints one line to stderr and exits with 2.

The command is split by job: option types (``_cli_options``), data and task
(``_cli_data``), the tasks' targets and scores (``_cli_tasks``), output paths
(``_cli_outputs``), the train command (``_cli_train``), the vehicle example
(``_cli_vehicles``). This module holds the parser and the entry point.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings

import fastmlp as fm
from fastmlp import datasets
from fastmlp import _cli_options as opt
from fastmlp._cli_data import Data, choose_task  # noqa: F401  (the command's public API)
from fastmlp._cli_outputs import check_output_path, check_save_path  # noqa: F401
from fastmlp._cli_train import OutOfMemory, Training, run_train, train  # noqa: F401
from fastmlp._cli_vehicles import vehicles


def _add_train(sub):
    t = sub.add_parser("train", help="train a classifier or a regressor on the shipped digits "
                       "or your CSV",
                       description="Train a classifier or a regressor. Without --data: the "
                       "shipped 8x8 digits (UCI, CC BY 4.0). Features are standardized with the "
                       "training rows' mean and std, as a float64 step kept in the model (and in "
                       "the --save file), so the model takes raw features. Prints one line per "
                       "epoch (loss, held-out accuracy or RMSE and R^2, samples/s); --progress "
                       "shows a progress bar instead.")
    t.add_argument("--data", metavar="CSV", help="CSV (or .csv.gz) with a header row; "
                   "feature columns numeric")
    t.add_argument("--target", metavar="COLUMN",
                   help="target column: class labels (numbers or strings) or a numeric "
                   "quantity (default: the last column)")
    t.add_argument("--task", default="auto", choices=opt.TASKS,
                   help="auto (default): text labels are classes; a numeric target is "
                   "regressed with --loss mse, or when it has more than "
                   f"{opt.MAX_AUTO_CLASSES} distinct values, or non-integer values with more "
                   "than half the rows distinct; otherwise its values are classes. "
                   "Numbers with missing (NA, NaN, null, ...) or infinite cells are an "
                   "error naming the first such cell. The shipped digits (no --data) are "
                   "classes with any --loss (mse: the lessons' one-hot targets)")
    t.add_argument("--layers", type=opt.layers, default=[64], metavar="64,32",
                   help="hidden layer sizes (default 64; '' for none)")
    t.add_argument("--activation", type=opt.hidden_activation, default="relu",
                   help="hidden activation (default relu)")
    t.add_argument("--loss", type=opt.name_from(opt.OUTPUT_ACTIVATION, "loss"), default=None,
                   help="classification: cross_entropy (softmax output, default), "
                   "binary_cross_entropy or mse (sigmoid outputs); regression: mse (linear "
                   "output, standardized targets)")
    t.add_argument("--optimizer", type=opt.name_from(opt.DEFAULT_LR, "optimizer"),
                   default="adam", help="adam (default) or sgd")
    t.add_argument("--lr", type=opt.positive_float, default=None,
                   help=f"learning rate (default {opt.DEFAULT_LR['adam']} for adam, "
                   f"{opt.DEFAULT_LR['sgd']} for sgd)")
    t.add_argument("--momentum", type=opt.momentum, default=0.0, help="SGD momentum (default 0)")
    t.add_argument("--epochs", type=opt.positive_int, default=20, help="default 20")
    t.add_argument("--batch-size", type=opt.positive_int, default=32, help="default 32")
    t.add_argument("--test-fraction", type=opt.fraction, default=0.2,
                   help="rows held out for accuracy or RMSE and R^2 (default 0.2; 0 = none)")
    t.add_argument("--save", metavar="PATH",
                   help="save the trained model (fm.load reads it); checked before training: "
                   "never the file it reads (--data, or the shipped digits), its folder "
                   "must exist and be writable")
    t.add_argument("--progress", action="store_true",
                   help="show one progress bar on stderr (epoch, loss, held-out scores, "
                   "samples/s; tqdm if installed, else a plain line per epoch) instead of "
                   "the per-epoch lines")
    t.add_argument("--plot", metavar="IMAGE",
                   help="write the loss and held-out score curves and the per-layer gradient "
                   "norms per epoch to this image, in the format its suffix names (.png, "
                   ".pdf, .svg, ...; PNG without one; needs matplotlib: pip install "
                   "fastmlp[plot]); checked before training, like --save")
    opt.add_common(t)
    t.set_defaults(run=train, parser=t)


def _add_vehicles(sub):
    v = sub.add_parser("vehicles", help="the lessons' car/bike example",
                       description="The lessons' vehicle table (wheels, height, weight -> car or "
                       "bike) on a 3-4-2 sigmoid network with MSE and SGD; prints each row's "
                       "squared error before and after training.")
    v.add_argument("--lr", type=opt.positive_float, default=0.5,
                   help="SGD learning rate (default 0.5)")
    v.add_argument("--epochs", type=opt.positive_int, default=5000,
                   help="at most this many (default 5000)")
    v.add_argument("--tol", type=opt.non_negative_float, default=1e-3,
                   help="stop when E <= tol (default 0.001)")
    opt.add_common(v, seeds="initialisation, shuffling")
    v.set_defaults(run=vehicles, parser=v)


def _add_warmup(sub):
    w = sub.add_parser("warmup", help="compile the Numba kernels ahead of time",
                       description="Compile (or load from the disk cache) the Numba kernels "
                       "for float32 and float64, so that the first model built later starts "
                       "at once. The cache lives in NUMBA_CACHE_DIR when it is set, else beside "
                       "the kernels (kernels/__pycache__), or, where that folder is read-only, "
                       "in the user's cache folder (Numba's cache=True).")
    w.add_argument("--dtype", action="append", metavar="{float32,float64}",
                   type=opt.name_from(set(DTYPES), "dtype"),   # any case, as train's
                   help="a dtype to compile for (repeatable; default: both)")
    w.add_argument("--jobs", type=opt.positive_int, default=None,
                   help="processes compiling side by side, one dtype each (default: one per "
                   "dtype, up to the CPUs this process may use)")
    w.set_defaults(run=warmup, parser=w)


DTYPES = ("float32", "float64")


def warmup(args, out=None):
    """The warmup command: compile every Numba kernel for each dtype asked for (both by
    default), saying how long each took. With more than one job, the dtypes after the first
    compile side by side in processes of their own (each writes the disk cache; Numba's
    compile runs on one core), and this process then loads what they compiled, which
    also proves the cache holds it."""
    from fastmlp import warmup as _warmup
    out = out or sys.stdout
    if "numba" not in fm.available_backends():
        raise ValueError("the numba backend is not available here: "
                         f"{fm.backends._import_errors.get('numba', 'numba is not installed')}")
    dtypes = list(dict.fromkeys(getattr(args, "dtype", None) or DTYPES))
    jobs = getattr(args, "jobs", None) or min(len(dtypes), _warmup.usable_cpus())
    elsewhere = {dtype: _warmup.start_elsewhere(dtype) for dtype in dtypes[1:jobs]}
    try:
        for dtype in dtypes:
            child = elsewhere.get(dtype)
            said, failed = child.finish() if child is not None else (None, True)
            # compiled here, or loaded here from what the other process compiled
            here = _warmup.numba_kernels(dtype, notice=False, model_class=fm.Model,
                                         complete=True)
            seconds = here if failed else said
            print(f"numba kernels for {dtype}: ready in {seconds:.1f} s", file=out, flush=True)
    finally:
        for child in elsewhere.values():
            if child is not None:
                child.stop()   # (interrupted here: it stops too)
    from .kernels import numba_math
    if not numba_math.CACHE:
        raise ValueError("the kernels compiled, but Numba has no writable folder to cache them "
                         "in, so the next process compiles them again: set NUMBA_CACHE_DIR to "
                         "a writable folder")
    return 0


def make_parser():
    parser = opt.Parser(prog="fastmlp", description="Fast multilayer perceptrons on the CPU.")
    parser.add_argument("--version", action="version", version=f"fastmlp {fm.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,vehicles,warmup}")
    _add_train(sub)
    _add_vehicles(sub)
    _add_warmup(sub)
    return parser


def _one_line_warning(message, category, *args, **kwargs):
    print(f"fastmlp: warning: {datasets.one_line(message)}", file=sys.stderr)


def _silence_stdout():
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv=None):
    """Run the command line; returns the exit status (0 ok, 1 vehicles failed, 2 error)."""
    with _any_text_prints():
        return _main(argv)


@contextlib.contextmanager
def _any_text_prints():
    """stdout and stderr write what their encoding cannot hold as escapes (café as
    caf\\xe9 under PYTHONIOENCODING=ascii), not a UnicodeEncodeError: a path the user
    gave, printed once the model was saved, made a run that worked exit 2. Their error
    handler is put back afterwards (main may be called from a program)."""
    changed = []
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
                changed.append(stream)
            except (ValueError, OSError, AttributeError):   # closed, or not reconfigurable
                pass
    try:
        yield
    finally:
        for stream in changed:
            try:
                stream.reconfigure(errors="strict")
            except (ValueError, OSError):
                pass


def _main(argv):
    try:
        parser = make_parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:   # said by the subcommand's parser, as its other usage errors are
            getattr(args, "parser", parser).error(
                f"unrecognized arguments: {' '.join(unknown)}")
    except KeyboardInterrupt:
        print("fastmlp: interrupted", file=sys.stderr)
        return 130
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():  # restores showwarning afterwards
            warnings.showwarning = _one_line_warning
            return args.run(args)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as Unix tools do, but not
        # about a model never saved (a long run whose --save was the point)
        _silence_stdout()
        if getattr(args, "save", None) and not getattr(args, "saved", False):
            print(f"fastmlp {args.command}: stdout closed (its reader ended): stopped; "
                  f"nothing was saved to {datasets.shown_path(args.save)}", file=sys.stderr)
        return 141
    except (ValueError, TypeError, OSError, fm.TrainingDiverged) as exc:
        if isinstance(exc, OSError) and exc.filename and exc.strerror:
            exc = f"{exc.filename}: {exc.strerror}"  # not "[Errno 2] ..."
        if (isinstance(exc, (fm.TrainingDiverged, OSError)) and getattr(args, "save", None)
                and getattr(args, "started", False) and not getattr(args, "saved", False)):
            # (its "weights ... were kept" are the run's, never written: it had read as
            # saved; stdout on a full disk said only "No space left on device")
            exc = f"{exc}; nothing was saved to {args.save}"
        print(f"fastmlp {args.command}: error: {datasets.one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fastmlp {args.command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError as exc:
        print(f"fastmlp {args.command}: error: {datasets.one_line(_out_of_memory(exc))}",
              file=sys.stderr)
        return 2


def _out_of_memory(exc):
    """The one line for a MemoryError: the phase's own advice where the command gave one
    (reading the data), else the network's (e.g. a batch's activations; train checks the
    network's size before it builds it)."""
    if isinstance(exc, OutOfMemory):
        return f"out of memory {exc}"
    why = f": {exc}" if str(exc) else ""
    return f"out of memory{why}; use smaller --layers or --batch-size"
