"""Hostile round 54, an audit of the README's claims against what runs: fit given rows in
the model's own memory (a view of ``model.engine.theta``) read them as the steps wrote
them, numba's weights then differing from the other backends' by 1e-2."""
import numpy as np
import pytest

import fastmlp as fm


def _model(backend, dtype, optimizer):
    return fm.Model([fm.Dense(4, "tanh"), fm.Dense(2, "linear")], input_dim=3, loss="mse",
                    optimizer=optimizer, backend=backend, dtype=dtype, seed=0)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fit_on_rows_of_the_models_own_memory_trains_on_them_as_they_were(backend, dtype,
                                                                        optimizer):
    """X a view of the weights, Y of the optimiser's buffers (Adam's moments, or
    plain SGD's): the same weights as a fit given copies of them."""
    make = (lambda: fm.SGD(0.1)) if optimizer == "sgd" else (lambda: fm.Adam(1e-2))
    model = _model(backend, dtype, make())
    X = model.engine.theta[:12].reshape(4, 3)
    buffers = model.engine.state.buffers.reshape(-1)
    Y = buffers[:8].reshape(4, 2) if len(buffers) >= 8 else np.ones((4, 2), dtype=dtype)
    copied = _model(backend, dtype, make())
    copied.fit(X.copy(), Y.copy(), epochs=3, batch_size=2)
    model.fit(X, Y, epochs=3, batch_size=2)
    for got, want in zip(model.get_weights(), copied.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_a_weight_the_dtype_cannot_hold_is_refused_naming_its_layer():
    """A float64 prelu model's alpha of 1e39 taken to float32 was refused as "theta has a
    value too large for float32 (1e+39 at index (9,))", where the README promised the
    layer; set_state's refusals name it too."""
    prelu = fm.Model([fm.Dense(3, "prelu", alpha=1e39)], input_dim=2, dtype="float64")
    with pytest.raises(ValueError, match=r"1e\+39 at index \(9,\)\): layer 1's prelu alpha\[0\]"):
        prelu.to(dtype="float32")
    model = fm.Model([fm.Dense(3, "tanh"), fm.Dense(2, "linear")], input_dim=2, loss="mse",
                     dtype="float32")
    for index, value, says in [(10, 1e300, "too large for float32"), (10, np.nan, "NaN or inf"),
                               (3, np.inf, "NaN or inf"), (7, -1e39, "too large")]:
        state = model.get_state()
        state["theta"] = state["theta"].astype(np.float64)
        state["theta"][index] = value
        with pytest.raises(ValueError, match=says) as refused:
            model.set_state(state)
        # W1 (2, 3) is theta[0:6], b1 theta[6:9], W2 (3, 2) theta[9:15]
        where = {10: "layer 2's W[0, 1]", 3: "layer 1's W[1, 0]", 7: "layer 1's b[1]"}[index]
        assert str(refused.value).endswith(f": {where}")


# -- the plain NumPy functions of the public modules (the docstring audit) -----------------

@pytest.mark.parametrize("z", [np.array([-3, 0, 2]), np.array([True, False]),
                               np.array([[-1, 0, 2]], dtype=np.int8)], ids=["int", "bool", "int8"])
def test_activations_of_integers_and_bools_are_computed_in_float64(z):
    """sigmoid of [-1, 0, 1] was [0, 0, 0] (cast back to the input's integers), elu and
    softplus alike; sigmoid of bools raised NumPy's "boolean negative" TypeError."""
    from fastmlp import activations as A
    real = z.astype(np.float64)
    assert np.array_equal(A.sigmoid(z), A.sigmoid(real))
    assert np.array_equal(A.softplus(z), A.softplus(real))
    for name, row in A.ACTIVATIONS.items():
        p = np.full(real.shape[-1], 0.5) if name == "prelu" else 0.5
        got = row.forward(np.atleast_2d(z), p)
        want = row.forward(np.atleast_2d(real), p)
        assert got.dtype == np.float64 and np.array_equal(got, want), name
        if row.derivative is not None:
            got = row.derivative(np.atleast_2d(z), want, p)
            assert got.dtype == np.float64, name
            assert np.array_equal(got, row.derivative(np.atleast_2d(real), want, p)), name


def test_float32_activations_stay_float32():
    from fastmlp import activations as A
    z = np.array([[-2.0, 0.5]], dtype=np.float32)
    for name, row in A.ACTIVATIONS.items():
        p = np.float32([0.1, 0.1]) if name == "prelu" else np.float32(0.1)
        assert row.forward(z, p).dtype == np.float32, name


def test_softmax_of_a_vector_is_its_one_rows():
    from fastmlp import activations as A
    z = np.array([1.0, 2.0, -1.0])
    np.testing.assert_array_equal(A.softmax(z), A.softmax(z[None])[0])
    np.testing.assert_array_equal(A.log_softmax(z), A.log_softmax(z[None])[0])


def test_helper_functions_refuse_what_they_cannot_compute_by_name():
    from fastmlp import datasets, losses, metrics
    with pytest.raises(ValueError, match=r"one shape \(n, k\), got \(2,\) and \(2,\)"):
        metrics.accuracy(np.array([0.7, 0.2]), np.array([1.0, 1.0]))   # (IndexError)
    with pytest.raises(ValueError, match=r"got \(2, 2\) and \(2, 3\)"):
        metrics.accuracy(np.eye(2), np.ones((2, 3)))
    for name in ("binary_accuracy", "mae", "rmse"):   # (they broadcast (2, 3) with (2, 1))
        with pytest.raises(ValueError, match=rf"{name} takes .* got \(2, 3\) and \(2, 1\)"):
            metrics.METRICS[name](np.ones((2, 3)), np.ones((2, 1)))
    for base in (1, -1, 0, np.inf, np.nan):   # (inf, NaN with warnings)
        with pytest.raises(ValueError, match="base must be a finite number above 0"):
            losses.cross_entropy([0.9, 0.1], [0.6, 0.4], base=base)
    with pytest.raises(ValueError, match=r"p and q must have one shape"):
        losses.cross_entropy([0.9, 0.1], [0.6, 0.3, 0.1])
    with pytest.raises(ValueError, match=r"must have 2 column\(s\).*got shape \(1, 3\)"):
        datasets.standardize(np.array([[1.0, 2.0], [3.0, 4.0]]), np.zeros((1, 3)))


@pytest.mark.parametrize("classes, error, says", [
    (["a", "a", "b"], ValueError, "hold the label 'a' twice"),
    ([1.0, np.nan, 2.0], ValueError, "hold NaN or inf"),
    ([None, 1, 2], TypeError, "all numbers or all strings"),
])
def test_predict_classes_refuses_classes_it_cannot_answer_with(classes, error, says):
    """An assigned classes_ that evaluate, fit and save refuse: predict_classes answered
    'a' for two units, NaN or None as labels; fit raised NumPy's raw '<' TypeError for
    [None, 1, 2]."""
    model = fm.Model([fm.Dense(3, "softmax")], input_dim=2, loss="cross_entropy", seed=0)
    model.classes_ = classes
    with pytest.raises(error, match=says):
        model.predict_classes(np.eye(2) * 5)
    with pytest.raises(error, match=says):
        model.fit(np.zeros((3, 2)), np.array([0, 1, 2]))
    model.classes_ = ["c", "a", "b"]   # distinct, in any order: its units' labels
    assert model.predict_classes(np.eye(2) * 5).tolist() \
        == ["cab"[i] for i in model.predict(np.eye(2) * 5).argmax(axis=1)]


# -- the command line and its CSV reader (the CLI audit) ---------------------------------

@pytest.mark.parametrize("text, line", [
    ('a,label\n1,x\n2,y\n3,x\n4,y\n5,"x\n6,y\n7,x\n8,y\n', 6),   # in the labels
    ('a,label\n1,x\n2,y\n"3,x\n4,y\n', 4),                       # in a feature
    ('a,"label\n1,x\n2,y\n', 1),                                 # in the header
    ('a,label\n1,x\n\n\n2,"y', 5),                               # after blank lines, no \n
], ids=["label", "feature", "header", "last line"])
def test_a_quote_never_closed_is_named_not_the_rest_of_the_file_read_as_one_cell(
        tmp_path, text, line):
    """Python's csv reader takes the rest of the file as the cell of a quote never
    closed: `fastmlp train` had trained on 5 of 8 rows, with a class 'x\\n6,y\\n7,x\\n8,y',
    and exited 0."""
    from fastmlp import datasets
    path = tmp_path / "d.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"d.csv, line {line}: a quoted cell opened on "
                                         "this line is never closed"):
        datasets.load_csv(str(path), "label")


def test_quoted_cells_over_several_lines_still_read(tmp_path):
    from fastmlp import datasets
    path = tmp_path / "d.csv"
    path.write_text('a,label\n1,"x\ny"\n2,y\n3,"several\nlines"')   # (no final newline)
    table = datasets.load_csv(str(path), "label")
    assert table[0].ravel().tolist() == [1.0, 2.0, 3.0]
    assert sorted(table[2]) == ["several\nlines", "x\ny", "y"]


def test_a_constant_regression_target_is_said_to_be_so(tmp_path):
    """The run printed "std 1" (the stand-in scale) and "R^2: nan" for a target of one
    value."""
    import subprocess
    import sys
    path = tmp_path / "t.csv"
    path.write_text("a,t\n" + "".join(f"{i},0.1\n" for i in range(8)))
    done = subprocess.run([sys.executable, "-m", "fastmlp", "train", "--data", str(path),
                           "--task", "regression", "--epochs", "1"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "numeric target (mean 0.1, std 0: constant)" in done.stdout
    assert "(target std 0), R^2: undefined (the targets scored are all one value)" \
        in done.stdout
    assert "nan" not in done.stdout
