"""Model-level contracts decided in issue 8: what is refused, what a failed step
leaves behind, interrupted fits, input scaling, state and pickling, on every backend."""
import copy
import pickle

import numpy as np
import pytest

import fastmlp as fm
from helpers import interrupt_epoch


def small(backend, dtype="float32", optimizer=None, loss="mse", out="linear", units=2):
    return fm.Model([fm.Dense(5, "tanh"), fm.Dense(units, out)], input_dim=3, loss=loss,
                    optimizer=optimizer or fm.SGD(lr=0.05, momentum=0.9), backend=backend,
                    dtype=dtype, seed=0)


def data(n=40, k=2):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, 3))
    return X, X @ rng.normal(size=(3, k))


def assert_same_state(a, b):
    for key in ("theta", "opt_buffers", "opt_step"):
        assert a[key].tobytes() == b[key].tobytes(), key
    assert a["rng_state"] == b["rng_state"]


# -- item 4: a 1-unit softmax with cross-entropy has loss 0 whatever it predicts
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_one_unit_softmax_is_refused(loss):
    # under mse too (hostile round 6): a constant output of 1, no gradient, no warning
    with pytest.raises(ValueError, match="1-unit softmax.*binary_cross_entropy"):
        fm.Model([fm.Dense(1, "softmax")], input_dim=3, loss=loss)


# -- item 5: the message is true, and the failed step is undone
def test_overflowing_loss_with_finite_weights_says_so(backend):
    """The MSE of outputs near 1e161 overflows float64 while the weights stay finite."""
    m = fm.Model([fm.Dense(1, "linear")], input_dim=1, optimizer=fm.SGD(lr=1e-30),
                 backend=backend, dtype="float64", seed=0)
    m.set_weights([np.full((1, 1), 1e160), np.zeros(1)])
    before = m.get_state()
    with np.errstate(all="ignore"), pytest.raises(fm.TrainingDiverged) as info:
        m.train_on_batch(np.full((4, 1), 10.0), np.zeros((4, 1)))
    assert "the loss became inf" in str(info.value)
    assert "weights" not in str(info.value).split(";")[0]  # the weights were finite
    assert "left as it was before the step" in str(info.value)
    assert_same_state(m.get_state(), before)


# -- item 6: Ctrl-C rolls back the shuffling generator too
def test_interrupted_fit_rolls_back_the_generator(backend, dtype, monkeypatch):
    X, Y = data()
    straight = small(backend, dtype)
    straight.fit(X, Y, epochs=2, batch_size=8)
    m = small(backend, dtype)
    m.fit(X, Y, epochs=1, batch_size=8)
    with monkeypatch.context() as patch:
        interrupt_epoch(patch, m.engine, on_call=1)
        with pytest.raises(KeyboardInterrupt):
            m.fit(X, Y, epochs=3, batch_size=8)
    m.fit(X, Y, epochs=1, batch_size=8)
    assert_same_state(m.get_state(), straight.get_state())  # fit(1) + interrupted + fit(1) == fit(2)


# -- item 7: masks are not silently dropped
@pytest.mark.parametrize("which", ["X", "Y"])
def test_masked_arrays_are_refused(backend, which):
    X, Y = data()
    m = small(backend)
    args = {"X": np.ma.masked_array(X, np.zeros_like(X, bool)), "Y": Y}
    if which == "Y":
        args = {"X": X, "Y": np.ma.masked_array(Y, np.zeros_like(Y, bool))}
    with pytest.raises(TypeError, match=f"{which} is a masked array"):
        m.fit(args["X"], args["Y"])


# -- item 20: clear messages for fit's arguments and 1-D rows
@pytest.mark.parametrize("tol,error,match", [
    ("0.1", TypeError, "tol must be a number >= 0 or None, got str '0.1'"),
    (-1.0, ValueError, "tol must be a finite number >= 0"),
    (np.nan, ValueError, "tol must be a finite number >= 0"),
    (True, TypeError, "tol must be a number"),
])
def test_fit_tol_is_checked(backend, tol, error, match):
    with pytest.raises(error, match=match):
        small(backend).fit(*data(), tol=tol)


