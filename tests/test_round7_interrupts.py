"""Interrupts and their windows, found by the seventh hostile pass (tests/test_round7_fixes.py
has the rest). Each Ctrl-C is put where the tester's random SIGINTs landed, deterministically:
a stand-in raises KeyboardInterrupt there, or sends the process a real SIGINT there.

- fit with feedback: a Ctrl-C in an epoch's validation, metrics or callbacks kept the
  trained epoch while the History left it out (121 of 200 interrupts), so fit(1) +
  interrupted fit + fit(1) was not fit(2); the quiet fit's chunk likewise, as its compiled
  call returned or in its record;
- save and load: a SIGINT taken by another thread (OpenBLAS's workers) reached the main
  thread inside mkstemp (the temporary file and descriptor left behind); in load's fdopen
  it closed the descriptor twice (OSError EBADF instead of KeyboardInterrupt);
- set_state: new weights with the old generator, and bounds of the old weights kept by the
  guarded step (which then wrote -inf unchecked);
- the scikit-learn estimators: a refused refit kept the new classes_ beside the old
  model_; Ctrl-C ends fit as scikit-learn's does (a warning, the best state restored);
- ModelCheckpoint recorded a best it then failed to save.
"""
import gc
import os
import signal
import threading
import time

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import _npz
from fastmlp import model as model_module

BACKENDS = fm.available_backends()


def _model(backend="numpy", dtype="float64"):
    return fm.Model([fm.Dense(6, "tanh"), fm.Dense(2)], input_dim=3, optimizer=fm.SGD(0.1),
                    backend=backend, dtype=dtype, seed=3)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    return rng.normal(size=(30, 3)), rng.normal(size=(30, 2))


def _same(a, b):
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(x, y)
    assert a.get_state()["rng_state"] == b.get_state()["rng_state"]


