"""Arguments that share memory with the data, the output or the model's own arrays.

A public method must give the numbers it gives for copies of its arguments: an
``out`` overlapping X or Y (one workspace sliced off by one), or weights, a state
or a gradient that are views of the model's own theta and optimiser buffers (which
``model.engine`` exposes). Each case failed before the copies in fastmlp.model:
the compiled kernels wrote the later layers' gradient before reading the first
layer's X, the reference zeroed ``out`` first, pieces were written one by one and
momentum was scaled before the gradient was read."""
import copy

import numpy as np
import pytest

import fastmlp as fm


def _model(backend, dtype, optimizer=None):
    return fm.Model([fm.Dense(5, "tanh"), fm.Dense(3)], input_dim=4, loss="mse",
                    optimizer=optimizer or fm.SGD(0.1, momentum=0.9), backend=backend,
                    dtype=dtype, seed=0)


def _data(dtype, n=40):
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, 4)).astype(dtype), rng.normal(size=(n, 3)).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [6, 40, 2000])
@pytest.mark.parametrize("overlap", ["X", "Y"])
def test_gradient_vector_out_overlapping_x_or_y(backend, dtype, n, overlap):
    model = _model(backend, dtype)
    X, Y = _data(dtype, n)
    loss, clean = model.gradient_vector(X, Y)
    p = model.engine.theta.size
    data = X if overlap == "X" else Y
    buf = np.zeros(data.size + p, dtype=dtype)
    buf[:data.size] = data.reshape(-1)
    shared = buf[:data.size].reshape(data.shape)   # the data, in buf
    out = buf[data.size - 1:data.size - 1 + p]     # overlaps its last element
    args = (shared, Y) if overlap == "X" else (X, shared)
    got_loss, got = model.gradient_vector(*args, out=out)
    assert got is out
    assert got_loss == loss
    np.testing.assert_array_equal(out, clean)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gradient_vector_out_on_the_models_own_theta(backend, dtype):
    model = _model(backend, dtype)
    X, Y = _data(dtype)
    twin = copy.deepcopy(model)
    loss, clean = twin.gradient_vector(X, Y)
    got_loss, got = model.gradient_vector(X, Y, out=model.engine.theta)
    assert got_loss == loss
    np.testing.assert_array_equal(got, clean)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_set_weights_with_views_of_the_models_own_theta(backend, dtype):
    model = _model(backend, dtype)
    twin = copy.deepcopy(model)
    theta = model.engine.theta
    # each piece a view of theta at another offset: written one by one, the later
    # pieces would read values the earlier ones had overwritten
    views = []
    start = theta.size
    for shape in model.net.shapes:
        size = int(np.prod(shape))
        start -= size
        views.append(theta[start:start + size].reshape(shape))
    twin.set_weights([v.copy() for v in views])
    model.set_weights(views)
    np.testing.assert_array_equal(model.get_state()["theta"], twin.get_state()["theta"])


@pytest.mark.parametrize("optimizer", [lambda: fm.SGD(0.1, momentum=0.9),
                                       lambda: fm.Adam(0.01)])
def test_apply_gradient_with_a_view_of_the_optimiser_state(backend, optimizer):
    model = _model(backend, "float64", optimizer())
    X, Y = _data("float64")
    model.train_on_batch(X, Y)                  # non-zero momentum / moments
    twin = copy.deepcopy(model)
    buffer = model.engine.state.buffers[0]      # momentum v, or Adam's m
    twin.apply_gradient(buffer.copy())
    model.apply_gradient(buffer)
    for key in ("theta", "opt_buffers"):
        np.testing.assert_array_equal(model.get_state()[key], twin.get_state()[key])

