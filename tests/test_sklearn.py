"""fastmlp.sklearn: the scikit-learn estimators, on every backend.

scikit-learn's own estimator checks, then what users do with an estimator:
pipelines, grid search and cross-validation in worker processes, pickling and
cloning, labels of any kind, early stopping, partial_fit.
"""
import copy
import pickle
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")
pd = pytest.importorskip("pandas")

from sklearn import clone                                               # noqa: E402
from sklearn.exceptions import ConvergenceWarning                       # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline                              # noqa: E402
from sklearn.preprocessing import StandardScaler                        # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks      # noqa: E402

import fastmlp as fm                                                    # noqa: E402
from fastmlp.datasets import load_digits                                # noqa: E402
from fastmlp.sklearn import MLPClassifier, MLPRegressor, expected_failed_checks  # noqa: E402

BACKENDS = fm.available_backends()

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


# -- scikit-learn's estimator checks ------------------------------------------
# max_iter=50 keeps the ~110 checks per instance fast; float64 on numpy shows
# that the float32 expected failure is rounding only.
CHECKED = ([est(max_iter=50, backend=b) for b in BACKENDS for est in (MLPClassifier, MLPRegressor)]
           + [est(max_iter=50, backend="numpy", dtype="float64")
              for est in (MLPClassifier, MLPRegressor)])


@parametrize_with_checks(CHECKED, expected_failed_checks=expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# -- data ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    """400 digits rows scaled to [0, 1]: X float64 (400, 64), y int64 (400,)."""
    X, y = load_digits()
    return X[:400] / 16.0, y[:400]


def small(estimator_class, backend, **params):
    params = {"hidden_layer_sizes": (16,), "max_iter": 40, "random_state": 0, "batch_size": 50,
              "learning_rate_init": 0.01,
              "backend": backend, **params}
    return estimator_class(**params)


# -- in users' pipelines ---------------------------------------------------------
def test_pipeline_with_scaler(backend, digits):
    X, y = digits
    pipe = make_pipeline(StandardScaler(), small(MLPClassifier, backend))
    pipe.fit(X[:300], y[:300])
    assert pipe.score(X[300:], y[300:]) > 0.85


def test_grid_search_in_two_processes(backend, digits, joblib_workers_stopped):
    X, y = digits
    search = GridSearchCV(small(MLPClassifier, backend, max_iter=20),
                          {"hidden_layer_sizes": [(4,), (16,)]}, cv=2, n_jobs=2)
    search.fit(X, y)
    assert search.best_params_["hidden_layer_sizes"] in [(4,), (16,)]
    assert search.best_estimator_.model_.backend == backend
    assert search.best_score_ > 0.7


def test_cross_val_score_in_two_processes(backend, digits, joblib_workers_stopped):
    X, y = digits
    scores = cross_val_score(small(MLPClassifier, backend, max_iter=20), X, y, cv=3, n_jobs=2)
    assert scores.shape == (3,) and scores.min() > 0.7


@pytest.mark.parametrize("estimator_class", [MLPClassifier, MLPRegressor])
def test_pickle_deepcopy_clone_predict_identically(backend, digits, estimator_class):
    X, y = digits
    est = small(estimator_class, backend, max_iter=5).fit(X, y)
    expected = est.predict(X)
    for twin in (pickle.loads(pickle.dumps(est)), copy.deepcopy(est)):
        assert twin.model_ is not est.model_ and twin.model_.backend == backend
        np.testing.assert_array_equal(twin.predict(X), expected)
    refit = clone(est).fit(X, y)   # same parameters, same random_state
    np.testing.assert_array_equal(refit.predict(X), expected)


# -- labels ------------------------------------------------------------------------
def test_string_labels_from_pandas(backend, digits):
    X, y = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                      "nine"])
    frame = pd.DataFrame(X, columns=[f"px{i}" for i in range(64)])
    labels = pd.Series(names[y], name="digit")
    clf = small(MLPClassifier, backend).fit(frame, labels)
    assert list(clf.classes_) == sorted(names)
    assert list(clf.feature_names_in_) == list(frame.columns)
    assert list(clf.model_.classes_) == sorted(names)
    predicted = clf.predict(frame)
    assert set(predicted) <= set(names) and np.mean(predicted == names[y]) > 0.9
    assert clf.score(frame, labels) > 0.9


