"""predict_checked (issue 10): a backend's predict that checks X finite on the way,
and the Model's validation-free predict path built on it.

``predict_checked(X, out) -> bool`` (an optional backend method): out (n, outputs)
OVERWRITTEN with the outputs of X (n, inputs), C-contiguous aligned arrays of the model
dtype; True when X was finite, False when it held NaN or inf (out then undefined).
Every test runs on each backend that has the method (others are skipped), against the
NumPy reference: every activation, both dtypes, 1 and 2 rows, the small-batch cut-off
(fastmlp.rules.PREDICT_SMALL_ROWS) +-1, and more rows than a predict chunk. Then NaN
and inf anywhere in X, odd layouts through the Model, threads, and (Cython) every copy
of the small-batch GEMV loops this processor runs.

A first layer with fewer units than inputs has X checked through its X W (a NaN or inf
in a row of X leaves no value of that row of X W finite), and X itself only when X W is
not finite: the refusals run on such a network too (NARROW), with the cases that
argument rests on (inf times a zero weight, +inf and -inf in one sum) and finite inputs
whose X W overflows, which must be predicted, not refused.
"""
import platform
import sys

import numpy as np
import pytest
import threadpoolctl

import fastmlp as fm
from fastmlp import activations, rules, validation

from helpers import gemv_copy, run_in_threads
from tolerances import TOLERANCES

CUT = rules.PREDICT_SMALL_ROWS
ROWS = (1, 2, CUT - 1, CUT, CUT + 1)
# Non-default parameters, so a kernel that ignores one is caught.
PARAMS = {"linear": {"a": 0.8}, "leaky_relu": {"alpha": 0.1}, "prelu": {"alpha": 0.2},
          "elu": {"alpha": 0.7}}
# Widths off every SIMD width: 300 outputs fill whole tiles of 16-float vectors and
# leave some over, 37 and 5 leave a tail of columns narrower than any vector.
INPUTS, WIDTHS = 13, (300, 37, 5)
# a first layer narrower than the input: X is checked through X W
NARROW = (4, 37, 5)


def _layers(name, widths=WIDTHS):
    """Every layer with activation ``name`` (softmax: the output only, behind tanh)."""
    hidden = "tanh" if name == "softmax" else name
    return ([fm.Dense(k, activation=hidden, **PARAMS.get(hidden, {})) for k in widths[:-1]]
            + [fm.Dense(widths[-1], activation=name, **PARAMS.get(name, {}))])


def _pair(backend, dtype, name="tanh", seed=0, widths=WIDTHS):
    """(model on ``backend``, the NumPy reference model) with the same noisy weights:
    non-zero biases and prelu alphas that differ per unit."""
    model, ref = (fm.Model(_layers(name, widths), input_dim=INPUTS, backend=b, dtype=dtype,
                           seed=seed)
                  for b in (backend, "numpy"))
    rng = np.random.default_rng(seed)
    weights = [w + 0.3 * rng.standard_normal(w.shape) for w in model.get_weights()]
    model.set_weights(weights)
    ref.set_weights(weights)
    return model, ref


def _checked(model):
    fn = getattr(model.engine, "predict_checked", None)
    if fn is None:
        pytest.skip(f"the {model.backend} backend has no predict_checked")
    return fn


def _x(n, dtype, seed=1):
    return np.random.default_rng(seed).standard_normal((n, INPUTS)).astype(dtype)


def _run(fn, X, k):
    """(returned flag, out) of predict_checked on X, out pre-filled with NaN."""
    out = np.full((len(X), k), np.nan, dtype=X.dtype)
    return fn(X, out), out


# -- the outputs -----------------------------------------------------------------------

@pytest.mark.parametrize("widths", [WIDTHS, NARROW], ids=["wide", "narrow"])
@pytest.mark.parametrize("name", list(activations.ACTIVATIONS))
def test_every_activation_matches_the_reference(backend, dtype, name, widths):
    model, ref = _pair(backend, dtype, name, widths=widths)
    fn = _checked(model)
    for n in ROWS:
        X = _x(n, dtype, seed=n)
        ok, out = _run(fn, X, WIDTHS[-1])
        assert ok is True
        np.testing.assert_allclose(out, ref.predict(X), **TOLERANCES[dtype],
                                   err_msg=f"{name}, {n} rows")


