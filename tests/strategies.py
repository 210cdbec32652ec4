"""Hypothesis strategies the fuzz suites share: networks a hostile user might build."""
from hypothesis import strategies as st

from fastmlp import activations as act


def param_of(name, ranges):
    """The activation ``name``'s parameter, drawn from ``ranges`` ({param: (lo, hi)}),
    or None when it has none."""
    p = act.get(name).param
    if p == "a":   # a linear layer of slope 0 is refused (it outputs 0, learns nothing)
        return st.floats(*ranges[p]).filter(lambda a: a != 0)
    return st.floats(*ranges[p]) if p else st.none()


@st.composite
def architectures(draw, max_hidden, max_units, param_ranges, cross_entropy_weight):
    """([(units, activation, param)], loss): 0..max_hidden hidden layers, then an output
    layer, each of 1..max_units units (a softmax at least 2); the output with MSE, or
    softmax + cross-entropy / sigmoid + binary cross-entropy, those two
    ``cross_entropy_weight`` times as likely as one MSE output."""
    hidden = []
    # from the table as it is now (tests/test_add_one adds a row at runtime)
    hidden_activations = [a for a in act.ACTIVATIONS if a != "softmax"]
    for _ in range(draw(st.integers(0, max_hidden))):
        name = draw(st.sampled_from(hidden_activations))
        hidden.append((draw(st.integers(1, max_units)), name,
                       draw(param_of(name, param_ranges))))
    output, loss = draw(st.sampled_from(
        [(name, "mse") for name in act.ACTIVATIONS]
        + [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy")]
        * cross_entropy_weight))
    units = draw(st.integers(2 if output == "softmax" else 1, max_units))
    return hidden + [(units, output, draw(param_of(output, param_ranges)))], loss
