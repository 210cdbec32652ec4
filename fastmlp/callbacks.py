"""Callbacks: code that :meth:`Model.fit` runs around each epoch (Keras's protocol).

A callback may define any of these methods; ``fit`` calls them in this order:

* ``set_model(model)``, once, before training;
* ``on_train_begin(logs)``, once, logs ``{"epochs", "initial_epoch", "samples",
  "batch_size"}``
  (every callback's ``set_model`` comes before any ``on_train_begin``);
* ``on_epoch_begin(epoch, logs)`` before every epoch (logs empty);
* ``on_epoch_end(epoch, logs)`` after every epoch; ``epoch`` counts from 0 (from
  ``fit(initial_epoch=...)``) and
  ``logs`` holds floats: ``"loss"``, ``"val_loss"`` (with validation data),
  metrics such as ``"accuracy"`` / ``"val_accuracy"``, ``"samples_per_s"``, and
  ``"grad_norm"`` (a list of per-layer floats) when ``fit(gradient_norms=True)``;
* ``on_train_end(logs)``, once, also after an early stop (not when an
  exception ends ``fit``).

A callback stops training by setting ``model.stop_training = True``. Values it adds
to ``logs`` in ``on_epoch_end`` (a custom metric) reach the callbacks after it and
``History``, which records each epoch after every callback, as in Keras. Keras's batch,
test and predict hooks are refused: fit never calls them.

>>> import numpy as np, fastmlp as fm
>>> from fastmlp.callbacks import EarlyStopping
>>> X = np.random.default_rng(0).normal(size=(40, 3)); Y = X[:, :1] ** 2
>>> m = fm.Model([fm.Dense(8, "tanh"), fm.Dense(1)], input_dim=3, seed=0)
>>> stop = EarlyStopping("val_loss", patience=3, restore_best_weights=True)
>>> h = m.fit(X[:30], Y[:30], epochs=50, validation_data=(X[30:], Y[30:]), callbacks=[stop])
"""
from __future__ import annotations

import math
import numbers
import os
import re
import string
import sys

from ._atomic import as_str, names_a_folder
from ._signals import raise_if_signalled
from .validation import as_float, check_flag, shown

# Keys of the epoch logs that are not a metric to print next to the loss.
_NOT_SHOWN = ("samples_per_s", "grad_norm")


class Callback:
    """Base class: every hook is a no-op; ``self.model`` is the model being fitted."""

    model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass


# -- watching one logged value ---------------------------------------------------------

def _check_mode(monitor, mode, who, needed=True):
    """'min' or 'max' for ``monitor``; "auto" is the way the loss or the metric it names
    improves (Keras 3: a name whose direction is not known needs ``mode`` given, rather
    than minimising a score such as a callback's val_r2). ``needed``: False where the
    mode is never used (a ModelCheckpoint saving every epoch); "auto" is then kept."""
    from .metrics import IMPROVES
    if not isinstance(monitor, str) or not monitor:
        raise TypeError(f"monitor must be the name of a logged value such as 'val_loss', "
                        f"got {monitor!r}")
    if not isinstance(mode, str) or mode not in ("auto", "min", "max"):  # an array: per element
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto" or not needed:
        return mode
    base = monitor[4:] if monitor.startswith("val_") else monitor
    if base not in IMPROVES:
        raise ValueError(f"{who} cannot tell whether {monitor!r} improves by going down or "
                         f"up (mode='auto' knows {', '.join(IMPROVES)} and their val_ "
                         f"values): pass mode='min' or mode='max'")
    return IMPROVES[base]


def _check_number(value, name, allow_none=False):
    if allow_none and value is None:
        return None
    # as_float: 10**400 and a Fraction reach the finiteness check (np.isfinite raised
    # its own TypeError), a long double 1e4000 is inf there
    number = (as_float(value) if isinstance(value, numbers.Real)
              and not isinstance(value, bool) else math.nan)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {shown(value)}")
    return number


