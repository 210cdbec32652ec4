"""A hostile user against the Cython backend's copy-free guarded step.

train_step_checked proves each update finite from bounds (kernels/_guard.pxd)
instead of copying theta first. Hypothesis drives random architectures (1-4
layers, 1-40 units, every activation), losses, optimisers with extreme settings
(learning rates up to 1e300, Adam's beta1 rounding to 1 in float, tiny eps),
weights, optimiser state and inputs from subnormal to near the dtype's max, and
batches of 1 to 1100 rows (past the 1024-row chunk), interleaved with every host
write a Model makes (set_weights, set_state, apply_gradient, fit, an unguarded
engine step, a distributed-style write of theta followed by push).

The oracle is the engine's unguarded train_step on a twin holding the same state:
a step it ends finite (loss, theta, buffers in use) must be applied by the guarded
step bit for bit (never refused); any other must be refused with the model left
as it was, bit for bit.

CI runs the "guarded-ci" profile (a fixed 250 examples, derandomised, ~20 s); set
FASTMLP_FUZZ_EXAMPLES=N for a longer hunt.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis.errors import InvalidArgument
from hypothesis import strategies as st

import fastmlp as fm
from fastmlp import activations as act
from fastmlp import optimizers as opt
from fastmlp import rules
from fastmlp.backends import available_backends

from strategies import architectures as any_architecture

pytestmark = [pytest.mark.skipif("cython" not in available_backends(),
                                 reason="the Cython backend is not built"),
              # fit on a step/sign net says its layers cannot learn: true, and beside the point
              pytest.mark.filterwarnings("ignore:.*whose derivative is 0:RuntimeWarning")]

settings.register_profile("guarded-ci", max_examples=250, deadline=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("guarded-hunt",
                          max_examples=int(os.environ.get("FASTMLP_FUZZ_EXAMPLES", 250)),
                          deadline=None, suppress_health_check=list(HealthCheck))
PROFILE = "guarded-hunt" if "FASTMLP_FUZZ_EXAMPLES" in os.environ else "guarded-ci"

PARAM_RANGES = {"a": (-3.0, 3.0), "alpha": (0.0, 3.0)}
# Largest decimal exponent of a finite value, smallest of a subnormal one.
MAX_EXP = {"float32": 38, "float64": 308}
MIN_EXP = {"float32": -45, "float64": -323}


# -- what the hostile user draws -------------------------------------------------------

def architectures():
    """([(units, activation, param)], loss): 1-4 layers of 1-40 units."""
    return any_architecture(3, 40, PARAM_RANGES, 4)


def unit_interval():
    """[0, 1) with the edges a hostile user picks: 0, and values whose float rounds to 1."""
    return st.one_of(st.sampled_from([0.0, 0.5, 0.9, 0.999, 1 - 1e-8, 1 - 1e-12, 1 - 2**-53]),
                     st.floats(0.0, 1.0, exclude_max=True))


@st.composite
def optimizers(draw):
    lr = 10.0 ** draw(st.floats(-3, 300))
    wd = draw(st.sampled_from([0.0, 0.0, 1e-3])) if draw(st.booleans()) else draw(unit_interval())
    if draw(st.booleans()):
        mu = draw(st.sampled_from([0.0, 0.0, 0.9])) if draw(st.booleans()) else draw(unit_interval())
        return fm.SGD(lr=lr, momentum=mu, nesterov=mu > 0 and draw(st.booleans()),
                      weight_decay=wd)
    return fm.Adam(lr=lr, beta1=draw(unit_interval()), beta2=draw(unit_interval()),
                   eps=10.0 ** draw(st.floats(-320, 1)), weight_decay=wd)


def magnitudes(dtype):
    """A decimal exponent: mostly modest, often at the dtype's edges."""
    return st.one_of(st.integers(-3, 3), st.integers(MIN_EXP[dtype], MAX_EXP[dtype]),
                     st.sampled_from([MAX_EXP[dtype], MAX_EXP[dtype] - 1, MIN_EXP[dtype]]))


