"""Hostile round 48: a signal handler's exception (a timeout's TimeoutError, a SIGTERM
handler's SystemExit) arriving while a diverged step or a failed save is undone was
dropped behind TrainingDiverged or the OSError; an undo's own SystemExit was run again
a hundred times, then dropped."""
import signal
import sys

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import _signals, _undo


@pytest.fixture
def handlers():
    def timeout(signum, frame):
        raise TimeoutError("timed out")

    def terminate(signum, frame):
        sys.exit(143)
    previous = {s: signal.signal(s, h) for s, h in ((signal.SIGALRM, timeout),
                                                    (signal.SIGTERM, terminate))}
    yield
    for s, h in previous.items():
        signal.signal(s, h)


@pytest.mark.parametrize("signum, raised", [(signal.SIGALRM, TimeoutError),
                                            (signal.SIGTERM, SystemExit),
                                            (signal.SIGINT, KeyboardInterrupt)],
                         ids=["timeout", "sigterm", "ctrl-c"])
def test_a_signal_during_a_diverged_steps_undo_is_raised(backend, signum, raised,
                                                        monkeypatch, handlers):
    m = fm.Model([fm.Dense(4, "linear"), fm.Dense(2)], input_dim=3, loss="mse",
                 optimizer=fm.SGD(lr=10.0), backend=backend, dtype="float64", seed=0)
    before = m.get_state()
    restore = _undo.Snapshot.restore

    def signalled(self):   # the signal arrives as the step is undone (held back there)
        signal.raise_signal(signum)
        restore(self)
    monkeypatch.setattr(_undo.Snapshot, "restore", signalled)
    with pytest.raises(raised) as caught:
        m.apply_gradient(np.full(m.get_state()["theta"].shape, 1e308))   # theta overflows
    assert isinstance(caught.value.__cause__, fm.TrainingDiverged)
    monkeypatch.undo()
    now = m.get_state()
    for key in ("theta", "opt_buffers", "opt_step"):
        np.testing.assert_array_equal(now[key], before[key])


def _handlers_exception(signum):
    try:
        signal.raise_signal(signum)
    except BaseException as exc:   # raised by the handler, so from_a_handler knows it
        return exc
    raise AssertionError("the handler raised nothing")


@pytest.mark.parametrize("exc", [fm.TrainingDiverged("diverged"), OSError(28, "no space"),
                                 None], ids=["diverged", "save's OSError", "own undo"])
def test_raise_after_undo_raises_a_late_handlers_exception(exc, handlers):
    late = _handlers_exception(signal.SIGALRM)
    with pytest.raises(TimeoutError) as caught:
        _signals.raise_after_undo(exc, late)
    assert caught.value.__cause__ is exc


def test_raise_after_undo_keeps_the_first_stop(handlers):
    first = _handlers_exception(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt) as caught:   # a second Ctrl-C: the first one
        _signals.raise_after_undo(first, KeyboardInterrupt())
    assert caught.value is first
    timeout = _handlers_exception(signal.SIGALRM)
    with pytest.raises(TimeoutError) as caught:         # a Ctrl-C after a timeout: the timeout
        _signals.raise_after_undo(timeout, first)
    assert caught.value is timeout
    with pytest.raises(TimeoutError) as caught:         # a timeout after a Ctrl-C: the timeout
        _signals.raise_after_undo(first, timeout)
    assert caught.value.__cause__ is first


@pytest.mark.parametrize("error", [SystemExit(3), GeneratorExit()],
                         ids=["SystemExit", "GeneratorExit"])
def test_an_undos_own_base_exception_is_raised_after_its_retries(error):
    runs = []

    def failing():
        runs.append(1)
        raise error
    with pytest.raises(type(error)) as raised:
        _signals.run_whole(failing)
    assert len(runs) == _signals.UNDO_RETRIES + 1
    assert _signals.UNDO_FAILED in raised.value.__dict__
