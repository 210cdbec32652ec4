"""fastmlp.sklearn: the fixes for three defects a hostile QA pass found
(tests/test_hostile_files_pipelines.py holds its smallest reproducers).

* partial_fit after fit(early_stopping=True) continues from the best epoch's state;
* a regressor target too large for the model dtype is named as such, before any cast;
* an estimator with backend="auto" unpickles where its chosen backend is missing,
  rebuilt on the backend "auto" picks there with the same state.
"""
import copy
import math
import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

import fastmlp as fm                                        # noqa: E402
from fastmlp import backends as fm_backends                 # noqa: E402
from fastmlp.sklearn import MLPClassifier, MLPRegressor     # noqa: E402
from helpers import without_backend                          # noqa: E402
from tolerances import TOLERANCES                           # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _data(kind, n=60, d=4, seed=0):
    """X float64 (n, d) and y: int labels (n,) for "classifier", floats (n,) for "regressor"."""
    X = np.random.default_rng(seed).normal(size=(n, d))
    return X, ((X[:, 0] > 0).astype(int) if kind == "classifier" else X[:, 0] - X[:, 1])


def _estimator(kind, **params):
    cls = MLPClassifier if kind == "classifier" else MLPRegressor
    return cls(**{"hidden_layer_sizes": (8,), "max_iter": 6, "random_state": 0, **params})


# -- 1. partial_fit after early stopping ----------------------------------------------

@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_partial_fit_after_early_stopping_continues_from_the_best_epoch(backend, kind):
    X, y = _data(kind)
    est = _estimator(kind, early_stopping=True, backend=backend).fit(X, y)
    assert est.best_loss_ is None   # scikit-learn's convention with early stopping
    best = est.model_.get_state()
    curve, scores = list(est.loss_curve_), list(est.validation_scores_)
    steps = math.ceil(len(X) / min(200, len(X)))   # batch_size="auto"

    est.partial_fit(X, y)
    # one epoch over all of X, from the restored best state (its optimiser step count)
    after = est.model_.get_state()
    assert after["opt_step"][0] == best["opt_step"][0] + steps
    assert est.loss_curve_[:-1] == curve and est.n_iter_ == len(curve) + 1
    assert est.validation_scores_ == scores   # partial_fit holds nothing out
    assert est.best_loss_ == est.loss_curve_[-1]   # training loss tracked from here

    est.partial_fit(X, y)
    assert est.best_loss_ == min(est.loss_curve_[-2:])
    assert np.isfinite(est.predict(X).astype(float)).all()

    est.fit(X, y)   # a new fit starts over, with scikit-learn's convention again
    assert est.best_loss_ is None and est.loss_curve_ == curve


# -- 2. regressor targets too large for the model dtype ---------------------------------

