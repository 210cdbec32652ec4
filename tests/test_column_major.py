"""predict of a Fortran-ordered X (a DataFrame's values): read where it lies.

The backends that say ``reads_columns`` (numpy, cython, numba) take a column-major X
in predict and predict_checked: the first layer's GEMM reads it transposed, so no copy
into rows is made; an X in another dtype, or scaled, is cast down its columns. These
tests hold that path to the row-major one: the same outputs to rounding (BLAS may sum
a transposed operand in another order), the same refusals word for word, every chunk
(a short last chunk of at most PREDICT_SMALL_ROWS rows, several chunks, several
conversion blocks) and both finiteness checks (through x W when the first layer is
narrower than its inputs, and x itself otherwise), and that no copy into rows happens.
"""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp import rules, validation


def _model(backend, dtype, n_in, widths=(16, 3), seed=0):
    layers = [fm.Dense(w, "tanh") for w in widths[:-1]] + [fm.Dense(widths[-1], "softmax")]
    return fm.Model(layers, input_dim=n_in, loss="cross_entropy", backend=backend, dtype=dtype,
                    seed=seed)


def _reads_columns(model):
    """The backends that read columns (all but cuda, whose host X is copied to the device
    anyway), and that they say so."""
    reads = model._engine.name in ("numpy", "cython", "numba")
    assert getattr(model._engine, "reads_columns", False) == reads
    return reads


def _close(a, b, dtype):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 if dtype == "float32" else 1e-14)


def _rows_of(model):
    """Row counts that cut X into one chunk, a short last chunk (<= PREDICT_SMALL_ROWS
    rows after full ones) and several chunks."""
    chunk = rules.predict_rows(model._net, model._dtype)
    return [9, chunk + 3, 2 * chunk + rules.PREDICT_SMALL_ROWS + 1]


# wide first layer (x checked itself) and narrow (checked through x W)
SHAPES = [(40, (64, 3)), (300, (16, 5)), (3, (8, 2))]


@pytest.mark.parametrize("n_in, widths", SHAPES)
def test_fortran_order_predicts_as_rows(backend, dtype, tol, n_in, widths):
    model = _model(backend, dtype, n_in, widths)
    reference = _model("numpy", dtype, n_in, widths)   # the oracle, on X in rows
    reference.set_weights(model.get_weights())
    for n in _rows_of(model):
        X = np.random.default_rng(n).standard_normal((n, n_in)).astype(dtype)
        F = np.asfortranarray(X)
        _close(model.predict(F), model.predict(X), dtype)
        np.testing.assert_allclose(model.predict(F), reference.predict(X), **tol)
        # the classes too (argmax of the same outputs)
        np.testing.assert_array_equal(model.predict_classes(F), model.predict_classes(X))


@pytest.mark.parametrize("n_in, widths", SHAPES)
def test_fortran_order_is_read_where_it_lies(backend, dtype, n_in, widths, monkeypatch):
    model = _model(backend, dtype, n_in, widths)
    if not _reads_columns(model):
        pytest.skip(f"{backend} does not read columns")
    n = _rows_of(model)[2]
    X = np.random.default_rng(0).standard_normal((n, n_in)).astype(dtype)
    want = model.predict(X)

    def no_copy(*args, **kwargs):
        raise AssertionError("X was copied")

    monkeypatch.setattr(validation, "check_inputs", no_copy)
    monkeypatch.setattr(validation, "c_copy", no_copy)
    _close(model.predict(np.asfortranarray(X)), want, dtype)


def test_other_dtypes_and_scaling_are_cast_down_the_columns(backend, dtype, monkeypatch):
    """A float64 (or float32) Fortran X, with and without input scaling, in several
    conversion blocks: the row-major outputs, never a copy into rows."""
    monkeypatch.setattr(rules, "CONVERT_BYTES", 1 << 14)   # several blocks
    model = _model(backend, dtype, 40)
    n = 1000
    other = "float32" if dtype == "float64" else "float64"
    X = np.random.default_rng(1).standard_normal((n, 40)).astype(other)
    want = model.predict(X)
    model_scaled = _model(backend, dtype, 40)
    model_scaled.set_input_scaling(X.mean(axis=0) + 0.5, X.std(axis=0) + 1)
    want_scaled = model_scaled.predict(X)
    same_dtype = X.astype(dtype)
    want_scaled_same = model_scaled.predict(same_dtype)
    if _reads_columns(model):
        def no_copy(*args, **kwargs):
            raise AssertionError("X was copied into rows")
        monkeypatch.setattr(validation, "c_copy", no_copy)
    _close(model.predict(np.asfortranarray(X)), want, dtype)
    _close(model_scaled.predict(np.asfortranarray(X)), want_scaled, dtype)
    _close(model_scaled.predict(np.asfortranarray(same_dtype)), want_scaled_same, dtype)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e300])