class _Monitoring(Callback):
    """A callback judging a logged value (EarlyStopping, ModelCheckpoint). ``mode`` reads
    as the direction it judges by ("min" or "max"; "auto" only when none is needed) and
    keeps what was asked for, "auto" included, so that the direction is worked out again,
    strictly, as each fit begins and at each epoch's end (_settle): settings reassigned
    after the callback was made, or mid-fit, are then judged their way. Resolved once when
    made and kept, a monitor changed to "accuracy" kept "min", and a mode assigned after
    the monitor changed was taken for the one resolved before."""

    _needs_mode = True

    @property
    def mode(self):
        try:
            return _check_mode(self.monitor, self._asked, "", self._needs_mode)
        except (TypeError, ValueError):
            return self._asked   # (not valid for this monitor: the fit says so)

    @mode.setter
    def mode(self, value):
        self._asked = value

    def _judge(self):
        """The direction, from the settings as they are now."""
        self._direction = _check_mode(self.monitor, self._asked, type(self).__name__,
                                      self._needs_mode)

    def _settle(self):
        """Check the settings (_check_settings) and work out the direction from them as
        they are now, as each fit begins and at each epoch's end: reassigned mid-fit, from
        another callback, they were read as they had been when the fit began. A change of
        the value judged, or of its direction, forgets the best of the old one (_forget):
        an accuracy compared with a loss's best meant nothing."""
        self._check_settings()
        judged_by = self.monitor, self._direction
        if judged_by != getattr(self, "_judged_by", judged_by):
            self._forget()
        self._judged_by = judged_by

    def __setstate__(self, state):
        if "mode" in state:   # pickled before mode was kept as asked
            state["_asked"] = state.pop("mode")
        self.__dict__.update(state)


def _monitored(logs, monitor, who):
    """logs[monitor] as a float; a clear error when the epoch did not log it."""
    logs = logs or {}
    if monitor not in logs:
        hint = (" (val_* values need fit(validation_data=...) or validation_split)"
                if monitor.startswith("val_") else "")
        raise ValueError(f"{who}: monitor {monitor!r} is not in the epoch logs; available: "
                         f"{sorted(logs)}{hint}")
    value = logs[monitor]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{who}: monitor {monitor!r} must be a number, got {value!r}")
    return float(value)


def check_monitors(callbacks, logged, takes_metrics=True):
    """Before training: refuse an EarlyStopping or ModelCheckpoint(save_best_only) that
    monitors a value fit logs in other fits but not in this one (val_loss without
    validation data, a metric not asked for), rather than failing after an epoch.
    ``logged``: the keys this fit logs. Other names may come from a callback's logs.
    ``takes_metrics``: whether the fit has a metrics argument to advise (distributed.fit
    logs the loss alone)."""
    from .metrics import METRICS
    own = ["loss", *METRICS]
    possible = own + [f"val_{k}" for k in own]
    for cb in callbacks:
        if isinstance(cb, (EarlyStopping, ModelCheckpoint)):
            cb._check_settings()   # reassigned since made: refused before training too
        for what, name in _names_read(cb):
            if name in logged or name not in possible:
                continue
            base = name[4:] if name.startswith("val_") else name
            if base not in logged and not takes_metrics:
                raise ValueError(f"{type(cb).__name__} {what} {name!r}, which this fit does "
                                 f"not log: it logs {', '.join(logged)} (no metrics)")
            needs = []
            if base not in logged:
                needs.append(f"metrics=[{base!r}]")
            if name.startswith("val_") and "val_loss" not in logged:
                needs.append("validation_data"
                             + (" or validation_split" if takes_metrics else ""))
            raise ValueError(f"{type(cb).__name__} {what} {name!r}, which this fit does "
                             f"not log: pass {' and '.join(needs)}")


def _names_read(callback):
    """(what, name) of each logged value ``callback`` reads at an epoch's end: the monitor
    of an EarlyStopping or a ModelCheckpoint(save_best_only), and the values a
    ModelCheckpoint's path names ({val_loss:.3f}: found only after an epoch had trained)."""
    if isinstance(callback, EarlyStopping) or (isinstance(callback, ModelCheckpoint)
                                               and callback.save_best_only):
        yield "monitors", callback.monitor
    if isinstance(callback, ModelCheckpoint):
        for name in callback._path_fields():
            yield "path names", name


def _improves(value, best, mode, min_delta):
    """Whether ``value`` beats ``best`` by more than ``min_delta``. NaN never improves (nor
    becomes the best: Keras 3 takes a NaN first value as its best, and then no later
    epoch beats it); any other value beats None."""
    if value != value:
        return False
    if best is None:
        return True
    if mode == "min":
        return value + min_delta < best
    return value - min_delta > best


