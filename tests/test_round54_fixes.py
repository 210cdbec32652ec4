"""Hostile round 54, an audit of the README's claims against what runs: fit given rows in
the model's own memory (a view of ``model.engine.theta``) read them as the steps wrote
them, numba's weights then differing from the other backends' by 1e-2."""
import numpy as np
import pytest

import fastmlp as fm


def _model(backend, dtype, optimizer):
    return fm.Model([fm.Dense(4, "tanh"), fm.Dense(2, "linear")], input_dim=3, loss="mse",
                    optimizer=optimizer, backend=backend, dtype=dtype, seed=0)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fit_on_rows_of_the_models_own_memory_trains_on_them_as_they_were(backend, dtype,
                                                                        optimizer):
    """X a view of the weights, Y of the optimiser's buffers (Adam's moments, or
    plain SGD's): the same weights as a fit given copies of them."""
    make = (lambda: fm.SGD(0.1)) if optimizer == "sgd" else (lambda: fm.Adam(1e-2))
    model = _model(backend, dtype, make())
    X = model.engine.theta[:12].reshape(4, 3)
    buffers = model.engine.state.buffers.reshape(-1)
    Y = buffers[:8].reshape(4, 2) if len(buffers) >= 8 else np.ones((4, 2), dtype=dtype)
    copied = _model(backend, dtype, make())
    copied.fit(X.copy(), Y.copy(), epochs=3, batch_size=2)
    model.fit(X, Y, epochs=3, batch_size=2)
    for got, want in zip(model.get_weights(), copied.get_weights()):
        np.testing.assert_array_equal(got, want)