def test_more_rows_than_a_predict_chunk(backend, dtype):
    """Several chunks of rules.predict_rows rows, the last one short (below the cut-off)."""
    model, ref = _pair(backend, dtype, "relu")
    fn = _checked(model)
    n = 2 * rules.predict_rows(model.net, model.dtype) + CUT - 1
    X = _x(n, dtype)
    ok, out = _run(fn, X, WIDTHS[-1])
    assert ok is True
    np.testing.assert_allclose(out, ref.predict(X), **TOLERANCES[dtype])


def test_public_predict_equals_the_engine(backend, dtype):
    model, _ = _pair(backend, dtype)
    _checked(model)
    for n in ROWS + (600,):
        X = _x(n, dtype, seed=n)
        np.testing.assert_allclose(model.predict(X), model.engine.predict(X),
                                   **TOLERANCES[dtype], err_msg=f"{n} rows")


def test_the_model_takes_predict_checked_for_ready_arrays(backend, dtype, monkeypatch):
    """A ready X goes through predict_checked alone: no validation pass, no other predict."""
    model, _ = _pair(backend, dtype)
    real = _checked(model)
    calls = []

    def counted(X, out):
        calls.append(len(X))
        return real(X, out)
    monkeypatch.setattr(model.engine, "predict_checked", counted)
    monkeypatch.setattr(model.engine, "predict", None)   # would raise TypeError if called
    monkeypatch.setattr(validation, "finite", None)
    monkeypatch.setattr(validation, "check_inputs", None)
    for n in (1, CUT + 1):
        assert model.predict(_x(n, dtype)).shape == (n, WIDTHS[-1])
    assert calls == [1, CUT + 1]


# -- NaN and inf ---------------------------------------------------------------------------