@pytest.mark.parametrize("bad", [lambda X, Y: (X,), lambda X, Y: (X, Y, Y), lambda X, Y: X])
def test_validation_data_must_be_a_pair(backend, bad):
    X, Y = data()
    with pytest.raises(ValueError, match=r"validation_data must be a tuple \(X_val, Y_val\)"):
        small(backend).fit(X, Y, validation_data=bad(X, Y))


def test_one_dimensional_row_gets_a_reshape_hint(backend):
    with pytest.raises(ValueError, match=r"X must be 2-D.*X.reshape\(1, -1\), shape \(1, 3\)"):
        small(backend).predict(np.zeros(3))


# -- item 17 (validation part): unaligned arrays are copied, not refused
def test_unaligned_input_is_accepted(backend, dtype):
    X, Y = data(n=30)
    raw = np.zeros(X.size * np.dtype(dtype).itemsize + 1, dtype=np.uint8)
    unaligned = np.frombuffer(raw.data, dtype=dtype, count=X.size, offset=1).reshape(X.shape)
    assert not unaligned.flags.aligned
    # frombuffer over a bytearray is read-only; fill through a writable twin
    np.frombuffer(memoryview(raw)[1:], dtype=dtype, count=X.size).reshape(X.shape)[...] = X
    m = small(backend, dtype)
    np.testing.assert_array_equal(m.predict(unaligned), m.predict(X.astype(dtype)))
    m.fit(unaligned, Y, epochs=1)


# -- input scaling kept apart from the float32 weights (item 3, model part)
def test_input_scaling_keeps_large_offsets_exact(backend):
    rng = np.random.default_rng(0)
    t = 1.7e9 + rng.integers(0, 1000, size=(200, 1)).astype(np.float64)  # Unix-time-like
    X = np.hstack([t, rng.normal(size=(200, 2))])
    mean, scale = X.mean(0), X.std(0)
    m = small(backend)
    m.set_input_scaling(mean, scale)
    expected = small(backend).predict((X - mean) / scale)  # same seed: same weights
    np.testing.assert_allclose(m.predict(X), expected, rtol=1e-5, atol=1e-6)
    assert m.input_scaling[0].dtype == np.float64
    with pytest.raises(ValueError, match="scale must be > 0"):
        m.set_input_scaling(mean, np.zeros(3))
    m.set_input_scaling(None, None)
    assert m.input_scaling is None


# -- state and pickling
def test_get_state_set_state_round_trip(backend, dtype):
    X, Y = data()
    a = small(backend, dtype, fm.Adam(lr=0.01))
    a.fit(X, Y, epochs=2)
    b = small(backend, dtype, fm.Adam(lr=0.01))
    b.set_state(a.get_state())
    a.fit(X, Y, epochs=1)
    b.fit(X, Y, epochs=1)
    assert_same_state(a.get_state(), b.get_state())
    bad = a.get_state()
    bad["theta"] = bad["theta"][:-1]
    with pytest.raises(ValueError, match="state does not match this model"):
        b.set_state(bad)


def test_a_state_of_another_optimiser_is_refused(backend):
    """Both optimisers keep two buffers of n_params: an Adam model's state given to an SGD
    model made Adam's first moment its momentum, without a word. A state dict without
    "optimizer" (made before get_state named it) is still taken."""
    X, Y = data()
    adam = small(backend, "float32", fm.Adam(lr=0.01))
    adam.fit(X, Y, epochs=1)
    sgd = small(backend, "float32", fm.SGD(lr=0.01, momentum=0.9))
    before = sgd.get_state()
    assert adam.get_state()["optimizer"] == "adam" and before["optimizer"] == "sgd"
    with pytest.raises(ValueError, match="trained with 'adam'.*trains with 'sgd'"):
        sgd.set_state(adam.get_state())
    assert_same_state(sgd.get_state(), before)
    for odd in (np.array(["adam", "sgd"]), {"name": "sgd"}, None, np.array("sgd")):
        with pytest.raises(ValueError, match=r"state\['optimizer'\] must be the name"):
            sgd.set_state(dict(adam.get_state(), optimizer=odd))
    unnamed = adam.get_state()
    del unnamed["optimizer"]
    other = small(backend, "float32", fm.Adam(lr=0.01))
    other.set_state(unnamed)
    assert_same_state(other.get_state(), adam.get_state())


