"""Fixes for the third round of hostile API testing (/tmp/hostile/api, /tmp/hostile/eco):
feature names checked by predict, two numeric labels for one sigmoid unit, label dtypes
a saved model cannot hold, accuracy of multi-label outputs, bad seeds, pandas' nullable
columns, a single callback, and activation parameters the dtype cannot hold. Each test
failed before its fix."""
import json

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import metrics
from helpers import saved_arrays, saved_header

pd = pytest.importorskip("pandas")


def _frame(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"height": rng.normal(size=n), "width": rng.normal(size=n),
                         "depth": rng.normal(size=n)})


def _binary(backend, units=1, seed=0):
    return fm.Model([fm.Dense(8, "tanh"), fm.Dense(units, "sigmoid")], input_dim=3,
                    loss="binary_cross_entropy", optimizer=fm.Adam(0.05), backend=backend,
                    seed=seed)


# -- 1. predict and predict_classes check feature names ------------------------------------

def test_predict_refuses_reordered_or_renamed_columns(backend, tmp_path):
    frame = _frame()
    species = np.where(frame.height > 0, "tall", "short")
    m = fm.Model([fm.Dense(8, "tanh"), fm.Dense(2, "softmax")], input_dim=3,
                 loss="cross_entropy", optimizer=fm.Adam(0.05), backend=backend, seed=0)
    m.fit(frame, species, epochs=20)
    path = str(tmp_path / "m.fastmlp")
    m.save(path)
    swapped = frame[["width", "height", "depth"]]          # the same data, columns moved
    renamed = frame.rename(columns={"height": "h"})
    for model in (m, fm.load(path, backend=backend)):
        np.testing.assert_array_equal(model.predict(frame), model.predict(frame.to_numpy()))
        for bad in (swapped, renamed):
            for call in (model.predict, model.predict_classes):
                with pytest.raises(ValueError, match=r"X has feature names \[.*\] but the "
                                                     r"model was trained with \['height'"):
                    call(bad)


def test_predict_on_a_laid_out_array_does_not_look_for_names(backend):
    """The 1-row fast path stays O(1): only a DataFrame pays for the name check."""
    m = fm.Model([fm.Dense(4, "tanh"), fm.Dense(1)], input_dim=3, backend=backend, seed=0)
    m.fit(_frame(), np.zeros((60, 1)), epochs=1)

    def refuse(X):
        raise AssertionError("the name check ran on a laid-out array")

    m._checked_feature_names = refuse
    assert m.predict(np.zeros((1, 3), dtype=np.float32)).shape == (1, 1)


# -- 2. two numeric labels for one sigmoid unit ---------------------------------------------

@pytest.mark.parametrize("pair", [(3, 7), (-1, 1), (1, 2), (-5.0, 2.0)])
def test_one_sigmoid_unit_takes_two_numeric_labels(backend, pair, tmp_path):
    frame = _frame(80)
    X = frame.to_numpy()
    y = np.where(X[:, 0] > 0, pair[1], pair[0])
    m = _binary(backend)
    m.fit(X, y, epochs=60, batch_size=16)
    np.testing.assert_array_equal(m.classes_, np.array(pair))
    assert np.mean(m.predict_classes(X) == y) > 0.9
    codes = (y == pair[1]).astype(float).reshape(-1, 1)
    assert m.evaluate(X, y) == pytest.approx(m.evaluate(X, codes))
    # a batch holding only one of the two labels is labels too, once classes_ are known
    one = y == pair[1]
    assert m.evaluate(X[one], y[one]) == pytest.approx(m.evaluate(X[one], codes[one]))
    path = str(tmp_path / "b.fastmlp")
    m.save(path)
    np.testing.assert_array_equal(fm.load(path).predict_classes(X), m.predict_classes(X))


def test_targets_in_unit_interval_stay_targets(backend):
    X = _frame(20).to_numpy()
    for Y in (np.array([0, 1] * 10), np.linspace(0, 1, 20), np.full(20, 0.25)):
        m = _binary(backend)
        m.fit(X, Y, epochs=1)
        assert m.classes_ is None
        assert m.evaluate(X, Y) == pytest.approx(m.evaluate(X, Y.reshape(-1, 1).astype(float)))


@pytest.mark.parametrize("Y,units,match", [
    (np.array([1, 2, 3] * 4), 1, r"must lie in \[0, 1\], or be class labels with exactly two "
                                 r"values .* 3 distinct values \(1, 2, 3\)"),
    (np.array([0.5, 1.5] * 6), 1, r"must lie in \[0, 1\], or be class labels with exactly two"),
    (np.array([3] * 12), 1, r"1 distinct values \(3\)"),
    (np.array([[1, 2]] * 12), 2, r"multi-label targets for binary_cross_entropy \(2 sigmoid "
                                 r"outputs\) must be 0/1"),
])
def test_other_binary_targets_are_refused_naming_the_problem(backend, Y, units, match):
    m = _binary(backend, units)
    with pytest.raises(ValueError, match=match):
        m.fit(_frame(12).to_numpy(), Y, epochs=1)
    assert m.classes_ is None


