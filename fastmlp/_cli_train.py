"""``fastmlp train``: check the outputs, load the data, build the model, train it with one
``fit`` call whose callbacks report each epoch, then report, save and plot."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager, nullcontext
from typing import NamedTuple

import numpy as np

import fastmlp as fm
from fastmlp import datasets
from fastmlp._cgroup import memory_limit as _cgroup_limit
from fastmlp._cli_data import Data, check_dtype, data_file, digits_path, load_data, split
from fastmlp._cli_options import DEFAULT_LR, OUTPUT_ACTIVATION, check_backend
from fastmlp._cli_outputs import (check_plot, check_plot_format, check_save_path, save_model,
                                  write_plot)
from fastmlp._cli_tasks import Classification, Regression
from fastmlp.callbacks import Callback, ProgressBar
from fastmlp.network import Network

# A train run holds, at its peak, this many arrays the size of the parameters: theta,
# the gradient and Adam's two buffers; fit's snapshot of theta and the buffers (to undo a
# diverged or interrupted epoch); and during a step on the numpy backend, or during --save
# (get_state's copies, then the file's), about four more. Measured with tracemalloc and
# ru_maxrss on `fastmlp train --layers N,N --epochs 1 --save m` (N 1500 and 2500, Adam;
# test_round10_cli measures it again): up to 12.2 copies in float32 and 11.1 in float64,
# numpy and cython alike (8.2 without --save on cython). 4 let networks needing up to
# three times the memory pass the check: the kernel then killed the run (exit 137).
PARAMETER_COPIES = 12


class Training(NamedTuple):
    """What :func:`run_train` returns."""

    model: fm.Model          # as saved (with --save) or as trained
    data: Data
    X_test: np.ndarray       # held-out raw features, float64 (m, d)
    y_test: np.ndarray       # their labels or targets (m,)
    predictions: np.ndarray  # the trained model's outputs on X_test, before any saving:
                             # class probabilities (m, k) or targets float64 (m,)
    history: fm.History      # fit's, with the held-out scores of every epoch


class OutOfMemory(MemoryError):
    """Memory ran out in a phase whose advice is not the network's (``str``: while what,
    and what to do); the command's one-line error prints it."""


@contextmanager
def _memory_advice(doing, advice):
    """Inside the block, a MemoryError becomes an OutOfMemory saying ``doing`` and
    ``advice``: "use smaller --layers", right for a batch's activations, is wrong there."""
    try:
        yield
    except OutOfMemory:
        raise
    except MemoryError:
        raise OutOfMemory(f"while {doing}; {advice}") from None


