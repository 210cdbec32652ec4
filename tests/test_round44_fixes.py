"""Hostile round 44: a second signal whose handler raises something other than
KeyboardInterrupt (a timeout's TimeoutError) landing as an undo begins (at run_whole's
start) ran no undo: the retry loops caught KeyboardInterrupt alone (the timeout is now
raised once the undo is done: round 45, not lost behind the Ctrl-C). And the NumPy
reference's train_on_batch undid a step cut short without run_whole, so a second
Ctrl-C there left it half a step on."""
import signal
import sys

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import _signals, optimizers
from fastmlp.backends import reference
from helpers import ctrl_c_at_line, signal_at_start_of


def make(backend, optimizer=None):
    return fm.Model([fm.Dense(8, "tanh"), fm.Dense(2, "sigmoid")], input_dim=3, loss="mse",
                    optimizer=optimizer or fm.Adam(lr=0.01), backend=backend,
                    dtype="float64", seed=0)


def data(rows=16):
    return (np.random.default_rng(0).normal(size=(rows, 3)),
            np.random.default_rng(1).random((rows, 2)))


def test_a_timeout_as_the_undo_of_an_interrupted_epoch_begins(backend, timeout_handler):
    X, Y = data()

    class CtrlC(fm.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                sys.setprofile(signal_at_start_of(_signals.run_whole.__code__,
                                                  signal.SIGALRM))
                signal.raise_signal(signal.SIGINT)
    m = make(backend)
    m.fit(X, Y, epochs=1)
    with pytest.raises(TimeoutError):   # the timeout, not lost behind the Ctrl-C
        m.fit(X, Y, epochs=3, callbacks=[CtrlC()])
    sys.setprofile(None)
    assert m.history.epoch == [0]
    assert int(m.get_state()["opt_step"][0]) == 2   # the interrupted epoch undone
    m.fit(X, Y, epochs=1)
    twin = make(backend)
    for _ in range(3):
        twin.fit(X, Y, epochs=1)
    np.testing.assert_array_equal(m.get_state()["theta"], twin.get_state()["theta"])


def test_a_timeout_as_the_undo_of_an_interrupted_quiet_fit_begins(backend, timeout_handler):
    X, Y = data(8)
    m = make(backend)
    start = m.get_state()
    # Ctrl-C as the first chunk's compiled call returns, a timeout as the undo begins
    ctrl_c_at_line(fm.Model._fit_quietly.__code__, "seconds = time.perf_counter() - start",
                   _signals.run_whole.__code__, signal.SIGALRM)
    with pytest.raises(TimeoutError):
        m.fit(X, Y, epochs=50)
    sys.settrace(None)
    sys.setprofile(None)
    now = m.get_state()
    assert m.history.epoch == []
    np.testing.assert_array_equal(now["theta"], start["theta"])
    np.testing.assert_array_equal(now["opt_step"], start["opt_step"])
    assert now["rng_state"] == start["rng_state"]


def test_a_timeout_as_apply_gradients_undo_begins(backend, timeout_handler):
    X, Y = data()
    m = make(backend)
    grad = m.gradient_vector(X, Y)[1]
    before = m.get_state()
    # Ctrl-C inside the Adam update, then the timeout as the undo begins
    ctrl_c_at_line(optimizers.update.__code__, "v *= b2", _signals.run_whole.__code__,
                   signal.SIGALRM)
    with pytest.raises(TimeoutError):
        m.apply_gradient(grad)
    sys.settrace(None)
    sys.setprofile(None)
    now = m.get_state()
    for key in ("theta", "opt_buffers", "opt_step"):
        np.testing.assert_array_equal(now[key], before[key])


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGALRM], ids=["ctrl-c", "timeout"])
def test_the_references_train_on_batch_undone_whole_after_a_second_signal(second,
                                                                          timeout_handler):
    X, Y = data(6)
    m = make("numpy", fm.Adam(lr=0.1))
    before = m.get_state()
    # Ctrl-C inside the Adam update, then the second signal as the restore begins
    ctrl_c_at_line(optimizers.update.__code__, "v *= b2",
                   reference.NumpyBackend._restore.__code__, second)
    with pytest.raises(TimeoutError if second == signal.SIGALRM else KeyboardInterrupt):
        m.train_on_batch(X, Y)
    sys.settrace(None)
    sys.setprofile(None)
    now = m.get_state()
    for key in ("theta", "opt_buffers", "opt_step"):
        np.testing.assert_array_equal(now[key], before[key])
