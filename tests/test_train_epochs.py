"""Backend ``train_epochs``: a chunk of epochs in one call, bit for bit k calls of
train_epoch, stopping at tol (status 1) or at a non-finite epoch (status 2: the first
whose loss is not finite, or, the weights and optimiser state checked at the end on
the compiled backends, the last);
and Model.fit's quiet path built on it, on every backend and dtype."""
import numpy as np
import pytest

import fastmlp as fm

OPTIMIZERS = {"sgd": lambda: fm.SGD(lr=0.05), "momentum": lambda: fm.SGD(lr=0.05, momentum=0.9),
              "adam": lambda: fm.Adam(lr=0.01)}
ROWS = 20


def data(dtype):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(ROWS, 3)).astype(dtype)
    return X, np.tanh(X @ rng.normal(size=(3, 2))).astype(dtype)


def model(backend, dtype, optimizer, layers=None):
    return fm.Model(layers or [fm.Dense(5, activation="tanh"), fm.Dense(2)], input_dim=3,
                    optimizer=optimizer, backend=backend, dtype=dtype, seed=0)


def orders_for(k, n, shuffled):
    orders = np.tile(np.arange(n, dtype=np.int64), (k, 1))
    return np.random.default_rng(7).permuted(orders, axis=1, out=orders) if shuffled else orders


def state_bits(m):
    e = m.engine
    return [e.theta.tobytes(), e.state.buffers.tobytes(), e.state.step.tobytes()]


def one_by_one(m, X, T, orders, batch_size):
    """losses of train_epoch per row of orders, stopping after the first non-finite epoch."""
    losses = []
    for perm in orders:
        losses.append(m.engine.train_epoch(X, T, perm, batch_size))
        state = m.engine.state
        if not (np.isfinite(losses[-1]) and np.isfinite(m.engine.theta).all()
                and np.isfinite(state.buffers).all()):
            break
    return np.array(losses, dtype=np.float64)


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("batch_size", [1, 2, ROWS])
@pytest.mark.parametrize("shuffled", [True, False])
def test_equals_k_calls_of_train_epoch_bit_for_bit(backend, dtype, opt, batch_size, shuffled):
    X, T = data(dtype)
    orders = orders_for(6, ROWS, shuffled)
    single, chunked = model(backend, dtype, OPTIMIZERS[opt]()), model(backend, dtype,
                                                                     OPTIMIZERS[opt]())
    expected = one_by_one(single, X, T, orders, batch_size)
    losses = np.full(6, -7.0)
    assert chunked.engine.train_epochs(X, T, orders, batch_size, -1.0, losses) == (6, 0)
    assert losses.tobytes() == expected.tobytes()
    assert state_bits(chunked) == state_bits(single)


def test_tol_stops_after_the_first_epoch_at_or_below_it(backend, dtype):
    X, T = data(dtype)
    orders = orders_for(12, ROWS, True)
    probe = model(backend, dtype, fm.SGD(lr=0.05))
    all_losses = one_by_one(probe, X, T, orders, 4)
    tol = float(all_losses[4])
    stop = int(np.argmax(all_losses <= tol)) + 1          # the first epoch at or below tol
    single, chunked = model(backend, dtype, fm.SGD(lr=0.05)), model(backend, dtype, fm.SGD(lr=0.05))
    one_by_one(single, X, T, orders[:stop], 4)
    losses = np.zeros(12)
    assert chunked.engine.train_epochs(X, T, orders, 4, tol, losses) == (stop, 1)
    assert losses[:stop].tobytes() == all_losses[:stop].tobytes()
    assert state_bits(chunked) == state_bits(single)


