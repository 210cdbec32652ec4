"""The Numba backend's fast path: kernels called through their compiled entry points
(one signature per dtype, X and T typed read-only), train_step on kt.run itself, and
predict_checked. Each result is held to the dispatcher's, or to predict's, bit for bit."""
import numpy as np
import pytest

import fastmlp as fm

numba_backend = pytest.importorskip("fastmlp.backends.numba")
kt = numba_backend.kt

DTYPES = ["float32", "float64"]


class _Sub(np.ndarray):
    """An ndarray subclass: the backend's entry points take plain ndarrays only."""


def vehicle_model(dtype, optimizer=None, loss="mse", seed=0):
    return fm.Model([fm.Dense(4, "sigmoid"), fm.Dense(2, "sigmoid")], input_dim=3, loss=loss,
                    optimizer=optimizer or fm.SGD(lr=0.5), backend="numba", dtype=dtype,
                    seed=seed)


def data(rows, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((rows, 3)).astype(dtype), rng.random((rows, 2)).astype(dtype))


def read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def state_bytes(m):
    s = m.get_state()
    return [s[k].tobytes() for k in ("theta", "opt_buffers", "opt_step")]


@pytest.mark.parametrize("dtype", DTYPES)
def test_read_only_inputs_share_the_one_compiled_run(dtype):
    m, twin = vehicle_model(dtype), vehicle_model(dtype)
    X, T = data(6, dtype)
    m.train_on_batch(X, T)
    compiled = len(kt.run.signatures)
    twin.train_on_batch(read_only(X), read_only(T))
    m.train_on_batch(read_only(X), T)
    twin.train_on_batch(X, read_only(T))
    m.fit(read_only(X), read_only(T), epochs=2, batch_size=4)
    twin.fit(X, T, epochs=2, batch_size=4)
    assert len(kt.run.signatures) == compiled  # nothing compiled again
    assert state_bytes(m) == state_bytes(twin)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer", [fm.SGD(lr=0.5), fm.Adam(lr=0.01)], ids=["sgd", "adam"])
def test_entry_point_matches_the_dispatcher(dtype, optimizer):
    """theta of an ndarray subclass is not what the entry point's signature was made
    for: the backend falls back to the dispatcher, which must give the same steps bit
    for bit."""
    fast, slow = vehicle_model(dtype, optimizer), vehicle_model(dtype, optimizer)
    engine = slow.engine
    strided = engine.theta.copy().view(_Sub)
    engine.theta = strided
    assert engine._run is kt.run   # the dispatcher
    X, T = data(6, dtype)
    for _ in range(3):
        assert fast.engine.train_step_checked(X, T) == engine.train_step_checked(X, T)
        assert fast.engine.train_step(X, T) == engine.train_step(X, T)
    np.testing.assert_array_equal(fast.engine.theta, strided)
    out_fast, out_slow = fast.engine.predict(X), engine.predict(X)
    np.testing.assert_array_equal(out_fast, out_slow)


@pytest.mark.parametrize("dtype", DTYPES)
def test_growing_workspace_keeps_the_step(dtype):
    """A batch bigger than the workspace rebinds the step's arguments; a smaller one
    after it runs on the grown workspace: the same steps as a fresh model's."""
    m, fresh = vehicle_model(dtype, fm.Adam(lr=0.01)), vehicle_model(dtype, fm.Adam(lr=0.01))
    for rows in (6, 50, 6, 1):
        X, T = data(rows, dtype, seed=rows)
        assert m.train_on_batch(X, T) == fresh.train_on_batch(X, T)
        fresh = vehicle_model(dtype, fm.Adam(lr=0.01))
        fresh.set_state(m.get_state())
    assert m.engine._train[3] == 50


def test_changed_optimizer_code_is_seen():
    m = vehicle_model("float32")
    X, T = data(6, "float32")
    m.engine.train_step_checked(X, T)
    m.engine.state.code = 99
    with pytest.raises(ValueError, match="unknown optimizer code"):
        m.engine.train_step_checked(X, T)


