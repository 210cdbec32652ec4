"""Callbacks: EarlyStopping (Keras 3's rules), ModelCheckpoint and ProgressBar.

The first part drives the callbacks with a stand-in model and a stand-in fit
loop (the protocol of fastmlp.callbacks), so each rule is checked on exact
numbers; the second part runs them inside the real Model.fit on every backend.
"""
import inspect
import io
import subprocess
import sys

import numpy as np
import pytest

import fastmlp as fm
from fastmlp.callbacks import (Callback, EarlyStopping, ModelCheckpoint, ProgressBar,
                               format_logs)


class FakeModel:
    """The part of fm.Model that callbacks touch; ``theta`` is set by the fake fit."""

    def __init__(self):
        self.theta = np.zeros(3)
        self.stop_training = False
        self.saved = {}          # path -> theta at save time

    def get_state(self):
        return {"theta": self.theta.copy()}

    def set_state(self, state):
        self.theta = state["theta"].copy()

    def save(self, path):
        self.saved[path] = self.theta.copy()
        np.save(path, self.theta)


def fake_fit(values, callbacks, monitor="val_loss", model=None):
    """Fit's callback protocol over given per-epoch values; epoch e leaves theta = [e, e, e].
    Returns (model, number of epochs run)."""
    model = model or FakeModel()
    model.stop_training = False
    for cb in callbacks:
        cb.set_model(model)
        cb.on_train_begin({"epochs": len(values), "samples": 10, "batch_size": 5})
    ran = 0
    for epoch, value in enumerate(values):
        model.theta[:] = epoch
        ran += 1
        logs = {"loss": 1.0, monitor: value, "samples_per_s": 1000.0}
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    for cb in callbacks:
        cb.on_train_end({})
    return model, ran


# -- EarlyStopping's rules --------------------------------------------------------------

def test_base_callback_hooks_do_nothing():
    cb, model = Callback(), FakeModel()
    cb.set_model(model)
    assert cb.model is model
    assert cb.on_train_begin({}) is None and cb.on_epoch_end(0, {}) is None
    assert cb.on_train_end({}) is None


# As in Keras, training stops at the patience-th epoch without improvement; 0 and 1
# both stop at the first (no rule can stop before an epoch has failed to improve).
@pytest.mark.parametrize("patience, stops_at", [(0, 2), (1, 2), (2, 3), (3, 4)])
def test_early_stopping_waits_patience_epochs_without_improvement(patience, stops_at):
    stop = EarlyStopping("val_loss", patience=patience)
    #                    best at epoch 1 ----v   then no improvement
    _, ran = fake_fit([5.0, 4.0, 4.5, 4.2, 4.1, 4.3, 4.4], [stop])
    assert ran == stops_at + 1
    assert stop.stopped_epoch == stops_at
    assert stop.best == 4.0 and stop.best_epoch == 1


def test_early_stopping_does_not_stop_while_improving():
    stop = EarlyStopping("val_loss", patience=0)
    model, ran = fake_fit([5.0, 4.0, 3.0, 2.0], [stop])
    assert ran == 4 and stop.stopped_epoch == 0 and not model.stop_training
    assert stop.best == 2.0 and stop.best_epoch == 3


def test_early_stopping_min_delta_ignores_small_improvements():
    stop = EarlyStopping("val_loss", patience=0, min_delta=0.1)
    _, ran = fake_fit([1.0, 0.95, 0.5], [stop])   # 0.95 is better, but by less than 0.1
    assert ran == 2 and stop.best == 1.0 and stop.best_epoch == 0


def test_early_stopping_equal_value_is_not_an_improvement():
    stop = EarlyStopping("val_loss", patience=0)
    _, ran = fake_fit([1.0, 1.0, 0.5], [stop])
    assert ran == 2 and stop.best_epoch == 0


@pytest.mark.parametrize("monitor, mode, values, best_epoch", [
    ("val_accuracy", "auto", [0.5, 0.9, 0.7, 0.6], 1),   # auto: "acc" in the name -> max
    ("accuracy", "auto", [0.5, 0.9, 0.7, 0.6], 1),
    ("val_loss", "auto", [0.5, 0.9, 0.7, 0.6], 0),       # auto: otherwise min
    ("val_loss", "max", [0.5, 0.9, 0.7, 0.6], 1),
    ("val_accuracy", "min", [0.5, 0.9, 0.7, 0.6], 0),
])
def test_early_stopping_mode(monitor, mode, values, best_epoch):
    stop = EarlyStopping(monitor, patience=5, mode=mode)
    fake_fit(values, [stop], monitor=monitor)
    assert stop.best_epoch == best_epoch and stop.best == values[best_epoch]