@pytest.mark.parametrize("shape", [(6,), (6, 2)], ids=["1-D y", "2-D y"])
@pytest.mark.parametrize("method", ["fit", "partial_fit"])
def test_regressor_target_too_large_gets_model_fits_message_and_no_warning(shape, method):
    X, y = np.random.default_rng(0).normal(size=(6, 2)), np.full(shape, 1e300)
    model = fm.Model([fm.Dense(4), fm.Dense(y.reshape(6, -1).shape[1])], input_dim=2,
                     backend="numpy")
    with pytest.raises(ValueError) as from_model:
        model.fit(X, y.reshape(6, -1), epochs=1)
    est = MLPRegressor((4,), max_iter=2, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no overflow RuntimeWarning from a cast
        with pytest.raises(ValueError) as from_estimator:
            getattr(est, method)(X, y)
    assert "too large for float32" in str(from_estimator.value)
    assert str(from_estimator.value) == str(from_model.value)


def test_regressor_float64_still_takes_large_finite_targets():
    X, y = np.random.default_rng(0).normal(size=(6, 2)), np.full(6, 1e30)
    est = MLPRegressor((4,), max_iter=2, backend="numpy", dtype="float64").fit(X, y)
    assert est.predict(X).shape == (6,)


# -- 3. backend="auto" across machines --------------------------------------------------

@pytest.fixture
def two_backends():
    if len(fm.available_backends()) < 2:
        pytest.skip("needs two backends")


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_auto_estimator_moves_to_the_backend_auto_picks_there(monkeypatch, two_backends,
                                                              kind, dtype):
    pd = pytest.importorskip("pandas")
    X, y = _data(kind)
    X = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    if kind == "classifier":
        y = np.array(["no", "yes"])[y]
    est = _estimator(kind, dtype=dtype).fit(X, y)
    chosen = est.model_.backend
    blob = pickle.dumps(est)

    without_backend(monkeypatch, chosen)
    moved = pickle.loads(blob)
    assert moved.backend == "auto"
    assert moved.model_.backend == fm_backends.resolve("auto") != chosen
    # the whole training state, not only the weights
    state, moved_state = est.model_.get_state(), moved.model_.get_state()
    for key in ("theta", "opt_buffers", "opt_step"):
        np.testing.assert_array_equal(moved_state[key], state[key])
    assert moved_state["rng_state"] == state["rng_state"]
    np.testing.assert_array_equal(moved.model_.classes_, est.model_.classes_)
    np.testing.assert_array_equal(moved.model_.feature_names_in_, est.model_.feature_names_in_)
    for attr in ("classes_", "feature_names_in_"):
        if hasattr(est, attr):
            np.testing.assert_array_equal(getattr(moved, attr), getattr(est, attr))
    assert (moved.n_iter_, moved.loss_curve_, moved.t_) == (est.n_iter_, est.loss_curve_, est.t_)

    predict = est.predict_proba if kind == "classifier" else est.predict
    np.testing.assert_allclose(getattr(moved, predict.__name__)(X), predict(X),
                               **TOLERANCES[dtype])
    if kind == "classifier":
        np.testing.assert_array_equal(moved.predict(X), est.predict(X))
    moved.partial_fit(X, y)   # training goes on there
    assert moved.n_iter_ == est.n_iter_ + 1


def test_auto_estimator_pickled_and_copied_here_keeps_its_backend():
    X, y = _data("classifier")
    est = _estimator("classifier").fit(X, y)
    for twin in (pickle.loads(pickle.dumps(est)), copy.deepcopy(est)):
        assert twin.model_ is not est.model_ and twin.model_.backend == est.model_.backend
        np.testing.assert_array_equal(twin.predict_proba(X), est.predict_proba(X))
    assert "model_" in est.__dict__   # pickling leaves the estimator itself alone


def test_explicit_backend_that_is_missing_keeps_its_clear_error(monkeypatch, two_backends):
    X, y = _data("classifier")
    chosen = fm.available_backends()[-1]
    blob = pickle.dumps(_estimator("classifier", backend=chosen).fit(X, y))
    without_backend(monkeypatch, chosen)
    with pytest.raises(ValueError, match=f"backend '{chosen}' is not available here"):
        pickle.loads(blob)


def test_unfitted_auto_estimator_pickles():
    est = pickle.loads(pickle.dumps(_estimator("regressor")))
    assert not hasattr(est, "model_") and est.backend == "auto"


@pytest.mark.parametrize("where", ["fit", "predict"])
def test_masked_arrays_are_refused_as_by_model(where):
    """scikit-learn's input checks drop a mask: the estimators trained on, and predicted
    from, the hidden values (a masked 1e6 was trained on); Model refuses masked arrays,
    and so do they now, naming the argument."""
    from fastmlp.sklearn import MLPRegressor
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 3)), rng.normal(size=20)
    masked = np.ma.masked_array(X, mask=np.zeros_like(X, dtype=bool))
    masked[0, 0] = np.ma.masked
    est = MLPRegressor(hidden_layer_sizes=(4,), max_iter=2)
    if where == "fit":
        with pytest.raises(TypeError, match="X is a masked array"):
            est.fit(masked, y)
        with pytest.raises(TypeError, match="y is a masked array"):
            est.fit(X, np.ma.masked_array(y))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X, y)
        with pytest.raises(TypeError, match="X is a masked array"):
            est.predict(masked)


