"""Hostile round 31's findings, each the smallest reproducer of one defect (each failed
on the code as it was found): labels ending in NUL merged with the label without it,
two misleading error messages, fit's flags read by their truth. (Its memory finding, a
narrow network's predict chunk converting a float64 X 411 MB at a time, is in
test_memory.py and test_layout.py.)
"""
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

import fastmlp as fm
from helpers import traced_peak

NUL = "ends in a NUL character"


def _softmax(k=3, backend="cython"):
    return fm.Model([fm.Dense(4, "tanh"), fm.Dense(k, "softmax")], input_dim=2,
                    loss="cross_entropy", backend=backend, seed=0)


def _x(rows=8):
    return np.random.default_rng(0).normal(size=(rows, 2))


@pytest.mark.parametrize("kind", ["object", "series", "stringdtype", "list", "tuple"])
def test_fit_refuses_a_label_ending_in_nul(kind):
    """'x\\0' and 'x' are two labels, but NumPy's str arrays (classes_) drop trailing NULs:
    a 3-unit softmax given 4 distinct labels trained 'x\\0' as 'x', without a word (a
    list or tuple of str, which np.asarray makes a str array, still did: round 32)."""
    values = ["x", "x\0", "y", "z"] * 2
    y = {"object": lambda: np.array(values, dtype=object),
         "series": lambda: pd.Series(values),
         "stringdtype": lambda: np.array(values, dtype=np.dtypes.StringDType()),
         "list": lambda: values, "tuple": lambda: tuple(values)}[kind]()
    model = _softmax()
    with pytest.raises(ValueError, match=NUL + r".*would train as 'x'"):
        model.fit(_x(), y, epochs=1)
    assert model.classes_ is None
    with pytest.raises(ValueError, match=NUL):
        model.train_on_batch(_x(), y)
    model.fit(_x(), ["x", "y", "z", "y"] * 2, epochs=1)
    with pytest.raises(ValueError, match=NUL):
        model.evaluate(_x(), y)


@pytest.mark.parametrize("backend", ["numpy", "cython", "numba"])
def test_a_known_classes_shortcut_refuses_a_label_ending_in_nul(backend):
    """A model that knows its str classes maps str objects by one sorted search, after
    making them a str array: 'x\\0' passed there as the known class 'x'."""
    model = _softmax(backend=backend)
    model.fit(_x(), np.array(["x", "y", "z", "x", "y", "z", "x", "y"]), epochs=1)
    before = model.get_weights()
    with pytest.raises(ValueError, match=NUL):
        model.train_on_batch(_x(2), np.array(["x\0", "y"], dtype=object))
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)
    # the labels it knows still take the shortcut's answer
    model.train_on_batch(_x(2), np.array(["x", "y"], dtype=object))


def test_a_nul_inside_a_label_is_kept(tmp_path):
    """Only trailing NULs are lost: 'a\\0b' is a label of its own, saved and loaded."""
    model = fm.Model([fm.Dense(3, "tanh"), fm.Dense(1, "sigmoid")], input_dim=2,
                     loss="binary_cross_entropy", seed=0)
    model.fit(_x(), np.array(["a\0b", "a"] * 4, dtype=object), epochs=1)
    assert model.classes_.tolist() == ["a", "a\0b"]
    model.save(tmp_path / "m.npz")
    assert fm.load(tmp_path / "m.npz").classes_.tolist() == ["a", "a\0b"]


def test_estimator_keeps_labels_ending_in_nul_apart(tmp_path):
    """scikit-learn keeps 'x\\0' and 'x' apart (object classes_), and so does the
    estimator; its model_ got classes_ ['x', 'x', 'y'], which save refused. Such classes
    now stay the estimator's own (model_ has none), as other labels save cannot write."""
    from fastmlp.sklearn import MLPClassifier
    X = _x()
    y = np.array(["x", "x\0", "y", "x", "x\0", "y", "x", "x\0"], dtype=object)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # few iterations: not converged
        est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=5, random_state=0).fit(X, y)
    assert est.classes_.tolist() == ["x", "x\0", "y"]
    assert est.model_.classes_ is None
    est.model_.save(tmp_path / "m.npz")
    assert set(est.predict(X).tolist()) <= {"x", "x\0", "y"}
    np.testing.assert_array_equal(est.predict(X),
                                  est.classes_[est.predict_proba(X).argmax(axis=1)])


