"""A Ctrl-C, or a timeout, at every point of fastmlp's Python where a signal can be
handled, not at random moments.

The README's rule: an interrupted epoch is rolled back wherever the signal lands, so
fit(k) + interrupted fit + the rest = one fit, bit for bit (weights, optimiser state,
step, generator); a timeout's TimeoutError, raised by a SIGALRM handler, is undone as a
Ctrl-C is. Timer-driven SIGINTs (test_hostile_files_pipelines.py) land where the time
goes, in the compiled calls; here a trace function raises the signal at the n-th point
where fastmlp's own code checks for signals, for every n (or an even spread of them),
so the handler runs at each point Python can run it, held back where fastmlp holds
signals back. Fit, train_on_batch, apply_gradient, set_state, set_weights, save, load,
checkpoints, and the scikit-learn estimators' fit and partial_fit (Ctrl-C only: they
turn it into scikit-learn's warning). A quiet fit's timing-driven choices (chunk sizes,
when to copy the undo snapshot) are driven by a clock that jumps at random, so the
replays after a snapshot run too.
"""
import dis
import gc
import os
import signal
import sys
import types
import warnings

import numpy as np
import pytest

import fastmlp as fm
import fastmlp.model as model_module
from fastmlp import _fitting, _undo
from fastmlp.callbacks import EarlyStopping, ModelCheckpoint

PACKAGE = os.path.dirname(fm.__file__)
ROWS, BATCH = 64, 16
STEPS_PER_EPOCH = ROWS // BATCH

_rng = np.random.default_rng(0)
X = _rng.normal(size=(ROWS, 5)).astype(np.float32)
Y = np.arange(ROWS) % 3


def _model(backend, optimizer):
    return fm.Model([fm.Dense(8, "tanh"), fm.Dense(3, "softmax")], input_dim=5,
                    loss="cross_entropy", optimizer=optimizer, backend=backend, seed=0)


# Where CPython runs a signal's Python handler: at a function's start, after a call
# returns and after a backward jump (its eval breaker); never at other instructions (a
# `try:` line's NOP, say, where an exception raised by a trace function escapes the
# try's own handler, as no signal ever does).
_CHECKS = {dis.opmap[name] for name in ("CALL", "CALL_FUNCTION_EX", "JUMP_BACKWARD")}


# The signal raised: SIGINT (Ctrl-C), or SIGALRM with a handler raising TimeoutError (a
# timeout, which the README says is undone as a Ctrl-C is) under the `interrupt` fixture
_SIGNAL = [signal.SIGINT]
_INTERRUPTS = (KeyboardInterrupt, TimeoutError)


def _timeout(signum, frame):
    raise TimeoutError("a timeout's signal handler")


@pytest.fixture(params=["ctrl-c", "timeout"])
def interrupt(request):
    """Each test taking it runs with SIGINT, then with a SIGALRM timeout."""
    if request.param == "ctrl-c":
        yield request.param
        return
    previous = signal.signal(signal.SIGALRM, _timeout)
    _SIGNAL[0] = signal.SIGALRM
    try:
        yield request.param
    finally:
        _SIGNAL[0] = signal.SIGINT
        signal.signal(signal.SIGALRM, previous)


class _SigintAt:
    """A trace function raising the signal (SIGINT, or the timeout's) at the ``at``-th
    point where fastmlp's Python checks for signals (never if ``at`` is 0);
    ``points``: how many it passed."""

    def __init__(self, at):
        self.at, self.points = at, 0

    def _point(self):
        self.points += 1
        if self.points == self.at:
            signal.raise_signal(_SIGNAL[0])

    def __call__(self, frame, event, arg):
        if not frame.f_code.co_filename.startswith(PACKAGE):
            return None
        frame.f_trace_opcodes = True
        self._point()   # the function's start
        code, last = frame.f_code.co_code, [None]

        def after_checks(frame, event, arg):
            if event == "opcode":
                if last[0] in _CHECKS:   # the instruction after a call or a jump back
                    self._point()
                last[0] = code[frame.f_lasti]
            return after_checks

        return after_checks


def _fit_under(trace, model, **kwargs):
    """model.fit(X, Y, **kwargs) traced; True if the interrupt came out of it."""
    sys.settrace(trace)
    try:
        model.fit(X, Y, batch_size=BATCH, verbose=0, **kwargs)
    except _INTERRUPTS:
        return True
    finally:
        sys.settrace(None)
    return False


def _state(model):
    s = model.get_state()
    return s["theta"], s["opt_buffers"], s["opt_step"], s["rng_state"]


