"""The Numba kernels' calls by address (kernels/numba_link.Late): the activation passes
compiled per activation code, and the guard compiled at the first guarded step, not
with the training kernel; the same bits as the passes compiled for every code."""
import os
import subprocess
import sys

import numpy as np
import pytest

from fastmlp.backends import available_backends
from helpers import numba_passes

pytestmark = pytest.mark.skipif("numba" not in available_backends(),
                                reason="the numba backend is not available here")

if "numba" in available_backends():
    from numba import njit, types
    from numba.core.errors import TypingError

    from fastmlp.activations import ACTIVATIONS
    from fastmlp.kernels import numba_activations as na
    from fastmlp.kernels import numba_train as kt

    _forward_call, _backward_call = na.FORWARD.call, na.BACKWARD.call

    @njit
    def _forward_at(at, Z, b, A, code, p, alpha, want_max):
        return _forward_call(at, Z, b, A, code, p, alpha, want_max)

    @njit
    def _backward_at(at, G, Z, A, code, p, alpha, galpha, beta, want_max):
        return _backward_call(at, G, Z, A, code, p, alpha, galpha, beta, want_max)

    # the passes for every code (kernels, with no Python entry point)
    _forward, _backward = numba_passes()


def _nb(dtype):
    return types.float32 if dtype == np.float32 else types.float64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS) if "numba" in available_backends() else [])
def test_a_pass_compiled_for_its_code_gives_the_bits_of_the_pass_for_every_code(name, dtype):
    code = ACTIVATIONS[name].code
    rng = np.random.default_rng(code)
    n, k = 37, 5
    Z = (rng.standard_normal((n, k)) * 3).astype(dtype)
    Z[0, :3] = [0.0, -0.0, 40.0]
    b, alpha = rng.standard_normal(k).astype(dtype), rng.random(k).astype(dtype)
    p = dtype(0.3)
    forward, backward = (late.address(_nb(dtype), code) for late in (na.FORWARD, na.BACKWARD))
    Zs, Zg, As, Ag = Z.copy(), Z.copy(), np.empty_like(Z), np.empty_like(Z)
    top = _forward_at(forward, Zs, b, As, code, p, alpha, True)
    assert top == _forward(Zg, b, Ag, code, p, alpha, True)
    np.testing.assert_array_equal(As, Ag)
    np.testing.assert_array_equal(Zs, Zg)
    G = rng.standard_normal((n, k)).astype(dtype)
    ga_s, ga_g = np.ones(k, dtype), np.ones(k, dtype)
    top = _backward_at(backward, G, Zs, As, code, p, alpha, ga_s, 1.0, True)
    assert top == _backward(G, Zg, Ag, code, p, alpha, ga_g, 1.0, True)
    np.testing.assert_array_equal(Zs, Zg)
    np.testing.assert_array_equal(ga_s, ga_g)


def test_a_call_by_address_with_other_types_is_refused_while_compiling():
    @njit
    def wrong(at, Z, b, A):
        return _forward_call(at, Z, b, A, 1, 0.5, b, False)   # p float64, Z float32
    Z = np.zeros((2, 2), np.float32)
    with pytest.raises(TypingError, match="bias_act_forward is called by address with"):
        wrong(0, Z, np.zeros(2, np.float32), Z)


@pytest.mark.parametrize("slot", ["forward", "derivative", "guard", "loss", "update",
                                  "input check", "norms"])
def test_a_call_without_an_armed_kernel_raises_not_crashes(slot):
    import fastmlp as fm
    m = fm.Model([fm.Dense(3, "tanh"), fm.Dense(2)], input_dim=2, loss="mse",
                 optimizer=fm.SGD(0.1, momentum=0.5), backend="numba", dtype="float32",
                 seed=0)
    engine = m._engine
    ones = np.ones((2, 2), np.float32)
    engine.train_step_checked(ones, ones)   # arms the layers, the loss, the update, the guard
    norms = np.zeros(2)
    engine.train_epoch(ones, ones, np.arange(2), 2, norms)   # and the norms
    plan = engine._train[0]
    end = kt.calls_index(plan, 2)   # the slots after the layers' (kt.calls_index)
    index = {"forward": kt.calls_index(plan, 1), "derivative": kt.calls_index(plan, 0) + 1,
             "guard": end, "loss": end + 1, "update": end + 2 + fm.SGD.code,
             "norms": end + 2 + len(kt.UPDATES), "input check": end + 3 + len(kt.UPDATES)}[slot]
    assert plan[index] != 0
    kept, plan[index] = plan[index], 0
    args = (engine.theta, engine._grad, ones, ones) + engine._checked
    if slot == "norms":   # a plain epoch asking for norms (run's arguments, as train_epoch's)
        args = args[:13] + (norms,) + args[14:16] + (np.zeros(0), engine._backup)
    try:
        with pytest.raises(ValueError, match="the kernels this network calls are not compiled"):
            engine._run(*args)
        if slot == "forward":
            with pytest.raises(ValueError, match="not compiled"):
                engine._predict(engine.theta, ones, plan, engine._fparams, 2,
                                np.empty((2, 2), np.float32), 0, 8, 0)
    finally:
        plan[index] = kept
    assert np.isfinite(engine.train_step_checked(ones, ones)[0])


_FIT_ONLY = """
import numpy as np
import fastmlp as fm
from fastmlp.kernels import numba_activations as na, numba_train as kt
m = fm.Model([fm.Dense(4, "sigmoid"), fm.Dense(2, "sigmoid")], input_dim=3, loss="mse",
             backend="numba", seed=0)
X = np.random.default_rng(0).random((6, 3)).astype(np.float32)
m.fit(X, X[:, :2], epochs=3, batch_size=6)
print(*sorted({str(s[3]) for s in na.bias_act_forward.signatures}),
      *sorted({str(s[3]) for s in na.act_backward.signatures}),
      len(na._softmax_forward.overloads), len(kt._guard.overloads))
m.train_on_batch(X, X[:, :2])
print(len(kt._guard.overloads))
"""


def test_a_fit_compiles_its_networks_activations_alone_and_no_guard(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", _FIT_ONLY], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    sigmoid = f"Literal[int]({ACTIVATIONS['sigmoid'].code})"
    assert done.stdout.splitlines() == [f"{sigmoid} {sigmoid} 0 0", "1"]
