"""The Model API: fit's stopping rule, batching and shuffling, dtypes end to end,
get_weights/set_weights, initialisation and the step/sign warning, on every backend."""
import warnings

import numpy as np
import pytest

import fastmlp as fm


def _classifier(backend, dtype="float64", seed=0, optimizer=None):
    return fm.Model([fm.Dense(6, "relu"), fm.Dense(5, "tanh"), fm.Dense(3, "softmax")],
                    input_dim=4, loss="cross_entropy", optimizer=optimizer or fm.SGD(lr=0.1),
                    backend=backend, dtype=dtype, seed=seed)


@pytest.fixture
def data(rng):
    X = rng.normal(size=(30, 4))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int)
    return X, y


def _same_weights(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


# -- fit -----------------------------------------------------------------------------

def test_history_has_one_loss_per_epoch(backend, data):
    X, y = data
    history = _classifier(backend).fit(X, y, epochs=7, batch_size=8)
    assert len(history.history["loss"]) == 7 and history.epoch == list(range(7))
    assert "val_loss" not in history.history
    assert all(np.isfinite(history.history["loss"]))


def test_validation_data_adds_val_loss(backend, data):
    X, y = data
    model = _classifier(backend)
    history = model.fit(X[:20], y[:20], epochs=4, batch_size=5, validation_data=(X[20:], y[20:]))
    assert len(history.history["val_loss"]) == 4
    np.testing.assert_allclose(history.history["val_loss"][-1], model.evaluate(X[20:], y[20:]),
                               rtol=1e-12)


def test_fit_stops_at_tol(backend, data):
    """The lessons' E <= epsilon: stop at the first epoch whose mean loss is <= tol."""
    X, y = data
    full = _classifier(backend, optimizer=fm.Adam(lr=0.05)).fit(X, y, epochs=300, batch_size=10)
    losses = np.array(full.history["loss"])
    tol = float(np.quantile(losses, 0.3))  # reached somewhere in the middle of training
    history = _classifier(backend, optimizer=fm.Adam(lr=0.05)).fit(X, y, epochs=300,
                                                                    batch_size=10, tol=tol)
    got = history.history["loss"]
    assert got[-1] <= tol and all(v > tol for v in got[:-1])
    assert len(got) < 300
    np.testing.assert_allclose(got, losses[:len(got)], rtol=1e-12)


def test_batch_size_none_is_one_full_batch_step(backend, data):
    X, y = data
    a, b = _classifier(backend), _classifier(backend)
    history = a.fit(X, y, epochs=1, batch_size=None)
    loss = b.train_on_batch(X, y)
    np.testing.assert_allclose(history.history["loss"][0], loss, rtol=1e-12)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("batch_size", [1, 7])
def test_unshuffled_epoch_is_consecutive_batches(backend, data, batch_size):
    """batch_size=1 is the lessons' per-sample SGD; the last batch may be short."""
    X, y = data
    a, b = _classifier(backend), _classifier(backend)
    history = a.fit(X, y, epochs=1, batch_size=batch_size, shuffle=False)
    total = 0.0
    for start in range(0, len(X), batch_size):
        rows = slice(start, start + batch_size)
        total += b.train_on_batch(X[rows], y[rows]) * len(X[rows])
    np.testing.assert_allclose(history.history["loss"][0], total / len(X), rtol=1e-10)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-10, atol=1e-12)


def test_batch_size_larger_than_data_is_full_batch(backend, data):
    X, y = data
    a, b = _classifier(backend), _classifier(backend)
    a.fit(X, y, epochs=2, batch_size=1000)
    b.fit(X, y, epochs=2, batch_size=None)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-12, atol=1e-14)


def test_shuffle_is_reproducible_with_the_seed(backend, data):
    X, y = data
    a, b = _classifier(backend, seed=7), _classifier(backend, seed=7)
    a.fit(X, y, epochs=3, batch_size=4)
    b.fit(X, y, epochs=3, batch_size=4)
    assert _same_weights(a, b)
    # same start, different seed: only the shuffling differs, and it shows
    c = _classifier(backend, seed=8)
    c.set_weights(_classifier(backend, seed=7).get_weights())
    c.fit(X, y, epochs=3, batch_size=4)
    assert not _same_weights(a, c)
    # and shuffle=False differs from shuffled
    d = _classifier(backend, seed=7)
    d.fit(X, y, epochs=3, batch_size=4, shuffle=False)
    assert not _same_weights(a, d)


def test_fit_in_two_calls_equals_one_call(backend, data):
    """Each epoch's order comes only from the generator, so fit may be called in pieces."""
    X, y = data
    a, b = _classifier(backend, seed=3), _classifier(backend, seed=3)
    a.fit(X, y, epochs=4, batch_size=6)
    b.fit(X, y, epochs=1, batch_size=6)
    b.fit(X, y, epochs=3, batch_size=6)
    assert _same_weights(a, b)


def test_fit_learns(backend, data):
    X, y = data
    model = _classifier(backend, optimizer=fm.Adam(lr=0.03))
    history = model.fit(X, y, epochs=150, batch_size=10)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    assert np.mean(model.predict(X).argmax(axis=1) == y) >= 0.9