def test_a_datetime_hint_that_runs():
    """The hint for datetime64 X was X / np.timedelta64(1, 's'), which NumPy refuses for
    datetimes; it now subtracts an epoch first, and what it suggests runs."""
    model = fm.Model([fm.Dense(1)], input_dim=3, seed=0)
    X = np.array([["2024-01-01"] * 3], dtype="datetime64[s]")
    with pytest.raises(TypeError, match=r"\(X - np.datetime64\('1970-01-01'\)\) / "
                                        r"np.timedelta64\(1, 's'\)"):
        model.predict(X)
    model.predict((X - np.datetime64("1970-01-01")) / np.timedelta64(1, "s"))
    with pytest.raises(TypeError, match=r"e.g. X / np.timedelta64\(1, 's'\)"):
        model.predict(X - np.datetime64("1970-01-01"))   # a timedelta64's own hint


@pytest.mark.skipif(np.finfo(np.longdouble).max <= np.finfo(np.float64).max,
                    reason="long double is float64 here")
@pytest.mark.parametrize("scaled", [False, True])
def test_a_long_double_past_float64_is_named_as_such(scaled):
    """A long double of 1e400 was reported as 'inf', and with input scaling blamed on the
    scaling; it is a value too large for float64 itself."""
    model = fm.Model([fm.Dense(1)], input_dim=3, seed=0)
    if scaled:
        model.set_input_scaling(np.zeros(3), np.ones(3))
    X = np.ones((1, 3), dtype=np.longdouble)
    X[0, 1] = np.longdouble("1e400")
    with pytest.raises(ValueError, match=r"too large for float64 \(1e\+400 at row 0, column 1\)"):
        model.predict(X)
    X[0, 1] = np.longdouble("1e300")   # within float64: the float32 model's own limit
    with pytest.raises(ValueError, match=r"too large for float32 \(1e\+300 at row 0"):
        model.predict(X)


@pytest.mark.parametrize("name, value", [("shuffle", np.array([True, False])),
                                         ("shuffle", "no"), ("shuffle", 0.5),
                                         ("gradient_norms", "no"), ("gradient_norms", 2)])
def test_fit_refuses_a_flag_that_is_not_a_bool_before_learning_anything(name, value):
    """shuffle was never checked: an array raised NumPy's 'truth value of an array is
    ambiguous' after fit had learnt the labels and feature names, and shuffle="no"
    shuffled (gradient_norms="no" recorded norms), as nesterov=0.5 once turned Nesterov on."""
    X = pd.DataFrame(_x(6), columns=["a", "b"])
    model = _softmax()
    with pytest.raises((TypeError, ValueError), match=f"^{name} must be True or False"):
        model.fit(X, np.array(["x", "y", "z"] * 2), epochs=2, **{name: value})
    assert model.classes_ is None and model.feature_names_in_ is None


def test_fit_takes_numpy_bools_and_0_1_as_flags():
    model = _softmax()
    model.fit(_x(6), np.array([0, 1, 2] * 2), shuffle=np.False_, gradient_norms=1)
    assert "grad_norm" in model.history.history


def test_verbose_that_is_not_0_1_or_2_is_named():
    with pytest.raises(ValueError, match="^verbose must be 0, 1 or 2"):
        _softmax().fit(_x(6), np.array([0, 1, 2] * 2), verbose=np.array([1, 2]))


def _fit_weights(backend, optimizer, units, norms):
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(32, 6)), rng.normal(size=(32, 3))
    model = fm.Model([fm.Dense(units, "relu"), fm.Dense(3)], input_dim=6, optimizer=optimizer,
                     backend=backend, seed=5)
    model.fit(X, Y, epochs=3, batch_size=1, gradient_norms=norms)
    return model.get_weights()


@pytest.mark.parametrize("backend", ["cython", "numba"])
@pytest.mark.parametrize("units", [4, 20])
@pytest.mark.parametrize("optimizer", [fm.SGD(0.02), fm.SGD(0.005, momentum=0.5, weight_decay=0.01),
                                       fm.Adam(0.01, weight_decay=0.01)],
                         ids=["sgd", "momentum-decay", "adam-decay"])