class CtrlCAt(fm.Callback):
    """Raises KeyboardInterrupt at the end of epoch ``epoch``."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


# -- fit ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", ["callback", "validation"])
def test_ctrl_c_in_an_epochs_feedback_undoes_the_epoch(backend, where, data, monkeypatch):
    X, Y = data
    resumed, straight = _model(backend), _model(backend)
    resumed.fit(X, Y, epochs=1, batch_size=8)
    kwargs = {"validation_data": (X[:5], Y[:5]), "batch_size": 8, "epochs": 4}
    if where == "callback":
        kwargs["callbacks"] = [CtrlCAt(1)]
    else:
        calls = []
        real = resumed.engine.evaluate

        def evaluate(*args):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real(*args)
        monkeypatch.setattr(resumed.engine, "evaluate", evaluate)
    with pytest.raises(KeyboardInterrupt):
        resumed.fit(X, Y, **kwargs)
    monkeypatch.undo()
    assert len(resumed.history.epoch) == 1 and len(resumed.history.history["val_loss"]) == 1
    resumed.fit(X, Y, epochs=1, batch_size=8)
    straight.fit(X, Y, epochs=3, batch_size=8)   # 1 + the interrupted fit's 1 kept + 1
    _same(resumed, straight)


def test_a_callbacks_own_error_keeps_the_trained_epoch(data):
    """As in Keras: only an interrupt or a divergence undoes an epoch."""
    X, Y = data

    class Fails(fm.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise ValueError("my callback")
    m, twin = _model(), _model()
    with pytest.raises(ValueError, match="my callback"):
        m.fit(X, Y, epochs=3, batch_size=8, callbacks=[Fails()])
    twin.fit(X, Y, epochs=1, batch_size=8)
    _same(m, twin)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", ["as the call returns", "in the record"])
def test_ctrl_c_around_a_quiet_chunk_undoes_the_chunk(backend, where, data, monkeypatch):
    X, Y = data
    resumed, straight = _model(backend), _model(backend)
    resumed.fit(X, Y, epochs=2, batch_size=8)
    if where == "as the call returns":
        real = model_module.Model._epochs

        def epochs_then_ctrl_c(self, *args):
            real(self, *args)
            raise KeyboardInterrupt
        monkeypatch.setattr(model_module.Model, "_epochs", epochs_then_ctrl_c)
    else:
        def half_recorded(history, done, losses, *args):
            history.epoch.extend(range(done, done + len(losses)))
            raise KeyboardInterrupt
        monkeypatch.setattr(model_module.Model, "_record", staticmethod(half_recorded))
    with pytest.raises(KeyboardInterrupt):
        resumed.fit(X, Y, epochs=5, batch_size=8)
    monkeypatch.undo()
    assert resumed.history.epoch == [] and resumed.history.history == {"loss": []}
    resumed.fit(X, Y, epochs=2, batch_size=8)
    straight.fit(X, Y, epochs=4, batch_size=8)
    _same(resumed, straight)


# -- save and load -------------------------------------------------------------------------
def _sigint_from(thread):
    """A SIGINT the operating system hands to ``thread`` (not the main thread)."""
    signal.pthread_kill(thread.ident, signal.SIGINT)
    time.sleep(0.05)   # Python's handler runs in the main thread at its next check


@pytest.fixture
def worker():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    yield thread
    stop.set()
    thread.join()


def test_a_sigint_taken_by_another_thread_inside_mkstemp_leaves_nothing(tmp_path, monkeypatch,
                                                                        worker):
    import tempfile
    from fastmlp import _atomic
    path = tmp_path / "m.fastmlp"
    _model().save(path)
    gc.collect()  # other tests' garbage, not closed by a collection during the save
    before, fds = path.read_bytes(), len(os.listdir("/proc/self/fd"))
    real = tempfile.mkstemp

    def mkstemp_then_sigint(*args, **kwargs):
        made = real(*args, **kwargs)
        _sigint_from(worker)
        return made
    monkeypatch.setattr(_atomic.tempfile, "mkstemp", mkstemp_then_sigint)
    with pytest.raises(KeyboardInterrupt):
        _model().save(path)
    assert os.listdir(tmp_path) == ["m.fastmlp"] and path.read_bytes() == before
    assert len(os.listdir("/proc/self/fd")) == fds


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_sigint_once_loads_descriptor_is_open_is_keyboard_interrupt(tmp_path, monkeypatch,
                                                                     worker):
    path = tmp_path / "m.fastmlp"
    _model().save(path)
    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    real = _npz._open_without_blocking

    def open_then_sigint(*args, **kwargs):
        fd = real(*args, **kwargs)
        _sigint_from(worker)
        return fd
    monkeypatch.setattr(_npz, "_open_without_blocking", open_then_sigint)
    with pytest.raises(KeyboardInterrupt) as interrupted:
        fm.load(path)
    monkeypatch.undo()
    # The descriptor closed twice (fdopen's file object had it when the except closed it,
    # then closed whatever file took that number meanwhile), or leaked.
    other = open(path, "rb")
    del interrupted   # its traceback holds the stand-in's frame, and the file object
    gc.collect()
    assert len(other.read(4)) == 4
    other.close()
    assert len(os.listdir("/proc/self/fd")) == fds
    fm.load(path)


# -- set_state -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_set_state_is_whole_and_pushed_whatever_a_ctrl_c_does(backend, monkeypatch):
    """A real SIGINT while set_state stores (here as it pushes, its last store): the state
    is written whole, pushed once, and the Ctrl-C raised after."""
    m, other = _model(backend), _model(backend)
    other.fit(np.ones((4, 3)), np.zeros((4, 2)), epochs=2, batch_size=2)
    wanted = other.get_state()
    pushes = []
    real_push = m._push

    def interrupted_push():
        pushes.append(1)
        os.kill(os.getpid(), signal.SIGINT)
        real_push()
    monkeypatch.setattr(m, "_push", interrupted_push)
    with pytest.raises(KeyboardInterrupt):
        m.set_state(wanted)
    assert pushes == [1]
    got = m.get_state()
    np.testing.assert_array_equal(got["theta"], wanted["theta"])
    assert got["rng_state"] == wanted["rng_state"]


# -- scikit-learn ------------------------------------------------------------------------------
sklearn = pytest.importorskip("sklearn")
from fastmlp.sklearn import MLPClassifier  # noqa: E402


def _animals():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 4))
    return X, np.where(X[:, 0] > 0, "cat", "dog")


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_refused_refit_keeps_the_fitted_estimator_whole():
    X, y = _animals()
    est = MLPClassifier(hidden_layer_sizes=(5,), max_iter=5, random_state=0,
                        backend="numpy").fit(X, y)
    before = est.predict(X)
    with pytest.raises(ValueError, match="weight decay"):
        est.set_params(alpha=1e6).fit(X[:40], np.where(y[:40] == "cat", "apple", "pear"))
    assert est.classes_.tolist() == ["cat", "dog"]
    np.testing.assert_array_equal(est.predict(X), before)


@pytest.mark.parametrize("early_stopping", [False, True])
def test_ctrl_c_ends_fit_as_scikit_learns_does(early_stopping, monkeypatch):
    """A Ctrl-C as the fourth Model.fit call starts: the epochs of the three before it
    (one each with early stopping; up to n_iter_no_change + 1 each without) are kept and
    counted."""
    X, y = _animals()
    real, calls = fm.Model.fit, []

    def fit(self, *args, **kwargs):
        calls.append(kwargs["epochs"])
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)
    monkeypatch.setattr(fm.Model, "fit", fit)
    est = MLPClassifier(hidden_layer_sizes=(5,), max_iter=50, random_state=0, backend="numpy",
                        early_stopping=early_stopping, n_iter_no_change=50 if early_stopping
                        else 2)
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        assert est.fit(X, y) is est
    assert len(calls) == 4
    done = sum(calls[:3])
    # (here every epoch improves the loss by more than tol: three calls of 2 + 1 epochs)
    assert done == (3 if early_stopping else 9)
    assert est.n_iter_ == done and len(est.loss_curve_) == done
    est.predict(X)
    if early_stopping:
        assert len(est.validation_scores_) == 3


# -- ModelCheckpoint -------------------------------------------------------------------------
def test_checkpoint_records_a_best_only_once_it_is_saved(tmp_path, data, monkeypatch):
    X, Y = data
    m = _model()
    ckpt = fm.ModelCheckpoint(str(tmp_path / "best.fastmlp"), monitor="loss")
    real = fm.Model.save

    def full_disk(self, path):
        raise OSError(27, "File too large")
    monkeypatch.setattr(fm.Model, "save", full_disk)
    with pytest.raises(OSError):
        m.fit(X, Y, epochs=2, batch_size=8, callbacks=[ckpt])
    assert ckpt.best is None and ckpt.last_saved is None
    monkeypatch.setattr(fm.Model, "save", real)
    m.fit(X, Y, epochs=1, batch_size=8, callbacks=[ckpt])
    assert ckpt.last_saved is not None and (tmp_path / "best.fastmlp").exists()


# -- found by the pass over these fixes ------------------------------------------------------
class MomentumFrom(fm.Callback):
    """Turns momentum on at the start of epoch ``epoch`` (a warm-up schedule) and, given
    ``interrupt_at``, stands for a Ctrl-C at the end of that epoch."""

    def __init__(self, epoch, interrupt_at=None):
        self.epoch, self.interrupt_at = epoch, interrupt_at

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.model.optimizer = fm.SGD(0.05, momentum=0.9)

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.interrupt_at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_epoch_interrupted_after_a_callback_gave_momentum_is_undone_whole(backend, data):
    """The rollback copy was sized for the buffers in use when fit began (none for plain
    SGD): momentum's buffer was not put back, and the next epoch differed."""
    X, Y = data
    straight, resumed = _model(backend), _model(backend)
    straight.fit(X, Y, epochs=2, batch_size=8, callbacks=[MomentumFrom(1)])
    with pytest.raises(KeyboardInterrupt):
        resumed.fit(X, Y, epochs=3, batch_size=8, callbacks=[MomentumFrom(1, interrupt_at=2)])
    np.testing.assert_array_equal(resumed.get_state()["opt_buffers"],
                                  straight.get_state()["opt_buffers"])
    for model in (straight, resumed):
        model.fit(X, Y, epochs=1, batch_size=8)
    _same(resumed, straight)