@pytest.mark.parametrize("layer", ["step", "sign"])
def test_fitting_through_step_or_sign_warns(backend, layer, data):
    X, y = data
    model = fm.Model([fm.Dense(4, layer), fm.Dense(3, "softmax")], input_dim=4,
                     loss="cross_entropy", backend=backend, seed=0)
    with pytest.warns(RuntimeWarning, match="derivative is 0"):
        model.fit(X, y, epochs=1)


def test_trainable_model_does_not_warn(backend, data):
    X, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _classifier(backend).fit(X, y, epochs=1)


# -- dtypes --------------------------------------------------------------------------

def test_dtype_is_kept_end_to_end(backend, dtype, data):
    X, y = data
    model = _classifier(backend, dtype=dtype)
    model.fit(X, y, epochs=2, batch_size=8)
    assert model.predict(X).dtype == np.dtype(dtype)
    assert all(w.dtype == np.dtype(dtype) for w in model.get_weights())
    loss, grads = model.gradients(X, y)
    assert isinstance(loss, float) and all(g.dtype == np.dtype(dtype) for g in grads)
    assert isinstance(model.evaluate(X, y), float)
    model.set_weights([w.astype(np.float64) for w in model.get_weights()])
    assert all(w.dtype == np.dtype(dtype) for w in model.get_weights())


def test_float32_tracks_float64(backend, data):
    """Same seed, same start: float32 training stays close to float64 for a few epochs."""
    X, y = data
    m32, m64 = _classifier(backend, "float32"), _classifier(backend, "float64")
    for a, b in zip(m32.get_weights(), m64.get_weights()):
        np.testing.assert_array_equal(a, b.astype(np.float32))
    m32.fit(X, y, epochs=3, batch_size=10)
    m64.fit(X, y, epochs=3, batch_size=10)
    np.testing.assert_allclose(m32.predict(X), m64.predict(X), rtol=1e-3, atol=1e-4)


# -- weights -------------------------------------------------------------------------

def test_weight_order_and_shapes(backend):
    model = fm.Model([fm.Dense(3, "prelu"), fm.Dense(2, "sigmoid"), fm.Dense(4, "prelu", alpha=0.1)],
                     input_dim=5, backend=backend, seed=0)
    ws = model.get_weights()
    assert [w.shape for w in ws] == [(5, 3), (3,), (3,), (3, 2), (2,), (2, 4), (4,), (4,)]
    np.testing.assert_allclose(ws[2], 0.25)  # prelu alpha starts at its `alpha`
    np.testing.assert_allclose(ws[7], 0.1)
    assert not np.any(ws[1]) and not np.any(ws[4])  # zero biases
    assert model.n_params == sum(w.size for w in ws)


def test_set_weights_round_trip_and_effect(backend, rng):
    model = fm.Model([fm.Dense(3, "prelu"), fm.Dense(2, "linear")], input_dim=4,
                     backend=backend, dtype="float64", seed=0)
    new = [rng.normal(size=w.shape) for w in model.get_weights()]
    model.set_weights(new)
    for a, b in zip(model.get_weights(), new):
        np.testing.assert_array_equal(a, b)
    W1, b1, a1, W2, b2 = new
    X = rng.normal(size=(6, 4))
    z = X @ W1 + b1
    expected = np.where(z >= 0, z, a1 * z) @ W2 + b2
    np.testing.assert_allclose(model.predict(X), expected, rtol=1e-12, atol=1e-12)
    # get_weights returns copies: editing them changes nothing
    model.get_weights()[0][...] = 0
    np.testing.assert_array_equal(model.get_weights()[0], W1)