def values(rng, shape, dtype, exp, zeros=0.2):
    """Normal values times 10**exp, some exactly 0, cast to dtype and clipped to its range."""
    with np.errstate(all="ignore"):
        v = rng.normal(size=shape) * np.power(10.0, float(exp))
    v[rng.uniform(size=shape) < zeros] = 0
    big = np.finfo(dtype).max
    return np.clip(np.nan_to_num(v), -big, big).astype(dtype)


def targets(rng, rows, units, loss, dtype, exp):
    if loss == "cross_entropy":
        return np.eye(units, dtype=dtype)[rng.integers(0, units, rows)]
    if loss == "binary_cross_entropy":
        return rng.uniform(size=(rows, units)).astype(dtype)
    return values(rng, (rows, units), dtype, exp)


def build(spec, input_dim, loss, optimizer, dtype):
    dense = [fm.Dense(u, activation=a, **({act.get(a).param: p} if p is not None else {}))
             for u, a, p in spec]
    return fm.Model(dense, input_dim=input_dim, loss=loss, optimizer=optimizer,
                    backend="cython", dtype=dtype, seed=0)


# -- the oracle ------------------------------------------------------------------------

def say(message):
    """note() for the hunt; nothing in the pinned tests, outside hypothesis."""
    try:
        note(message)
    except InvalidArgument:
        pass


def state_bytes(m):
    s = m.engine
    return s.theta.tobytes(), s.state.buffers.tobytes(), s.state.step.tobytes()


def unguarded(m, twin, X, T):
    """The engine's unguarded train_step on twin from m's state: (loss, finite, state bytes)."""
    np.copyto(twin.engine.theta, m.engine.theta)
    np.copyto(twin.engine.state.buffers, m.engine.state.buffers)
    np.copyto(twin.engine.state.step, m.engine.state.step)
    loss = twin.engine.train_step(X, T)
    in_use = rules.buffers_in_use(twin.engine.state)
    finite = bool(np.isfinite(loss) and np.isfinite(twin.engine.theta).all()
                  and np.isfinite(twin.engine.state.buffers[:in_use]).all())
    return loss, finite, state_bytes(twin)


def check_guarded_step(m, twin, X, T, via_model):
    """One guarded step on m against the unguarded one on twin."""
    before = state_bytes(m)
    want, finite, after = unguarded(m, twin, X, T)
    if via_model:
        try:
            got, status = m.train_on_batch(X, T), 0
        except fm.TrainingDiverged:
            got, status = float("nan"), 2
    else:
        got, status = m.engine.train_step_checked(X, T)
    say(f"step rows={len(X)} unguarded finite={finite} loss={want!r} status={status} "
         f"paths={m.engine.engine.guard_paths()}")
    if finite:
        assert status == 0, "a finite step was refused"
        assert np.float64(got).tobytes() == np.float64(want).tobytes(), (got, want)
        assert state_bytes(m) == after, "the guarded step differs from train_step"
    else:
        assert status == 2, f"a non-finite step was not refused (status {status})"
        assert state_bytes(m) == before, "a refused step changed the model"
    return finite


# -- the host writes interleaved with guarded steps -------------------------------------

def write_state(m, s):
    """What set_state writes, written straight into the engine's arrays and pushed, as
    fastmlp.distributed writes theta: set_state itself refuses a negative Adam v, which
    the kernel must still handle."""
    e = m.engine
    e.theta[...] = s["theta"]
    e.state.buffers[...] = s["opt_buffers"]
    e.state.step[...] = s["opt_step"]
    e.push()


def restore_if_not_finite(m, saved):
    e = m.engine
    if not (np.isfinite(e.theta).all() and np.isfinite(e.state.buffers).all()):
        write_state(m, saved)


