"""Bad input: a ValueError or TypeError naming the problem, on every backend and every
entry point. Inputs that are only laid out differently are converted, not rejected."""
import warnings

import numpy as np
import pytest

import fastmlp as fm


def _mse(backend, dtype="float32"):
    return fm.Model([fm.Dense(4, "tanh"), fm.Dense(2, "sigmoid")], input_dim=3, loss="mse",
                    backend=backend, dtype=dtype, seed=0)


def _ce(backend, dtype="float32"):
    return fm.Model([fm.Dense(4, "relu"), fm.Dense(3, "softmax")], input_dim=3,
                    loss="cross_entropy", backend=backend, dtype=dtype, seed=0)


@pytest.fixture
def xy(rng):
    return rng.normal(size=(8, 3)), rng.uniform(size=(8, 2))


# Every entry point that takes data, called with (X, Y); predict ignores Y.
CALLS = {
    "fit": lambda m, X, Y: m.fit(X, Y, epochs=1),
    "evaluate": lambda m, X, Y: m.evaluate(X, Y),
    "gradients": lambda m, X, Y: m.gradients(X, Y),
    "train_on_batch": lambda m, X, Y: m.train_on_batch(X, Y),
}
WITH_PREDICT = dict(CALLS, predict=lambda m, X, Y: m.predict(X))


def _unchanged(model, before):
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def _rejects(model, call, X, Y, exc, match):
    before = model.get_weights()
    with pytest.raises(exc, match=match):
        call(model, X, Y)
    _unchanged(model, before)


# -- X ---------------------------------------------------------------------------------

@pytest.mark.parametrize("call", list(WITH_PREDICT))
def test_wrong_number_of_columns(backend, xy, call):
    X, Y = xy
    _rejects(_mse(backend), WITH_PREDICT[call], X[:, :2], Y, ValueError,
             "X has 2 columns but the model expects input_dim=3")


@pytest.mark.parametrize("call", list(WITH_PREDICT))
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_X(backend, xy, call, value):
    X, Y = xy
    X = X.copy()
    X[5, 1] = value
    _rejects(_mse(backend), WITH_PREDICT[call], X, Y, ValueError,
             r"X contains NaN or inf \(first at row 5, column 1\)")


def test_float64_overflow_to_float32_inf_is_caught(backend, xy):
    X, Y = xy
    X = X.copy()
    X[2, 0] = 1e300  # finite in float64, inf once converted to the model's float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the ValueError, not a RuntimeWarning on the way
        _rejects(_mse(backend), WITH_PREDICT["predict"], X, Y, ValueError,
                 r"X has a value too large for float32 \(1e\+300 at row 2, column 0\)")


@pytest.mark.parametrize("call", list(WITH_PREDICT))
@pytest.mark.parametrize("X", [np.empty((0, 3)), [], np.empty((0,))], ids=["0x3", "list", "0"])
def test_empty_X(backend, xy, call, X):
    _rejects(_mse(backend), WITH_PREDICT[call], X, xy[1][:0], ValueError, "X is empty")


@pytest.mark.parametrize("X,exc,match", [
    (np.array([["a", "b", "c"]] * 8), TypeError, "X must be numeric, got dtype <U1"),
    (np.array([[1.0, None, 2.0]] * 8, dtype=object), TypeError, "X must be numeric, got dtype object"),
    (np.ones((8, 3), dtype=object), TypeError, "X must be numeric, got dtype object"),
    ([["1", "2", "3"]] * 8, TypeError, "X must be numeric"),
    (np.ones((8, 3), dtype=complex), TypeError, "X must be real"),
    (np.zeros((8, 3), dtype="datetime64[s]"), TypeError, "X must be numeric"),
    # NumPy counts timedelta64 as an integer: seconds and milliseconds predicted differently
    (np.ones((8, 3), dtype="timedelta64[s]"), TypeError, "convert times to numbers"),
    (np.ones((8, 3, 1)), ValueError, r"X must be 2-D \(samples, features\), got shape \(8, 3, 1\)"),
    (np.float64(1.0), ValueError, "X must be 2-D"),
])
@pytest.mark.parametrize("call", list(WITH_PREDICT))
def test_non_numeric_or_misshapen_X(backend, xy, call, X, exc, match):
    _rejects(_mse(backend), WITH_PREDICT[call], X, xy[1], exc, match)


