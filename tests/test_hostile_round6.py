"""Hostile round 6 (semantics against Keras, scikit-learn and PyTorch): ModelCheckpoint's
best across fits, validation_split's count, monitors refused before training, values a
callback logs reach the history, Keras's hook order, batch hooks refused.

Each test of a fix fails on the code before it (checked when it was written), except the
split counts both rules agree on, the refused split and the per-epoch check of a name only
a callback adds, and in the speed section the checks that results and messages are
unchanged: those guard behaviour the fixes keep."""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp.callbacks import Callback, EarlyStopping, ModelCheckpoint


def _model(backend="numpy", units=2, seed=0):
    return fm.Model([fm.Dense(4, "tanh"), fm.Dense(units, "softmax")], input_dim=3,
                    loss="cross_entropy", backend=backend, seed=seed)


def _data(n=40, seed=0):
    X = np.random.default_rng(seed).standard_normal((n, 3))
    return X, (X[:, 0] > 0).astype(int)


def test_model_checkpoint_keeps_its_best_across_fits(tmp_path):
    """best was reset at every fit, so the first epoch of each fit saved, however bad:
    the "best" file ended holding the last, worse model (val_loss 13.8, not 1.95)."""
    X, y = _data()
    model = _model()
    path = tmp_path / "best.fastmlp"
    ckpt = ModelCheckpoint(path, monitor="val_loss")
    val = (X[:10], y[:10])
    model.fit(X, y, epochs=3, validation_data=val, callbacks=[ckpt])
    best = ckpt.best
    saved = fm.load(path).evaluate(*val)
    assert saved == pytest.approx(best)
    model.set_weights([w * 40 for w in model.get_weights()])   # far worse from here on
    model.fit(X, y, epochs=1, validation_data=val, callbacks=[ckpt], shuffle=False)
    assert model.history.history["val_loss"][0] > best
    assert ckpt.best == best and fm.load(path).evaluate(*val) == saved


@pytest.mark.parametrize("n, split, held_out", [
    (1797, 0.2, 360), (10, 0.25, 3), (9, 0.5, 5), (100, 0.333, 34), (10, 0.05, 1),
    (10, 0.5, 5), (3, 0.5, 2),
])
def test_validation_split_holds_out_what_keras_does(n, split, held_out):
    """Keras trains on the first floor(n (1 - split)) rows; round(n split) held out 359 of
    the digits' 1797 at 0.2 (Keras 360), and refused 0.05 of 10 rows (Keras holds 1)."""
    X = np.random.default_rng(0).standard_normal((n, 3))
    y = np.arange(n) % 2
    model = _model()
    h = model.fit(X, y, epochs=1, validation_split=split, shuffle=False)
    assert h.history["val_loss"][0] == model.evaluate(X[n - held_out:], y[n - held_out:])
    trained = _model()
    trained.fit(X[:n - held_out], y[:n - held_out], epochs=1, shuffle=False)
    assert np.array_equal(trained.get_state()["theta"], model.get_state()["theta"])


def test_validation_split_that_leaves_no_training_row_is_refused():
    X, y = _data(n=2)
    with pytest.raises(ValueError, match="validation_split=0.9 of 2 rows leaves 2 for "
                                         "validation and 0 for training"):
        _model().fit(X, y, validation_split=0.9)


@pytest.mark.parametrize("callback, message", [
    (lambda tmp: EarlyStopping(patience=3),
     "EarlyStopping monitors 'val_loss', which this fit does not log: pass "
     "validation_data or validation_split"),
    (lambda tmp: ModelCheckpoint(tmp / "m.fastmlp", monitor="accuracy"),
     "ModelCheckpoint monitors 'accuracy', which this fit does not log: pass "
     "metrics=['accuracy']"),
    (lambda tmp: EarlyStopping("val_mae"),
     "pass metrics=['mae'] and validation_data or validation_split"),
])
def test_a_monitor_this_fit_cannot_log_is_refused_before_training(tmp_path, callback, message):
    """It raised from on_epoch_end after a whole epoch had trained (classes_ learnt)."""
    X, y = _data()
    model = _model()
    before = model.get_state()
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        model.fit(X, ["a", "b"] * 20, epochs=2, callbacks=[callback(tmp_path)])
    assert np.array_equal(model.get_state()["theta"], before["theta"])
    assert model.classes_ is None
    ModelCheckpoint(tmp_path / "every.fastmlp", monitor="val_loss", save_best_only=False)
    model.fit(X, y, epochs=1, callbacks=[ModelCheckpoint(tmp_path / "every.fastmlp",
                                                         save_best_only=False)])


