"""Hostile round 13 (training semantics, the README read as a new user): EarlyStopping and
ModelCheckpoint's mode="auto" and NaN values, set_state and a caller's generator, a weight
vector passed to partial_fit as classes, the regressor's loss_curve_ scale, apply_gradient
given gradient_vector's pair."""
import warnings

import numpy as np
import pytest

import fastmlp as fm
from fastmlp.callbacks import Callback, EarlyStopping, ModelCheckpoint
from fastmlp.metrics import IMPROVES, METRICS

X = np.random.default_rng(0).random((24, 3))
Y = np.random.default_rng(1).random((24, 2))


def _model(seed=0):
    return fm.Model([fm.Dense(4, "tanh"), fm.Dense(2)], input_dim=3, dtype="float64",
                    backend="numpy", seed=seed)


class _Scripted(Callback):
    """Logs ``name`` = values[epoch] and keeps each epoch's weights."""

    def __init__(self, name, values):
        self.name, self.values, self.weights = name, values, []

    def on_epoch_end(self, epoch, logs=None):
        logs[self.name] = self.values[epoch]
        self.weights.append(self.model.get_weights())


def test_auto_mode_knows_the_loss_and_every_metric():
    assert set(IMPROVES) == {"loss", *METRICS}
    for name, direction in IMPROVES.items():
        assert EarlyStopping(name).mode == direction
        assert ModelCheckpoint("m.fastmlp", monitor=f"val_{name}").mode == direction


@pytest.mark.parametrize("make", [lambda: EarlyStopping("val_r2"),
                                  lambda: ModelCheckpoint("m.fastmlp", monitor="val_r2"),
                                  lambda: EarlyStopping("val_acc")])
def test_auto_mode_refuses_a_name_it_cannot_direct(make):
    with pytest.raises(ValueError, match=r"cannot tell whether .* pass mode='min' or "
                                         r"mode='max'"):
        make()


def test_a_score_a_callback_logs_is_maximised_when_asked():
    scores = [0.2, 0.6, 0.9, 0.95]
    script = _Scripted("val_r2", scores)
    stop = EarlyStopping("val_r2", patience=3, mode="max", restore_best_weights=True)
    model = _model()
    model.fit(X, Y, epochs=4, batch_size=8, callbacks=[script, stop])
    assert stop.best_epoch == 3 and stop.best == 0.95
    # a checkpoint saving every epoch never uses its mode: any name passes
    assert ModelCheckpoint("m.fastmlp", monitor="val_r2", save_best_only=False).mode == "auto"


def test_a_nan_never_becomes_the_best(tmp_path):
    values = [float("nan"), 0.93, 0.96, 0.98, 0.97]
    script = _Scripted("val_corr", values)
    stop = EarlyStopping("val_corr", patience=2, mode="max", restore_best_weights=True)
    ckpt = ModelCheckpoint(tmp_path / "best.fastmlp", monitor="val_corr", mode="max")
    model = _model()
    history = model.fit(X, Y, epochs=5, batch_size=8, callbacks=[script, stop, ckpt])
    assert len(history.epoch) == 5 and stop.stopped_epoch == 0
    assert stop.best_epoch == 3 and stop.best == 0.98
    assert ckpt.best_epoch == 3 and ckpt.best == 0.98
    for got, want in zip(model.get_weights(), script.weights[3]):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(fm.load(tmp_path / "best.fastmlp").get_weights(), script.weights[3]):
        np.testing.assert_array_equal(got, want)


def test_no_epoch_improving_restores_the_first():
    script = _Scripted("val_corr", [float("nan")] * 4)
    stop = EarlyStopping("val_corr", patience=2, mode="max", restore_best_weights=True)
    model = _model()
    history = model.fit(X, Y, epochs=4, batch_size=8, callbacks=[script, stop])
    assert len(history.epoch) == 2 and stop.stopped_epoch == 1   # as Keras 3: wait 2 >= 2
    assert len(history.history["loss"]) == 2
    assert stop.best is None and stop.best_epoch == 0
    for got, want in zip(model.get_weights(), script.weights[0]):
        np.testing.assert_array_equal(got, want)


def test_set_state_does_not_rewind_the_callers_generator():
    caller = np.random.default_rng(7)
    model = _model(seed=caller)
    state = model.get_state()
    first = caller.integers(2**32, size=3)
    model.set_state(state)
    second = caller.integers(2**32, size=3)
    assert not np.array_equal(first, second)
    # and the model's own draws continue from the restored state
    again = _model(seed=np.random.default_rng(7))
    again.set_state(state)
    np.testing.assert_array_equal(model.permutation(10), again.permutation(10))