def test_gradient_norms_leave_the_weights_alone(backend, units, optimizer):
    """The README: with gradient_norms=True plain SGD with weight decay rounds its step
    in the reference's order instead of the fold's (the last bits move); every other
    optimiser gives the same bits with or without norms, and so does plain SGD without
    decay where fastmlp's own loops form the folded product: a product of at most 96
    multiply-adds (the 4-unit net; every backend, every build). The 20-unit net's 6 x 20
    weight product (120) goes to the GEMM loops of the AVX-512 build, else to BLAS, whose
    kernel may round the fold's W - lr x^T delta once, as a fused multiply-add
    (OpenBLAS's Haswell kernels do: on an AVX2 EPYC 146 of the 203 parameters moved by
    an ulp or two), where W - lr g rounds twice: there the weights agree to rounding."""
    without, with_norms = (_fit_weights(backend, optimizer, units, norms) for norms in (False, True))
    plain_sgd = isinstance(optimizer, fm.SGD) and optimizer.momentum == 0
    blas_may_fuse = plain_sgd and units == 20
    for got, want in zip(with_norms, without):
        if blas_may_fuse:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(got, want)


DISTRIBUTED_FLAGS = """
from mpi4py import MPI
import numpy as np, fastmlp as fm
from fastmlp import distributed
model = fm.Model([fm.Dense(3, "softmax")], input_dim=2, loss="cross_entropy", seed=0)
X, y = np.random.default_rng(0).random((6, 2)), np.array([0, 1, 2] * 2)
for name, value in (("shuffle", "no"), ("check_consistency", np.array([1, 0]))):
    try:
        distributed.fit(model, X, y, MPI.COMM_WORLD, epochs=1, **{name: value})
    except distributed.DistributedError as exc:
        print(exc)
distributed.fit(model, X, y, MPI.COMM_WORLD, epochs=1, shuffle=np.True_)
print("trained", model.classes_.tolist())
"""


