"""Hostile rounds 58 (three audits: an independent oracle, the scikit-learn contract, fit's
options and callbacks as a Keras user uses them) and 59 (round 58's changes attacked, the
command line end to end, the benchmarks' honesty): what they found, each fixed."""
import gzip
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import cli
from fastmlp.callbacks import Callback, ModelCheckpoint, ProgressBar
from helpers import run_cli


def _model(backend="numpy"):
    return fm.Model([fm.Dense(5, "tanh"), fm.Dense(2)], input_dim=3, loss="mse", seed=0,
                    backend=backend, optimizer=fm.SGD(0.05, momentum=0.9))


def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    return X, np.tanh(X[:, :2])


class _Epochs(Callback):
    def on_train_begin(self, logs=None):
        self.begin, self.seen = dict(logs), []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(epoch)


@pytest.mark.parametrize("reporting", [False, True], ids=["quiet", "callbacks"])
def test_initial_epoch_goes_on_with_an_earlier_fit_count(backend, reporting):
    """fit had no initial_epoch (Keras's): a second fit numbered its epochs from 0 again,
    so a ModelCheckpoint's {epoch} replaced the first fit's files."""
    X, Y = _data()
    whole, parts = _model(backend), _model(backend)
    full = whole.fit(X, Y, epochs=5, batch_size=4)
    spy = _Epochs()
    parts.fit(X, Y, epochs=2, batch_size=4)
    history = parts.fit(X, Y, epochs=5, batch_size=4, initial_epoch=2,
                        callbacks=[spy] if reporting else None)
    # only the numbering changes: the same epochs as one fit, bit for bit
    assert np.array_equal(parts.get_state()["theta"], whole.get_state()["theta"])
    assert history.epoch == [2, 3, 4]
    assert history.history["loss"] == full.history["loss"][2:]
    if reporting:
        assert spy.seen == [2, 3, 4]
        assert spy.begin["epochs"] == 5 and spy.begin["initial_epoch"] == 2


def test_initial_epoch_numbers_checkpoints_and_output(tmp_path, capsys):
    X, Y = _data()
    model = _model()
    ck = ModelCheckpoint(str(tmp_path / "m-{epoch}.fastmlp"), monitor="loss",
                         save_best_only=False)
    model.fit(X, Y, epochs=2, callbacks=ck)
    first = (tmp_path / "m-1.fastmlp").read_bytes()
    model.fit(X, Y, epochs=4, initial_epoch=2, callbacks=[ck, ProgressBar(file=None)],
              verbose=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"m-{e}.fastmlp" for e in (1, 2, 3, 4)]
    assert (tmp_path / "m-1.fastmlp").read_bytes() == first   # the first fit's file kept
    out = capsys.readouterr()
    assert "epoch 3/4" in out.out and "epoch 4/4" in out.out and "epoch 1/" not in out.out


def test_initial_epoch_at_or_past_epochs_trains_nothing_and_bad_values_are_refused():
    X, Y = _data()
    model = _model()
    before = model.get_state()["theta"].copy()
    for reporting in (None, [_Epochs()]):
        history = model.fit(X, Y, epochs=3, initial_epoch=3, callbacks=reporting)
        assert history.epoch == [] and history.history["loss"] == []   # as Keras
    assert np.array_equal(model.get_state()["theta"], before)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"initial_epoch must be an integer >= 0"):
            model.fit(X, Y, epochs=3, initial_epoch=bad)


def test_a_checkpoint_makes_its_missing_folder_before_training(tmp_path):
    """A ModelCheckpoint into a missing folder failed only after the first epoch had
    trained; Keras makes the folder."""
    X, Y = _data()
    model = _model()
    path = tmp_path / "runs" / "a" / "best.fastmlp"
    model.fit(X, Y, epochs=2, callbacks=ModelCheckpoint(str(path), monitor="loss"))
    assert fm.load(path).get_state()["theta"].shape == model.get_state()["theta"].shape
    # a folder named by a logged value: made at the save
    model.fit(X, Y, epochs=1, callbacks=ModelCheckpoint(
        str(tmp_path / "e{epoch}" / "m.fastmlp"), monitor="loss"))
    assert (tmp_path / "e1" / "m.fastmlp").is_file()
    # a file in the way: refused before any training, naming the checkpoint
    (tmp_path / "taken").write_text("notes")
    before = model.get_state()["theta"].copy()
    with pytest.raises(OSError, match=r"ModelCheckpoint cannot make the folder .*taken/sub"):
        model.fit(X, Y, epochs=2, callbacks=ModelCheckpoint(
            str(tmp_path / "taken" / "sub" / "m.fastmlp"), monitor="loss"))
    assert np.array_equal(model.get_state()["theta"], before)
    assert (tmp_path / "taken").read_text() == "notes"