class EarlyStopping(_Monitoring):
    """Stop training when a monitored value has stopped improving (Keras 3's semantics).

    Parameters
    ----------
    monitor : name of a logged value, e.g. "val_loss", "loss", "val_accuracy".
    patience : training stops at the ``patience``-th epoch in a row without
        improvement (0 and 1 both stop at the first, as in Keras).
    min_delta : an epoch improves only if it beats the best by more than this.
    mode : "min", "max", or "auto": the way the loss or the named metric improves
        ("max" for accuracy and binary_accuracy, "min" for loss, mae and rmse, with or
        without "val_"); another name (one a callback logs) needs "min" or "max".
    restore_best_weights : at the end of training (stopped early or not) put the
        model back exactly as it was after the best epoch: the whole
        :meth:`Model.get_state` (weights, optimiser buffers and step, random
        generator), so predictions, a further ``fit`` and ``save`` all continue
        from the best epoch, not from a mix of best weights and later optimiser state.
    baseline : as in Keras 3: an epoch that improves on the best but not on
        ``baseline`` does not restart the wait, and the wait is judged only at epochs
        that do not improve on the best. So a value flat or worse above a "min"
        baseline stops training after ``patience`` epochs, while one that keeps
        improving, even without reaching the baseline, does not stop it.

    After ``fit``: ``best`` (the best value), ``best_epoch`` (0-based) and
    ``stopped_epoch`` (0-based epoch at which it stopped training; 0 if it did not).
    """

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, mode="auto",
                 restore_best_weights=False, baseline=None):
        self.monitor, self.mode = monitor, mode
        self.patience, self.min_delta, self.baseline = patience, min_delta, baseline
        self.restore_best_weights = restore_best_weights
        self._check_settings()
        self._reset()

    def _check_settings(self):
        """Check the settings and resolve mode "auto" for the monitor: when made, and again
        as each fit begins and at each epoch's end (_settle), since they may have been
        reassigned meanwhile (a monitor changed from "loss" to "accuracy" kept "min", and
        minimised the accuracy)."""
        self._judge()
        patience = self.patience
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) \
                or patience < 0:
            raise ValueError(f"patience must be an integer >= 0, got {patience!r}")
        self.patience = int(patience)
        self.min_delta = abs(_check_number(self.min_delta, "min_delta"))  # Keras: sign ignored
        self.restore_best_weights = check_flag(self.restore_best_weights,
                                               "restore_best_weights")
        self.baseline = _check_number(self.baseline, "baseline", allow_none=True)

    def _reset(self):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_epoch = 0
        self.best_state = None

    def on_train_begin(self, logs=None):
        self._settle()
        self._reset()   # an instance may serve several fits

    def _forget(self):
        self.best, self.best_epoch, self.best_state, self.wait = None, 0, None, 0

    def on_epoch_end(self, epoch, logs=None):
        self._settle()
        value = _monitored(logs, self.monitor, "EarlyStopping")
        self.wait += 1
        if _improves(value, self.best, self._direction, self.min_delta):
            self.best, self.best_epoch = value, epoch
            if self.restore_best_weights:
                self.best_state = self.model.get_state()
            # The wait restarts only when the value also beats the baseline.
            if self.baseline is None or _improves(value, self.baseline, self._direction,
                                                  self.min_delta):
                self.wait = 0
            return
        if self.restore_best_weights and self.best_state is None:
            # Keras 3: the first epoch's state stands in until one improves (NaN never does)
            self.best_state, self.best_epoch = self.model.get_state(), epoch
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_state is not None:
            self.model.set_state(self.best_state)