def _assert_same_state(got, want, where):
    for a, b, name in zip(got[:3], want[:3], ("theta", "opt_buffers", "opt_step")):
        assert np.array_equal(a, b), f"{name} differs after a SIGINT at {where}"
    assert got[3] == want[3], f"the generator differs after a SIGINT at {where}"


def _every_point(backend, optimizer, epochs, fit_kwargs, most_trials, clock=None,
                monkeypatch=None, share=(0, 1)):
    """SIGINT at point n of fit(epochs) for every n (at most ``most_trials``,
    evenly spread): the interrupt is raised, the model keeps the epochs its History
    records, and trained on to ``epochs`` epochs and one more, it equals one that was
    never interrupted. ``clock``: a function
    making a new ``time`` for fastmlp._fitting and fastmlp._undo, the same moments in every run, so that
    every run takes the same steps up to its SIGINT. ``share``: (k, n), the k-th of
    every n of those points only (n runs with k = 0 to n-1 try them all)."""
    want = _model(backend, optimizer)
    losses = want.fit(X, Y, epochs=epochs, batch_size=BATCH, verbose=0,
                      **fit_kwargs).history["loss"]
    want.fit(X, Y, epochs=1, batch_size=BATCH, verbose=0)
    want = _state(want)

    def fit_under(trace, model):
        if clock is not None:   # and a first chunk of 2 epochs, the next ones by the clock
            fake = clock()   # one clock for fit's chunks and its undo snapshots
            monkeypatch.setattr(_fitting, "time", fake)
            monkeypatch.setattr(_undo, "time", fake)
            monkeypatch.setattr(model_module.Model, "_first_chunk", lambda *args: 2)
        try:
            return _fit_under(trace, model, epochs=epochs, **fit_kwargs)
        finally:
            if clock is not None:
                monkeypatch.undo()

    count = _SigintAt(0)
    assert not fit_under(count, _model(backend, optimizer))
    stride = max(1, count.points // most_trials)
    which, of = share
    for at in range(1 + which * stride, count.points + 1, of * stride):
        model = _model(backend, optimizer)
        assert fit_under(_SigintAt(at), model), f"no interrupt at point {at}"
        steps = int(model.get_state()["opt_step"][0])
        kept = steps // STEPS_PER_EPOCH
        assert steps % STEPS_PER_EPOCH == 0, f"half an epoch kept at point {at}"
        # the epochs kept are the epochs recorded: none lost to a rollback gone too far
        # (no History at all: interrupted before training began)
        recorded = model.history.history["loss"] if hasattr(model, "history") else []
        assert recorded == losses[:kept], f"the History differs at point {at}"
        if epochs - kept:
            model.fit(X, Y, epochs=epochs - kept, batch_size=BATCH, verbose=0, **fit_kwargs)
        model.fit(X, Y, epochs=1, batch_size=BATCH, verbose=0)
        _assert_same_state(_state(model), want, f"point {at}")
    return count.points


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_an_interrupt_anywhere_in_a_quiet_fit_keeps_whole_epochs(interrupt, backend, optimizer):
    points = _every_point(backend, fm.Adam(1e-2) if optimizer == "adam" else
                        fm.SGD(0.05, momentum=0.9), 3, {}, most_trials=400)
    assert points > 50   # the trace saw fit's own code


def test_an_interrupt_anywhere_in_a_fit_with_validation_and_callbacks(interrupt, backend):
    fit_kwargs = dict(validation_data=(X[:10], Y[:10]), metrics=["accuracy"],
                      callbacks=[EarlyStopping(monitor="val_loss", patience=50)])
    _every_point(backend, fm.Adam(1e-2), 3, fit_kwargs, most_trials=300)


class _JumpingClock:
    """time.perf_counter that jumps by 0.1 us to 2 s at random (``seed``'s moments):
    chunks of 1 epoch to the most, snapshots copied at every chunk or rarely."""

    def __init__(self, seed):
        self._rng, self._now = np.random.default_rng(seed), 0.0

    def perf_counter(self):
        self._now += float(self._rng.choice([1e-7, 1e-4, 3e-3, 0.05, 2.0, 2.0]))
        return self._now


def test_an_interrupt_anywhere_in_a_quiet_fit_of_many_chunks(interrupt, backend, monkeypatch):
    epochs = 100 if backend == "numpy" else 300   # (the reference: one call per epoch)

    def clock():
        return types.SimpleNamespace(perf_counter=_JumpingClock(0).perf_counter)

    # A Ctrl-C at every other point, a timeout at the others: the same code undoes both
    # (the tests above try both exceptions at the same points)
    points = _every_point(backend, fm.Adam(1e-2), epochs, {},
                        most_trials=50 if backend == "numpy" else 2000,
                        clock=clock, monkeypatch=monkeypatch,
                        share=(["ctrl-c", "timeout"].index(interrupt), 2))
    assert points > 1000   # many chunks, snapshots and replays ran


def _calls_under_sigint(call, reset, most_trials=1000):
    """Run ``call()`` (no arguments) with a SIGINT at each point of fastmlp it passes,
    in turn, each after ``reset()``; yield (point, whether the interrupt came out)
    after each run (at most ``most_trials`` points, evenly spread), or TimeoutError
    under the `interrupt` fixture's timeout. The points are
    counted on a warm run (a first call caches)."""
    for _ in range(2):
        reset()
        count = _SigintAt(0)
        sys.settrace(count)
        try:
            call()
        finally:
            sys.settrace(None)
    assert count.points > 5
    for at in range(1, count.points + 1, max(1, count.points // most_trials)):
        reset()
        sys.settrace(_SigintAt(at))
        try:
            call()
            interrupted = False
        except _INTERRUPTS:
            interrupted = True
        finally:
            sys.settrace(None)
        yield at, interrupted


def _as_state(values, optimizer):
    return dict(zip(("theta", "opt_buffers", "opt_step", "rng_state"), values),
                optimizer=optimizer)


def test_an_interrupt_anywhere_in_train_on_batch_leaves_one_step_or_none(interrupt, backend):
    model = _model(backend, fm.Adam(1e-2))
    model.fit(X, Y, epochs=1, batch_size=BATCH, verbose=0)
    before = _state(model)
    stepped = model.to()
    stepped.train_on_batch(X[:BATCH], Y[:BATCH])
    after = _state(stepped)
    for at, interrupted in _calls_under_sigint(
            lambda: model.train_on_batch(X[:BATCH], Y[:BATCH]),
            lambda: model.set_state(_as_state(before, "adam"))):
        assert interrupted, f"no interrupt at point {at}"
        got = _state(model)
        kept = np.array_equal(got[0], after[0])
        _assert_same_state(got, after if kept else before, f"point {at}")


def test_an_interrupt_anywhere_in_set_state_leaves_the_old_state_or_the_new(interrupt, backend):
    model = _model(backend, fm.Adam(1e-2))
    old = model.get_state()
    trained = model.to()
    trained.fit(X, Y, epochs=2, batch_size=BATCH, verbose=0)
    new = trained.get_state()
    for at, interrupted in _calls_under_sigint(lambda: model.set_state(new),
                                               lambda: model.set_state(old)):
        assert interrupted, f"no interrupt at point {at}"
        got = _state(model)
        want = new if np.array_equal(got[0], new["theta"]) else old
        _assert_same_state(got, tuple(want[k] for k in ("theta", "opt_buffers", "opt_step",
                                                         "rng_state")), f"point {at}")


def test_an_interrupt_anywhere_in_save_leaves_the_old_file_or_the_new(interrupt, tmp_path):
    path = tmp_path / "model.npz"
    old = _model("auto", fm.Adam(1e-2))   # (saving is the same code on every backend)
    new = old.to()
    new.fit(X, Y, epochs=1, batch_size=BATCH, verbose=0)
    thetas = [m.get_state()["theta"] for m in (old, new)]
    for at, interrupted in _calls_under_sigint(lambda: new.save(path),
                                               lambda: old.save(path), most_trials=400):
        assert interrupted, f"no interrupt at point {at}"
        assert os.listdir(tmp_path) == ["model.npz"], f"files left at point {at}"
        theta = fm.load(path).get_state()["theta"]
        assert any(np.array_equal(theta, t) for t in thetas), f"point {at}"


@pytest.mark.parametrize("early_stopping", [False, True])
def test_an_interrupt_anywhere_in_an_estimators_fit_keeps_its_whole_epochs(early_stopping):
    """scikit-learn's rule: Ctrl-C ends fit with a warning, the epochs done kept (the
    best restored with early stopping), the estimator returned; interrupted before
    training, the estimator is left as it was (here unfitted)."""
    pytest.importorskip("sklearn")
    from fastmlp.sklearn import MLPClassifier

    def make(max_iter):   # (with early stopping the best of the 5 epochs is the 2nd)
        return MLPClassifier((8,), max_iter=max_iter, batch_size=BATCH, random_state=0,
                             early_stopping=early_stopping, validation_fraction=0.25,
                             n_iter_no_change=10, tol=0.0, learning_rate_init=0.01)

    held = {}
    twins = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for at, interrupted in _calls_under_sigint(
                lambda: held["estimator"].fit(X, Y),
                lambda: held.update(estimator=make(5)), most_trials=5000):
            estimator = held["estimator"]
            if not hasattr(estimator, "model_"):   # interrupted before its model was built
                assert interrupted and not hasattr(estimator, "classes_"), f"point {at}"
                continue
            # else fitted, whether the interrupt came out (before the first epoch, or once
            # the best was restored) or fit returned: as if max_iter had been n_iter_
            k = estimator.n_iter_
            if k not in twins:   # (none trained: the first such outcome stands for all)
                twins[k] = make(k).fit(X, Y) if k else estimator
            assert estimator.loss_curve_ == twins[k].loss_curve_, f"point {at}"
            state = estimator.model_.get_state()
            assert np.array_equal(state["theta"], twins[k].model_.get_state()["theta"]), \
                f"point {at}"
            assert k or state["opt_step"][0] == 0, f"point {at}"
            assert list(estimator.classes_) == [0, 1, 2], f"point {at}"


def test_an_interrupt_anywhere_in_apply_gradient_or_set_weights_leaves_old_or_new(interrupt):
    model = _model("auto", fm.Adam(1e-2))
    model.fit(X, Y, epochs=1, batch_size=BATCH, verbose=0)
    grad = model.gradient_vector(X, Y)[1].copy()
    before = _state(model)
    stepped = model.to()
    stepped.apply_gradient(grad)
    after = _state(stepped)
    for at, interrupted in _calls_under_sigint(
            lambda: model.apply_gradient(grad),
            lambda: model.set_state(_as_state(before, "adam"))):
        got = _state(model)
        _assert_same_state(got, after if np.array_equal(got[0], after[0]) else before,
                           f"apply_gradient, point {at}")
    old, new = model.get_weights(), stepped.get_weights()
    for at, interrupted in _calls_under_sigint(lambda: model.set_weights(new),
                                               lambda: model.set_weights(old)):
        got = model.get_weights()
        assert any(all(np.array_equal(a, b) for a, b in zip(got, w)) for w in (old, new)), \
            f"set_weights, point {at}"


def _descriptors():
    """This process's open descriptors: {fd: what it names}."""
    names = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            names[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return names


def _assert_none_opened_since(opened, where):
    """No descriptor open that was not open (naming the same thing) in ``opened``; if
    one is, the message names it. (Those closed since are not counted: another library's
    may close at any moment, as joblib's idle worker processes' pipes did in CI, and a
    descriptor closed twice is test_round7_interrupts.py's test.)"""
    now = _descriptors()
    leaked = {fd: name for fd, name in now.items() if opened.get(fd) != name}
    assert not leaked, f"{where}: open since: {leaked}"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_an_interrupt_anywhere_in_load_or_a_checkpointed_fit_leaks_no_file(interrupt, tmp_path):
    """load leaves no descriptor open; a fit with ModelCheckpoint(save_best_only) and
    EarlyStopping(restore_best_weights) leaves the best file whole or none, and no
    temporary file or descriptor."""
    path = tmp_path / "best.npz"
    model = _model("auto", fm.Adam(1e-2))
    model.classes_ = np.array([0, 1, 2])
    model.set_input_scaling(np.zeros(5), np.ones(5))
    model.save(path)
    # Garbage other tests left, collected now rather than in the middle of a call below:
    # a finalizer closing its descriptors there changes the count (a signal's exception
    # raised inside it is ignored, as Python ignores every __del__'s, and leaves them open)
    gc.collect()
    opened = _descriptors()
    for at, interrupted in _calls_under_sigint(lambda: fm.load(path), lambda: None):
        _assert_none_opened_since(opened, f"load, point {at}")

    def checkpointed_fit():
        _model("auto", fm.Adam(1e-2)).fit(
            X, Y, epochs=3, batch_size=BATCH, verbose=0, validation_data=(X[:10], Y[:10]),
            callbacks=[ModelCheckpoint(path, monitor="val_loss", save_best_only=True),
                       EarlyStopping(monitor="val_loss", patience=1,
                                     restore_best_weights=True)])

    for at, interrupted in _calls_under_sigint(checkpointed_fit, lambda: path.unlink(True),
                                               most_trials=600):
        assert sorted(os.listdir(tmp_path)) in ([], ["best.npz"]), f"fit, point {at}"
        if path.exists():
            fm.load(path)
        _assert_none_opened_since(opened, f"fit, point {at}")


def test_an_interrupt_anywhere_in_partial_fit_keeps_the_step_or_not():
    pytest.importorskip("sklearn")
    import pickle
    from fastmlp.sklearn import MLPClassifier
    first = MLPClassifier((8,), batch_size=BATCH, random_state=0).partial_fit(
        X, Y, classes=[0, 1, 2])
    blob = pickle.dumps(first)
    second = pickle.loads(blob).partial_fit(X, Y)
    held = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for at, interrupted in _calls_under_sigint(
                lambda: held["estimator"].partial_fit(X, Y),
                lambda: held.update(estimator=pickle.loads(blob)), most_trials=600):
            estimator = held["estimator"]
            want = first if estimator.n_iter_ == 1 else second
            assert estimator.n_iter_ in (1, 2) and estimator.t_ == want.t_, f"point {at}"
            assert estimator.loss_curve_ == want.loss_curve_, f"point {at}"
            np.testing.assert_array_equal(estimator.model_.get_state()["theta"],
                                          want.model_.get_state()["theta"], f"point {at}")


# -- a second Ctrl-C during the undo of the first -----------------------------------------

class _TwoSigints(_SigintAt):
    """SIGINT at check point ``at`` (raised from the trace function, which unsets it),
    then another at the ``gap``-th start of a fastmlp function after it (from a profile
    function): at run_whole's own start, say, before its deferral, which a second Ctrl-C
    skipped, leaving the epoch trained and the History without it."""

    def __init__(self, at, gap):
        super().__init__(at)
        self.gap, self.starts = gap, 0

    def _point(self):
        self.points += 1
        if self.points == self.at:
            sys.setprofile(self._second)
            signal.raise_signal(signal.SIGINT)

    def _second(self, frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(PACKAGE):
            self.starts += 1
            if self.starts == self.gap:
                sys.setprofile(None)
                signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("quiet", [True, False])
def test_a_second_ctrl_c_during_the_undo_still_keeps_whole_epochs(backend, quiet):
    fit_kwargs = {} if quiet else dict(validation_data=(X[:10], Y[:10]), metrics=["accuracy"],
                                       callbacks=[EarlyStopping(monitor="val_loss", patience=50)])
    want = _model(backend, fm.Adam(1e-2))
    losses = want.fit(X, Y, epochs=3, batch_size=BATCH, verbose=0, **fit_kwargs).history["loss"]
    want.fit(X, Y, epochs=1, batch_size=BATCH, verbose=0)
    want = _state(want)
    count = _SigintAt(0)
    _fit_under(count, _model(backend, fm.Adam(1e-2)), epochs=3, **fit_kwargs)
    for at in range(1, count.points + 1, max(1, count.points // 40)):
        for gap in range(1, 9):
            model = _model(backend, fm.Adam(1e-2))
            try:
                assert _fit_under(_TwoSigints(at, gap), model, epochs=3, **fit_kwargs)
            finally:
                sys.setprofile(None)
            kept = int(model.get_state()["opt_step"][0]) // STEPS_PER_EPOCH
            recorded = model.history.history["loss"] if hasattr(model, "history") else []
            assert recorded == losses[:kept], f"the History differs at point {at}, gap {gap}"
            if 3 - kept:
                model.fit(X, Y, epochs=3 - kept, batch_size=BATCH, verbose=0, **fit_kwargs)
            model.fit(X, Y, epochs=1, batch_size=BATCH, verbose=0)
            _assert_same_state(_state(model), want, f"point {at}, gap {gap}")


def test_a_second_ctrl_c_during_a_saves_clean_up_leaves_no_file(tmp_path):
    path = tmp_path / "model.npz"
    model = _model("auto", fm.Adam(1e-2))
    count = _SigintAt(0)
    sys.settrace(count)
    try:
        model.save(path)
    finally:
        sys.settrace(None)
    for at in range(1, count.points + 1, max(1, count.points // 60)):
        for gap in range(1, 9):
            sys.settrace(_TwoSigints(at, gap))
            try:
                model.save(path)
            except KeyboardInterrupt:
                pass
            finally:
                sys.settrace(None)
                sys.setprofile(None)
            assert os.listdir(tmp_path) in ([], ["model.npz"]), f"point {at}, gap {gap}"
            if path.exists():
                fm.load(path)
