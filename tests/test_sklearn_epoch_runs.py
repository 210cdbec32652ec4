"""The scikit-learn wrappers train as many epochs per Model.fit call as scikit-learn's
stopping rule allows (n_iter_no_change + 1 - the epochs already without improvement): the
same epochs, bit for bit, as one call per epoch, and the same stopping epoch."""
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

import fastmlp as fm
from fastmlp.sklearn import MLPClassifier, MLPRegressor


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