def test_concurrent_partial_fit_calls_each_train_with_their_own_decay():
    """partial_fit set its decay (alpha / its rows) and then trained, each under the
    model's lock separately: another thread's partial_fit could set its own decay in
    between (27-92 of 800 steps trained with the other call's). Now one hold covers both."""
    import sys
    import threading
    from fastmlp.sklearn import MLPClassifier
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((300, 20)), rng.integers(0, 3, 300)
    est = MLPClassifier((16,), alpha=0.5, backend="numpy", random_state=0)
    est.partial_fit(X[:50], y[:50], classes=[0, 1, 2])
    model, fit, wrong = est.model_, est.model_.fit, []

    def spy_fit(Xc, T, **kw):   # the decay the step trains with
        with model._lock:
            if model.optimizer.weight_decay != 0.5 / len(Xc):
                wrong.append(len(Xc))
            return fit(Xc, T, **kw)

    model.fit = spy_fit
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=lambda r=r: [est.partial_fit(X[:r], y[:r])
                                                        for _ in range(100)])
                   for r in (10, 100, 10, 100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert wrong == [] and est.n_iter_ == 401


# -- hostile round 5: the estimator's own lock, its snapshots, multilabel classes ---------

def test_first_partial_fit_calls_from_several_threads_all_train_one_model():
    """Each racing first call saw no model_ and built its own: three of four calls'
    training was thrown away (20 of 20 trials). Now the estimator's lock decides once."""
    import threading
    X, y = _data("classifier", n=400)
    for _ in range(5):
        est = _estimator("classifier", backend=fm.available_backends()[-1])
        barrier = threading.Barrier(4)

        def work():
            barrier.wait()
            est.partial_fit(X, y, classes=[0, 1])

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert (est.n_iter_, len(est.loss_curve_), est.t_) == (4, 4, 4 * len(X))
        assert est.model_.get_state()["opt_step"][0] == 4 * math.ceil(len(X) / 200)


@pytest.mark.parametrize("backend", ["auto", "explicit"])
def test_pickle_taken_during_fit_is_one_moment(backend):
    """The attributes were copied when pickling began and model_ (under its lock) when fit
    ended: n_iter_ 5 with 150 losses. Now the snapshot waits for fit and is consistent."""
    import threading
    import time
    X, y = _data("classifier", n=2000, d=10)
    name = "auto" if backend == "auto" else fm.available_backends()[-1]
    est = _estimator("classifier", backend=name, max_iter=60, tol=0, n_iter_no_change=1000)
    worker = threading.Thread(target=est.fit, args=(X, y))
    worker.start()
    while getattr(est, "n_iter_", 0) < 2 and worker.is_alive():
        time.sleep(0.0005)
    blob = pickle.dumps(est)
    worker.join()
    twin = pickle.loads(blob)
    assert twin.n_iter_ == len(twin.loss_curve_) == 60 and twin.t_ == 60 * len(X)
    for a, b in zip(twin.model_.get_weights(), est.model_.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_copy_of_an_estimator_never_shares_its_model():
    """copy.copy shared model_ (and loss_curve_) with an explicit backend, not with "auto":
    partial_fit on the copy trained the original's weights behind its n_iter_."""
    X, y = _data("classifier")
    for backend in ("auto", fm.available_backends()[-1]):
        est = _estimator("classifier", backend=backend).fit(X, y)
        before = [w.copy() for w in est.model_.get_weights()]
        twin = copy.copy(est)
        twin.partial_fit(X, y)
        assert twin.model_ is not est.model_ and twin.loss_curve_ is not est.loss_curve_
        assert len(est.loss_curve_) == est.n_iter_
        for a, b in zip(est.model_.get_weights(), before, strict=True):
            np.testing.assert_array_equal(a, b)


def test_multilabel_partial_fit_classes_are_the_column_indices_on_every_call():
    """classes=[0, 1] was taken silently on the first call (classes_ became [0, 1, 2]) and
    refused on the second with a message naming a first call's classes never given."""
    X = np.random.default_rng(0).normal(size=(30, 4))
    Y = (X[:, :3] > 0).astype(int)
    for bad in ([0, 1], [7], ["a", "b", "c"]):
        with pytest.raises(ValueError, match=r"multilabel .*column indices, \[0, 1, 2\]"):
            _estimator("classifier").partial_fit(X, Y, classes=bad)
    est = _estimator("classifier").partial_fit(X, Y, classes=[0, 1, 2])
    est.partial_fit(X, Y, classes=[2, 1, 0])
    assert est.n_iter_ == 2 and est.classes_.tolist() == [0, 1, 2]


# -- set_params from another thread during a call (round 24's race, closed) --------------

@pytest.mark.parametrize("kind", ["classifier", "regressor"])
@pytest.mark.parametrize("method", ["fit", "partial_fit"])
def test_set_params_waits_for_a_running_call(kind, method, monkeypatch):
    """Another thread's set_params landing after a call's parameter check was used
    unchecked by the rest of that call (max_iter=0 returned an untrained model,
    batch_size=0 raised ZeroDivisionError). Now set_params waits for the call: the call
    is held just after its check, and the other thread's set_params returns only once
    the call has trained with the values it checked."""
    import threading
    X, y = _data(kind, n=50)
    est = _estimator(kind, backend=fm.available_backends()[-1], max_iter=3, tol=0,
                     batch_size=10)
    kwargs = {"classes": [0, 1]} if (kind, method) == ("classifier", "partial_fit") else {}
    checked, release, events = threading.Event(), threading.Event(), []
    validate = type(est)._validate_params

    def held_validate(self):
        validate(self)
        events.append("checked")
        checked.set()
        release.wait(10)

    monkeypatch.setattr(type(est), "_validate_params", held_validate)

    def other():
        checked.wait(10)
        est.set_params(batch_size=0, max_iter=0)   # invalid: the next call refuses them
        events.append("set")

    setter = threading.Thread(target=other)
    setter.start()
    caller = threading.Thread(target=lambda: (getattr(est, method)(X, y, **kwargs),
                                              events.append("trained")))
    caller.start()
    checked.wait(10)
    setter.join(0.3)
    assert setter.is_alive(), "set_params did not wait for the running call"
    release.set()
    caller.join(10)
    setter.join(10)
    assert events == ["checked", "trained", "set"]
    assert est.n_iter_ == (3 if method == "fit" else 1)
    assert est.t_ == est.n_iter_ * len(X)
    assert (est.batch_size, est.max_iter) == (0, 0)
    monkeypatch.setattr(type(est), "_validate_params", validate)
    with pytest.raises(ValueError, match="batch_size|max_iter"):
        getattr(est, method)(X, y)


def test_set_params_from_inside_a_call_does_not_deadlock():
    """The lock is the estimator's re-entrant one: set_params in the training thread
    itself (a callback, a subclass) goes through."""
    X, y = _data("classifier", n=40)
    est = _estimator("classifier", backend=fm.available_backends()[-1], max_iter=2, tol=0)
    with est._training_lock():
        est.set_params(max_iter=1)
        est.fit(X, y)
    assert est.n_iter_ == 1
