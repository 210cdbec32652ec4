"""Hostile round 43: a Ctrl-C landing as a context's __exit__ began (a trace function
raises it there, as tests/test_sigint_everywhere.py stands in for a signal handler):
no undo runs later, when the exception is freed; model.history is the fit's own after
an exception between epochs; no snapshot lease is left behind."""
import gc
import sys

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import _undo


def make(backend):
    return fm.Model([fm.Dense(8, "tanh"), fm.Dense(2, "sigmoid")], input_dim=3, loss="mse",
                    optimizer=fm.SGD(lr=0.1), backend=backend, dtype="float64", seed=0)


def data():
    return (np.random.default_rng(0).normal(size=(16, 3)),
            np.random.default_rng(1).random((16, 2)))


class Log(fm.callbacks.Callback):
    pass


def interrupt_at_exit_of(cls):
    """A trace function raising KeyboardInterrupt when ``cls.__exit__`` is called, once."""
    code = cls.__exit__.__code__

    def tracer(frame, event, arg):
        if event == "call" and frame.f_code is code:
            sys.settrace(None)
            raise KeyboardInterrupt
        return None
    return tracer


def test_an_undo_cut_short_does_not_run_when_the_exception_is_freed(backend):
    X, Y = data()
    m = make(backend)
    m.fit(X, Y, epochs=1)
    before = m.get_state()
    sys.settrace(interrupt_at_exit_of(_undo.UndoneIfRaising))
    try:
        with pytest.raises(KeyboardInterrupt) as caught:
            m.fit(X, Y, epochs=3, callbacks=[Log()])
    finally:
        sys.settrace(None)
    kept = caught.value   # held, as a REPL's sys.last_traceback holds it
    after_undo = m.get_state()
    np.testing.assert_array_equal(after_undo["theta"], before["theta"])   # epoch undone
    assert after_undo["rng_state"] == before["rng_state"]
    m.fit(X, Y, epochs=5)
    trained = m.get_state()
    del kept, caught
    gc.collect()
    now = m.get_state()
    np.testing.assert_array_equal(now["theta"], trained["theta"])
    assert now["rng_state"] == trained["rng_state"]


def test_model_history_is_the_fits_own_after_an_exception_between_epochs(backend):
    X, Y = data()
    m = make(backend)

    class Nested(fm.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                self.model.fit(X[:8], Y[:8], epochs=5)

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        m.fit(X, Y, epochs=3, callbacks=[Nested()])
    assert m.history.epoch == [0] and len(m.history.history["loss"]) == 1


def test_a_lease_cut_short_is_forgotten_with_its_frame(backend):
    X, Y = data()
    m = make(backend)
    sys.settrace(interrupt_at_exit_of(_undo.SnapshotLease))
    try:
        with pytest.raises(KeyboardInterrupt):
            m.fit(X, Y, epochs=2)
    finally:
        sys.settrace(None)
    gc.collect()
    assert len(m._leases) == 0
    m.fit(X, Y, epochs=1)   # the model's own snapshot again, not a new one per fit
    snapshot = m._snapshot
    m.fit(X, Y, epochs=1)
    assert m._snapshot is snapshot and len(m._leases) == 0