def test_early_stopping_restores_whole_state_of_best_epoch():
    stop = EarlyStopping("val_loss", patience=2, restore_best_weights=True)
    model, ran = fake_fit([3.0, 1.0, 2.0, 2.5, 0.1], [stop])
    assert ran == 4 and stop.best_epoch == 1
    np.testing.assert_array_equal(model.theta, [1, 1, 1])


def test_early_stopping_restores_best_also_when_not_stopped():
    # Keras 3: restore_best_weights acts at the end of training, stopped or not
    stop = EarlyStopping("val_loss", patience=10, restore_best_weights=True)
    model, ran = fake_fit([3.0, 1.0, 2.0], [stop])
    assert ran == 3 and stop.stopped_epoch == 0
    np.testing.assert_array_equal(model.theta, [1, 1, 1])


def test_early_stopping_without_restore_keeps_last_weights():
    stop = EarlyStopping("val_loss", patience=0)
    model, _ = fake_fit([3.0, 1.0, 2.0], [stop])
    np.testing.assert_array_equal(model.theta, [2, 2, 2])


def test_early_stopping_baseline_stops_if_never_beaten():
    # improving every epoch but never below the baseline: the wait keeps counting
    values = [10.0, 9.0, 9.5, 9.4]
    with_baseline = EarlyStopping("val_loss", patience=2, baseline=1.0)
    _, ran = fake_fit(values, [with_baseline])
    assert ran == 3 and with_baseline.stopped_epoch == 2
    assert with_baseline.best == 9.0                       # the best is still tracked
    without = EarlyStopping("val_loss", patience=2)
    _, ran = fake_fit(values, [without])
    assert ran == 4


def test_early_stopping_resets_between_fits():
    stop = EarlyStopping("val_loss", patience=0, restore_best_weights=True)
    fake_fit([1.0, 2.0], [stop])
    model, ran = fake_fit([5.0, 4.0, 4.5], [stop])       # 5.0 would not beat the old best 1.0
    assert ran == 3 and stop.best == 4.0 and stop.best_epoch == 1
    np.testing.assert_array_equal(model.theta, [1, 1, 1])


def test_early_stopping_missing_monitor_names_the_logged_keys():
    stop = EarlyStopping("val_loss")
    with pytest.raises(ValueError, match=r"'val_loss' is not in the epoch logs.*'loss'.*"
                                         r"validation_data"):
        fake_fit([1.0], [stop], monitor="loss")


def test_early_stopping_non_numeric_monitor_is_refused():
    stop = EarlyStopping("grad_norm", mode="min")
    stop.set_model(FakeModel())
    stop.on_train_begin({})
    with pytest.raises(TypeError, match="grad_norm.*must be a number"):
        stop.on_epoch_end(0, {"loss": 1.0, "grad_norm": [1.0, 2.0]})


@pytest.mark.parametrize("kwargs, error, match", [
    ({"patience": -1}, ValueError, "patience must be an integer >= 0"),
    ({"patience": 1.5}, ValueError, "patience must be an integer >= 0"),
    ({"patience": True}, ValueError, "patience must be an integer >= 0"),
    ({"min_delta": float("nan")}, ValueError, "min_delta must be a finite number"),
    ({"min_delta": "0.1"}, ValueError, "min_delta must be a finite number"),
    ({"mode": "maximum"}, ValueError, "mode must be 'auto', 'min' or 'max'"),
    # an array of names: compared per element, NumPy's ambiguous truth value before
    ({"mode": np.array(["min", "max"])}, ValueError, "mode must be 'auto', 'min' or 'max'"),
    ({"monitor": None}, TypeError, "monitor must be the name"),
    ({"baseline": float("inf")}, ValueError, "baseline must be a finite number"),
])
def test_early_stopping_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        EarlyStopping(**kwargs)


def test_checkpoint_and_progress_bar_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'auto', 'min' or 'max'"):
        ModelCheckpoint(str(tmp_path / "m.npz"), mode=np.array(["min", "max"]))
    # refused when made, not at the fit's first epoch as an AttributeError ('write')
    for bad in ("out.txt", 3, np.array(["a"])):
        with pytest.raises(TypeError, match="file must be None or a text stream"):
            ProgressBar(file=bad)


# -- ModelCheckpoint ---------------------------------------------------------------------

def test_checkpoint_saves_only_improvements(tmp_path):
    path = str(tmp_path / "best.fastmlp")
    ckpt = ModelCheckpoint(path)
    model, _ = fake_fit([3.0, 1.0, 2.0, 1.5], [ckpt])
    np.testing.assert_array_equal(model.saved[path], [1, 1, 1])
    assert ckpt.best == 1.0 and ckpt.best_epoch == 1 and ckpt.last_saved == path


