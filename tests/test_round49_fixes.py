"""Hostile round 49: a timeout (or a SIGTERM handler's SystemExit) held back beside a
Ctrl-C was lost behind it; a first train_on_batch of labels interrupted in the training
kernel's compile kept its classes_; the compile notice's timer outlived a signal at its
start; a quiet fit's timeout during a divergence's undo came without the divergence."""
import signal
import threading
import time

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import _signals, _undo, warmup


@pytest.mark.parametrize("order", [(signal.SIGINT, signal.SIGALRM),
                                   (signal.SIGALRM, signal.SIGINT)],
                         ids=["ctrl-c first", "timeout first"])
def test_a_timeout_held_back_beside_a_ctrl_c_is_raised(order, timeout_handler):
    with pytest.raises(TimeoutError) as caught:
        with _signals.signals_deferred():
            for signum in order:
                signal.raise_signal(signum)
    if order[0] == signal.SIGINT:
        assert isinstance(caught.value.__context__, KeyboardInterrupt)


def test_kept_gives_way_only_for_a_ctrl_c():
    ctrl_c, timeout, other = KeyboardInterrupt(), TimeoutError(), ValueError()
    assert _signals.kept(None, ctrl_c) is ctrl_c
    assert _signals.kept(ctrl_c, timeout) is timeout and timeout.__context__ is ctrl_c
    assert _signals.kept(timeout, ctrl_c) is timeout
    assert _signals.kept(other, timeout) is other
    assert _signals.kept(ctrl_c, KeyboardInterrupt()) is ctrl_c


def test_a_ctrl_c_and_a_timeout_during_a_diverged_steps_undo(backend, monkeypatch,
                                                            timeout_handler):
    m = fm.Model([fm.Dense(4, "linear"), fm.Dense(2)], input_dim=3, loss="mse",
                 optimizer=fm.SGD(lr=10.0), backend=backend, dtype="float64", seed=0)
    before = m.get_state()
    restore = _undo.Snapshot.restore

    def signalled(self):   # both arrive as the step is undone (held back there)
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGALRM)
        restore(self)
    monkeypatch.setattr(_undo.Snapshot, "restore", signalled)
    with pytest.raises(TimeoutError) as caught:
        m.apply_gradient(np.full(before["theta"].shape, 1e308))
    monkeypatch.undo()
    assert isinstance(caught.value.__cause__, fm.TrainingDiverged)
    np.testing.assert_array_equal(m.get_state()["theta"], before["theta"])


@pytest.mark.parametrize("call", ["train_on_batch", "fit"])
def test_a_ctrl_c_in_the_first_compile_learns_no_labels(compiled_backend, call):
    m = fm.Model([fm.Dense(4, "tanh"), fm.Dense(2, "softmax")], input_dim=3,
                 loss="cross_entropy", backend=compiled_backend, seed=0)
    X, y = np.ones((4, 3)), np.array(["cat", "dog", "cat", "dog"])
    before = m.get_weights()

    def compiling(**_):   # a Ctrl-C held back through the compile, raised at its end
        raise KeyboardInterrupt
    m._ready_to_train = compiling
    with pytest.raises(KeyboardInterrupt):
        getattr(m, call)(X, y)
    assert m.classes_ is None
    for w, v in zip(m.get_weights(), before):
        np.testing.assert_array_equal(w, v)
    m._ready_to_train = None
    getattr(m, call)(X, np.array(["ant", "bee", "ant", "bee"]))   # other labels: learnt
    assert list(m.classes_) == ["ant", "bee"]


def test_the_compile_notice_never_outlives_its_compile(monkeypatch, capsys):
    monkeypatch.setattr(warmup, "NOTICE_AFTER_S", 0.05)
    start = threading.Timer.start

    def interrupted(self):   # a signal as start() returns
        start(self)
        raise KeyboardInterrupt
    monkeypatch.setattr(threading.Timer, "start", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with warmup.compiling("predict", "float32"):
            pass
    monkeypatch.undo()
    time.sleep(0.3)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("nth, says", [(1, "at or before epoch"), (2, "in epoch")],
                         ids=["before the bad epoch is found", "after"])
def test_a_timeout_in_a_quiet_fits_divergence_undo_names_the_divergence(
        backend, nth, says, monkeypatch, timeout_handler):
    m = fm.Model([fm.Dense(4, "linear"), fm.Dense(1)], input_dim=3, loss="mse",
                 optimizer=fm.SGD(lr=1e30), backend=backend, dtype="float64", seed=0)
    X, Y = np.ones((8, 3)), np.ones((8, 1))
    before = m.get_state()
    to_chunk_start, calls = _undo.Rewind.to_chunk_start, []

    def signalled(self):   # one timeout, as the divergence's nth undo runs (the first
        calls.append(1)    # before the bad epoch is located, the second after)
        if len(calls) == nth:
            signal.raise_signal(signal.SIGALRM)
        to_chunk_start(self)
    monkeypatch.setattr(_undo.Rewind, "to_chunk_start", signalled)
    with pytest.raises(TimeoutError) as caught:
        m.fit(X, Y, epochs=50, batch_size=8)
    monkeypatch.undo()
    cause = caught.value.__cause__
    assert isinstance(cause, fm.TrainingDiverged)
    # what the model is, not "the weights of the last finite epoch were kept" (round 50)
    assert says in str(cause) and str(cause).endswith("the model is as after epoch 0)")
    np.testing.assert_array_equal(m.get_state()["theta"], before["theta"])
    assert len(m.history.history["loss"]) == 0