@pytest.mark.parametrize("clone", [lambda m: pickle.loads(pickle.dumps(m)), copy.copy,
                                   copy.deepcopy], ids=["pickle", "copy", "deepcopy"])
def test_pickle_and_copy_predict_bit_identically(backend, dtype, clone):
    X, Y = data()
    m = small(backend, dtype, fm.Adam(lr=0.01))
    m.set_input_scaling(X.mean(0), X.std(0))
    m.fit(X, Y, epochs=2)
    c = clone(m)
    assert c.backend == m.backend and c.dtype == m.dtype
    assert c.predict(X).tobytes() == m.predict(X).tobytes()
    assert_same_state(c.get_state(), m.get_state())
    c.fit(X, Y, epochs=1)  # independent: training the copy leaves the original alone
    assert c.predict(X).tobytes() != m.predict(X).tobytes()
    m.fit(X, Y, epochs=1)
    assert c.predict(X).tobytes() == m.predict(X).tobytes()  # same data, same generator


# -- Model.to: another backend, dtype or optimiser, with everything the model has --------
# (round 28: the errors' old advice, new.set_state(model.get_state()), dropped the input
# scaling, classes_ and feature names: other probabilities, labels gone)

def _labelled(backend, dtype="float32"):
    rng = np.random.default_rng(32)
    X = rng.normal(size=(40, 2)) * 1000 + 5e4
    y = np.where(X[:, 0] > 5e4, "big", "small")
    m = fm.Model([fm.Dense(4, "tanh"), fm.Dense(2, "softmax")], input_dim=2,
                 loss="cross_entropy", optimizer=fm.Adam(lr=0.01), backend=backend,
                 dtype=dtype, seed=0)
    m.set_input_scaling(X.mean(0), X.std(0))
    m.fit(X, y, epochs=20)
    m.feature_names_in_ = np.array(["a", "b"])
    return m, X, y


def _assert_carried(new, m):
    np.testing.assert_array_equal(new.classes_, m.classes_)
    np.testing.assert_array_equal(new.feature_names_in_, m.feature_names_in_)
    for a, b in zip(new.input_scaling, m.input_scaling, strict=True):
        assert a.tobytes() == b.tobytes()


def test_to_the_same_settings_is_a_copy_that_trains_the_same(backend, dtype):
    m, X, y = _labelled(backend, dtype)
    before = m.get_state()
    new = m.to()
    assert (new.backend, new.dtype) == (m.backend, m.dtype) and new is not m
    _assert_carried(new, m)
    assert_same_state(new.get_state(), before)
    assert new.predict(X).tobytes() == m.predict(X).tobytes()
    new.fit(X, y, epochs=2)
    assert_same_state(m.get_state(), before)   # the original is left alone
    m.fit(X, y, epochs=2)
    assert_same_state(new.get_state(), m.get_state())


@pytest.mark.parametrize("target", ["numpy", "numba", "cython", "auto"])
def test_to_another_backend_or_dtype_carries_everything(target, dtype):
    if target != "auto" and target not in fm.available_backends():
        pytest.skip(f"{target} is not available here")
    m, X, y = _labelled("numpy")
    new = m.to(backend=target, dtype=dtype)
    assert new.backend == (fm.available_backends()[-1] if target == "auto" else target)
    assert new.dtype == np.dtype(dtype)
    _assert_carried(new, m)
    state, want = new.get_state(), m.get_state()
    np.testing.assert_array_equal(state["theta"], want["theta"].astype(dtype))
    np.testing.assert_array_equal(state["opt_buffers"], want["opt_buffers"].astype(dtype))
    assert state["opt_step"][0] == want["opt_step"][0] and state["rng_state"] == want["rng_state"]
    np.testing.assert_allclose(new.predict(X), m.predict(X), rtol=1e-5, atol=1e-6)
    assert (new.predict_classes(X) == m.predict_classes(X)).all()
    with pytest.raises(ValueError, match="feature names"):   # the names are checked
        import pandas as pd
        new.predict(pd.DataFrame(X, columns=["b", "a"]))