# -- 3. label dtypes a saved model can hold ---------------------------------------------------

def _softmax(backend):
    return fm.Model([fm.Dense(4, "tanh"), fm.Dense(3, "softmax")], input_dim=3,
                    loss="cross_entropy", backend=backend, seed=0)


def test_string_dtype_labels_are_stored_as_str_and_save(backend, tmp_path):
    X = _frame(12).to_numpy()
    y = np.array(["cat", "dog", "eel"] * 4, dtype=np.dtypes.StringDType())
    m = _softmax(backend)
    path = str(tmp_path / "ck.fastmlp")
    m.fit(X, y, epochs=2, callbacks=[fm.ModelCheckpoint(path, monitor="loss")])
    assert m.classes_.dtype == np.dtype("<U3")
    assert m.classes_.tolist() == ["cat", "dog", "eel"]
    m.save(path)
    loaded = fm.load(path)
    np.testing.assert_array_equal(loaded.predict_classes(X), m.predict_classes(X))
    assert m.evaluate(X, y) == pytest.approx(m.evaluate(X, np.array(y.tolist())))


def test_string_dtype_labels_with_a_missing_value_are_named():
    y = np.array(["cat", None, "eel"] * 4, dtype=np.dtypes.StringDType(na_object=None))
    with pytest.raises(TypeError, match=r"all numbers or all strings, got \['NoneType', 'str'\]"):
        _softmax("numpy").fit(_frame(12).to_numpy(), y, epochs=1)


@pytest.mark.parametrize("y", [
    np.array(["2020-01-01", "2020-01-02", "2020-01-03"] * 4, dtype="M8[D]"),
    np.array([1, 2, 3] * 4, dtype="m8[s]"),
    np.array([b"car", b"bike", b"bus"] * 4),
], ids=["datetime64", "timedelta64", "bytes"])
@pytest.mark.parametrize("units", [3, 1])
def test_labels_save_cannot_hold_are_refused_by_fit(y, units):
    if units == 1:
        y = y[np.arange(12) % 3 != 2]   # two labels for one sigmoid unit
    m = (_softmax("numpy") if units == 3 else _binary("numpy"))
    with pytest.raises(TypeError, match=r"cannot be saved with the model .* convert them "
                                        r"first, e\.g\. Y\.astype\(str\)"):
        m.fit(_frame(len(y)).to_numpy(), y, epochs=1)
    assert m.classes_ is None
    m.fit(_frame(len(y)).to_numpy(), y.astype(str), epochs=1)   # what the message advises
    assert m.classes_.dtype.kind == "U"


# -- 4. accuracy of several sigmoid outputs -------------------------------------------------

def test_accuracy_of_multi_label_outputs_is_per_output(backend):
    X = _frame(120).to_numpy()
    Y = (X > 0).astype(float)          # rows with 0 to 3 ones: argmax would be wrong
    m = _binary(backend, units=3)
    stop = fm.EarlyStopping("accuracy", patience=100)
    h = m.fit(X, Y, epochs=15, metrics=["accuracy", "binary_accuracy"], callbacks=stop,
              validation_split=0.25)
    assert h.history["accuracy"] == h.history["binary_accuracy"]
    assert h.history["val_accuracy"] == h.history["val_binary_accuracy"]
    P = m.predict(X[:90])
    assert h.history["accuracy"][-1] == pytest.approx(np.mean((P > 0.5) == (Y[:90] > 0.5)))
    assert stop.best == max(h.history["accuracy"])


def test_metrics_get_maps_accuracy_by_loss():
    P = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.4]])
    T = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    (_, multi_label), = metrics.get(["accuracy"], "binary_cross_entropy")
    (_, softmax), = metrics.get(["accuracy"], "cross_entropy")
    assert multi_label(P, T) == 1.0 and softmax(P, T) == 0.5


# -- 5. a bad seed names seed ---------------------------------------------------------------

@pytest.mark.parametrize("seed,exc", [(-1, ValueError), (1.5, TypeError), ("abc", TypeError),
                                      ([1, -2], ValueError)])
def test_bad_seed_is_named(backend, seed, exc):
    with pytest.raises(exc, match=r"^seed must be None or an integer >= 0"):
        fm.Model([fm.Dense(2)], input_dim=3, backend=backend, seed=seed)


# -- 6. pandas' nullable and bool columns ---------------------------------------------------

