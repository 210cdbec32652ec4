"""The guarded step without a copy: train_step_checked proves each update finite
before writing it (the Cython Engine keeps bounds on theta and the optimiser
buffers), so Model.train_on_batch takes it for every network size there. These
tests hold it to train_step bit for bit, to the undo of every kind of divergence,
and to bounds that never outlive a write they did not see."""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp.backends import available_backends

ACTIVATIONS = ["linear", "sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "softplus",
               "piecewise_linear", "step", "sign"]
OPTIMIZERS = {
    "sgd": lambda: fm.SGD(lr=0.05),
    "sgd-decay": lambda: fm.SGD(lr=0.05, weight_decay=0.1),
    "momentum": lambda: fm.SGD(lr=0.05, momentum=0.9),
    "nesterov-decay": lambda: fm.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda: fm.Adam(lr=0.01),
    "adam-decay": lambda: fm.Adam(lr=0.01, weight_decay=0.1),
}
# the backends whose guarded step keeps bounds (guarded_step_is_free), built here
COPY_FREE = [b for b in ("cython", "numba") if b in available_backends()]
copy_free = pytest.mark.parametrize("guarded_backend", COPY_FREE)


def guard_paths(m):
    """The engine's path counters, wherever the backend keeps them."""
    engine = m.engine
    return (engine.guard_paths if hasattr(engine, "guard_paths") else engine.engine.guard_paths)()


def checked_step_on(m, theta, state, X, T):
    """The model's guarded step on other arrays than its own (theta, state)."""
    engine = m.engine
    if not hasattr(engine, "guard_paths"):  # cython: the Engine takes them
        return engine.engine.train_step_checked(theta, state, X, T)
    own = engine.theta, engine.state
    engine.theta, engine.state = theta, state
    try:
        return engine.train_step_checked(X, T)
    finally:
        engine.theta, engine.state = own


def state_bytes(m):
    s = m.get_state()
    return [s[k].tobytes() for k in ("theta", "opt_buffers", "opt_step")]


def odd_net(backend, dtype, act, optimizer):
    return fm.Model([fm.Dense(7, activation=act), fm.Dense(3, activation=act), fm.Dense(2)],
                    input_dim=5, optimizer=optimizer, backend=backend, dtype=dtype, seed=1)


def w2_net(backend, dtype, optimizer, units=(256, 128)):
    return fm.Model([fm.Dense(u, activation="relu") for u in units]
                    + [fm.Dense(10, activation="softmax")], input_dim=784, loss="cross_entropy",
                    optimizer=optimizer, backend=backend, dtype=dtype, seed=0)


def batch(m, rows, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, m.net.input_dim)).astype(m.dtype)
    if m.net.loss.output is not None:
        return X, np.eye(m.net.output_dim, dtype=m.dtype)[rng.integers(0, m.net.output_dim, rows)]
    return X, rng.normal(size=(rows, m.net.output_dim)).astype(m.dtype)


def assert_steps_agree(make, rows_list):
    """Three twins: engine.train_step, engine.train_step_checked and train_on_batch
    give the same losses and states, bit for bit, step after step."""
    plain, checked, public = make(), make(), make()
    for step, rows in enumerate(rows_list):
        X, T = batch(plain, rows, step)
        want = np.float64(plain.engine.train_step(X, T)).tobytes()
        got, status = checked.engine.train_step_checked(X, T)
        assert status == 0 and np.float64(got).tobytes() == want, (step, rows)
        assert np.float64(public.train_on_batch(X, T)).tobytes() == want, (step, rows)
        assert state_bytes(checked) == state_bytes(plain), (step, rows)
        assert state_bytes(public) == state_bytes(plain), (step, rows)


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_guarded_step_is_train_step_bit_for_bit_odd_shapes(backend, dtype, act, opt):
    # 1 and 9 rows fold plain SGD into the GEMM; 1030 > TRAIN_ROWS go in chunks
    assert_steps_agree(lambda: odd_net(backend, dtype, act, OPTIMIZERS[opt]()), [1, 9, 1030, 9])


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_guarded_step_is_train_step_bit_for_bit_w2(backend, dtype, opt):
    assert_steps_agree(lambda: w2_net(backend, dtype, OPTIMIZERS[opt]()), [64, 64, 7])