# -- Y ---------------------------------------------------------------------------------

@pytest.mark.parametrize("call", list(CALLS))
def test_Y_rows_differ_from_X_rows(backend, xy, call):
    X, Y = xy
    _rejects(_mse(backend), CALLS[call], X, Y[:7], ValueError, "Y has 7 rows but X has 8")


@pytest.mark.parametrize("call", list(CALLS))
def test_Y_columns_differ_from_outputs(backend, xy, call):
    X, Y = xy
    _rejects(_mse(backend), CALLS[call], X, np.ones((8, 3)), ValueError,
             "Y has 3 columns but the model has 2 outputs")


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_in_Y(backend, xy, call, value):
    X, Y = xy
    Y = Y.copy()
    Y[3, 1] = value
    _rejects(_mse(backend), CALLS[call], X, Y, ValueError, "Y contains NaN or inf")


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("labels,match", [
    # labels that are not indices 0..2 must be exactly 3 distinct values (then they name the classes)
    ([0, 1, 2, 3, 0, 1, 2, 0], r"Y has 4 distinct labels \[0, 1, 2, 3\] but the model has 3 classes"),
    ([0, 1, 2, -1, 0, 1, 2, 0], r"Y has 4 distinct labels \[-1, 0, 1, 2\] but the model has 3 classes"),
    ([0, 1.5, 2, 1, 0, 1, 2, 0], "class labels in Y must be integers"),
    ([0, np.nan, 2, 1, 0, 1, 2, 0], "Y contains NaN or inf"),
])
def test_bad_class_labels(backend, xy, call, labels, match):
    _rejects(_ce(backend), CALLS[call], xy[0], np.array(labels), ValueError, match)


@pytest.mark.parametrize("Y,exc,match", [
    # strings are class labels now: one label cannot name three classes
    (np.array(["a"] * 8), ValueError, r"Y has 1 distinct labels \['a'\] but the model has 3 classes"),
    (np.array([1, "a"] * 4, dtype=object), TypeError, "class labels must be all numbers or all strings"),
    (np.zeros((8, 1, 3)), ValueError, "Y must be 2-D"),
    (np.zeros((8, 1, 2), dtype=int), ValueError, "Y must be 2-D"),
    (np.float64(0.0), ValueError, "Y has 0 rows but X has 8"),
    (np.full((8, 3), 2.0), ValueError, r"targets for cross_entropy must lie in \[0, 1\]"),
])
def test_bad_targets_for_cross_entropy(backend, xy, Y, exc, match):
    _rejects(_ce(backend), CALLS["fit"], xy[0], Y, exc, match)


def test_validation_data_is_checked_too(backend, xy):
    X, Y = xy
    model = _mse(backend)
    _rejects(model, lambda m, X, Y: m.fit(X, Y, validation_data=(X[:, :2], Y)), X, Y,
             ValueError, "X has 2 columns")
    _rejects(model, lambda m, X, Y: m.fit(X, Y, validation_data=(X, Y[:3])), X, Y,
             ValueError, "Y has 3 rows but X has 8")


