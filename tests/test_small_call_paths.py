"""Small calls' fast paths beside the full checks, which they must match bit for bit:

- class indices (n,) given to a softmax model's train_on_batch, evaluate and gradients
  (validation.index_targets: one gather from a cached identity) give exactly what the
  one-hot targets give, learn classes_ as the label machinery does, and leave every other
  kind of label, and every bad value, to the full checks;
- a model with input scaling steps and evaluates small batches through the scaled copy
  predict uses (Model._small_ready);
- a DataFrame's predict checks its names once per pandas Index and its views
  (Index.is_: the columns of df.iloc[i:i + 1]) and takes its values with to_numpy; so do
  the training calls once the model knows its feature names (with a Series of int labels
  as its array), so that a small frame takes the shortcuts above."""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp import validation

K = 3


def _model(backend, dtype, width=8, seed=0):
    return fm.Model([fm.Dense(width, "tanh"), fm.Dense(K, "softmax")], input_dim=4,
                    loss="cross_entropy", backend=backend, dtype=dtype, seed=seed)


def _data(dtype, n=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4)).astype(dtype)
    y = np.arange(n) % K
    rng.shuffle(y)
    return X, y


@pytest.mark.parametrize("kind", ["int64", "int8", "uint64", "column"])
def test_indices_train_exactly_as_one_hot_targets(backend, dtype, kind):
    X, y = _data(dtype)
    labels = y.reshape(-1, 1) if kind == "column" else y.astype(kind)
    by_index, by_one_hot = _model(backend, dtype), _model(backend, dtype)
    for _ in range(3):
        loss_i = by_index.train_on_batch(X, labels)
        loss_t = by_one_hot.train_on_batch(X, np.eye(K, dtype=dtype)[y])
        assert loss_i == loss_t
    for a, b in zip(by_index.get_weights(), by_one_hot.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert by_index.classes_.dtype == np.int64
    np.testing.assert_array_equal(by_index.classes_, np.arange(K))
    assert by_one_hot.classes_ is None
    assert by_index.evaluate(X, labels) == by_index.evaluate(X, np.eye(K, dtype=dtype)[y])
    loss, grads = by_index.gradients(X, labels)
    loss_t, grads_t = by_index.gradients(X, np.eye(K, dtype=dtype)[y])
    assert loss == loss_t
    for a, b in zip(grads, grads_t):
        np.testing.assert_array_equal(a, b)


def test_indices_with_an_x_of_another_dtype_train_as_converted(backend):
    X, y = _data("float64")
    converted, given = _model(backend, "float32"), _model(backend, "float32")
    assert given.train_on_batch(X, y) == converted.train_on_batch(X.astype(np.float32), y)
    for a, b in zip(given.get_weights(), converted.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_big_networks_and_many_classes_take_the_same_targets(backend):
    k = 300   # past the cached identity's size: built with zeros and one assignment
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 5)).astype(np.float32)
    y = rng.integers(0, k, 40)
    m = fm.Model([fm.Dense(k, "softmax")], input_dim=5, loss="cross_entropy",
                 backend=backend, seed=1)
    assert m.evaluate(X, y) == m.evaluate(X, np.eye(k, dtype=np.float32)[y])
    T = validation.index_targets(y, 40, k, np.dtype(np.float32))
    np.testing.assert_array_equal(T, np.eye(k, dtype=np.float32)[y])