def test_checkpoint_path_formats_one_based_epoch_and_logs(tmp_path):
    ckpt = ModelCheckpoint(str(tmp_path / "m-{epoch:02d}-{val_loss:.1f}.npy"))
    model, _ = fake_fit([3.0, 1.0, 2.0], [ckpt])
    assert sorted(p.rsplit("/", 1)[1] for p in model.saved) == ["m-01-3.0.npy", "m-02-1.0.npy"]


def test_checkpoint_every_epoch_without_save_best_only(tmp_path):
    ckpt = ModelCheckpoint(tmp_path / "m-{epoch}.npy", monitor="absent", save_best_only=False)
    model, _ = fake_fit([3.0, 1.0, 2.0], [ckpt])
    assert len(model.saved) == 3
    np.testing.assert_array_equal(model.saved[str(tmp_path / "m-3.npy")], [2, 2, 2])


def test_checkpoint_max_mode_for_accuracy(tmp_path):
    ckpt = ModelCheckpoint(str(tmp_path / "m-{epoch}.npy"), monitor="val_accuracy")
    fake_fit([0.5, 0.9, 0.7], [ckpt], monitor="val_accuracy")
    assert ckpt.best == 0.9 and ckpt.last_saved.endswith("m-2.npy")


def test_checkpoint_path_naming_an_unlogged_value_is_a_clear_error(tmp_path):
    ckpt = ModelCheckpoint(str(tmp_path / "m-{val_acc}.npy"))
    with pytest.raises(ValueError, match="names 'val_acc', which is not logged.*'val_loss'"):
        fake_fit([1.0], [ckpt])


def test_checkpoint_missing_monitor_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="'val_loss' is not in the epoch logs"):
        fake_fit([1.0], [ModelCheckpoint(str(tmp_path / "m"))], monitor="loss")


def test_checkpoint_bad_path_type():
    with pytest.raises(TypeError, match="path must be a str, bytes or os.PathLike"):
        ModelCheckpoint(3)


# -- ProgressBar ---------------------------------------------------------------------------

def test_format_logs_orders_loss_metrics_validation_speed():
    line = format_logs({"val_accuracy": 0.5, "accuracy": 0.75, "loss": 0.125,
                        "val_loss": 0.25, "samples_per_s": 1234567.0, "grad_norm": [1.0]})
    assert line == ("loss 0.125  accuracy 0.75  val_accuracy 0.5  val_loss 0.25  "
                    "1,234,567 samples/s")


def test_progress_bar_plain_fallback_prints_one_line_per_epoch(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)        # import tqdm raises ImportError
    fake_fit([0.5, 0.25], [ProgressBar()])
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["epoch 1/2  loss 1  val_loss 0.5  1,000 samples/s",
                     "epoch 2/2  loss 1  val_loss 0.25  1,000 samples/s"]


def test_progress_bar_uses_tqdm_on_stderr(capsys):
    pytest.importorskip("tqdm")
    fake_fit([0.5, 0.25, 0.125], [ProgressBar()])
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()[-1]   # the bar's final state
    assert last.startswith("epoch 3/3 |") and "val_loss 0.125" in last
    assert "1,000 samples/s" in last


def test_progress_bar_file_argument_and_early_stop():
    pytest.importorskip("tqdm")
    out = io.StringIO()
    fake_fit([0.5, 0.75, 0.8, 0.9], [EarlyStopping(patience=0), ProgressBar(file=out)])
    last = out.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("epoch 2/4 |") and "val_loss 0.75" in last


