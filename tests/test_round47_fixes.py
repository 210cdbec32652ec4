"""Hostile round 47: a refused refit's restore of the estimator split by a signal (the
estimator left empty); set_weights' push skipped by a signal (the guarded step kept the
old weights' bounds); a third signal of a burst skipping an undo in the retry loop's
except clause. Each signal is raised at a chosen call's start (a profile hook), where
Python runs handlers."""
import sys

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import _signals, model as model_module
from helpers import signal_at, signalling


@pytest.mark.parametrize("nth", [1, 2, 3, 4])
@pytest.mark.filterwarnings("ignore::UserWarning")   # (ConvergenceWarning: 3 epochs)
def test_a_refused_refit_keeps_the_estimator_whole(nth, timeout_handler):
    fsk = pytest.importorskip("fastmlp.sklearn")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), rng.integers(0, 2, 40)
    est = fsk.MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0)
    est.fit(X, y)
    params, before = est.get_params(), est.predict_proba(X)
    prepare = type(est)._prepare

    def refused(self, *args):
        raise ValueError("refused")
    type(est)._prepare = refused
    try:
        # a signal at a C call after the refusal (the restore made two: __dict__.clear,
        # then __dict__.update, which a signal at its start skipped)
        sys.setprofile(signal_at(refused.__code__, None, nth))
        with pytest.raises((TimeoutError, ValueError)):
            try:
                est.fit(X, y)
            finally:   # (the nth C call may be this one, once the fit is over)
                sys.setprofile(None)
    finally:
        type(est)._prepare = prepare
    assert est.get_params() == params
    np.testing.assert_array_equal(est.predict_proba(X), before)


def test_set_weights_forgets_the_guards_bounds_whatever_a_signal_does(compiled_backend,
                                                                      timeout_handler):
    m = fm.Model([fm.Dense(5, "linear"), fm.Dense(2)], input_dim=4, loss="mse",
                 optimizer=fm.SGD(lr=0.5), backend=compiled_backend, dtype="float32",
                 seed=0)
    calls, push = [], m._push   # the engine's push (the guard's bounds forgotten)

    def counted():
        push()
        calls.append(1)
    m._push = counted
    new = [w + 1 for w in m.get_weights()]
    sys.setprofile(signal_at(counted.__code__, (), 0))   # a signal as push begins
    with pytest.raises(TimeoutError):
        m.set_weights(new)
    sys.setprofile(None)
    assert calls == [1]   # push ran to its end (the timeout raised after it)
    for w, v in zip(m.get_weights(), new):
        np.testing.assert_array_equal(w, v)


@pytest.mark.parametrize("signals", [2, 3, 4, 6])
def test_a_burst_of_signals_never_skips_apply_gradients_undo(backend, signals, monkeypatch,
                                                             timeout_handler):
    m = fm.Model([fm.Dense(5, "tanh"), fm.Dense(2)], input_dim=3, loss="mse",
                 optimizer=fm.Adam(lr=0.01), backend=backend, dtype="float64", seed=0)
    X, Y = np.ones((4, 3)), np.zeros((4, 2))
    m.train_on_batch(X, Y)
    before = m.get_state()
    grad = m.gradient_vector(X, Y)[1]
    # The first signal once the step is written (as its check begins), the others as
    # each undo begins, and where the retry loop classified the exception (a call there
    # let the third escape, the undo skipped: Adam's moments and step kept)
    budget = [signals]
    monkeypatch.setattr(m, "_check_finite", signalling(m._check_finite, budget))
    # (the retry loop's classification makes no call: model.py has no from_a_handler)
    monkeypatch.setattr(model_module, "run_whole",
                        signalling(model_module.run_whole, budget))
    with pytest.raises(TimeoutError):
        m.apply_gradient(grad)
    assert budget == [0]
    monkeypatch.undo()
    now = m.get_state()
    for key in ("theta", "opt_buffers", "opt_step"):
        np.testing.assert_array_equal(now[key], before[key])
    m.apply_gradient(grad)   # and it trains on


def test_an_undos_own_error_is_raised_at_once_marked():
    runs = []

    def failing():
        runs.append(1)
        raise MemoryError("no memory for the undo")
    with pytest.raises(MemoryError) as raised:
        _signals.run_whole(failing)
    assert len(runs) == _signals.UNDO_RETRIES + 1
    assert _signals.UNDO_FAILED in raised.value.__dict__
