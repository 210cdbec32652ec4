"""Hostile round 56 (three audits: compiling and caches, the Model API's contracts, the
backends and BLAS settings): what they found, each fixed."""
import copy
import io
import os
import pickle
import signal
import time

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import callbacks
from fastmlp._signals import signals_deferred


def _model(backend="numpy", **kw):
    return fm.Model([fm.Dense(3, "tanh"), fm.Dense(1)], input_dim=2, loss="mse", seed=0,
                    backend=backend, **kw)


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(8, 2)), rng.normal(size=(8, 1))


def test_a_model_whose_step_count_no_state_holds_is_not_pickled(backend):
    """Trained past 2**53 steps (from a state at 2**53 - 1), pickle.dumps wrote a blob
    that pickle.loads refused: a pickled model lost."""
    X, Y = _data()
    model = _model(backend, optimizer=fm.Adam(0.01))
    state = model.get_state()
    state["opt_step"] = np.array([2**53 - 1])
    model.set_state(state)
    assert pickle.loads(pickle.dumps(model)).get_state()["opt_step"][0] == 2**53 - 1
    model.train_on_batch(X, Y)
    with pytest.raises(ValueError, match=r"cannot pickle this model: its optimiser step "
                                         r"count 9007199254740992 is not below 2\*\*53"):
        pickle.dumps(model)
    copied = copy.deepcopy(model)   # a copy stays in this process: still made
    np.testing.assert_array_equal(copied.predict(X), model.predict(X))


