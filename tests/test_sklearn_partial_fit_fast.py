"""A later partial_fit's shortcut past scikit-learn's checks, held to what it replaces.

A batch those checks would pass as it is (X a finite C-contiguous ndarray of the model's
dtype and width, for an estimator fitted without feature names; y a plain ndarray of
classes_'s own integer dtype, every label in classes_, or numbers for a regressor) goes
straight to the model. It must train the same steps, bit for bit, as the full path,
which anything else takes, so that errors and warnings keep scikit-learn's words; and
the parameters are still checked on every call."""
import pickle
import warnings

import numpy as np
import pytest
from sklearn_checks import counting_checks

from fastmlp import _sklearn_base
from fastmlp.sklearn import MLPClassifier, MLPRegressor


def _batches(labels, dtype, n_batches=5, rows=16, width=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_batches, rows, width)).astype(dtype)
    y = rng.choice(labels, size=(n_batches, rows))
    return X, y


# every batch in another form the shortcut takes: X in the model's dtype, in float64, in
# Fortran order, as int32; y of another integer width, or another string length
_FORMS = [lambda X, y: (X, y), lambda X, y: (X.astype(np.float64), y),
          lambda X, y: (np.asfortranarray(X), y),
          lambda X, y: ((X * 4).astype(np.int32), y.astype("<U9" if y.dtype.kind == "U"
                                                          else np.int32))]


@pytest.mark.parametrize("labels", [[0, 1], [3, 7, 9], [-5, 2, 40, 41], ["cat", "dog", "ox"]])
def test_classifier_batches_train_as_the_full_checks_do(backend, dtype, labels, monkeypatch):
    X, y = _batches(labels, dtype, n_batches=1 + len(_FORMS))
    kwargs = dict(hidden_layer_sizes=(6,), backend=backend, dtype=dtype, random_state=0)
    quick, full = MLPClassifier(**kwargs), MLPClassifier(**kwargs)
    calls = counting_checks(monkeypatch)
    quick.partial_fit(X[0], y[0], classes=labels)
    full.partial_fit(X[0].tolist(), y[0].tolist(), classes=labels)
    assert len(calls) == 2
    for form, Xb, yb in zip(_FORMS, X[1:], y[1:]):
        quick.partial_fit(*form(Xb, yb))
        full.partial_fit(*(a.tolist() for a in form(Xb, yb)))   # lists: the full checks
    assert len(calls) == 2 + len(_FORMS)   # the lists' only: the arrays took the shortcut
    assert quick.loss_curve_ == full.loss_curve_
    assert quick.n_iter_ == full.n_iter_ == len(X) and quick.t_ == full.t_
    for a, b in zip(quick.coefs_ + quick.intercepts_, full.coefs_ + full.intercepts_):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(quick.predict(X[0]), full.predict(X[0]))


@pytest.mark.parametrize("outputs", [None, 1, 3])
def test_regressor_batches_train_as_the_full_checks_do(backend, dtype, outputs, monkeypatch):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(4, 12, 3)).astype(dtype)
    shape = (4, 12) if outputs is None else (4, 12, outputs)
    y = rng.normal(size=shape)
    kwargs = dict(hidden_layer_sizes=(5,), backend=backend, dtype=dtype, random_state=2)
    quick, full = MLPRegressor(**kwargs), MLPRegressor(**kwargs)
    calls = counting_checks(monkeypatch)
    for Xb, yb in zip(X, y):
        quick.partial_fit(Xb, yb)
        full.partial_fit(Xb.tolist(), yb.tolist())
    assert len(calls) == 1 + len(X)
    assert quick.loss_curve_ == full.loss_curve_
    for a, b in zip(quick.coefs_ + quick.intercepts_, full.coefs_ + full.intercepts_):
        np.testing.assert_array_equal(a, b)


def test_integer_regression_targets_take_the_shortcut(monkeypatch):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(10, 2)).astype(np.float32)
    est = MLPRegressor(hidden_layer_sizes=(3,), random_state=0).partial_fit(X, np.arange(10))
    calls = counting_checks(monkeypatch)
    est.partial_fit(X, np.arange(10, dtype=np.uint16))
    assert calls == []


def _fitted(labels=(0, 1, 2), dtype="float32"):
    X, y = _batches(list(labels), dtype, n_batches=1)
    est = MLPClassifier(hidden_layer_sizes=(4,), dtype=dtype, random_state=0)
    return est.partial_fit(X[0], y[0], classes=list(labels)), X[0], y[0]