def _mixed_frame(n=20):
    rng = np.random.default_rng(1)
    return pd.DataFrame({"a": rng.normal(size=n),
                         "n": pd.array(np.arange(n) % 5, dtype="Int64"),
                         "f": pd.array(rng.normal(size=n), dtype="Float64"),
                         "b": pd.array([True, False] * (n // 2), dtype="boolean"),
                         "flag": [False, True] * (n // 2)})


def test_nullable_and_bool_columns_are_numbers(backend):
    frame = _mixed_frame()
    plain = frame.astype(np.float64).to_numpy()
    Y = np.random.default_rng(2).normal(size=(20, 1))
    a = fm.Model([fm.Dense(4, "tanh"), fm.Dense(1)], input_dim=5, backend=backend, seed=0)
    b = fm.Model([fm.Dense(4, "tanh"), fm.Dense(1)], input_dim=5, backend=backend, seed=0)
    a.fit(frame, Y, epochs=3, batch_size=4)
    b.fit(plain, Y, epochs=3, batch_size=4)
    np.testing.assert_array_equal(a.get_weights()[0], b.get_weights()[0])
    np.testing.assert_array_equal(a.predict(frame), b.predict(plain))
    a.set_input_scaling(plain.mean(0), plain.std(0))    # scaled in float64, from the frame
    b.set_input_scaling(plain.mean(0), plain.std(0))
    np.testing.assert_array_equal(a.predict(frame), b.predict(plain))


def test_missing_value_is_named_by_row_and_column(backend):
    frame = _mixed_frame()
    frame.loc[7, "f"] = pd.NA
    m = fm.Model([fm.Dense(1)], input_dim=5, backend=backend, seed=0)
    for call in (m.predict, lambda X: m.fit(X, np.zeros((20, 1)))):
        with pytest.raises(ValueError, match=r"X contains NaN or inf \(first at row 7, column 2\)"):
            call(frame)


def test_a_column_that_is_not_numbers_is_named(backend):
    frame = _mixed_frame()
    frame["colour"] = ["red", "green"] * 10
    frame["when"] = pd.Timestamp("2020-01-01")
    m = fm.Model([fm.Dense(1)], input_dim=7, backend=backend, seed=0)
    with pytest.raises(TypeError, match=r"X must be numeric: columns 'colour' \(.*\), 'when' "
                                        r"\(datetime64.*\) are not numbers or bools"):
        m.predict(frame)


# -- 7. one callback, and a class instead of an instance ----------------------------------

def test_a_single_callback_is_taken(backend):
    X = _frame(20).to_numpy()
    m = fm.Model([fm.Dense(1)], input_dim=3, backend=backend, seed=0)
    stop = fm.EarlyStopping("loss", patience=0, min_delta=1e9)   # stops after epoch 2
    h = m.fit(X, np.zeros((20, 1)), epochs=10, callbacks=stop)
    assert len(h.epoch) == 2 and stop.stopped_epoch == 1


@pytest.mark.parametrize("callbacks,match", [
    (fm.EarlyStopping, r"pass an instance, EarlyStopping\(\.\.\.\), not the class"),
    ([fm.ModelCheckpoint], r"pass an instance, ModelCheckpoint\(\.\.\.\), not the class"),
    (5, "callbacks must be a callback or a list of them, got int 5"),
    ("loss", "callbacks must be a callback or a list of them, got str 'loss'"),
])
def test_bad_callbacks_are_named(callbacks, match):
    m = fm.Model([fm.Dense(1)], input_dim=3, backend="numpy", seed=0)
    with pytest.raises(TypeError, match=match):
        m.fit(np.zeros((4, 3)), np.zeros((4, 1)), callbacks=callbacks)


# -- an activation parameter the model's dtype cannot hold ------------------------------

_PARAMETERS = [("linear", "a"), ("leaky_relu", "alpha"), ("elu", "alpha"), ("prelu", "alpha")]


@pytest.mark.parametrize("activation,name", _PARAMETERS)
@pytest.mark.parametrize("value", [1e39, -1e39, 1e308])
def test_an_activation_parameter_too_large_for_float32_is_refused(activation, name, value):
    # in float32 it would be inf, and so would every output it scales (all backends agreed
    # on -inf and NaN before: nothing refused it)
    with pytest.raises(ValueError, match=rf"layer 1's {name}=.* is too large for float32"):
        fm.Model([fm.Dense(3, activation, **{name: value}), fm.Dense(1)], input_dim=2,
                 dtype="float32", backend="numpy")


@pytest.mark.parametrize("activation,name", _PARAMETERS)
def test_the_same_parameter_is_fine_in_float64(activation, name):
    model = fm.Model([fm.Dense(3, activation, **{name: 1e39}), fm.Dense(1)], input_dim=2,
                     dtype="float64", backend="numpy", seed=0)
    assert model.layers[0].param == 1e39


def test_a_file_whose_parameter_its_dtype_cannot_hold_is_refused(tmp_path):
    path = tmp_path / "m.npz"
    fm.Model([fm.Dense(3, "leaky_relu", alpha=1e39), fm.Dense(1)], input_dim=2,
             dtype="float64", backend="numpy", seed=0).save(path)
    arrays = saved_arrays(path)
    header = saved_header(arrays)
    header["dtype"] = "float32"
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    for key in ("theta", "opt_buffers"):
        arrays[key] = arrays[key].astype(np.float32)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match="not a readable fastmlp model file: .*alpha=1e\\+39 "
                                         "is too large for float32"):
        fm.load(path)