def test_restore_best_weights_leaves_the_callers_generator_alone():
    caller = np.random.default_rng(3)
    model = _model(seed=caller)
    script = _Scripted("score", [0.1, 0.5, 0.9])   # the best is the first epoch
    seen = []
    watch = type("Watch", (Callback,), {"on_epoch_end": lambda self, epoch, logs=None:
                                        seen.append(caller.bit_generator.state)})()
    stop = EarlyStopping("score", patience=10, mode="min", restore_best_weights=True)
    model.fit(X, Y, epochs=3, batch_size=8, callbacks=[script, watch, stop])
    assert stop.best_epoch == 0
    assert caller.bit_generator.state == seen[-1]   # not rewound to the first epoch's
    for got, want in zip(model.get_weights(), script.weights[0]):
        np.testing.assert_array_equal(got, want)


def _classifier():
    from fastmlp.sklearn import MLPClassifier
    return MLPClassifier(hidden_layer_sizes=(4,), random_state=0, backend="numpy")


@pytest.mark.parametrize("weights", [np.ones(24), (np.arange(24) % 3 == 0).astype(float),
                                     np.arange(24)],
                         ids=["ones", "mask", "arange"])
def test_a_weight_vector_passed_third_to_partial_fit_is_refused(weights):
    """scikit-learn 1.9's MLPClassifier.partial_fit(X, y, sample_weight, classes): weights
    such as arange(n) pass every check of classes (a model of 24 classes trained)."""
    y = np.arange(24) % 2
    with pytest.raises(TypeError, match=r"takes classes by keyword.*no sample_weight"):
        _classifier().partial_fit(X, y, weights)
    assert list(_classifier().partial_fit(X, y, classes=y).classes_) == [0, 1]  # as sklearn


@pytest.mark.parametrize("outputs", [1, 3])
def test_regressor_loss_curve_is_on_scikit_learns_scale(outputs):
    from fastmlp.sklearn import MLPRegressor
    y = np.random.default_rng(2).random((24, outputs))
    y = y[:, 0] if outputs == 1 else y
    # a step too small to move the weights: the epoch's loss is the loss of the weights after
    est = MLPRegressor(hidden_layer_sizes=(5,), solver="sgd", learning_rate_init=1e-30,
                       momentum=0.0, alpha=0.0, max_iter=1, random_state=0, dtype="float64",
                       batch_size=24, shuffle=False, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    P = est.predict(X).reshape(24, -1)
    expected = np.mean((P - y.reshape(24, -1)) ** 2) / 2   # sklearn's squared_loss
    np.testing.assert_allclose(est.loss_curve_[0], expected, rtol=1e-12)
    assert est.best_loss_ == est.loss_curve_[0]


def test_apply_gradient_given_the_pair_says_so():
    model = _model()
    pair = model.gradient_vector(X, Y)
    with pytest.raises(TypeError, match=r"not gradient_vector's \(loss, grad\) pair"):
        model.apply_gradient(pair)
    model.apply_gradient(pair[1])


# --- round 13 (numbers at the edges) ----------------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda: fm.SGD(10**400), r"lr must be a finite number > 0, got an integer of about 400"),
    (lambda: fm.Adam(-10**400), r"lr must be a finite number > 0, got a negative integer"),
    (lambda: fm.Adam(eps=10**5000), r"eps must be a finite number > 0, got an integer of "
                                    r"about 5000 digits"),
    (lambda: fm.Dense(3, "leaky_relu", alpha=10**400), r"alpha must be finite"),
    (lambda: fm.Dense(3, "linear", a=-10**400), r"a must be finite"),
    (lambda: _model().fit(X, Y, tol=10**400), r"tol must be a finite number >= 0"),
    (lambda: fm.SGD(0.1, momentum=np.longdouble(1) - np.longdouble(2.0) ** -60),
     r"momentum must be in \[0, 1\), got .*\(1\.0 as a float64\)"),
    (lambda: fm.Adam(beta2=np.longdouble(1) - np.longdouble(2.0) ** -60),
     r"beta2 must be in \[0, 1\)"),
], ids=["lr", "negative-lr", "eps-5000-digits", "alpha", "a", "tol", "longdouble-momentum",
        "longdouble-beta2"])
def test_numbers_no_float_holds_are_named(make, message):
    if np.longdouble(1) - np.longdouble(2.0) ** -60 == 1 and "1.0 as a float64" in message:
        pytest.skip("this platform's long double is a float64")
    with pytest.raises(ValueError, match=message):
        make()


def test_the_reference_backend_is_as_quiet_as_the_compiled_ones():
    """An overflowed hidden sum whose tanh is 1: a finite answer on every backend, and no
    NumPy warning from the reference (an error under -W error)."""
    X2 = np.array([[3e38, 3e38], [1.0, 2.0]])
    Y2 = np.array([[1.0], [0.0]])
    model = fm.Model([fm.Dense(3, "tanh"), fm.Dense(1)], input_dim=2, backend="numpy",
                     dtype="float32", seed=0)
    weights = model.get_weights()
    weights[0][:] = 10.0
    model.set_weights(weights)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P = model.predict(X2)
        loss = model.evaluate(X2, Y2)
        grad_loss, _ = model.gradient_vector(X2, Y2)
    assert np.isfinite(P).all() and P[0, 0] == P[1, 0]
    assert np.isfinite(loss) and loss == grad_loss