@pytest.mark.parametrize("case", ["unknown label", "NaN", "inf", "width", "no rows",
                                  "lengths", "float labels", "2-D labels", "0-d labels"])
def test_what_the_shortcut_leaves_gets_scikit_learns_words(case):
    est, X, y = _fitted()
    before = [w.copy() for w in est.coefs_]
    X = X.copy()
    if case == "unknown label":
        y = y.copy()
        y[3] = 5
        match = r"y contains labels not in classes_ \[0, 1, 2\]: \[5\]"
    elif case in ("NaN", "inf"):
        X[2, 1] = np.nan if case == "NaN" else np.inf
        match = "Input X contains " + ("NaN" if case == "NaN" else "infinity")
    elif case == "width":
        X = X[:, :3].copy()
        match = "X has 3 features, but MLPClassifier is expecting 5 features"
    elif case == "no rows":
        X, y = X[:0], y[:0]
        match = "0 sample"
    elif case == "lengths":
        y = y[:-1]
        match = "inconsistent numbers of samples"
    elif case == "float labels":
        y = y + 0.5
        match = "Unknown label type"
    elif case == "2-D labels":
        y = np.stack([y, y], axis=1)
        match = "multiclass-multioutput targets are not supported"
    else:
        y = np.array(1)
        match = "at least 1 dimension"
    with pytest.raises((ValueError, TypeError), match=match):
        est.partial_fit(X, y)
    for a, b in zip(est.coefs_, before):   # refused before any step
        np.testing.assert_array_equal(a, b)


def test_labels_of_another_kind_take_the_full_checks(monkeypatch):
    est, X, y = _fitted(labels=(2, 4, 8))
    calls = counting_checks(monkeypatch)
    est.partial_fit(X, y.astype(np.uint8))      # unsigned beside signed classes_
    est.partial_fit(X, y.tolist())
    est.partial_fit(X, y.astype(np.float64))    # 2.0, 4.0, 8.0: labels all the same
    est.partial_fit(X, y.reshape(-1, 1))        # a column: scikit-learn warns and ravels
    assert len(calls) == 4
    est.partial_fit(X, y)
    assert len(calls) == 4
    assert est.n_iter_ == 6


def test_too_large_for_the_model_dtype_gets_scikit_learns_words():
    est, X, y = _fitted()
    X = X.astype(np.float64)
    X[1, 1] = 1e300
    with pytest.raises(ValueError, match="Input X contains infinity or a value too large"):
        est.partial_fit(X, y)


def test_many_distinct_labels_still_warn_as_scikit_learn_does():
    labels = list(range(20))
    rng = np.random.default_rng(4)
    X = rng.normal(size=(30, 3)).astype(np.float32)
    y = np.arange(30) % 20   # 20 distinct labels in 30 rows: "could be a regression"
    est = MLPClassifier(hidden_layer_sizes=(3,), random_state=0)
    with pytest.warns(UserWarning, match="number of unique classes is greater than 50%"):
        est.partial_fit(X, y, classes=labels)
    with pytest.warns(UserWarning, match="number of unique classes is greater than 50%"):
        est.partial_fit(X, y)


def test_an_estimator_fitted_on_a_frame_still_warns_for_an_array():
    pd = pytest.importorskip("pandas")
    X, y = _batches([0, 1], "float32", n_batches=1)
    frame = pd.DataFrame(X[0], columns=[f"f{i}" for i in range(X.shape[2])])
    est = MLPClassifier(hidden_layer_sizes=(3,), random_state=0)
    est.partial_fit(frame, y[0], classes=[0, 1])
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        est.partial_fit(X[0], y[0])


def test_parameters_are_checked_on_every_call():
    est, X, y = _fitted()
    est.partial_fit(X, y)
    for name, bad in [("learning_rate_init", -1.0), ("alpha", "x"), ("shuffle", 3),
                      ("solver", "lbfgs"), ("n_iter_no_change", 0)]:
        good = getattr(est, name)
        setattr(est, name, bad)
        with pytest.raises(ValueError, match=f"'{name}' parameter"):
            est.partial_fit(X, y)
        setattr(est, name, good)
        est.partial_fit(X, y)


