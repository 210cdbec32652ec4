"""pandas data past scikit-learn's checks (fastmlp._frames), held to what it replaces.

predict and a later partial_fit take a DataFrame of the fitted feature names and NumPy
number columns, and a Series of labels, without scikit-learn's checks (over 500 us for a
1-row frame). Each such call must give what the full checks give, bit for bit; every
other frame (other names, extension or object columns, a subclass, values the model's
dtype cannot hold) goes through those checks, with their warnings and errors."""
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")
pd = pytest.importorskip("pandas")
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

from sklearn_checks import counting_checks  # noqa: E402

from fastmlp import _frames  # noqa: E402
from fastmlp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

COLUMNS = ["a", "b", "c", "d"]


def _full_checks(monkeypatch):
    """Make every frame and Series take scikit-learn's checks."""
    monkeypatch.setattr(_frames, "frame_rows", lambda X, names, dtype: None)
    monkeypatch.setattr(_frames, "plain_labels",
                        lambda y: y if type(y) is np.ndarray else None)


def _frame(rows=12, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(size=(rows, len(COLUMNS))), columns=COLUMNS)


def _fitted_classifier(backend, dtype, labels=(0, 1, 2)):
    X = _frame(30)
    y = pd.Series(np.array(labels)[np.arange(30) % len(labels)])
    return MLPClassifier(hidden_layer_sizes=(5,), backend=backend, dtype=dtype,
                         max_iter=3, random_state=0).fit(X, y)