def test_a_ctrl_c_after_the_checkpoint_file_was_replaced_records_its_best(tmp_path, data,
                                                                          monkeypatch):
    """save raises a Ctrl-C that lands after the rename; the file then holds this epoch's
    model, so the checkpoint's best must name it (else a worse epoch overwrote it)."""
    from fastmlp import _atomic
    X, Y = data
    ckpt = fm.ModelCheckpoint(str(tmp_path / "best.fastmlp"), monitor="loss")

    def renamed_then_ctrl_c(folder):
        raise KeyboardInterrupt
    monkeypatch.setattr(_atomic, "_record_our_save", renamed_then_ctrl_c)
    m = _model()
    with pytest.raises(KeyboardInterrupt):
        m.fit(X, Y, epochs=1, batch_size=8, shuffle=False, callbacks=[ckpt])
    assert ckpt.best is not None and ckpt.best_epoch == 0
    assert ckpt.last_saved == str(tmp_path / "best.fastmlp")


@pytest.mark.parametrize("where", ["after Model.fit returned", "in the validation score"])
def test_an_epoch_kept_is_counted_whole_whatever_a_ctrl_c_does(where, monkeypatch):
    """The epoch Model.fit kept, with the interrupt after it: counted in n_iter_, t_,
    loss_curve_ and validation_scores_ alike (validation_scores_ lacked it)."""
    X, y = _animals()
    est = MLPClassifier(hidden_layer_sizes=(5,), max_iter=20, random_state=0, backend="numpy",
                        early_stopping=True, n_iter_no_change=50)
    calls = []
    if where == "after Model.fit returned":
        real = fm.Model.fit

        def fit(self, *args, **kwargs):
            history = real(self, *args, **kwargs)
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return history
        monkeypatch.setattr(fm.Model, "fit", fit)
    else:
        real = MLPClassifier._validation_score

        def score(self, *args):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGINT)   # a real Ctrl-C, while it scores
            return real(self, *args)
        monkeypatch.setattr(MLPClassifier, "_validation_score", score)
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        est.fit(X, y)
    assert est.n_iter_ == 3 == len(est.loss_curve_) == len(est.validation_scores_)
    assert est.t_ == 3 * 72   # 80 rows, 8 held out for validation