def _file_identity(path):
    """(device, inode, mtime) of the file at ``path``, or None: what changes when a save
    replaces it."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise_if_signalled(exc)
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


class ModelCheckpoint(_Monitoring):
    """Save the model with ``model.save`` (atomic) when a monitored value improves.

    Parameters
    ----------
    path : file name; may hold ``{epoch}`` (1-based, like Keras; from
        ``fit(initial_epoch=...)``) and logged values, e.g.
        ``"ckpt-{epoch:03d}-{val_loss:.3f}.fastmlp"``. A missing folder is made, as
        Keras makes it: when each fit begins (before any training), or at the save for
        a folder whose name holds fields.
    monitor, mode : as in :class:`EarlyStopping` (any strict improvement saves).
    save_best_only : False saves after every epoch, whatever the monitored value.

    After ``fit``: ``best``, ``best_epoch`` (0-based) and ``last_saved`` (the path
    written last, or None). ``best`` is kept from one ``fit`` to the next, as in Keras:
    one instance reused over several fits keeps the best model of them all in its file
    (``best_epoch`` counts within the fit that found it, from its ``initial_epoch``);
    make a new one to start over.
    """

    def __init__(self, path, monitor="val_loss", mode="auto", save_best_only=True):
        try:   # bytes decoded as the file system names files (as save takes them)
            self.path = as_str(path)
        except TypeError:
            raise TypeError(f"path must be a str, bytes or os.PathLike, got {path!r}") from None
        self._check_pattern()
        self.monitor, self.mode = monitor, mode
        self.save_best_only = save_best_only
        self._check_settings()
        self.best = None
        self.best_epoch = None
        self.last_saved = None

    def _check_settings(self):
        """As EarlyStopping's: when made, as each fit begins and at each epoch's end
        (save_best_only turned on after a ModelCheckpoint was made to save every epoch kept
        mode "auto", read as "max": it kept the epoch of the worst loss)."""
        self.save_best_only = check_flag(self.save_best_only, "save_best_only")
        self._judge()

    @property
    def _needs_mode(self):
        return self.save_best_only

    def on_train_begin(self, logs=None):
        self._settle()
        folder = os.path.dirname(self.path)
        if not any(field is not None for _, field, _, _ in string.Formatter().parse(folder)):
            self._make_folder(folder.format())   # ("{{" read as the "{" it saves to)

    def _make_folder(self, folder):
        """``folder`` (of a path formatted) made when missing, as Keras's ModelCheckpoint
        makes it, or an OSError naming it (a file in the way, no permission)."""
        if not folder or os.path.isdir(folder):
            return
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise_if_signalled(exc)
            why = exc.strerror or str(exc)
            # the deepest part of it that exists: when no folder (a file, a broken link),
            # named ("File exists" said only that something was in the way)
            part = folder
            while part not in ("", os.path.dirname(part)) and not os.path.lexists(part):
                part = os.path.dirname(part)
            if os.path.lexists(part) and not os.path.isdir(part):
                why = f"{part} is not a folder (a file, or a link to nothing)"
            raise type(exc)(exc.errno, f"ModelCheckpoint cannot make the folder {folder!r} "
                            f"for {self.path!r}: {why}") from None

    def _forget(self):
        self.best = self.best_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        self._settle()
        logs = logs or {}
        if self.save_best_only:
            value = _monitored(logs, self.monitor, "ModelCheckpoint")
            if not _improves(value, self.best, self._direction, 0.0):
                return
        path = self._format(epoch, logs)
        self._make_folder(os.path.dirname(path))
        before = _file_identity(path)
        try:
            self.model.save(path)
        except BaseException:
            # The best only once it is on disk: recorded before a save that failed (a full
            # disk), it named a model never written, and no later epoch short of it was
            # saved. But a Ctrl-C can land after the file was replaced (save then raises
            # it): a new file (a save makes a new inode) holds this epoch's model.
            if _file_identity(path) != before:
                self._saved(epoch, path, value if self.save_best_only else None)
            raise
        self._saved(epoch, path, value if self.save_best_only else None)

    def _saved(self, epoch, path, value):
        if self.save_best_only:
            self.best, self.best_epoch = value, epoch
        self.last_saved = path

    def _check_pattern(self):
        """The path's braces checked when the callback is made, not after an epoch has
        trained: each names a logged value (``{}`` or ``{0}`` names none), and each opens
        and closes; and a NUL, which no file name holds (save refuses it)."""
        if "\0" in self.path:
            raise ValueError(f"ModelCheckpoint path {self.path!r} holds a NUL character, "
                             "which no file name can hold")
        folder_problem = names_a_folder(self.path)
        if folder_problem:   # (refused by the first save, after an epoch had trained)
            raise ValueError(f"ModelCheckpoint path {self.path!r}: {folder_problem}; give "
                             "a file name")
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(self.path)
                      if field is not None]
        except ValueError as exc:
            raise self._not_a_format(exc) from None
        for field in fields:
            if not field or field[0].isdigit():
                raise ValueError(f"ModelCheckpoint path {self.path!r} has the field "
                                 f"{{{field}}}, which names no logged value; name one, e.g. "
                                 "{epoch} or {val_loss:.3f}")

    def _path_fields(self):
        """The logged values the path names ({val_loss:.3f}: 'val_loss'), epoch aside."""
        names = (re.split(r"[.\[]", field, maxsplit=1)[0] for _, field, _, _ in
                 string.Formatter().parse(self.path) if field)
        return [name for name in names if name != "epoch"]

    def _format(self, epoch, logs):
        try:
            return self.path.format(**{**logs, "epoch": epoch + 1})
        except KeyError as exc:
            raise ValueError(f"ModelCheckpoint path {self.path!r} names {exc.args[0]!r}, which "
                             f"is not logged; available: {['epoch'] + sorted(logs)}") from None
        except (ValueError, IndexError, TypeError) as exc:   # TypeError: {grad_norm:.3f}
            raise self._not_a_format(exc) from None

    def _not_a_format(self, exc):
        return ValueError(f"ModelCheckpoint path {self.path!r} is not a valid format string "
                          f"({exc}); write a literal brace as {{{{ or }}}}")


# -- progress ---------------------------------------------------------------------------

def _import_tqdm():
    """tqdm's class, or None when tqdm is not installed (an optional extra)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def format_logs(logs):
    """One line of an epoch's logs: loss, the other metrics, the val_* ones, samples/s.

    >>> format_logs({"loss": 0.25, "val_loss": 0.5, "accuracy": 0.9, "samples_per_s": 12345.6})
    'loss 0.25  accuracy 0.9  val_loss 0.5  12,346 samples/s'
    """
    shown = {k: v for k, v in logs.items() if k not in _NOT_SHOWN
             and isinstance(v, numbers.Real) and not isinstance(v, bool)}
    train = [k for k in shown if not k.startswith("val_")]
    order = sorted(train, key=lambda k: k != "loss") + [k for k in shown if k.startswith("val_")]
    parts = [f"{k} {shown[k]:.4g}" for k in order]
    if isinstance(logs.get("samples_per_s"), numbers.Real):
        parts.append(f"{logs['samples_per_s']:,.0f} samples/s")
    return "  ".join(parts)