class _Output:
    """The stream the run prints to, whose write errors say so: stdout on a full disk had
    said only "[Errno 28] No space left on device" (BrokenPipeError, a reader gone, is
    left as it is: the command stops quietly)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        return self._named(self._stream.write, text)

    def flush(self):
        self._named(self._stream.flush)

    @staticmethod
    def _named(call, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OSError(f"cannot write to stdout ({exc.strerror or exc})") from None

    def __getattr__(self, name):   # (encoding, isatty, ...) the stream's own
        return getattr(self._stream, name)


class EpochReport(Callback):
    """After each epoch: score the held-out rows, put the scores in the epoch's logs (so a
    ProgressBar after this callback shows them) and in ``model.history`` (fit records the
    logs before its callbacks run; the --plot curves read the history), and print the
    epoch's line (unless a progress bar shows the epochs instead).

    ``seconds`` sums the epochs' training time, from fit's ``samples_per_s`` (which leaves
    out this scoring)."""

    def __init__(self, task, X_test, y_test, epochs, rows, out, print_lines=True):
        self.task, self.X_test, self.y_test = task, X_test, y_test
        self.epochs, self.rows, self.out, self.print_lines = epochs, rows, out, print_lines
        self.seconds = 0.0

    def on_epoch_end(self, epoch, logs=None):
        self.seconds += self.rows / logs["samples_per_s"]
        line = f"epoch {epoch + 1:>{len(str(self.epochs))}}/{self.epochs}  loss {logs['loss']:.4f}"
        if len(self.y_test):
            scores = self.task.scores(self.model, self.X_test, self.y_test)
            logs.update(scores)   # fit's history records them after the callbacks
            line += "  held-out " + self.task.describe(scores)
        if self.print_lines:
            print(f"{line}  {logs['samples_per_s']:,.0f} samples/s", file=self.out, flush=True)


def train(args, out=None):
    run_train(args, out)
    return 0


def run_train(args, out=None):
    """The whole ``train`` command; returns a :class:`Training`."""
    out = _Output(out or sys.stdout)
    if args.task != "auto":
        _loss(args, args.task)  # a --loss that contradicts --task: say so before reading data
    source_file, source_name = data_file(args)   # without --data, the shipped digits
    if args.save is not None:  # "" too: check_save_path refuses it
        check_save_path(args.save, source_file, source_name)
        check_save_path(args.save, digits_path(), "the shipped digits file")
    if args.plot is not None:
        check_plot(args.plot, source_file, args.save, source_name)
        check_plot(args.plot, digits_path(), None, "the shipped digits file")
        check_plot_format(args.plot)
    source = f"--data {args.data}" if args.data is not None else "the digits"
    with _memory_advice(f"reading {source}", "the table takes about 2.5 times the CSV "
                        "text's size while it is read (8 bytes per cell where cells are "
                        "short): use a smaller file or more memory"):
        data = load_data(args)
        X_train, X_test, y_train, y_test = split(args, data)
        mean, scale = datasets.standardization(X_train, data.features)
    datasets.check_standardizable(X_test, mean, scale, data.features)
    check_dtype(data, source_file, mean, scale, args.dtype)
    loss = _loss(args, data.task)
    if data.task == "regression":
        task, output = Regression(data, y_train, y_test), "linear"
    else:
        task, output = Classification(data, loss), OUTPUT_ACTIVATION[loss]
    if args.plot is not None and len(y_test):
        task.check_plottable(args.plot)   # the held-out curves: not after the training
    model, optimizer = _build(args, X_train.shape[1], task.n_out, loss, output)
    # The scaler is the model's own float64 step: fit and predict take raw features, and
    # the model trained here is the model saved, scaler included.
    model.set_input_scaling(mean, scale)
    model.feature_names_in_ = np.array(data.features)
    task.prepare(model)
    if args.save is not None:
        task.check_savable(model.dtype)   # not after the whole training
    held_out = len(y_test) > 0
    args.started = True   # (an error from here on: the CLI says whether the model was saved)
    dims = "-".join(str(d) for d in model.net.dims)
    print(f"data: {data.description}\n      {len(data.X)} rows, {X_train.shape[1]} features, "
          f"{task.summary}; {len(X_train)} for training, {len(X_test)} held out", file=out)
    # (no hidden layer, --layers '': no hidden activation to name)
    activations = f"{args.activation} -> {output}" if args.layers else output
    print(f"model: {dims} {activations}, loss {loss}, {optimizer}, batch "
          f"{args.batch_size}, backend {model.backend}, {args.dtype}; {data.task} ({data.why})",
          file=out)
    history, seconds = _fit(args, model, task, X_train, y_train, X_test, y_test, out)
    task.finish(model)
    print(task.report(model, *((X_test, y_test) if held_out else (X_train, y_train)), held_out),
          file=out)
    samples = len(history.epoch) * len(X_train)
    print(f"training: {len(history.epoch)} epochs x {len(X_train)} rows in {seconds:.2f} s = "
          f"{samples / seconds if seconds > 0 else float('inf'):,.0f} samples/s", file=out)
    predictions = task.predictions(model, X_test) if held_out else None
    if args.save is not None:
        outputs = task.prepare_to_save(model, *((X_test, y_test) if held_out
                                                 else (X_train, y_train)))
        save_model(model, args.save)
        args.saved = True
        print(f"saved to {datasets.shown_path(args.save)}: takes raw features in file column "
              f"order (the standardization is stored in the file and applied by predict); {outputs}",
              file=out)
    if args.plot is not None:
        try:
            write_plot(history, args.plot)
        except ValueError as exc:
            if args.save is None:
                raise
            # still an error (the PNG asked for is missing), but the run is not lost
            raise ValueError(f"{exc} (the model is saved all the same, to {datasets.shown_path(args.save)})") \
                from None
        scores = " and held-out scores" if held_out else ""
        print(f"curves written to {datasets.shown_path(args.plot)}: loss{scores} per epoch, "
              "per-layer gradient norms", file=out)
    return Training(model, data, X_test, y_test, predictions, history)


def _fit(args, model, task, X_train, y_train, X_test, y_test, out):
    """One fit over all the epochs; (history, training seconds). With --plot, fit also
    records the held-out loss and the per-layer gradient norms the plot draws."""
    report = EpochReport(task, X_test, y_test, args.epochs, len(X_train), out,
                         print_lines=not args.progress)
    callbacks = [report, ProgressBar()] if args.progress else [report]
    plot_held_out = args.plot is not None and len(y_test) > 0
    advice = _one_hot_advice(model, task, len(X_train) + (len(X_test) if plot_held_out else 0))
    try:
        with advice:
            history = model.fit(X_train, task.targets(y_train), epochs=args.epochs,
                                batch_size=args.batch_size, callbacks=callbacks,
                                validation_data=(X_test, task.targets(y_test)) if plot_held_out
                                else None, gradient_norms=args.plot is not None)
    finally:
        # a fit that raised (Ctrl-C, divergence) leaves its bar open, as Keras does: closed
        # here, its line ends before the command's one line ("fastmlp train: interrupted"),
        # which tqdm's own close at exit then drew a bar after
        for callback in callbacks:
            if isinstance(callback, ProgressBar):
                callback.on_train_end()
    return history, report.seconds


def _loss(args, task):
    if task == "classification":
        return args.loss or "cross_entropy"
    if args.loss not in (None, "mse"):
        raise ValueError(f"--loss {args.loss}: regression trains with mse (the only "
                         "regression loss); drop --loss or use --task classification")
    return "mse"


# One-hot targets smaller than this (or than the network) are not what a MemoryError in
# fit is blamed on
ONE_HOT_NOTABLE = 1 << 26


def _one_hot_advice(model, task, rows):
    """What a MemoryError in fit means when a classifier's one-hot targets (rows x classes,
    which fit builds whole) are the largest thing it allocates: a context that says so
    (not "use smaller --layers": 80,000 rows of 100,000 classes, 29.8 GiB, ran out with
    --layers 1 --batch-size 1); else a context that changes nothing. One-hot targets larger
    than this machine's memory are refused here, before training (ValueError)."""
    if not isinstance(task, Classification) or task.binary:
        return nullcontext()
    # (fit's float targets in the model's dtype; several sigmoid outputs: float64 rows)
    itemsize = model.dtype.itemsize if task.loss == "cross_entropy" else 8
    need = rows * task.n_out * itemsize
    what = (f"{rows:,} rows x {task.n_out:,} classes: the one-hot targets fit trains on need "
            f"{_size(need)}")
    memory = _physical_memory()
    if memory is not None and need > memory:
        raise ValueError(f"{what} (this machine has {_size(memory)}); use fewer classes or "
                         "fewer rows")
    if need <= max(_need(model.net, model.dtype), ONE_HOT_NOTABLE):
        return nullcontext()
    return _memory_advice(f"training ({what})", "use fewer classes, fewer rows or a machine "
                          "with more memory")


