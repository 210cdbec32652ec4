"""train_step_checked: one compiled call that checks X and T, saves, steps and
checks the result, undoing a diverged step. Model.train_on_batch takes it for
arrays that are already as the backends want them; these tests hold it to
train_step's results bit for bit and to the messages of the full checks."""
import gc
import tracemalloc

import numpy as np
import pytest

import fastmlp as fm

OPTIMIZERS = {"sgd": lambda: fm.SGD(lr=0.1), "momentum": lambda: fm.SGD(lr=0.1, momentum=0.9),
              "adam": lambda: fm.Adam(lr=0.01)}


def regressor(backend, dtype, optimizer):
    return fm.Model([fm.Dense(8, activation="tanh"), fm.Dense(2)], input_dim=4,
                    optimizer=optimizer, backend=backend, dtype=dtype, seed=0)


def classifier(backend, dtype, optimizer):
    return fm.Model([fm.Dense(8, activation="relu"), fm.Dense(3, activation="softmax")],
                    input_dim=4, loss="cross_entropy", optimizer=optimizer, backend=backend,
                    dtype=dtype, seed=0)


def data(m, rows=16, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 4)).astype(m.dtype)
    if m.net.loss.output is not None:
        T = np.eye(3, dtype=m.dtype)[rng.integers(0, 3, rows)]
    else:
        T = rng.normal(size=(rows, 2)).astype(m.dtype)
    return X, T


def assert_same_state(a, b):
    for key in ("theta", "opt_buffers", "opt_step"):
        assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), key
    assert a["rng_state"] == b["rng_state"]


@pytest.mark.parametrize("make", [regressor, classifier], ids=["mse", "softmax"])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_checked_step_is_train_step_bit_for_bit(backend, dtype, make, opt):
    plain, checked, public = (make(backend, dtype, OPTIMIZERS[opt]()) for _ in range(3))
    for step in range(5):
        X, T = data(plain, rows=1 + 7 * step, seed=step)  # 1, 8, 15, ... rows: fold and not
        want = plain.engine.train_step(X, T)
        got, status = checked.engine.train_step_checked(X, T)
        assert status == 0
        assert np.float64(got).tobytes() == np.float64(want).tobytes()
        assert np.float64(public.train_on_batch(X, T)).tobytes() == np.float64(want).tobytes()
        assert_same_state(checked.get_state(), plain.get_state())
        assert_same_state(public.get_state(), plain.get_state())


def bad_copies(X, T, classify):
    """(name, X, T) with one bad value each."""
    cases = []
    for value in (np.nan, np.inf, -np.inf):
        Xb = X.copy()
        Xb[3, 1] = value
        Tb = T.copy()
        Tb[5, 0] = value
        cases += [(f"X {value}", Xb, T), (f"T {value}", X, Tb)]
    if classify:
        Tb = T.copy()
        Tb[2, 1] = 1.5
        cases.append(("T above 1", X, Tb))
    return cases


@pytest.mark.parametrize("make", [regressor, classifier], ids=["mse", "softmax"])
def test_bad_values_give_todays_message_and_change_nothing(backend, dtype, make):
    m = make(backend, dtype, fm.SGD(lr=0.1, momentum=0.9))
    X, T = data(m)
    m.train_on_batch(X, T)  # momentum buffers in use, step 1
    for name, Xb, Tb in bad_copies(X, T, make is classifier):
        before = m.get_state()
        loss, status = m.engine.train_step_checked(Xb, Tb)
        assert status == 1 and np.isnan(loss), name
        assert_same_state(m.get_state(), before)
        # The message of the full checks, which Fortran-ordered copies always go through
        with pytest.raises(ValueError) as want:
            m.train_on_batch(np.asfortranarray(Xb), np.asfortranarray(Tb))
        with pytest.raises(ValueError) as got:
            m.train_on_batch(Xb, Tb)
        assert str(got.value) == str(want.value), name
        assert_same_state(m.get_state(), before)


def diverging(backend, dtype, optimizer):
    """A 4-8-2 linear regression that SGD at this rate sends to inf within a few steps."""
    m = fm.Model([fm.Dense(8, activation="linear"), fm.Dense(2)], input_dim=4,
                 optimizer=optimizer, backend=backend, dtype=dtype, seed=0)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4)).astype(m.dtype)
    return m, X, (X @ rng.normal(size=(4, 2))).astype(m.dtype)


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_diverged_step_is_undone_with_todays_message(backend, dtype, opt):
    optimizer = {"sgd": lambda: fm.SGD(lr=1e3), "momentum": lambda: fm.SGD(lr=1e3, momentum=0.9),
                 # Adam's step is at most ~lr: a rate float32 holds, but past its range
                 "adam": lambda: fm.Adam(lr=1e30 if np.dtype(dtype) == np.float32
                                         else 1e200)}[opt]
    fast, X, Y = diverging(backend, dtype, optimizer())
    slow, _, _ = diverging(backend, dtype, optimizer())
    Xf, Yf = np.asfortranarray(X), np.asfortranarray(Y)  # the full checks' path
    for _ in range(100):
        before = fast.get_state()
        try:
            loss = fast.train_on_batch(X, Y)
        except fm.TrainingDiverged as exc:
            got = str(exc)
            break
        assert loss == slow.train_on_batch(Xf, Yf)
    else:
        pytest.fail("the step never diverged")
    assert_same_state(fast.get_state(), before)
    with pytest.raises(fm.TrainingDiverged) as want:
        slow.train_on_batch(Xf, Yf)
    assert got == str(want.value)
    assert "the model was left as it was before the step" in got
    # the engine call alone says 2 and leaves everything as it was
    loss, status = fast.engine.train_step_checked(X, Y)
    assert status == 2
    assert_same_state(fast.get_state(), before)


@pytest.mark.parametrize("opt", ["momentum", "adam"])
def test_warm_checked_step_allocates_nothing(compiled_backend, dtype, opt):
    if compiled_backend == "cuda":
        pytest.skip("a CUDA launch allocates Python objects (the simulator also one "
                    "thread per GPU thread): the host-memory promise is the CPU backends'")
    m = classifier(compiled_backend, dtype, OPTIMIZERS[opt]())
    X, T = data(m, rows=64)
    for _ in range(5):
        m.train_on_batch(X, T)
    gc.collect()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(200):
            m.engine.train_step_checked(X, T)
            m.train_on_batch(X, T)
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert end - start < 1024 and peak - start < 4096, (end - start, peak - start)


def test_reference_checked_step_undoes_a_step_interrupted_mid_update(monkeypatch):
    """The reference's checked step (train_on_batch's path up to 16,384 parameters)
    restored its backup only when the step's result was not finite: a Ctrl-C during the
    update left Adam's buffers and step advanced and the weights not (3 of 22 random
    interrupts). Here the update runs, then the interrupt lands."""
    from fastmlp.backends import reference
    # laid out as the model takes them (float32, C order), so the checked step runs
    X = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    Y = np.eye(2, dtype=np.float32)[np.arange(16) % 2]
    model = fm.Model([fm.Dense(4, "tanh"), fm.Dense(2, "softmax")], input_dim=3,
                     loss="cross_entropy", optimizer=fm.Adam(), backend="numpy", seed=0)
    model.train_on_batch(X, Y)
    before = model.get_state()
    real = reference.optimizers.update

    def update_then_ctrl_c(*args):
        real(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(reference.optimizers, "update", update_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        model.train_on_batch(X, Y)
    after = model.get_state()
    for key in ("theta", "opt_buffers", "opt_step"):
        np.testing.assert_array_equal(after[key], before[key])