def test_importing_fastmlp_imports_neither_tqdm_nor_matplotlib():
    code = ("import sys, fastmlp, fastmlp.callbacks, fastmlp.plot; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tqdm', 'matplotlib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# -- inside the real Model.fit, on every backend ------------------------------------------

fit_has_callbacks = pytest.mark.skipif(
    "callbacks" not in inspect.signature(fm.Model.fit).parameters,
    reason="Model.fit does not take callbacks yet (issue 11 wiring in fastmlp/model.py)")


class Spy(Callback):
    """Records every epoch's logs and the model's state after it."""

    def on_train_begin(self, logs=None):
        self.begin, self.logs, self.states = logs, [], []

    def on_epoch_end(self, epoch, logs=None):
        self.logs.append(dict(logs))
        self.states.append(self.model.get_state())


def _problem(n=120, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    y = (X[:, 0] + X[:, 1] ** 2 > 0.8).astype(int)
    return X, y


def _model(backend, dtype="float64", lr=0.05):
    # a wide net with a large step on few rows over-fits: val_loss turns up early
    return fm.Model([fm.Dense(64, "relu"), fm.Dense(2, "softmax")], input_dim=5,
                    loss="cross_entropy", optimizer=fm.Adam(lr=lr), backend=backend,
                    dtype=dtype, seed=0)


@fit_has_callbacks
def test_fit_early_stopping_restores_best_epoch_exactly(backend, dtype):
    X, y = _problem()
    model, spy = _model(backend, dtype), Spy()
    stop = EarlyStopping("val_loss", patience=3, restore_best_weights=True)
    history = model.fit(X[:40], y[:40], epochs=200, batch_size=8,
                        validation_data=(X[40:], y[40:]), callbacks=[spy, stop])
    val = history.history["val_loss"]
    ran = len(val)
    assert ran < 200, "the validation loss never turned up: the test lost its point"
    best = int(np.argmin(val))
    assert stop.best_epoch == best and stop.best == val[best]
    assert stop.stopped_epoch == ran - 1 == best + 3           # patience respected
    assert all(v >= val[best] for v in val[best + 1:])
    assert not np.array_equal(spy.states[-1]["theta"], spy.states[best]["theta"])
    # the model is exactly as after the best epoch: weights, optimiser state, generator
    state = model.get_state()
    np.testing.assert_array_equal(state["theta"], spy.states[best]["theta"])
    np.testing.assert_array_equal(state["opt_buffers"], spy.states[best]["opt_buffers"])
    np.testing.assert_array_equal(state["opt_step"], spy.states[best]["opt_step"])
    assert state["rng_state"] == spy.states[best]["rng_state"]
    assert model.evaluate(X[40:], y[40:]) == val[best]


@fit_has_callbacks
def test_fit_protocol_begin_logs_and_stop_training(backend):
    X, y = _problem()
    model, spy = _model(backend), Spy()
    history = model.fit(X, y, epochs=4, batch_size=16, callbacks=[spy, EarlyStopping(
        "loss", patience=0, min_delta=1e9)])             # nothing improves by 1e9: stop at 2
    assert spy.begin == {"epochs": 4, "initial_epoch": 0, "samples": 120, "batch_size": 16}
    assert len(spy.logs) == 2 and history.epoch == [0, 1]
    assert spy.logs[0]["loss"] == history.history["loss"][0]
    assert spy.logs[0]["samples_per_s"] > 0


@fit_has_callbacks
def test_fit_checkpoint_file_holds_best_epoch(backend, tmp_path):
    X, y = _problem()
    model, spy = _model(backend), Spy()
    path = tmp_path / "best.fastmlp"
    ckpt = ModelCheckpoint(path)
    history = model.fit(X[:40], y[:40], epochs=15, batch_size=8,
                        validation_data=(X[40:], y[40:]), callbacks=[spy, ckpt])
    best = int(np.argmin(history.history["val_loss"]))
    assert ckpt.best_epoch == best
    loaded = fm.load(path)
    np.testing.assert_array_equal(loaded.get_state()["theta"], spy.states[best]["theta"])
    assert loaded.evaluate(X[40:], y[40:]) == history.history["val_loss"][best]


@fit_has_callbacks
@pytest.mark.parametrize("with_tqdm", [True, False])
def test_fit_progress_bar_prints(backend, with_tqdm, monkeypatch, capsys):
    if with_tqdm:
        pytest.importorskip("tqdm")
    else:
        monkeypatch.setitem(sys.modules, "tqdm", None)
    X, y = _problem()
    _model(backend).fit(X[:80], y[:80], epochs=3, validation_data=(X[80:], y[80:]),
                        callbacks=[ProgressBar()])
    err = capsys.readouterr().err.replace("\r", "\n")
    last = err.strip().splitlines()[-1]
    assert last.startswith("epoch 3/3")
    assert "loss" in last and "val_loss" in last and "samples/s" in last


@fit_has_callbacks
def test_fit_verbose_1_shows_one_progress_bar(backend, capsys):
    pytest.importorskip("tqdm")
    X, y = _problem()
    _model(backend).fit(X, y, epochs=2, validation_split=0.25, verbose=1)
    err = capsys.readouterr().err.replace("\r", "\n")
    finals = [line for line in err.splitlines() if line.startswith("epoch 2/2")]
    assert finals and "val_loss" in finals[-1]
    assert err.count("epoch 0/2 |") == 1                  # tqdm's first draw: one bar


@fit_has_callbacks
def test_fit_from_a_callback_leaves_the_outer_fits_history(backend):
    """A callback that fits the model again (fine-tuning between epochs) set model.history
    to its inner fit's; the outer fit's History is model.history once it returns."""
    X, y = _problem()
    model = _model(backend)

    class FitAgain(Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                model.fit(X, y, epochs=1, batch_size=16)

    history = model.fit(X, y, epochs=3, batch_size=16, callbacks=[FitAgain()])
    assert model.history is history and history.epoch == [0, 1, 2]
