"""Model.fit: its epochs, one at a time when something reports between them
(callbacks, validation, metrics, verbose output, gradient norms), else in chunks of
epochs that are one compiled call each; and how a diverged or interrupted epoch or
chunk is undone (the snapshots of fastmlp._undo).

:class:`Fitting` holds fit and its helpers; :class:`fastmlp.model.Model` inherits
them, and they work on its state (the engine, the lock, the generator, the labels).
"""
from __future__ import annotations

import contextlib
import math
import threading
import time

import numpy as np

from . import metrics as metric_table
from . import validation
from ._signals import (UNDO_FAILED, UNDO_SIGNALS, from_a_handler, raise_after_undo,
                       run_whole)
from ._undo import Rewind, UndoneIfRaising


class TrainingDiverged(FloatingPointError):
    """Raised by :meth:`Model.fit` when the loss or a weight stops being finite."""

    # Named as before fit had a module of its own (fastmlp.model exports it): pickles (an
    # exception sent between processes) and tracebacks say fastmlp.model.TrainingDiverged
    __module__ = "fastmlp.model"


_HOOKS = ("set_model", "on_train_begin", "on_epoch_begin", "on_epoch_end", "on_train_end")


def _hook(callback, name, *args):
    method = getattr(callback, name, None)
    if method is not None:
        method(*args)


def _logged(metric_fns, validating, gradient_norms):
    """The keys fit's epoch logs will hold (callbacks may add more)."""
    keys = ["loss"] + [name for name, _ in metric_fns]
    if validating:
        keys += [f"val_{k}" for k in keys]
    return keys + ["samples_per_s"] + (["grad_norm"] if gradient_norms else [])


def _callback_list(callbacks):
    """fit's callbacks as a new list: None, one callback (as Keras takes it) or several."""
    if callbacks is None:
        return []
    # (lists, not generators, in fit's path: a generator any() leaves is closed at once,
    # and a Ctrl-C landing as it closes is ignored, 'Exception ignored in: <generator>')
    if isinstance(callbacks, type) or any([hasattr(callbacks, h) for h in _HOOKS]):
        return [callbacks]
    if isinstance(callbacks, (str, bytes)) or not hasattr(callbacks, "__iter__"):
        # (a string is iterable, but its characters are no callbacks)
        raise TypeError(f"callbacks must be a callback or a list of them, got "
                        f"{type(callbacks).__name__} {callbacks!r}")
    return list(callbacks)


