"""Putting a model back as it was: snapshots of what training changes, and the ways
training calls undo a diverged or interrupted step, epoch or chunk of epochs.

:class:`Snapshot` copies aside theta, the optimiser buffers in use and the step, no
more; :class:`SnapshotLease` lends a model's snapshot to one training call at a time
(Model._rollback); :class:`UndoneIfRaising` undoes one epoch of fit that raises;
:class:`Rewind` takes a quiet fit back to the start of any chunk of epochs trained
since its snapshot, by replaying the chunks before it (fastmlp._fitting).
"""
from __future__ import annotations

import time

import numpy as np

from . import rules
from ._signals import from_a_handler, run_whole


class Snapshot:
    """What a training step or epoch changes in theta and the optimiser state: theta, the
    buffers in use (fastmlp.rules.buffers_in_use: none for plain SGD) and the step.
    save() copies them aside, restore() puts them back: what a rollback needs, no more."""

    def __init__(self, theta, state, pull, push):
        self._live = theta, state
        self._pull, self._push = pull, push   # the model's, for parameters on a device
        self._theta = np.empty_like(theta)
        self._buffers = np.empty_like(state.buffers[:rules.buffers_in_use(state)])
        self._rows = 0
        self._step = state.step.copy()
        self.fresh = True   # the next save writes memory never written (its pages fault in)

    def save(self):
        theta, state = self._live
        self._pull()
        # the rows in use now: a callback may have given the model momentum since
        self._rows = rules.buffers_in_use(state)
        if len(self._buffers) < self._rows:
            self._buffers = np.empty_like(state.buffers[:self._rows])
            self.fresh = True
        np.copyto(self._theta, theta)
        if self._rows:   # (none for plain SGD: two slices and a call saved per fit)
            np.copyto(self._buffers[:self._rows], state.buffers[:self._rows])
        np.copyto(self._step, state.step)
        self.fresh = False

    def cover(self):
        """Save the optimiser-buffer rows save() left out, as they are now: not in use
        since (the optimiser's kind and settings then used fewer), they are unchanged, and
        restore() must put them back once a new optimiser (a callback's, say) puts them in
        use or set_state writes them. Model calls it before either changes them."""
        state = self._live[1]
        rows = len(state.buffers)
        if self._rows < rows:
            if len(self._buffers) < rows:
                grown = np.empty_like(state.buffers)
                grown[:self._rows] = self._buffers[:self._rows]
                self._buffers = grown
            np.copyto(self._buffers[self._rows:], state.buffers[self._rows:])
            self._rows = rows

    def restore(self):
        theta, state = self._live
        np.copyto(theta, self._theta)
        if self._rows:
            np.copyto(state.buffers[:self._rows], self._buffers[:self._rows])
        np.copyto(state.step, self._step)
        self._push()


class SnapshotLease:
    """Model._rollback's context (a class: contextlib's generator cost a 6-row fit 1 us)."""

    __slots__ = ("_model", "snapshot", "__weakref__")

    def __init__(self, model):
        self._model = model

    def __enter__(self):
        model = self._model
        if model._leases:
            snapshot = model._new_snapshot()
        else:
            if model._snapshot is None:
                model._snapshot = model._new_snapshot()
            snapshot = model._snapshot
        self.snapshot = snapshot
        model._leases.add(self)
        return snapshot

    def __exit__(self, *exc_info):
        self._model._leases.discard(self)
        return False


class UndoneIfRaising:
    """Model._undone_if_raising's context. A class, not a contextlib generator: a signal
    landing as the generator's __exit__ began left it suspended at its yield, and its
    ``except BaseException`` undo then ran on the GeneratorExit of its garbage collection,
    after the fit, over the training done since (hostile round 43: the weights of 33 of
    2,991 interrupted fits changed when the exception was dropped). Cut short so, this
    one does nothing: the fit's own handler undoes the epoch."""

    __slots__ = ("_model", "_snapshot", "_rng_state")

    def __init__(self, model, snapshot, rng_state):
        self._model, self._snapshot, self._rng_state = model, snapshot, rng_state

    def __enter__(self):
        return None

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is not None:
            run_whole(self._undo)
        return False

    def _undo(self):
        self._snapshot.restore()
        self._model._rng.bit_generator.state = self._rng_state


class Rewind:
    """The way back to the start of any chunk of epochs fit trained since this saved
    ``snapshot``: restore it and the generator ``rng``'s state, then ``replay(k)`` (the
    next k epochs trained again) for each of ``chunks`` (the epochs of each chunk
    trained since, appended by fit). ``trained``: the seconds they took, which fit adds
    up to judge when a new snapshot is due. ``rng_state`` and ``mark``: the generator's
    state and the History's mark (History._mark) now, as the caller has just read them."""

    def __init__(self, snapshot, history, rng, replay, rng_state, mark):
        # A first copy into fresh memory is no measure of the next ones (the pages fault
        # in: 226 ms against 8 ms for a 2048-2048-2048-10 net's Adam state): the next
        # chunk copies again, and times that.
        self.unmeasured = snapshot.fresh
        start = time.perf_counter()
        snapshot.save()
        self.cost = time.perf_counter() - start
        self._snapshot, self._history, self._rng, self._replay = snapshot, history, rng, replay
        self._rng_state, self._mark = rng_state, mark
        self.chunks, self.trained = [], 0.0

    def due(self, share):
        """Whether copying the snapshot again now costs at most ``share`` of the
        training since the last copy (or that copy's time is unknown)."""
        return self.unmeasured or self.cost <= share * self.trained

    def to_chunk_start(self):
        """The model (weights, optimiser state, generator) as at the start of the chunk
        after ``chunks``; idempotent. A replay that fails (no memory for its orders, say)
        leaves the model as the snapshot has it and the History without the epochs since:
        consistent, if shorter."""
        try:
            self._to_snapshot()
            for k in self.chunks:
                self._replay(k)
        except Exception as exc:
            if from_a_handler(exc):
                raise   # a timeout's: the caller runs this again (run_whole)
            self._to_snapshot()
            self._history._undo(self._mark)
            self.chunks.clear()
            raise

    def _to_snapshot(self):
        self._snapshot.restore()
        self._rng.bit_generator.state = self._rng_state
