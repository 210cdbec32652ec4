"""Round 9 of hostile testing (callbacks, state and threads), each fixed:

- a model seeded with a Generator of another bit generator than PCG64 (MT19937, ...):
  set_state(get_state()), copies, pickles and EarlyStopping's restore failed, save raised
  a raw JSON TypeError or (PCG64DXSM) replaced a good file with one load refused;
- set_state given out-of-range integers in rng_state raised NumPy's raw OverflowError;
- a callback that trained the model (fit, apply_gradient) before a Ctrl-C: the epoch's
  rollback restored the nested call's snapshot, keeping the epoch's training;
- a fit waiting for another's end had its stop_training set by the other's callback (it
  ran one epoch of ten); two first fits each recorded their own classes_;
- a callback with a plain attribute named on_... was refused as a hook fit never calls.
"""
import copy
import pickle
import threading
import time

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import labels

BACKENDS = fm.available_backends()
BIT_GENERATORS = [np.random.MT19937, np.random.PCG64DXSM, np.random.Philox, np.random.SFC64]


def _model(backend="numpy", seed=0, optimizer=None):
    return fm.Model([fm.Dense(6, "tanh"), fm.Dense(1)], input_dim=3, backend=backend,
                    optimizer=optimizer or fm.SGD(0.05), dtype="float64", seed=seed)


def _same_state(got, want):
    """get_state() dicts equal, bit for bit."""
    for key in ("theta", "opt_buffers", "opt_step"):
        np.testing.assert_array_equal(got[key], want[key])
    assert got["rng_state"] == want["rng_state"]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(40, 3))
    return X, X[:, :1] ** 2


# -- seeds of other bit generators ---------------------------------------------------------
@pytest.mark.parametrize("bit_generator", BIT_GENERATORS, ids=lambda b: b.__name__)
def test_a_generator_of_another_bit_generator_gives_a_state_that_round_trips(bit_generator,
                                                                           data, tmp_path):
    X, Y = data
    m = _model(seed=np.random.Generator(bit_generator(0)))
    m.fit(X, Y, epochs=2, batch_size=8)
    m.set_state(m.get_state())
    for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert other.get_state()["rng_state"] == m.get_state()["rng_state"]
    path = tmp_path / "m.fastmlp"
    m.save(path)
    loaded, copied = fm.load(path), copy.deepcopy(m)
    for model in (m, loaded, copied):
        model.fit(X, Y, epochs=1, batch_size=8)
    for other in (loaded, copied):
        np.testing.assert_array_equal(other.get_state()["theta"], m.get_state()["theta"])
    m = _model(seed=np.random.Generator(bit_generator(0)))
    m.fit(X, Y, epochs=6, validation_data=(X, Y), batch_size=8,
          callbacks=[fm.EarlyStopping(patience=1, restore_best_weights=True)])


@pytest.mark.parametrize("make_seed", [
    lambda: np.random.PCG64DXSM(0), lambda: np.random.MT19937(0),
    lambda: np.random.RandomState(0),
], ids=["PCG64DXSM", "MT19937", "RandomState"])
def test_a_bare_bit_generator_or_random_state_seed_round_trips(make_seed, data, tmp_path):
    # default_rng wraps these keeping their type: the Generator-only fix missed them
    X, Y = data
    m = _model(seed=make_seed())
    assert type(m._rng.bit_generator) is np.random.PCG64
    m.fit(X, Y, epochs=1, batch_size=8)
    m.set_state(m.get_state())
    copy.deepcopy(m)
    m.save(tmp_path / "m.fastmlp")
    np.testing.assert_array_equal(fm.load(tmp_path / "m.fastmlp").get_state()["theta"],
                                  m.get_state()["theta"])


@pytest.mark.parametrize("change", [{"has_uint32": 5}, {"has_uint32": -1},
                                    {"uinteger": 1.5, "has_uint32": 1}])
def test_set_state_refuses_a_generator_state_load_would_refuse(change, tmp_path):
    # NumPy's setter took has_uint32 = 5 (save then replaced a good file with one load
    # refused) and truncated 1.5
    m = _model()
    m.save(tmp_path / "m.fastmlp")
    state = m.get_state()
    bad = dict(state, rng_state=dict(state["rng_state"], **change))
    with pytest.raises(ValueError, match="rng_state is not a state of this model's generator"):
        m.set_state(bad)
    m.save(tmp_path / "m.fastmlp")
    fm.load(tmp_path / "m.fastmlp")


def test_a_generator_of_another_bit_generator_seeds_alike_and_is_drawn_from():
    a = _model(seed=np.random.Generator(np.random.MT19937(5)))
    b = _model(seed=np.random.Generator(np.random.MT19937(5)))
    np.testing.assert_array_equal(a.get_state()["theta"], b.get_state()["theta"])
    assert type(a._rng.bit_generator) is np.random.PCG64
    given = np.random.Generator(np.random.MT19937(5))
    _model(seed=given)
    untouched = np.random.Generator(np.random.MT19937(5))
    assert given.random() != untouched.random()   # its numbers drawn