@pytest.mark.parametrize("path, kw, says", [
    ("ck-{val_loss:.3f}.fastmlp", {}, "path names 'val_loss', which this fit does not log: "
                                      "pass validation_data or validation_split"),
    ("ck-{epoch}-{accuracy}.fastmlp", {}, "path names 'accuracy', which this fit does not "
                                          "log: pass metrics=['accuracy']"),
    ("ck-{val_mae.real}.fastmlp", {"metrics": ["mae"]}, "path names 'val_mae'"),
])
def test_a_checkpoint_path_naming_a_value_this_fit_does_not_log_is_refused_first(
        tmp_path, path, kw, says):
    """Found only after the first epoch had trained: the weights moved, the History
    empty."""
    X, Y = _data()
    model = _model()
    before = model.get_weights()
    checkpoint = fm.ModelCheckpoint(str(tmp_path / path), monitor="loss")
    with pytest.raises(ValueError, match=f"ModelCheckpoint {says}".replace("[", r"\[")
                       .replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        model.fit(X, Y, epochs=3, callbacks=[checkpoint], **kw)
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_paths_naming_logged_values_still_save(tmp_path):
    X, Y = _data()
    model = _model()
    model.fit(X, Y, epochs=2, metrics=["mae"], validation_split=0.25, callbacks=[
        fm.ModelCheckpoint(str(tmp_path / "ck-{epoch}-{val_mae:.3f}-{loss.real}.fastmlp"),
                           monitor="loss", save_best_only=False)])
    assert len(list(tmp_path.iterdir())) == 2


class _Boom(callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("boom")


def test_a_progress_bar_is_closed_when_a_callback_raises(monkeypatch):
    """Its on_train_end did not run: a tqdm bar stayed open and drew over the caller's
    next output."""
    pytest.importorskip("tqdm")
    X, Y = _data()
    bar = callbacks.ProgressBar(file=io.StringIO())
    with pytest.raises(RuntimeError, match="boom"):
        _model().fit(X, Y, epochs=3, callbacks=[bar, _Boom()])
    assert bar._bar is None
    closed = []
    real = callbacks.ProgressBar._close
    monkeypatch.setattr(callbacks.ProgressBar, "_close",
                        lambda self: (closed.append(self._bar is not None), real(self)))
    with pytest.raises(RuntimeError, match="boom"):
        _model().fit(X, Y, epochs=3, verbose=1, callbacks=[_Boom()])   # fit's own bar
    assert closed[-1] is True   # an open bar, closed as the fit raised


# -- compiling and caches ----------------------------------------------------------------------

@pytest.fixture
def save_lock_held(tmp_path):
    """The cache folder's save lock held by another open file (flock locks belong to the
    open file: this process's second open waits for it as another process's would)."""
    fcntl = pytest.importorskip("fcntl")
    numba_link = pytest.importorskip("fastmlp.kernels.numba_link")
    fd = os.open(tmp_path / numba_link.SAVE_LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield numba_link, tmp_path
    os.close(fd)


def test_a_save_lock_held_elsewhere_is_waited_for_a_bounded_time(save_lock_held,
                                                                 monkeypatch):
    """flock had no limit: a process stopped holding it (Ctrl-Z, a debugger) hung every
    other first compile into the cache."""
    numba_link, folder = save_lock_held
    monkeypatch.setattr(numba_link, "SAVE_LOCK_WAIT", 0.3)
    began = time.monotonic()
    with pytest.raises(numba_link.SaveLockHeld, match="another process held its save lock"):
        with numba_link._folder_locked(str(folder)):
            pytest.fail("ran without the lock")
    assert 0.3 <= time.monotonic() - began < 5


def test_a_ctrl_c_stops_the_wait_for_a_save_lock(save_lock_held):
    """The compile holds the Ctrl-C back and announces it; the wait for the lock now ends
    at once, so the KeyboardInterrupt comes once the compile is done."""
    numba_link, folder = save_lock_held
    began = time.monotonic()
    stopped = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            try:
                with numba_link._folder_locked(str(folder)):
                    pytest.fail("ran without the lock")
            except numba_link.SaveLockHeld as exc:
                stopped.append(str(exc))
    assert stopped == ["a signal (Ctrl-C, a timeout) came while it waited for another "
                       "process's save lock"]
    assert time.monotonic() - began < numba_link.SAVE_LOCK_WAIT / 3


def test_a_free_save_lock_is_taken(tmp_path):
    numba_link = pytest.importorskip("fastmlp.kernels.numba_link")
    with numba_link._folder_locked(str(tmp_path)):
        pass
    with numba_link._folder_locked(str(tmp_path)):   # released, taken again
        pass


def test_a_save_that_cannot_take_the_lock_leaves_the_kernel_uncached(save_lock_held,
                                                                    monkeypatch, capfd):
    """The save gives up and says so once, as for a full disk; the compile's result stays
    in use (nothing raised), and `fastmlp warmup` counts the folder as a failed write."""
    numba_link, folder = save_lock_held
    monkeypatch.setattr(numba_link, "SAVE_LOCK_WAIT", 0.1)
    monkeypatch.setattr(numba_link, "CACHE_WRITE_FAILURES", {})
    cache_file = numba_link._CheckedCacheFile(str(folder), "kernel", source_stamp=1)

    class Cache:
        cache_path = str(folder)
    numba_link._save_overload(lambda sig, data: cache_file.save(sig, data), Cache(),
                              ("sig",), {"code": 1})
    assert str(folder) in numba_link.CACHE_WRITE_FAILURES
    err = capfd.readouterr().err
    assert f"Numba could not write its cache in {folder} (SaveLockHeld: another process " \
           "held its save lock" in err and "compiled and in use in this process" in err
    assert sorted(p.name for p in folder.iterdir()) == [numba_link.SAVE_LOCK_NAME]


def test_the_command_says_a_bad_fastmlp_blas_in_one_line():
    """`FASTMLP_BLAS=foo fastmlp --version` printed the import's traceback, status 1."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    code = "import sys, _fastmlp_command; sys.exit(_fastmlp_command.main())"
    result = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True,
                            text=True, timeout=120, cwd=root,
                            env={**os.environ, "FASTMLP_BLAS": "foo"})
    assert result.returncode == 2
    assert result.stderr == ("fastmlp: error: FASTMLP_BLAS must be one of ('numpy', "
                             "'scipy'), got 'foo'\n")


def test_the_compile_notice_names_what_is_compiled():
    """A train_on_batch's guard and optimiser update were called "this network's layers",
    the words of the layers' own notice just before: one line twice, word for word."""
    pytest.importorskip("numba")
    from fastmlp import warmup
    from fastmlp.backends.numba import _named
    said = {parts: warmup._CALLS[_named(parts)] for parts in [
        ("train",), ("predict",), (("update", 1), "guard"), (("update", 0),), ("norms",),
        ("predict", "train", ("update", 1))]}
    assert said == {("train",): "this network's layers", ("predict",): "this network's layers",
                    (("update", 1), "guard"): "train_on_batch",
                    (("update", 0),): "the optimiser's update", ("norms",): "gradient norms",
                    ("predict", "train", ("update", 1)): "this network's layers"}


def test_stop_training_is_there_from_the_start(backend):
    """As in Keras: it did not exist until a first fit (AttributeError)."""
    model = _model(backend)
    assert model.stop_training is False
    assert copy.deepcopy(model).stop_training is False
    assert pickle.loads(pickle.dumps(model)).stop_training is False


# -- round 57: labels beyond 2**53 ---------------------------------------------------------

def _two_classes(backend):
    return fm.Model([fm.Dense(2, "softmax")], input_dim=3, loss="cross_entropy", seed=0,
                    backend=backend)


def test_a_label_float64_cannot_tell_apart_is_not_taken_for_a_class(backend):
    """NumPy compared int64 classes_ with float labels (and the reverse) as float64: a
    label 2.0**53, no class, was trained and evaluated as the class 2**53 + 1."""
    X = np.random.default_rng(0).normal(size=(2, 3))
    model = _two_classes(backend)
    model.fit(X, np.array([2**53 + 1, 2**53 + 3]), epochs=1)
    for call in (model.evaluate, model.train_on_batch, model.gradients):
        with pytest.raises(ValueError, match=r"labels the model does not know: "
                                             r"9007199254740992\.0"):
            call(X, np.array([2.0**53, 2.0**53]))
    model.classes_ = np.array([2.0**53, 2.0**53 + 4])
    with pytest.raises(ValueError, match="labels the model does not know: 9007199254740993"):
        model.evaluate(X, np.array([2**53 + 1, 2**53 + 1]))
    want = model.evaluate(X, np.eye(2)[[0, 1]])
    assert model.evaluate(X, np.array([2**53, 2**53 + 4])) == want


def test_a_label_of_another_integer_kind_finds_its_class(backend):
    """uint64 labels against int64 classes_ beyond 2**53: refused as unknown, the class
    shown in the same message."""
    X = np.random.default_rng(0).normal(size=(2, 3))
    model = _two_classes(backend)
    model.fit(X, np.array([2**53 + 1, 2**53 + 3]), epochs=1)
    want = model.evaluate(X, np.eye(2)[[1, 0]])
    assert model.evaluate(X, np.array([2**53 + 3, 2**53 + 1], dtype=np.uint64)) == want


def test_the_distributed_example_refuses_an_unknown_backend_as_a_usage_error():
    """It ended in a ValueError traceback (and MPI_Abort under mpiexec), where the other
    examples give argparse's choices."""
    import subprocess
    import sys
    from pathlib import Path
    pytest.importorskip("mpi4py")
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / "examples" / "distributed.py"),
                             "--backend", "nope"], capture_output=True, text=True,
                            timeout=120, cwd=root)
    assert result.returncode == 2, result.stderr
    assert "argument --backend: invalid choice: 'nope'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_distributed_validation_data_of_one_array_says_its_length():
    """It said "must be a tuple (X_val, Y_val) ...; got tuple"."""
    MPI = pytest.importorskip("mpi4py.MPI")
    from fastmlp import distributed
    X, Y = _data()
    with pytest.raises(Exception, match=r"validation rows, or None; got tuple of length 1"):
        distributed.fit(_model(), X, Y, MPI.COMM_SELF, epochs=1, validation_data=(X,))


