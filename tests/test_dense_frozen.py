"""A Dense layer is fixed once made: a model copies its units, activation and
parameter into its kernels' plan when built, so a later change would reach save()
and to_onnx() but not training or predictions (found by a hostile pass)."""
import copy
import pickle

import numpy as np
import pytest

import fastmlp as fm


@pytest.mark.parametrize("name, value", [("param", 0.5), ("units", 7), ("activation", "relu"),
                                         ("anything_new", 1)])
def test_a_model_layer_cannot_be_changed(name, value):
    model = fm.Model([fm.Dense(3, "leaky_relu", alpha=0.2), fm.Dense(2)], input_dim=2,
                     backend="numpy")
    with pytest.raises(AttributeError, match="cannot be changed once made"):
        setattr(model.layers[0], name, value)
    assert model.layers[0].config() == {"units": 3, "activation": "leaky_relu", "alpha": 0.2}


def test_saved_parameter_is_the_one_the_model_trains_with(tmp_path):
    layer = fm.Dense(3, "leaky_relu", alpha=0.2)
    model = fm.Model([layer, fm.Dense(2)], input_dim=2, backend="numpy", seed=0)
    with pytest.raises(AttributeError):
        layer.param = 0.9
    model.save(tmp_path / "m.npz")
    loaded = fm.load(tmp_path / "m.npz")
    X = np.linspace(-2, 2, 10).reshape(5, 2)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


@pytest.mark.parametrize("layer", [fm.Dense(3), fm.Dense(4, "prelu", alpha=0.3),
                                   fm.Dense(1, "linear", a=2.0), fm.Dense(5, "softmax")])
def test_a_layer_pickles_and_copies_to_the_same_config(layer):
    for twin in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer), copy.copy(layer),
                 fm.Dense.from_config(layer.config())):
        assert type(twin) is fm.Dense and twin.config() == layer.config()
        assert repr(twin) == repr(layer)