def test_dense_activation_none_is_linear_as_in_keras():
    assert fm.Dense(3, activation=None).activation is fm.Dense(3, "linear").activation
    assert repr(fm.Dense(3, activation=None)) == repr(fm.Dense(3))


# -- the scikit-learn estimators ---------------------------------------------------------

def _iris_like(n=150, classes=3):
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(classes), n // classes)
    X = rng.normal(size=(len(y), 4)) + y[:, None]
    return X, y


def test_estimator_batch_size_true_trains_with_batches_of_one_and_keeps_a_refit(backend):
    """batch_size=True passed scikit-learn's check (a bool is an Integral), then Model.fit
    refused it after the new model was built: a refit lost the trained estimator."""
    from sklearn.neural_network import MLPClassifier as SkMLP
    from fastmlp.sklearn import MLPClassifier
    X, y = _iris_like(30)
    params = dict(hidden_layer_sizes=(4,), max_iter=3, random_state=0, backend=backend)
    with pytest.warns(Warning):   # (three epochs do not converge)
        clf = MLPClassifier(batch_size=True, **params).fit(X, y)
        one = MLPClassifier(batch_size=1, **params).fit(X, y)
        SkMLP(batch_size=True, max_iter=3).fit(X, y)   # scikit-learn's reading of True: 1
    assert clf.n_iter_ == 3
    np.testing.assert_array_equal(clf.predict_proba(X), one.predict_proba(X))


def test_estimator_refusals_name_the_estimator_parameters():
    """The optimiser's refusals named fastmlp's lr, beta2 and Dense units."""
    from fastmlp.sklearn import MLPClassifier
    X, y = _iris_like(30)
    cases = [({"learning_rate_init": 1e-50}, r"learning_rate_init=1e-50 is 0\.0 in float32.*"
              r"give a learning_rate_init between"),
             ({"beta_2": 1 - 1e-12}, r"beta_2=0\.999999999999 rounds to 1 in float32.*"
              r"smaller beta_2"),
             ({"hidden_layer_sizes": (2**31,)}, r"hidden_layer_sizes must be positive "
              r"integers below 2\*\*31")]
    for params, message in cases:
        fitted = MLPClassifier(hidden_layer_sizes=(3,), max_iter=2, dtype="float32",
                               random_state=0)
        with pytest.warns(Warning):
            fitted.fit(X, y)
        before = fitted.predict_proba(X)
        with pytest.raises(ValueError, match=message):
            fitted.set_params(**params).fit(X, y)
        np.testing.assert_array_equal(fitted.predict_proba(X), before)   # kept
    # True for a real parameter is 1.0, as scikit-learn's arithmetic reads it
    with pytest.warns(Warning):
        MLPClassifier(hidden_layer_sizes=(3,), max_iter=1, learning_rate_init=True,
                      epsilon=True).fit(X, y)


def test_estimator_parameter_ranges_are_scikit_learns():
    """validation_fraction=0 (without early stopping) and n_iter_no_change=inf were
    refused; scikit-learn takes both."""
    from fastmlp.sklearn import MLPRegressor
    X, y = _iris_like(30)
    reg = MLPRegressor(hidden_layer_sizes=(3,), max_iter=40, tol=10.0, validation_fraction=0.0,
                       n_iter_no_change=np.inf, random_state=0)
    with pytest.warns(Warning, match="maximum iterations"):
        reg.fit(X, y.astype(float))
    assert reg.n_iter_ == 40   # never stopped on tol
    with pytest.raises(ValueError, match=r"The validation set is too small: 0 sample"):
        reg.set_params(early_stopping=True).fit(X, y.astype(float))


