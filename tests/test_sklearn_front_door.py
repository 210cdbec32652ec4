"""The scikit-learn wrappers' shortcuts, held to what they replace:

- fit trains as many epochs per Model.fit call as scikit-learn's stopping rule allows
  (n_iter_no_change + 1 - the epochs already without improvement): the same epochs, bit
  for bit, as one call per epoch, and the same stopping epoch;
- predict and predict_proba of a plain ndarray skip scikit-learn's validate_data: the
  same outputs, and scikit-learn's own errors and warnings for what model_ refuses;
- MLPRegressor's early stopping scores R^2 without r2_score's input checks: the same
  value, bit for bit."""
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import r2_score

import fastmlp as fm
from fastmlp.sklearn import MLPClassifier, MLPRegressor, r2


def _stop_epoch(curve, tol, patience):
    """The epoch (1-based) where scikit-learn's rule stops training on ``curve``, else None."""
    best, bad = np.inf, 0
    for epoch, loss in enumerate(curve, 1):
        bad = 0 if loss <= best - tol else bad + 1
        best = min(best, loss)
        if bad > patience:
            return epoch
    return None


def _data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    return X, (X[:, 0] + X[:, 1] ** 2 > 0.5).astype(int)


@pytest.mark.parametrize("patience, tol", [(1, 1e-3), (3, 1e-2), (10, 1e-4)])
def test_runs_of_epochs_stop_where_one_epoch_at_a_time_does(backend, dtype, patience, tol):
    X, y = _data()
    est = MLPClassifier(hidden_layer_sizes=(6,), max_iter=300, tol=tol, backend=backend,
                        dtype=dtype, n_iter_no_change=patience, random_state=0,
                        learning_rate_init=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
        assert len(est.loss_curve_) == est.n_iter_
        stop = _stop_epoch(est.loss_curve_, tol, patience)
        assert est.n_iter_ == (stop if stop is not None else 300)
        # the same epochs as one run: no stopping rule can end it early
        one_run = clone(est).set_params(max_iter=est.n_iter_, n_iter_no_change=10**6).fit(X, y)
    assert one_run.loss_curve_ == est.loss_curve_
    for a, b in zip(est.coefs_ + est.intercepts_, one_run.coefs_ + one_run.intercepts_):
        np.testing.assert_array_equal(a, b)


def test_a_diverging_run_counts_the_epochs_it_kept(backend):
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(40, 3)), rng.normal(size=40) * 1e10
    est = MLPRegressor(hidden_layer_sizes=(4,), solver="sgd", learning_rate_init=1.0,
                       momentum=0.0, max_iter=50, dtype="float32", backend=backend,
                       random_state=0, n_iter_no_change=40)
    with pytest.raises(fm.TrainingDiverged):
        est.fit(X, y)
    kept = len(est.model_.history.epoch)   # kept by the Model.fit that raised
    assert kept >= 1
    assert est.n_iter_ == len(est.loss_curve_) == kept


@pytest.fixture(scope="module")
def fitted():
    X, y = _data(80)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return {(kind, dtype): (MLPClassifier if kind == "classifier" else MLPRegressor)(
                    hidden_layer_sizes=(5,), max_iter=5, dtype=dtype, random_state=0).fit(
                    X, y if kind == "classifier" else X[:, :2])
                for kind in ("classifier", "regressor") for dtype in ("float32", "float64")}


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_plain_arrays_predict_what_scikit_learns_checks_give(fitted, kind, dtype):
    from sklearn.utils import check_array
    est = fitted[kind, dtype]
    rng = np.random.default_rng(4)
    X = rng.normal(size=(30, 4))
    for given in (X, X[:1], X.astype(np.float32), np.asfortranarray(X), X[::2],
                  (X * 3).astype(np.int64), X > 0, X.astype(np.float16)):
        checked = check_array(given, dtype=est.dtype, order="C")
        want = est.model_.predict(checked).astype(np.float64)
        got = est.predict_proba(given) if kind == "classifier" else est.predict(given)
        if kind == "classifier":   # (one sigmoid unit: the two classes' columns)
            want = np.hstack([1 - want, want]) if want.shape[1] == 1 else want
            np.testing.assert_array_equal(est.predict(given), est.classes_[want.argmax(1)])
        else:
            want = want[:, 0] if want.shape[1] == 1 else want
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.float64


def test_what_model_refuses_gets_scikit_learns_words(fitted):
    from sklearn.exceptions import NotFittedError
    est = fitted["classifier", "float32"]
    bad = np.ones((3, 4))
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        est.predict(bad)
    with pytest.raises(ValueError, match="X has 3 features, but MLPClassifier is expecting 4"):
        est.predict(np.ones((2, 3)))
    with pytest.raises(ValueError, match="Input X contains infinity or a value too large"):
        with warnings.catch_warnings():   # (scikit-learn's cast warns of the overflow)
            warnings.simplefilter("ignore", RuntimeWarning)
            est.predict(np.full((1, 4), 1e300))   # finite, but not in float32
    with pytest.raises(NotFittedError):
        MLPClassifier().predict(np.ones((1, 4)))
    with pytest.raises(ValueError, match="Found array with 0 sample"):
        est.predict(np.ones((0, 4)))


def test_an_estimator_fitted_on_a_frame_still_warns_for_an_array():
    pd = pytest.importorskip("pandas")
    X, y = _data(40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPClassifier(hidden_layer_sizes=(3,), max_iter=2, random_state=0).fit(
            pd.DataFrame(X, columns=list("abcd")), y)
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        est.predict(X[:1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["random", "constant column", "perfect column",
                                  "constant and perfect", "one output", "huge", "two rows"])
def test_r2_is_r2_score_bit_for_bit(dtype, case):
    rng = np.random.default_rng(len(case))
    n, k = (2, 3) if case == "two rows" else (37, 1 if case == "one output" else 4)
    T = rng.normal(size=(n, k)).astype(dtype)
    P = (T + rng.normal(scale=0.3, size=(n, k))).astype(dtype)
    if case in ("constant column", "constant and perfect"):
        T[:, 1] = 2.5
    if case in ("perfect column", "constant and perfect"):
        P[:, 0] = T[:, 0]
    if case == "constant and perfect":
        P[:, 1] = 2.5
    if case == "huge":
        T, P = T * dtype(1e15), P * dtype(1e15)
    expected = r2_score(T, P)
    assert r2(T, P) == expected and type(r2(T, P)) is float


def test_early_stopping_regressor_scores_as_r2_score(backend, monkeypatch):
    import fastmlp.sklearn as fsk
    compared = []

    def checked(T, P):   # every epoch's score, against r2_score on the same arrays
        compared.append(r2_score(T, P))
        assert r2(T, P) == compared[-1]
        return r2(T, P)
    monkeypatch.setattr(fsk, "r2", checked)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(80, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=80)
    est = MLPRegressor(hidden_layer_sizes=(8,), max_iter=15, early_stopping=True,
                       n_iter_no_change=20, backend=backend, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    assert est.validation_scores_ == compared and len(compared) == est.n_iter_ == 15
