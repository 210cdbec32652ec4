"""Property-based fuzzing (hypothesis): every compiled backend matches the NumPy
reference on random architectures, data, layouts, optimisers and dtypes, and
never crashes.

Each example draws 0-2 hidden layers of 1-300 units with any hidden activation,
a valid output activation / loss pair, an optimiser, a dtype, a batch of 1-700
rows given C-ordered, Fortran-ordered, strided or as another dtype, and checks
predict, evaluate, gradients and one train step against the reference.

CI runs the "ci" profile (25 examples per backend); set FASTMLP_FUZZ_EXAMPLES=N
for a longer hunt.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

import fastmlp as fm
from fastmlp import activations as act
from fastmlp import optimizers
from fastmlp.backends.reference import NumpyBackend

from strategies import architectures

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])
settings.register_profile("hunt", max_examples=int(os.environ.get("FASTMLP_FUZZ_EXAMPLES", 25)),
                          deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile("hunt" if "FASTMLP_FUZZ_EXAMPLES" in os.environ else "ci")

HIDDEN = [a for a in act.ACTIVATIONS if a != "softmax"]
# Activations whose value or derivative jumps at a point (z values where it does).
KINKS = {"step": [0.0], "sign": [0.0], "relu": [0.0], "leaky_relu": [0.0], "prelu": [0.0],
         "elu": [0.0], "piecewise_linear": [-0.5, 0.5]}
PARAM_RANGES = {"a": (-2.0, 2.0), "alpha": (0.0, 2.0)}
# Error allowed relative to the largest entry of the array compared.
SCALE_TOL = {"float32": 2e-3, "float64": 1e-8}
EPS = {"float32": np.finfo(np.float32).eps, "float64": np.finfo(np.float64).eps}


def layers():
    """0-2 hidden layers, each layer 1-300 units."""
    return architectures(2, 300, PARAM_RANGES, 3)


def optimizer_strategy():
    sgd = st.builds(lambda lr, mu, nest, wd: fm.SGD(lr=lr, momentum=mu, nesterov=nest and mu > 0,
                                                   weight_decay=wd),
                    st.floats(1e-4, 0.5), st.sampled_from([0.0, 0.5, 0.9]), st.booleans(),
                    st.sampled_from([0.0, 1e-3]))
    adam = st.builds(lambda lr, b1, b2, wd: fm.Adam(lr=lr, beta1=b1, beta2=b2, weight_decay=wd),
                     st.floats(1e-5, 0.05), st.sampled_from([0.0, 0.9]),
                     st.sampled_from([0.9, 0.999]), st.sampled_from([0.0, 1e-3]))
    return st.one_of(sgd, adam)


def make_input(rng, n, d, layout):
    """(n, d) standard normal values, laid out or typed as ``layout`` says."""
    if layout == "fortran":
        return np.asfortranarray(rng.normal(size=(n, d)))
    if layout == "strided_rows":
        return rng.normal(size=(2 * n, d))[::2]
    if layout == "strided_cols":
        return rng.normal(size=(n, 3 * d))[:, ::3]
    if layout == "float16":
        return rng.normal(size=(n, d)).astype(np.float16)
    return rng.normal(size=(n, d))


def make_targets(rng, n, units, loss, labels):
    if loss == "cross_entropy":
        y = rng.integers(0, units, size=n)
        return y if labels else np.eye(units)[y]
    if loss == "binary_cross_entropy":
        return rng.integers(0, 2, size=(n, units)) if labels else rng.uniform(size=(n, units))
    return rng.normal(size=(n, units))


def build(spec, input_dim, loss, optimizer, backend, dtype):
    dense = [fm.Dense(u, activation=a, **({act.get(a).param: p} if p is not None else {}))
             for u, a, p in spec]
    return fm.Model(dense, input_dim=input_dim, loss=loss, optimizer=optimizer,
                    backend=backend, dtype=dtype, seed=0)


def near_kinks(model, X, dtype):
    """Rows where some pre-activation sits within rounding of a kink of its activation.

    There two correct implementations may take different branches (a step's
    0 or 1, a ReLU derivative's 0 or 1), so those rows are left out of the
    comparison. "Within rounding" is |z - kink| <= c * (|a| @ |W|)_ij, the scale
    of the dot product's terms, with c a generous multiple of the dtype's eps.
    """
    net = model.net
    theta = model.engine.theta.astype(np.float64)
    ref = NumpyBackend(net, np.float64, theta, None)  # only its forward pass is used
    zs, fs = ref._forward(theta, X.astype(model.dtype).astype(np.float64))
    c = 16 * np.sqrt(net.dims[:-1].max()) * EPS[dtype.name]
    bad = np.zeros(len(X), dtype=bool)
    a = X.astype(np.float64)
    for i, (W, b, _) in enumerate(net.layer_views(theta)):
        name = net.layers[i].activation.name
        # An exact 0 (all terms 0, as after a dead unit) is computed exactly everywhere.
        scale = np.abs(a) @ np.abs(W) + np.abs(b)
        for k in KINKS.get(name, []):
            bad |= (np.abs(zs[i] - k) < c * scale).any(axis=1)
        a = fs[i]
    return bad


def close(got, want, dtype, what, extra=0.0):
    """|got - want| <= tol * max(1, max|want|) + extra, per array: a tolerance relative to its magnitude."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert np.isfinite(got).all() == np.isfinite(want).all(), what
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    err = float(np.abs(got - want).max(initial=0.0))
    assert err <= SCALE_TOL[dtype.name] * scale + extra, \
        f"{what}: largest gap {err:.3g} with values up to {scale:.3g}"


@given(data=st.data(), arch=layers(), optimizer=optimizer_strategy(),
       dtype=st.sampled_from(["float32", "float64"]), n=st.integers(1, 700),
       d=st.integers(1, 300), seed=st.integers(0, 2**32 - 1),
       layout=st.sampled_from(["c", "fortran", "strided_rows", "strided_cols", "float16"]))
def test_compiled_backend_matches_reference(compiled_backend, data, arch, optimizer, dtype, n, d,
                                            seed, layout):
    spec, loss = arch
    labels = data.draw(st.booleans(), label="integer labels")
    rng = np.random.default_rng(seed)
    X = make_input(rng, n, d, layout)
    Y = make_targets(rng, n, spec[-1][0], loss, labels)
    check_against_reference(compiled_backend, spec, loss, optimizer, dtype, X, Y, fuzzing=True)


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("optimizer", [lambda: fm.SGD(lr=0.1, momentum=0.9, weight_decay=1e-3),
                                       lambda: fm.Adam(lr=0.01)], ids=["sgd", "adam"])
def test_every_hidden_activation_once(compiled_backend, hidden, optimizer):
    """A fixed example per activation, so CI covers each one whatever hypothesis draws."""
    rng = np.random.default_rng(4)
    X, labels = rng.normal(size=(50, 6)), rng.integers(0, 3, size=50)
    param = act.get(hidden).param
    spec = [(9, hidden, 0.3 if param else None), (3, "softmax", None)]
    check_against_reference(compiled_backend, spec, "cross_entropy", optimizer(), "float64",
                            X, labels)
    # The same activation on the output, under MSE, and on a 1-unit layer.
    # (alpha 0 is an edge; a linear slope 0 is refused, so linear takes a negative one)
    edge = {"alpha": 0.0, "a": -0.5}.get(param)
    spec = [(1, hidden, edge), (2, hidden, 0.7 if param else None)]
    check_against_reference(compiled_backend, spec, "mse", optimizer(), "float64",
                            X, rng.normal(size=(50, 2)))


def check_against_reference(backend, spec, loss, optimizer, dtype, X, Y, fuzzing=False):
    """predict, evaluate, gradients and one train step of ``backend`` against the reference."""
    d = X.shape[1]
    ref = build(spec, d, loss, optimizer, "numpy", dtype)
    model = build(spec, d, loss, optimizer, backend, dtype)
    assert model.engine.theta.tobytes() == ref.engine.theta.tobytes()
    dtype = model.dtype

    keep = ~near_kinks(ref, X, dtype)
    if fuzzing:
        note(f"rows kept away from kinks: {keep.sum()} of {len(X)}")
        assume(keep.any())
    else:
        assert keep.all(), "pick a fixed example away from kinks"
    X, Y = np.asarray(X)[keep], np.asarray(Y)[keep]

    y_ref, y = ref.predict(X), model.predict(X)
    assert y.dtype == dtype and y.shape == (len(X), spec[-1][0])
    close(y, y_ref, dtype, "predict")
    close(model.evaluate(X, Y), ref.evaluate(X, Y), dtype, "evaluate")
    loss_ref, g_ref = ref.gradients(X, Y)
    loss_c, g_c = model.gradients(X, Y)
    close(loss_c, loss_ref, dtype, "gradients' loss")
    for i, (a, b) in enumerate(zip(g_c, g_ref)):
        close(a, b, dtype, f"gradient {i}")

    # One update: the compiled step must apply the optimiser to its own gradient as the
    # reference update would (so Adam's g / sqrt(v) is not judged on rounding of g ~ 0).
    expected = model.engine.theta.copy()
    state = optimizers.OptimizerState.new(model.optimizer, model.n_params, dtype)
    grad = np.concatenate([g.ravel() for g in g_c]).astype(dtype)
    with np.errstate(all="ignore"):
        optimizers.update(expected, grad, state)
    step_loss = model.train_on_batch(X, Y)
    close(step_loss, loss_ref, dtype, "train step loss")
    close(model.engine.theta, expected, dtype, "weights after one step",
          extra=optimizer.lr * SCALE_TOL[dtype.name] * max(1.0, float(np.abs(grad).max())))
    close(model.engine.state.buffers, state.buffers, dtype, "optimiser state after one step")
    assert int(model.engine.state.step[0]) == 1
    assert np.isfinite(model.predict(X)).all()


@given(n=st.integers(1, 700), units=st.integers(1, 300), d=st.integers(1, 300),
       seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 700),
       dtype=st.sampled_from(["float32", "float64"]))
def test_compiled_fit_matches_reference_for_one_epoch(compiled_backend, n, units, d, seed, batch,
                                                       dtype):
    """train_epoch with any batch size (the last batch short) matches the reference."""
    rng = np.random.default_rng(seed)
    X, Y = rng.normal(size=(n, d)), rng.normal(size=(n, 2))
    models = [fm.Model([fm.Dense(units, activation="tanh"), fm.Dense(2)], input_dim=d,
                       optimizer=fm.SGD(lr=1e-3), backend=b, dtype=dtype, seed=1)
              for b in ("numpy", compiled_backend)]
    losses = [m.fit(X, Y, epochs=1, batch_size=batch).history["loss"][0] for m in models]
    dtype = models[0].dtype
    close(losses[1], losses[0], dtype, "epoch loss")
    close(models[1].engine.theta, models[0].engine.theta, dtype, "weights after an epoch")