@copy_free
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_large_network_takes_the_copy_free_guarded_step(guarded_backend, dtype, opt, monkeypatch):
    m, twin = (w2_net(guarded_backend, dtype, OPTIMIZERS[opt]()) for _ in range(2))
    assert m.n_params > m._CHECKED_STEP_PARAMS
    monkeypatch.setattr(m._engine, "train_step", None)  # the snapshot path would call it
    for step in range(3):
        X, T = batch(m, 64, step)
        assert m.train_on_batch(X, T) == twin.engine.train_step(X, T)
    assert state_bytes(m) == state_bytes(twin)
    paths = guard_paths(m)
    assert paths == {"proven": 3, "measured": 1, "backed_up": 0}, paths


# -- divergence, at each place it can start ------------------------------------------

def diverge_and_compare(make, X, T, what):
    """train_on_batch on a diverging step: TrainingDiverged with the message of the full
    checks' path (Fortran-ordered copies of a twin), the model unchanged bit for bit,
    and the engine's guarded step alone says 2 and changes nothing."""
    fast, slow = make(), make()
    before = state_bytes(fast)
    with pytest.raises(fm.TrainingDiverged) as got:
        fast.train_on_batch(X, T)
    assert state_bytes(fast) == before
    with pytest.raises(fm.TrainingDiverged) as want:
        slow.train_on_batch(np.asfortranarray(X), np.asfortranarray(T))
    assert str(got.value) == str(want.value)
    assert what in str(got.value) and "the model was left as it was before the step" in str(got.value)
    loss, status = fast.engine.train_step_checked(X, T)
    assert status == 2 and state_bytes(fast) == before
    return fast


def test_non_finite_loss_is_undone(backend, dtype):
    def make():
        m = fm.Model([fm.Dense(2)], input_dim=4, backend=backend, dtype=dtype, seed=0)
        m.set_weights([np.full((4, 2), 4.0), np.zeros(2)])
        return m

    X = np.full((3, 4), np.finfo(dtype).max / 2, dtype=dtype)  # x W overflows: f and loss inf
    T = np.zeros((3, 2), dtype=dtype)
    diverge_and_compare(make, X, T, "the loss became")


def test_hidden_activation_overflow_is_undone(backend, dtype):
    # A linear hidden layer overflows; the step layer after it keeps the loss finite, so
    # only the maximum of the hidden activations (or the update after it) shows it.
    def make():
        m = fm.Model([fm.Dense(8), fm.Dense(8, activation="step"), fm.Dense(2)],
                     input_dim=4, backend=backend, dtype=dtype, seed=0)
        weights = m.get_weights()
        weights[0][...] = 4
        m.set_weights(weights)
        return m

    X = np.full((3, 4), np.finfo(dtype).max / 2, dtype=dtype)
    T = np.zeros((3, 2), dtype=dtype)
    diverge_and_compare(make, X, T, "layer 2's weights became NaN or inf")


def test_delta_overflow_is_undone(backend, dtype):
    # (f - t)^2 is summed in float64, so the loss stays finite; dE/df = 2 (f - t)
    # overflows in the model's dtype.
    big = np.finfo(dtype).max * 0.75
    make = lambda: fm.Model([fm.Dense(2)], input_dim=4, backend=backend, dtype=dtype, seed=0)
    X = np.zeros((1, 4), dtype=dtype)
    T = np.full((1, 2), -big, dtype=dtype)
    diverge_and_compare(make, X, T, "layer 1's weights became NaN or inf")


def test_update_overflowing_theta_is_undone(backend, dtype):
    lr = float(np.finfo(dtype).max) / 4
    make = lambda: fm.Model([fm.Dense(8, activation="tanh"), fm.Dense(2)], input_dim=4,
                            optimizer=fm.SGD(lr=lr), backend=backend, dtype=dtype, seed=0)
    X, T = batch(make(), 16, 0)
    T *= 1000
    diverge_and_compare(make, X, T, "weights became NaN or inf")


def test_adam_second_moment_overflow_is_undone(backend, dtype):
    # x0 ~ 1e20 (float32) or 1e160 (float64) on a zero weight row: the loss is small,
    # but dE/dW = x0 delta squares to inf in v while the weights stay finite
    def make():
        m = fm.Model([fm.Dense(2)], input_dim=4, optimizer=fm.Adam(lr=1e-3),
                     backend=backend, dtype=dtype, seed=0)
        m.set_weights([np.zeros((4, 2)), np.zeros(2)])
        return m

    X = np.zeros((1, 4), dtype=dtype)
    X[0, 0] = 1e20 if dtype == "float32" else 1e160
    T = np.full((1, 2), 10.0, dtype=dtype)
    m = diverge_and_compare(make, X, T, "the optimiser state became NaN or inf")
    assert all(np.isfinite(w).all() for w in m.get_weights())


