"""The ``fastmlp`` command: the digits main job, CSV training, errors, the vehicle example."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import cli, datasets

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def held_out_accuracy(out):
    return float(re.search(r"held-out accuracy: ([\d.]+) %", out).group(1)) / 100


def two_blobs_csv(tmp_path, n=60, seed=0):
    """A separable two-class table with string labels and the target in the middle."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 3)) + 3.0 * y[:, None] + [0.0, 100.0, -5.0]
    lines = ["f1,f2,species,f3"]
    lines += [f"{a:.4f},{b:.4f},{'yes' if t else 'no'},{c:.4f}" for (a, b, c), t in zip(X, y)]
    path = tmp_path / "blobs.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, X, y


# -- the main job ----------------------------------------------------------------------

def test_default_train_reaches_95_percent_on_digits(capsys, backend):
    code, out, err = run(capsys, "train", "--backend", backend)
    assert code == 0, err
    assert len(re.findall(r"^epoch +\d+/20 +loss [\d.]+ .*samples/s$", out, re.M)) == 20
    assert held_out_accuracy(out) >= 0.95
    assert "359 held out" in out and "CC BY 4.0" in out
    rate = float(re.search(r"= ([\d,]+) samples/s", out).group(1).replace(",", ""))
    assert rate > 0


def test_train_help():
    result = subprocess.run([sys.executable, "-m", "fastmlp", "train", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for option in ("--data", "--target", "--layers", "--activation", "--epochs", "--backend",
                   "--batch-size", "--lr", "--optimizer", "--dtype", "--seed",
                   "--test-fraction", "--loss", "--save"):
        assert option in result.stdout


def test_no_command_prints_help_and_fails(capsys):
    code, out, err = run(capsys)
    assert code == 2 and "train" in err and "vehicles" in err


# -- a user's CSV --------------------------------------------------------------------

def test_train_on_csv_and_save(capsys, tmp_path):
    path, X, y = two_blobs_csv(tmp_path)
    saved = tmp_path / "model.npz"
    code, out, err = run(capsys, "train", "--data", str(path), "--target", "species",
                         "--layers", "8,4", "--activation", "tanh", "--epochs", "30",
                         "--batch-size", "8", "--optimizer", "sgd", "--lr", "0.1",
                         "--dtype", "float64", "--save", str(saved))
    assert code == 0, err
    assert "60 rows, 3 features, 2 classes; 48 for training, 12 held out" in out
    assert "3-8-4-2 tanh -> softmax" in out and "float64" in out
    assert held_out_accuracy(out) >= 0.9
    # The saved model takes raw features (standardization folded in); classes sort no < yes.
    model = fm.load(saved)
    assert model.dtype == np.float64
    assert np.mean(model.predict(X).argmax(axis=1) == y) >= 0.9


@pytest.mark.parametrize("loss", ["mse", "binary_cross_entropy"])
def test_train_csv_other_losses_without_held_out_rows(capsys, tmp_path, loss):
    path, _, _ = two_blobs_csv(tmp_path)
    code, out, err = run(capsys, "train", "--data", str(path), "--target", "species",
                         "--loss", loss, "--epochs", "40", "--test-fraction", "0")
    assert code == 0, err
    assert "-> sigmoid" in out and "0 held out" in out
    acc = float(re.search(r"training accuracy: ([\d.]+) %", out).group(1))
    assert acc >= 90


def test_fold_standardization_gives_the_same_outputs(rng):
    X = rng.normal(3.0, 5.0, size=(20, 4))
    Xs, mean, std = datasets.standardize(X)
    model = fm.Model([fm.Dense(5, activation="prelu"), fm.Dense(3, activation="softmax")],
                     input_dim=4, loss="cross_entropy", dtype="float64", seed=1)
    before = model.predict(Xs)
    cli.fold_standardization(model, mean, std)
    np.testing.assert_allclose(model.predict(X), before, rtol=1e-10, atol=1e-12)


# -- errors: one line on stderr, exit status 2 ------------------------------------------

BAD_CSVS = {
    "non_numeric": ("a,colour,y\n1,red,0\n2,blue,1\n", "column 'colour'"),
    "missing_target": ("a,b\n1,0\n2,1\n", "no column 'y'"),
    "empty": ("", "empty"),
    "ragged": ("a,y\n1,0\n2,1,3\n", "line 3: 3 fields but the header has 2"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSVS))
def test_bad_csv_exits_2_with_one_line(capsys, tmp_path, case):
    text, message = BAD_CSVS[case]
    path = tmp_path / "bad.csv"
    path.write_text(text)
    code, out, err = run(capsys, "train", "--data", str(path), "--target", "y")
    assert code == 2
    assert message in err and err.startswith("fastmlp train: error:")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_csv_from_the_shell_has_no_traceback(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,colour,y\n1,red,0\n2,blue,1\n")
    result = subprocess.run([sys.executable, "-m", "fastmlp", "train", "--data", str(path),
                             "--target", "y"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "column 'colour'" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["--data", "/nonexistent/x.csv"], "No such file"),
    (["--target", "y"], "--target needs --data"),
    (["--backend", "nope"], "unknown backend 'nope'"),
    (["--activation", "wiggle"], "unknown activation 'wiggle'"),
    (["--activation", "softmax"], "softmax is only allowed on the output layer"),
    (["--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'"),
    (["--momentum", "0.9"], "--momentum applies to --optimizer sgd only"),
    (["--loss", "hinge"], "unknown loss 'hinge'"),
    (["--lr", "-1"], "lr must be"),
    (["--test-fraction", "1.5"], "test_fraction"),
    (["--optimizer", "sgd", "--lr", "1e6"], "training diverged"),
])
def test_bad_options_exit_2(capsys, argv, message):
    code, out, err = run(capsys, "train", "--epochs", "1", *argv)
    assert code == 2 and message in err and err.count("\n") == 1


def test_warnings_are_one_line(capsys):
    code, out, err = run(capsys, "train", "--activation", "step", "--epochs", "1")
    assert code == 0
    assert err.startswith("fastmlp: warning:") and "step/sign" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [["--layers", "64,x"], ["--layers", "0"], ["--epochs", "0"],
                                  ["--batch-size", "-3"], ["--epochs", "2.5"],
                                  ["--dtype", "float16"], ["--bogus"]])
def test_usage_errors_exit_2_with_one_line(capsys, argv):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "error:" in err


# -- the lessons' vehicles ------------------------------------------------------------

def test_vehicles_classifies_all_six_rows(capsys, backend, dtype):
    code, out, err = run(capsys, "vehicles", "--backend", backend, "--dtype", dtype)
    assert code == 0, err
    before, after = out.split("after training:")
    assert before.count("WRONG") > 0  # random weights get some rows wrong
    # columns: features | truth target | prediction | squared errors | predicted class
    rows = [line.split("|") for line in after.splitlines() if re.match(r" +[24] ", line)]
    assert len(rows) == 6
    assert [r[4].split() for r in rows] == [["car", "ok"]] * 3 + [["bike", "ok"]] * 3
    errors = np.array([r[3].strip(" []").split() for r in rows], dtype=float)
    assert errors.shape == (6, 2) and errors.max() < 0.01  # each output within 0.1 of its target
    assert "all 6 rows classified correctly" in after


def test_vehicles_example_script():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "vehicles.py")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "6 of 6 rows classified correctly" in result.stdout
    assert result.stdout.count("(y_hat - y)^2") == 12  # every row, before and after
