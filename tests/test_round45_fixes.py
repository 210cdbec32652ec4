"""Hostile round 45: the NumPy reference's undo of a diverged step cut short by one
signal; an estimator's restore of the best skipped by a timeout after a Ctrl-C; a
timeout lost behind a Ctrl-C; an undo failing on every call looping forever."""
import signal
import sys
import warnings

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import _signals, _undo
from fastmlp.backends import reference
from helpers import signal_at_start_of


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGALRM], ids=["ctrl-c", "timeout"])
def test_the_references_undo_of_a_diverged_step_runs_whole(signum, timeout_handler):
    X, Y = np.full((4, 3), 1e200), np.zeros((4, 2))   # a step whose loss overflows
    m = fm.Model([fm.Dense(6, "linear"), fm.Dense(2, "linear")], input_dim=3, loss="mse",
                 optimizer=fm.Adam(lr=0.1), backend="numpy", dtype="float64", seed=0)
    m.train_on_batch(np.ones((4, 3)), np.zeros((4, 2)))
    before = m.get_state()
    restore = reference.NumpyBackend._restore.__code__

    def trace(frame, event, arg):   # the signal just after theta is put back
        if frame.f_code is restore and event == "line" \
                and frame.f_lineno == restore.co_firstlineno + 2:
            sys.settrace(None)
            signal.raise_signal(signum)
        return trace
    sys.settrace(lambda frame, event, arg: trace if frame.f_code is restore else None)
    with pytest.raises((KeyboardInterrupt, TimeoutError)):
        m.train_on_batch(X, Y)
    sys.settrace(None)
    now = m.get_state()
    for key in ("theta", "opt_buffers", "opt_step"):
        np.testing.assert_array_equal(now[key], before[key])
    m.train_on_batch(np.ones((4, 3)), np.zeros((4, 2)))   # trains on


def test_a_timeout_as_the_estimators_best_is_restored(timeout_handler):
    from fastmlp import sklearn as fsk
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    y = X @ [1.0, -2.0, 0.5, 0.0] + rng.normal(size=200)
    est = fsk.MLPRegressor(hidden_layer_sizes=(8,), early_stopping=True, max_iter=40,
                           n_iter_no_change=1000, learning_rate_init=0.05, random_state=0)
    seen, fits = {}, [0]
    epochs = type(est)._epochs

    def spy(self, *args):
        seen["best"] = args[-1]
        return epochs(self, *args)
    fit_code = fm.Model.fit.__code__

    def first(frame, event, arg):
        if event == "call" and frame.f_code is fit_code:
            fits[0] += 1
            if fits[0] == 25:
                sys.settrace(None)
                sys.setprofile(signal_at_start_of(_signals.run_whole.__code__, signal.SIGALRM))
                signal.raise_signal(signal.SIGINT)
    type(est)._epochs = spy
    try:
        sys.settrace(first)
        with pytest.raises(TimeoutError), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X, y)
    finally:
        sys.settrace(None)
        sys.setprofile(None)
        type(est)._epochs = epochs
    best = seen["best"][0]
    state = est.model_.get_state()
    assert best is not None
    np.testing.assert_array_equal(state["theta"], best["theta"])


def test_a_timeout_during_the_undo_of_a_ctrl_c_is_not_lost(backend, timeout_handler):
    X = np.random.default_rng(0).normal(size=(8, 3))
    Y = np.random.default_rng(1).random((8, 2))
    m = fm.Model([fm.Dense(8, "tanh"), fm.Dense(2, "sigmoid")], input_dim=3, loss="mse",
                 optimizer=fm.Adam(lr=0.01), backend=backend, dtype="float64", seed=0)
    start = m.get_state()
    record = fm.Model._record.__code__

    def first(frame, event, arg):   # Ctrl-C as the first chunk is recorded
        if event == "call" and frame.f_code is record:
            sys.settrace(None)
            sys.setprofile(signal_at_start_of(_signals.run_whole.__code__, signal.SIGALRM))
            signal.raise_signal(signal.SIGINT)
    sys.settrace(first)
    try:
        with pytest.raises(TimeoutError) as caught:
            m.fit(X, Y, epochs=20)
    finally:
        sys.settrace(None)
        sys.setprofile(None)
    assert isinstance(caught.value.__cause__, KeyboardInterrupt)
    now = m.get_state()
    np.testing.assert_array_equal(now["theta"], start["theta"])
    assert m.history.epoch == []


@pytest.mark.parametrize("how", ["keyboard_interrupt", "handler"])
def test_an_undo_that_always_fails_gives_up(how, timeout_handler, monkeypatch):
    X = np.random.default_rng(0).normal(size=(6, 3))
    Y = np.random.default_rng(1).random((6, 2))
    m = fm.Model([fm.Dense(6, "tanh"), fm.Dense(2, "sigmoid")], input_dim=3, loss="mse",
                 optimizer=fm.Adam(lr=0.1), backend="numpy", dtype="float64", seed=0)
    calls = [0]

    def failing_restore(self):
        calls[0] += 1
        if calls[0] > 50_000:
            raise RuntimeError("the undo was retried without end")
        if how == "keyboard_interrupt":
            raise KeyboardInterrupt("the undo's own")
        timeout_handler(signal.SIGALRM, None)   # fails through the handler's function
    monkeypatch.setattr(_undo.Snapshot, "restore", failing_restore)

    class CtrlC(fm.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt
    with pytest.raises((KeyboardInterrupt, TimeoutError)):
        m.fit(X, Y, epochs=2, callbacks=[CtrlC()])
    assert 0 < calls[0] <= (_signals.UNDO_SIGNALS + 1) ** 2
