"""Hostile round 37 (a Fortran-ordered X read where it lies; the estimators in pandas
pipelines):

- the last short chunk of a Fortran-ordered X (at most PREDICT_SMALL_ROWS rows) went
  through the transposed GEMM, where the same rows in row order go through the GEMV
  loops: a DataFrame's last rows differed in the last bits from the same rows predicted
  alone or from a C-ordered frame; it is now copied into rows and takes the GEMV loops;
- scikit-learn parameters these estimators do not take (warm_start, learning_rate,
  max_fun, ...) raised Python's error naming the private base class.
"""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp import rules


def _model(backend, dtype, n_in=9):
    return fm.Model([fm.Dense(6, "tanh"), fm.Dense(1)], input_dim=n_in, backend=backend,
                    dtype=dtype, seed=0)


@pytest.mark.parametrize("tail", [1, rules.PREDICT_SMALL_ROWS])
def test_a_fortran_xs_last_rows_get_the_bits_they_get_alone(backend, dtype, tail):
    model = _model(backend, dtype)
    chunk = rules.predict_rows(model._net, model._dtype)
    X = np.random.default_rng(tail).normal(size=(chunk + tail, 9)).astype(dtype)
    whole = model.predict(np.asfortranarray(X))
    np.testing.assert_array_equal(whole[chunk:], model.predict(X[chunk:]))
    np.testing.assert_array_equal(whole[chunk:], model.predict(X)[chunk:])


@pytest.mark.parametrize("backend", ["cython", "numba"])
def test_the_engines_copy_a_short_column_major_chunk_into_rows(backend, dtype):
    """Engine level, every chunk short (n <= PREDICT_SMALL_ROWS, which the Model copies
    before it calls the engine), and a block of rows of a bigger Fortran array."""
    if backend not in fm.available_backends():
        pytest.skip(f"{backend} not available")
    model = _model(backend, dtype, n_in=300)
    engine = model._engine
    big = np.asfortranarray(np.random.default_rng(0).normal(size=(40, 300)).astype(dtype))
    for X in (big[:5], big[3:11], np.asfortranarray(big[:7])):
        want = engine.predict(np.ascontiguousarray(X), np.empty((len(X), 1), dtype))
        np.testing.assert_array_equal(engine.predict(X, np.empty((len(X), 1), dtype)), want)
        out = np.empty((len(X), 1), dtype)
        assert engine.predict_checked(X, out) is True
        np.testing.assert_array_equal(out, want)
    bad = big.copy(order="F")
    bad[9, 299] = np.inf
    assert engine.predict_checked(bad[3:11], np.empty((8, 1), dtype)) is False


@pytest.mark.parametrize("name", ["warm_start", "learning_rate", "max_fun", "power_t"])
def test_scikit_learns_other_parameters_are_refused_naming_the_estimator(name):
    from fastmlp.sklearn import MLPClassifier, MLPRegressor
    for cls in (MLPClassifier, MLPRegressor):
        with pytest.raises(TypeError, match=rf"^{cls.__name__}\(\) got an unexpected keyword "
                                            rf"argument '{name}': fastmlp's estimators do not "
                                            "support"):
            cls(**{name: 1})


def test_a_misspelt_parameter_and_too_many_positions_name_the_estimator():
    from sklearn.base import clone

    from fastmlp.sklearn import MLPRegressor
    with pytest.raises(TypeError, match=r"^MLPRegressor\(\) got an unexpected keyword "
                                        r"argument 'hidden_sizes'$"):
        MLPRegressor(hidden_sizes=(3,))
    with pytest.raises(TypeError, match=r"^MLPRegressor\(\) takes hidden_layer_sizes and "
                                        "activation by position"):
        MLPRegressor((3,), "relu", "adam")
    est = MLPRegressor((3,), "tanh", max_iter=4)   # what scikit-learn builds still builds
    assert clone(est).get_params() == est.get_params()


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_an_estimator_casts_a_float64_frame_a_block_at_a_time(compiled_backend):
    """A float64 frame for a float32 estimator: cast by predict a block of rows at a time
    (it was copied whole in the model's dtype first: 263 MiB for 3 million rows of 20
    columns against an output of 23 MiB)."""
    import tracemalloc
    pd = pytest.importorskip("pandas")
    from fastmlp.sklearn import MLPRegressor
    n, k = 400_000, 20
    X = np.random.default_rng(0).standard_normal((n, k))
    frame = pd.DataFrame(X, columns=[f"c{i}" for i in range(k)])
    est = MLPRegressor(hidden_layer_sizes=(8,), max_iter=1, dtype="float32",
                       backend=compiled_backend, random_state=0)
    est.fit(frame.iloc[:1000], X[:1000, 0])
    want = est.predict(X.astype(np.float32))
    tracemalloc.start()
    try:
        got = est.predict(frame)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, want)
    whole = n * k * 4   # a float32 copy of X: 30.5 MiB
    assert peak < got.nbytes + (rules.CONVERT_BYTES + whole) // 2, peak / 2**20


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("scaled", [False, True])
def test_predict_converts_blocks_into_one_buffer_as_the_full_checks_do(
        backend, dtype, order, scaled, monkeypatch):
    """An X in another dtype (or scaled) is cast a block at a time into one buffer, each
    block predicted by the checked kernel: the outputs of the full checks' conversion
    bit for bit, and a bad value in a later block named by its row in X."""
    from fastmlp import validation
    monkeypatch.setattr(rules, "CONVERT_BYTES", 1 << 13)   # blocks of a few chunks
    model = _model(backend, dtype, n_in=30)
    other = np.float64 if dtype == "float32" else np.float32
    X = np.asarray(np.random.default_rng(5).normal(size=(2001, 30)), dtype=other, order=order)
    if scaled:
        model.set_input_scaling(X.mean(axis=0), X.std(axis=0) + 0.5)
    got = model.predict(X)
    monkeypatch.setattr(validation, "plain_numbers", lambda a, width: False)   # full checks
    np.testing.assert_array_equal(got, model.predict(X))
    monkeypatch.undo()
    monkeypatch.setattr(rules, "CONVERT_BYTES", 1 << 13)
    X = X.copy(order="K")
    X[1990, 7] = np.nan
    with pytest.raises(ValueError, match=r"X contains NaN or inf \(first at row 1990, column 7\)"):
        model.predict(X)