def test_momentum_overflow_is_undone(backend, dtype):
    # v = 0.9 v + g overflows with v near the dtype's max and g of the same sign
    top = np.finfo(dtype).max
    X = np.ones((1, 4), dtype=dtype)
    T = np.full((1, 2), -top / 8, dtype=dtype)   # dE/dW = 2 (f - t) x ~ top / 4, positive

    def make():
        m = fm.Model([fm.Dense(2)], input_dim=4, optimizer=fm.SGD(lr=1e-30, momentum=0.9),
                     backend=backend, dtype=dtype, seed=0)
        state = m.get_state()
        state["opt_buffers"][0] = top * 0.9
        m.set_state(state)
        return m

    diverge_and_compare(make, X, T, "the optimiser state became NaN or inf")


# -- the bounds: measured again after any outside write, a backup when they fail -----

def huge_first_weight(m, value):
    """W1[0, 0] = value, on an input column the batches below keep at 0: the forward
    pass never sees it, but the update rewrites it."""
    weights = m.get_weights()
    weights[0][0, 0] = value
    m.set_weights(weights)


def zero_first_column(X):
    X = X.copy()
    X[:, 0] = 0
    return X


@copy_free
def test_bounds_are_measured_again_after_set_weights(guarded_backend, dtype):
    # SGD with decay factor 1 - lr wd = -4: W1[0, 0] = 0.9 max becomes -3.6 max (inf).
    make = lambda: w2_net(guarded_backend, dtype, fm.SGD(lr=10.0, weight_decay=0.5), units=(32,))
    m = make()
    X, T = batch(m, 64, 0)
    X = zero_first_column(X) * 1e-3
    m.train_on_batch(X, T)
    m.train_on_batch(X, T)  # bounds known and small now
    huge_first_weight(m, np.finfo(dtype).max * 0.9)
    before = state_bytes(m)
    with pytest.raises(fm.TrainingDiverged, match="layer 1's weights became NaN or inf"):
        m.train_on_batch(X, T)
    assert state_bytes(m) == before
    paths = guard_paths(m)
    assert paths["measured"] >= 2 and paths["backed_up"] >= 1, paths


@copy_free
def test_a_finite_step_the_bounds_cannot_prove_runs_on_a_backup(guarded_backend, dtype):
    # W1[0, 0] = max / 2 is above the proof's limit (max / 16), and stays finite.
    plain, guarded = (w2_net(guarded_backend, dtype, fm.SGD(lr=0.01), units=(32,)) for _ in range(2))
    for m in (plain, guarded):
        huge_first_weight(m, np.finfo(dtype).max / 2)
    X, T = batch(plain, 64, 0)
    X = zero_first_column(X)
    for _ in range(2):
        assert guarded.train_on_batch(X, T) == plain.engine.train_step(X, T)
        assert state_bytes(guarded) == state_bytes(plain)
    assert guarded.get_weights()[0][0, 0] == np.finfo(dtype).max / 2
    paths = guard_paths(guarded)
    assert paths["proven"] == 0 and paths["backed_up"] == 2, paths


@copy_free
def test_every_outside_write_makes_the_next_step_measure(guarded_backend, dtype):
    m = w2_net(guarded_backend, dtype, fm.SGD(lr=0.01, momentum=0.9), units=(32,))
    X, T = batch(m, 64, 0)
    writes = [lambda: m.set_weights(m.get_weights()),
              lambda: m.set_state(m.get_state()),
              lambda: m.apply_gradient(np.zeros(m.n_params)),
              lambda: m.engine.train_step(X, T),
              lambda: m.fit(X, T, epochs=1, batch_size=16)]
    m.train_on_batch(X, T)
    for write in writes:
        m.train_on_batch(X, T)
        measured = guard_paths(m)["measured"]
        write()
        m.train_on_batch(X, T)
        assert guard_paths(m)["measured"] == measured + 1
    # another theta given to the engine: its bounds are not those of the model's
    theta, state = m.engine.theta.copy(), m.get_state()
    measured = guard_paths(m)["measured"]
    buffers = fm.optimizers.OptimizerState.new(m.optimizer, m.n_params, m.dtype)
    checked_step_on(m, theta, buffers, X, T)
    assert guard_paths(m)["measured"] == measured + 1
    assert state_bytes(m) == [state[k].tobytes() for k in ("theta", "opt_buffers", "opt_step")]
