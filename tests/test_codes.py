"""One module of codes (fastmlp.codes), taken by every table and kernel; an unknown
code reaching any backend raises instead of computing something.

Also the Numba kernels' expm1 (ELU) and exp underflow, which the code tables rely on.
"""
import ast
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import activations, codes, losses, optimizers
from fastmlp.backends import available_backends, get_backend
from fastmlp.network import Network
from fastmlp.optimizers import OptimizerState

ROOT = Path(__file__).resolve().parents[1]
CODE_NAMES = [n for n in vars(codes) if n.isupper()]
BACKENDS = available_backends()
COMPILED = [b for b in BACKENDS if b != "numpy"]


def _setup_module():
    """setup.py as a module, without running setup() (its codes_pxd is what we test)."""
    source = (ROOT / "setup.py").read_text()
    tree = ast.parse(source)
    tree.body = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef))
                 or (isinstance(n, ast.Assign) and n.targets[0].id in ("CODES", "CODES_PXD"))]
    namespace = {}
    exec(compile(tree, "setup.py", "exec"), namespace)
    return namespace


# -- one module of codes ------------------------------------------------------------

def test_codes_module_is_integers_only_and_imports_nothing():
    tree = ast.parse((ROOT / "fastmlp" / "codes.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    values = {n: getattr(codes, n) for n in CODE_NAMES}
    assert all(type(v) is int for v in values.values())


def test_tables_take_their_codes_from_the_codes_module():
    for a in activations.ACTIVATIONS.values():
        assert a.code == getattr(codes, a.name.upper()), a.name
    for l in losses.LOSSES.values():
        assert l.code == getattr(codes, l.name.upper()), l.name
    for name, cls in optimizers.OPTIMIZERS.items():
        assert cls.code == getattr(codes, f"{name.upper()}_CODE"), name
    for name in ("LR", "MOMENTUM", "NESTEROV", "WEIGHT_DECAY", "BETA1", "BETA2", "EPS"):
        assert getattr(optimizers, name) == getattr(codes, name)
    assert len(fm.SGD().hyper()) == len(fm.Adam().hyper()) == codes.N_HYPER
    # codes are distinct within each table
    assert len(activations.BY_CODE) == len(activations.ACTIVATIONS)
    assert len(losses.BY_CODE) == len(losses.LOSSES)
    assert len({c.code for c in optimizers.OPTIMIZERS.values()}) == len(optimizers.OPTIMIZERS)


def test_numba_kernels_use_the_codes_module():
    pytest.importorskip("numba")
    from fastmlp.kernels import numba_train
    assert (numba_train.TRAIN, numba_train.GRADIENT) == (codes.TRAIN, codes.GRADIENT)
    # no kernel file defines codes of its own
    for path in (ROOT / "kernels").glob("numba_*.py"):
        text = path.read_text()
        assert not re.search(r"^(STEP|RELU|MSE|SGD_CODE|ADAM_CODE|LR|TRAIN)\b.*=", text, re.M), path


def test_no_kernel_file_declares_codes_but_the_generated_one():
    names = "|".join(CODE_NAMES)
    for path in list((ROOT / "kernels").glob("*.pxd")) + list((ROOT / "kernels").glob("*.pyx")):
        if path.name != "_codes.pxd":
            assert not re.search(rf"^\s+(H_)?({names})\s*=", path.read_text(), re.M), path.name


def test_generated_pxd_declares_every_code():
    text = _setup_module()["codes_pxd"]((ROOT / "fastmlp" / "codes.py").read_text())
    declared = dict(re.findall(r"^    (\w+) = (-?\d+)$", text, re.M))
    assert {k: int(v) for k, v in declared.items()} == {n: getattr(codes, n) for n in CODE_NAMES}


def test_generator_refuses_anything_but_integer_codes():
    codes_pxd = _setup_module()["codes_pxd"]
    with pytest.raises(ValueError, match="only NAME = integer"):
        codes_pxd("RELU = 6\nELU = 'nine'\n")


@pytest.mark.skipif("cython" not in BACKENDS, reason="Cython extension not built")
def test_built_extension_matches_the_codes_module():
    """Fails when the extension was built from another fastmlp/codes.py: rebuild."""
    from fastmlp.kernels import cython_mlp
    assert cython_mlp.CODES == {n: getattr(codes, n) for n in CODE_NAMES}
    pxd = ROOT / "kernels" / "_codes.pxd"
    if pxd.exists():  # a source tree, built in place
        assert pxd.read_text() == _setup_module()["codes_pxd"](
            (ROOT / "fastmlp" / "codes.py").read_text())
    # the codes the kernels' dispatch knows are exactly the tables'
    known = cython_mlp.known_codes()
    assert known["activation"] == sorted(activations.BY_CODE)
    assert known["loss"] == sorted(losses.BY_CODE)
    assert known["optimizer"] == sorted(c.code for c in optimizers.OPTIMIZERS.values())


# -- unknown codes raise --------------------------------------------------------------

UNKNOWN = 99


def _net(loss="mse", output="tanh"):
    return Network([fm.Dense(4, "relu"), fm.Dense(2, output)], 3, loss)


def _build(backend, net, dtype="float64", optimizer=None):
    theta = net.init_params(np.random.default_rng(0), np.float64).astype(dtype)
    state = OptimizerState.new(optimizer or fm.SGD(lr=0.1), net.n_params, np.dtype(dtype))
    return get_backend(backend)(net, np.dtype(dtype), theta, state)


def _data(net, dtype="float64"):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((5, net.input_dim)).astype(dtype)
    T = rng.uniform(0, 1, (5, net.output_dim)).astype(dtype)
    return X, T


def _every_call(engine, net, dtype="float64"):
    """Each contract call; each must raise ValueError naming an unknown code."""
    X, T = _data(net, dtype)
    grad = np.empty(net.n_params, dtype=dtype)
    perm = np.arange(len(X), dtype=np.int64)
    return [lambda: engine.predict(X), lambda: engine.evaluate(X, T),
            lambda: engine.loss_and_gradient(X, T, grad), lambda: engine.train_step(X, T),
            lambda: engine.train_epoch(X, T, perm, 2)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layer", [0, 1])
def test_unknown_activation_code_raises(backend, layer):
    net = _net()
    net.act_codes[layer] = UNKNOWN
    with pytest.raises(ValueError, match="unknown activation code"):
        engine = _build(backend, net)  # the Cython Engine and the reference refuse it here
        for call in _every_call(engine, net):
            with pytest.raises(ValueError, match="unknown activation code"):
                call()
        raise ValueError("unknown activation code: every call refused it")


@pytest.mark.parametrize("backend", COMPILED)
def test_unknown_loss_code_raises(backend):
    net = _net()
    net.loss = dataclasses.replace(net.loss, code=UNKNOWN)
    with pytest.raises(ValueError, match="unknown loss code"):
        engine = _build(backend, net)
        for call in _every_call(engine, net)[1:]:  # predict needs no loss
            with pytest.raises(ValueError, match="unknown loss code"):
                call()
        raise ValueError("unknown loss code: every call refused it")


def test_unknown_loss_code_raises_in_the_reference():
    net = _net()
    net.loss = dataclasses.replace(net.loss, code=UNKNOWN)
    engine = _build("numpy", net)
    X, T = _data(net)
    with pytest.raises(ValueError, match="unknown loss code"):
        engine.loss_and_gradient(X, T, np.empty(net.n_params))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optimizer", [fm.SGD(lr=0.1), fm.Adam()], ids=["sgd", "adam"])
def test_unknown_optimizer_code_raises_and_leaves_the_state(backend, optimizer):
    net = _net()
    engine = _build(backend, net, optimizer=optimizer)
    engine.state.code = UNKNOWN
    before, step = engine.theta.copy(), int(engine.state.step[0])
    for call in _every_call(engine, net)[3:]:  # train_step, train_epoch
        with pytest.raises(ValueError, match="unknown optimizer code"):
            call()
    np.testing.assert_array_equal(engine.theta, before)
    assert int(engine.state.step[0]) == step


def test_unknown_numba_run_mode_raises():
    pytest.importorskip("numba")
    from fastmlp.kernels import numba_train as kt
    net = _net()
    plan, ws, grad = kt.new_workspace(net, np.dtype("float64"), 8)
    X, T = _data(net)
    theta = net.init_params(np.random.default_rng(0), np.float64)
    hyper = fm.SGD().hyper()
    with pytest.raises(ValueError, match="unknown run mode"):
        kt.run(theta, grad, X, T, np.zeros((1, 0), np.int64), len(X), np.zeros((2, net.n_params)),
               hyper, np.zeros(1, np.int64), codes.SGD_CODE, ws, plan, 7, np.zeros(0), -1.0,
               np.zeros(0), np.zeros(0), np.empty(3 * net.n_params))


def test_reference_tables_refuse_unknown_codes():
    with pytest.raises(ValueError, match=r"unknown activation code 99; known codes are \[0, 1"):
        activations.BY_CODE[UNKNOWN]
    with pytest.raises(KeyError):  # still a KeyError for dict-minded callers
        losses.BY_CODE[UNKNOWN]
    assert activations.BY_CODE.get(UNKNOWN) is None and UNKNOWN not in losses.BY_CODE
    state = OptimizerState.new(fm.SGD(), 3, np.float64)
    state.code = UNKNOWN
    theta = np.ones(3)
    with pytest.raises(ValueError, match="unknown optimizer code 99"):
        optimizers.update(theta, np.ones(3), state)
    assert state.step[0] == 0 and (theta == 1).all()


# -- the Numba kernels' expm1 and exp ----------------------------------------------------

@pytest.fixture(scope="module")
def numba_exp():
    numba = pytest.importorskip("numba")
    from fastmlp.kernels.numba_math import exp, expm1

    @numba.njit
    def both(x, e, em1):
        for i in range(x.shape[0]):
            e[i] = exp(x[i])
            em1[i] = expm1(x[i])

    def run(x):
        e, em1 = np.empty_like(x), np.empty_like(x)
        both(x, e, em1)
        return e, em1
    return run


@pytest.mark.parametrize("dtype, tol", [("float32", 3e-7), ("float64", 1e-13)])
def test_numba_expm1_is_accurate_near_zero_and_everywhere(numba_exp, dtype, tol):
    x = np.concatenate([np.linspace(-100, 80, 20001), np.geomspace(1e-30, 1, 2001),
                        -np.geomspace(1e-30, 1, 2001), np.linspace(-1, 1, 20001)]).astype(dtype)
    x = x[x != 0]
    _, em1 = numba_exp(x)
    ref = np.expm1(x.astype(np.float64))
    assert np.max(np.abs(em1 - ref) / np.abs(ref)) <= tol
    assert numba_exp(np.zeros(1, dtype))[1][0] == 0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numba_exp_flushes_to_zero_below_underflow(numba_exp, dtype):
    tiny = np.finfo(dtype).tiny
    x = np.array([-1000.0, -750.0, -710.0, -100.0, -89.0], dtype)
    e, em1 = numba_exp(x)
    ref = np.exp(x.astype(np.float64))
    # 0 where e^x is below the smallest normal number, else within float rounding
    assert np.all(np.where(ref < tiny, e <= ref * 2 + tiny * 0.5, np.isclose(e, ref, rtol=1e-6)))
    assert e[0] == 0 and em1[0] == -1
    e, em1 = numba_exp(np.array([np.nan], dtype))
    assert np.isnan(e[0]) and np.isnan(em1[0])