@pytest.mark.parametrize("labels", [np.array([3, 10]), np.array([False, True]),
                                    np.array(["bike", "car"])], ids=["ints", "bools", "strs"])
def test_binary_labels_one_sigmoid_unit(backend, digits, labels):
    X, y = digits
    target = labels[(y >= 5).astype(int)]
    clf = small(MLPClassifier, backend).fit(X, target)
    assert clf.model_.layers[-1].units == 1 and clf.model_.loss == "binary_cross_entropy"
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(clf.predict(X), labels[proba.argmax(axis=1)])
    assert clf.score(X, target) > 0.9


def test_non_contiguous_int_labels_use_softmax(backend, digits):
    X, y = digits
    clf = small(MLPClassifier, backend).fit(X, y * 7 - 20)
    assert clf.model_.loss == "cross_entropy" and clf.model_.layers[-1].units == 10
    np.testing.assert_array_equal(clf.classes_, np.arange(10) * 7 - 20)
    assert clf.score(X, y * 7 - 20) > 0.9


def test_multilabel_indicator(backend, digits):
    X, y = digits
    Y = np.stack([y % 2, (y >= 5), y == 0], axis=1).astype(np.int64)
    clf = small(MLPClassifier, backend).fit(X, Y)
    assert clf.model_.loss == "binary_cross_entropy" and clf.model_.layers[-1].units == 3
    predicted = clf.predict(X)
    assert predicted.shape == Y.shape and predicted.dtype == Y.dtype
    assert np.mean(predicted == Y) > 0.9


# -- regression --------------------------------------------------------------------
def test_regressor_output_shape_follows_y(backend, digits):
    X, y = digits
    target = X[:, :3] @ np.array([1.0, -2.0, 0.5]) + 1
    reg = small(MLPRegressor, backend, max_iter=200, learning_rate_init=0.01).fit(X, target)
    assert reg.predict(X).shape == (len(X),)
    assert reg.score(X, target) > 0.8   # scikit-learn's own MLPRegressor: 0.87 (82 epochs)
    reg2 = small(MLPRegressor, backend, max_iter=5).fit(X, np.stack([target, -target], 1))
    assert reg2.predict(X).shape == (len(X), 2)
    assert reg2.model_.layers[-1].activation.name == "linear" and reg2.model_.loss == "mse"


# -- training -----------------------------------------------------------------------
def test_early_stopping_restores_best_weights(backend, digits):
    X, y = digits
    clf = small(MLPClassifier, backend, max_iter=300, early_stopping=True,
                validation_fraction=0.25, n_iter_no_change=5, learning_rate_init=0.05,
                hidden_layer_sizes=(8,))
    clf.fit(X, y)
    scores = clf.validation_scores_
    assert len(scores) == clf.n_iter_ == len(clf.loss_curve_) and clf.n_iter_ < 300
    best = int(np.argmax(scores))
    assert scores[-1] < scores[best] and best < clf.n_iter_ - 1  # the last epoch was worse
    # the same held-out rows fastmlp.sklearn used (scikit-learn's split: stratified for
    # two classes only, not for these ten)
    _, X_val, _, y_val = train_test_split(X, y, random_state=np.random.RandomState(0),
                                          test_size=0.25)
    assert clf.score(X_val, y_val) == pytest.approx(scores[best])
    assert clf.best_validation_score_ == scores[best] and clf.best_loss_ is None


def test_stops_when_loss_stops_improving(backend, digits):
    X, y = digits
    clf = small(MLPClassifier, backend, max_iter=500, tol=0.05, n_iter_no_change=3)
    clf.fit(X, y)
    assert clf.n_iter_ < 500 and clf.validation_scores_ is None
    # scikit-learn's rule: stop at the first run of n_iter_no_change + 1 epochs whose
    # loss does not beat the best before it by tol
    curve = np.array(clf.loss_curve_)
    best_before = np.concatenate([[np.inf], np.minimum.accumulate(curve)[:-1]])
    run, stop = 0, None
    for epoch, stalled in enumerate(curve > best_before - clf.tol):
        run = run + 1 if stalled else 0
        if run > clf.n_iter_no_change:
            stop = epoch + 1
            break
    assert stop == clf.n_iter_
    assert clf.best_loss_ == curve.min()
    assert clf.t_ == clf.n_iter_ * len(X)