@pytest.mark.parametrize("n_in, widths", SHAPES[:2])
def test_a_bad_value_is_named_as_in_rows(backend, dtype, n_in, widths, bad):
    model = _model(backend, dtype, n_in, widths)
    n = _rows_of(model)[2]
    for r, c in [(0, 0), (n - 1, n_in - 1), (n // 2 + 1, n_in // 2)]:
        X = np.random.default_rng(r).standard_normal((n, n_in))
        X[r, c] = bad
        X = X.astype(dtype) if bad != 1e300 else X   # 1e300: too large for float32 only
        if bad == 1e300 and dtype == "float64":
            continue
        with pytest.raises(ValueError) as rows:
            model.predict(X)
        with pytest.raises(ValueError) as columns:
            model.predict(np.asfortranarray(X))
        assert str(columns.value) == str(rows.value)
        assert f"row {r}, column {c}" in str(columns.value)


def test_a_dataframe_is_predicted_from_its_columns(backend, dtype, monkeypatch):
    pd = pytest.importorskip("pandas")
    model = _model(backend, dtype, 40)
    n = _rows_of(model)[1]
    X = np.random.default_rng(2).standard_normal((n, 40)).astype(dtype)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(40)])
    model.fit(frame.iloc[:20], np.arange(20) % 3, epochs=1)   # learns the feature names
    want = model.predict(X)
    if _reads_columns(model):
        def no_copy(*args, **kwargs):
            raise AssertionError("X was copied into rows")
        monkeypatch.setattr(validation, "c_copy", no_copy)
    _close(model.predict(frame), want, dtype)
    _close(model.predict(frame.astype("float64")), want, dtype)


@pytest.mark.filterwarnings("ignore:X does not have valid feature names")
def test_the_estimators_predict_a_dataframe_from_its_columns(compiled_backend, dtype,
                                                             monkeypatch):
    pd = pytest.importorskip("pandas")
    from fastmlp.sklearn import MLPClassifier
    X = np.random.default_rng(3).standard_normal((3000, 30))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(30)])
    est = MLPClassifier(hidden_layer_sizes=(16,), max_iter=2, backend=compiled_backend,
                        dtype=dtype, random_state=0).fit(frame, y)
    want = est.predict_proba(X.astype(dtype))
    # the frame's own memory, not a copy into rows (scikit-learn's check makes one)
    frame = frame.astype(dtype)
    rows = est._plain_rows(frame)
    assert np.shares_memory(rows, frame.to_numpy()) and rows.flags.f_contiguous
    monkeypatch.setattr(validation, "c_copy", lambda *a, **k: pytest.fail("copied into rows"))
    _close(est.predict_proba(frame), want, dtype)


@pytest.mark.parametrize("n_in, widths", SHAPES)
def test_the_engines_take_column_major_blocks(compiled_backend, dtype, n_in, widths):
    """The backend contract: predict and predict_checked take a Fortran-ordered X, and a
    block of rows of one, whose columns lie further apart than its rows (cython reads it
    where it lies, numba copies it Fortran-ordered first)."""
    model = _model(compiled_backend, dtype, n_in, widths)
    engine = model._engine
    n = _rows_of(model)[2]
    X = np.random.default_rng(4).standard_normal((n, n_in)).astype(dtype)
    want = engine.predict(X, np.empty((n, widths[-1]), dtype))
    F = np.asfortranarray(X)
    _close(engine.predict(F, np.empty((n, widths[-1]), dtype)), want, dtype)
    out = np.empty((n, widths[-1]), dtype)
    assert engine.predict_checked(F, out) is True
    _close(out, want, dtype)
    block = F[5:n - 7]
    assert not block.flags.f_contiguous and not block.flags.c_contiguous
    _close(engine.predict(block, np.empty((len(block), widths[-1]), dtype)), want[5:n - 7],
           dtype)
    F[n - 8, n_in - 1] = np.nan
    assert engine.predict_checked(block, np.empty((len(block), widths[-1]), dtype)) is False