def host_write(kind, m, rng, dtype, exp, X, T):
    e = m.engine
    saved = m.get_state()
    if kind == "set_weights":
        m.set_weights([values(rng, w.shape, dtype, exp) for w in m.get_weights()])
    elif kind == "set_state":
        s = m.get_state()
        s["theta"] = values(rng, s["theta"].shape, dtype, exp)
        s["opt_buffers"] = values(rng, s["opt_buffers"].shape, dtype, exp + int(rng.integers(-5, 5)))
        if rng.uniform() < 0.5:   # Adam's v as a save file holds it: >= 0
            s["opt_buffers"][1] = np.abs(s["opt_buffers"][1])
        s["opt_step"] = np.array([rng.choice([0, 1, 7, 10**9, 2**62])], dtype=np.int64)
        try:
            m.set_state(s)
        except ValueError:        # a negative Adam v: refused there, so written directly
            write_state(m, s)
    elif kind == "apply_gradient":
        try:
            m.apply_gradient(values(rng, (m.n_params,), dtype, exp))
        except fm.TrainingDiverged:
            pass
    elif kind == "fit":
        try:
            m.fit(X, T, epochs=1, batch_size=int(rng.integers(1, len(X) + 1)), verbose=0)
        except fm.TrainingDiverged:
            pass
    elif kind == "engine_step":   # the unguarded step, straight on the engine: no push
        with np.errstate(all="ignore"):
            e.train_step(X, T)
        restore_if_not_finite(m, saved)
    elif kind == "distributed":   # fastmlp.distributed's host-side update, then push()
        with np.errstate(all="ignore"):
            e.theta *= e.theta.dtype.type(10.0 ** int(rng.integers(-3, 40)))
            np.nan_to_num(e.theta, copy=False)
            np.clip(e.theta, -np.finfo(dtype).max, np.finfo(dtype).max, out=e.theta)
        e.push()


HOST_WRITES = ["set_weights", "set_state", "apply_gradient", "fit", "engine_step", "distributed"]


@settings.get_profile(PROFILE)
@given(data=st.data(), arch=architectures(), optimizer=optimizers(),
       dtype=st.sampled_from(["float32", "float64"]), d=st.integers(1, 40),
       seed=st.integers(0, 2**32 - 1))
def test_guarded_step_matches_unguarded_step(data, arch, optimizer, dtype, d, seed):
    spec, loss = arch
    # settings the dtype cannot hold (lr 1e300 or beta1 1 - 1e-8 in float32) are refused
    # when the model is built (test_settings_the_dtype_cannot_hold_are_refused)
    assume(opt.problem_in(optimizer, dtype) is None)
    assume(not any(a == "linear" and p is not None and abs(p) < np.finfo(dtype).tiny
                   for _, a, p in spec))   # a slope that is 0 there, likewise
    rng = np.random.default_rng(seed)
    m, twin = build(spec, d, loss, optimizer, dtype), build(spec, d, loss, optimizer, dtype)
    note(f"{spec} {loss} {optimizer!r} {dtype} d={d}")
    for _ in range(data.draw(st.integers(1, 6), label="actions")):
        rows = data.draw(st.one_of(st.integers(1, 8), st.integers(1, 1100)), label="rows")
        xexp = data.draw(magnitudes(dtype), label="input exponent")
        X = values(rng, (rows, d), dtype, xexp)
        T = targets(rng, rows, spec[-1][0], loss, dtype, data.draw(magnitudes(dtype), label="t"))
        kind = data.draw(st.sampled_from(["guarded"] * 4 + HOST_WRITES), label="action")
        if kind == "guarded":
            check_guarded_step(m, twin, X, T, via_model=data.draw(st.booleans(), label="model"))
        else:
            note(f"host write {kind}")
            host_write(kind, m, rng, dtype, data.draw(magnitudes(dtype), label="w"), X, T)
    # and always end on a guarded step
    X = values(rng, (data.draw(st.integers(1, 8)), d), dtype, data.draw(magnitudes(dtype)))
    check_guarded_step(m, twin, X, targets(rng, len(X), spec[-1][0], loss, dtype, 0), False)