def test_max_iter_warns_convergence(digits):
    X, y = digits
    with pytest.warns(ConvergenceWarning, match="maximum iterations"):
        small(MLPClassifier, "numpy", max_iter=2).fit(X, y)


def test_partial_fit(backend, digits):
    X, y = digits
    clf = small(MLPClassifier, backend)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, y)
    losses = [clf.partial_fit(X[:200], y[:200], classes=np.arange(10)).loss_curve_[-1]]
    for _ in range(9):
        losses.append(clf.partial_fit(X[200:], y[200:]).loss_curve_[-1])
    assert clf.n_iter_ == 10 and clf.t_ == 2000
    assert losses[-1] < losses[1]
    with pytest.raises(ValueError, match="not in classes_"):
        clf.partial_fit(X[:5], np.full(5, 11))
    reg = small(MLPRegressor, backend)
    for _ in range(3):
        reg.partial_fit(X, y.astype(float))
    assert reg.n_iter_ == 3 and len(reg.loss_curve_) == 3 and reg.loss_curve_[-1] < reg.loss_curve_[0]


def test_partial_fit_continues_fit(digits):
    X, y = digits
    clf = small(MLPClassifier, "numpy", max_iter=3).fit(X, y)
    model = clf.model_
    clf.partial_fit(X, y)
    assert clf.model_ is model and clf.n_iter_ == 4
    clf.fit(X, y)
    assert clf.model_ is not model and clf.n_iter_ == 3


# -- parameters ------------------------------------------------------------------------
def test_parameters_reach_the_model(digits):
    X, y = digits
    clf = MLPClassifier(hidden_layer_sizes=(7, 5), activation="logistic", solver="sgd",
                        alpha=0.01, batch_size=50, learning_rate_init=0.1, momentum=0.5,
                        nesterovs_momentum=False, max_iter=1, random_state=0,
                        backend="numpy", dtype="float64").fit(X, y)
    model = clf.model_
    assert [l.units for l in model.layers] == [7, 5, 10]
    assert [l.activation.name for l in model.layers] == ["sigmoid", "sigmoid", "softmax"]
    assert model.dtype == np.float64 and model.backend == "numpy"
    opt = model.optimizer.config()
    assert opt == {"name": "sgd", "lr": 0.1, "momentum": 0.5, "nesterov": False,
                   "weight_decay": pytest.approx(0.01 / 50)}
    reg = MLPRegressor(hidden_layer_sizes=3, activation="identity", alpha=0.001,
                       batch_size=400, max_iter=1, backend="numpy").fit(X, X[:, :2])
    assert [l.activation.name for l in reg.model_.layers] == ["linear", "linear"]


@pytest.mark.parametrize("n_outputs", [1, 3])
def test_the_regressors_alpha_takes_scikit_learns_step(n_outputs):
    # fastmlp's mse gradient is twice scikit-learn's (squared errors summed, not halved):
    # with alpha mapped right, every weight's step is exactly twice scikit-learn's, for
    # any number of outputs (alpha * n_outputs-fold decay made the ratio vary per weight)
    from sklearn.neural_network import MLPRegressor as SkRegressor
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(20, 4)), rng.normal(size=(20, n_outputs))
    Y = Y[:, 0] if n_outputs == 1 else Y
    ratios = sklearn_step_ratios(MLPRegressor, SkRegressor, X, Y, alpha=1.0)
    np.testing.assert_allclose(ratios, 2.0, rtol=1e-9)


def test_the_classifiers_alpha_takes_scikit_learns_step():
    from sklearn.neural_network import MLPClassifier as SkClassifier
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 4)), rng.integers(0, 3, 20)
    ratios = sklearn_step_ratios(MLPClassifier, SkClassifier, X, y, alpha=1.0,
                                 classes=[0, 1, 2])
    np.testing.assert_allclose(ratios, 1.0, rtol=1e-9)