class _F1(Callback):
    """A custom metric, the Keras recipe: computed in on_epoch_end, written into logs."""

    def on_epoch_end(self, epoch, logs=None):
        logs["val_f1"] = 0.5 + epoch / 100


def test_values_a_callback_logs_reach_history_and_later_callbacks():
    """History recorded each epoch before the callbacks ran: a callback's val_f1 reached
    an EarlyStopping after it but never history.history."""
    X, y = _data()
    stop = EarlyStopping("val_f1", mode="max", patience=10)
    h = _model().fit(X, y, epochs=3, validation_split=0.25, callbacks=[_F1(), stop])
    assert h.history["val_f1"] == [0.5, 0.51, 0.52] and stop.best == 0.52
    assert list(h.history) == ["loss", "val_loss", "samples_per_s", "val_f1"]


def test_a_name_only_a_callback_adds_is_still_checked_each_epoch():
    X, y = _data()
    with pytest.raises(ValueError, match="monitor 'val_f2' is not in the epoch logs"):
        _model().fit(X, y, epochs=2, callbacks=[_F1(), EarlyStopping("val_f2", mode="max")])


class _Recorder(Callback):
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def set_model(self, model):
        self.calls.append(f"{self.name}.set_model")

    def on_train_begin(self, logs=None):
        self.calls.append(f"{self.name}.on_train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(f"{self.name}.on_epoch_begin({epoch})")

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(f"{self.name}.on_epoch_end({epoch})")


def test_hooks_come_in_keras_order_with_on_epoch_begin():
    """on_epoch_begin was accepted and never called; set_model and on_train_begin were
    interleaved per callback (Keras sets every model first)."""
    X, y = _data()
    calls = []
    _model().fit(X, y, epochs=2, callbacks=[_Recorder("A", calls), _Recorder("B", calls)])
    assert calls == ["A.set_model", "B.set_model", "A.on_train_begin", "B.on_train_begin",
                     "A.on_epoch_begin(0)", "B.on_epoch_begin(0)",
                     "A.on_epoch_end(0)", "B.on_epoch_end(0)",
                     "A.on_epoch_begin(1)", "B.on_epoch_begin(1)",
                     "A.on_epoch_end(1)", "B.on_epoch_end(1)"]


def test_keras_batch_hooks_are_refused_not_ignored():
    class PerBatch(Callback):
        def on_train_batch_end(self, batch, logs=None):
            pass

    X, y = _data()
    model = _model()
    with pytest.raises(TypeError, match="PerBatch defines on_train_batch_end, which fit "
                                        "never calls"):
        model.fit(X, y, epochs=1, callbacks=[PerBatch()])
    assert model.classes_ is None


def test_a_checkpoint_path_formatting_a_list_says_so(tmp_path):
    """{grad_norm:.3f} (a list) escaped as a bare TypeError naming neither the callback
    nor the path."""
    X, y = _data()
    ckpt = ModelCheckpoint(str(tmp_path / "ck-{grad_norm:.3f}.fastmlp"), save_best_only=False)
    with pytest.raises(ValueError, match="ModelCheckpoint path .* is not a valid format "
                                         "string"):
        _model().fit(X, y, epochs=1, gradient_norms=True, callbacks=[ckpt])


def test_a_linear_layer_of_slope_zero_is_refused(tmp_path):
    """Dense(k, "linear", a=0) was accepted: it outputs 0 and passes no gradient."""
    with pytest.raises(ValueError, match="slope a=0 outputs 0 and learns nothing"):
        fm.Dense(3, "linear", a=0)
    fm.Dense(3, "linear", a=-0.5)


# -- speed at the front door (round 6's performance tester): the same results, less work --

def _mnist_like(backend, optimizer=None, dtype="float32"):
    return fm.Model([fm.Dense(32, "relu"), fm.Dense(10, "softmax")], input_dim=20,
                    loss="cross_entropy", optimizer=optimizer or fm.Adam(), backend=backend,
                    dtype=dtype, seed=0)


def test_train_on_batch_of_labels_or_float64_takes_the_guarded_step(compiled_backend, dtype,
                                                                   monkeypatch):
    """Labels and float64 X went through a backup copy of theta (and Adam's buffers) and a
    finiteness pass around an unguarded step: +80-540 us a step. After converting, the
    one guarded call runs, with the same result bit for bit."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((8, 20)), rng.integers(0, 10, 8)
    ready, twin = (_mnist_like(compiled_backend, dtype=dtype) for _ in range(2))
    ready.classes_ = np.arange(10)
    monkeypatch.setattr(fm.Model, "_rollback", lambda self: pytest.fail("backup taken"))
    given = X.astype({"float32": np.float64, "float64": np.float32}[dtype])  # to convert
    for _ in range(3):
        a = twin.train_on_batch(given, y)
        b = ready.train_on_batch(given.astype(dtype), np.eye(10, dtype=dtype)[y])
        assert a == b
    assert np.array_equal(twin.get_state()["opt_buffers"], ready.get_state()["opt_buffers"])
    assert twin.classes_.tolist() == list(range(10))


def test_a_diverging_converted_step_is_still_undone_and_named(compiled_backend):
    model = _mnist_like(compiled_backend, fm.SGD(lr=1e30))
    X = np.random.default_rng(0).standard_normal((8, 20)) * 1e30
    before = model.get_state()
    with pytest.raises(fm.TrainingDiverged, match="train_on_batch"):
        model.train_on_batch(X, np.arange(8))
    assert np.array_equal(model.get_state()["theta"], before["theta"])
    assert model.classes_ is None


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.bool_, np.float16, ">f8"])
@pytest.mark.parametrize("model_dtype", ["float32", "float64"])
def test_small_predict_of_another_dtype_is_the_converted_predict(backend, dtype, model_dtype):
    model = _mnist_like(backend, dtype=model_dtype)
    X = (np.random.default_rng(0).standard_normal((3, 20)) * 3).astype(dtype)
    want = model.predict(np.ascontiguousarray(X, dtype=model_dtype))
    assert np.array_equal(model.predict(X), want)
    assert np.array_equal(model.predict(np.asfortranarray(X)), want)


def test_small_predict_of_float64_names_bad_values_as_before(backend):
    model = _mnist_like(backend)
    X = np.zeros((2, 20))
    X[1, 4] = np.nan
    with pytest.raises(ValueError, match=r"X contains NaN or inf \(first at row 1, column 4\)"):
        model.predict(X)
    X[1, 4] = 1e300
    with pytest.raises(ValueError, match=r"too large for float32 \(1e\+300 at row 1, column 4"):
        model.predict(X)


def test_load_and_copies_draw_no_initial_weights(tmp_path, monkeypatch):
    """Restoring drew a whole random initialisation, then overwrote it (a third of a
    deepcopy's time); the restored model is the same bit for bit."""
    import copy
    import pickle
    from fastmlp.network import Network
    model = _mnist_like("numpy")
    model.train_on_batch(np.ones((4, 20)), [1, 2, 3, 4])
    model.save(tmp_path / "m.fastmlp")
    monkeypatch.setattr(Network, "init_params", lambda *a: pytest.fail("initial weights drawn"))
    for twin in (fm.load(tmp_path / "m.fastmlp"), copy.deepcopy(model),
                 pickle.loads(pickle.dumps(model))):
        a, b = twin.get_state(), model.get_state()
        assert all(np.array_equal(a[k], b[k]) for k in ("theta", "opt_buffers", "opt_step"))
        assert a["rng_state"] == b["rng_state"] and twin.classes_.tolist() == list(range(10))


def test_save_sweeps_a_folder_only_when_it_changed(tmp_path, monkeypatch):
    """Every save listed its whole folder for stale temporaries: 11 ms a save among 10,000
    files. It is listed again only when something changed it since this process's save."""
    import os
    from fastmlp import _atomic
    model = _mnist_like("numpy")
    path = tmp_path / "m.fastmlp"
    model.save(path)
    listed = []
    real = os.listdir
    monkeypatch.setattr(_atomic.os, "listdir", lambda p: listed.append(p) or real(p))
    model.save(path)
    model.save(path)
    assert listed == []
    dead = _dead_pid()
    (tmp_path / f".fastmlp-{dead}-x1.tmp").write_bytes(b"x")   # a killed writer's file
    model.save(path)
    assert len(listed) == 1 and sorted(os.listdir(tmp_path)) == ["m.fastmlp"]


def _dead_pid():
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_frame_is_checked_again_when_its_columns_or_the_names_change():
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame(np.random.default_rng(0).standard_normal((4, 20)),
                     columns=[f"c{i}" for i in range(20)])
    model = _mnist_like("numpy")
    model.fit(X, [0, 1, 2, 3], epochs=1)
    want = model.predict(X)
    assert np.array_equal(model.predict(X), want)             # the same Index: cached
    swapped = X[[*X.columns[1:], X.columns[0]]]
    with pytest.raises(ValueError, match="X has feature names"):
        model.predict(swapped)
    model.feature_names_in_ = np.array([f"d{i}" for i in range(20)])
    with pytest.raises(ValueError, match="X has feature names"):
        model.predict(X)                                      # names changed: checked again