@pytest.mark.parametrize("bad, message", [
    (np.array([0, 1, 3, 0]), r"class labels must be in \[0, 3\)"),
    (np.array([0, -1, 2, 0]), r"class labels must be in \[0, 3\)"),   # not wrapped round
    (np.array([0, 1, 2]), "Y has 3 rows but X has 4"),
])
# (a fresh model given [0, 1, 3, 0] learns classes_ [0, 1, 3], as before: labels, not indices)
def test_bad_indices_get_the_full_checks_message(backend, bad, message):
    m = _model(backend, "float32")
    X = np.ones((4, 4), dtype=np.float32)
    m.train_on_batch(X, np.array([0, 1, 2, 0]))   # classes_ 0..2: labels are indices
    before = m.get_weights()
    for call in (m.train_on_batch, m.evaluate):
        with pytest.raises(ValueError, match=message):
            call(X, bad)
    np.testing.assert_array_equal(m.classes_, np.arange(K))
    for a, b in zip(before, m.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_labels_that_are_not_indices_are_still_mapped(backend):
    m = _model(backend, "float64")
    X, y = _data("float64")
    m.train_on_batch(X, y * 10 + 10)   # labels 10, 20, 30
    np.testing.assert_array_equal(m.classes_, [10, 20, 30])
    with pytest.raises(ValueError, match="labels the model does not know"):
        m.train_on_batch(X, y)


def test_classes_changed_in_place_are_honoured(backend):
    """classes_ is a public array: the fast path compares its values on every call, so a
    reordering done in place maps labels through it (labels.encode's lookup)."""
    X, y = _data("float64")
    m, reference = _model(backend, "float64"), _model(backend, "float64")
    m.train_on_batch(X, y)
    reference.train_on_batch(X, y)
    m.classes_[:] = [2, 1, 0]   # label 2 is now unit 0
    assert m.evaluate(X, y) == reference.evaluate(X, np.eye(K)[2 - y])
    assert m.train_on_batch(X, y) == reference.train_on_batch(X, np.eye(K)[2 - y])


def test_non_finite_x_with_indices_is_named(backend):
    m = _model(backend, "float32")
    X, y = _data("float32")
    X[2, 1] = np.nan
    for call in (m.train_on_batch, m.evaluate):
        with pytest.raises(ValueError, match="NaN"):
            call(X, y)
    assert m.classes_ is None


def test_a_diverging_step_on_indices_learns_nothing(backend):
    m = fm.Model([fm.Dense(K, "softmax")], input_dim=4, loss="cross_entropy",
                 optimizer=fm.SGD(lr=1e30), backend=backend, dtype="float32", seed=0)
    X = np.full((4, 4), 1e10, dtype=np.float32)
    before = m.get_weights()
    with pytest.raises(fm.TrainingDiverged):
        m.train_on_batch(X, np.array([0, 1, 2, 0]))
    assert m.classes_ is None
    for a, b in zip(before, m.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_the_cached_identity_cannot_be_written():
    T = validation.index_targets(np.array([1, 0]), 2, 3, np.dtype(np.float64))
    T[0, 0] = 5.0   # a gathered copy: writing it leaves the next call's targets alone
    np.testing.assert_array_equal(validation.index_targets(np.array([1, 0]), 2, 3,
                                                           np.dtype(np.float64)),
                                  [[0, 1, 0], [1, 0, 0]])
    with pytest.raises(ValueError):
        validation._eye(3, np.dtype(np.float64))[0, 0] = 2.0


def _scaled_pair(backend, dtype, loss="mse"):
    """Two twins: one scaling its inputs, one given the same inputs scaled beforehand."""
    rng = np.random.default_rng(5)
    data = rng.normal(size=(50, 4)) * 7 + 3
    mean, scale = data.mean(axis=0), data.std(axis=0)
    out = "softmax" if loss == "cross_entropy" else "linear"
    make = lambda: fm.Model([fm.Dense(6, "tanh"), fm.Dense(K, out)], input_dim=4,  # noqa: E731
                            loss=loss, backend=backend, dtype=dtype, seed=2)
    scaled, plain = make(), make()
    scaled.set_input_scaling(mean, scale)
    return scaled, plain, lambda X: ((np.asarray(X, np.float64) - mean) / scale).astype(dtype)


@pytest.mark.parametrize("given", ["float32", "float64", "fortran", "int"])
def test_a_scaled_models_small_steps_are_the_scaled_inputs_steps(backend, dtype, given):
    scaled, plain, scale = _scaled_pair(backend, dtype)
    rng = np.random.default_rng(6)
    X = rng.normal(size=(6, 4)) * 7 + 3
    X = {"float32": X.astype(np.float32), "float64": X, "fortran": np.asfortranarray(X),
         "int": X.astype(np.int64)}[given]
    T = rng.random((6, K)).astype(dtype)
    for _ in range(3):
        assert scaled.train_on_batch(X, T) == plain.train_on_batch(scale(X), T)
    for a, b in zip(scaled.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert scaled.evaluate(X, T) == plain.evaluate(scale(X), T)
    loss, grads = scaled.gradients(X, T)
    loss_p, grads_p = plain.gradients(scale(X), T)
    assert loss == loss_p
    for a, b in zip(grads, grads_p):
        np.testing.assert_array_equal(a, b)


def test_a_scaled_models_class_indices_train_as_one_hot(backend, dtype):
    scaled, plain, scale = _scaled_pair(backend, dtype, "cross_entropy")
    X, y = _data("float64")
    assert scaled.train_on_batch(X, y) == plain.train_on_batch(scale(X), np.eye(K)[y])
    np.testing.assert_array_equal(scaled.classes_, np.arange(K))
    assert scaled.evaluate(X, y) == plain.evaluate(scale(X), np.eye(K)[y])


def test_a_scaled_models_bad_batches_are_named_and_change_nothing(backend):
    scaled, _, _ = _scaled_pair(backend, "float32")
    X = np.ones((3, 4))
    T = np.full((3, K), 0.5, dtype=np.float32)
    before = scaled.get_weights()
    bad = X.copy()
    bad[1, 2] = np.nan
    huge = X.copy()
    huge[2, 0] = 1e300   # finite, but not once scaled into float32
    for call in (scaled.train_on_batch, scaled.evaluate):
        with pytest.raises(ValueError, match=r"row 1, column 2"):
            call(bad, T)
        with pytest.raises(ValueError, match="too large for float32"):
            call(huge, T)
        with pytest.raises(ValueError, match="X has 3 columns"):
            call(X[:, :3], T)
        with pytest.raises(ValueError, match="Y has 2 rows but X has 3"):
            call(X, T[:2])
    for a, b in zip(before, scaled.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_frames_row_views_predict_as_its_values(backend):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(rng.normal(size=(20, 4)).astype(np.float32),
                         columns=["a", "b", "c", "d"])
    m = _model(backend, "float32")
    m.fit(frame, np.arange(20) % K, epochs=1)
    for i in range(3):
        np.testing.assert_array_equal(m.predict(frame.iloc[i:i + 1]),
                                      m.predict(frame.to_numpy()[i:i + 1]))
    np.testing.assert_array_equal(m.predict(frame), m.predict(frame.to_numpy()))
    # the cached check must not let another frame's columns through: a view of another
    # Index with the same names is fine, a reordered or renamed one is refused
    with pytest.raises(ValueError, match="feature names"):
        m.predict(frame[["b", "a", "c", "d"]].iloc[:1])
    with pytest.raises(ValueError, match="feature names"):
        m.predict(frame.rename(columns={"a": "z"}).iloc[:1])
    renamed_back = frame.rename(columns={"a": "a"}).iloc[:1]
    np.testing.assert_array_equal(m.predict(renamed_back), m.predict(frame.iloc[:1]))
    nan_row = frame.iloc[3:5].copy()
    nan_row.iloc[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"row 1, column 2"):
        m.predict(nan_row)
    with pytest.raises(TypeError, match="'b'"):
        m.predict(frame.astype({"b": "category"}).iloc[:1])


def test_a_scaled_models_frame_rows_predict_as_their_values(backend):
    pd = pytest.importorskip("pandas")
    scaled, plain, scale = _scaled_pair(backend, "float32")
    frame = pd.DataFrame(np.random.default_rng(8).normal(size=(5, 4)), columns=list("wxyz"))
    scaled.fit(frame, np.full((5, K), 0.5), epochs=1)
    plain.fit(scale(frame.to_numpy()), np.full((5, K), 0.5), epochs=1)
    np.testing.assert_array_equal(scaled.predict(frame.iloc[1:2]),
                                  plain.predict(scale(frame.to_numpy()[1:2])))


@pytest.mark.parametrize("Y", [np.array(1), np.array(1.0)])
def test_a_0d_target_is_refused_in_words(backend, Y):
    m = _model(backend, "float32")
    for call in (m.train_on_batch, m.evaluate):
        with pytest.raises(ValueError, match="Y has 0 rows but X has 1"):
            call(np.ones((1, 4), dtype=np.float32), Y)


def test_float64_targets_evaluate_as_their_float32_copy(backend):
    X, y = _data("float32")
    m = _model(backend, "float32")
    Y64 = np.eye(K)[y]
    assert m.evaluate(X, Y64) == m.evaluate(X, Y64.astype(np.float32))
    loss, grads = m.gradients(X, Y64)
    loss32, grads32 = m.gradients(X, Y64.astype(np.float32))
    assert loss == loss32
    for a, b in zip(grads, grads32):
        np.testing.assert_array_equal(a, b)
    bad = Y64.copy()
    bad[0, 0] = 2.0
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        m.evaluate(X, bad)


def test_training_on_the_same_frame_keeps_its_names_array(backend):
    """Each training call on a frame of the trained columns keeps feature_names_in_ (the
    column-name check's cache holds it), and a reordered frame is still refused."""
    pd = pytest.importorskip("pandas")
    X, y = _data("float32")
    frame = pd.DataFrame(X, columns=list("abcd"))
    m = _model(backend, "float32")
    m.train_on_batch(frame, y)
    names = m.feature_names_in_
    m.train_on_batch(frame, y)
    m.fit(frame, y, epochs=1)
    assert m.feature_names_in_ is names
    with pytest.raises(ValueError, match="feature names"):
        m.train_on_batch(frame[list("dcba")], y)


@pytest.mark.parametrize("dtype", ["i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", ">i8", ">u4"])
def test_indices_of_every_integer_type_are_range_checked_in_one_reduction(dtype):
    """[0, k) checked by one reduction of the indices read as unsigned: a negative index,
    the most negative one included, is beyond k; byte-swapped indices (which that view
    would misread: 2**56 swapped reads as 1) are left to the full checks."""
    k, f32 = 3, np.dtype(np.float32)
    y = np.array([0, 2, 1], dtype=dtype)
    T = validation.index_targets(y, 3, k, f32)
    if np.dtype(dtype).isnative:
        np.testing.assert_array_equal(T, np.eye(k, dtype=np.float32)[y.astype(int)])
        np.testing.assert_array_equal(validation.index_targets(y[::-2], 2, k, f32),
                                      np.eye(k, dtype=np.float32)[[1, 0]])
    else:
        assert T is None
    info = np.iinfo(np.dtype(dtype))
    for bad in ({info.min, -1, k} if np.dtype(dtype).kind == "i" else {k, info.max}):
        assert validation.index_targets(np.array([0, bad, 1], dtype=dtype), 3, k, f32) is None
    if np.dtype(dtype).itemsize == 8:
        assert validation.index_targets(np.array([0, 2 ** 56, 1], dtype=dtype), 3, k,
                                        f32) is None


# String labels a softmax model knows (Model._known_string_codes: one sorted search of the
# classes_, kept with their bytes) and integer or bool one-hot rows (copied as float
# targets are): the same numbers as one-hot float targets; anything else goes to the full
# checks, which name it.
_NAMES = np.array(["cow", "ant", "bee"])   # classes_ as a user may set them: not sorted


def _named_model(backend, dtype, classes=_NAMES):
    m = _model(backend, dtype)
    m.classes_ = np.array(classes)
    return m


@pytest.mark.parametrize("kind", ["U", "U9"])
def test_known_string_labels_train_exactly_as_one_hot_targets(backend, dtype, kind):
    X, y = _data(dtype)
    labels = _NAMES[y].astype(kind)   # (U9: wider than classes_'s U3)
    by_label, by_one_hot = _named_model(backend, dtype), _model(backend, dtype)
    for _ in range(3):
        assert by_label.train_on_batch(X, labels) == by_one_hot.train_on_batch(
            X, np.eye(K, dtype=dtype)[y])
    for a, b in zip(by_label.get_weights(), by_one_hot.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert by_label.evaluate(X, labels) == by_one_hot.evaluate(X, np.eye(K, dtype=dtype)[y])
    np.testing.assert_array_equal(by_label.classes_, _NAMES)


@pytest.mark.parametrize("labels, message", [
    (np.array(["cow", "ant", "gnu"] * 2 + ["bee"] * 2), "labels the model does not know: 'gnu'"),
    (np.array(["cow", "ant", "bee ", "ant", "cow", "ant", "bee", "cow"]),
     "labels the model does not know: 'bee '"),
    (np.array([b"cow"] * 8), "cannot be saved with the model"),
])
def test_unknown_string_labels_get_the_full_checks_message(backend, labels, message):
    m = _named_model(backend, "float32")
    X, _ = _data("float32")
    before = m.get_weights()
    with pytest.raises((ValueError, TypeError), match=message):
        m.train_on_batch(X, labels)
    for a, b in zip(before, m.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_string_classes_changed_in_place_are_honoured(backend):
    """The sorted classes are kept with the bytes of the classes_ they came from: classes_
    reordered in place maps each label to its new unit."""
    X, y = _data("float64")
    m, reference = _named_model(backend, "float64"), _model(backend, "float64")
    labels = _NAMES[y]
    assert m.evaluate(X, labels) == reference.evaluate(X, np.eye(K)[y])
    m.classes_[:] = _NAMES[::-1]   # "cow" is now unit 2
    assert m.evaluate(X, labels) == reference.evaluate(X, np.eye(K)[2 - y])
    assert m.train_on_batch(X, labels) == reference.train_on_batch(X, np.eye(K)[2 - y])
    m.classes_ = np.array(["ant", "ant", "bee"])   # a label twice: the full checks refuse it
    with pytest.raises(ValueError, match="hold the label 'ant' twice"):
        m.train_on_batch(X, _NAMES[1:][y % 2])


@pytest.mark.parametrize("dtype_of_y", [np.int64, np.uint8, np.bool_])
def test_integer_one_hot_rows_train_as_float_ones(backend, dtype_of_y):
    X, y = _data("float32")
    by_int, by_float = _model(backend, "float32"), _model(backend, "float32")
    for _ in range(2):
        assert by_int.train_on_batch(X, np.eye(K, dtype=dtype_of_y)[y]) == \
            by_float.train_on_batch(X, np.eye(K, dtype=np.float32)[y])
    for a, b in zip(by_int.get_weights(), by_float.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert by_int.classes_ is None
    bad = np.eye(K, dtype=np.int64)[y]
    bad[0, 0] = 2
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        by_int.train_on_batch(X, bad)


def _frame_forms(pd, X):
    """One batch as frames of several layouts and dtypes, each with its plain values."""
    frame = pd.DataFrame(X, columns=list("abcd"))
    forms = [frame, frame.iloc[1:7:2], frame.astype(np.float64), frame.iloc[:1],
             frame.assign(b=np.arange(len(frame)))]
    return [(f, f.to_numpy()) for f in forms]


@pytest.mark.parametrize("series", [None, "int", "str"])
def test_a_frames_training_calls_step_as_its_values(backend, dtype, series):
    """Once a model knows its feature names, a DataFrame's values (and a Series of int or
    str labels) are taken first, so a small batch takes the small-call shortcuts: every
    call gives, bit for bit, what the same values as plain arrays give."""
    pd = pytest.importorskip("pandas")
    X, y = _data(dtype, n=12)
    if series == "str":
        y = np.array(["ant", "bee", "cat"])[y]
    framed, plain = _model(backend, dtype), _model(backend, dtype)
    framed.fit(pd.DataFrame(X, columns=list("abcd")), y, epochs=1)
    plain.fit(X, y, epochs=1)
    for frame, values in _frame_forms(pd, X):
        labels = y[:len(frame)] if len(frame) != 3 else y[1:7:2]
        given = (labels if series is None else
                 pd.Series(labels, index=frame.index, dtype=series if series == "str" else None))
        assert framed.train_on_batch(frame, given) == plain.train_on_batch(values, labels)
        assert framed.evaluate(frame, given) == plain.evaluate(values, labels)
        (la, ga), (lb, gb) = framed.gradients(frame, given), plain.gradients(values, labels)
        assert la == lb
        for a, b in zip(ga, gb):
            np.testing.assert_array_equal(a, b)
        framed.fit(frame, given, epochs=2, batch_size=2)
        plain.fit(values, labels, epochs=2, batch_size=2)
    for a, b in zip(framed.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert list(framed.feature_names_in_) == list("abcd")


def test_a_frames_bad_values_and_columns_are_named_on_training_calls(backend):
    pd = pytest.importorskip("pandas")
    X, y = _data("float32", n=6)
    frame = pd.DataFrame(X, columns=list("abcd"))
    m = _model(backend, "float32")
    m.fit(frame, y, epochs=1)
    before = m.get_weights()
    nan = frame.copy()
    nan.iloc[4, 1] = np.nan
    for call in (m.train_on_batch, m.evaluate, m.gradients):
        with pytest.raises(ValueError, match=r"row 4, column 1"):
            call(nan, y)
        with pytest.raises(ValueError, match="feature names"):
            call(frame[list("dcba")], y)
        with pytest.raises(TypeError, match="'b'"):
            call(frame.astype({"b": "category"}), y)
        with pytest.raises(ValueError, match="Y has 5 rows but X has 6"):
            call(frame, pd.Series(y[:5]))
    for a, b in zip(before, m.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_small_frame_of_known_columns_skips_the_full_checks(backend, monkeypatch):
    pd = pytest.importorskip("pandas")
    X, y = _data("float32", n=6)
    frame = pd.DataFrame(X, columns=list("abcd"))
    m = _model(backend, "float32")
    m.fit(frame, y, epochs=1)
    calls = []
    real = validation.check_inputs
    monkeypatch.setattr(validation, "check_inputs",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    m.train_on_batch(frame, pd.Series(y))
    m.evaluate(frame.iloc[:2], y[:2])
    assert calls == []
    m.train_on_batch(frame, pd.Series(y).astype(float))   # float labels: the full checks
    assert calls == [1]
    words = m.classes_.astype(str)
    text = _model(backend, "float32")
    text.fit(frame, pd.Series(words[y], dtype="str"), epochs=1)   # (learns the names)
    calls.clear()
    text.train_on_batch(frame, pd.Series(words[y], dtype="str"))
    assert calls == []
    missing = pd.Series(words[y], dtype="str").where(np.arange(6) != 2)   # NaN: full checks
    with pytest.raises((TypeError, ValueError)):
        text.train_on_batch(frame, missing)
    assert calls == [1]