def test_early_stopping_splits_as_scikit_learn_stratified_for_two_classes_only():
    """Every single-label classifier's split was stratified, where scikit-learn stratifies
    two classes only: iris-sized data with validation_fraction=0.01 was refused in
    train_test_split's words (test_size), which the user never set."""
    from fastmlp.sklearn import MLPClassifier
    X, y = _iris_like(150)
    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=5, early_stopping=True,
                        validation_fraction=0.02, n_iter_no_change=100, random_state=0)
    with pytest.warns(Warning):
        clf.fit(X, y)   # 3 rows held out for 3 classes: fine unstratified
    assert len(clf.validation_scores_) == 5
    # two classes: stratified, as scikit-learn; too few rows per class names the parameter
    X2, y2 = X[:100], y[:100]
    with pytest.raises(ValueError, match=r"early_stopping cannot hold out "
                                         r"validation_fraction=0\.99 of the 100 rows: .*"):
        MLPClassifier(hidden_layer_sizes=(4,), early_stopping=True,
                      validation_fraction=0.99).fit(X2, y2)


def test_checkpoint_folders_round_59(tmp_path):
    """Round 59 on round 58's folder making: escaped braces made a junk folder "{{a}}"
    beside the "{a}" saved to; a path naming a folder made it and failed after an epoch;
    a file in the way said only "File exists"."""
    X, Y = _data()
    model = _model()
    model.fit(X, Y, epochs=1, callbacks=ModelCheckpoint(
        str(tmp_path / "runs{{a}}" / "m.fastmlp"), monitor="loss"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs{a}"]
    for named in ("newdir/", "newdir/.", "x/.."):
        with pytest.raises(ValueError, match="names a folder, not a file; give a file name"):
            ModelCheckpoint(f"{tmp_path}/{named}")   # (pathlib drops a trailing "/")
    assert not (tmp_path / "newdir").exists()
    (tmp_path / "afile").write_text("")
    os.symlink(tmp_path / "nowhere", tmp_path / "broken")
    for blocked in ("afile", "broken"):
        with pytest.raises(OSError, match=rf"{blocked} is not a folder \(a file, or a link to "
                                          r"nothing\)"):
            model.fit(X, Y, epochs=1, callbacks=ModelCheckpoint(
                str(tmp_path / blocked / "sub" / "m.fastmlp"), monitor="loss"))


def test_progress_bar_with_nothing_to_train_keeps_its_total():
    pytest.importorskip("tqdm")
    X, Y = _data()
    out = io.StringIO()
    _model().fit(X, Y, epochs=3, initial_epoch=5, callbacks=[ProgressBar(file=out)])
    assert "epoch 3/3" in out.getvalue() and "?" not in out.getvalue().split("|")[0]


def test_estimator_early_stopping_takes_a_numpy_float_fraction():
    """validation_fraction=np.float32(0.1) passed scikit-learn's check, then
    train_test_split refused it (it takes Python floats)."""
    from fastmlp.sklearn import MLPClassifier
    X, y = _iris_like(60)
    clf = MLPClassifier(hidden_layer_sizes=(3,), max_iter=2, early_stopping=True,
                        validation_fraction=np.float32(0.1), random_state=0)
    with pytest.warns(Warning):
        clf.fit(X, y)
    assert len(clf.validation_scores_) == 2


# -- the command line (round 59) -----------------------------------------------------------

def _csv_with_an_overflowing_held_out_row(tmp_path, regression=False, n=50):
    """A CSV whose one held-out row (by the split of --seed 0, --test-fraction 0.2) has a
    feature of 4e39: it fits a float32 model once standardized, then overflows its first
    layer."""
    from fastmlp import datasets
    test_rows = datasets.train_test_split(np.zeros((n, 1)), np.arange(n), 0.2, 0)[3]
    bad = int(test_rows[0])
    path = tmp_path / "data.csv"
    with open(path, "w") as f:
        f.write("a,b,y\n")
        for i in range(n):
            y = f"{i * 1.37 + (i % 3):.2f}" if regression else "xz"[i % 2]
            f.write(f"{'4e39' if i == bad else i},{i % 7},{y}\n")
    return str(path)


def test_cli_scores_of_rows_whose_outputs_are_not_finite_are_undefined(capsys, tmp_path):
    """The command's accuracy took a NaN output for class 0 (40.00 %, exit 0), and its
    regression said "the targets scored are all one value" of 12 distinct targets."""
    why = (r"the model's outputs are not finite for 1 of the 10 held-out rows \(a feature "
           r"value too large for the model overflows its first layer")
    code, out, err = run_cli(capsys, "train", "--data",
                             _csv_with_an_overflowing_held_out_row(tmp_path), "--epochs", "2")
    assert code == 0, err
    assert "held-out accuracy nan" in out
    assert re.search(r"held-out accuracy: undefined: " + why, out), out
    code, out, err = run_cli(capsys, "train", "--data", _csv_with_an_overflowing_held_out_row(
        tmp_path, regression=True), "--epochs", "2")
    assert code == 0, err
    assert re.search(r"held-out RMSE and R\^2: undefined: " + why, out), out
    assert "all one value" not in out


def test_cli_usage_errors_and_gzip_data_round_59(capsys, tmp_path):
    code, out, err = run_cli(capsys, "warmup", "extra")
    assert code == 2
    assert err.startswith("fastmlp warmup: error: unrecognized arguments: extra (see "
                          "fastmlp warmup --help)")
    assert cli.make_parser().parse_args(["warmup", "--dtype", "FLOAT32"]).dtype == ["float32"]
    path = tmp_path / "data.csv"
    path.write_bytes(gzip.compress(b"a,b,y\n1,2,x\n3,4,z\n5,6,x\n7,8,z\n"))
    code, out, err = run_cli(capsys, "train", "--data", str(path))
    assert code == 2
    assert "data.csv: gzip data (it starts with the bytes 1f 8b) in a file whose name does " \
           "not end with .gz: name it so, or decompress it" in err


def _fastmlp(args, tmp_path, stdout):
    paths = [os.path.dirname(os.path.dirname(fm.__file__)), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    return subprocess.run([sys.executable, "-m", "fastmlp", *args], cwd=tmp_path, env=env,
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300)


def test_cli_says_a_model_was_not_saved_when_stdout_fails(tmp_path):
    """`fastmlp train --save m.npz | head -1` trained, then ended at the next line with
    nothing on stderr and no model saved; stdout on a full disk said only "No space left
    on device"."""
    read, write = os.pipe()
    os.close(read)   # a reader already gone: the first epoch line breaks the pipe
    with os.fdopen(write, "w") as pipe:
        run = _fastmlp(["train", "--epochs", "3", "--save", "m.npz"], tmp_path, pipe)
    assert run.returncode == 141
    assert "fastmlp train: stdout closed (its reader ended): stopped; nothing was saved to " \
           "m.npz" in run.stderr
    assert not (tmp_path / "m.npz").exists()
    if os.path.exists("/dev/full"):
        with open("/dev/full", "w") as full:
            run = _fastmlp(["train", "--epochs", "3", "--save", "m.npz"], tmp_path, full)
        assert run.returncode == 2
        assert "fastmlp train: error: cannot write to stdout (No space left on device); " \
               "nothing was saved to m.npz" in run.stderr


def test_evaluate_without_classes_does_not_advise_labels_it_refuses():
    """Round 60: evaluate and gradients on a model without classes_ advised giving
    "exactly k distinct labels", which they then refused (no classes_ to map them)."""
    X = np.random.default_rng(0).normal(size=(8, 3))
    m = fm.Model([fm.Dense(3, "softmax")], input_dim=3, loss="cross_entropy", seed=0)
    for call in (m.evaluate, m.gradients):
        with pytest.raises(ValueError, match=r"Y has 4 distinct labels \[-1, 0, 1, 2\] but "
                                             r"the model has 3 classes and no classes_: give "
                                             r"class indices 0\.\.2, or train it"):
            call(X, np.array([-1, 0, 1, 2] * 2))
    with pytest.raises(ValueError, match=r"exactly 3 distinct labels"):   # fit learns them
        m.fit(X, np.array([-1, 0, 1, 2] * 2))