def _bad_positions(n):
    """(row, column) of a non-finite value: first, last, and in between."""
    return sorted({(0, 0), (n - 1, INPUTS - 1), (n // 2, INPUTS // 2), (n - 1, 0)})


@pytest.mark.parametrize("widths", [WIDTHS, NARROW], ids=["wide", "narrow"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_are_refused_with_the_usual_message(backend, dtype, bad, widths):
    model, _ = _pair(backend, dtype, widths=widths)
    fn = _checked(model)
    big = 2 * rules.predict_rows(model.net, model.dtype) + 5   # a bad value in any chunk
    for n in ROWS + (big,):
        for r, c in _bad_positions(n) + ([(big - 3, 4), (big // 2 + 1, 1)] if n == big else []):
            X = _x(n, dtype)
            X[r, c] = bad
            ok, _ = _run(fn, X, WIDTHS[-1])
            assert ok is False, (n, r, c)
            with pytest.raises(ValueError) as want:
                validation.check_inputs(X, INPUTS, model.dtype)
            with pytest.raises(ValueError) as got:
                model.predict(X)
            assert str(got.value) == str(want.value) == (
                f"X contains NaN or inf (first at row {r}, column {c})")


@pytest.mark.parametrize("n", ROWS + (600,))
def test_inf_times_a_zero_weight_and_opposite_infs_are_refused(backend, dtype, n):
    """inf * 0 is NaN and inf - inf is NaN: X W is not finite, so X is read and refused."""
    model, _ = _pair(backend, dtype, widths=NARROW)
    fn = _checked(model)
    weights = model.get_weights()
    weights[0][2] = 0            # input 2 reaches no unit
    weights[0][5] = weights[0][7]  # inputs 5 and 7 reach every unit alike
    model.set_weights(weights)
    for where in ({2: np.inf}, {2: -np.inf}, {5: np.inf, 7: -np.inf}):
        X = _x(n, dtype)
        for c, v in where.items():
            X[n - 1, c] = v
        ok, _ = _run(fn, X, NARROW[-1])
        assert ok is False, where
        with pytest.raises(ValueError, match=rf"X contains NaN or inf \(first at row {n - 1}, "
                                             rf"column {min(where)}\)"):
            model.predict(X)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_bad_value_in_either_part_of_a_split_gemv_is_refused(backend, dtype, bad):
    """A first layer of >= 256 KB has its small-batch x W summed in two parts over the
    inputs (kernels/_gemv_pool.h), added at the end: a bad value in either part, or at
    the cut, still leaves no value of its row of x W finite."""
    model = fm.Model([fm.Dense(100, "relu"), fm.Dense(10, "softmax")], input_dim=784,
                     backend=backend, dtype=dtype, seed=0)
    fn = _checked(model)
    for n in (1, 4):
        for c in (0, 391, 392, 783):
            X = np.random.default_rng(c).standard_normal((n, 784)).astype(dtype)
            X[n - 1, c] = bad
            assert _run(fn, X, 10)[0] is False, (n, c)
        assert _run(fn, np.ones((n, 784), dtype=dtype), 10)[0] is True


@pytest.mark.parametrize("rows", (1, CUT + 1, "chunks"))
def test_finite_inputs_whose_first_layer_overflows_are_predicted(backend, dtype, rows):
    """x W overflowing to inf from a finite X is not an input error: predicted as the
    reference predicts it; a NaN in a later chunk is still refused."""
    model, ref = _pair(backend, dtype, "relu", widths=NARROW)
    fn = _checked(model)
    chunk = rules.predict_rows(model.net, model.dtype)
    n = 2 * chunk + 3 if rows == "chunks" else rows
    X = _x(n, dtype)
    X[0] = np.finfo(dtype).max / 2   # every x W of row 0 overflows
    with np.errstate(all="ignore"):
        want = ref.predict(X)
        ok, out = _run(fn, X, NARROW[-1])
        got = model.predict(X)
    assert ok is True
    assert not np.isfinite(want[0]).all() and np.isfinite(want[1:]).all()
    np.testing.assert_allclose(out, want, **TOLERANCES[dtype])
    np.testing.assert_allclose(got, want, **TOLERANCES[dtype])
    if n > chunk:
        X[chunk + 1, 3] = np.nan
        assert _run(fn, X, NARROW[-1])[0] is False


def test_a_refused_call_leaves_the_model_working(backend, dtype):
    model, ref = _pair(backend, dtype)
    fn = _checked(model)
    X = _x(3, dtype)
    bad = X.copy()
    bad[1, 2] = np.nan
    assert fn(bad, np.empty((3, WIDTHS[-1]), dtype)) is False
    np.testing.assert_allclose(model.predict(X), ref.predict(X), **TOLERANCES[dtype])


# -- odd inputs through the Model ------------------------------------------------------------

def _odd_layouts(X):
    """Arrays holding X's values that are not ready for predict_checked."""
    unaligned = np.frombuffer(b"\0" + X.astype(np.float64).tobytes(), dtype=np.float64,
                              offset=1).reshape(X.shape)
    readonly = X.copy()
    readonly.flags.writeable = False
    return {"Fortran order": np.asfortranarray(X), "strided": np.repeat(X, 2, axis=0)[::2],
            "other float dtype": X.astype(np.float64 if X.dtype == np.float32 else np.float32),
            "big-endian": X.astype(X.dtype.newbyteorder(">")), "unaligned": unaligned,
            "list": X.tolist(), "read-only": readonly}


def test_odd_layouts_give_the_ready_arrays_result(backend, dtype):
    model, _ = _pair(backend, dtype)
    _checked(model)
    for n in (1, CUT + 1):
        X = _x(n, dtype).astype(np.float32)  # values every dtype holds exactly
        want = model.predict(X.astype(dtype))
        for name, odd in _odd_layouts(X).items():
            np.testing.assert_array_equal(model.predict(odd), want, err_msg=f"{name}, {n} rows")


def test_odd_layouts_with_nan_still_get_the_usual_message(backend, dtype):
    model, _ = _pair(backend, dtype)
    _checked(model)
    X = _x(2, dtype).astype(np.float32)
    X[1, 3] = np.nan
    for name, odd in _odd_layouts(X).items():
        with pytest.raises(ValueError, match=r"X contains NaN or inf \(first at row 1, "
                                             r"column 3\)"):
            model.predict(odd)


def test_scaled_models_and_wrong_shapes_keep_their_checks(backend, dtype):
    model, ref = _pair(backend, dtype)
    _checked(model)
    X = _x(2, dtype)
    with pytest.raises(ValueError, match="columns but the model expects input_dim"):
        model.predict(X[:, :-1].copy())
    with pytest.raises(ValueError, match="empty"):
        model.predict(X[:0])
    mean, scale = np.linspace(-1, 1, INPUTS), np.linspace(0.5, 2, INPUTS)
    for m in (model, ref):
        m.set_input_scaling(mean, scale)
    np.testing.assert_allclose(model.predict(X), ref.predict(X), **TOLERANCES[dtype])


# -- threads ------------------------------------------------------------------------------

def test_threads_predicting_at_once_give_the_single_thread_result(backend, dtype):
    model, _ = _pair(backend, dtype, "prelu")
    _checked(model)
    data = [_x(n, dtype, seed=n) for n in (1, CUT, CUT + 1, 700)]
    with threadpoolctl.threadpool_limits(1):   # BLAS's bits may depend on its threads
        want = [model.predict(X).tobytes() for X in data]
        got = run_in_threads([lambda X=X: [model.predict(X).tobytes() for _ in range(40)]
                              for X in data])
    for w, runs, X in zip(want, got, data):
        assert all(r == w for r in runs), f"{len(X)} rows"


# -- the Cython backend's GEMV loops, every copy this processor runs --------------------------

@pytest.fixture
def gemv_width(request):
    """Run the Cython small-batch GEMV copy of request.param bytes, then the widest again."""
    kernels = pytest.importorskip("fastmlp.kernels.cython_mlp")
    with gemv_copy(kernels, request.param) as width:
        yield width


@pytest.mark.parametrize("gemv_width", [16, 32, 64], indirect=True)
@pytest.mark.parametrize("name", ["relu", "softmax", "prelu"])
def test_every_gemv_copy_matches_the_reference(gemv_width, dtype, name):
    if "cython" not in fm.available_backends():
        pytest.skip("the Cython backend is not built")
    model, ref = _pair("cython", dtype, name)
    for n in (1, 2, 3, 4, 5, 7, CUT):
        X = _x(n, dtype, seed=n)
        ok, out = _run(model.engine.predict_checked, X, WIDTHS[-1])
        assert ok is True
        np.testing.assert_allclose(out, ref.predict(X), **TOLERANCES[dtype],
                                   err_msg=f"{gemv_width}-byte copy, {n} rows")
        np.testing.assert_array_equal(model.engine.predict(X), out)


def test_the_widest_gemv_copy_is_in_use():
    kernels = pytest.importorskip("fastmlp.kernels.cython_mlp")
    assert kernels.GEMV_BYTES in (0, 16, 32, 64)   # 0: plain C (a compiler without GNU C)
    if sys.platform.startswith("linux") and platform.machine() == "x86_64":  # GCC or clang
        assert kernels.GEMV_BYTES >= 16
        assert kernels._use_gemv(64) == kernels.GEMV_BYTES


def test_the_small_rows_of_the_engine_are_checked():
    kernels = pytest.importorskip("fastmlp.kernels.cython_mlp")
    m = fm.Model([fm.Dense(3)], input_dim=2, backend="cython")
    assert m.engine.engine.small_rows == rules.PREDICT_SMALL_ROWS
    with pytest.raises(ValueError, match="small_rows must be >= 0"):
        kernels.Engine(m.net, m.dtype, 8, 8, 0, -1)