@pytest.mark.parametrize("bad,error,match", [
    (lambda ws: ws[:-1], ValueError, "expected 5 arrays, got 4"),
    (lambda ws: [ws[0].T] + ws[1:], ValueError, r"weight 0 has shape \(3, 4\), expected \(4, 3\)"),
    (lambda ws: ws[:1] + [np.full(3, np.nan)] + ws[2:], ValueError, "weight 1 contains NaN or inf"),
    (lambda ws: ws[:1] + [np.array(["a", "b", "c"])] + ws[2:], TypeError, "weight 1 must be numeric"),
    # values that do not fit float32 would be stored as inf, and save() could not write them
    (lambda ws: ws[:1] + [np.full(3, 1e39)] + ws[2:], ValueError, "weight 1 has a value too large for float32"),
    # the imaginary part used to be dropped with only a warning
    (lambda ws: ws[:1] + [np.full(3, 1 + 2j)] + ws[2:], TypeError, "weight 1 must be real"),
    (lambda ws: ws[:1] + [np.ma.masked_array(np.ones(3), [0, 1, 0])] + ws[2:], TypeError,
     "weight 1 is a masked array"),
])
def test_set_weights_rejects_bad_arrays(backend, bad, error, match):
    model = fm.Model([fm.Dense(3, "prelu"), fm.Dense(2, "linear")], input_dim=4,
                     backend=backend, seed=0)
    before = model.get_weights()
    with pytest.raises(error, match=match):
        model.set_weights(bad(model.get_weights()))
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_initialisation(backend):
    """Glorot-uniform for sigmoid/tanh/softmax/linear, He-uniform for the ReLU family."""
    model = fm.Model([fm.Dense(200, "relu"), fm.Dense(100, "tanh"), fm.Dense(10, "softmax")],
                     input_dim=300, loss="cross_entropy", backend=backend, seed=0)
    W1, _, W2, _, W3, _ = model.get_weights()
    for W, limit in [(W1, np.sqrt(6 / 300)), (W2, np.sqrt(6 / 300)), (W3, np.sqrt(6 / 110))]:
        assert np.abs(W).max() <= limit * (1 + 1e-6)
        assert np.abs(W).max() > 0.95 * limit  # uniform over the whole range
        np.testing.assert_allclose(W.std(), limit / np.sqrt(3), rtol=0.05)
    again = fm.Model([fm.Dense(200, "relu"), fm.Dense(100, "tanh"), fm.Dense(10, "softmax")],
                     input_dim=300, loss="cross_entropy", backend=backend, seed=0)
    assert _same_weights(model, again)
    other = fm.Model([fm.Dense(200, "relu"), fm.Dense(100, "tanh"), fm.Dense(10, "softmax")],
                     input_dim=300, loss="cross_entropy", backend=backend, seed=1)
    assert not _same_weights(model, other)


def test_predict_shape_and_train_on_batch_returns_loss_before_the_step(backend, data):
    X, y = data
    model = _classifier(backend)
    assert model.predict(X[:3]).shape == (3, 3)
    np.testing.assert_allclose(model.predict(X).sum(axis=1), 1.0, rtol=1e-12)
    before = model.evaluate(X, y)
    np.testing.assert_allclose(model.train_on_batch(X, y), before, rtol=1e-12)
    assert model.evaluate(X, y) < before


def test_training_diverged_restores_the_last_finite_weights(backend, rng):
    X = rng.normal(size=(20, 3)) * 100
    Y = rng.normal(size=(20, 1)) * 1e3
    model = fm.Model([fm.Dense(8, "linear"), fm.Dense(1, "linear")], input_dim=3,
                     optimizer=fm.SGD(lr=0.5), backend=backend, dtype="float32", seed=0)
    with pytest.raises(fm.TrainingDiverged):
        model.fit(X, Y, epochs=50, batch_size=None)
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_set_state_refuses_a_negative_adam_second_moment(backend):
    m = fm.Model([fm.Dense(2)], input_dim=3, optimizer=fm.Adam(), backend=backend, seed=0)
    state = m.get_state()
    state["opt_buffers"][1, 0] = -1.0
    before = m.get_state()
    with pytest.raises(ValueError, match="second-moment estimate and must be >= 0"):
        m.set_state(state)
    np.testing.assert_array_equal(m.get_state()["opt_buffers"], before["opt_buffers"])


@pytest.mark.parametrize("step", [-1, 2 ** 53, 2 ** 63 - 1])
def test_set_state_refuses_a_step_that_load_would_refuse(backend, step):
    """A step at 2**63 - 1 wrapped to -2**63 in the compiled counters (Adam then froze the
    weights with no error), and any step from 2**53 on could not be saved: set_state
    refuses them as load does."""
    m = fm.Model([fm.Dense(2)], input_dim=3, optimizer=fm.Adam(), backend=backend, seed=0)
    state = m.get_state()
    state["opt_step"] = np.array([step], dtype=np.int64)
    with pytest.raises(ValueError, match=r"opt_step must be one integer in \[0, 2\*\*53\)"):
        m.set_state(state)
    assert m.get_state()["opt_step"][0] == 0


def test_ctrl_c_during_set_weights_leaves_all_old_or_all_new_weights():
    """set_weights copied layer after layer: a Ctrl-C between two copies left some layers
    new and the rest old (NNNOOOOO). Now one new theta is copied in by one C call."""
    import signal
    import time
    layers = [fm.Dense(1000, "relu"), fm.Dense(1000, "relu"), fm.Dense(1000, "relu"),
              fm.Dense(10)]
    m = fm.Model(layers, 1000, backend="numpy", seed=0)
    old = m.get_weights()
    new = [w + 1.0 for w in old]
    start = time.perf_counter()
    m.set_weights(new)
    took = time.perf_counter() - start
    previous = signal.signal(signal.SIGALRM, signal.default_int_handler)
    try:
        for fraction in np.linspace(0.05, 0.95, 19):
            m.set_weights(old)
            try:
                signal.setitimer(signal.ITIMER_REAL, took * fraction)
                m.set_weights(new)
                signal.setitimer(signal.ITIMER_REAL, 0)
            except KeyboardInterrupt:
                pass
            now = m.get_weights()
            assert (all(np.array_equal(a, b) for a, b in zip(now, old))
                    or all(np.array_equal(a, b) for a, b in zip(now, new)))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