def test_a_pcg64_generator_is_still_the_models_own():
    given = np.random.default_rng(7)
    m = _model(seed=given)
    assert m._rng is given


@pytest.mark.parametrize("rng_state", [
    {"bit_generator": "PCG64", "state": {"state": -1, "inc": 1}, "has_uint32": 0, "uinteger": 0},
    {"bit_generator": "PCG64", "state": {"state": 2**200, "inc": 1}, "has_uint32": 0,
     "uinteger": 0},
    {"bit_generator": "PCG64", "state": {"state": 1, "inc": 1}, "has_uint32": 1,
     "uinteger": 2**40},
])
def test_set_state_words_out_of_range_generator_integers(rng_state):
    m = _model()
    with pytest.raises(ValueError, match="rng_state is not a state of this model's generator"):
        m.set_state(dict(m.get_state(), rng_state=rng_state))


# -- a callback that trains, then Ctrl-C ----------------------------------------------------
class _TrainsThenInterrupted(fm.Callback):
    def __init__(self, how, X, Y):
        self.how, self.X, self.Y = how, X, Y

    def on_epoch_end(self, epoch, logs=None):
        if self.how == "apply_gradient":
            self.model.apply_gradient(np.full(self.model.n_params, 0.01))
        elif self.how == "fit":
            self.model.fit(self.X[:8], self.Y[:8], epochs=2, batch_size=4)
        elif self.how == "train_on_batch":
            self.model.train_on_batch(self.X[:8], self.Y[:8])
        raise KeyboardInterrupt


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["apply_gradient", "fit", "train_on_batch"])
def test_a_ctrl_c_after_a_callbacks_training_undoes_the_whole_epoch(backend, how, data):
    X, Y = data
    straight, resumed = _model(backend), _model(backend)
    straight.fit(X, Y, epochs=2, batch_size=8)
    resumed.fit(X, Y, epochs=1, batch_size=8)
    with pytest.raises(KeyboardInterrupt):
        resumed.fit(X, Y, epochs=1, batch_size=8, callbacks=[_TrainsThenInterrupted(how, X, Y)])
    resumed.fit(X, Y, epochs=1, batch_size=8)
    _same_state(resumed.get_state(), straight.get_state())


