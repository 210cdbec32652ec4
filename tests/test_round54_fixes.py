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


def test_a_weight_the_dtype_cannot_hold_is_refused_naming_its_layer():
    """A float64 prelu model's alpha of 1e39 taken to float32 was refused as "theta has a
    value too large for float32 (1e+39 at index (9,))", where the README promised the
    layer; set_state's refusals name it too."""
    prelu = fm.Model([fm.Dense(3, "prelu", alpha=1e39)], input_dim=2, dtype="float64")
    with pytest.raises(ValueError, match=r"1e\+39 at index \(9,\)\): layer 1's prelu alpha\[0\]"):
        prelu.to(dtype="float32")
    model = fm.Model([fm.Dense(3, "tanh"), fm.Dense(2, "linear")], input_dim=2, loss="mse",
                     dtype="float32")
    for index, value, says in [(10, 1e300, "too large for float32"), (10, np.nan, "NaN or inf"),
                               (3, np.inf, "NaN or inf"), (7, -1e39, "too large")]:
        state = model.get_state()
        state["theta"] = state["theta"].astype(np.float64)
        state["theta"][index] = value
        with pytest.raises(ValueError, match=says) as refused:
            model.set_state(state)
        # W1 (2, 3) is theta[0:6], b1 theta[6:9], W2 (3, 2) theta[9:15]
        where = {10: "layer 2's W[0, 1]", 3: "layer 1's W[1, 0]", 7: "layer 1's b[1]"}[index]
        assert str(refused.value).endswith(f": {where}")