def _build(args, n_in, n_out, loss, output):
    """(model, optimizer text); errors name the option at fault."""
    check_backend(args.backend)
    lr = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
    if args.optimizer == "adam" and args.momentum:
        raise ValueError("--momentum applies to --optimizer sgd only")
    optimizer = (fm.Adam(lr=lr) if args.optimizer == "adam"
                 else fm.SGD(lr=lr, momentum=args.momentum))
    layers = [fm.Dense(u, activation=args.activation) for u in args.layers]
    layers.append(fm.Dense(n_out, activation=output))
    net = Network(layers, n_in, loss)  # counts the parameters, allocates nothing
    _check_size(net, args.dtype, _physical_memory())
    try:
        model = fm.Model(layers, input_dim=n_in, loss=loss, optimizer=optimizer,
                         backend=args.backend, dtype=args.dtype, seed=args.seed)
    except MemoryError:
        raise ValueError(f"--layers: {_too_large(net, args.dtype)}") from None
    momentum = f", momentum={args.momentum:g}" if args.optimizer == "sgd" and args.momentum else ""
    return model, f"{type(optimizer).__name__}(lr={lr:g}{momentum})"


def _check_size(net, dtype, memory):
    """Refuse (ValueError naming --layers) a network whose parameters, held PARAMETER_COPIES
    times, take more than ``memory`` bytes (None: unknown, not checked), before anything is
    allocated: otherwise a MemoryError, or the system killing the process mid-training."""
    if memory is not None and _need(net, dtype) > memory:
        raise ValueError(f"--layers: {_too_large(net, dtype, f'this machine has {_size(memory)}')}")


def _need(net, dtype):
    """Bytes the model of ``net`` takes at least: PARAMETER_COPIES arrays of its parameters."""
    return PARAMETER_COPIES * net.n_params * np.dtype(dtype).itemsize


def _too_large(net, dtype, memory="more than there is"):
    """'a 2-100-2 network has 502 parameters, which need at least 7.8 KiB of memory as
    float32 (<memory>); use smaller layers'."""
    dims = "-".join(str(d) for d in net.dims)
    return (f"a {dims} network has {net.n_params:,} parameters, which need at least "
            f"{_size(_need(net, dtype))} of memory as {np.dtype(dtype).name} ({memory}); use "
            "smaller layers")


def _physical_memory():
    """The memory this process may use, in bytes: this machine's, or its cgroup's limit
    where one is set and smaller (a container on a large machine is killed at its own
    limit); None where the system says neither."""
    try:
        machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # e.g. Windows has no sysconf
        machine = None
    sizes = [size for size in (machine, _cgroup_limit()) if size is not None]
    return min(sizes) if sizes else None


def _size(nbytes):
    """Bytes as text with a binary unit: 1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{nbytes} B"
        nbytes /= 1024