# --- scikit-learn's fitted network attributes -------------------------------------------

@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel", "regressor-2"])
def test_fitted_network_attributes_are_scikit_learns(kind):
    """coefs_, intercepts_, n_layers_, n_outputs_, out_activation_ as scikit-learn's MLP
    has them: given to scikit-learn's own estimator, they predict what fastmlp predicts."""
    from sklearn.neural_network import MLPClassifier as SkClassifier
    from sklearn.neural_network import MLPRegressor as SkRegressor
    from fastmlp.sklearn import MLPClassifier, MLPRegressor
    X = np.random.default_rng(4).random((40, 4))
    y = {"multiclass": np.arange(40) % 3, "binary": np.arange(40) % 2,
         "multilabel": (np.random.default_rng(5).random((40, 3)) > 0.5).astype(int),
         "regressor-2": X[:, :2] * 2}[kind]
    regressor = kind.startswith("regressor")
    ours = (MLPRegressor if regressor else MLPClassifier)(
        hidden_layer_sizes=(5, 3), max_iter=3, random_state=0, dtype=np.dtype("float64"),
        activation="tanh", backend="numpy")
    theirs = (SkRegressor if regressor else SkClassifier)(
        hidden_layer_sizes=(5, 3), max_iter=1, random_state=0, activation="tanh")
    assert not hasattr(ours, "coefs_")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.fit(X, y)
        theirs.fit(X, y)
    for name in ("n_layers_", "n_outputs_", "out_activation_"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert [c.shape for c in ours.coefs_] == [c.shape for c in theirs.coefs_]
    theirs.coefs_, theirs.intercepts_ = ours.coefs_, ours.intercepts_
    if regressor:
        np.testing.assert_allclose(theirs.predict(X), ours.predict(X), rtol=1e-12)
    else:
        np.testing.assert_allclose(theirs.predict_proba(X), ours.predict_proba(X), rtol=1e-12)
    ours.coefs_[0][...] = 0   # copies: the model is not changed through them
    assert ours.coefs_[0].any()


# --- round 14: the round-13 fixes attacked ----------------------------------------------

def test_apply_gradient_takes_a_tuple_of_numbers():
    model = fm.Model([fm.Dense(1)], input_dim=1, dtype="float64", backend="numpy", seed=0)
    before = model.get_weights()
    model.apply_gradient((np.float64(0.1), -0.2))   # a gradient of 2 parameters
    after = model.get_weights()
    assert after[0][0, 0] != before[0][0, 0] and after[1][0] != before[1][0]


@pytest.mark.parametrize("make, error, message", [
    (lambda: EarlyStopping(min_delta=10**400), ValueError, "min_delta must be a finite"),
    (lambda: EarlyStopping(baseline=-10**400), ValueError, "baseline must be a finite"),
    (lambda: EarlyStopping(min_delta=np.longdouble("1e4000")), ValueError,
     "min_delta must be a finite"),
    (lambda: fm.Dense(3, "elu", alpha=None), TypeError, "alpha must be a real number"),
    (lambda: fm.Dense(3, "elu", alpha=True), TypeError, "alpha must be a real number"),
    (lambda: fm.Dense(3, "elu", alpha="0.5"), TypeError, "alpha must be a real number"),
    (lambda: fm.Dense(3, "elu", alpha=0.1 + 0j), TypeError, "alpha must be a real number"),
    (lambda: fm.Dense(3, "elu", alpha=__import__("fractions").Fraction(10**5000)),
     ValueError, "alpha must be finite, got a Fraction too long to show"),
], ids=["min_delta-int", "baseline-int", "min_delta-longdouble", "alpha-None", "alpha-bool",
        "alpha-str", "alpha-complex", "alpha-huge-fraction"])
def test_callback_and_layer_numbers_are_checked(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_fractions_are_numbers():
    from fractions import Fraction
    assert EarlyStopping(min_delta=Fraction(1, 1000)).min_delta == 0.001
    assert fm.Dense(3, "elu", alpha=Fraction(1, 2)).param == 0.5


@pytest.mark.parametrize("name", ["tol", "alpha"])
def test_scikit_learn_settings_no_float_holds_are_refused_before_training(name):
    from fastmlp.sklearn import MLPRegressor
    with pytest.raises(ValueError, match=rf"'{name}' parameter of MLPRegressor must be finite"):
        MLPRegressor(backend="numpy", **{name: 10**400}).fit(X, Y)


@pytest.mark.parametrize("n, split, trained", [
    (100, np.float32(0.07), 93), (1000, np.float16(0.07), 930), (1000, 0.07, 929),
    (100000, np.float16(0.5), 50000)])
def test_validation_split_is_taken_in_its_own_type_as_keras_does(n, split, trained):
    model = fm.Model([fm.Dense(1)], input_dim=1, backend="numpy", seed=0)
    data = np.random.default_rng(0).random((n, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = model.fit(data, data, epochs=1, batch_size=n, validation_split=split,
                            shuffle=False)
    assert len(history.epoch) == 1
    X_train, _, (X_val, _) = model._validation_rows(data, data, None, split)
    assert len(X_train) == trained and len(X_val) == n - trained


def test_an_estimator_with_a_named_backend_imports_that_backend_alone():
    """backend="cython" imported every backend on each fit (numba's import, about a second,
    on the first): only the one named is imported."""
    import subprocess
    import sys
    if "cython" not in fm.available_backends():
        pytest.skip("the cython backend does not import here")
    code = ("import sys, numpy as np\n"
            "from fastmlp.sklearn import MLPClassifier\n"
            "MLPClassifier(backend='cython', max_iter=2).fit(np.random.rand(20, 3), "
            "np.arange(20) % 2)\n"
            "print(sorted(m for m in ('numba', 'fastmlp.backends.cuda') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("backend", fm.available_backends())
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_scaled_models_small_predict_is_the_checked_path_bit_for_bit(backend, dtype):
    """Small predicts of a model with input scaling skip the full checks (as a model
    without does): the same bits as the checked conversion, the same refusals."""
    from fastmlp import validation
    if backend == "cuda":
        pytest.skip("a device model's predict is tested with the cuda backend")
    rng = np.random.default_rng(6)
    model = fm.Model([fm.Dense(9, "relu"), fm.Dense(3, "softmax")], input_dim=5,
                     loss="cross_entropy", backend=backend, dtype=dtype, seed=0)
    data = rng.normal(size=(50, 5)) * 10
    model.set_input_scaling(data.mean(axis=0), data.std(axis=0))
    for X in (rng.normal(size=(1, 5)), rng.normal(size=(7, 5)).astype(np.float32),
              np.asfortranarray(rng.normal(size=(4, 5))), rng.integers(-3, 3, size=(2, 5)),
              rng.normal(size=(6, 10))[:, ::2], rng.normal(size=(3, 5)) > 0):
        slow = validation.check_inputs(X, 5, model.dtype, model._scaling)
        expected = model._engine.predict(slow, np.empty((len(X), 3), dtype=model.dtype))
        np.testing.assert_array_equal(model.predict(X), expected)
    bad = rng.normal(size=(2, 5))
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match=r"row 1, column 2"):
        model.predict(bad)
    if dtype == "float32":
        huge = np.full((1, 5), 1e300)   # finite, but not once scaled into float32
        with pytest.raises(ValueError, match="too large for float32"):
            model.predict(huge)


@pytest.mark.parametrize("backend", [b for b in fm.available_backends() if b != "cuda"])
@pytest.mark.parametrize("dtype, other", [("float32", np.float64), ("float64", np.float32)])
def test_a_float64_batch_steps_as_its_float32_copy_does(backend, dtype, other):
    """train_on_batch of a small batch in the other float dtype (or Fortran order) goes to
    the guarded kernel through a copy, not the full checks: the same step bit for bit as
    the batch converted first, the same refusals, and integer labels still learnt."""
    rng = np.random.default_rng(8)
    X64, Y64 = rng.random((6, 3)).astype(other), rng.random((6, 2)).astype(other)

    def make():
        return fm.Model([fm.Dense(4, "sigmoid"), fm.Dense(2, "sigmoid")], input_dim=3,
                        optimizer=fm.SGD(0.5), backend=backend, dtype=dtype, seed=0)
    fast, reference = make(), make()
    for X in (X64, np.asfortranarray(X64)):
        loss = fast.train_on_batch(X, Y64)
        assert loss == reference.train_on_batch(X.astype(dtype), Y64.astype(dtype))
    for got, want in zip(fast.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(got, want)
    bad = Y64.copy()
    bad[2, 1] = 1e300 if dtype == "float32" else np.inf   # inf in the model's dtype
    with pytest.raises(ValueError, match="too large for float32" if dtype == "float32"
                       else "NaN or inf"):
        fast.train_on_batch(X64, bad)
    for got, want in zip(fast.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(got, want)
    labelled = fm.Model([fm.Dense(1, "sigmoid")], input_dim=3, loss="binary_cross_entropy",
                        backend=backend, seed=0)
    labelled.train_on_batch(X64, np.array([[1], [3], [3], [1], [1], [3]]))
    assert list(labelled.classes_) == [1, 3]