def sklearn_step_ratios(estimator, sklearn_estimator, X, y, alpha, classes=None,
                        first_rows=None):
    """fastmlp's step over scikit-learn's for every weight, one full-batch plain-SGD
    partial_fit on (X, y) from the same weights (float64, numpy backend).

    A first partial_fit on the first ``first_rows`` rows (all by default) builds both
    models; the biases are then zeroed (fastmlp decays them, scikit-learn does not)."""
    first = slice(None, first_rows)
    params = dict(hidden_layer_sizes=(5,), solver="sgd", momentum=0.0, alpha=alpha,
                  learning_rate_init=0.1, shuffle=False, random_state=0)
    extra = {} if classes is None else {"classes": classes}
    ours = estimator(**params, dtype="float64", backend="numpy").partial_fit(
        X[first], y[first], **extra)
    theirs = sklearn_estimator(**params).partial_fit(X[first], y[first], **extra)
    W = ours.model_.get_weights()
    for b in W[1::2]:
        b[:] = 0
    ours.model_.set_weights(W)
    theirs.coefs_ = [w.copy() for w in W[0::2]]
    theirs.intercepts_ = [b.copy() for b in W[1::2]]
    ours.partial_fit(X, y)
    theirs.partial_fit(X, y)
    ours_step = [w - w0 for w, w0 in zip(ours.model_.get_weights()[0::2], W[0::2])]
    theirs_step = [w - w0 for w, w0 in zip(theirs.coefs_, W[0::2])]
    return np.concatenate([(a / b).ravel() for a, b in zip(ours_step, theirs_step)])


def test_auto_backend_prefers_compiled(digits):
    X, y = digits
    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=1).fit(X, y)
    assert clf.model_.backend == [b for b in ("cython", "numba", "numpy") if b in BACKENDS][0]


@pytest.mark.parametrize("params, match", [
    ({"backend": "cuda"}, "backend"),
    ({"solver": "lbfgs"}, "solver"),
    ({"activation": "softmax"}, "activation"),
    ({"hidden_layer_sizes": (4, 0)}, "hidden_layer_sizes"),
    ({"alpha": 10.0, "batch_size": 5}, "alpha"),
])
def test_bad_parameters_name_the_problem(digits, params, match):
    X, y = digits
    with pytest.raises(ValueError, match=match):
        MLPClassifier(max_iter=1, **params).fit(X, y)


def test_one_class_is_refused(digits):
    X, _ = digits
    with pytest.raises(ValueError, match="at least 2 classes"):
        MLPClassifier(max_iter=1).fit(X, np.zeros(len(X)))


# -- optional dependency ------------------------------------------------------------------
def test_fastmlp_does_not_import_sklearn():
    code = "import sys, fastmlp; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_sklearn_says_how_to_install():
    code = ("import sys; sys.modules['sklearn'] = None\n"   # makes `import sklearn` fail
            "try:\n    import fastmlp.sklearn\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install fastmlp[sklearn]" in out.stdout


def test_module_name_does_not_shadow_sklearn():
    import sklearn
    import fastmlp.sklearn
    assert sklearn.__name__ == "sklearn" and hasattr(sklearn, "__version__")
    assert fastmlp.sklearn.ClassifierMixin.__module__ == "sklearn.base"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("estimator_class", [MLPClassifier, MLPRegressor])
def test_dtype_given_as_numpys_type_is_the_same_estimator(digits, estimator_class, dtype):
    X, y = digits
    by_name = small(estimator_class, "numpy", dtype=dtype, max_iter=3).fit(X, y)
    by_type = small(estimator_class, "numpy", dtype=getattr(np, dtype), max_iter=3).fit(X, y)
    assert by_type.model_.dtype == np.dtype(dtype)
    assert clone(by_type).get_params()["dtype"] is getattr(np, dtype)
    np.testing.assert_array_equal(by_type.predict(X), by_name.predict(X))
    with pytest.raises(ValueError, match="dtype"):
        small(estimator_class, "numpy", dtype=np.float16).fit(X, y)


def test_resolve_backend_names_what_is_not_a_backend_name():
    from fastmlp.sklearn import resolve_backend
    for bad in (np.array(["auto", "numpy"]), ["numpy"], None, 3):  # an array: no ambiguity error
        with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
            resolve_backend(bad)
    with pytest.raises(ValueError, match="backend 'nope' is not available here"):
        resolve_backend("nope")
    assert resolve_backend("numpy") == "numpy"