@pytest.mark.parametrize("kwargs,match", [
    (dict(epochs=-1), "epochs must be an integer >= 0"),
    (dict(epochs=2.5), "epochs must be an integer"),
    (dict(batch_size=0), "batch_size must be a positive integer or None"),
    (dict(batch_size=2.0), "batch_size must be a positive integer or None"),
    (dict(tol=-1.0), "tol must be a finite number >= 0 or None"),
    (dict(tol=float("nan")), "tol must be a finite number >= 0 or None"),
])
def test_bad_fit_arguments(backend, xy, kwargs, match):
    _rejects(_mse(backend), lambda m, X, Y: m.fit(X, Y, **kwargs), *xy, ValueError, match)


# -- construction ----------------------------------------------------------------------

@pytest.mark.parametrize("make,exc,match", [
    (lambda b: fm.Model([fm.Dense(2, "swish")], input_dim=3, backend=b), ValueError,
     "unknown activation 'swish'"),
    (lambda b: fm.Model([fm.Dense(2)], input_dim=3, loss="hinge", backend=b), ValueError,
     "unknown loss 'hinge'"),
    (lambda b: fm.Model([fm.Dense(2)], input_dim=3, optimizer="rmsprop", backend=b), ValueError,
     "unknown optimizer 'rmsprop'"),
    (lambda b: fm.Model([fm.Dense(2)], input_dim=3, optimizer=42, backend=b), TypeError,
     "optimizer must be"),
    (lambda b: fm.Model([fm.Dense(2)], input_dim=3, backend="tensorflow"), ValueError,
     "unknown backend 'tensorflow'"),
    (lambda b: fm.Model([fm.Dense(4, "softmax"), fm.Dense(2, "softmax")], input_dim=3,
                        backend=b), ValueError, "softmax is only allowed on the output layer"),
    (lambda b: fm.Model([fm.Dense(2)], input_dim=3, optimizer=fm.SGD(lr=0.0), backend=b),
     ValueError, "lr must be a finite number > 0"),
    (lambda b: fm.Model([fm.Dense(2)], input_dim=3, optimizer=fm.Adam(lr=-1e-3), backend=b),
     ValueError, "lr must be a finite number > 0"),
    (lambda b: fm.Model([fm.Dense(2)], input_dim=3, dtype="float16", backend=b), ValueError,
     "dtype must be 'float32' or 'float64'"),
    # an array of names compared element by element: NumPy's "truth value of an array is
    # ambiguous" (backend), or its "Cannot construct a dtype from an array" (dtype)
    (lambda b: fm.Model([fm.Dense(2)], input_dim=3, backend=np.array(["auto", "numpy"])),
     ValueError, r"unknown backend array\(\['auto', 'numpy'\]"),
    (lambda b: fm.Model([fm.Dense(2)], input_dim=3, dtype=np.array(["float32"]), backend=b),
     ValueError, r"dtype must be 'float32' or 'float64', got array\(\['float32'\]"),
    (lambda b: fm.Model([fm.Dense(2)], input_dim=3, dtype=[1], backend=b), ValueError,
     r"dtype must be 'float32' or 'float64', got \[1\]"),
    (lambda b: fm.Model([fm.Dense(2)], input_dim=0, backend=b), ValueError,
     r"input_dim must be an integer in \[1, 2\*\*31\), got 0"),
    # past int64 these were a raw OverflowError naming nothing
    (lambda b: fm.Model([fm.Dense(2)], input_dim=2 ** 63, backend=b), ValueError,
     r"input_dim must be an integer in \[1, 2\*\*31\)"),
    (lambda b: fm.Model([fm.Dense(2 ** 63)], input_dim=3, backend=b), ValueError,
     r"Dense units must be an integer in \[1, 2\*\*31\)"),
    (lambda b: fm.Model([fm.Dense(2 ** 31 - 1), fm.Dense(2 ** 31 - 1), fm.Dense(2 ** 31 - 1)],
                        input_dim=2 ** 31 - 1, backend=b), ValueError,
     "parameters, more than any machine holds"),
    (lambda b: fm.Model([], input_dim=3, backend=b), TypeError, "non-empty list of fm.Dense"),
    (lambda b: fm.Model([fm.Dense(0)], input_dim=3, backend=b), ValueError,
     r"Dense units must be an integer in \[1, 2\*\*31\)"),
    (lambda b: fm.Model([fm.Dense(2, "relu", alpha=0.1)], input_dim=3, backend=b), TypeError,
     "activation 'relu' takes parameters none"),
    (lambda b: fm.Model([fm.Dense(2, "elu", alpha=float("inf"))], input_dim=3, backend=b),
     ValueError, "alpha must be finite"),
])
def test_bad_construction(backend, make, exc, match):
    with pytest.raises(exc, match=match):
        make(backend)


