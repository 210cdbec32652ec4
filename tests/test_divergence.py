"""Divergence: when the loss or a weight stops being finite, ``fit`` raises
TrainingDiverged naming the epoch (and layer), and the model keeps exactly the
weights and optimiser state of the last finite epoch, on every backend."""
import re
import warnings

import numpy as np
import pytest

import fastmlp as fm
from helpers import interrupt_epoch

# SGD with momentum 0.9 at lr 0.1 on this 4-8-2 linear regression diverges in
# epoch 4 (float32 and float64, on the reference): three finite epochs first.
DIVERGES_IN = 4


def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4))
    return X, X @ rng.normal(size=(4, 2))


def model(backend, dtype, optimizer=None):
    return fm.Model([fm.Dense(8, activation="linear"), fm.Dense(2)], input_dim=4,
                    optimizer=optimizer or fm.SGD(lr=0.1, momentum=0.9),
                    backend=backend, dtype=dtype, seed=0)


def snapshot(m):
    """Bit-exact copies of everything training may change."""
    return m.engine.theta.copy(), m.engine.state.buffers.copy(), m.engine.state.step.copy()


def assert_same_bits(a, b):
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def test_huge_lr_raises_naming_epoch_and_layer(backend, dtype):
    X, Y = data()
    m = model(backend, dtype)
    with pytest.raises(fm.TrainingDiverged) as info:
        m.fit(X, Y, epochs=50, batch_size=16)
    msg = str(info.value)
    assert re.search(rf"\bin epoch {DIVERGES_IN}\b", msg), msg
    assert re.search(r"\blayer [12]\b", msg), msg
    assert "last finite epoch" in msg
    assert isinstance(info.value, FloatingPointError)
    assert all(np.isfinite(w).all() for w in m.get_weights())


@pytest.mark.parametrize("shuffle", [True, False])
def test_keeps_exact_weights_and_state_of_last_finite_epoch(backend, dtype, shuffle):
    X, Y = data()
    diverging = model(backend, dtype)
    with pytest.raises(fm.TrainingDiverged) as info:
        diverging.fit(X, Y, epochs=50, batch_size=16, shuffle=shuffle)
    epoch = int(re.search(r"in epoch (\d+)", str(info.value)).group(1))
    assert epoch >= 3
    # The same model, seed and shuffles, stopped after the last finite epoch.
    finite = model(backend, dtype)
    history = finite.fit(X, Y, epochs=epoch - 1, batch_size=16, shuffle=shuffle)
    assert np.isfinite(history.history["loss"]).all()
    assert int(finite.engine.state.step[0]) == (epoch - 1) * 4
    assert_same_bits(snapshot(diverging), snapshot(finite))
    # And it still predicts: nothing half-updated.
    np.testing.assert_array_equal(diverging.predict(X), finite.predict(X))


@pytest.mark.parametrize("optimizer", [lambda: fm.Adam(lr=0.01), lambda: fm.SGD(lr=0.01, momentum=0.5)],
                         ids=["adam", "momentum"])
def test_divergence_in_a_later_fit_restores_state_of_the_earlier_one(backend, dtype, optimizer):
    """A fit on badly scaled data blows up in its first epoch; the weights and
    the (non-trivial) optimiser state from the previous fit are kept bit for bit."""
    X, Y = data()
    m = model(backend, dtype, optimizer())
    m.fit(X, Y, epochs=3, batch_size=16)
    before = snapshot(m)
    assert before[1].any() and before[2][0] == 12
    huge = 1e30 if dtype == "float32" else 1e300  # finite, but its square overflows
    with pytest.raises(fm.TrainingDiverged, match=r"in epoch 1\b"):
        m.fit(X, Y * 0 + huge, epochs=5, batch_size=16)
    assert_same_bits(snapshot(m), before)


def test_divergence_is_an_error_not_warnings(backend, dtype):
    """With warnings as errors, overflow on the way must not stop fit mid-epoch."""
    X, Y = data()
    m = model(backend, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            with pytest.raises(fm.TrainingDiverged, match=rf"in epoch {DIVERGES_IN}\b"):
                m.fit(X, Y, epochs=50, batch_size=16)
    finite = model(backend, dtype)
    finite.fit(X, Y, epochs=DIVERGES_IN - 1, batch_size=16)
    assert_same_bits(snapshot(m), snapshot(finite))


def test_interrupted_epoch_leaves_weights_of_the_last_complete_one(backend, dtype, monkeypatch):
    X, Y = data()
    m = model(backend, dtype, fm.Adam(lr=0.01))
    reference = model(backend, dtype, fm.Adam(lr=0.01))
    reference.fit(X, Y, epochs=1, batch_size=16, shuffle=False)
    interrupt_epoch(monkeypatch, m.engine, on_call=2)  # the second epoch updates, then Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        m.fit(X, Y, epochs=5, batch_size=16, shuffle=False)
    assert_same_bits(snapshot(m), snapshot(reference))


def test_train_on_batch_reports_divergence_and_undoes_the_step(backend, dtype):
    X, Y = data()
    m = model(backend, dtype, fm.SGD(lr=1e3, momentum=0.9))
    with np.errstate(all="ignore"), pytest.raises(fm.TrainingDiverged,
                                                  match="in this train_on_batch step"):
        for _ in range(100):
            before = m.get_state()
            m.train_on_batch(X, Y)
    after = m.get_state()  # exactly as before the step that diverged
    for key in ("theta", "opt_buffers", "opt_step"):
        np.testing.assert_array_equal(after[key], before[key])
    assert np.isfinite(after["theta"]).all()