@contextlib.contextmanager
def validation_data_errors():
    """Words a bad validation_data's errors as such: the checks name its arrays X and Y,
    which read as the training data's."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"validation_data: {exc}") from None


_NOBODY = object()   # a fit before it owns its model


class _BadEpochUnplaced(Exception):
    """A compiled call of several epochs stopped at ``epoch`` of its orders, its loss not
    finite or, after its last, its weights or optimiser state; an earlier epoch may have
    made those non-finite (Model._locate finds it)."""

    def __init__(self, epoch):
        super().__init__(epoch)
        self.epoch = epoch


class _Orders:
    """The row orders of fit's chunks of epochs, (k, n) int64 arrays, writable and
    C-contiguous (Numba compiles per array type): drawn from the model's generator when
    shuffling (the numbers k calls of permutation(n) give), else 0..n-1 in every row."""

    def __init__(self, model, n, shuffle):
        self._model, self._n, self._shuffle = model, n, shuffle
        self._fixed = np.empty((0, n), dtype=np.int64)

    def draw(self, k):
        if self._shuffle:
            return self._model._draw_orders(k, self._n)
        if len(self._fixed) < k:
            self._fixed = np.tile(np.arange(self._n, dtype=np.int64), (k, 1))
        return self._fixed[:k]


class History:
    """What :meth:`Model.fit` returns: ``history["loss"]`` is one mean loss per epoch,
    and every other logged value (val_loss, metrics, samples_per_s) a list beside it."""

    __module__ = "fastmlp.model"   # as TrainingDiverged's: an estimator's pickled history_

    def __init__(self):
        self.history = {"loss": []}
        self.epoch = []

    def record(self, epoch, logs):
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def _mark(self):
        """Where the record stands, for :meth:`_undo` (fit's rollback of an interrupted
        epoch or chunk: a Ctrl-C landing inside record left one epoch half recorded)."""
        return len(self.epoch), {key: len(values) for key, values in self.history.items()}

    def _undo(self, mark):
        """Forget what was recorded after ``mark``."""
        epochs, lengths = mark
        del self.epoch[epochs:]
        for key in list(self.history):
            if key in lengths:
                del self.history[key][lengths[key]:]
            else:
                del self.history[key]

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, loss={self.history['loss'][-1:]})"


class Fitting:
    """Model's fit and the machinery of its epochs (a base class of Model; see there for
    the state these methods read and write)."""

    def fit(self, X, Y, epochs=1, batch_size=32, tol=None, shuffle=True,
            validation_data=None, validation_split=0.0, metrics=None, callbacks=None,
            verbose=0, gradient_norms=False, initial_epoch=0):
        """Train by mini-batch gradient descent; returns the :class:`History`.

        Each epoch visits every row once in batches of ``batch_size`` (None =
        the whole set, 1 = per-sample SGD), shuffled when ``shuffle``. Stops after
        ``epochs``, as soon as an epoch's mean loss is <= ``tol`` (the lessons'
        E <= epsilon), or when a callback sets ``model.stop_training``.

        validation_data: (X_val, Y_val); or validation_split: the fraction of rows
        held out for validation, taken from the end of X before any shuffling.
        metrics: names from :mod:`fastmlp.metrics` ("accuracy", "mae", ...), recorded
        per epoch on the training rows and, as "val_<name>", on the validation rows.
        callbacks: one object, or a list of objects, with any of set_model,
        on_train_begin, on_epoch_begin, on_epoch_end, on_train_end (see
        :mod:`fastmlp.callbacks`).
        verbose: 0 silent, 1 a progress bar, 2 one line per epoch. gradient_norms: record
        history["grad_norm"], per epoch the RMS over its steps of each layer's
        weight-gradient norm ||dE/dW_l|| (summed inside the compiled step; plain SGD then
        forms dW instead of folding the update into the GEMM, so with weight decay its
        steps round differently in the last bits) -- vanishing or exploding gradients
        made visible. shuffle and gradient_norms: True or False.
        metrics=["accuracy"] on a binary_cross_entropy model is binary_accuracy (each
        sigmoid output right or wrong on its own), as in Keras.
        initial_epoch: the epoch to start at, as in Keras, to go on with an earlier
        fit's count: epochs ``initial_epoch`` to ``epochs - 1`` are trained (none when
        ``initial_epoch >= epochs``), and the History, the callbacks, ``{epoch}`` in a
        checkpoint's path and the messages number them from there. It changes only the
        numbering: the generator goes on from where the model's is.

        If the loss, a weight or the optimiser state becomes NaN or inf, or the
        epoch is interrupted (Ctrl-C), the weights, optimiser state and shuffling
        generator of the last finite epoch are restored; divergence raises
        TrainingDiverged naming the epoch and layer.
        """
        # One trainer at a time from the first check on: labels learnt,
        # History and stop_training reset while other threads' training calls wait (a fit
        # waiting for another's end had its stop_training set by the other's callback, and
        # two first fits each recorded its own classes_). The lock is held while the state
        # changes; between epochs (callbacks, validation, metrics) copies of the state from
        # other threads run. A callback may call any method of this model.
        # Taking the model and giving it back: a signal handler (Ctrl-C's, a SIGALRM
        # timeout's) runs only at a call or a loop's jump, and the two stores that take it,
        # and the one that gives it back, first thing in the finally, have none between
        # them: no handler's exception can leave the model owned by an ended fit (other
        # threads then waited forever). (A Ctrl-C deferral's handler swaps cost 14 us.)
        previous, me = _NOBODY, threading.get_ident()
        try:
            with self._lock:
                self._wait_for_fit()
                previous = self._fit_owner   # None, or this thread (a fit in a callback)
                self._fit_owner = me
                learnt = self.classes_, self.feature_names_in_
                try:
                    # the arguments first: a refused one learns no labels or names
                    shuffle = validation.check_flag(shuffle, "shuffle")
                    gradient_norms = validation.check_flag(gradient_norms, "gradient_norms")
                    X, T = self._data(X, Y, learn=True)
                    # rows in the model's own memory (views of engine.theta) would change
                    # as the steps write it: trained on as they were, on every backend
                    # (numba's weights had differed from the others' by 1e-2)
                    X, T = self._unshared(X), self._unshared(T)
                    epochs = validation.check_count(epochs, "epochs")
                    first = validation.check_count(initial_epoch, "initial_epoch")
                    tol = validation.check_tol(tol)
                    X, T, val = self._validation_rows(X, T, validation_data, validation_split)
                    batch_size = validation.check_batch_size(batch_size, len(X))
                    metric_fns = metric_table.get(metrics, self.loss)
                    callbacks = self._callbacks(callbacks, verbose)
                    if callbacks:
                        from .callbacks import check_monitors
                        check_monitors(callbacks, _logged(metric_fns, val is not None,
                                                          gradient_norms))
                    self._warn_if_untrainable()   # (an error under warnings-as-errors)
                    # a first fit's compile here, so that a Ctrl-C held back through it
                    # (seconds) leaves no labels learnt, as a refused fit
                    if self._ready_to_train is not None:
                        self._ready_to_train()
                except BaseException:  # a refused fit has learnt no labels or feature names
                    self.classes_, self.feature_names_in_ = learnt
                    raise
                self.history = history = History()
                self.stop_training = False
                # A device backend gets the training set once per fit (metrics read the
                # host copy).
                Xd, Td = (X, T) if self._to_device is None else self._to_device(X, T)
                val_d = (val if val is None or self._to_device is None
                         else self._to_device(*val))
                if not (callbacks or val or metric_fns or verbose or gradient_norms):
                    # nothing runs between its epochs: copies wait for its end
                    self._fit_quietly(Xd, Td, first, epochs, batch_size, tol, shuffle,
                                      history)
                    return history
            return self._fit_reporting(X, T, Xd, Td, val, val_d, first, epochs, batch_size,
                                       tol, shuffle, metric_fns, callbacks, verbose,
                                       gradient_norms, history)
        finally:
            if previous is not _NOBODY:
                self._fit_owner = previous
                if previous is None and self._fit_waiters:
                    self._wake_waiters()   # (lost to an exception: the waiters look again)

    def _fit_reporting(self, X, T, Xd, Td, val, val_d, first, epochs, batch_size, tol,
                       shuffle, metric_fns, callbacks, verbose, gradient_norms, history):
        """fit's epochs when something runs between them (callbacks, validation, metrics,
        verbose output, gradient norms): one epoch at a time, each recorded in ``history``
        after its callbacks, or undone whole (weights, optimiser state, generator, record)
        when it diverges or is interrupted before it was recorded. X, T: the training
        rows as checked (Xd, Td: where the backend reads them); val, val_d: likewise the
        validation rows, or None. Epochs ``first`` to ``epochs - 1`` (initial_epoch's)."""
        # model.history is this fit's however it ends: a fit a callback ran replaced it, and
        # an exception before an epoch's own handler below (in on_epoch_begin, say) left
        # the callback's there (hostile round 43)
        try:
            for cb in callbacks:   # every set_model before any on_train_begin, as Keras
                _hook(cb, "set_model", self)
            for cb in callbacks:
                _hook(cb, "on_train_begin", {"epochs": epochs, "initial_epoch": first,
                                             "samples": len(X), "batch_size": batch_size})
            perm = np.arange(len(X), dtype=np.int64)
            norms = np.zeros(len(self._net.layers)) if gradient_norms else None
            steps = -(-len(X) // batch_size)
            logs = {}
            with self._rollback() as snapshot:
                for epoch in range(first, epochs):
                    for cb in callbacks:
                        _hook(cb, "on_epoch_begin", epoch, {})
                    start = time.perf_counter()
                    saved_rng, recorded_so_far = self._rng.bit_generator.state, history._mark()
                    labels = self.classes_, self.feature_names_in_   # (a fit in a callback learns)
                    snapshot.save()
                    trained = recorded = False
                    try:
                        # the state written under the lock its copies take (get_state
                        # from another thread, during the callbacks below, sees this epoch)
                        with self._lock, self._undone_if_raising(snapshot, saved_rng):
                            if shuffle:
                                # a fresh permutation (not a reshuffle of the last one), so the
                                # order depends only on the generator and
                                # fit(1) + save/load + fit(1) == fit(2)
                                perm = self.permutation(len(X))
                            # Overflow on the way to divergence is reported once, as
                            # TrainingDiverged, not as NumPy warnings (which, as errors,
                            # would stop mid-epoch).
                            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                                if norms is None:
                                    loss = self._engine.train_epoch(Xd, Td, perm, batch_size)
                                else:
                                    norms[:] = 0
                                    loss = self._engine.train_epoch(Xd, Td, perm, batch_size,
                                                                    norms=norms)
                            loss = float(loss)
                            self._check_finite(loss, f"in epoch {epoch + 1}", "the weights of the "
                                               "last finite epoch were kept")
                            trained = True
                        logs = self._epoch_logs(loss, time.perf_counter() - start, X, T, val,
                                                val_d, metric_fns, norms, steps)
                        if verbose == 2:
                            from .callbacks import format_logs
                            print(f"epoch {epoch + 1}/{epochs}  {format_logs(logs)}", flush=True)
                        for cb in callbacks:
                            _hook(cb, "on_epoch_end", epoch, logs)
                        # after the callbacks (Keras's History is the last): values a callback
                        # adds to logs, a custom metric say, are recorded too
                        history.record(epoch, logs)
                        recorded = True
                    except BaseException as exc:
                        # Diverged, or interrupted before the epoch was recorded (in its training
                        # or its validation, metrics, callbacks or record): never leave the model
                        # half an epoch updated, nor an epoch trained that the History does not
                        # show. A callback's or metric's own error keeps the trained epoch, as in
                        # Keras. model.history is this fit's (a fit in a callback replaced it).
                        # (a timeout's TimeoutError from a signal handler is an interrupt too:
                        # kept, it left an epoch trained that the History did not show)
                        def undo():
                            # (a failed training was undone in its lock already, unless a
                            # second Ctrl-C skipped that: restored again, the same state)
                            with self._lock:
                                snapshot.restore()
                                self._rng.bit_generator.state = saved_rng
                            self.classes_, self.feature_names_in_ = labels
                            history._undo(recorded_so_far)
                        late, tries = None, 0   # (no call before the try)
                        while tries < UNDO_SIGNALS:   # again after a second signal
                            tries += 1
                            try:
                                self.history = history
                                if not recorded and (not trained or from_a_handler(exc)):
                                    run_whole(undo)
                                break
                            except BaseException as signalled:   # a Ctrl-C's or a timeout's
                                if UNDO_FAILED in signalled.__dict__:   # (the undo's own; no call)
                                    raise
                                # (kept's rule, no call: a Ctrl-C gives way to what follows)
                                late = (signalled if late is None
                                        or late.__class__ is KeyboardInterrupt else late)
                        raise_after_undo(exc, late)
                    if self.stop_training or (tol is not None and loss <= tol):
                        break
            for cb in callbacks:
                _hook(cb, "on_train_end", logs)
            return history
        except BaseException:
            # a progress bar's on_train_end will not run: closed now, it no longer draws
            # over what the caller prints next (a tqdm bar had stayed open till collected)
            from .callbacks import ProgressBar
            for cb in callbacks:
                if isinstance(cb, ProgressBar):
                    cb._close()
            raise
        finally:
            self.history = history

    def _epoch_logs(self, loss, seconds, X, T, val, val_d, metric_fns, norms, steps):
        """An epoch's logs: its loss, the metrics on the training rows, the validation
        loss and metrics ("val_" names), samples/s, and the per-layer RMS gradient norms
        from ``norms`` (summed over the epoch's ``steps``) when they were recorded."""
        logs = {"loss": loss, **self._scores(metric_fns, X, T)}
        if val is not None:
            logs["val_loss"] = float(self._engine.evaluate(*val_d))
            logs.update({f"val_{k}": v for k, v in self._scores(metric_fns, *val).items()})
        logs["samples_per_s"] = len(X) / seconds if seconds > 0 else float("inf")
        if norms is not None:
            logs["grad_norm"] = np.sqrt(norms / steps).tolist()
        return logs

    # The first chunk of epochs trained between two looks from Python (one compiled call)
    # is sized by this much work, in rows x parameters; the next ones by the time the
    # last took, to take about _CHUNK_SECONDS each: Ctrl-C stays prompt, and an undone
    # chunk is cheap to replay. (Sized by work alone, a chunk of a 784-256-128-10 net
    # on 64 rows was one 0.4 ms epoch: a Python round trip and a snapshot per epoch.)
    _CHUNK_WORK = 20_000_000
    _STEP_WORK = 250        # a compiled step's own cost, in that unit: ~250 ns per step
    _CHUNK_SECONDS = 0.02
    # fit copies its undo snapshot again only once the epochs trained since the last copy
    # took 1 / _SNAPSHOT_SHARE times as long as that copy; a chunk that goes wrong is
    # undone by going back to the snapshot and replaying the chunks since (Rewind).
    # Copying every chunk cost a 2048-2048-2048-10 net 17 % of its 64-row epochs.
    _SNAPSHOT_SHARE = 0.02

    def _first_chunk(self, n, batch_size):
        """Epochs of n rows in batches of batch_size that make _CHUNK_WORK: rows x
        parameters, plus _STEP_WORK per step (per-sample SGD on a small net is all
        steps: counted by rows x parameters alone, a first chunk of 20,000 rows of a
        2-3-1 net took 515 ms)."""
        steps = -(-n // batch_size)
        per_epoch = max(1, n * self._net.n_params + steps * self._STEP_WORK)
        return int(self._CHUNK_WORK * getattr(self._engine, "chunk_work_share", 1)
                   // per_epoch)

    def _fit_quietly(self, X, T, first, epochs, batch_size, tol, shuffle, history):
        """fit when nothing is reported between epochs: orders drawn for many epochs at
        once, chunks of epochs that are one compiled call each where the backend has
        train_epochs, and a snapshot only every so many chunks (_SNAPSHOT_SHARE).

        A chunk that diverges or is interrupted is undone by restoring the snapshot and
        replaying the chunks trained since it and the chunk's epochs before the bad one
        (the same data, orders and kernels give the same bits), and the generator is
        left as if only those epochs had been drawn, so the outcome is exactly the
        per-epoch loop's. Epochs ``first`` to ``epochs - 1`` (initial_epoch's).
        """
        n = len(X)
        most = max(1, min(1024, (1 << 20) // n))   # epochs per chunk: the orders' memory
        chunk = int(max(1, min(epochs - first, most, self._first_chunk(n, batch_size))))
        orders = _Orders(self, n, shuffle)

        def replay(k):   # the next k epochs of orders, trained again
            self._replay(X, T, orders.draw(k), batch_size)

        with self._rollback() as snapshot:
            back = None            # the snapshot's Rewind, once it is saved
            done = first           # epochs numbered from initial_epoch
            while done < epochs:
                k = min(chunk, epochs - done)
                rng_before, recorded_so_far = self._rng.bit_generator.state, history._mark()
                started = recorded = False
                try:
                    if back is None or back.due(self._SNAPSHOT_SHARE):
                        back = None   # (interrupted in the copy: nothing trained to undo)
                        back = Rewind(snapshot, history, self._rng, replay, rng_before,
                                       recorded_so_far)
                    chunk_orders = orders.draw(k)
                    started = True
                    start = time.perf_counter()
                    losses, finished, error = self._epochs(X, T, chunk_orders, batch_size,
                                                           tol, done)
                    if isinstance(error, _BadEpochUnplaced):
                        try:
                            run_whole(back.to_chunk_start)
                        except BaseException as signalled:   # (raised after the undo)
                            # a timeout there: the divergence said too, not lost
                            raise signalled from TrainingDiverged(
                                f"training diverged at or before epoch "
                                f"{done + error.epoch + 1} (not located: interrupted as "
                                f"its chunk was undone; the model is as after epoch {done})")
                        losses, finished, error = self._locate(
                            X, T, chunk_orders[:error.epoch + 1], batch_size, tol, done)
                    seconds = time.perf_counter() - start
                    back.trained += seconds
                    if error is not None:
                        # Back to this chunk's start, then redo its epochs before the bad one.
                        # Whole, signals held back (run_whole): a timeout's exception
                        # between two replayed chunks was taken for a failed replay. One
                        # raised after it goes on chained to the divergence, as elsewhere
                        # (it came bare: hostile round 49; no call in the except clause)
                        try:
                            run_whole(back.to_chunk_start)
                            if finished:
                                replay(finished)
                        except BaseException as signalled:   # (the chunk is then undone)
                            raise signalled from TrainingDiverged(
                                f"training diverged in epoch {done + finished + 1} "
                                f"(interrupted as its chunk was undone; the model is as "
                                f"after epoch {done})")
                    elif shuffle and len(losses) < k:   # stopped at tol: draw only what was used
                        self._rng.bit_generator.state = rng_before
                        orders.draw(len(losses))
                    kept = losses if error is None else losses[:finished]
                    self._record(history, done, kept, n, seconds, len(losses))
                    recorded = True
                    if error is not None:
                        raise error
                    back.chunks.append(len(losses))
                except BaseException as exc:
                    # Ctrl-C anywhere before the chunk's epochs are recorded (drawing the orders,
                    # as the compiled call returns, redrawing the generator, recording, replaying
                    # after a bad epoch): the whole chunk undone, generator and History included
                    def undo():
                        if started:
                            back.to_chunk_start()
                        else:
                            self._rng.bit_generator.state = rng_before
                        history._undo(recorded_so_far)
                    late, tries = None, 0   # (no call before the try: a signal after it escaped)
                    while not recorded and tries < UNDO_SIGNALS:
                        tries += 1
                        try:
                            run_whole(undo)
                            break
                        except BaseException as signalled:   # a Ctrl-C's or a timeout's
                            if UNDO_FAILED in signalled.__dict__:   # (the undo's own; no call)
                                raise
                            # (kept's rule, no call: a Ctrl-C gives way to what follows)
                            late = (signalled if late is None
                                    or late.__class__ is KeyboardInterrupt else late)
                    raise_after_undo(exc, late)
                done += len(losses)
                if len(losses) < k or (tol is not None and losses[-1] <= tol):
                    break
                if seconds > 0:   # the next chunk: about _CHUNK_SECONDS at this one's pace
                    chunk = int(min(most, 8 * chunk,
                                    max(1, len(losses) * self._CHUNK_SECONDS / seconds)))

    def _replay(self, X, T, orders, batch_size):
        """Train again the epochs of ``orders`` (k, n) already trained once: the same
        data, orders and kernels give the same bits."""
        with self._quiet():
            if len(orders) and getattr(self._engine, "train_epochs", None) is not None:
                self._engine.train_epochs(X, T, orders, batch_size, -1.0, np.empty(len(orders)))
            else:
                for order in orders:
                    self._engine.train_epoch(X, T, order, batch_size)

    def _draw_orders(self, k, n):
        """k epochs' orders (k, n), the same numbers k calls of permutation(n) would give."""
        orders = np.empty((k, n), dtype=np.int64)
        orders[...] = np.arange(n, dtype=np.int64)   # (np.tile: twice the Python work)
        return self._rng.permuted(orders, axis=1, out=orders)

    def _epochs(self, X, T, orders, batch_size, tol, done):
        """One epoch per row of orders (k, n); (losses, epochs finished cleanly, error or
        None). Stops after an epoch whose loss is <= tol, or at one that diverges (the
        model then holds that epoch's state) or is interrupted. One train_epochs call
        where the backend has it (Ctrl-C then undoes the whole chunk), else one
        train_epoch call per epoch."""
        train_epochs = getattr(self._engine, "train_epochs", None)
        losses, finished = [], 0
        try:
            if train_epochs is None:
                for e in range(len(orders)):
                    with self._quiet():
                        loss = float(self._engine.train_epoch(X, T, orders[e], batch_size))
                    self._check_finite(loss, f"in epoch {done + e + 1}", "the weights of the "
                                       "last finite epoch were kept")
                    losses.append(loss)
                    finished += 1
                    if tol is not None and loss <= tol:
                        break
                return losses, finished, None
            out = np.empty(len(orders))
            with self._quiet():
                finished_now, status = train_epochs(X, T, orders, batch_size,
                                                    -1.0 if tol is None else tol, out)
            losses, finished = out[:finished_now].tolist(), finished_now
            if status == 2 and len(orders) > 1:
                # theta and the optimiser state are checked after the call's last epoch:
                # one of the epochs before may have made them non-finite (_locate)
                return losses, finished, _BadEpochUnplaced(finished)
            if status == 2:
                # the model holds the bad epoch's state: _check_finite names what went bad
                where = f"in epoch {done + finished + 1}"
                self._check_finite(float(out[finished]), where, "the weights of the last "
                                   "finite epoch were kept")
                raise TrainingDiverged(f"training diverged {where}; the weights of the last "
                                       "finite epoch were kept")
        except TrainingDiverged as exc:
            return losses, finished, exc
        except BaseException as exc:  # KeyboardInterrupt, ...
            if train_epochs is None:
                return losses, finished, exc
            # Ctrl-C is raised once the call has returned, its epochs unchecked: the
            # whole chunk is undone
            return [], 0, exc
        return losses, finished, None

    def _locate(self, X, T, orders, batch_size, tol, done):
        """The chunk of ``orders`` (k, n) a compiled call found bad at its last epoch
        (_BadEpochUnplaced), trained again from its start one epoch per call, whose one
        epoch is checked (weights and optimiser state too): _epochs's result for the
        first bad epoch, as the per-epoch loop finds it. Rare: only a chunk that
        diverged pays it."""
        losses = []
        for e in range(len(orders)):
            got, finished, error = self._epochs(X, T, orders[e:e + 1], batch_size, tol,
                                                done + e)
            losses += got
            if error is not None:
                return losses, len(losses), error
        return losses, len(losses), RuntimeError(
            "training the chunk of epochs again did not give the same numbers (was the "
            "number of threads changed during fit?); the weights of the last epoch "
            "trained were kept")

    @staticmethod
    def _record(history, done, losses, n, seconds, epochs_run):
        rate = n * max(epochs_run, 1) / seconds if seconds > 0 else float("inf")
        history.epoch.extend(range(done, done + len(losses)))
        history.history["loss"].extend(losses)
        history.history.setdefault("samples_per_s", []).extend([rate] * len(losses))

    def _validation_rows(self, X, T, validation_data, validation_split):
        """(X, T, (X_val, T_val) or None): validation_split holds out the last rows."""
        split = validation.check_fraction(validation_split, "validation_split")
        if validation_data is not None:
            if split:
                raise ValueError("give validation_data or validation_split, not both")
            validation.check_pair(validation_data, "validation_data must be a tuple "
                                  "(X_val, Y_val),")
            with validation_data_errors():
                return X, T, self._data(*validation_data)
        if not split:
            return X, T, None
        # Keras's rule: the first floor(n (1 - split)) rows train, the rest validate,
        # computed in the split's own type as Keras computes it (np.float32(0.07) of 1,000
        # rows: 930 train, where its float64 value gives 929)
        with np.errstate(over="ignore"):
            trained = len(X) * (1.0 - validation_split)
        if not np.isfinite(trained):   # (a float16 product past 65504)
            trained = len(X) * (1.0 - split)
        n_val = len(X) - math.floor(trained)
        if not 1 <= n_val < len(X):
            raise ValueError(f"validation_split={validation_split} of {len(X)} rows leaves "
                             f"{n_val} for validation and {len(X) - n_val} for training; "
                             "both need at least one")
        return X[:-n_val], T[:-n_val], (X[-n_val:], T[-n_val:])

    def _scores(self, metric_fns, X, T):
        if not metric_fns:
            return {}
        P = self._engine.predict(X)
        return {name: fn(P, T) for name, fn in metric_fns}

    def _callbacks(self, callbacks, verbose):
        if callbacks is None and type(verbose) is int and verbose == 0:   # the default
            return []
        if not isinstance(verbose, (bool, np.bool_, int, np.integer)) or verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r:.60}")
        callbacks = _callback_list(callbacks)
        for cb in callbacks:
            if isinstance(cb, type):   # its hooks would be called without an instance
                raise TypeError(f"callbacks: pass an instance, {cb.__name__}(...), not the "
                                f"class {cb.__name__}")
            if not any([hasattr(cb, h) for h in _HOOKS]):   # (a list: see _callback_list)
                raise TypeError(f"callbacks must define one of {_HOOKS}, got {cb!r}")
            # Keras's batch, test and predict hooks (methods: a data attribute such as
            # self.on_rank is none of fit's business)
            other = sorted(h for h in dir(cb) if h.startswith("on_") and h not in _HOOKS
                           and callable(getattr(cb, h, None)))
            if other:
                raise TypeError(f"callbacks: {type(cb).__name__} defines {', '.join(other)}, "
                                f"which fit never calls; it calls {', '.join(_HOOKS)} (a "
                                "per-batch hook would take every step out of the compiled "
                                "epoch)")
        if verbose == 1:
            from .callbacks import ProgressBar
            callbacks.append(ProgressBar())
        return callbacks

    def _undone_if_raising(self, snapshot, rng_state):
        """With the lock held: restore ``snapshot`` and the generator if the block raises,
        before the lock is let go (another thread's get_state between an epoch that
        diverged and its undo copied the NaN weights). See :class:`UndoneIfRaising`."""
        return UndoneIfRaising(self, snapshot, rng_state)

