"""Hostile round 56 (three audits: compiling and caches, the Model API's contracts, the
backends and BLAS settings): what they found, each fixed."""
import copy
import io
import pickle

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import callbacks


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