def test_guarded_step_refuses_bad_inputs_in_compiled_code():
    m = fm.Model([fm.Dense(3, "relu"), fm.Dense(2, "softmax")], input_dim=3,
                 loss="cross_entropy", backend="numba", seed=0)
    X, T = data(4, "float32")
    T = np.eye(2, dtype=np.float32)[[0, 1, 1, 0]]
    before = state_bytes(m)
    bad_X = X.copy()
    bad_X[2, 1] = np.inf
    loss, status = m.engine.train_step_checked(bad_X, T)
    assert status == 1 and np.isnan(loss)
    loss, status = m.engine.train_step_checked(X, T * 2)   # targets outside [0, 1]
    assert status == 1
    assert state_bytes(m) == before
    loss, status = m.engine.train_step_checked(X, T)
    assert status == 0 and np.isfinite(loss)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 4, 5, 700])
def test_predict_checked_is_predict_and_sees_every_chunk(dtype, rows):
    m = fm.Model([fm.Dense(300, "relu"), fm.Dense(10, "softmax")], input_dim=20,
                 loss="cross_entropy", backend="numba", dtype=dtype, seed=0)
    engine = m.engine
    X = np.random.default_rng(1).standard_normal((rows, 20)).astype(dtype)
    assert rows < 700 or engine._predict_rows < rows   # 700 rows: several chunks
    out = np.full((rows, 10), np.nan, dtype=dtype)
    assert engine.predict_checked(read_only(X), out) is True
    np.testing.assert_array_equal(out, engine.predict(X))
    for bad in (np.nan, np.inf, -np.inf):
        Xb = X.copy()
        Xb[-1, -1] = bad   # in the last chunk
        assert engine.predict_checked(Xb, out) is False


def test_predict_from_several_threads():
    from concurrent.futures import ThreadPoolExecutor
    m = fm.Model([fm.Dense(64, "tanh"), fm.Dense(3, "softmax")], input_dim=8,
                 loss="cross_entropy", backend="numba", seed=0)
    X = np.random.default_rng(2).random((33, 8), dtype=np.float32)
    want = m.engine.predict(X)

    def one(_):
        out = np.empty((33, 3), dtype=np.float32)
        return m.engine.predict_checked(X, out) and np.array_equal(out, want)

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(one, range(64)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer", [fm.SGD(lr=0.5, momentum=0.9), fm.Adam(lr=0.01)],
                         ids=["sgd", "adam"])
def test_signatures_typed_once_are_the_arguments_types(dtype, optimizer):
    """The entry points' signatures are typed once per dtype (numba.typeof cost a new
    model ~220 us): each must still be what numba.typeof gives this model's arguments,
    after the workspace grew and the optimiser changed too."""
    from fastmlp.backends._numba_entry import _SIGNATURES, signature
    m = vehicle_model(dtype, optimizer)
    m.fit(*data(600, dtype), epochs=1, batch_size=600)   # the workspace grows
    m.optimizer = fm.Adam(lr=0.02) if isinstance(optimizer, fm.Adam) else fm.SGD(lr=0.1)
    e = m.engine
    X = np.zeros((1, 3), dtype=dtype)
    Y = np.zeros((1, 2), dtype=dtype)
    typed = {
        "run": signature((e.theta, e._grad, X, Y) + e._checked, numba_backend._RUN_READ_ONLY),
        "predict": signature((e.theta, X, e._plan, e._fparams, 1, Y, 0, numba_backend._SMALL, 0),
                             numba_backend._PREDICT_READ_ONLY),
        "evaluate": signature((e.theta, X, Y, e._plan, e._fparams, 1, numba_backend._SMALL),
                              numba_backend._EVALUATE_READ_ONLY)}
    for name, types in typed.items():
        assert _SIGNATURES[(name, np.dtype(dtype))] == types