def test_parameters_that_can_change_in_place_are_checked_each_time(monkeypatch):
    est, X, y = _fitted()
    checks = []
    real = _sklearn_base.validate_parameter_constraints
    monkeypatch.setattr(_sklearn_base, "validate_parameter_constraints",
                        lambda *args, **kwargs: (checks.append(1), real(*args, **kwargs)))
    est.partial_fit(X, y)
    est.partial_fit(X, y)
    assert len(checks) == 0   # every parameter the object checked when _fitted trained
    est.hidden_layer_sizes = [4]   # a list: changeable in place, so never taken as checked
    est.partial_fit(X, y)
    est.partial_fit(X, y)
    assert len(checks) == 2
    est.hidden_layer_sizes = tuple([4])   # a new tuple: checked once
    est.partial_fit(X, y)
    est.partial_fit(X, y)
    assert len(checks) == 3


def test_the_checked_parameters_are_not_pickled():
    est, X, y = _fitted()
    est.partial_fit(X, y)
    assert _sklearn_base._VALIDATED in est.__dict__
    copy = pickle.loads(pickle.dumps(est))
    assert _sklearn_base._VALIDATED not in copy.__dict__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        copy.partial_fit(X, y)
    np.testing.assert_array_equal(copy.predict(X), est.partial_fit(X, y).predict(X))


def test_the_values_checked_are_the_values_taken_as_checked(monkeypatch):
    """Another thread's set_params landing inside the check: what is kept as checked is
    what was checked, so the value set meanwhile is checked on the next call."""
    est, X, y = _fitted()
    real = _sklearn_base.validate_parameter_constraints

    def meanwhile(*args, **kwargs):
        est.max_iter = 0   # as another thread's set_params(max_iter=0) would, mid-check
        return real(*args, **kwargs)

    est.max_iter = 7   # a new object: checked on the next call
    monkeypatch.setattr(_sklearn_base, "validate_parameter_constraints", meanwhile)
    est.partial_fit(X, y)
    monkeypatch.setattr(_sklearn_base, "validate_parameter_constraints", real)
    assert est.max_iter == 0
    with pytest.raises(ValueError, match="'max_iter' parameter"):
        est.partial_fit(X, y)
    with pytest.raises(ValueError, match="'max_iter' parameter"):
        est.fit(X, y)


@pytest.mark.parametrize("estimator", [MLPClassifier, MLPRegressor])
@pytest.mark.parametrize("first, then", [("float64", "float32"), ("float32", "float64")])
def test_a_dtype_set_after_fitting_trains_both_paths_alike(estimator, first, then):
    """model_ keeps the dtype it was built in; a later call converts X (and makes the
    targets) in model_'s dtype on both paths, not in the parameter's first."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(3, 12, 4)) * np.float64(1 + 1e-9)   # not exact in float32
    y = rng.integers(0, 3, size=(3, 12)) if estimator is MLPClassifier else rng.normal(
        size=(3, 12))
    first_kwargs = {"classes": [0, 1, 2]} if estimator is MLPClassifier else {}
    quick, full = (estimator(hidden_layer_sizes=(4,), dtype=first, random_state=0)
                   for _ in range(2))
    quick.partial_fit(X[0], y[0], **first_kwargs)
    full.partial_fit(X[0], y[0], **first_kwargs)
    for est in (quick, full):
        est.set_params(dtype=then)
    for Xb, yb in zip(X[1:], y[1:]):
        quick.partial_fit(Xb, yb)
        full.partial_fit(Xb.tolist(), yb.tolist())
        assert quick.model_.dtype == full.model_.dtype == np.dtype(first)
    assert quick.loss_curve_ == full.loss_curve_
    for a, b in zip(quick.coefs_, full.coefs_):
        np.testing.assert_array_equal(a, b)
    predicted = quick.predict(X[0])
    np.testing.assert_array_equal(predicted, quick.predict(X[0].tolist()))


@pytest.mark.parametrize("column", [False, True])
def test_a_regressor_column_y_warns_as_scikit_learns_on_both_paths(column):
    """y of shape (n, 1): scikit-learn's MLPRegressor warns that it ravels it; so do both
    paths here (one output either way), and a 1-D y warns on neither."""
    from sklearn.exceptions import DataConversionWarning
    rng = np.random.default_rng(6)
    X = rng.normal(size=(10, 3)).astype(np.float32)
    y = rng.normal(size=(10, 1) if column else 10)
    est = MLPRegressor(hidden_layer_sizes=(3,), random_state=0)
    for fit in (lambda: est.partial_fit(X, y), lambda: est.partial_fit(X, y),
                lambda: est.partial_fit(X.tolist(), y.tolist())):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            fit()
        kinds = [w.category for w in seen]
        assert kinds == ([DataConversionWarning] if column else []), kinds
    assert est.n_outputs_ == 1 and est.predict(X).shape == (10,)