def test_distributed_fit_refuses_a_flag_that_is_not_a_bool():
    """distributed.fit read shuffle and check_consistency by their truth as well."""
    pytest.importorskip("mpi4py", reason="fastmlp.distributed needs mpi4py")
    out = subprocess.run([sys.executable, "-c", DISTRIBUTED_FLAGS], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert "TypeError: shuffle must be True or False, got str 'no'" in lines[0]
    assert "TypeError: check_consistency must be True or False, got ndarray" in lines[1]
    assert lines[2] == "trained [0, 1, 2]"


def test_callbacks_refuse_flags_that_are_not_bools():
    """EarlyStopping(restore_best_weights='no') restored, ModelCheckpoint(save_best_only=
    'no') kept only the best: read by their truth, as fit's shuffle was. Reassigned after
    the callback was made, the flag is refused by fit before anything is learnt."""
    with pytest.raises(TypeError, match="^restore_best_weights must be True or False"):
        fm.EarlyStopping(restore_best_weights="no")
    with pytest.raises(TypeError, match="^save_best_only must be True or False"):
        fm.ModelCheckpoint("m.npz", save_best_only="no")
    checkpoint = fm.ModelCheckpoint("never-written.npz", monitor="loss")
    checkpoint.save_best_only = np.array([1, 0])
    model = _softmax()
    with pytest.raises(TypeError, match="^save_best_only must be True or False"):
        model.fit(_x(6), np.array(["a", "b", "c"] * 2), callbacks=[checkpoint])
    assert model.classes_ is None
    fm.EarlyStopping(monitor="loss", restore_best_weights=np.True_)


# -- round 31's less-used API ------------------------------------------------------------

def _overflowing_inputs():
    """Finite float32 inputs that overflow a small relu net: NaN outputs."""
    X = np.full((10, 3), 3e38, dtype=np.float32)
    X[:, 1] = -3e38
    return X


@pytest.mark.parametrize("backend", ["numpy", "cython", "numba"])
def test_nan_outputs_are_no_class(backend):
    """argmax takes a NaN for the largest output and NaN > 0.5 is False, so NaN outputs
    were scored and predicted as class 0: val_accuracy 0.8 beside a NaN val_loss, which an
    EarlyStopping on the accuracy took for a real score."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)).astype(np.float32), rng.integers(0, 3, 40)
    Xv, yv = _overflowing_inputs(), np.array([0] * 8 + [1, 2])
    model = fm.Model([fm.Dense(8, "relu"), fm.Dense(3, "softmax")], input_dim=3,
                     loss="cross_entropy", backend=backend, seed=0)
    stop = fm.EarlyStopping("val_accuracy", patience=5)
    history = model.fit(X, y, epochs=2, validation_data=(Xv, yv), metrics=["accuracy"],
                        callbacks=[stop]).history
    assert np.isnan(history["val_loss"]).all() and np.isnan(history["val_accuracy"]).all()
    assert stop.best is None   # a NaN never becomes the best
    assert np.isnan(model.predict(Xv[:1])).all()
    with pytest.raises(ValueError, match="outputs are not finite for row 0"):
        model.predict_classes(Xv[:3])
    assert model.predict_classes(X[:3]).shape == (3,)


def test_metrics_of_nan_outputs_are_nan():
    from fastmlp import metrics
    assert np.isnan(metrics.accuracy(np.array([[np.nan, 0.1]]), np.array([[1.0, 0.0]])))
    assert np.isnan(metrics.accuracy(np.array([[np.nan]]), np.array([[0.0]])))
    assert np.isnan(metrics.binary_accuracy(np.array([[np.nan, 0.1]]), np.array([[0.0, 0.0]])))
    assert metrics.accuracy(np.array([[0.9, 0.1]]), np.array([[1.0, 0.0]])) == 1.0


def test_estimator_predict_of_nan_outputs_is_refused():
    from fastmlp.sklearn import MLPClassifier
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)).astype(np.float32), rng.integers(0, 3, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = MLPClassifier(hidden_layer_sizes=(8,), activation="relu", max_iter=2,
                            random_state=0).fit(X, y)
    assert np.isnan(est.predict_proba(_overflowing_inputs())).all()
    with pytest.raises(ValueError, match="outputs are not finite for row 0"):
        est.predict(_overflowing_inputs())


THREADS = """
import json, numpy as np, fastmlp as fm
fm.set_num_threads(1)
fm.set_num_threads(np.int64(1))       # NumPy's integers are integers
before = [e["num_threads"] for e in fm.thread_info()]
out = []
for n in (2**31, 10**20, np.True_, 1.0):
    try:
        fm.set_num_threads(n)
    except ValueError as exc:
        out.append(str(exc))
after = [e["num_threads"] for e in fm.thread_info()]
print(json.dumps({"errors": out, "unchanged": after == before}))
"""


def test_set_num_threads_refuses_before_changing_anything():
    """A count past a C int raised a bare OverflowError once BLAS had taken it (BLAS on 2
    threads, Numba on 1); np.int64(2) was refused as not an integer."""
    import json
    out = subprocess.run([sys.executable, "-c", THREADS], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["unchanged"]
    assert len(result["errors"]) == 4
    assert all(e.startswith("number of threads must be an integer from 1 to 2147483647")
               for e in result["errors"])


@pytest.mark.parametrize("n", [-5, True, [3], np.array([10, 20, 30]), 2.5, "3"])
def test_permutation_takes_a_row_count_only(n):
    """NumPy's permutation shuffled an array or list given instead, took True for 1 and -5
    for an empty order, or raised an AxisError naming nothing; the generator must not move."""
    model = _softmax()
    untouched = model.to()
    with pytest.raises(ValueError, match="^n must be an integer >= 0"):
        model.permutation(n)
    # (an integer of NumPy's is taken, as the int it is)
    np.testing.assert_array_equal(model.permutation(np.int64(7)), untouched.permutation(7))


def test_apply_gradient_names_gradients_per_layer_form():
    model = fm.Model([fm.Dense(4, "tanh"), fm.Dense(2)], input_dim=3, seed=0)
    X, Y = np.ones((5, 3)), np.ones((5, 2))
    for given in (model.gradients(X, Y), model.gradients(X, Y)[1]):
        with pytest.raises(TypeError, match=r"not gradients\(\)'s per-layer arrays: use "
                                            r"gradient_vector\(X, Y\)\[1\]"):
            model.apply_gradient(given)
    model.apply_gradient(np.concatenate([g.ravel() for g in model.gradients(X, Y)[1]]))


def test_no_float64_advice_for_a_float64_model():
    with pytest.raises(ValueError, match=r"give a larger \|a\|$"):
        fm.Model([fm.Dense(3, "linear", a=1e-320)], input_dim=2, dtype="float64")
    with pytest.raises(ValueError, match=r"give a larger \|a\| or dtype='float64'$"):
        fm.Model([fm.Dense(3, "linear", a=1e-40)], input_dim=2, dtype="float32")


# -- round 31's speed and memory cliffs ---------------------------------------------------

@pytest.mark.parametrize("shape, source, dtype", [((600, 200), np.float32, np.float32),
                                                  ((300, 70), np.float64, np.float32),
                                                  ((257, 65), np.int64, np.float64),
                                                  ((1000, 3), np.float64, np.float32)])
def test_c_copy_equals_numpys_copy(shape, source, dtype):
    """A column-major X (a DataFrame's values) is copied in tiles (NumPy's own copy of
    8,192 x 784 float32 took 38 ms, the tiles 9): the same values, cast alike, for every
    view of it."""
    from fastmlp import validation
    X = np.asfortranarray(np.random.default_rng(0).normal(size=shape) * 1e3).astype(source)
    for view in (X, X[::-1], X[:, ::-1], X[::3], X[:, 1:], X[5:-7, 2:]):
        got = validation.c_copy(view, dtype)
        assert got.flags.c_contiguous and got.dtype == dtype
        np.testing.assert_array_equal(got, np.ascontiguousarray(view, dtype=dtype))


def _sgemm_loops():
    """Whether the Cython extension runs predict's float32 batches in _sgemm.h's loops."""
    try:
        from fastmlp.kernels.cython_mlp import _use_sgemm
    except ImportError:
        return False
    return _use_sgemm() == 1


@pytest.mark.parametrize("backend", ["numpy", "cython", "numba"])
def test_fortran_x_predicts_as_c_x(backend):
    model = fm.Model([fm.Dense(16, "relu"), fm.Dense(10, "softmax")], input_dim=300,
                     loss="cross_entropy", backend=backend, seed=0)
    X = np.random.default_rng(0).normal(size=(700, 300)).astype(np.float32)
    if backend == "numba" and _sgemm_loops():
        # C rows go to the Cython extension's forward pass (its softmax), a Fortran X
        # through Numba's own (kernels/_sgemm.h, numba_gemv.forward): to rounding
        np.testing.assert_allclose(model.predict(np.asfortranarray(X)), model.predict(X),
                                   rtol=1e-6, atol=1e-7)
    else:
        np.testing.assert_array_equal(model.predict(np.asfortranarray(X)), model.predict(X))
    F = np.asfortranarray(X)
    F[650, 7] = np.nan
    with pytest.raises(ValueError, match="row 650, column 7"):
        model.predict(F)


@pytest.mark.parametrize("backend", ["cython", "numba"])
@pytest.mark.parametrize("loss, activation", [("mse", "linear"),
                                              ("binary_cross_entropy", "sigmoid")])
def test_a_1d_float_y_of_a_one_output_model_takes_the_guarded_call(backend, loss, activation,
                                                                   monkeypatch):
    """train_on_batch with y of shape (n,), the usual binary or regression target, went
    through the full checks (28 us, 13x y[:, None]'s); now it is that column, a view."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(8, 4)).astype(np.float32), (rng.random(8) > 0.5).astype(np.float32)
    model = fm.Model([fm.Dense(16, "tanh"), fm.Dense(1, activation)], input_dim=4, loss=loss,
                     backend=backend, seed=0)
    twin = model.to()
    want = twin.train_on_batch(X, y[:, None])
    monkeypatch.setattr(model, "_data", None)   # the full checks: not called
    assert model.train_on_batch(X, y) == want
    for got, expected in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(got, expected)


def test_an_unknown_label_error_shows_ten_classes():
    """The message listed every class: 1.4 million characters for 100,000 classes."""
    model = fm.Model([fm.Dense(30, "softmax")], input_dim=2, loss="cross_entropy")
    model.classes_ = np.array([f"c{i}" for i in range(30)])
    with pytest.raises(ValueError, match=r"'nope' \(classes_ = \['c0', .*'c9'\] and 20 more\)$"):
        model.train_on_batch(np.ones((1, 2)), np.array(["nope"]))


@pytest.mark.parametrize("how", ["deepcopy", "copy", "to"])
def test_a_copy_holds_one_copy_of_the_state(how):
    """copy.deepcopy went through pickling's protocol: get_state's copy, the state dict
    deep-copied, then set_state's, three copies of the state at its peak (a 2048-4096-
    4096-10 Adam model's 289 MiB took 866 MiB and 1.7 s); copy.copy and to() two. Now the
    copy takes get_state's arrays as its own, and shares nothing with the model."""
    import copy
    model = fm.Model([fm.Dense(1024, "relu"), fm.Dense(1024, "relu"), fm.Dense(10, "softmax")],
                     input_dim=1024, loss="cross_entropy", optimizer=fm.Adam(), seed=0)
    X = np.random.default_rng(0).random((32, 1024)).astype(np.float32)
    model.set_input_scaling(np.zeros(1024), np.ones(1024))
    model.fit(X, np.arange(32) % 10, epochs=1)
    model.classes_ = np.arange(10) * 3
    state = model.get_state()
    state_bytes = state["theta"].nbytes + state["opt_buffers"].nbytes
    make = {"deepcopy": copy.deepcopy, "copy": copy.copy, "to": lambda m: m.to()}[how]
    twin, peak = traced_peak(lambda: make(model))
    assert peak < 1.8 * state_bytes, (peak / 2**20, state_bytes / 2**20)
    got = twin.get_state()
    for key in ("theta", "opt_buffers", "opt_step"):
        np.testing.assert_array_equal(got[key], state[key])
    assert got["rng_state"] == state["rng_state"]
    for mine, theirs in ((model.engine.theta, twin.engine.theta),
                         (model.input_scaling[0], twin.input_scaling[0]),
                         (model.classes_, twin.classes_)):
        assert not np.shares_memory(mine, theirs)
    np.testing.assert_array_equal(twin.predict(X), model.predict(X))
    twin.train_on_batch(X, np.arange(32) % 10 * 3)
    np.testing.assert_array_equal(model.get_state()["theta"], state["theta"])


def _drawn_whole(net, seed, dtype):
    """The initial weights as init_params drew them before: each W whole in float64,
    theta in float64, then cast: the values a seed has always given."""
    rng = np.random.default_rng(seed)
    theta = np.zeros(net.n_params, dtype=np.float64)
    for layer, (W, b, alpha) in zip(net.layers, net.layer_views(theta)):
        fan_in, fan_out = W.shape
        limit = np.sqrt(6.0 / (fan_in if layer.activation.init == "he" else fan_in + fan_out))
        W[...] = rng.uniform(-limit, limit, size=W.shape)
        if alpha is not None:
            alpha[...] = layer.param
    return theta.astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layers, inputs", [
    ([fm.Dense(300, "relu"), fm.Dense(700, "prelu"), fm.Dense(3, "softmax")], 500),
    ([fm.Dense(1, "sigmoid")], 300_000), ([fm.Dense(300_000, "tanh"), fm.Dense(1)], 1)],
    ids=["3-layer", "wide-input", "wide-layer"])