# -- conversions that must NOT be rejected ---------------------------------------------

def _layouts(X):
    """The same values as Fortran order, a strided view, and int / float64 / float32 copies."""
    wide = np.zeros((X.shape[0], 2 * X.shape[1]), dtype=X.dtype)
    wide[:, ::2] = X
    return {"fortran": np.asfortranarray(X), "strided": wide[:, ::2],
            "negative-strides": X[::-1].copy()[::-1], "list": X.tolist()}


@pytest.mark.parametrize("dtype_model", ["float32", "float64"])
def test_layouts_and_dtypes_give_the_same_result(backend, rng, dtype_model):
    X = rng.integers(-3, 4, size=(10, 3))  # exactly representable in every dtype
    Y = rng.uniform(size=(10, 2))
    model = _mse(backend, dtype_model)
    ref_X = np.ascontiguousarray(X, dtype=dtype_model)
    ref_pred = model.predict(ref_X)
    ref_loss = model.evaluate(ref_X, Y)
    ref_grads = model.gradients(ref_X, Y)[1]
    cases = dict(_layouts(X.astype(np.float64)), int64=X, int32=X.astype(np.int32),
                 float64=X.astype(np.float64), float32=X.astype(np.float32), **{
                     "fortran-int": np.asfortranarray(X)})
    for name, Xc in cases.items():
        np.testing.assert_array_equal(model.predict(Xc), ref_pred, err_msg=name)
        assert model.evaluate(Xc, Y) == ref_loss, name
        for g, r in zip(model.gradients(Xc, Y)[1], ref_grads):
            np.testing.assert_array_equal(g, r, err_msg=name)
    # the targets too
    for name, Yc in _layouts(Y).items():
        assert model.evaluate(ref_X, Yc) == ref_loss, name


def test_fit_on_fortran_strided_input_trains_identically(backend, rng):
    X = rng.normal(size=(12, 3))
    Y = rng.uniform(size=(12, 2))
    a, b = _mse(backend), _mse(backend)
    a.fit(np.ascontiguousarray(X, dtype=np.float32), Y.astype(np.float32), epochs=3, batch_size=4)
    b.fit(_layouts(X)["strided"], np.asfortranarray(Y), epochs=3, batch_size=4)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_labels_in_any_integer_or_float_form(backend, rng):
    X = rng.normal(size=(9, 3))
    labels = rng.integers(0, 3, size=9)
    model = _ce(backend, "float64")
    expected = model.evaluate(X, np.eye(3)[labels])
    for form in [labels, labels.astype(np.int8), labels.astype(np.uint16), labels.astype(float),
                 labels.reshape(-1, 1), labels.tolist()]:
        np.testing.assert_allclose(model.evaluate(X, form), expected, rtol=1e-15)


def test_one_dimensional_inputs(backend, rng):
    """A 1-D X is a column of samples for a one-input model; a 1-D Y for a one-output model."""
    model = fm.Model([fm.Dense(3, "tanh"), fm.Dense(1)], input_dim=1, backend=backend, seed=0)
    x = rng.normal(size=6)
    np.testing.assert_array_equal(model.predict(x), model.predict(x.reshape(-1, 1)))
    assert model.evaluate(x, x) == model.evaluate(x.reshape(-1, 1), x.reshape(-1, 1))