def test_another_handlers_exception_during_the_swap_leaves_ctrl_c_working(monkeypatch):
    """A timeout raised by a SIGALRM handler right after the swap came out of the block's
    entry before its finally was armed: the note-only handler stayed, and every later
    Ctrl-C was swallowed."""
    from fastmlp import _signals
    real, calls = _signals._signal.signal, []

    def swap_then_timeout(signum, handler):
        done = real(signum, handler)
        calls.append(1)
        if len(calls) == 1:
            raise TimeoutError("my time limit")
        return done
    monkeypatch.setattr(_signals._signal, "signal", swap_then_timeout)
    with pytest.raises(TimeoutError):
        with _signals.signals_deferred():
            pass
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)


def test_the_reference_backends_quiet_chunks_are_short(data, monkeypatch):
    """First chunks are sized by work to take ~20 ms in the compiled kernels; the
    reference's train_epochs, Python around NumPy, undoes its whole chunk on Ctrl-C, and
    1024 epochs were 5 s of training lost. Its chunks get 1/64 of the work."""
    X, Y = data
    sizes = {}
    for backend in ("numpy", "cython" if "cython" in BACKENDS else "numba"):
        m = _model(backend)
        real, calls = m.engine.train_epochs, []
        monkeypatch.setattr(m.engine, "train_epochs",
                            lambda X, T, orders, *rest: (calls.append(len(orders)),
                                                         real(X, T, orders, *rest))[1])
        m.fit(X, Y, epochs=2000, batch_size=8)
        sizes[backend] = calls[0]
    per_epoch = len(X) * _model().n_params + -(-len(X) // 8) * fm.Model._STEP_WORK
    work = fm.Model._CHUNK_WORK // per_epoch
    assert sizes["numpy"] == fm.Model._CHUNK_WORK // 64 // per_epoch
    assert list(sizes.values())[1] == min(1024, work)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_second_ctrl_c_as_the_undo_begins_still_undoes(backend, data, monkeypatch):
    """Two quick Ctrl-Cs: the second landed as the rollback began, before its deferral was
    armed, and the epoch was left half undone. The undo is now run again until whole."""
    from fastmlp import _signals
    X, Y = data
    resumed, straight = _model(backend), _model(backend)
    resumed.fit(X, Y, epochs=1, batch_size=8)
    real, fired = _signals.signals_deferred, []

    class FirstCtrlC(CtrlCAt):
        def on_epoch_end(self, epoch, logs=None):
            self.armed = epoch == self.epoch   # the undo's deferral is the next one entered
            super().on_epoch_end(epoch, logs)
    first = FirstCtrlC(1)

    @__import__("contextlib").contextmanager
    def second_ctrl_c_first():
        if getattr(first, "armed", False) and not fired:
            fired.append(1)
            raise KeyboardInterrupt   # the second Ctrl-C, before the block is entered
        with real():
            yield
    monkeypatch.setattr(_signals, "signals_deferred", second_ctrl_c_first)
    monkeypatch.setattr(model_module, "signals_deferred", second_ctrl_c_first)
    with pytest.raises(KeyboardInterrupt):
        resumed.fit(X, Y, epochs=4, batch_size=8, callbacks=[first])
    assert fired
    monkeypatch.undo()
    assert len(resumed.history.epoch) == 1
    resumed.fit(X, Y, epochs=1, batch_size=8)
    straight.fit(X, Y, epochs=3, batch_size=8)
    _same(resumed, straight)
