"""Hostile round 38: what the testers found, fixed (the cross-entropy of 0 targets beside
a -inf log-softmax is in test_hostile_numerics.py)."""
import numpy as np
import pytest

import fastmlp as fm


def test_a_value_input_scaling_made_too_large_is_shown_with_what_it_was(backend):
    """Round 38a: the error showed the scaled value, 1e+295, which is nowhere in the
    user's X, without saying the model's scaling made it; it now says so, with the
    value in X and the column's mean and scale. Without scaling, or where scaling
    leaves the value as it was, the message is as before."""
    model = fm.Model([fm.Dense(1)], input_dim=2, backend=backend, seed=0)
    X = np.array([[1.0, 1e-5]] * 3)
    model.set_input_scaling(np.zeros(2), np.array([1.0, 1e-300]))
    for call in (model.predict, lambda X: model.evaluate(X, np.zeros((3, 1))),
                 lambda X: model.train_on_batch(X, np.zeros((3, 1)))):
        with pytest.raises(ValueError, match=(
                r"^X has a value too large for float32 \(1.0000000000000001e\+295 at row 0, "
                r"column 1, which the model's input scaling made of 1e-05: \(x - mean\) / "
                r"scale with mean 0.0 and scale 1e-300\)$")):
            call(X)
    for scaling in [(np.zeros(2), np.ones(2)), (None, None)]:
        model.set_input_scaling(*scaling)
        with pytest.raises(ValueError, match=r"^X has a value too large for float32 "
                                             r"\(1e\+300 at row 2, column 0\)$"):
            model.predict(np.array([[1.0, 0.0]] * 2 + [[1e300, 0.0]]))