class ProgressBar(Callback):
    """One progress bar per fit over the epochs: epoch, loss, validation metrics, samples/s.

    Uses tqdm when it is installed (``pip install fastmlp[progress]``), else
    prints one plain line per epoch. ``file``: where to write (default: the
    current ``sys.stderr``). ``fit(verbose=1)`` adds one.
    """

    def __init__(self, file=None):
        if file is not None and not callable(getattr(file, "write", None)):
            raise TypeError(f"file must be None or a text stream with a write method "
                            f"(sys.stdout, an open file), got {file!r:.60}")
        self.file = file
        self._bar = None
        self._epochs = None

    def _out(self):
        return self.file if self.file is not None else sys.stderr

    def on_train_begin(self, logs=None):
        self._close()   # a bar left open by a fit that raised
        self._epochs = (logs or {}).get("epochs")
        tqdm = _import_tqdm()
        if tqdm is not None:   # (from fit's initial_epoch: "epoch 6/8" after 5 earlier)
            # (tqdm drops a total below initial: "epoch 5/?" for no epoch to train)
            first = min((logs or {}).get("initial_epoch", 0), self._epochs or 0)
            self._bar = tqdm(total=self._epochs, initial=first,
                             file=self._out(), leave=True, unit="epoch",
                             dynamic_ncols=True,
                             bar_format="epoch {n_fmt}/{total_fmt} |{bar:20}| "
                                        "[{elapsed}<{remaining}{postfix}]")

    def on_epoch_end(self, epoch, logs=None):
        line = format_logs(logs or {})
        if self._bar is not None:
            self._bar.set_postfix_str(line, refresh=False)
            self._bar.update(1)
            return
        total = f"/{self._epochs}" if self._epochs is not None else ""
        print(f"epoch {epoch + 1}{total}  {line}", file=self._out(), flush=True)

    def on_train_end(self, logs=None):
        self._close()

    def _close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __getstate__(self):
        # without the open tqdm bar (one a fit that raised left open, or a copy made from
        # a callback mid-fit): deepcopy recursed and pickle failed in tqdm's own state
        return {**self.__dict__, "_bar": None}