def test_model_history_is_the_interrupted_fits_own_after_a_nested_fit(data):
    X, Y = data
    m = _model()
    m.fit(X, Y, epochs=1, batch_size=8)

    class NestedThenCtrlC(fm.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.fit(X[:8], Y[:8], epochs=5, batch_size=4)
                raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        m.fit(X, Y, epochs=3, batch_size=8, callbacks=[NestedThenCtrlC()])
    assert m.history.epoch == [0]   # its one kept epoch, not the nested fit's five


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_callbacks_training_is_kept_when_nothing_interrupts(backend, data):
    # the nested calls' own snapshots: a diverging nested step is still undone
    X, Y = data
    m = _model(backend, optimizer=fm.SGD(100.0))   # 100 * 1e307 overflows

    class Diverges(fm.Callback):
        def on_epoch_end(self, epoch, logs=None):
            before = self.model.get_state()["theta"]
            with pytest.raises(fm.TrainingDiverged):
                self.model.apply_gradient(np.full(self.model.n_params, 1e307))
            np.testing.assert_array_equal(self.model.get_state()["theta"], before)
    m.fit(X, Y, epochs=2, batch_size=8, callbacks=[Diverges()])
    assert len(m.history.epoch) == 2


# -- concurrent fits ----------------------------------------------------------------------
def test_a_fit_waiting_for_another_is_not_stopped_by_its_callback(data):
    X, Y = data
    m = _model("numpy")
    second = {}

    def fit_b():
        second["history"] = m.fit(X, Y, epochs=5, batch_size=8)

    class StartsBThenStops(fm.Callback):
        def on_epoch_end(self, epoch, logs=None):
            second["thread"] = threading.Thread(target=fit_b)
            second["thread"].start()
            time.sleep(0.3)   # B waits for the lock (it had reset stop_training before)
            self.model.stop_training = True
    first = m.fit(X, Y, epochs=5, batch_size=8, callbacks=[StartsBThenStops()])
    second["thread"].join()
    assert len(first.epoch) == 1
    assert len(second["history"].epoch) == 5
    assert m.history is second["history"]


def test_two_first_fits_with_different_labels_run_one_after_the_other(monkeypatch):
    real = labels.encode

    def slow_encode(*args, **kwargs):   # both fits find no classes_ yet, unlocked
        out = real(*args, **kwargs)
        time.sleep(0.2)
        return out
    monkeypatch.setattr(labels, "encode", slow_encode)
    m = fm.Model([fm.Dense(4, "tanh"), fm.Dense(3, "softmax")], input_dim=2,
                 loss="cross_entropy", backend="numpy", seed=0)
    X = np.random.default_rng(0).normal(size=(6, 2))
    outcome = {}

    def fit(name, y):
        try:
            m.fit(X, np.array(y * 2), epochs=1)
            outcome[name] = "trained"
        except ValueError as exc:
            outcome[name] = str(exc)
    threads = [threading.Thread(target=fit, args=("abc", ["a", "b", "c"])),
               threading.Thread(target=fit, args=("xyz", ["x", "y", "z"]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    trained = [k for k, v in outcome.items() if v == "trained"]
    assert len(trained) == 1, outcome
    refused = outcome["xyz" if trained == ["abc"] else "abc"]
    assert "labels the model does not know" in refused
    assert m.classes_.tolist() == list(trained[0])


# -- callbacks' attributes ----------------------------------------------------------------
def test_a_data_attribute_named_on_something_is_not_a_hook(data):
    X, Y = data

    class Counts(fm.Callback):
        def __init__(self):
            self.on_rank = 0
            self.on_epoch_end_calls = 0

        def on_epoch_end(self, epoch, logs=None):
            self.on_epoch_end_calls += 1
    counts = Counts()
    _model().fit(X, Y, epochs=3, batch_size=8, callbacks=[counts])
    assert counts.on_epoch_end_calls == 3


def test_a_keras_batch_hook_is_still_refused(data):
    X, Y = data

    class PerBatch(fm.Callback):
        def on_batch_end(self, batch, logs=None):
            pass
    with pytest.raises(TypeError, match="on_batch_end, which fit never calls"):
        _model().fit(X, Y, epochs=1, callbacks=[PerBatch()])


# -- labels save cannot hold -------------------------------------------------------------
def _classifier():
    return fm.Model([fm.Dense(4, "relu"), fm.Dense(2, "softmax")], input_dim=3,
                    loss="cross_entropy", backend="numpy", seed=0)


def test_integer_labels_beyond_64_bits_are_refused_by_fit_not_by_save():
    X = np.random.default_rng(0).standard_normal((10, 3))
    m = _classifier()
    for labels in ([2**70, 5], [-1, 2**63]):
        with pytest.raises(TypeError, match="integers that no 64-bit integer type holds"):
            m.fit(X, labels * 5, epochs=1)
        assert m.classes_ is None
    with pytest.raises(TypeError, match="mix floats with integers float64 cannot hold"):
        m.fit(X, np.array([2**53 + 1, 5.0] * 5, dtype=object), epochs=1)


@pytest.mark.parametrize("labels", [
    [np.uint64(2**63), np.int64(-1)], [2**63, np.int64(-1)],
    np.array([np.uint64(2**63), np.int64(-1)], dtype=object),
], ids=["numpy-scalars", "mixed", "object-array"])
def test_numpy_integers_no_64_bit_type_holds_together_are_refused(labels):
    # NumPy cast the int64 -1 to the uint64 label 2**64 - 1 without a word
    X = np.random.default_rng(0).standard_normal((10, 3))
    with pytest.raises(TypeError, match="integers that no 64-bit integer type holds"):
        _classifier().fit(X, list(labels) * 5, epochs=1)


def test_integer_labels_up_to_64_bits_train_save_and_load(tmp_path):
    X = np.random.default_rng(0).standard_normal((10, 3))
    m = _classifier()
    for labels in ([2**64 - 1, 5], [-2**63, 2**63 - 1]):   # 2**64 - 1 was made 2**64
        m = _classifier()
        m.fit(X, labels * 5, epochs=1)
        m.save(tmp_path / "m.fastmlp")
        loaded = fm.load(tmp_path / "m.fastmlp")
        assert loaded.classes_.tolist() == sorted(labels)
        assert set(loaded.predict_classes(X).tolist()) <= set(labels)


# -- copies from other threads during a fit -----------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_another_thread_copies_a_fitting_model_between_epochs(backend, data, tmp_path):
    """fit held the one lock through its callbacks: a callback handing save to a worker
    and waiting for it deadlocked, and a copy from another thread waited for the end."""
    X, Y = data
    m = _model(backend)
    copies = {}

    class SavesInAWorker(fm.Callback):
        def on_epoch_end(self, epoch, logs=None):
            def copy_it():
                self.model.save(tmp_path / f"epoch{epoch}.fastmlp")
                copies[epoch] = (copy.deepcopy(self.model).get_state(), self.model.get_state())
            worker = threading.Thread(target=copy_it)
            worker.start()
            worker.join(timeout=60)
            assert not worker.is_alive(), "the worker waited for the fit: a deadlock"
    m.fit(X, Y, epochs=3, batch_size=8, callbacks=[SavesInAWorker()])
    for epoch in range(3):
        straight = _model(backend)
        straight.fit(X, Y, epochs=epoch + 1, batch_size=8)
        for got in (*copies[epoch], fm.load(tmp_path / f"epoch{epoch}.fastmlp").get_state()):
            _same_state(got, straight.get_state())


def test_another_threads_training_call_still_waits_for_the_fit(data):
    X, Y = data
    m = _model()
    order = []

    class StartsATrainer(fm.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                self.worker = threading.Thread(
                    target=lambda: (m.train_on_batch(X, Y), order.append("step")))
                self.worker.start()
                time.sleep(0.3)
            order.append(f"epoch {epoch}")
    cb = StartsATrainer()
    m.fit(X, Y, epochs=2, batch_size=8, callbacks=[cb])
    cb.worker.join()
    assert order == ["epoch 0", "epoch 1", "step"]