def test_initial_weights_drawn_in_blocks_are_the_seeds_weights(layers, inputs, dtype):
    """init_params draws a block of rows at a time (a whole W in float64 and theta in
    float64 peaked at 5 times the float32 parameters): the same numbers, bit for bit."""
    from fastmlp.network import Network
    net = Network(layers, inputs, "mse")
    for seed in (0, 7):
        np.testing.assert_array_equal(net.init_params(np.random.default_rng(seed), dtype),
                                      _drawn_whole(net, seed, dtype))


INIT_PEAK = """
import numpy as np, fastmlp as fm
def rss(field):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024
fm.Model([fm.Dense(4, "relu"), fm.Dense(10)], input_dim=4, backend="cython", seed=0)
open("/proc/self/clear_refs", "w").write("5")
base = rss("VmRSS")
m = fm.Model([fm.Dense(4096, "relu"), fm.Dense(10)], input_dim=4096, backend="cython", seed=0)
print((rss("VmHWM") - base) / m.engine.theta.nbytes)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_building_a_model_peaks_near_its_parameters():
    out = subprocess.run([sys.executable, "-c", INIT_PEAK], capture_output=True, text=True,
                         timeout=300)
    if out.returncode != 0 and "clear_refs" in out.stderr:
        pytest.skip("this kernel does not let a process reset its peak RSS")
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout.split()[-1]) < 1.5   # 4 before: float64 draws and casts


class _Named(fm.Model):
    """A subclass that pickles an attribute of its own."""

    def __init__(self, *args, name="x", **kwargs):
        super().__init__(*args, **kwargs)
        self.name = name

    def __getstate__(self):
        return {**super().__getstate__(), "name": self.name}

    def __setstate__(self, state):
        super().__setstate__(state)
        self.name = state["name"]


@pytest.mark.parametrize("how", ["copy", "deepcopy"])
def test_a_subclass_is_copied_through_its_own_state_protocol(how):
    """Model's own copy (which takes get_state's arrays) skipped a subclass's
    __getstate__ and __setstate__: its attributes were lost, where pickling kept them
    (round 32)."""
    import copy
    model = _Named([fm.Dense(3, "relu"), fm.Dense(1)], 4, seed=0, name="mine")
    twin = getattr(copy, how)(model)
    assert type(twin) is _Named and twin.name == "mine"
    np.testing.assert_array_equal(twin.get_weights()[0], model.get_weights()[0])
    assert not np.shares_memory(twin.engine.theta, model.engine.theta)