def _calls(method, X):
    """method(X) or the error it raised, with the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = method(X)
        except Exception as exc:  # compared with the full checks' error below
            result = (type(exc), str(exc))
    return result, [(w.category, str(w.message)) for w in caught]


def _same(quick, full):
    (a, wa), (b, wb) = quick, full
    assert wa == wb
    if isinstance(b, tuple):
        assert a == b
    else:
        np.testing.assert_array_equal(a, b)


# frames the shortcut takes: every column a NumPy number or bool dtype, the fitted names
_TAKEN = {
    "float64": lambda X: X,
    "float32": lambda X: X.astype(np.float32),
    "one row": lambda X: X.iloc[:1],
    "rows of a view": lambda X: X.iloc[3:9:2],
    "int64": lambda X: (X * 1000).astype(np.int64),
    "ints and floats": lambda X: X.assign(a=(X.a * 1e6).astype(np.int64) * 10**11),
    "bools and floats": lambda X: X.assign(b=X.b > 0),
    # scikit-learn casts each column of a frame with bools: 2**60 + 2**36 + 1 rounds once
    "bools and big ints": lambda X: X.assign(a=X.a > 0, b=(X.b > 0) * (2**60 + 2**36 + 1)),
    "float16": lambda X: X.astype(np.float16),
    "uint8": lambda X: (X.abs() * 50).astype(np.uint8),
}

# frames left to scikit-learn's checks (each converts, warns or refuses in its words)
_LEFT = {
    "columns reordered": lambda X: X[COLUMNS[::-1]],
    "a column renamed": lambda X: X.rename(columns={"a": "z"}),
    "an extra column": lambda X: X.assign(e=1.0),
    "numpy str names": lambda X: X.set_axis([np.str_(c) for c in COLUMNS], axis=1),
    "int names": lambda X: X.set_axis(range(len(COLUMNS)), axis=1),
    "a pd.NA name": lambda X: X.set_axis(pd.Index([pd.NA] + COLUMNS[1:], dtype=object), axis=1),
    "nullable Float64": lambda X: X.astype("Float64"),
    "nullable with NA": lambda X: X.astype("Float64").mask(X > 1),
    "nullable Int64": lambda X: (X * 10).round().astype("Int64"),
    "category": lambda X: X.assign(a=X.a.round().astype("category")),
    "sparse": lambda X: X.astype(pd.SparseDtype("float64", 0.0)),
    "one sparse column": lambda X: X.assign(a=X.a.astype(pd.SparseDtype("float64", 0.0))),
    "object numbers": lambda X: X.astype(object),
    "text": lambda X: X.astype(str),
    "complex": lambda X: X.astype(complex),
    "timedelta": lambda X: X.assign(a=pd.to_timedelta(np.arange(len(X)), unit="s")),
    "NaN": lambda X: X.mask(X > 1.5),
    "inf": lambda X: X.mask(X > 1.5, np.inf),
    "beyond float32": lambda X: X * 1e300,
    "no rows": lambda X: X.iloc[:0],
    "a subclass": lambda X: type("Frame", (pd.DataFrame,), {})(X),
}


@pytest.mark.parametrize("form", list(_TAKEN))
def test_frames_the_shortcut_takes_predict_as_the_full_checks_do(backend, dtype, form,
                                                                 monkeypatch):
    est = _fitted_classifier(backend, dtype)
    X = _TAKEN[form](_frame())
    calls = counting_checks(monkeypatch)
    quick = [_calls(est.predict_proba, X), _calls(est.predict, X)]
    assert calls == []                    # no scikit-learn check ran
    _full_checks(monkeypatch)
    full = [_calls(est.predict_proba, X), _calls(est.predict, X)]
    assert len(calls) == 2
    for q, f in zip(quick, full):
        _same(q, f)


@pytest.mark.parametrize("form", list(_TAKEN))
def test_frame_values_are_what_scikit_learn_makes_of_them(dtype, form):
    from sklearn.utils.validation import check_array
    X = _TAKEN[form](_frame())
    rows = _frames.frame_rows(X, np.asarray(COLUMNS, dtype=object), np.dtype(dtype))
    expected = check_array(X, dtype=dtype, order="C")
    # (in pandas' layout and dtype: predict reads columns, and casts a block at a time)
    with np.errstate(over="ignore", invalid="ignore"):
        np.testing.assert_array_equal(np.asarray(rows, dtype=dtype), expected)


@pytest.mark.parametrize("form", list(_LEFT))
def test_other_frames_get_the_full_checks_words(backend, dtype, form, monkeypatch):
    est = _fitted_classifier(backend, dtype)
    X = _LEFT[form](_frame())
    quick = _calls(est.predict_proba, X)
    _full_checks(monkeypatch)
    _same(quick, _calls(est.predict_proba, X))


def test_a_frame_for_an_estimator_fitted_without_names_is_checked(monkeypatch):
    est = MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, random_state=0)
    est.fit(_frame(30).to_numpy(), np.arange(30) % 3)
    calls = counting_checks(monkeypatch)
    result, caught = _calls(est.predict, _frame())
    assert len(calls) == 1                # scikit-learn's check, and its warning
    assert any("fitted without feature names" in message for _, message in caught)
    np.testing.assert_array_equal(result, est.predict(_frame().to_numpy()))


_LABELS = {
    "ints": (np.array([3, 7, 9]), None),
    "str": (np.array(["cat", "dog", "ox"], dtype=object), "str"),
    "object": (np.array(["cat", "dog", "ox"], dtype=object), object),
    "floats": (np.array([1.0, 2.0, 4.0]), None),
    "bools": (np.array([False, True]), None),
}


@pytest.mark.parametrize("kind", list(_LABELS))
def test_partial_fit_on_frames_and_series_trains_as_the_full_checks_do(backend, dtype, kind,
                                                                       monkeypatch):
    labels, series_dtype = _LABELS[kind]
    rng = np.random.default_rng(3)
    batches = [(_frame(16, seed=i), pd.Series(rng.choice(labels, 16), dtype=series_dtype))
               for i in range(5)]
    kwargs = dict(hidden_layer_sizes=(6,), backend=backend, dtype=dtype, random_state=0)
    quick, full = MLPClassifier(**kwargs), MLPClassifier(**kwargs)
    calls = counting_checks(monkeypatch)
    for X, y in batches:
        quick.partial_fit(X, y, classes=labels)
    assert len(calls) == 1                # the first call's only
    _full_checks(monkeypatch)
    for X, y in batches:
        full.partial_fit(X, y, classes=labels)
    assert len(calls) == 1 + len(batches)
    assert quick.loss_curve_ == full.loss_curve_ and quick.t_ == full.t_
    for a, b in zip(quick.coefs_ + quick.intercepts_, full.coefs_ + full.intercepts_):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(quick.classes_, full.classes_)
    np.testing.assert_array_equal(quick.predict(batches[0][0]), full.predict(batches[0][0]))


# label Series the shortcut leaves to the full checks (each refused or encoded there)
_ODD_LABELS = {
    "a label not in classes_": lambda y: y.where(y.index != 3, "emu"),
    "a missing label": lambda y: y.where(y.index != 3, None),
    "NaN": lambda y: y.astype(object).where(y.index != 3, np.nan),
    "pd.NA": lambda y: y.astype("string").where(y.index != 3, pd.NA),
    "category": lambda y: y.astype("category"),
    "mixed with a number": lambda y: y.astype(object).where(y.index != 3, 5),
    # equal to a class, but not a str: scikit-learn's type_of_target refuses it
    "a 0-d array first": lambda y: pd.Series([np.array(y[0])] + y.tolist()[1:], dtype=object),
    "a frame of one column": lambda y: y.to_frame(),
}


@pytest.mark.parametrize("form", list(_ODD_LABELS))
def test_odd_label_series_get_the_full_checks_words(form, monkeypatch):
    labels = np.array(["cat", "dog", "ox"], dtype=object)
    X = _frame(16)
    y = pd.Series(labels[np.arange(16) % 3], dtype="str")
    quick = MLPClassifier(hidden_layer_sizes=(4,), random_state=0).partial_fit(X, y,
                                                                               classes=labels)
    full = MLPClassifier(hidden_layer_sizes=(4,), random_state=0).partial_fit(X, y,
                                                                              classes=labels)
    odd = _ODD_LABELS[form](y)
    got = _calls(lambda y_: quick.partial_fit(X, y_), odd)
    _full_checks(monkeypatch)
    expected = _calls(lambda y_: full.partial_fit(X, y_), odd)
    assert got[1] == expected[1]
    if isinstance(expected[0], tuple):
        assert got[0] == expected[0]
    for a, b in zip(quick.coefs_, full.coefs_):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("outputs", [None, 2])
def test_regressor_partial_fit_on_frames_trains_as_the_full_checks_do(backend, dtype, outputs,
                                                                      monkeypatch):
    rng = np.random.default_rng(4)
    batches = []
    for i in range(4):
        y = rng.normal(size=16 if outputs is None else (16, outputs))
        batches.append((_frame(16, seed=10 + i),
                        pd.Series(y) if outputs is None else pd.DataFrame(y)))
    kwargs = dict(hidden_layer_sizes=(5,), backend=backend, dtype=dtype, random_state=2)
    quick, full = MLPRegressor(**kwargs), MLPRegressor(**kwargs)
    calls = counting_checks(monkeypatch)
    for X, y in batches:
        quick.partial_fit(X, y)
    # a Series of targets takes the shortcut; a DataFrame of them (several outputs) does not
    assert len(calls) == (1 if outputs is None else len(batches))
    _full_checks(monkeypatch)
    for X, y in batches:
        full.partial_fit(X, y)
    assert quick.loss_curve_ == full.loss_curve_
    for a, b in zip(quick.coefs_ + quick.intercepts_, full.coefs_ + full.intercepts_):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(quick.predict(batches[0][0]), full.predict(batches[0][0]))