# -- what the hunt found, pinned -----------------------------------------------------------

def pinned(layers, input_dim, optimizer, dtype, loss="mse"):
    """A guarded model and its unguarded twin."""
    make = lambda: fm.Model(layers(), input_dim=input_dim, loss=loss, optimizer=optimizer(),
                            backend="cython", dtype=dtype, seed=0)
    return make(), make()


@pytest.mark.parametrize("activation", ["linear", "step"])
def test_an_overflowing_bound_is_no_refusal(activation):
    """rows max|x| max|delta| overflows float64 (or is inf * 0) though x^T delta is finite:
    the huge x sits where delta is 0. The step is finite and must be taken, not refused."""
    m, twin = pinned(lambda: [fm.Dense(1, activation=activation)], 1, lambda: fm.SGD(lr=1e-3),
                     "float64")
    m.set_weights([np.zeros((1, 1)), np.zeros(1)])
    X, T = np.array([[1e200], [0.0]]), np.array([[0.0], [1e150]])
    if activation == "step":   # delta is 0: the bound is (2 * DBL_MAX) * 0 = NaN
        X, T = np.array([[1.7e308], [1.7e308], [0.0]]), np.array([[1.0], [0.0], [0.5]])
    assert check_guarded_step(m, twin, X, T, via_model=False)


def test_adam_beta1_that_rounds_to_one_in_float_is_refused():
    """beta1 = 1 - 1e-8 is 1.0f, yet the kernel's 1 - beta1 was 1e-8 (rounded from double):
    m / k1 the gradient itself, and lr (m / k1) overflowed float (the proof once took
    1 - beta1 as 0 and wrote -inf into theta). Such a beta1 is now refused when the model is
    built, as it means beta1 = 1 in float32's arithmetic; float64 holds it."""
    with pytest.raises(ValueError, match="beta1=0.99999999 rounds to 1 in float32"):
        pinned(lambda: [fm.Dense(1)], 1, lambda: fm.Adam(lr=1e30, beta1=1 - 1e-8), "float32")
    pinned(lambda: [fm.Dense(1)], 1, lambda: fm.Adam(lr=1e30, beta1=1 - 1e-8), "float64")


def test_negative_adam_v_written_directly():
    """Adam's v written as -1 from outside (set_state refuses it; a direct write and push
    does not): sqrt(v / k2) is
    NaN and so is theta, yet |v| = 1 bounds everything the proof looked at."""
    m, twin = pinned(lambda: [fm.Dense(3, activation="tanh"), fm.Dense(2)], 4,
                     lambda: fm.Adam(lr=1e-3), "float64")
    s = m.get_state()
    s["opt_buffers"][1] = -1.0
    write_state(m, s)
    X, T = np.ones((5, 4)), np.zeros((5, 2))
    assert not check_guarded_step(m, twin, X, T, via_model=False)
    # Only the rows where v < 0 matter: one negative entry is enough.
    s["opt_buffers"][1] = 0.5
    s["opt_buffers"][1, 3] = -1e6
    write_state(m, s)
    assert not check_guarded_step(m, twin, X, T, via_model=True)
    s["opt_buffers"][1, 3] = -0.0   # sqrt(-0) is -0: a finite step
    write_state(m, s)
    assert check_guarded_step(m, twin, X, T, via_model=False)
    assert check_guarded_step(m, twin, X, T, via_model=False)   # on the bounds it left


def test_adam_step_count_that_wraps():
    """opt_step = 2**63 - 1 (written directly): the kernel's step count wraps to -2**63,
    1 - beta^t is -inf, and the update is 0 whatever v holds, even v < 0."""
    m, twin = pinned(lambda: [fm.Dense(2)], 3, lambda: fm.Adam(lr=1e-2), "float32")
    s = m.get_state()
    s["opt_buffers"][1] = -1.0
    s["opt_step"] = np.array([2**63 - 1])
    write_state(m, s)
    X, T = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
    assert check_guarded_step(m, twin, X, T, via_model=False)