def diverging(backend, dtype):
    """SGD with momentum at lr 0.1 on a 4-8-2 linear regression: diverges in a few epochs."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4))
    Y = X @ rng.normal(size=(4, 2))
    m = fm.Model([fm.Dense(8, activation="linear"), fm.Dense(2)], input_dim=4,
                 optimizer=fm.SGD(lr=0.1, momentum=0.9), backend=backend, dtype=dtype, seed=0)
    return m, X.astype(dtype), Y.astype(dtype)


def test_divergence_stops_with_status_2_at_the_bad_epoch(backend, dtype):
    single, X, T = diverging(backend, dtype)
    chunked, _, _ = diverging(backend, dtype)
    orders = orders_for(60, 64, False)
    with np.errstate(all="ignore"):
        expected = one_by_one(single, X, T, orders, 16)
        bad = len(expected) - 1
        assert bad < 59, "the setup no longer diverges"
        losses = np.zeros(60)
        assert chunked.engine.train_epochs(X, T, orders, 16, -1.0, losses) == (bad, 2)
    np.testing.assert_array_equal(losses[:bad + 1], expected)   # the bad epoch's loss written
    assert state_bits(chunked) == state_bits(single)              # left as that epoch made it


def test_plain_sgd_state_is_not_checked_but_theta_is(backend, dtype):
    # plain SGD never touches the buffers: a NaN there is not divergence
    X, T = data(dtype)
    m = model(backend, dtype, fm.SGD(lr=0.05))
    m.engine.state.buffers[:] = np.nan
    losses = np.zeros(3)
    assert m.engine.train_epochs(X, T, orders_for(3, ROWS, False), 5, -1.0, losses) == (3, 0)
    m.engine.theta[0] = np.inf   # tanh(inf * x) is +-1: every loss stays finite
    with np.errstate(all="ignore"):
        done, status = m.engine.train_epochs(X, T, orders_for(3, ROWS, False), 5, -1.0, losses)
        # theta checked after every epoch (the reference, cuda) or after the last only
        assert status == 2 and done == (0 if backend in ("numpy", "cuda") else 2)
        assert np.isfinite(losses[:done + 1]).all()
        # one epoch per call: always the first bad epoch
        assert m.engine.train_epochs(X, T, orders_for(1, ROWS, False), 5, -1.0, losses[:1]) == (0, 2)


def test_a_finite_loss_with_bad_weights_mid_chunk_is_found_by_fit(backend, dtype):
    """Weights gone non-finite in an epoch whose loss, and the next ones', stay finite
    (an inf weight into tanh): the compiled call sees it only after its last epoch, and
    fit trains the chunk again an epoch per call to name the first bad epoch, leaving
    what the per-epoch loop leaves."""
    X, T = data(dtype)
    runs = []
    for callbacks in (None, [_Watch()]):
        m = model(backend, dtype, fm.SGD(lr=0.05))
        m.fit(X, T, epochs=2, batch_size=4)
        m.engine.theta[0] = np.inf   # (set_weights refuses it) W1[0, 0]
        getattr(m.engine, "push", lambda: None)()   # (cuda: to the device)
        with np.errstate(all="ignore"), pytest.raises(fm.TrainingDiverged) as exc:
            m.fit(X, T, epochs=20, batch_size=4, callbacks=callbacks)
        runs.append((str(exc.value), m.history.history["loss"], state_bits(m),
                     m.get_state()["rng_state"]))
    assert runs[0] == runs[1]
    assert "in epoch 1:" in runs[0][0] and "layer 1's weights" in runs[0][0]


def test_fit_trains_a_chunk_in_one_call(backend, dtype, monkeypatch):
    X, T = data(dtype)
    m = model(backend, dtype, fm.Adam(lr=0.01))
    calls = {"train_epochs": 0, "train_epoch": 0}
    for name in calls:
        real = getattr(m.engine, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(m.engine, name, counted)
    m.fit(X, T, epochs=30, batch_size=4)
    assert calls["train_epochs"] == 1
    # the reference's train_epochs is its Python loop over train_epoch
    assert calls["train_epoch"] == (30 if backend == "numpy" else 0)
    assert len(m.history.history["loss"]) == 30


class _Watch:
    """A callback: fit then takes the per-epoch loop, the quiet path's oracle."""

    def on_epoch_end(self, epoch, logs):
        pass


def test_tol_reached_at_a_chunks_last_epoch_stops_fit(backend, dtype, monkeypatch):
    X, T = data(dtype)
    probe = model(backend, dtype, fm.SGD(lr=0.05))
    losses = probe.fit(X, T, epochs=10, batch_size=4).history["loss"]
    stop = 3
    assert min(losses[:stop - 1]) > losses[stop - 1], "the loss no longer falls at first"
    per_epoch = ROWS * probe.net.n_params
    monkeypatch.setattr(fm.Model, "_CHUNK_WORK", stop * per_epoch)   # chunks of 3 epochs
    quiet, loop = model(backend, dtype, fm.SGD(lr=0.05)), model(backend, dtype, fm.SGD(lr=0.05))
    got = quiet.fit(X, T, epochs=10, batch_size=4, tol=losses[stop - 1]).history["loss"]
    want = loop.fit(X, T, epochs=10, batch_size=4, tol=losses[stop - 1],
                    callbacks=[_Watch()]).history["loss"]
    assert got == want == losses[:stop]
    for key, value in loop.get_state().items():
        if key != "rng_state":
            np.testing.assert_array_equal(quiet.get_state()[key], value)
    assert quiet.get_state()["rng_state"] == loop.get_state()["rng_state"]


def test_ctrl_c_during_a_chunk_undoes_the_chunk(backend, dtype, monkeypatch):
    X, T = data(dtype)
    m, straight = model(backend, dtype, fm.Adam(lr=0.01)), model(backend, dtype, fm.Adam(lr=0.01))
    straight.fit(X, T, epochs=2, batch_size=4)
    m.fit(X, T, epochs=1, batch_size=4)
    real = m.engine.train_epochs

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt          # as Ctrl-C during the compiled call would be raised
    with monkeypatch.context() as patch:
        patch.setattr(m.engine, "train_epochs", interrupted)
        with pytest.raises(KeyboardInterrupt):
            m.fit(X, T, epochs=5, batch_size=4)
    m.fit(X, T, epochs=1, batch_size=4)
    after, want = m.get_state(), straight.get_state()
    for key in ("theta", "opt_buffers", "opt_step"):
        assert after[key].tobytes() == want[key].tobytes()
    assert after["rng_state"] == want["rng_state"]


@pytest.mark.parametrize("bad", ["short", "read-only", "2-D", "float32", "list", "strided"])
def test_a_bad_losses_array_is_refused_before_any_training(backend, bad):
    """Every backend refuses, with one message, a losses array train_epochs cannot write
    its k losses into, before training: the reference trained all epochs, then failed
    (short) or failed after one (read-only), and Numba raised its own typing error for a
    read-only one."""
    X, T = data("float32")
    m = model(backend, "float32", fm.SGD(lr=0.05))
    before = state_bits(m)
    losses = {"short": lambda: np.zeros(2), "2-D": lambda: np.zeros((3, 1)),
              "float32": lambda: np.zeros(3, np.float32), "list": lambda: [0.0] * 3,
              "strided": lambda: np.zeros(6)[::2],
              "read-only": lambda: np.zeros(3).view()}[bad]()
    if bad == "read-only":
        losses.flags.writeable = False
    want = ((TypeError, "losses must be a NumPy array, got list") if bad == "list" else
            (ValueError, r"losses must be a writable aligned C-contiguous float64 array of "
                         r"shape \(3\), got "))
    with pytest.raises(want[0], match=want[1]):
        m.engine.train_epochs(X, T, orders_for(3, ROWS, False), 5, -1.0, losses)
    assert state_bits(m) == before