def test_the_classifier_compares_labels_beyond_2_53_exactly():
    """partial_fit took a float label 2.0**53 for the int64 class 2**53 + 1 (np.isin and
    searchsorted compared them as float64)."""
    import warnings
    from fastmlp.sklearn import MLPClassifier
    X = np.random.default_rng(0).normal(size=(4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = MLPClassifier(hidden_layer_sizes=(3,), max_iter=2, random_state=0).fit(
            X, np.array([2**53 + 1, 2**53 + 3] * 2))
        with pytest.raises(ValueError, match=r"y contains labels not in classes_ .*: "
                                             r"\[9007199254740992\.0\]"):
            est.partial_fit(X, np.array([2.0**53] * 4))
        est.partial_fit(X, np.array([2**53 + 1, 2**53 + 3] * 2, dtype=np.uint64))


@pytest.mark.parametrize("given, got", [(np.array(5.0), "ndarray of length ?"),
                                        ((np.ones((2, 2)),), "tuple of length 1"),
                                        ([1, 2, 3], "list of length 3")])
def test_validation_data_that_is_no_pair_says_what_it_got(given, got):
    """A 0-d array had raised len()'s raw TypeError (fit's check asked hasattr(__len__))."""
    X, Y = _data()
    with pytest.raises(ValueError, match=r"validation_data must be a tuple \(X_val, Y_val\), "
                                         f"got {got}"):
        _model().fit(X, Y, validation_data=given)