def test_to_another_optimiser(backend):
    m, X, y = _labelled(backend)
    same_kind = m.to(optimizer=fm.Adam(lr=0.001))   # as model.optimizer = ...: state kept
    m2 = copy.deepcopy(m)
    m2.optimizer = fm.Adam(lr=0.001)
    assert_same_state(same_kind.get_state(), m2.get_state())
    other = m.to(optimizer="sgd")
    assert isinstance(other.optimizer, fm.SGD)
    state = other.get_state()
    assert state["theta"].tobytes() == m.get_state()["theta"].tobytes()
    assert not state["opt_buffers"].any() and state["opt_step"][0] == 0
    _assert_carried(other, m)
    other.fit(X, y, epochs=1)


def test_to_refuses_what_the_model_cannot_be(backend):
    m, X, y = _labelled(backend, "float64")
    for kwargs, match in [({"backend": "nope"}, "unknown backend"),
                          ({"dtype": "int8"}, "dtype"),
                          ({"optimizer": "rmsprop"}, "unknown optimizer"),
                          ({"optimizer": fm.SGD(lr=1e-45), "dtype": "float32"}, "lr")]:
        with pytest.raises(ValueError, match=match):
            m.to(**kwargs)
    with pytest.raises(TypeError):   # by keyword: a PyTorch habit, to(torch.float64)
        m.to("float64")
    weights = m.get_weights()
    weights[0][0, 0] = 1e300
    m.set_weights(weights)
    with pytest.raises(ValueError, match="too large for float32"):
        m.to(dtype="float32")


@pytest.mark.parametrize("attr, value", [("backend", "numpy"), ("dtype", "float64")])
def test_fixed_settings_point_at_to(attr, value):
    m = small("numpy")
    with pytest.raises(AttributeError, match=rf"model.to\({attr}="):
        setattr(m, attr, value)
    with pytest.raises(TypeError, match=r"model.to\(optimizer="):
        m.optimizer = fm.Adam()


# -- fit's quiet path (many epochs between looks from Python) equals the per-epoch loop
class _NoOp:
    def on_epoch_end(self, epoch, logs):
        pass


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("tol", [None, 0.5])
def test_quiet_fit_equals_the_per_epoch_loop(backend, dtype, shuffle, tol):
    X, Y = data()
    quiet, loud = small(backend, dtype), small(backend, dtype)
    hq = quiet.fit(X, Y, epochs=300, batch_size=8, shuffle=shuffle, tol=tol)
    hl = loud.fit(X, Y, epochs=300, batch_size=8, shuffle=shuffle, tol=tol, callbacks=[_NoOp()])
    assert hq.history["loss"] == hl.history["loss"] and hq.epoch == hl.epoch
    assert_same_state(quiet.get_state(), loud.get_state())
    if tol is not None:
        assert len(hq.epoch) < 300  # it did stop early


def test_quiet_fit_chunks_many_small_epochs(backend, monkeypatch):
    """With a tiny chunk budget, several chunks; the same result as one chunk."""
    X, Y = data()
    a, b = small(backend), small(backend)
    monkeypatch.setattr(fm.Model, "_CHUNK_WORK", 1)
    monkeypatch.setattr(fm.Model, "_CHUNK_SECONDS", 0.0)   # (not grown by time either)
    a.fit(X, Y, epochs=7, batch_size=8)
    monkeypatch.undo()
    b.fit(X, Y, epochs=7, batch_size=8)
    assert_same_state(a.get_state(), b.get_state())


def test_history_and_training_diverged_pickle_under_their_public_module():
    """fit lives in fastmlp._fitting, but History and TrainingDiverged keep the names they
    had (fastmlp.model's): a pickled History (an estimator's history_) or exception (sent
    between processes) loads where either name resolves, and tracebacks read as before."""
    from fastmlp import model as model_module
    model = fm.Model([fm.Dense(3, "tanh"), fm.Dense(1)], input_dim=2, seed=0)
    history = model.fit(np.ones((4, 2)), np.zeros((4, 1)), epochs=2, verbose=0)
    for obj in (history, fm.TrainingDiverged("training diverged in epoch 3")):
        assert type(obj).__module__ == "fastmlp.model"
        assert getattr(model_module, type(obj).__name__) is type(obj)
        data = pickle.dumps(obj)
        assert b"fastmlp.model" in data and b"_fitting" not in data
        back = pickle.loads(data)
        assert type(back) is type(obj)
    assert back.args == ("training diverged in epoch 3",)
    assert pickle.loads(pickle.dumps(history)).history == history.history
