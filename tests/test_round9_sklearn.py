"""Round 9 of hostile testing (the scikit-learn estimators), each fixed:

- expected_failed_checks ignored dtype=np.float32 (check_estimator then failed);
- a sparse y (validate_data passes it) failed inside NumPy or SciPy;
- partial_fit's classes were not checked as scikit-learn checks them ([] gave an IndexError
  from the error message itself, [0, 1, None] NumPy's sort TypeError, [0, 1, 'a'] a
  message saying 0 and 1 were missing, [0, 0.5, 1] was taken);
- sample_weight gave Python's error naming the private base class;
- the messages listed every class.
"""
import numpy as np
import pytest

pytest.importorskip("sklearn")
import scipy.sparse as sp   # noqa: E402
from sklearn.pipeline import make_pipeline   # noqa: E402
from sklearn.preprocessing import StandardScaler   # noqa: E402

from fastmlp.sklearn import MLPClassifier, MLPRegressor, expected_failed_checks   # noqa: E402

rng = np.random.RandomState(0)
X = rng.randn(60, 4)


def test_expected_failed_checks_take_either_spelling_of_float32():
    as_type = expected_failed_checks(MLPClassifier(dtype=np.float32))
    assert as_type == expected_failed_checks(MLPClassifier(dtype="float32"))
    assert "check_methods_subset_invariance" in as_type
    assert expected_failed_checks(MLPRegressor(dtype=np.float64)) == {}


@pytest.mark.parametrize("make", [
    lambda: (MLPClassifier(max_iter=3, backend="numpy", random_state=0),
             (rng.rand(60, 3) > 0.5).astype(int)),
    lambda: (MLPRegressor(max_iter=3, backend="numpy", random_state=0), rng.randn(60, 2)),
], ids=["multilabel", "regressor"])
def test_a_sparse_y_trains_as_its_dense_self(make):
    est, Y = make()
    dense = est.fit(X, Y).predict(X)
    sparse = est.fit(X, sp.csr_matrix(Y)).predict(X)
    np.testing.assert_array_equal(sparse, dense)


def test_a_sparse_y_in_partial_fit():
    Y = (rng.rand(60, 3) > 0.5).astype(int)
    a = MLPClassifier(backend="numpy", random_state=0).partial_fit(X, Y, classes=[0, 1, 2])
    b = MLPClassifier(backend="numpy", random_state=0).partial_fit(X, sp.csr_matrix(Y),
                                                                   classes=[0, 1, 2])
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


@pytest.mark.parametrize("classes, words", [
    ([], "classes must be a non-empty list of labels"),
    ([0, 1, None], "classes: Unknown label type"),
    ([0, 1, "a"], "classes: Mix of label input types"),
    ([0, 0.5, 1], "classes: Unknown label type"),
])
def test_partial_fit_refuses_classes_scikit_learn_refuses(classes, words):
    y = rng.randint(0, 2, 60)
    with pytest.raises(ValueError, match=words):
        MLPClassifier(backend="numpy").partial_fit(X, y, classes=classes)


def test_weights_passed_third_to_partial_fit_are_refused_saying_why():
    # scikit-learn 1.9's MLPClassifier.partial_fit(X, y, sample_weight, classes)
    y = rng.randint(0, 2, 60)
    with pytest.raises(TypeError, match=r"takes classes by keyword.*fastmlp's estimators "
                                        "take no sample_weight") as refused:
        MLPClassifier(backend="numpy").partial_fit(X, y, rng.rand(60))
    assert len(str(refused.value)) < 500


@pytest.mark.parametrize("call", [
    lambda e, w: e.fit(X, rng.randint(0, 2, 60), sample_weight=w),
    lambda e, w: e.partial_fit(X, rng.randint(0, 2, 60), classes=[0, 1], sample_weight=w),
    lambda e, w: make_pipeline(StandardScaler(), e).fit(X, rng.randint(0, 2, 60),
                                                        mlpclassifier__sample_weight=w),
], ids=["fit", "partial_fit", "pipeline"])
def test_sample_weight_is_refused_naming_the_estimator(call):
    with pytest.raises(TypeError, match=r"MLPClassifier\.(partial_)?fit\(\) got unexpected "
                                        r"keyword argument\(s\) sample_weight: fastmlp's "
                                        "estimators take no sample_weight"):
        call(MLPClassifier(max_iter=2, backend="numpy"), np.ones(60))


@pytest.mark.parametrize("call", [
    lambda: MLPClassifier(backend="numpy").fit(X, rng.randint(0, 2, 60), np.ones(60)),
    lambda: MLPRegressor(backend="numpy").fit(X, rng.randn(60), np.ones(60)),
    lambda: MLPRegressor(backend="numpy").partial_fit(X, rng.randn(60), np.ones(60)),
    lambda: MLPClassifier(backend="numpy").partial_fit(X, rng.randint(0, 2, 60), [0, 1],
                                                       np.ones(60)),   # two more: refused too
], ids=["fit", "regressor-fit", "regressor-partial_fit", "partial_fit-fourth"])
def test_sample_weight_passed_positionally_is_refused_naming_it(call):
    # scikit-learn's fit(X, y, sample_weight): Python's error named the private base class
    with pytest.raises(TypeError, match=r"MLP(Classifier|Regressor)\.(partial_)?fit\(\) got [12] "
                                        r"positional argument\(s\) more than it takes: "
                                        "fastmlp's estimators take no sample_weight"):
        call()


def test_a_regressors_sample_weight_is_refused_too():
    with pytest.raises(TypeError, match=r"MLPRegressor\.partial_fit\(\) got unexpected"):
        MLPRegressor(backend="numpy").partial_fit(X, rng.randn(60), sample_weight=np.ones(60))


def test_messages_list_ten_classes_at_most():
    classes = np.arange(1000)
    est = MLPClassifier(backend="numpy").partial_fit(X, rng.randint(0, 1000, 60),
                                                     classes=classes)
    with pytest.raises(ValueError, match=r"not in classes_ \[0, 1, .*9\] \.\.\. \(1000 in "
                                         r"all\): \[1000, 1001\]") as refused:
        est.partial_fit(X[:2], [1000, 1001])
    assert len(str(refused.value)) < 300
    with pytest.raises(ValueError, match=r"differs from the classes of the first call, "
                                         r"\[0, 1, .*\] \.\.\. \(1000 in all\)"):
        est.partial_fit(X, rng.randint(0, 2, 60), classes=np.arange(1001))
